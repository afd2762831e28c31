// Issue 9, scenario 2: block_resize 96M -> 80M -> 96M after a write at 85M. QEMU drops the
// bits past the new end on a shrink and grows the drive back with clean bits over zeroes, so
// the drive's size is what the chain expects, the bitmap shows nothing, and an incremental
// copied nothing while the chain still held the old data past 80M: a stale restore.
import { qemuImg } from '@qmpkit/image-tools';
import { BackupChain, NewFullBackupRequiredError, addBitmap, getBitmap, startDriveBackup } from '../src/index.js';
import type { BackupQmp, ChainBrokenReason } from '../src/index.js';
import { Scratch, hmpWrites, launchWithSocket, qmpOf } from './helpers.js';
import type { Pattern } from './helpers.js';

const M = 1048576;
const DATA: readonly Pattern[] = [
  [0x41, 0, '64k'],
  [0x42, '40M', '1M'],
  [0x55, '85M', '64k'],
  [0x56, '95M', '1M'],
];

async function reason(promise: Promise<unknown>): Promise<ChainBrokenReason | 'resolved' | 'other'> {
  try {
    await promise;
    return 'resolved';
  } catch (error) {
    return NewFullBackupRequiredError.isInstance(error) ? error.reason : 'other';
  }
}

async function blockResize(qmp: BackupQmp, size: number): Promise<void> {
  await qmp.execute('block_resize' as never, { device: 'drive0', size } as never);
}

describe('a drive shrunk and grown back between two backups', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  async function setup(): Promise<{ drive0: string; vm: Awaited<ReturnType<Scratch['launch']>>; qmp: BackupQmp; chain: BackupChain }> {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '96M', DATA);
    const vm = await scratch.launch([{ file: drive0, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    const qmp = qmpOf(vm);
    const chain = await BackupChain.open({ qmp, dir: scratch.path('backups'), node: 'drive0', granularity: 65536 });
    return { drive0, vm, qmp, chain };
  }

  it('QEMU drops the bits past a shrink and grows the drive back clean, over zeroes (why the chain needs more than its bitmap)', async () => {
    const { vm, qmp } = await setup();
    await addBitmap(qmp, { node: 'drive0', name: 'probe', granularity: 65536 });
    await hmpWrites(vm, 'drive0', [[0x66, '85M', '64k']]);
    expect((await getBitmap(qmp, 'drive0', 'probe')).count).toBe(65536);
    await blockResize(qmp, 80 * M);
    expect((await getBitmap(qmp, 'drive0', 'probe')).count).toBe(0);
    await blockResize(qmp, 96 * M);
    expect((await getBitmap(qmp, 'drive0', 'probe')).count).toBe(0);
    await vm.hmpQemuIo('drive0', 'read -P0 80M 16M');
    // A shrink inside a granule keeps that granule's bit: bits are cut at granule boundaries only.
    await hmpWrites(vm, 'drive0', [[0x67, '70M', '64k']]);
    await blockResize(qmp, 70 * M + 512);
    expect((await getBitmap(qmp, 'drive0', 'probe')).count).toBe(65536);
  });

  it('through chain.resize() the next incremental copies everything past the smallest size: no stale restore', async () => {
    const { drive0, vm, qmp, chain } = await setup();
    await chain.full();
    expect((await chain.resize(80 * M)).smallest).toBe(80 * M);
    const grown = await chain.resize(96 * M);
    expect(grown).toMatchObject({ from: 80 * M, to: 96 * M, smallest: 80 * M, recorded: true });
    expect(chain.drive?.resizes?.map((r) => [r.from, r.to])).toEqual([
      [96 * M, 80 * M],
      [80 * M, 96 * M],
    ]);
    await hmpWrites(vm, 'drive0', [[0x77, '90M', '64k'], [0x78, '1M', '64k']]);
    expect((await chain.check())[0]).toMatchObject({ ok: true, coverFrom: 80 * M, coverTo: 96 * M });
    const inc = await chain.incremental();
    // The 16 MiB from the smallest size to the end, and the write below it.
    expect(inc.backups[0]).toMatchObject({ jobLength: 16 * M + 65536, coveredFrom: 80 * M, driveSize: 96 * M });
    expect(chain.drive?.resizes).toEqual([]);
    // The next incremental is an ordinary one again.
    await hmpWrites(vm, 'drive0', [[0x79, '2M', '64k']]);
    expect((await chain.incremental()).backups[0]?.bytes).toBe(65536);

    const reference = scratch.path('now.qcow2');
    await (await startDriveBackup(qmp, { device: 'drive0', 'job-id': 'ref', sync: 'full', target: reference, format: 'qcow2' })).expectCompleted();
    await vm.shutdown({ timeout: 10_000 });
    expect((await chain.verify({ sources: { drive0 } })).ok).toBe(true);
    const restored = await chain.restore(scratch.path('restored.qcow2'), { upTo: 1 });
    await qemuIoReadsZero(restored, 85 * M, 64 * 1024);
    expect((await qemuImg.compare(await chain.restore(scratch.path('latest.qcow2')), reference)).identical).toBe(true);
  });

  it('a plain block_resize shrink and grow back is refused (the mark lost its bit), never continued', async () => {
    const { drive0, vm, qmp, chain } = await setup();
    await chain.full();
    await blockResize(qmp, 80 * M);
    await blockResize(qmp, 96 * M);
    const check = (await chain.check())[0];
    expect(check).toMatchObject({ ok: false, reason: 'size-mismatch' });
    expect(check?.detail).toMatch(/shrunk below/);
    expect(await reason(chain.incremental())).toBe('size-mismatch');
    const fresh = await chain.incremental({ fullIfBroken: true });
    expect(fresh.kind).toBe('full');
    await hmpWrites(vm, 'drive0', [[0x31, '81M', '64k']]);
    expect((await chain.incremental()).backups[0]?.bytes).toBe(65536);
    await vm.shutdown({ timeout: 10_000 });
    expect((await chain.verify({ sources: { drive0 } })).ok).toBe(true);
  });

  it('a plain block_resize below a chain.resize() shrink still shows', async () => {
    const { qmp, chain } = await setup();
    await chain.full();
    await chain.resize(80 * M);
    await blockResize(qmp, 60 * M);
    await blockResize(qmp, 80 * M);
    await chain.resize(96 * M);
    expect((await chain.check())[0]).toMatchObject({ ok: false, reason: 'size-mismatch' });
  });

  it('a drive that stays shrunk through chain.resize() gets a backup of its new size', async () => {
    const { drive0, vm, chain } = await setup();
    await chain.full();
    await chain.resize(80 * M);
    await hmpWrites(vm, 'drive0', [[0x21, '79M', '64k']]);
    const inc = await chain.incremental();
    expect(inc.backups[0]).toMatchObject({ driveSize: 80 * M, bytes: 65536 });
    await vm.shutdown({ timeout: 10_000 });
    expect((await qemuImg.info(drive0))['virtual-size']).toBe(80 * M);
    expect((await chain.verify({ sources: { drive0 } })).ok).toBe(true);
  });

  it('qmpkit-backup resize records the resize; status and the next incremental show the copy past the smallest size', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '96M', DATA);
    const { vm, socket } = await launchWithSocket(scratch, drive0);
    const dir = scratch.path('backups');
    expect((await scratch.cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0', '--granularity', '65536']).done).code).toBe(0);
    const shrunk = await scratch.cli(['resize', '--socket', socket, '--dir', dir, '--size', String(80 * M)]).done;
    expect(shrunk.code).toBe(0);
    expect(shrunk.stdout).toMatch(new RegExp(`from ${96 * M} to ${80 * M} bytes; the next backup copies everything from ${80 * M}`));
    expect((await scratch.cli(['resize', '--socket', socket, '--dir', dir, '--size', String(96 * M)]).done).code).toBe(0);
    const status = await scratch.cli(['status', '--socket', socket, '--dir', dir]).done;
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(new RegExp(`resized ${80 * M} -> ${96 * M}`));
    expect(status.stdout).toMatch(new RegExp(`the next backup also copies ${80 * M}\\.\\.${96 * M}`));
    const inc = await scratch.cli(['incremental', '--socket', socket, '--dir', dir, '--json']).done;
    expect(JSON.parse(inc.stdout)).toMatchObject({ backups: [{ jobLength: 16 * M, coveredFrom: 80 * M }] });
    await vm.shutdown({ timeout: 10_000 });
    expect((await scratch.cli(['verify', '--dir', dir, '--source', `drive0=${drive0}`]).done).code).toBe(0);
    expect((await scratch.cli(['resize', '--socket', socket, '--dir', dir]).done).code).toBe(2);
  });

  it('without HMP (qemu-storage-daemon) the mark has no bits: a recorded shrink makes the next backup a full copy, an unrecorded grow is refused', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '96M', DATA);
    const qsd = await scratch.storageDaemon({
      blockdevs: [
        { driver: 'file', filename: drive0, 'node-name': 'file0' },
        { driver: 'qcow2', file: 'file0', 'node-name': 'node0' },
      ],
    });
    const chain = await BackupChain.open({ qmp: qsd.qmp, dir: scratch.path('backups'), node: 'node0' });
    await chain.full();
    expect(chain.drive?.mark?.bits).toEqual([]);
    await chain.resize(80 * M);
    await chain.resize(96 * M);
    const copy = await chain.incremental();
    expect(copy.backups[0]).toMatchObject({ kind: 'full', parent: null, jobLength: 96 * M });
    expect(copy.backups[0]?.file).toMatch(/\.001\.full\.qcow2$/);
    await qsd.qmp.execute('block_resize', { 'node-name': 'node0', size: 100 * M });
    expect((await chain.check())[0]).toMatchObject({ ok: false, reason: 'size-mismatch' });
    // A later chain.resize() does not explain that grow away: it might have followed a shrink.
    await chain.resize(104 * M);
    expect(chain.drive?.resizes?.[0]).toMatchObject({ from: 96 * M, to: 0, untracked: true });
    expect((await chain.incremental()).backups[0]).toMatchObject({ kind: 'full', driveSize: 104 * M });
    await chain.resize(108 * M);
    expect((await chain.incremental()).backups[0]).toMatchObject({ kind: 'incremental', driveSize: 108 * M });
    await qsd.shutdown({ timeout: 10_000 });
    expect((await chain.verify({ sources: { node0: drive0 } })).ok).toBe(true);
  });
});

/** The restore point from before the resize still holds the old data; this one, zeroes. */
async function qemuIoReadsZero(file: string, offset: number, length: number): Promise<void> {
  const { qemuIo } = await import('@qmpkit/image-tools');
  await qemuIo.verify(file, { pattern: 0, offset, length });
}
