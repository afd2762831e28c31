import { createServer } from 'node:net';
import { qemuImg, qemuIo } from '@qmpkit/image-tools';
import { QemuStorageDaemon } from '@qmpkit/machine';
import { ExtentFlag, NbdCommandError, NbdConnectionError, QEMU_ALLOCATION_DEPTH, qemuDirtyBitmapContext } from '../src/index.js';
import { Scratch, collect } from './support/qemu.js';

// qemu-storage-daemon exports over TCP: a qcow2 with a persistent bitmap that qemu-io writes
// dirtied, and a raw file behind blkdebug that fails reads of one sector with EIO (a real
// server error, which must fail only that request).
const MiB = 1024 * 1024;

let scratch: Scratch;
let qsd: QemuStorageDaemon;
let port: number;

/** A TCP port that was free a moment ago (QEMU needs a number; 0 is not accepted for NBD servers). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('no TCP address');
  return address.port;
}

beforeAll(async () => {
  scratch = await Scratch.create();
  const disk = scratch.path('disk.qcow2');
  await qemuImg.create(disk, { format: 'qcow2', size: 16 * MiB, options: { cluster_size: '64k' } });
  await qemuIo.run(disk, ['write -P 0x01 0 1M'], { format: 'qcow2' });
  await qemuImg.bitmap(disk, 'b0', [{ action: 'add', granularity: '64k' }]);
  // qemu-io loads the persistent bitmap, records these writes in it, and stores it on close.
  await qemuIo.run(disk, ['write -P 0x02 2M 100', 'write -P 0x03 8M 192k'], { format: 'qcow2' });
  const raw = scratch.path('flaky.raw');
  await qemuImg.create(raw, { format: 'raw', size: MiB });
  await qemuIo.run(raw, ['write -P 0x5a 0 1M'], { format: 'raw' });

  port = await freePort();
  qsd = new QemuStorageDaemon({ tmpDir: scratch.dir, nbdServer: { addr: { type: 'inet', host: '127.0.0.1', port: String(port) } } });
  await qsd.launch({ timeout: 30_000 });
  await qsd.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'disk', file: { driver: 'file', filename: disk } });
  await qsd.qmp.execute('block-dirty-bitmap-disable', { node: 'disk', name: 'b0' });
  await qsd.qmp.execute('block-export-add', { type: 'nbd', id: 'disk', 'node-name': 'disk', bitmaps: ['b0'], 'allocation-depth': true });
  await qsd.qmp.execute('blockdev-add', {
    driver: 'raw',
    'node-name': 'flaky',
    file: {
      driver: 'blkdebug',
      'inject-error': [{ event: 'read_aio', errno: 5, sector: 256 }], // byte 128 KiB
      image: { driver: 'file', filename: raw },
    },
  });
  await qsd.qmp.execute('block-export-add', { type: 'nbd', id: 'flaky', 'node-name': 'flaky' });
}, 120_000);

afterAll(async () => {
  await scratch?.cleanUp();
  await qsd?.shutdown({ timeout: 20_000 }).catch(() => qsd.kill());
});

test('over TCP: dirty extents of a persistent bitmap equal its count and the writes', async () => {
  const nbd = await scratch.connect({ host: '127.0.0.1', port }, {
    exportName: 'disk',
    metaContexts: [qemuDirtyBitmapContext('b0'), QEMU_ALLOCATION_DEPTH],
  });
  expect(nbd.target).toBe(`127.0.0.1:${port}`);
  const dirty = (await collect(nbd.extents({ context: qemuDirtyBitmapContext('b0') })))
    .filter((e) => e.flags & ExtentFlag.DIRTY)
    .map(({ offset, length }) => ({ offset, length }));
  expect(dirty).toEqual([{ offset: 2 * MiB, length: 65536 }, { offset: 8 * MiB, length: 192 * 1024 }]);
  const nodes = await qsd.qmp.execute('query-named-block-nodes');
  const count = nodes.find((n) => n['node-name'] === 'disk')?.['dirty-bitmaps']?.find((b) => b.name === 'b0')?.count;
  expect(dirty.reduce((n, e) => n + e.length, 0)).toBe(count);
  // The data written before the bitmap existed is allocated (depth 1) but not dirty.
  const depth = await collect(nbd.extents({ context: QEMU_ALLOCATION_DEPTH, length: 2 * MiB }));
  expect(depth).toEqual([{ offset: 0, length: MiB, flags: 1 }, { offset: MiB, length: MiB, flags: 0 }]);
  expect((await nbd.read(2 * MiB - 1, 102)).toString('hex')).toBe(`00${'02'.repeat(100)}00`);
});

test('a server error (EIO from blkdebug) with simple replies fails only its request', async () => {
  const nbd = await scratch.connect({ host: '127.0.0.1', port }, { exportName: 'flaky', structuredReplies: false });
  const good = nbd.read(0, 64 * 1024);
  const bad = nbd.read(96 * 1024, 64 * 1024).catch((error: unknown) => error);
  const after = nbd.read(192 * 1024, 4096);
  expect((await good).equals(Buffer.alloc(64 * 1024, 0x5a))).toBe(true);
  const error = await bad;
  expect(NbdCommandError.isInstance(error)).toBe(true);
  expect(error).toMatchObject({ command: 'read', offset: 96 * 1024, length: 64 * 1024, errno: 5, code: 'EIO' });
  expect((await after).equals(Buffer.alloc(4096, 0x5a))).toBe(true);
  expect(nbd.state).toBe('ready');
});

// QEMU 7.2's server treats a failed read under structured replies as a failure to send the
// reply and drops the client ("Disconnect client, due to: Failed to send reply: reading from
// file failed"), so there the request fails with the lost connection, by name.
test('the same error with structured replies: QEMU 7.2 drops the connection, reported as NbdConnectionError', async () => {
  const nbd = await scratch.connect({ host: '127.0.0.1', port }, { exportName: 'flaky' });
  expect((await nbd.read(0, 64 * 1024)).equals(Buffer.alloc(64 * 1024, 0x5a))).toBe(true);
  const error = await nbd.read(96 * 1024, 64 * 1024).catch((e: unknown) => e);
  expect(NbdConnectionError.isInstance(error)).toBe(true);
  expect(await nbd.closed).toBe(error);
  expect(nbd.state).toBe('closed');
});
