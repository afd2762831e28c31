/**
 * Error classes of @qmpkit/image-tools. The base extends `QmpkitError` of `@qmpkit/errors`, the
 * root of every qmpkit error: each class names its brand (`Symbol.for('qmpkit.image-tools.<Class>')`,
 * set for the class and every base, so `isInstance()` keeps working when a program ends up with
 * two copies of this package, where `instanceof` would fail) and its `kind`.
 */
import { QmpkitError, hasBrand as hasQmpkitBrand, type QmpkitErrorKind, type QmpkitErrorOptions } from '@qmpkit/errors';

/** Whether `value` carries the brand of this package's class `name`. */
function hasBrand(value: unknown, name: string): boolean {
  return hasQmpkitBrand(value, 'image-tools', name);
}

export type ImageToolsErrorOptions = QmpkitErrorOptions;

/** Base class of every error thrown by this package. */
export class ImageToolsError extends QmpkitError {
  protected static override readonly scope: string = 'image-tools';
  protected static override readonly brand: string = 'ImageToolsError';

  constructor(message: string, options: ImageToolsErrorOptions = {}) {
    super(message, options);
  }

  static override isInstance(value: unknown): value is ImageToolsError {
    return hasBrand(value, 'ImageToolsError');
  }
}

/**
 * An argument was rejected before any process was started (bad size, pattern, file name, option
 * value, ...). `argument` names the offending parameter and `value` is what was passed.
 */
export class ImageToolsArgumentError extends ImageToolsError {
  protected static override readonly brand: string = 'ImageToolsArgumentError';
  static override readonly kind: QmpkitErrorKind = 'usage';

  readonly argument: string;
  readonly value: unknown;

  constructor(argument: string, value: unknown, reason: string, options: ImageToolsErrorOptions = {}) {
    super(`invalid ${argument} (${describe(value)}): ${reason}`, options);
    this.argument = argument;
    this.value = value;
  }

  static override isInstance(value: unknown): value is ImageToolsArgumentError {
    return hasBrand(value, 'ImageToolsArgumentError');
  }
}

/** Why a tool run ended without a usable result. */
export type ToolFailureReason =
  /** the tool exited with a status that means failure */
  | 'exit'
  /** the tool was killed by a signal we did not send */
  | 'signal'
  /** the tool could not be started (binary missing, not executable) */
  | 'spawn'
  /** `timeout` elapsed; the tool was killed */
  | 'timeout'
  /** the caller's AbortSignal fired; the tool was killed */
  | 'abort'
  /** the tool exited 0 but its output reports a failure (qemu-io) or cannot be parsed */
  | 'output';

export interface ToolErrorDetails {
  binary: string;
  argv: readonly string[];
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  reason: ToolFailureReason;
  cause?: unknown;
}

/** Common shape of `QemuImgError` and `QemuIoError`: everything needed to reproduce the run. */
export class ToolError extends ImageToolsError {
  protected static override readonly brand: string = 'ToolError';
  static override readonly kind: QmpkitErrorKind = 'tool';

  /** Path or name of the binary that ran. */
  readonly binary: string;
  /** Arguments passed to the binary (without the binary itself). */
  readonly argv: readonly string[];
  /** Exit status, or `null` when the process was killed or never started. */
  readonly exitCode: number | null;
  /** Signal that ended the process, if any. */
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly reason: ToolFailureReason;

  constructor(message: string, details: ToolErrorDetails) {
    super(message, details.cause === undefined ? {} : { cause: details.cause });
    this.binary = details.binary;
    this.argv = details.argv;
    this.exitCode = details.exitCode;
    this.signal = details.signal;
    this.stdout = details.stdout;
    this.stderr = details.stderr;
    this.reason = details.reason;
  }

  /** `timeout` or `abort` when the run was killed for that reason; otherwise `tool`. */
  override get kind(): QmpkitErrorKind {
    return this.reason === 'timeout' ? 'timeout' : this.reason === 'abort' ? 'abort' : 'tool';
  }

  static override isInstance(value: unknown): value is ToolError {
    return hasBrand(value, 'ToolError');
  }
}

/** A qemu-img run failed. */
export class QemuImgError extends ToolError {
  protected static override readonly brand: string = 'QemuImgError';

  static override isInstance(value: unknown): value is QemuImgError {
    return hasBrand(value, 'QemuImgError');
  }
}

/**
 * A qemu-io run failed: it exited non-zero, or one of its commands printed a failure
 * (`failures` holds those lines; qemu-io may still exit 0 in that case).
 */
export class QemuIoError extends ToolError {
  protected static override readonly brand: string = 'QemuIoError';

  /** Output lines that report a failed command. */
  readonly failures: readonly string[];

  constructor(message: string, details: ToolErrorDetails & { failures?: readonly string[] }) {
    super(message, details);
    this.failures = details.failures ?? [];
  }

  static override isInstance(value: unknown): value is QemuIoError {
    return hasBrand(value, 'QemuIoError');
  }
}

/** What `createQcow2Image` cannot lay out itself (qemu-img can, or reports its own error). */
export type UnsupportedQcow2LayoutReason =
  /** the metadata would need more than the first refcount block (small clusters, large image) */
  | 'refcount-block-overflow'
  /** more L1 entries than QEMU allows (32 MiB of L1 table) */
  | 'l1-table-too-large'
  /** the backing file name is longer than the 1023 bytes QEMU reads */
  | 'backing-file-name-too-long'
  /** the backing format name is longer than the 15 bytes QEMU reads */
  | 'backing-format-too-long'
  /** header, header extensions and backing file name do not fit the first cluster */
  | 'header-overflow';

/**
 * `createQcow2Image` was asked for an image whose layout it does not write. Nothing was
 * created; `qemuImg.create` with the same options is the fallback.
 */
export class UnsupportedQcow2LayoutError extends ImageToolsError {
  protected static override readonly brand: string = 'UnsupportedQcow2LayoutError';
  static override readonly kind: QmpkitErrorKind = 'unsupported';

  readonly file: string;
  readonly reason: UnsupportedQcow2LayoutReason;

  constructor(file: string, reason: UnsupportedQcow2LayoutReason, detail: string) {
    super(`cannot create ${file} in-process (${reason}): ${detail}; use qemuImg.create instead`);
    this.file = file;
    this.reason = reason;
  }

  static override isInstance(value: unknown): value is UnsupportedQcow2LayoutError {
    return hasBrand(value, 'UnsupportedQcow2LayoutError');
  }
}

/**
 * An in-process operation (no tool involved) was stopped by its `signal` or `timeout`;
 * whatever it had written was removed. `cause` is the signal's reason when it was aborted.
 */
export class ImageToolsAbortError extends ImageToolsError {
  protected static override readonly brand: string = 'ImageToolsAbortError';
  static override readonly kind: QmpkitErrorKind = 'abort';

  readonly operation: string;
  readonly reason: 'abort' | 'timeout';

  constructor(operation: string, reason: 'abort' | 'timeout', options: ImageToolsErrorOptions = {}) {
    super(`${operation} ${reason === 'abort' ? 'was aborted' : 'timed out'}`, options);
    this.operation = operation;
    this.reason = reason;
  }

  override get kind(): QmpkitErrorKind {
    return this.reason;
  }

  static override isInstance(value: unknown): value is ImageToolsAbortError {
    return hasBrand(value, 'ImageToolsAbortError');
  }
}

/** What was being done to an image file when the file system refused. */
export type ImageFileOperation = 'open' | 'chmod' | 'write' | 'sync' | 'close' | 'remove';

/**
 * The file system refused an operation on an image file this package writes in-process
 * (`Qcow2ImageWriter`): `code` is the system error code (`ENOSPC`, `EACCES`, ...) and `cause`
 * the original error. Its kind is `not-found` for `ENOENT` (a missing directory), else `other`.
 */
export class ImageFileError extends ImageToolsError {
  protected static override readonly brand: string = 'ImageFileError';

  readonly path: string;
  readonly operation: ImageFileOperation;
  /** The system error code, if the cause had one. */
  readonly code: string | undefined;

  constructor(path: string, operation: ImageFileOperation, cause: unknown, message?: string) {
    const code = systemErrorCode(cause);
    const detail = cause instanceof Error ? cause.message : String(cause);
    super(message ?? `cannot ${operation} ${path}: ${detail}`, { cause });
    this.path = path;
    this.operation = operation;
    this.code = code;
  }

  override get kind(): QmpkitErrorKind {
    return this.code === 'ENOENT' ? 'not-found' : super.kind;
  }

  static override isInstance(value: unknown): value is ImageFileError {
    return hasBrand(value, 'ImageFileError');
  }
}

/** The image file to create exists already; it was left as it was. */
export class ImageFileExistsError extends ImageFileError {
  protected static override readonly brand: string = 'ImageFileExistsError';
  static override readonly kind: QmpkitErrorKind = 'state';

  constructor(path: string, cause: unknown) {
    super(path, 'open', cause, `${path} exists already: an image is only written into a new file`);
  }

  override get kind(): QmpkitErrorKind {
    return 'state';
  }

  static override isInstance(value: unknown): value is ImageFileExistsError {
    return hasBrand(value, 'ImageFileExistsError');
  }
}

/** Why a `Qcow2ImageWriter` refuses further calls. */
export type Qcow2WriterState =
  /** `close()` finished: the image is complete */
  | 'closed'
  /** `abort()` was called: the file is (being) removed */
  | 'aborted'
  /** an earlier write or `close()` failed (see `cause`): only `abort()` is left */
  | 'failed';

/**
 * A `Qcow2ImageWriter` call came after the writer was closed, aborted, or failed; nothing was
 * written. `cause` is the earlier failure for state `failed`.
 */
export class Qcow2WriterStateError extends ImageToolsError {
  protected static override readonly brand: string = 'Qcow2WriterStateError';
  static override readonly kind: QmpkitErrorKind = 'state';

  readonly path: string;
  readonly operation: string;
  readonly state: Qcow2WriterState;

  constructor(path: string, operation: string, state: Qcow2WriterState, options: ImageToolsErrorOptions = {}) {
    const why = state === 'closed' ? 'was closed' : state === 'aborted' ? 'was aborted' : 'failed earlier';
    super(`${operation} refused: the qcow2 writer of ${path} ${why}`, options);
    this.path = path;
    this.operation = operation;
    this.state = state;
  }

  static override isInstance(value: unknown): value is Qcow2WriterStateError {
    return hasBrand(value, 'Qcow2WriterStateError');
  }
}

/** What is wrong with the range of a `Qcow2ImageWriter` write. */
export type Qcow2WriteRangeProblem =
  /** the offset is not a multiple of the cluster size */
  | 'misaligned-offset'
  /** the length is not a multiple of the cluster size, and the range does not end at the image's end */
  | 'misaligned-length'
  /** the range reaches past the image's virtual size */
  | 'out-of-range';

/**
 * A `Qcow2ImageWriter` write or zero write was given a range it cannot map to whole clusters of
 * the image; nothing was written and the writer stays usable. `argument` is `offset` or `length`.
 */
export class Qcow2WriteRangeError extends ImageToolsArgumentError {
  protected static override readonly brand: string = 'Qcow2WriteRangeError';

  readonly problem: Qcow2WriteRangeProblem;
  readonly offset: number;
  readonly length: number;
  readonly clusterSize: number;
  /** The image's virtual size. */
  readonly size: number;

  constructor(problem: Qcow2WriteRangeProblem, range: { offset: number; length: number; clusterSize: number; size: number }) {
    const argument = problem === 'misaligned-offset' ? 'offset' : 'length';
    const reason =
      problem === 'misaligned-offset'
        ? `must be a multiple of the cluster size ${range.clusterSize}`
        : problem === 'misaligned-length'
          ? `must be a multiple of the cluster size ${range.clusterSize}, or end the range at the image size ${range.size}`
          : `offset ${range.offset} + length ${range.length} is past the image size ${range.size}`;
    super(argument, problem === 'misaligned-offset' ? range.offset : range.length, reason);
    this.problem = problem;
    this.offset = range.offset;
    this.length = range.length;
    this.clusterSize = range.clusterSize;
    this.size = range.size;
  }

  static override isInstance(value: unknown): value is Qcow2WriteRangeError {
    return hasBrand(value, 'Qcow2WriteRangeError');
  }
}

function systemErrorCode(error: unknown): string | undefined {
  const code = typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
  return typeof code === 'string' ? code : undefined;
}

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? `${value.slice(0, 77)}...` : value);
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'number' || typeof value === 'boolean' || value === undefined || value === null) {
    return String(value);
  }
  return typeof value;
}
