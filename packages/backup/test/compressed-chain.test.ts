// Issue 10: compressed backups through the job's `compress` option. A compressed chain must
// be smaller than the plain one of the same drive, and restore and verify exactly as it.
import { qemuImg, qemuIo } from '@qmpkit/image-tools';
import { BackupChain } from '../src/index.js';
import type { Manifest } from '../src/index.js';
import { Scratch, hmpWrites, launchWithSocket, qmpOf } from './helpers.js';

const MiB = 1048576;

describe('compressed chains', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  it('are smaller than plain ones of the same drive, and restore and verify the same', async () => {
    await scratch.init();
    // Compressible data: 16 MiB of one byte, a few other patterns.
    const drive0 = await scratch.image('drive0.qcow2', '64M', [[0x41, 0, '16M'], [0x5a, '40M', '1M']]);
    const { vm, socket } = await launchWithSocket(scratch, drive0);
    const plain = await BackupChain.open({ qmp: qmpOf(vm), dir: scratch.path('plain'), node: 'drive0' });
    const packed = await BackupChain.open({ qmp: qmpOf(vm), dir: scratch.path('packed'), node: 'drive0' });

    const plainFull = await plain.full();
    const full = await packed.full({ compress: true });
    expect(full.backups[0]).toMatchObject({ compressed: true, bytes: 17 * MiB, jobLength: 64 * MiB });
    expect(plainFull.backups[0]?.compressed).toBeUndefined();
    // The compressed file is a fraction of the plain one (16 MiB of one byte compress to little).
    expect(full.backups[0]?.fileSize).toBeLessThan((plainFull.backups[0]?.fileSize as number) / 4);

    await hmpWrites(vm, 'drive0', [[0x33, '20M', '4M']]);
    await plain.incremental();
    // The CLI's --compress for the incremental.
    const inc = await scratch.cli(['incremental', '--socket', socket, '--dir', scratch.path('packed'), '--compress', '--json']).done;
    expect(inc.code).toBe(0);
    const incResult = JSON.parse(inc.stdout) as { backups: Manifest['drives'][number]['backups'] };
    expect(incResult.backups[0]).toMatchObject({ kind: 'incremental', compressed: true, bytes: 4 * MiB });
    expect(incResult.backups[0]?.fileSize).toBeLessThan(4 * MiB);
    // QEMU wrote compressed clusters: qemu-img check counts them (none in the plain chain's).
    const check = await qemuImg.check(scratch.path(`packed/${incResult.backups[0]?.file ?? ''}`));
    expect(check.report['compressed-clusters']).toBe(64);
    const plainCheck = await qemuImg.check(scratch.path(`plain/${plain.backups[1]?.file ?? ''}`));
    expect(plainCheck.report['compressed-clusters'] ?? 0).toBe(0);

    await vm.shutdown({ timeout: 10_000 });
    for (const chain of [plain, packed]) {
      expect((await chain.verify({ sources: { drive0 } })).ok).toBe(true);
      const restored = await chain.restore(scratch.path(`${chain === plain ? 'plain' : 'packed'}.raw`), { format: 'raw' });
      expect((await qemuImg.compare(restored, drive0)).identical).toBe(true);
    }
    // A negative control: the restored full differs from the drive now (the incremental's writes).
    const first = await packed.restore(scratch.path('packed-0.raw'), { format: 'raw', upTo: 0 });
    expect((await qemuImg.compare(first, drive0)).identical).toBe(false);
    await qemuIo.verify(first, { pattern: 0x41, offset: 0, length: 16 * MiB }).catch(() => {
      throw new Error('the restored compressed full does not hold the drive data');
    });
  });
});
