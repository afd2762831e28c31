// Issue 9, scenario 1: two chains on one drive used to share the bitmap 'qmpkit-backup', so a
// full of one reset the other's bitmap and the other's next incremental silently missed the
// writes in between. Each chain now owns a bitmap of its own.
import { qemuImg } from '@qmpkit/image-tools';
import { BackupChain, getBitmap, listBitmaps, startDriveBackup } from '../src/index.js';
import type { QemuMachine } from '@qmpkit/machine';
import type { BackupQmp } from '../src/index.js';
import { DRIVE0_PATTERN, Scratch, hmpWrites, qmpOf } from './helpers.js';

async function reference(qmp: BackupQmp, target: string): Promise<void> {
  await (await startDriveBackup(qmp, { device: 'drive0', 'job-id': 'reference', sync: 'full', target, format: 'qcow2' })).expectCompleted();
}

describe('two chains on one drive', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  /** One drive, two chain directories on it. */
  async function twoChains(): Promise<{ drive0: string; vm: QemuMachine; qmp: BackupQmp; a: BackupChain; b: BackupChain }> {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const vm = await scratch.launch([{ file: drive0, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    const qmp = qmpOf(vm);
    const a = await BackupChain.open({ qmp, dir: scratch.path('a'), node: 'drive0' });
    const b = await BackupChain.open({ qmp, dir: scratch.path('b'), node: 'drive0' });
    return { drive0, vm, qmp, a, b };
  }

  it('interleaved fulls and incrementals of two chains both verify, restore point by restore point', async () => {
    const { drive0, vm, qmp, a, b } = await twoChains();
    const refs = new Map<string, string>();
    const snapshot = async (chain: BackupChain, name: string): Promise<void> => {
      const file = scratch.path(`${name}.ref.qcow2`);
      await reference(qmp, file);
      refs.set(`${chain.dir}/${chain.backups[chain.backups.length - 1]?.file ?? ''}`, file);
    };

    await a.full();
    await snapshot(a, 'a0');
    await hmpWrites(vm, 'drive0', [[0x11, '2M', '64k']]);
    // The second chain's full must not touch the first chain's bitmap: it still holds the write.
    await b.full();
    await snapshot(b, 'b0');
    expect(a.drive?.bitmap).not.toBe(b.drive?.bitmap);
    expect((await getBitmap(qmp, 'drive0', a.drive?.bitmap ?? '')).count).toBe(65536);
    expect((await getBitmap(qmp, 'drive0', b.drive?.bitmap ?? '')).count).toBe(0);

    await hmpWrites(vm, 'drive0', [[0x22, '4M', '128k']]);
    const b1 = await b.incremental();
    await snapshot(b, 'b1');
    expect(b1.backups[0]?.bytes).toBe(131072);
    await hmpWrites(vm, 'drive0', [[0x33, '6M', '64k']]);
    // The first chain covers everything since its full: the write before B's full, B's
    // increment and the write after it. With a shared bitmap this was 64 KiB.
    const a1 = await a.incremental();
    await snapshot(a, 'a1');
    expect(a1.backups[0]?.bytes).toBe(65536 + 131072 + 65536);
    await hmpWrites(vm, 'drive0', [[0x44, '8M', '64k']]);
    const b2 = await b.incremental();
    await snapshot(b, 'b2');
    expect(b2.backups[0]?.bytes).toBe(65536 + 65536);
    const a2 = await a.incremental();
    await snapshot(a, 'a2');
    expect(a2.backups[0]?.bytes).toBe(65536);

    // Each chain has its bitmap and the mark of its last backup, nothing else of ours.
    const names = (await listBitmaps(qmp, 'drive0')).map((x) => x.name).sort();
    expect(names).toEqual(
      [a.drive?.bitmap, a.drive?.mark?.bitmap, b.drive?.bitmap, b.drive?.mark?.bitmap].map(String).sort(),
    );

    await vm.shutdown({ timeout: 10_000 });
    for (const chain of [a, b]) {
      expect((await chain.verify({ sources: { drive0 } })).ok).toBe(true);
      // Every restore point equals the drive at the moment it was taken.
      for (const [i, backup] of chain.backups.entries()) {
        const ref = refs.get(`${chain.dir}/${backup.file}`) as string;
        const restored = await chain.restore(scratch.path(`${backup.file}.restored.qcow2`), { upTo: i });
        const cmp = await qemuImg.compare(restored, ref);
        expect({ file: backup.file, identical: cmp.identical }).toEqual({ file: backup.file, identical: true });
      }
    }
  });

  it('a new full in a directory replaces its chain and removes only that chain\'s bitmaps', async () => {
    const { vm, qmp, a, b } = await twoChains();
    await a.full();
    await b.full();
    // A bitmap nobody's chain owns (say, another tool's) is never touched.
    await qmp.execute('block-dirty-bitmap-add' as never, { node: 'drive0', name: 'qmpkit-backup' } as never);
    const oldA = [a.drive?.bitmap, a.drive?.mark?.bitmap];
    await hmpWrites(vm, 'drive0', [[0x55, '1M', '64k']]);
    await a.full();
    const names = (await listBitmaps(qmp, 'drive0')).map((x) => x.name);
    expect(names).not.toContain(oldA[0]);
    expect(names).not.toContain(oldA[1]);
    expect(names).toContain(a.drive?.bitmap);
    expect(names).toContain(b.drive?.bitmap);
    expect(names).toContain(b.drive?.mark?.bitmap);
    expect(names).toContain('qmpkit-backup');
    expect((await getBitmap(qmp, 'drive0', 'qmpkit-backup')).count).toBe(65536);
    expect((await getBitmap(qmp, 'drive0', b.drive?.bitmap ?? '')).count).toBe(65536);
    expect((await b.incremental()).backups[0]?.bytes).toBe(65536);
  });
});
