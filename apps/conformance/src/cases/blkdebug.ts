import type { BlockJobErrorInfo } from '@qmpkit/backup';

import { expectEqual, expectTrue } from '../assert.js';
import type { CaseContext } from '../context.js';
import type { CaseDefinition } from '../runner.js';
import {
  EIO_MESSAGE,
  GUEST_WRITES_1,
  GUEST_WRITES_1_DIRTY_BYTES,
  GUEST_WRITES_2,
  Scenario,
  checkBackupEnd,
} from './scenario.js';

// TestIncrementalBackupBlkdebug: QEMU starts without drives; drive0 (default pattern) is added
// with blockdev-add behind a blkdebug filter that fails the first read after the first flush.

const CLASS = 'TestIncrementalBackupBlkdebug';

async function setUp(ctx: CaseContext): Promise<Scenario> {
  const scenario = new Scenario(ctx);
  // The image and QEMU are independent here: QEMU starts while the image is copied.
  await Promise.all([scenario.createDrive0(), scenario.launch()]);
  await scenario.addBlkdebugNode(scenario.drive(0));
  return scenario;
}

/** A failed incremental leaves the bitmap intact, so the next one still covers everything. */
async function incrementalFailure(ctx: CaseContext): Promise<void> {
  const s = await setUp(ctx);
  const drive0 = s.drive(0);
  // Before any flush blkdebug is in state 1: the anchor's reads succeed.
  await s.anchorBackup(drive0);
  await s.addBitmap('bitmap0', drive0);
  await s.hmpWrites(drive0, GUEST_WRITES_1);
  const completed = await s.createIncremental(undefined, { validate: false });
  expectEqual('incremental backup after the flush (blkdebug injects EIO) completes', false, completed);
  await s.hmpWrites(drive0, GUEST_WRITES_2);
  await s.createIncremental();
  await s.finish();
  await s.shutdown();
  await s.checkBackups();
}

/** With on-source-error=stop the job pauses at the error, keeps the bitmap busy, and resumes. */
async function incrementalPause(ctx: CaseContext): Promise<void> {
  const s = await setUp(ctx);
  const drive0 = s.drive(0);
  await s.anchorBackup(drive0);
  const bitmap = await s.addBitmap('bitmap0', drive0);
  // The flush at the end of these writes arms blkdebug; the job's first read then fails.
  await s.hmpWrites(drive0, GUEST_WRITES_1);
  await s.expectBitmapStatus(drive0.id, bitmap.name, {
    count: GUEST_WRITES_1_DIRTY_BYTES,
    granularity: 65536,
    busy: false,
    recording: true,
  });

  const target = await s.prepareBackup(bitmap, { parent: bitmap.lastTarget().incremental });
  let onError: (info: BlockJobErrorInfo) => void = () => undefined;
  const stopped = new Promise<BlockJobErrorInfo>((resolve) => {
    onError = resolve;
  });
  const expected = s.expectedCopy(bitmap);
  const job = await s.startBackup(
    {
      'job-id': drive0.id,
      device: drive0.id,
      sync: 'incremental',
      bitmap: bitmap.name,
      format: drive0.format,
      target,
      mode: 'existing',
      'on-source-error': 'stop',
    },
    { onError: (info) => onError(info) },
  );
  // Wait for the error, or for the job to end without one (then `stopped` never resolves).
  const first = await Promise.race([stopped, job.result.then(() => undefined)]);
  expectTrue('the job reports BLOCK_JOB_ERROR before ending', first !== undefined);
  const errorEvent = job.events.find((e) => e.event === 'BLOCK_JOB_ERROR');
  await s.check('job-error-event', () =>
    expectEqual('BLOCK_JOB_ERROR event data', { device: drive0.id, action: 'stop', operation: 'read' }, errorEvent?.data),
  );

  // Paused at the error: the bitmap is in use and still holds every dirty bit.
  await s.expectBitmapStatus(drive0.id, bitmap.name, {
    count: GUEST_WRITES_1_DIRTY_BYTES,
    granularity: 65536,
    busy: true,
    recording: true,
  });

  // Stopped, not ended: QEMU lists the job as paused by the failed read.
  await s.check('job-paused-at-error', async () => {
    const jobs = await s.qmp.execute('query-block-jobs', {}, s.call);
    const listed = jobs.map((j) => ({ device: j.device, paused: j.paused, 'io-status': j['io-status'] }));
    expectEqual('query-block-jobs while the job is stopped at the error', [{ device: drive0.id, paused: true, 'io-status': 'failed' }], listed);
  });

  // Resumed as the reference resumes it: block-job-resume by device.
  await s.qmp.execute('block-job-resume', { device: drive0.id }, s.call);
  const result = await job.result;
  const completed = await s.check('job-end', () => checkBackupEnd(job, result, { error: EIO_MESSAGE }));
  expectTrue('the resumed incremental backup completes', completed);
  await s.incrementalCompleted(bitmap, result, expected);

  // Success cleared the bitmap (nothing was written during the job).
  await s.expectBitmapStatus(drive0.id, bitmap.name, {
    count: 0,
    granularity: 65536,
    busy: false,
    recording: true,
  });

  await s.referenceBackup(bitmap);
  s.pairFinished(bitmap);
  await s.finish();
  await s.shutdown();
  await s.checkBackups();
}

export const blkdebugCases: ReadonlyArray<CaseDefinition<CaseContext>> = [
  { id: `${CLASS}.test_incremental_failure`, weight: 7, run: incrementalFailure },
  { id: `${CLASS}.test_incremental_pause`, weight: 4.5, run: incrementalPause },
];
