import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { qemuImg } from '@qmpkit/image-tools';
import type { QemuMachine } from '@qmpkit/machine';
import {
  BackupAbortedError,
  BackupChain,
  BackupJobError,
  ChainBrokenError,
  NewFullBackupRequiredError,
  TargetExistsError,
  VerifyError,
  addBitmap,
  disableBitmap,
  getBitmap,
  removeBitmap,
  startDriveBackup,
} from '../src/index.js';
import type { BackupQmp, ChainBrokenReason, Manifest } from '../src/index.js';
import { DRIVE0_PATTERN, Scratch, WRITES_A, WRITES_B, addBlkdebugNode, hmpWrites, qmpOf, targetNodes } from './helpers.js';

async function reference(qmp: BackupQmp, device: string, target: string): Promise<void> {
  await (await startDriveBackup(qmp, { device, 'job-id': 'reference', sync: 'full', target, format: 'qcow2' })).expectCompleted();
}

/** The chain's own bitmap (named after the chain id since 0.2). */
function bitmapOf(chain: BackupChain): string {
  const name = chain.drive?.bitmap;
  if (!name) throw new Error('the chain has no bitmap yet');
  return name;
}

async function brokenReason(promise: Promise<unknown>): Promise<ChainBrokenReason | 'resolved' | 'other'> {
  try {
    await promise;
    return 'resolved';
  } catch (error) {
    return NewFullBackupRequiredError.isInstance(error) ? error.reason : 'other';
  }
}

describe('BackupChain against QEMU', () => {
  const scratch = new Scratch();
  let vm: QemuMachine;
  let qmp: BackupQmp;
  let drive0: string;

  beforeEach(async () => {
    await scratch.init();
    drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    vm = await scratch.launch([{ file: drive0, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    qmp = qmpOf(vm);
  });
  afterEach(() => scratch.cleanup());

  it('takes full, incremental and differential backups that verify and restore', async () => {
    const dir = scratch.path('backups');
    const chain = await BackupChain.open({ qmp, dir, node: 'drive0', granularity: 65536 });
    const full = await chain.full();
    // bytes: what the job wrote (the drive pattern's four 64 KiB clusters), not the drive's size.
    expect(full.backups[0]).toMatchObject({ kind: 'full', parent: null, bytes: 262144, jobLength: 67108864, driveSize: 67108864, result: 'completed' });
    expect(full.backups[0]?.durationMs).toBeGreaterThan(0);
    expect(await getBitmap(qmp, 'drive0', bitmapOf(chain))).toMatchObject({ count: 0, persistent: true, granularity: 65536 });

    const references: Record<string, string> = {};
    await hmpWrites(vm, 'drive0', WRITES_A);
    const inc1 = await chain.incremental();
    references[inc1.backups[0]?.file as string] = scratch.path('ref1.qcow2');
    await reference(qmp, 'drive0', scratch.path('ref1.qcow2'));
    expect(inc1.backups[0]).toMatchObject({ kind: 'incremental', parent: full.backups[0]?.file, bytes: 458752 });

    await hmpWrites(vm, 'drive0', WRITES_B);
    const diff = await chain.differential();
    references[diff.backups[0]?.file as string] = scratch.path('ref2.qcow2');
    await reference(qmp, 'drive0', scratch.path('ref2.qcow2'));
    // A differential keeps the bitmap: the next incremental still covers WRITES_B.
    expect(diff.backups[0]).toMatchObject({ kind: 'differential', parent: inc1.backups[0]?.file, bytes: 1507328 });
    expect((await getBitmap(qmp, 'drive0', bitmapOf(chain))).count).toBe(1507328);

    await hmpWrites(vm, 'drive0', [[0x33, '40M', '128k']]);
    const inc2 = await chain.incremental();
    references[inc2.backups[0]?.file as string] = scratch.path('ref3.qcow2');
    await reference(qmp, 'drive0', scratch.path('ref3.qcow2'));
    expect(inc2.backups[0]).toMatchObject({ parent: inc1.backups[0]?.file, bytes: 1507328 + 131072 });

    const manifest = JSON.parse(await readFile(chain.manifestPath, 'utf8')) as { chainId: string; drives: unknown[] };
    expect(manifest.chainId).toBe(full.chainId);
    expect(chain.backups.map((b) => b.kind)).toEqual(['full', 'incremental', 'differential', 'incremental']);

    await vm.shutdown({ timeout: 10_000 });
    const report = await chain.verify({ sources: { drive0 }, references });
    expect(report.ok).toBe(true);
    expect(report.images.map((i) => i.check)).toEqual(['clean', 'clean', 'clean', 'clean']);
    expect(report.sources[0]?.identical).toBe(true);

    const restored = await chain.restore(scratch.path('restored1.qcow2'), { upTo: 1 });
    const info = await qemuImg.info(restored);
    expect(info['backing-filename']).toBeUndefined();
    expect((await qemuImg.compare(restored, scratch.path('ref1.qcow2'))).identical).toBe(true);
    const latest = await chain.restore(scratch.path('latest.raw'), { format: 'raw' });
    expect((await qemuImg.compare(latest, drive0)).identical).toBe(true);
    await expect(chain.restore(latest)).rejects.toThrow(TargetExistsError);

    // A damaged reference is reported, not passed over.
    const wrongRef = scratch.path('wrong.qcow2');
    await qemuImg.create(wrongRef, { format: 'qcow2', size: '64M' });
    await expect(chain.verify({ references: { [inc1.backups[0]?.file as string]: wrongRef } })).rejects.toThrow(VerifyError);
  });

  it('refuses to continue when the chain cannot be trusted, and can take a full instead', async () => {
    const dir = scratch.path('backups');
    const chain = await BackupChain.open({ qmp, dir, node: 'drive0', granularity: 65536 });
    expect(await brokenReason(chain.incremental())).toBe('no-full-backup');
    const first = await chain.full();

    await disableBitmap(qmp, 'drive0', bitmapOf(chain));
    expect(await brokenReason(chain.incremental())).toBe('bitmap-disabled');

    await removeBitmap(qmp, 'drive0', bitmapOf(chain));
    const error = await chain.incremental().catch((e: unknown) => e);
    expect(ChainBrokenError.isInstance(error)).toBe(true);
    expect((error as NewFullBackupRequiredError).reason).toBe('bitmap-missing');
    expect((error as Error).message).toMatch(/new full backup is required/);

    await addBitmap(qmp, { node: 'drive0', name: bitmapOf(chain), granularity: 131072 });
    expect(await brokenReason(chain.incremental())).toBe('granularity-mismatch');
    expect(chain.backups).toHaveLength(1);

    const replaced = await chain.incremental({ fullIfBroken: true });
    expect(replaced.kind).toBe('full');
    expect(replaced.chainId).not.toBe(first.chainId);
    expect(await getBitmap(qmp, 'drive0', bitmapOf(chain))).toMatchObject({ granularity: 65536, count: 0 });

    await vm.qmp.execute('block_resize', { device: 'drive0', size: 32 * 1048576 });
    expect(await brokenReason(chain.incremental())).toBe('size-mismatch');
    expect(await brokenReason(chain.full().then(() => chain.incremental()))).toBe('resolved');

    await rm(`${dir}/${chain.backups[chain.backups.length - 1]?.file as string}`);
    expect(await brokenReason(chain.incremental())).toBe('last-backup-missing');
  });

  it('never overwrites an existing target unless asked', async () => {
    const dir = scratch.path('backups');
    const chain = await BackupChain.open({ qmp, dir, node: 'drive0' });
    const full = await chain.full();
    const next = `${dir}/drive0.${full.chainId.slice(0, 8)}.001.inc.qcow2`;
    await writeFile(next, 'not an image');
    await hmpWrites(vm, 'drive0', WRITES_A);
    await expect(chain.incremental()).rejects.toThrow(TargetExistsError);
    expect(await readFile(next, 'utf8')).toBe('not an image');
    expect((await getBitmap(qmp, 'drive0', bitmapOf(chain))).count).toBe(458752);
    const inc = await chain.incremental({ overwrite: true });
    expect(inc.backups[0]?.file).toBe('drive0.' + full.chainId.slice(0, 8) + '.001.inc.qcow2');
    await vm.shutdown({ timeout: 10_000 });
    expect((await chain.verify({ sources: { drive0 } })).ok).toBe(true);
  });

  it('cancels an aborted incremental, undoes it, and continues the chain (AbortSignal)', async () => {
    const dir = scratch.path('backups');
    const chain = await BackupChain.open({ qmp, dir, node: 'drive0' });
    await chain.full();
    await hmpWrites(vm, 'drive0', [[0x5a, '4M', '4M']]);
    const before = await readFile(chain.manifestPath, 'utf8');
    const filesBefore = (await readdir(dir)).sort();
    const controller = new AbortController();
    let jobId = '';
    const outcome = await chain
      .incremental({
        speed: 512 * 1024,
        signal: controller.signal,
        onJob: (job) => {
          jobId = job.id;
          void job.waitForStatus('running').then(() => controller.abort());
        },
      })
      .catch((e: unknown) => e);
    expect(BackupAbortedError.isInstance(outcome)).toBe(true);
    expect(jobId).toMatch(/^qmpkit-drive0-/);
    // Nothing left in QEMU, nothing of the run on disk, the manifest as it was.
    expect(await vm.qmp.execute('query-jobs')).toEqual([]);
    // and nothing of the cancelled job is still listening on the client.
    expect(vm.qmp.events.consumerCount).toBe(0);
    // and the run's target node is closed.
    expect(await targetNodes(vm)).toEqual([]);
    expect(await readFile(chain.manifestPath, 'utf8')).toBe(before);
    expect((await readdir(dir)).sort()).toEqual(filesBefore);
    // QEMU merged the bitmap back: it still covers the writes, and the chain continues.
    expect((await getBitmap(qmp, 'drive0', bitmapOf(chain))).count).toBe(4 * 1048576);
    expect((await chain.check())[0]).toMatchObject({ ok: true });
    const next = await chain.incremental();
    expect(next.backups[0]).toMatchObject({ kind: 'incremental', bytes: 4 * 1048576 });
    await vm.shutdown({ timeout: 10_000 });
    expect((await chain.verify({ sources: { drive0 } })).ok).toBe(true);
  });

  it('a timeout cancels the run like an abort: nothing recorded, the next incremental covers everything', async () => {
    const chain = await BackupChain.open({ qmp, dir: scratch.path('backups'), node: 'drive0' });
    await chain.full();
    await hmpWrites(vm, 'drive0', [[0x5a, '4M', '4M']]);
    const before = await readFile(chain.manifestPath, 'utf8');
    const outcome = await chain.incremental({ speed: 256 * 1024, timeout: 1500 }).catch((e: unknown) => e);
    expect(BackupAbortedError.isInstance(outcome)).toBe(true);
    expect((outcome as BackupAbortedError).reason).toBe('timeout');
    expect(await readFile(chain.manifestPath, 'utf8')).toBe(before);
    expect(await vm.qmp.execute('query-jobs')).toEqual([]);
    expect((await chain.incremental()).backups[0]?.bytes).toBe(4 * 1048576);
  });

  it('covers writes past the old end of a drive that grew', async () => {
    const chain = await BackupChain.open({ qmp, dir: scratch.path('backups'), node: 'drive0' });
    await chain.full();
    await vm.qmp.execute('block_resize', { device: 'drive0', size: 65 * 1048576 });
    await vm.hmpQemuIo('drive0', 'write -P0x64 64M 64k');
    await vm.hmpQemuIo('drive0', 'flush');
    const inc = await chain.incremental();
    expect(inc.backups[0]).toMatchObject({ driveSize: 65 * 1048576, bytes: 65536 });
    expect(chain.drive?.driveSize).toBe(65 * 1048576);
    await expect(chain.incremental({ allowGrowth: false })).resolves.toMatchObject({ kind: 'incremental' });
    await vm.shutdown({ timeout: 10_000 });
    expect((await qemuImg.info(`${chain.dir}/${inc.backups[0]?.file as string}`))['virtual-size']).toBe(65 * 1048576);
    expect((await chain.verify({ sources: { drive0 } })).ok).toBe(true);
  });
});

describe('BackupChain failures', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  it('removes the target of a failed incremental and leaves manifest and bitmap as they were', async () => {
    await scratch.init();
    const file = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const vm = await scratch.launch();
    const qmp = qmpOf(vm);
    await addBlkdebugNode(vm, 'drive0', file);
    const dir = scratch.path('backups');
    const chain = await BackupChain.open({ qmp, dir, node: 'drive0' });
    await chain.full();
    await hmpWrites(vm, 'drive0', WRITES_A);
    const before = await readFile(chain.manifestPath, 'utf8');
    const filesBefore = (await readdir(dir)).sort();

    const error = await chain.incremental().catch((e: unknown) => e);
    expect(BackupJobError.isInstance(error)).toBe(true);
    expect((error as BackupJobError).status).toBe('failed');
    expect((error as BackupJobError).qemuError).toBe('Input/output error');
    expect(await targetNodes(vm)).toEqual([]);
    expect(await readFile(chain.manifestPath, 'utf8')).toBe(before);
    expect((await readdir(dir)).sort()).toEqual(filesBefore);
    expect((await getBitmap(qmp, 'drive0', bitmapOf(chain))).count).toBe(458752);

    await hmpWrites(vm, 'drive0', WRITES_B);
    const retry = await chain.incremental();
    // Everything since the full: both write sets, which share the clusters at 0 and 16M..16M+256k.
    expect(retry.backups[0]?.bytes).toBe(458752 + 1507328 - 5 * 65536);
    await vm.shutdown({ timeout: 10_000 });
    expect((await chain.verify({ sources: { drive0: file } })).ok).toBe(true);
  });

  it.each([
    ['non-persistent', false, 'bitmap-missing'],
    ['persistent', true, 'bitmap-inconsistent'],
  ] as const)('refuses to continue after QEMU is killed mid-job (%s bitmap)', async (_label, persistent, reason) => {
    await scratch.init();
    const file = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const drives = [{ file, format: 'qcow2' as const, id: 'drive0', nodeName: 'node0' }];
    let vm = await scratch.launch(drives);
    const dir = scratch.path('backups');
    let chain = await BackupChain.open({ qmp: qmpOf(vm), dir, node: 'drive0', persistent });
    await chain.full();
    if (persistent) {
      // A persistent bitmap is stored at shutdown; after a restart it is marked in use in the
      // image, which is what a crash then leaves behind.
      await vm.shutdown({ timeout: 10_000 });
      vm = await scratch.launch(drives);
      chain.qmp = qmpOf(vm);
      expect((await chain.check()).every((c) => c.ok)).toBe(true);
    }
    await hmpWrites(vm, 'drive0', [[0x5a, '4M', '4M']]);
    const before = await readFile(chain.manifestPath, 'utf8');
    const filesBefore = (await readdir(dir)).sort();

    const killed = vm;
    const outcome = await chain
      .incremental({
        speed: 512 * 1024,
        onJob: (job) => {
          void job.waitForStatus('running').then(() => killed.kill('SIGKILL'));
        },
      })
      .then(
        () => 'completed',
        (e: unknown) => e,
      );
    expect(outcome).toBeInstanceOf(Error);
    // The recorded backups are untouched; the run that lost its QEMU is marked as pending.
    const after = JSON.parse(await readFile(chain.manifestPath, 'utf8')) as Manifest;
    const { pending, ...rest } = after;
    expect(rest).toEqual(JSON.parse(before));
    expect(pending).toMatchObject({ kind: 'incremental', targets: [expect.stringMatching(/\.001\.inc\.qcow2$/)] });
    expect((await readdir(dir)).sort()).toEqual(filesBefore);

    vm = await scratch.launch(drives);
    chain = await BackupChain.open({ qmp: qmpOf(vm), dir, node: 'drive0' });
    const checks = await chain.check();
    expect(checks[0]).toMatchObject({ ok: false, reason });
    expect(await brokenReason(chain.incremental())).toBe(reason);

    const fresh = await chain.incremental({ fullIfBroken: true });
    expect(fresh.kind).toBe('full');
    await hmpWrites(vm, 'drive0', WRITES_A);
    await chain.incremental();
    await vm.shutdown({ timeout: 10_000 });
    expect((await chain.verify({ sources: { drive0: file } })).ok).toBe(true);
  });
});
