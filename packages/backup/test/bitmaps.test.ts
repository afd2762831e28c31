import { QmpCommandError } from '@qmpkit/client';
import type { QemuMachine } from '@qmpkit/machine';
import {
  BitmapNotFoundError,
  InvalidGranularityError,
  NodeNotFoundError,
  addBitmap,
  clearBitmap,
  disableBitmap,
  enableBitmap,
  findBitmap,
  getBitmap,
  listBitmaps,
  mergeBitmaps,
  removeBitmap,
} from '../src/index.js';
import type { BackupQmp } from '../src/index.js';
import { DRIVE0_PATTERN, Scratch, WRITES_A, hmpWrites, qmpOf } from './helpers.js';

describe('dirty bitmaps against QEMU', () => {
  const scratch = new Scratch();
  let vm: QemuMachine;
  let qmp: BackupQmp;

  beforeAll(async () => {
    await scratch.init();
    const file = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    vm = await scratch.launch([{ file, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    qmp = qmpOf(vm);
  });
  afterAll(() => scratch.cleanup());

  afterEach(async () => {
    for (const b of await listBitmaps(qmp, 'node0')) await removeBitmap(qmp, 'node0', b.name);
  });

  it('refuses granularities QEMU would refuse before sending anything, and QEMU agrees', async () => {
    for (const g of [256, 64000, 3 * 65536, 2 ** 32, 0, -512, 1.5]) {
      await expect(addBitmap(qmp, { node: 'node0', name: `g${g}`, granularity: g })).rejects.toThrow(
        InvalidGranularityError,
      );
    }
    expect(await listBitmaps(qmp, 'node0')).toEqual([]);
    // The limits are QEMU's: 256 and a non-power of two fail there too, 512 and 2^31 pass.
    for (const granularity of [256, 64000]) {
      const refused = await vm.qmp
        .execute('block-dirty-bitmap-add', { node: 'node0', name: 'x', granularity })
        .catch((e: unknown) => e);
      expect(QmpCommandError.isInstance(refused)).toBe(true);
    }
    await addBitmap(qmp, { node: 'node0', name: 'smallest', granularity: 512 });
    await addBitmap(qmp, { node: 'node0', name: 'largest', granularity: 2 ** 31 });
    const granularities = (await listBitmaps(qmp, 'node0')).map((b) => [b.name, b.granularity]);
    expect(granularities).toEqual(expect.arrayContaining([['smallest', 512], ['largest', 2 ** 31]]));
  });

  it('reads a bitmap by device name and by node-name, normalised', async () => {
    await addBitmap(qmp, { node: 'drive0', name: 'b0', granularity: 65536 });
    await hmpWrites(vm, 'drive0', WRITES_A);
    const expected = {
      name: 'b0',
      count: 458752,
      granularity: 65536,
      persistent: false,
      busy: false,
      recording: true,
      inconsistent: false,
    };
    expect(await getBitmap(qmp, 'drive0', 'b0')).toEqual(expected);
    expect(await getBitmap(qmp, 'node0', 'b0')).toEqual(expected);
    const all = await listBitmaps(qmp);
    expect(all.get('node0')).toEqual([expected]);
  });

  it('adds persistent and disabled bitmaps', async () => {
    await addBitmap(qmp, { node: 'node0', name: 'p', persistent: true });
    await addBitmap(qmp, { node: 'node0', name: 'd', disabled: true });
    await hmpWrites(vm, 'drive0', [[0x11, 0, '64k']]);
    const p = await getBitmap(qmp, 'node0', 'p');
    const d = await getBitmap(qmp, 'node0', 'd');
    expect(p).toMatchObject({ persistent: true, recording: true, count: 65536 });
    expect(d).toMatchObject({ persistent: false, recording: false, count: 0 });
  });

  it('clears, disables, enables, merges and removes', async () => {
    await addBitmap(qmp, { node: 'node0', name: 'a' });
    await addBitmap(qmp, { node: 'node0', name: 'b' });
    await hmpWrites(vm, 'drive0', [[0x22, 0, '64k']]);
    await disableBitmap(qmp, 'node0', 'b');
    await hmpWrites(vm, 'drive0', [[0x23, '1M', '64k']]);
    expect((await getBitmap(qmp, 'node0', 'a')).count).toBe(131072);
    expect(await getBitmap(qmp, 'node0', 'b')).toMatchObject({ count: 65536, recording: false });

    await clearBitmap(qmp, 'node0', 'a');
    expect((await getBitmap(qmp, 'node0', 'a')).count).toBe(0);
    await enableBitmap(qmp, 'node0', 'b');
    await hmpWrites(vm, 'drive0', [[0x24, '2M', '64k']]);
    expect(await getBitmap(qmp, 'node0', 'b')).toMatchObject({ count: 131072, recording: true });

    // a: the write at 2M; b: the writes at 0 and 2M; their union is two clusters.
    expect((await getBitmap(qmp, 'node0', 'a')).count).toBe(65536);
    await mergeBitmaps(qmp, 'node0', 'a', ['b']);
    expect((await getBitmap(qmp, 'node0', 'a')).count).toBe(131072);

    await removeBitmap(qmp, 'node0', 'b');
    expect(await findBitmap(qmp, 'node0', 'b')).toBeUndefined();
    await expect(getBitmap(qmp, 'node0', 'b')).rejects.toThrow(BitmapNotFoundError);
  });

  it('finds nodes added with blockdev-add, which query-block does not list', async () => {
    const file = await scratch.image('extra.qcow2', '16M');
    await vm.qmp.execute('blockdev-add', { 'node-name': 'extra', driver: 'qcow2', file: { driver: 'file', filename: file } });
    try {
      await addBitmap(qmp, { node: 'extra', name: 'e', granularity: 4096 });
      expect(await getBitmap(qmp, 'extra', 'e')).toMatchObject({ name: 'e', granularity: 4096, count: 0 });
      expect((await listBitmaps(qmp)).get('extra')).toHaveLength(1);
      await removeBitmap(qmp, 'extra', 'e');
    } finally {
      await vm.qmp.execute('blockdev-del', { 'node-name': 'extra' });
    }
  });

  it('names an unknown node', async () => {
    const error = await listBitmaps(qmp, 'nowhere').catch((e: unknown) => e);
    expect(NodeNotFoundError.isInstance(error)).toBe(true);
    expect((error as NodeNotFoundError).node).toBe('nowhere');
  });
});
