import type { CheckDefinition } from '../checks.js';

// The checks of the iotest-124 suite. The reference's are what QEMU's test asserts; the suite's
// own are what this port asserts beyond it, each chosen so that a plausible bug in QEMU or in
// the SDK turns it from "yes" into "no" where the reference's checks would still pass.

export const IOTEST_124_CHECKS = {
  // The reference's.
  'job-end': {
    origin: 'reference',
    description: 'each backup job ends as expected: BLOCK_JOB_COMPLETED with offset == len, or the expected error text',
  },
  'image-compare': {
    origin: 'reference',
    description: "each incremental equals its full reference and the newest image of each chain equals the drive (qemu-img compare's verdict)",
  },
  'bitmap-status': {
    origin: 'reference',
    description: 'the bitmap status fields the reference checks (count, granularity, persistent, busy, recording)',
  },
  'qmp-error': {
    origin: 'reference',
    description: 'QEMU refuses the bad requests with the expected error class',
  },
  'job-error-event': {
    origin: 'reference',
    description: 'BLOCK_JOB_ERROR carries the expected device, action and operation',
  },
  'transaction-outcome': {
    origin: 'reference',
    description: 'in a grouped transaction the failing job fails and its partner is cancelled',
  },
  'no-events-left': {
    origin: 'reference',
    description: 'no event is left unconsumed where the reference looks (after the transactions)',
  },
  'no-active-jobs': {
    origin: 'reference',
    description: 'query-block-jobs lists no job where the reference asserts it',
  },
  // The suite's own.
  'negative-control': {
    origin: 'suite',
    description: 'comparisons that must come out different do, at the first offset the writes predict',
  },
  'bitmap-dirty-count': {
    origin: 'suite',
    description: 'after each round of writes every bitmap of the drive has the granularity asked for and the dirty bytes the writes predict',
  },
  'job-copied-dirty': {
    origin: 'suite',
    description: "each incremental job's len equals the bytes its bitmap recorded (in the job's clusters), so it copied those and nothing else",
  },
  'read-back-drive': {
    origin: 'suite',
    description: 'every pattern written reads back (qemu-io read -P) from the drive, and a read with a wrong pattern is refused',
  },
  'read-back-restored': {
    origin: 'suite',
    description: 'every pattern written reads back (qemu-io read -P) from the newest backup opened with its backing chain',
  },
  'job-events-accounted': {
    origin: 'suite',
    description: "at the end of the case every job event QEMU sent was taken by a job's tracking, every job reached status null, query-jobs is empty",
  },
  'event-buffer-control': {
    origin: 'suite',
    description: 'where the reference finds no event left, an event nobody waits for (STOP, then RESUME) is found by the same look, so "none left" means something',
  },
  'qemu-chosen-job-id': {
    origin: 'suite',
    description: 'a drive-backup sent without job-id runs as a job named after its device',
  },
  'job-paused-at-error': {
    origin: 'suite',
    description: 'a job stopped by on-source-error=stop is listed as paused with io-status failed until block-job-resume',
  },
} as const satisfies Record<string, CheckDefinition>;

export type Iotest124Check = keyof typeof IOTEST_124_CHECKS;
