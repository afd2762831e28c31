import { qemuImg, qemuIo, type MapEntry } from '@qmpkit/image-tools';
import { BASE_ALLOCATION, ExtentFlag, NbdArgumentError, QEMU_ALLOCATION_DEPTH, type NbdClient } from '../src/index.js';
import { Scratch, alignmentCases, collect, extentsAsAllocation, mapAsAllocation, referenceBytes, runs } from './support/qemu.js';

// A two-layer qcow2 chain (64 KiB clusters) exported read-only by qemu-nbd, with data placed
// to produce every case a reader meets: clusters copied up from the backing file, writes that
// start and end mid-cluster and mid-sector, a write straddling a cluster boundary, a zeroed
// cluster, and holes on both layers.
const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const BASE_WRITES = ['write -P 0x5d 0 64k', 'write -P 0xd5 1M 64k', 'write -P 0x77 40M 2M'];
const TOP_WRITES = [
  'write -P 0xab 0 32k',
  'write -P 0x11 0x200003 1000',
  'write -P 0x22 0x1ffff9c 300', // 32M - 100: across a cluster boundary
  'write -P 0x33 3M 3M',
  'write -z 5M 64k', // a zero cluster inside data
  'write -P 0x44 41M 4097', // over base data
];
const POINTS = [0, 32768, 65536, MiB, MiB + 65536, 0x200003, 0x200003 + 1000, 32 * MiB - 100, 32 * MiB, 32 * MiB + 200, 3 * MiB, 5 * MiB, 5 * MiB + 65536, 6 * MiB, 40 * MiB, 41 * MiB + 4097, 42 * MiB, SIZE - 1];

let scratch: Scratch;
let top: string;
let reference: Buffer;
let map: MapEntry[];
let socket: string;
let nbd: NbdClient;

beforeAll(async () => {
  scratch = await Scratch.create();
  const base = scratch.path('base.qcow2');
  top = scratch.path('top.qcow2');
  await qemuImg.create(base, { format: 'qcow2', size: SIZE, options: { cluster_size: '64k' } });
  await qemuIo.run(base, BASE_WRITES, { format: 'qcow2' });
  await qemuImg.create(top, { format: 'qcow2', size: SIZE, backingFile: base, backingFormat: 'qcow2', options: { cluster_size: '64k' } });
  await qemuIo.run(top, TOP_WRITES, { format: 'qcow2' });
  reference = await referenceBytes(scratch, top);
  map = await qemuImg.map(top);
  socket = scratch.startQemuNbd('top', ['--format=qcow2', '--read-only', '--shared=8', '--export-name=exp', '--allocation-depth', top]).socket;
  nbd = await scratch.connect(socket, { exportName: 'exp', metaContexts: [BASE_ALLOCATION, QEMU_ALLOCATION_DEPTH] });
}, 120_000);

afterAll(async () => {
  await scratch?.cleanUp();
});

test('handshake: export size, flags, block size constraints and granted contexts', () => {
  expect(nbd.state).toBe('ready');
  expect(nbd.structuredReplies).toBe(true);
  expect(nbd.export).toMatchObject({ name: 'exp', size: SIZE, readOnly: true, canTrim: false });
  expect(nbd.export.blockSize).toEqual({ minimum: 1, preferred: 4096, maximum: 32 * MiB, advertised: true });
  expect([...nbd.metaContexts.keys()].sort()).toEqual([BASE_ALLOCATION, QEMU_ALLOCATION_DEPTH]);
  expect(nbd.maxRequestSize).toBe(32 * MiB);
});

test('reads at every alignment equal the image, many in flight at once', async () => {
  const cases = alignmentCases(POINTS, SIZE);
  expect(cases.length).toBeGreaterThan(1000);
  const results = await Promise.all(cases.map(([offset, length]) => nbd.read(offset, length)));
  const wrong = cases.filter(([offset, length], i) => !results[i]!.equals(reference.subarray(offset, offset + length)));
  expect(wrong).toEqual([]);
  // Negative control: the comparison does see a difference when there is one.
  // Bytes [0x200002, 0x200004) are 00 11; shifted by one they would be 11 11.
  const edge = results[cases.findIndex(([o, l]) => o === 0x200002 && l === 2)]!;
  expect(edge.toString('hex')).toBe('0011');
  expect(edge.equals(reference.subarray(0x200003, 0x200005))).toBe(false);
});

test('a read larger than the maximum block size is split and reassembled (whole image)', async () => {
  const all = await nbd.read(0, SIZE);
  expect(all.length).toBe(SIZE);
  expect(all.equals(reference)).toBe(true);
});

test('small requests (unaligned splits) and simple replies give the same bytes', async () => {
  const small = await scratch.connect(socket, { exportName: 'exp', maxRequestSize: 100_003 });
  const simple = await scratch.connect(socket, { exportName: 'exp', structuredReplies: false });
  expect(simple.structuredReplies).toBe(false);
  for (const client of [small, simple]) {
    const [offset, length] = [MiB - 7, 5 * MiB + 3];
    expect((await client.read(offset, length)).equals(reference.subarray(offset, offset + length))).toBe(true);
    const cases = alignmentCases([0x200003, 32 * MiB - 100, 5 * MiB], SIZE);
    const results = await Promise.all(cases.map(([o, l]) => client.read(o, l)));
    expect(cases.filter(([o, l], i) => !results[i]!.equals(reference.subarray(o, o + l)))).toEqual([]);
  }
  // Block status needs structured replies; the client says so before sending anything.
  await expect(simple.blockStatus(0, 512)).rejects.toBeInstanceOf(NbdArgumentError);
});

test('base:allocation extents equal qemu-img map (whole export and a clipped range)', async () => {
  const extents = await collect(nbd.extents({ context: BASE_ALLOCATION }));
  expect(extentsAsAllocation(extents)).toEqual(mapAsAllocation(map));
  // The zero cluster in the middle of data is reported as such.
  expect(extents.find((e) => e.offset <= 5 * MiB && e.offset + e.length > 5 * MiB)?.flags).toBe(ExtentFlag.HOLE | ExtentFlag.ZERO);

  const [from, to] = [12_345, 41 * MiB + 7];
  const clipped = await collect(nbd.extents({ context: BASE_ALLOCATION, offset: from, length: to - from }));
  expect(clipped[0]!.offset).toBe(from);
  expect(clipped.at(-1)!.offset + clipped.at(-1)!.length).toBe(to);
  const clippedMap = map
    .map((e) => ({ ...e, start: Math.max(e.start, from), length: Math.min(e.start + e.length, to) - Math.max(e.start, from) }))
    .filter((e) => e.length > 0);
  expect(extentsAsAllocation(clipped)).toEqual(mapAsAllocation(clippedMap));
});

test('qemu:allocation-depth extents equal the layers qemu-img map names', async () => {
  const depth = await collect(nbd.extents({ context: QEMU_ALLOCATION_DEPTH }));
  const fromMap = runs(map, (e) => e.start, (e) => e.length, (e) => String(e.present ? e.depth + 1 : 0));
  expect(runs(depth, (e) => e.offset, (e) => e.length, (e) => String(e.flags))).toEqual(fromMap);
  // Both layers and unallocated space occur, so the comparison is not trivially true.
  expect(new Set(depth.map((e) => e.flags))).toEqual(new Set([0, 1, 2]));
});

test('one block status request reports every selected context', async () => {
  const status = await nbd.blockStatus(MiB, 4 * MiB);
  expect([...status.keys()].sort()).toEqual([BASE_ALLOCATION, QEMU_ALLOCATION_DEPTH]);
  for (const extents of status.values()) expect(extents[0]!.offset).toBe(MiB);
});

test('readRanges streams the allocated extents in order with reads in flight', async () => {
  async function* allocated(): AsyncGenerator<{ offset: number; length: number }> {
    for await (const e of nbd.extents({ context: BASE_ALLOCATION })) if ((e.flags & ExtentFlag.HOLE) === 0) yield e;
  }
  let expectedOffset = -1;
  let bytes = 0;
  for await (const block of nbd.readRanges(allocated(), { blockSize: 256 * 1024, readAhead: 4 })) {
    expect(block.offset).toBeGreaterThan(expectedOffset);
    expectedOffset = block.offset;
    expect(block.data.equals(reference.subarray(block.offset, block.offset + block.length))).toBe(true);
    bytes += block.length;
  }
  const dataBytes = map.filter((e) => e.data).reduce((n, e) => n + e.length, 0);
  expect(bytes).toBe(dataBytes);
});

test('readInto fills a caller buffer; readRanges with reuseBuffers recycles a bounded set of buffers', async () => {
  const target = Buffer.alloc(3 * MiB + 5, 0xee);
  const view = target.subarray(2, 3 * MiB + 3);
  expect(await nbd.readInto(view, 3 * MiB - 1)).toBe(view);
  expect(view.equals(reference.subarray(3 * MiB - 1, 6 * MiB))).toBe(true);
  expect([target[0], target[1], target[target.length - 1]]).toEqual([0xee, 0xee, 0xee]);

  const buffers = new Set<ArrayBufferLike>();
  let next = 0;
  for await (const block of nbd.readRanges([{ offset: 0, length: 20 * MiB }, { offset: 40 * MiB, length: 3 * MiB + 7 }], {
    blockSize: MiB,
    readAhead: 3,
    reuseBuffers: true,
  })) {
    // Valid until the next step of the loop: checked here, not kept.
    expect(block.data.equals(reference.subarray(block.offset, block.offset + block.length))).toBe(true);
    buffers.add(block.data.buffer);
    next += block.length;
  }
  expect(next).toBe(23 * MiB + 7);
  expect(buffers.size).toBeLessThanOrEqual(4); // readAhead + the one lent to the loop
});

test('reads outside the export are refused before anything is sent', async () => {
  await expect(nbd.read(SIZE - 1, 2)).rejects.toBeInstanceOf(NbdArgumentError);
  await expect(nbd.read(-1, 1)).rejects.toBeInstanceOf(NbdArgumentError);
  await expect(nbd.read(0.5, 1)).rejects.toBeInstanceOf(NbdArgumentError);
  expect((await nbd.read(SIZE, 0)).length).toBe(0);
  expect(nbd.state).toBe('ready');
});

test('disconnect ends the session cleanly (NBD_CMD_DISC)', async () => {
  const client = await scratch.connect(socket, { exportName: 'exp' });
  const pending = client.read(0, 8 * MiB);
  const done = client.disconnect();
  expect((await pending).equals(reference.subarray(0, 8 * MiB))).toBe(true);
  await done;
  expect(await client.closed).toBeUndefined();
  expect(client.state).toBe('closed');
});
