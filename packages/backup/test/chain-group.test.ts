import { readFile, readdir } from 'node:fs/promises';
import type { QemuMachine } from '@qmpkit/machine';
import { listBitmaps } from '../src/index.js';
import type { BackupQmp } from '../src/index.js';
import { BackupChainGroup, BackupJobError, getBitmap } from '../src/index.js';
import { DRIVE0_PATTERN, DRIVE1_PATTERN, Scratch, WRITES_A, WRITES_B, addBlkdebugNode, hmpWrites, qmpOf } from './helpers.js';

describe('BackupChainGroup against QEMU', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  /** drive0 attached with -drive, drive1 a blockdev-add'ed node over blkdebug (fails a read after a flush). */
  async function twoDrives(): Promise<{ drive0: string; drive1: string; vm: QemuMachine; qmp: BackupQmp }> {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const drive1 = await scratch.image('drive1.qcow2', '64M', DRIVE1_PATTERN);
    const vm = await scratch.launch([{ file: drive0, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    await addBlkdebugNode(vm, 'drive1', drive1);
    return { drive0, drive1, vm, qmp: qmpOf(vm) };
  }

  it('keeps two drives in step: one failing drive fails the run for both, the retry verifies', async () => {
    const { drive0, drive1, vm, qmp } = await twoDrives();
    const dir = scratch.path('backups');
    const group = await BackupChainGroup.open({ qmp, dir, drives: [{ node: 'drive0' }, { node: 'drive1' }] });

    const full = await group.full();
    expect(full.backups.map((b) => b.kind)).toEqual(['full', 'full']);
    expect(new Set(full.backups.map((b) => b.run)).size).toBe(1);
    expect(group.manifest?.drives.map((d) => d.node)).toEqual(['drive0', 'drive1']);

    await hmpWrites(vm, 'drive0', WRITES_A);
    await hmpWrites(vm, 'drive1', WRITES_B);
    const before = await readFile(group.manifestPath, 'utf8');
    const filesBefore = (await readdir(dir)).sort();

    const error = await group.incremental().catch((e: unknown) => e);
    expect(BackupJobError.isInstance(error)).toBe(true);
    const failure = error as BackupJobError;
    expect(failure.results.map((r) => r.status)).toEqual(['cancelled', 'failed']);
    expect(failure.qemuError).toBe('Input/output error');
    expect(await readFile(group.manifestPath, 'utf8')).toBe(before);
    expect((await readdir(dir)).sort()).toEqual(filesBefore);
    expect((await getBitmap(qmp, 'drive0', group.manifest?.drives[0]?.bitmap ?? '')).count).toBe(458752);
    expect((await getBitmap(qmp, 'drive1', group.manifest?.drives[1]?.bitmap ?? '')).count).toBe(1507328);

    const retry = await group.incremental();
    expect(retry.backups.map((b) => [b.kind, b.bytes])).toEqual([
      ['incremental', 458752],
      ['incremental', 1507328],
    ]);
    expect(retry.backups[0]?.run).toBe(retry.backups[1]?.run);
    await vm.shutdown({ timeout: 10_000 });
    const report = await group.verify({ sources: { drive0, drive1 } });
    expect(report.sources.map((s) => s.identical)).toEqual([true, true]);
    await expect(group.restore(scratch.path('x.qcow2'))).rejects.toThrow(/say which node/);
    await group.restore(scratch.path('drive1.restored.qcow2'), { node: 'drive1' });
  });

  it('a full of several drives that fails on one leaves no bitmap, target or manifest on any', async () => {
    const { vm, qmp } = await twoDrives();
    // The flush arms blkdebug: drive1's next read (the full's first) fails.
    await hmpWrites(vm, 'drive1', [[0x01, 0, 512]]);
    const dir = scratch.path('backups');
    const group = await BackupChainGroup.open({ qmp, dir, drives: [{ node: 'drive0' }, { node: 'drive1' }] });
    const error = await group.full().catch((e: unknown) => e);
    expect(BackupJobError.isInstance(error)).toBe(true);
    expect((error as BackupJobError).results.map((r) => r.status).sort()).toEqual(['cancelled', 'failed']);
    expect(await listBitmaps(qmp, 'drive0')).toEqual([]);
    expect(await listBitmaps(qmp, 'drive1')).toEqual([]);
    expect(await readdir(dir)).toEqual(['manifest.runs.jsonl']);
    expect(group.manifest).toBeUndefined();
  });
});
