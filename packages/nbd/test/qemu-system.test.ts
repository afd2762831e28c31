import { qemuImg } from '@qmpkit/image-tools';
import { QemuMachine } from '@qmpkit/machine';
import { BASE_ALLOCATION, ExtentFlag, NbdHandshakeError, qemuDirtyBitmapContext, type NbdClient } from '../src/index.js';
import { Scratch, collect } from './support/qemu.js';

// QEMU's own NBD server (nbd-server-start + block-export-add, and the older nbd-server-add) on a
// qemu-system-x86_64 -machine none, exporting a drive together with a dirty bitmap: the pull-mode
// backup set-up. The writes a guest would make go through HMP qemu-io.
const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const GRANULARITY = 64 * 1024;
const BITMAP = 'bitmap0';
const TWIN = 'bitmap1';

/** Written before the bitmap exists: allocated, but never dirty. */
const BEFORE: [number, number, number][] = [[0x70, 10 * MiB, MiB]];
/** Written while the bitmap records: [pattern, offset, length]. */
const WRITES: [number, number, number][] = [
  [0x61, 0, 64 * 1024],
  [0x62, MiB + 100, 1000], // inside one granule, unaligned
  [0x63, 32 * MiB - 4096, 8192], // across a granule boundary
  [0x64, 50 * MiB, 3 * MiB],
  [0x65, 10 * MiB + 65536 * 3, 512], // over the earlier data
];
/** What the bitmap must say: each write rounded out to whole granules, joined. */
const DIRTY = [
  { offset: 0, length: 65536 },
  { offset: MiB, length: 65536 },
  { offset: 10 * MiB + 3 * 65536, length: 65536 },
  { offset: 32 * MiB - 65536, length: 2 * 65536 },
  { offset: 50 * MiB, length: 3 * MiB },
];

let scratch: Scratch;
let vm: QemuMachine;
let socket: string;
let nbd: NbdClient;
/** The guest-visible contents, modelled from the writes (the image started as zeroes). */
const model = Buffer.alloc(SIZE);

beforeAll(async () => {
  scratch = await Scratch.create();
  const image = scratch.path('drive0.qcow2');
  await qemuImg.create(image, { format: 'qcow2', size: SIZE, options: { cluster_size: '64k' } });
  vm = new QemuMachine({ tmpDir: scratch.dir });
  vm.addDrive({ file: image, format: 'qcow2', id: 'drive0', nodeName: 'node0' });
  await vm.launch({ timeout: 30_000 });
  const write = async ([pattern, offset, length]: [number, number, number]): Promise<void> => {
    await vm.hmpQemuIo('drive0', `write -P 0x${pattern.toString(16)} ${offset} ${length}`);
    model.fill(pattern, offset, offset + length);
  };
  for (const w of BEFORE) await write(w);
  // Two bitmaps with the same history: an exported bitmap is busy, so each export gets its own.
  for (const name of [BITMAP, TWIN]) await vm.qmp.execute('block-dirty-bitmap-add', { node: 'node0', name, granularity: GRANULARITY });
  for (const w of WRITES) await write(w);
  // A read-only export may only carry a bitmap that no longer changes: the point in time.
  for (const name of [BITMAP, TWIN]) await vm.qmp.execute('block-dirty-bitmap-disable', { node: 'node0', name });
  socket = scratch.path('qemu-nbd.sock');
  await vm.qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: socket } } });
  await vm.qmp.execute('block-export-add', { type: 'nbd', id: 'exp0', 'node-name': 'node0', name: 'exp0', bitmaps: [BITMAP] });
  nbd = await scratch.connect(socket, { exportName: 'exp0', metaContexts: [BASE_ALLOCATION, qemuDirtyBitmapContext(BITMAP)] });
}, 120_000);

afterAll(async () => {
  await scratch?.cleanUp();
  await vm?.shutdown({ timeout: 20_000 }).catch(() => vm.kill());
});

async function bitmapCount(): Promise<number> {
  const blocks = await vm.qmp.execute('query-block');
  const bitmap = blocks.flatMap((b) => b.inserted?.['dirty-bitmaps'] ?? []).find((d) => d.name === BITMAP);
  if (!bitmap) throw new Error(`bitmap ${BITMAP} not found in query-block`);
  return bitmap.count;
}

test('the export carries the bitmap as a metadata context', () => {
  expect(nbd.export).toMatchObject({ name: 'exp0', size: SIZE, readOnly: true });
  expect([...nbd.metaContexts.keys()].sort()).toEqual([BASE_ALLOCATION, qemuDirtyBitmapContext(BITMAP)]);
});

test('dirty extents are exactly the written granules, and add up to the bitmap count', async () => {
  const extents = await collect(nbd.extents({ context: qemuDirtyBitmapContext(BITMAP) }));
  // Contiguous cover of the export, alternating clean and dirty after joining.
  expect(extents[0]!.offset).toBe(0);
  expect(extents.reduce((n, e) => n + e.length, 0)).toBe(SIZE);
  const dirty = extents.filter((e) => e.flags & ExtentFlag.DIRTY).map(({ offset, length }) => ({ offset, length }));
  expect(dirty).toEqual(DIRTY);
  const dirtyBytes = dirty.reduce((n, e) => n + e.length, 0);
  expect(dirtyBytes).toBe(await bitmapCount());
  // Negative control: data written before the bitmap is allocated but not dirty.
  const allocation = await collect(nbd.extents({ context: BASE_ALLOCATION, offset: 10 * MiB, length: MiB }));
  expect(allocation.every((e) => (e.flags & ExtentFlag.HOLE) === 0)).toBe(true);
  const before = await collect(nbd.extents({ context: qemuDirtyBitmapContext(BITMAP), offset: 10 * MiB, length: 3 * 65536 }));
  expect(before).toEqual([{ offset: 10 * MiB, length: 3 * 65536, flags: 0 }]);
});

test('reading the dirty extents (the incremental backup) gives the written data', async () => {
  async function* dirty(): AsyncGenerator<{ offset: number; length: number }> {
    for await (const e of nbd.extents({ context: qemuDirtyBitmapContext(BITMAP) })) if (e.flags & ExtentFlag.DIRTY) yield e;
  }
  let bytes = 0;
  for await (const block of nbd.readRanges(dirty(), { blockSize: 128 * 1024, readAhead: 6 })) {
    expect(block.data.equals(model.subarray(block.offset, block.offset + block.length))).toBe(true);
    bytes += block.length;
  }
  expect(bytes).toBe(await bitmapCount());
});

test('reads at odd offsets through QEMU match the writes', async () => {
  const cases: [number, number][] = [[MiB + 99, 1002], [32 * MiB - 4097, 8194], [10 * MiB - 1, 65536 * 3 + 2], [53 * MiB - 3, 7], [0, SIZE]];
  const reads = await Promise.all(cases.map(([o, l]) => nbd.read(o, l)));
  cases.forEach(([o, l], i) => expect(reads[i]!.equals(model.subarray(o, o + l))).toBe(true));
});

test('the older nbd-server-add export works the same, and an unknown bitmap is refused at connect', async () => {
  await vm.qmp.execute('nbd-server-add', { device: 'node0', name: 'legacy', bitmap: TWIN });
  const legacy = await scratch.connect(socket, { exportName: 'legacy', metaContexts: [qemuDirtyBitmapContext(TWIN)] });
  const dirty = (await collect(legacy.extents())).filter((e) => e.flags & ExtentFlag.DIRTY);
  expect(dirty.map(({ offset, length }) => ({ offset, length }))).toEqual(DIRTY);
  const unknownBitmap = await scratch.connect(socket, { exportName: 'exp0', metaContexts: [qemuDirtyBitmapContext('nope')] }).catch((e: unknown) => e);
  expect(NbdHandshakeError.isInstance(unknownBitmap)).toBe(true);
  expect((unknownBitmap as Error).message).toMatch(/does not offer the metadata context\(s\) qemu:dirty-bitmap:nope/);
  const unknownExport = await scratch.connect(socket, { exportName: 'missing' }).catch((e: unknown) => e);
  expect(NbdHandshakeError.isInstance(unknownExport)).toBe(true);
  expect((unknownExport as NbdHandshakeError).reply).toBe('NBD_REP_ERR_UNKNOWN');
});
