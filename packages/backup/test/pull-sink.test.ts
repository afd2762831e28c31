// pullBackup() into a Writable: the extents a pull-mode backup reads from QEMU's fleecing export,
// checked like QEMU's image-fleecing iotest: the guest writes while the backup runs, and the
// backup still holds the drive as it was at the point. Both fleecing methods: 'backup-sync-none'
// on `-machine none` (a drive without a device), 'snapshot-access' on a PC that never runs with
// the drive on a virtio-blk device. Every failure leaves nothing behind and the bitmap whole.
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { QemuMachine } from '@qmpkit/machine';
import { ExtentFlag, NbdClient, qemuDirtyBitmapContext } from '@qmpkit/nbd';
import { BackupAbortedError, PullSinkError, addBitmap, getBitmap, pullBackup } from '../src/index.js';
import type { FleecingMethod, PullBackupOptions, PullExtent } from '../src/index.js';
import { NO_PULL_LEFTOVERS, Scratch, hmpWrites, launchWithDevice, pullLeftovers } from './helpers.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

/** Collects what it is given; `onWrite` runs before each write completes (it may be slow, or fail). */
class CollectingSink extends Writable {
  readonly extents: PullExtent[] = [];
  maxBuffered = 0;
  constructor(private readonly onWrite: (extent: PullExtent, index: number) => Promise<void> = async () => undefined, highWaterMark = 2) {
    super({ objectMode: true, highWaterMark });
  }
  override _write(extent: PullExtent, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.maxBuffered = Math.max(this.maxBuffered, this.writableLength);
    const index = this.extents.length;
    // Copies: a sink may keep what it is given.
    this.extents.push(extent.zero === true ? { ...extent } : { offset: extent.offset, length: extent.length, data: Buffer.from(extent.data) });
    this.onWrite(extent, index).then(() => callback(), (error: Error) => callback(error));
  }
}

/** The drive as the extents describe it, over `base` (what was there before: zeroes for a full). */
function apply(extents: readonly PullExtent[], base: Buffer = Buffer.alloc(SIZE)): Buffer {
  const out = Buffer.from(base);
  for (const e of extents) {
    if (e.zero === true) out.fill(0, e.offset, e.offset + e.length);
    else out.set(e.data, e.offset);
  }
  return out;
}

function expectFilled(image: Buffer, offset: number, length: number, byte: number): void {
  const slice = image.subarray(offset, offset + length);
  const wrong = slice.findIndex((b) => b !== byte);
  if (wrong !== -1) throw new Error(`byte at ${offset + wrong} is 0x${slice[wrong]?.toString(16)}, expected 0x${byte.toString(16)}`);
}

/** Connect to the running backup's export (found in its scratch directory and QEMU) and read 20 MiB's first byte and the frozen bitmap's dirty extents. */
async function readExportAsAnotherClient(tmp: string, vm: QemuMachine): Promise<{ byte: number; dirty: Array<{ offset: number; length: number }> }> {
  const [run] = (await readdir(tmp)).filter((f) => f.startsWith('.qmpkit-pull-'));
  const [exp] = (await vm.qmp.execute('query-block-exports')) as Array<{ id: string }>;
  const named = (await vm.qmp.execute('query-named-block-nodes', { flat: true })) as Array<{ 'dirty-bitmaps'?: Array<{ name?: string }> }>;
  const frozen = named.flatMap((n) => n['dirty-bitmaps'] ?? []).find((b) => b.name?.includes('-pull-'))?.name as string;
  const context = qemuDirtyBitmapContext(frozen);
  const nbd = await NbdClient.connect(join(tmp, run as string, 'nbd.sock'), { exportName: exp?.id as string, metaContexts: [context] });
  try {
    const byte = (await nbd.read(20 * MiB, 4096))[0] as number;
    const dirty: Array<{ offset: number; length: number }> = [];
    for await (const x of nbd.extents({ context })) if (x.flags & ExtentFlag.DIRTY) dirty.push({ offset: x.offset, length: x.length });
    return { byte, dirty };
  } finally {
    await nbd.disconnect();
  }
}

const setups: Array<[FleecingMethod, (scratch: Scratch, drive: string) => Promise<QemuMachine>]> = [
  ['backup-sync-none', (scratch, drive) => scratch.launch([{ file: drive, format: 'qcow2', id: 'drive0', nodeName: 'node0' }])],
  ['snapshot-access', (scratch, drive) => launchWithDevice(scratch, drive)],
];

describe.each(setups)('pullBackup into a sink, fleecing %s', (method, launch) => {
  const scratch = new Scratch();
  let vm: QemuMachine;
  let tmp: string;

  beforeEach(async () => {
    await scratch.init();
    const drive = await scratch.image('drive0.qcow2', '64M', [[0x5d, '48M', '1M']]);
    vm = await launch(scratch, drive);
    tmp = scratch.path('pull-tmp');
    await mkdir(tmp);
    await addBitmap(vm.qmp, { node: 'drive0', name: 'b0', granularity: 65536 });
    // Before the point: 40 MiB of data, and 1 MiB of it zeroed again.
    await hmpWrites(vm, 'drive0', [[0x11, 0, '40M']]);
    await vm.hmpQemuIo('drive0', 'write -z 8M 1M');
  });
  afterEach(() => scratch.cleanup());

  async function expectNothingLeft(): Promise<void> {
    expect(await pullLeftovers(vm)).toEqual(NO_PULL_LEFTOVERS);
    expect(await readdir(tmp)).toEqual([]);
  }

  /** While the sink holds the first extent, the guest overwrites data the backup has not read yet (more than 8 reads ahead). */
  const writeDuring = async (_e: PullExtent, index: number): Promise<void> => {
    if (index === 0) await hmpWrites(vm, 'drive0', [[0x99, '20M', '1M'], [0x98, '39M', '64k'], [0x97, '56M', '64k'], [0x96, '8M', '64k']]);
  };

  it('an incremental holds the point-in-time content while the guest writes, zero extents included', async () => {
    const progress: Array<{ current: number; total: number; final?: boolean }> = [];
    let seen: { byte: number; dirty: Array<{ offset: number; length: number }> } | undefined;
    const sink = new CollectingSink(async (e, index) => {
      await writeDuring(e, index);
      // As the image-fleecing iotest does: another client of the export, after the guest's
      // writes, reads the old data and the bitmap as it was at the point.
      if (index === 0) seen = await readExportAsAnotherClient(tmp, vm);
    });
    const result = await pullBackup({
      qmp: vm.qmp, node: 'drive0', sink, bitmap: 'b0', scratchDir: tmp, fleecing: method,
      onProgress: (p) => progress.push({ current: p.current, total: p.total, ...(p.final ? { final: true } : {}) }),
    });
    expect(result).toMatchObject({ sync: 'incremental', fleecing: method, size: SIZE, bytes: 39 * MiB, zeroBytes: MiB, total: 40 * MiB, dirty: 40 * MiB, leftovers: [] });
    expect(seen).toEqual({ byte: 0x11, dirty: [{ offset: 0, length: 40 * MiB }] });
    expect(sink.writableFinished).toBe(true);
    const image = apply(sink.extents);
    expectFilled(image, 0, 8 * MiB, 0x11);
    expectFilled(image, 8 * MiB, MiB, 0);
    expectFilled(image, 9 * MiB, 31 * MiB, 0x11); // the guest's 0x99 and 0x98 came after the point
    expectFilled(image, 40 * MiB, SIZE - 40 * MiB, 0); // not dirty: never sent
    expect(sink.extents.filter((e) => e.zero === true)).toEqual([{ offset: 8 * MiB, length: MiB, zero: true }]);
    // Offset order, no overlap.
    sink.extents.forEach((e, i) => i > 0 && expect(e.offset).toBeGreaterThanOrEqual((sink.extents[i - 1] as PullExtent).offset + (sink.extents[i - 1] as PullExtent).length));
    // Backpressure: the sink never held more than its high-water mark.
    expect(sink.maxBuffered).toBeLessThanOrEqual(2);
    // The bitmap now records exactly the writes after the point.
    expect((await getBitmap(vm.qmp, 'drive0', 'b0')).count).toBe(MiB + 3 * 65536);
    expect(progress.at(-1)).toEqual({ current: 40 * MiB, total: 40 * MiB, final: true });
    expect(progress.filter((p) => p.final)).toHaveLength(1);
    await expectNothingLeft();

    // The next incremental has exactly the writes of the interval.
    const next = new CollectingSink();
    const second = await pullBackup({ qmp: vm.qmp, node: 'drive0', sink: next, bitmap: 'b0', scratchDir: tmp, fleecing: method });
    expect(second).toMatchObject({ bytes: MiB + 3 * 65536, zeroBytes: 0 });
    const after = apply(next.extents, image);
    expectFilled(after, 20 * MiB, MiB, 0x99);
    expectFilled(after, 39 * MiB, 65536, 0x98);
    expectFilled(after, 56 * MiB, 65536, 0x97);
    expectFilled(after, 8 * MiB, 65536, 0x96);
    await expectNothingLeft();
  });

  it('a full sends everything allocated at the point, and nothing that reads as zeroes', async () => {
    const sink = new CollectingSink(writeDuring);
    const result = await pullBackup({ qmp: vm.qmp, node: 'drive0', sink, scratchDir: tmp, fleecing: method });
    expect(result).toMatchObject({ sync: 'full', total: SIZE, dirty: SIZE, zeroBytes: 0, bytes: 40 * MiB });
    const image = apply(sink.extents);
    expectFilled(image, 0, 8 * MiB, 0x11);
    expectFilled(image, 8 * MiB, MiB, 0);
    expectFilled(image, 9 * MiB, 31 * MiB, 0x11);
    expectFilled(image, 40 * MiB, 8 * MiB, 0);
    expectFilled(image, 48 * MiB, MiB, 0x5d);
    expectFilled(image, 49 * MiB, SIZE - 49 * MiB, 0);
    expect(sink.extents.some((e) => e.offset >= 8 * MiB && e.offset < 9 * MiB)).toBe(false);
    // Without a bitmap, none is touched.
    expect((await getBitmap(vm.qmp, 'drive0', 'b0')).count).toBe(40 * MiB + 65536);
    await expectNothingLeft();
  });

  async function expectBitmapWhole(failing: Omit<PullBackupOptions, 'qmp' | 'node' | 'sink'> & { sink: Writable }): Promise<unknown> {
    const error = await pullBackup({ qmp: vm.qmp, node: 'drive0', bitmap: 'b0', scratchDir: tmp, fleecing: method, ...failing }).then(
      () => undefined,
      (e: unknown) => e,
    );
    await expectNothingLeft();
    // The interval is still covered: the 40 MiB from before, plus the guest's write during the run outside them.
    expect((await getBitmap(vm.qmp, 'drive0', 'b0')).count).toBe(40 * MiB + 65536);
    expect(failing.sink.writableFinished).toBe(false);
    return error;
  }

  it('a sink that fails mid-copy: PullSinkError, nothing left behind, the bitmap covers the interval', async () => {
    const sink = new CollectingSink(async (e, i) => {
      await writeDuring(e, i);
      if (i === 3) throw new Error('disk full');
    });
    const error = await expectBitmapWhole({ sink });
    expect(PullSinkError.isInstance(error)).toBe(true);
    expect((error as PullSinkError).message).toMatch(/disk full/);
    expect(sink.destroyed).toBe(true);
  });

  it('an abort mid-copy: BackupAbortedError, nothing left behind, the bitmap covers the interval', async () => {
    const controller = new AbortController();
    const sink = new CollectingSink(async (e, i) => {
      await writeDuring(e, i);
      if (i === 2) controller.abort(new Error('operator'));
    });
    const error = await expectBitmapWhole({ sink, signal: controller.signal });
    expect(BackupAbortedError.isInstance(error)).toBe(true);
    expect((error as BackupAbortedError).reason).toBe('abort');
  });

  it('the NBD connection dropped mid-read: the error, nothing left behind, the bitmap covers the interval', async () => {
    const sink = new CollectingSink(async (e, i) => {
      await writeDuring(e, i);
      // QEMU drops the client: the export is removed under it.
      if (i === 1) {
        const [exp] = (await vm.qmp.execute('query-block-exports')) as Array<{ id: string }>;
        await vm.qmp.execute('block-export-del', { id: exp?.id as string, mode: 'hard' });
      }
    });
    const error = await expectBitmapWhole({ sink });
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).name).toMatch(/^Nbd/);
  });

  it('refuses a sink that is not in object mode before anything is set up', async () => {
    const bytes = new Writable({ write: (_c, _e, cb) => cb() });
    await expect(pullBackup({ qmp: vm.qmp, node: 'drive0', sink: bytes, scratchDir: tmp })).rejects.toThrow(/object mode/);
    await expectNothingLeft();
  });
});
