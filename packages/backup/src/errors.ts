// Every error this package throws. The base extends `QmpkitError` of `@qmpkit/errors`, the root
// of every qmpkit error: each class names its brand (`Symbol.for('qmpkit.backup.<Class>')`, set
// for the class and every base, so `isInstance` works across duplicate installs where instanceof
// would not) and its `kind`.
import { QmpkitError, errorKind, hasBrand, setBrand, type QmpkitErrorKind } from '@qmpkit/errors';

/**
 * Brands `target` as this package's class `name`. The classes here declare a static `brand`
 * instead (the base constructor sets it); kept for classes written in the earlier pattern.
 */
function brand(target: object, name: string): void {
  setBrand(target, 'backup', name);
}

export class BackupError extends QmpkitError {
  protected static override readonly scope: string = 'backup';
  protected static override readonly brand: string = 'BackupError';

  static override isInstance(value: unknown): value is BackupError {
    return hasBrand(value, 'backup', 'BackupError');
  }

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** A bitmap granularity QEMU would refuse: not a power of two, or outside 512 B .. 2 GiB. */
export class InvalidGranularityError extends BackupError {
  protected static override readonly brand: string = 'InvalidGranularityError';
  static override readonly kind: QmpkitErrorKind = 'usage';

  static override isInstance(value: unknown): value is InvalidGranularityError {
    return hasBrand(value, Symbol.for('qmpkit.backup.InvalidGranularityError'));
  }

  readonly granularity: number;

  constructor(granularity: number) {
    super(
      `bitmap granularity ${granularity} is invalid: it must be a power of two between 512 B and 2 GiB (2^9..2^31)`,
    );
    this.granularity = granularity;
  }
}

/** Neither a device (drive id) nor a node-name of that name exists. */
export class NodeNotFoundError extends BackupError {
  protected static override readonly brand: string = 'NodeNotFoundError';
  static override readonly kind: QmpkitErrorKind = 'not-found';

  static override isInstance(value: unknown): value is NodeNotFoundError {
    return hasBrand(value, Symbol.for('qmpkit.backup.NodeNotFoundError'));
  }

  readonly node: string;

  constructor(node: string) {
    super(`no block device or node named "${node}"`);
    this.node = node;
  }
}

export class BitmapNotFoundError extends BackupError {
  protected static override readonly brand: string = 'BitmapNotFoundError';
  static override readonly kind: QmpkitErrorKind = 'not-found';

  static override isInstance(value: unknown): value is BitmapNotFoundError {
    return hasBrand(value, Symbol.for('qmpkit.backup.BitmapNotFoundError'));
  }

  readonly node: string;
  readonly bitmap: string;

  constructor(node: string, bitmap: string) {
    super(`node "${node}" has no dirty bitmap named "${bitmap}"`);
    this.node = node;
    this.bitmap = bitmap;
  }
}

/** A job ended other than as asked (e.g. `JobResult` turned into an exception by `expectCompleted`). */
export class BackupJobError extends BackupError {
  protected static override readonly brand: string = 'BackupJobError';
  static override readonly kind: QmpkitErrorKind = 'qemu';

  static override isInstance(value: unknown): value is BackupJobError {
    return hasBrand(value, Symbol.for('qmpkit.backup.BackupJobError'));
  }

  readonly jobId: string;
  readonly status: 'completed' | 'failed' | 'cancelled';
  readonly qemuError: string | undefined;
  /** Every job of the same run (a chain backup of several drives), when there was more than one. */
  readonly results: ReadonlyArray<{ id: string; status: string; error?: string }>;

  constructor(
    jobId: string,
    status: 'completed' | 'failed' | 'cancelled',
    qemuError: string | undefined,
    options?: { cause?: unknown; results?: ReadonlyArray<{ id: string; status: string; error?: string }> },
  ) {
    super(
      `backup job "${jobId}" ${status === 'cancelled' ? 'was cancelled' : status === 'failed' ? 'failed' : 'completed'}${
        qemuError ? `: ${qemuError}` : ''
      }`,
      options,
    );
    this.jobId = jobId;
    this.status = status;
    this.qemuError = qemuError;
    this.results = options?.results ?? [];
  }
}

/** The job's event stream ended without the final JOB_STATUS_CHANGE (timeout, abort, disconnect). */
export class JobTrackingError extends BackupError {
  protected static override readonly brand: string = 'JobTrackingError';
  static override readonly kind: QmpkitErrorKind = 'state';

  /** Why tracking was lost: `timeout`, `abort` or `connection` from its cause, else `state`. */
  override get kind(): QmpkitErrorKind {
    const cause = errorKind(this.cause);
    return cause === 'timeout' || cause === 'abort' || cause === 'connection' ? cause : 'state';
  }

  static override isInstance(value: unknown): value is JobTrackingError {
    return hasBrand(value, Symbol.for('qmpkit.backup.JobTrackingError'));
  }

  readonly jobId: string;

  constructor(jobId: string, message: string, options?: { cause?: unknown }) {
    super(`backup job "${jobId}": ${message}`, options);
    this.jobId = jobId;
  }
}

/** A transaction that cannot be sent: empty, or a job id used twice. */
export class InvalidTransactionError extends BackupError {
  protected static override readonly brand: string = 'InvalidTransactionError';
  static override readonly kind: QmpkitErrorKind = 'usage';

  static override isInstance(value: unknown): value is InvalidTransactionError {
    return hasBrand(value, Symbol.for('qmpkit.backup.InvalidTransactionError'));
  }

  constructor(message: string) {
    super(message);
  }
}

/**
 * The chain cannot be continued with an incremental backup: the bitmap is missing or
 * inconsistent, its granularity or the drive size differ from the manifest, or the manifest
 * itself is unusable. Only a new full backup is safe; `reason` says why.
 */
export class NewFullBackupRequiredError extends BackupError {
  protected static override readonly brand: string = 'NewFullBackupRequiredError';
  static override readonly kind: QmpkitErrorKind = 'state';

  static override isInstance(value: unknown): value is NewFullBackupRequiredError {
    return hasBrand(value, Symbol.for('qmpkit.backup.NewFullBackupRequiredError'));
  }

  readonly reason: ChainBrokenReason;
  readonly node: string;
  readonly bitmap: string;
  /** What is wrong, without the remedy (the message adds it in the library's words). */
  readonly detail: string;

  constructor(
    node: string,
    bitmap: string,
    reason: ChainBrokenReason,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(
      `the backup chain of "${node}" (bitmap "${bitmap}") cannot be continued: ${detail}; a new full backup is required (pass { fullIfBroken: true } to take one instead)`,
      options,
    );
    this.reason = reason;
    this.node = node;
    this.bitmap = bitmap;
    this.detail = detail;
  }
}

export type ChainBrokenReason =
  | 'no-full-backup'
  /** The chain's bitmap is not on the drive: QEMU restarted without it, it was removed, or this is another VM's drive. */
  | 'bitmap-missing'
  /** The chain's bitmap is missing and the node now holds another image than the one the chain was taken from. */
  | 'drive-changed'
  /** The drive carries the chain's bitmap but not the mark of its last backup: an older copy of the image, or another copy of the chain continued it. */
  | 'bitmap-stale'
  /** The manifest was written by @qmpkit/backup 0.1, whose chains all shared one bitmap name: another chain may have reset it. */
  | 'legacy-bitmap'
  | 'bitmap-inconsistent'
  | 'bitmap-disabled'
  | 'granularity-mismatch'
  /** The drive was shrunk (or grew where shrinks cannot be seen) outside `chain.resize()`. */
  | 'size-mismatch'
  | 'last-backup-missing'
  /** A file of the chain is missing or not the size recorded for it. */
  | 'backup-damaged'
  | 'interrupted';

/** Same class under the name the issue uses; `ChainBrokenError.isInstance` is the same check. */
export const ChainBrokenError = NewFullBackupRequiredError;
export type ChainBrokenError = NewFullBackupRequiredError;

/** The target file exists and overwriting was not asked for. */
export class TargetExistsError extends BackupError {
  protected static override readonly brand: string = 'TargetExistsError';
  static override readonly kind: QmpkitErrorKind = 'state';

  static override isInstance(value: unknown): value is TargetExistsError {
    return hasBrand(value, Symbol.for('qmpkit.backup.TargetExistsError'));
  }

  readonly target: string;

  constructor(target: string) {
    super(`backup target "${target}" already exists (pass { overwrite: true } to replace it)`);
    this.target = target;
  }
}

/** A manifest file that cannot be read or does not have the expected shape. */
export class ManifestError extends BackupError {
  protected static override readonly brand: string = 'ManifestError';
  static override readonly kind: QmpkitErrorKind = 'integrity';

  static override isInstance(value: unknown): value is ManifestError {
    return hasBrand(value, Symbol.for('qmpkit.backup.ManifestError'));
  }

  readonly path: string;

  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super(`manifest ${path}: ${message}`, options);
    this.path = path;
  }
}

/** Verification found a difference or a damaged image. */
export class VerifyError extends BackupError {
  protected static override readonly brand: string = 'VerifyError';
  static override readonly kind: QmpkitErrorKind = 'integrity';

  static override isInstance(value: unknown): value is VerifyError {
    return hasBrand(value, Symbol.for('qmpkit.backup.VerifyError'));
  }

  readonly failures: readonly string[];

  constructor(failures: readonly string[]) {
    super(`verification failed:\n  ${failures.join('\n  ')}`);
    this.failures = failures;
  }
}

/**
 * The run was stopped by its AbortSignal or timeout: its jobs were cancelled and waited for,
 * their targets removed, and the manifest and bitmaps left as before the run (QEMU merged the
 * bitmaps back), so the next incremental covers everything since the last good backup.
 */
export class BackupAbortedError extends BackupError {
  protected static override readonly brand: string = 'BackupAbortedError';
  static override readonly kind: QmpkitErrorKind = 'abort';

  override get kind(): QmpkitErrorKind {
    return this.reason;
  }

  static override isInstance(value: unknown): value is BackupAbortedError {
    return hasBrand(value, Symbol.for('qmpkit.backup.BackupAbortedError'));
  }

  readonly run: string;
  readonly reason: 'abort' | 'timeout';

  constructor(run: string, reason: 'abort' | 'timeout', options?: { cause?: unknown }) {
    super(
      `backup run ${run} was ${reason === 'timeout' ? 'stopped by its timeout' : 'aborted'}: its jobs were cancelled, nothing was recorded, and the next incremental covers everything since the last good backup`,
      options,
    );
    this.run = run;
    this.reason = reason;
  }
}

/** A job of an earlier run of the chain, found in QEMU by its id. */
export interface PendingJobInfo {
  id: string;
  node: string;
  /** QEMU's job status ('running', 'paused', 'concluded', ...), or 'gone' when QEMU no longer lists it. */
  status: string;
}

/**
 * An earlier run of the chain has not ended: its job is still in QEMU (the process that
 * started it was killed, or is still running). Nothing was changed. Wait for it, or, when its
 * process is gone, cancel it (`cancelOrphanJob: true`, CLI `--cancel-orphan-job`).
 */
export class PendingRunError extends BackupError {
  protected static override readonly brand: string = 'PendingRunError';
  static override readonly kind: QmpkitErrorKind = 'state';

  static override isInstance(value: unknown): value is PendingRunError {
    return hasBrand(value, Symbol.for('qmpkit.backup.PendingRunError'));
  }

  readonly run: string;
  readonly jobs: readonly PendingJobInfo[];
  readonly pid: number | undefined;
  readonly host: string | undefined;
  /** The process that started the run is still alive (same host): it is not an orphan. */
  readonly ownerAlive: boolean;

  constructor(
    run: string,
    jobs: readonly PendingJobInfo[],
    owner: { pid?: number | undefined; host?: string | undefined; alive: boolean },
  ) {
    const list = jobs.map((j) => `${j.id} (${j.node}, ${j.status})`).join(', ');
    const who =
      owner.pid === undefined ? 'an unknown process' : `process ${owner.pid}${owner.host ? ` on ${owner.host}` : ''}`;
    super(
      owner.alive
        ? `backup run ${run} of this chain is still in progress: ${who} is running job ${list}; wait for it to end`
        : `backup run ${run} was left behind by ${who}, which is gone, and its job ${list} is still in QEMU; wait for it to end, or cancel it (option cancelOrphanJob, CLI --cancel-orphan-job) to continue the chain`,
    );
    this.run = run;
    this.jobs = jobs;
    this.pid = owner.pid;
    this.host = owner.host;
    this.ownerAlive = owner.alive;
  }
}

/** Bits of a bitmap could not be set (see `setBitmapRanges`). */
export class BitmapRangeError extends BackupError {
  protected static override readonly brand: string = 'BitmapRangeError';
  static override readonly kind: QmpkitErrorKind = 'qemu';

  /** `unsupported` when this QEMU offers no way, else `qemu`. */
  override get kind(): QmpkitErrorKind {
    return this.reason === 'unsupported' ? 'unsupported' : 'qemu';
  }

  static override isInstance(value: unknown): value is BitmapRangeError {
    return hasBrand(value, Symbol.for('qmpkit.backup.BitmapRangeError'));
  }

  readonly node: string;
  readonly bitmap: string;
  /** 'unsupported': this QEMU offers no way (no HMP); 'failed': it went wrong. */
  readonly reason: 'unsupported' | 'failed';

  constructor(node: string, bitmap: string, reason: 'unsupported' | 'failed', detail: string, options?: { cause?: unknown }) {
    super(`cannot set bits of bitmap "${bitmap}" on "${node}": ${detail}`, options);
    this.node = node;
    this.bitmap = bitmap;
    this.reason = reason;
  }
}

/** The drive's node is busy with a block job that is not this chain's, or was resized while a run started. */
export class DriveBusyError extends BackupError {
  protected static override readonly brand: string = 'DriveBusyError';
  static override readonly kind: QmpkitErrorKind = 'state';

  static override isInstance(value: unknown): value is DriveBusyError {
    return hasBrand(value, Symbol.for('qmpkit.backup.DriveBusyError'));
  }

  readonly node: string;

  constructor(node: string, detail: string, options?: { cause?: unknown }) {
    super(`drive "${node}": ${detail}`, options);
    this.node = node;
  }
}

/** `blockdev-add` named a block driver this QEMU build does not have (e.g. `blkdebug`). */
export class BlockDriverUnavailableError extends BackupError {
  protected static override readonly brand: string = 'BlockDriverUnavailableError';
  static override readonly kind: QmpkitErrorKind = 'unsupported';

  static override isInstance(value: unknown): value is BlockDriverUnavailableError {
    return hasBrand(value, Symbol.for('qmpkit.backup.BlockDriverUnavailableError'));
  }

  readonly driver: string;

  constructor(driver: string, options?: { cause?: unknown }) {
    super(`this QEMU has no block driver "${driver}"`, options);
    this.driver = driver;
  }
}

/** A `blockdev-create` job did not create the image; `qemuError` is QEMU's reason. */
export class BlockdevCreateError extends BackupError {
  protected static override readonly brand: string = 'BlockdevCreateError';
  static override readonly kind: QmpkitErrorKind = 'qemu';

  static override isInstance(value: unknown): value is BlockdevCreateError {
    return hasBrand(value, Symbol.for('qmpkit.backup.BlockdevCreateError'));
  }

  readonly jobId: string;
  readonly qemuError: string | undefined;

  constructor(jobId: string, qemuError: string | undefined, options?: { cause?: unknown }) {
    super(`blockdev-create job "${jobId}" failed${qemuError ? `: ${qemuError}` : ''}`, options);
    this.jobId = jobId;
    this.qemuError = qemuError;
  }
}

/** Why a pull-mode backup cannot be set up on this QEMU (see `PullUnavailableError`). */
export type PullUnavailableReason =
  /** The fleecing method asked for cannot be used here (a driver the build lacks, a drive without a device). */
  | 'fleecing-method'
  /** QEMU's NBD server is already running (started by someone else): QEMU has only one, and QMP does not say where it listens. */
  | 'nbd-server-running'
  /** This QEMU has no `block-export-add` (QEMU 5.2 and later have it). */
  | 'block-export';

/**
 * A pull-mode backup cannot be set up on this QEMU: `reason` says why, `detail` what QEMU
 * or the drive lacks. Nothing was changed.
 */
export class PullUnavailableError extends BackupError {
  protected static override readonly brand: string = 'PullUnavailableError';
  static override readonly kind: QmpkitErrorKind = 'unsupported';

  /** 'nbd-server-running' is a state that can change; the others are what this QEMU is. */
  override get kind(): QmpkitErrorKind {
    return this.reason === 'nbd-server-running' ? 'state' : 'unsupported';
  }

  static override isInstance(value: unknown): value is PullUnavailableError {
    return hasBrand(value, Symbol.for('qmpkit.backup.PullUnavailableError'));
  }

  readonly node: string;
  readonly reason: PullUnavailableReason;
  readonly detail: string;

  constructor(node: string, reason: PullUnavailableReason, detail: string, options?: { cause?: unknown }) {
    super(`pull-mode backup of "${node}" cannot be set up: ${detail}`, options);
    this.node = node;
    this.reason = reason;
    this.detail = detail;
  }
}

/**
 * The sink of a pull-mode backup (`pullBackup`'s Writable) failed or closed before it took
 * every extent: the backup was undone (the bitmap still covers the interval). `cause` is the
 * sink's error, if it gave one.
 */
export class PullSinkError extends BackupError {
  protected static override readonly brand: string = 'PullSinkError';
  static override readonly kind: QmpkitErrorKind = 'state';

  static override isInstance(value: unknown): value is PullSinkError {
    return hasBrand(value, Symbol.for('qmpkit.backup.PullSinkError'));
  }

  readonly node: string;

  constructor(node: string, detail: string, options?: { cause?: unknown }) {
    super(`pull-mode backup of "${node}": the sink ${detail}`, options);
    this.node = node;
  }
}
