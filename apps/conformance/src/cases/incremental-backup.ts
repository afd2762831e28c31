import { addBitmap, InvalidGranularityError, Transaction, type BackupJob, type JobResult } from '@qmpkit/backup';
import { QmpCommandError } from '@qmpkit/client';

import { expectEqual, expectRejection, expectTrue } from '../assert.js';
import type { CaseContext } from '../context.js';
import type { CaseDefinition } from '../runner.js';
import {
  DRIVE1_GUEST_WRITES,
  EIO_MESSAGE,
  GUEST_WRITES_1,
  GUEST_WRITES_1_DIRTY_BYTES,
  GUEST_WRITES_2,
  IMAGE_FORMAT,
  QEMU_IO_DEFAULT_PATTERN,
  Scenario,
  checkBackupEnd,
  type DriveBackupArgs,
} from './scenario.js';

// TestIncrementalBackup: drive0 is attached at start-up (-drive, node-name node0) after the
// default pattern was written into it.

const CLASS = 'TestIncrementalBackup';

async function setUp(ctx: CaseContext): Promise<Scenario> {
  const scenario = new Scenario(ctx);
  const drive0 = await scenario.createDrive0();
  scenario.attachDrive0(drive0);
  await scenario.launch();
  return scenario;
}

/** Anchor, bitmap, a hollow incremental, then two rounds of writes each followed by one. */
async function incrementalSimple(ctx: CaseContext, granularity?: number): Promise<void> {
  const s = await setUp(ctx);
  const drive0 = s.drive(0);
  await s.anchorBackup();
  await s.addBitmap('bitmap0', drive0, granularity);
  // Nothing written yet: the first incremental is empty but must still be valid.
  await s.createIncremental();
  await s.hmpWrites(drive0, GUEST_WRITES_1);
  await s.createIncremental();
  await s.hmpWrites(drive0, GUEST_WRITES_2);
  await s.createIncremental();
  await s.finish();
  await s.shutdown();
  await s.checkBackups();
}

async function largerClusterTarget(ctx: CaseContext): Promise<void> {
  const s = await setUp(ctx);
  const drive0 = s.drive(0);

  // Anchor into an existing image with 128 KiB clusters; as in the reference, without a job-id.
  await s.createImage(drive0.backup, { clusterSize: '128k' });
  expectTrue(
    'full backup of drive0 into the 128k-cluster image completes',
    await s.backupWithoutJobId({ device: drive0.id, sync: 'full', format: drive0.format, target: drive0.backup, mode: 'existing' }),
  );
  drive0.anchorContent = drive0.content.clone();

  // The write at 32736k (64 KiB) dirties the chunks at 32M-64K and 32M, not 32M+64K.
  const bitmap0 = await s.addBitmap('bitmap0', drive0);
  await s.hmpWrites(drive0, GUEST_WRITES_1);
  await s.expectBitmapStatus('node0', bitmap0.name, {
    name: 'bitmap0',
    count: GUEST_WRITES_1_DIRTY_BYTES,
    granularity: 65536,
    persistent: false,
  });

  // An incremental target with 128 KiB clusters and no backing file.
  const { incremental: target } = bitmap0.newTarget();
  await s.createImage(target, { clusterSize: '128k' });
  expectTrue(
    'incremental backup of drive0 into the backing-less 128k-cluster target completes',
    await s.incrementalJob(bitmap0, target, 131072),
  );
  await s.referenceBackup(bitmap0);

  // Only now give the target its backing file, then compare.
  await ctx.qemuImg.rebase(target, {
    format: drive0.format,
    unsafe: true,
    backingFile: drive0.backup,
    backingFormat: drive0.format,
    signal: ctx.signal,
  });
  s.pairFinished(bitmap0);
  await s.finish();
  await s.shutdown();
  await s.checkBackups();
}

async function incrementalTransaction(ctx: CaseContext): Promise<void> {
  const s = await setUp(ctx);
  const drive0 = s.drive(0);
  const bitmap0 = await s.addBitmap('bitmap0', drive0);
  await s.hmpWrites(drive0, GUEST_WRITES_1);
  const bitmap1 = await s.addBitmap('bitmap1', drive0);

  // Clear both bitmaps and take the full backup atomically.
  const run = await new Transaction()
    .bitmapClear(bitmap0.drive.id, bitmap0.name)
    .bitmapClear(bitmap1.drive.id, bitmap1.name)
    .driveBackup({ 'job-id': drive0.id, device: drive0.id, target: drive0.backup, sync: 'full', format: drive0.format })
    .run(s.qmp, s.call);
  s.track(...run.jobs);
  expectEqual('jobs started by the transaction', [drive0.id], run.jobs.map((j) => j.id));
  const [fullJob] = run.jobs;
  const [full] = await run.results();
  if (fullJob === undefined || full === undefined) throw new Error('the transaction started no job');
  await s.check('job-end', () => checkBackupEnd(fullJob, full, {}));
  s.bitmapCleared(bitmap0);
  s.bitmapCleared(bitmap1);
  drive0.anchorContent = drive0.content.clone();
  await s.expectDirtyBitmaps(drive0);
  await s.expectNoActiveBlockJobs();

  await s.hmpWrites(drive0, GUEST_WRITES_2);
  // Both bitmaps were synchronised to the same full backup.
  await s.createIncremental(bitmap0);
  await s.createIncremental(bitmap1);
  await s.finish();
  await s.shutdown();
  await s.checkBackups();
}

/**
 * drive1 behind blkdebug fails its first read after a flush; a grouped transaction backing up
 * both drives must then cancel drive0's job. Without `race`, drive0 has data to copy too, and
 * the transaction is run again and must succeed; with `race`, drive0's job is empty.
 */
async function transactionFailure(ctx: CaseContext, race: boolean): Promise<void> {
  const s = await setUp(ctx);
  const drive0 = s.drive(0);
  const drive1 = await s.createDrive1();
  await s.addBlkdebugNode(drive1);

  const dr0bm0 = await s.addBitmap('bitmap0', drive0);
  const dr1bm0 = await s.addBitmap('bitmap0', drive1);
  await s.anchorBackup(drive0);
  await s.anchorBackup(drive1);
  await s.expectNoActiveBlockJobs();
  await s.expectNoPendingEvents('after the anchor backups');

  if (!race) await s.hmpWrites(drive0, GUEST_WRITES_1);
  await s.hmpWrites(drive1, DRIVE1_GUEST_WRITES);

  const incremental = (drive: typeof drive0, bitmap: string, target: string): DriveBackupArgs => ({
    'job-id': drive.id,
    device: drive.id,
    target,
    sync: 'incremental',
    format: drive.format,
    mode: 'existing',
    bitmap,
  });
  const runTransaction = async (target0: string, target1: string): Promise<Array<[BackupJob, JobResult]>> => {
    const run = await new Transaction()
      .driveBackup(incremental(drive0, dr0bm0.name, target0))
      .driveBackup(incremental(drive1, dr1bm0.name, target1))
      .completionMode('grouped')
      .run(s.qmp, s.call);
    s.track(...run.jobs);
    expectEqual('jobs started by the transaction', [drive0.id, drive1.id], run.jobs.map((j) => j.id));
    const results = await run.results();
    return run.jobs.map((job, i) => [job, results[i] as JobResult]);
  };

  const [target0, target1] = [await s.prepareBackup(dr0bm0), await s.prepareBackup(dr1bm0)];
  type Ended = [BackupJob, JobResult];
  const [[job0, first0], [job1, first1]] = (await runTransaction(target0, target1)) as [Ended, Ended];
  // drive0's job is cancelled by the group (BLOCK_JOB_CANCELLED), drive1's fails with the injected EIO...
  await s.check('transaction-outcome', () => expectEqual('drive0 job in the failing grouped transaction', 'cancelled', first0.status));
  await s.check('job-end', () =>
    expectEqual('drive1 backup in the failing grouped transaction completes', false, checkBackupEnd(job1, first1, { error: EIO_MESSAGE })),
  );
  // ...after one BLOCK_JOB_ERROR: reported, on a read, and nothing else.
  const errorEvents = [...job0.events, ...job1.events].filter((e) => e.event === 'BLOCK_JOB_ERROR').map((e) => e.data);
  const expectedError = { device: drive1.id, action: 'report', operation: 'read' };
  await s.check('job-error-event', () => expectEqual('BLOCK_JOB_ERROR event data', [expectedError], errorEvents));
  await s.expectNoPendingEvents('after the failed transaction');
  await s.expectNoActiveBlockJobs();
  // Neither job succeeded, so neither bitmap was cleared: both still hold what was written.
  await s.expectDirtyBitmaps(drive0);
  await s.expectDirtyBitmaps(drive1);

  // Neither target is part of a chain now.
  await dr0bm0.dropLast();
  await dr1bm0.dropLast();
  if (race) {
    await s.finish();
    await s.shutdown();
    // The reference compares nothing here; the suite's negative controls still run.
    await s.checkNegativeControls();
    return;
  }

  // The same transaction again: the error was injected once, so both jobs complete.
  const [retry0, retry1] = [await s.prepareBackup(dr0bm0), await s.prepareBackup(dr1bm0)];
  const expected = [s.expectedCopy(dr0bm0), s.expectedCopy(dr1bm0)];
  for (const [i, [job, result]] of (await runTransaction(retry0, retry1)).entries()) {
    const completed = await s.check('job-end', () => checkBackupEnd(job, result, { error: EIO_MESSAGE }));
    expectTrue(`${job.id} backup in the repeated transaction completes`, completed);
    await s.incrementalCompleted(i === 0 ? dr0bm0 : dr1bm0, result, expected[i] as number);
  }
  await s.referenceBackup(dr0bm0);
  s.pairFinished(dr0bm0);
  await s.referenceBackup(dr1bm0);
  s.pairFinished(dr1bm0);
  await s.expectNoPendingEvents('after the repeated transaction');
  await s.expectNoActiveBlockJobs();

  await s.finish();
  await s.shutdown();
  await s.checkBackups();
}

/** drive-backup with sync=incremental and no bitmap: QEMU refuses it. */
async function syncDirtyBitmapMissing(ctx: CaseContext): Promise<void> {
  const s = await setUp(ctx);
  await s.expectNoActiveBlockJobs();
  const drive0 = s.drive(0);
  await s.check('qmp-error', () => expectRejection(
    'drive-backup sync=incremental without a bitmap',
    'QMP error GenericError',
    s.qmp.execute(
      'drive-backup',
      { device: drive0.id, sync: 'incremental', format: drive0.format, target: ctx.path(`err.${IMAGE_FORMAT}`) },
      s.call,
    ),
    (error) => QmpCommandError.isInstance(error) && error.errorClass === 'GenericError',
  ));
  await s.finish();
}

/** drive-backup with sync=incremental and a bitmap that does not exist: QEMU refuses it. */
async function syncDirtyBitmapNotFound(ctx: CaseContext): Promise<void> {
  const s = await setUp(ctx);
  await s.expectNoActiveBlockJobs();
  const drive0 = s.drive(0);
  await s.check('qmp-error', () => expectRejection(
    'drive-backup sync=incremental with bitmap "unknown"',
    'QMP error GenericError',
    s.qmp.execute(
      'drive-backup',
      {
        device: drive0.id,
        sync: 'incremental',
        bitmap: 'unknown',
        format: drive0.format,
        target: ctx.path(`err.${IMAGE_FORMAT}`),
      },
      s.call,
    ),
    (error) => QmpCommandError.isInstance(error) && error.errorClass === 'GenericError',
  ));
  await s.finish();
}

/** A granularity that is not a power of two is refused, by the SDK first and by QEMU itself. */
async function syncDirtyBitmapBadGranularity(ctx: CaseContext): Promise<void> {
  const s = await setUp(ctx);
  await s.expectNoActiveBlockJobs();
  const drive0 = s.drive(0);
  await s.check('qmp-error', () => expectRejection(
    'addBitmap with granularity 64000 (SDK check)',
    'InvalidGranularityError',
    addBitmap(s.qmp, { node: drive0.id, name: 'bitmap0', granularity: 64000 }, s.call),
    (error) => InvalidGranularityError.isInstance(error) && error.granularity === 64000,
  ));
  // The SDK's check must not hide what QEMU does with the same request.
  await s.check('qmp-error', () => expectRejection(
    'block-dirty-bitmap-add with granularity 64000 (QEMU)',
    'QMP error GenericError',
    s.qmp.execute('block-dirty-bitmap-add', { node: drive0.id, name: 'bitmap0', granularity: 64000 }, s.call),
    (error) => QmpCommandError.isInstance(error) && error.errorClass === 'GenericError',
  ));
  await s.finish();
}

/** Bits dirtied past the old end of a grown drive must be backed up. */
async function growingBeforeBackup(ctx: CaseContext): Promise<void> {
  const s = await setUp(ctx);
  const drive0 = s.drive(0);
  await s.expectNoActiveBlockJobs();
  await s.anchorBackup();
  await s.addBitmap('bitmap0', drive0);
  await s.qmp.execute('block_resize', { device: drive0.id, size: 65 * 1048576 }, s.call);
  drive0.content.resize(65 * 1048576);
  // Default qemu-io pattern, past the old 64 MiB end.
  await s.hmpWrite(drive0, 'write 64M 64k', { pattern: QEMU_IO_DEFAULT_PATTERN, offset: 64 * 1048576, length: 65536 });
  await s.expectDirtyBitmaps(drive0);
  const target = await s.prepareBackup(undefined, { size: '65M' });
  await s.createIncremental(undefined, { target });
  await s.finish();
  await s.shutdown();
  await s.checkBackups();
}

/** Weights: median durations of the cases on QEMU 7.2 (in 100 ms), for longest-first scheduling. */
export const incrementalBackupCases: ReadonlyArray<CaseDefinition<CaseContext>> = [
  { id: `${CLASS}.test_incremental_simple`, weight: 11, run: (ctx) => incrementalSimple(ctx) },
  { id: `${CLASS}.test_small_granularity`, weight: 10, run: (ctx) => incrementalSimple(ctx, 32768) },
  { id: `${CLASS}.test_large_granularity`, weight: 11, run: (ctx) => incrementalSimple(ctx, 131072) },
  { id: `${CLASS}.test_larger_cluster_target`, weight: 6, run: largerClusterTarget },
  { id: `${CLASS}.test_incremental_transaction`, weight: 6, run: incrementalTransaction },
  { id: `${CLASS}.test_transaction_failure`, weight: 12, run: (ctx) => transactionFailure(ctx, false) },
  { id: `${CLASS}.test_transaction_failure_race`, weight: 5, run: (ctx) => transactionFailure(ctx, true) },
  { id: `${CLASS}.test_sync_dirty_bitmap_missing`, weight: 1.5, run: syncDirtyBitmapMissing },
  { id: `${CLASS}.test_sync_dirty_bitmap_not_found`, weight: 1.5, run: syncDirtyBitmapNotFound },
  { id: `${CLASS}.test_sync_dirty_bitmap_bad_granularity`, weight: 1.5, run: syncDirtyBitmapBadGranularity },
  { id: `${CLASS}.test_growing_before_backup`, weight: 5, run: growingBeforeBackup },
];
