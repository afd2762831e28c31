import type { CheckDefinition } from '../../checks.js';

// The checks of the iotest-257 suite (names distinct from suite 124's: the run's catalogue holds
// both). The reference's are what QEMU's expected output shows; the suite's own go beyond it.

export const IOTEST_257_CHECKS = {
  // The reference's.
  'bitmap-listing': {
    origin: 'reference',
    description:
      "after each step, every node's bitmaps (named and anonymous: count, granularity, busy, recording, persistent) as the expected output shows them, for the QEMU version under test",
  },
  'job-events': {
    origin: 'reference',
    description: "each job's BLOCK_JOB_* events, in order and with their data (len, offset, error, action, operation), as the expected output shows them",
  },
  'job-outcome': {
    origin: 'reference',
    description: 'each job ends completed, cancelled or failed as the scenario defines',
  },
  'backup-compare': {
    origin: 'reference',
    description:
      'each test backup rebased onto its base equals (or, after a failure half way, differs from) its reference, and the drive equals the last reference',
  },
  'qmp-refusal': {
    origin: 'reference',
    description: "QEMU refuses each call of the API table with error class GenericError and its message, and starts no job",
  },
  // The suite's own.
  'backup-clusters': {
    origin: 'suite',
    description: 'each test backup holds data in exactly the clusters its job had to copy (its own layer), so it copied nothing more',
  },
  'nodes-released': {
    origin: 'suite',
    description:
      "where the reference shuts QEMU down, every node the scenario added is removed (closing its image as a shutdown does), and then QEMU holds no block node and no job, as a fresh launch: only such a QEMU serves the next scenario",
  },
  'backup-differs': {
    origin: 'suite',
    description: 'negative control: the drive at the end differs from reference #1 at the first offset written after it (65536)',
  },
} as const satisfies Record<string, CheckDefinition>;
