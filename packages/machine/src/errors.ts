import { QmpkitError, hasBrand, type QmpkitErrorKind } from '@qmpkit/errors';

/** Whether `value` carries the brand of this package's class `name` (`Symbol.for('qmpkit.machine.<name>')`). */
function carriesBrand(value: unknown, name: string): boolean {
  return hasBrand(value, 'machine', name);
}

/**
 * Base of every error thrown by `@qmpkit/machine`; it extends `QmpkitError` of `@qmpkit/errors`,
 * the root of every qmpkit error. Instances carry a `Symbol.for('qmpkit.machine.<Class>')` brand
 * for their own class and each base class, so `isInstance()` answers correctly even when two
 * copies of the package are installed (where `instanceof` would not). Class names are written
 * out as strings (`brand`) because bundlers may rename classes; each class also says its `kind`.
 */
export class MachineError extends QmpkitError {
  protected static override readonly scope: string = 'machine';
  protected static override readonly brand: string = 'MachineError';

  static override isInstance(value: unknown): value is MachineError {
    return carriesBrand(value, 'MachineError');
  }
}

/** A QEMU binary could not be found: not the given path, not `$ENV`, not on `PATH`. */
export class QemuBinaryNotFoundError extends MachineError {
  protected static override readonly brand: string = 'QemuBinaryNotFoundError';
  static override readonly kind: QmpkitErrorKind = 'not-found';

  /** What was looked for: the explicit path, the environment value, or the default name. */
  readonly binary: string;
  /** Where the name came from. */
  readonly source: 'option' | 'environment' | 'path';
  /** The environment variable that can name the binary, e.g. `QEMU_SYSTEM`. */
  readonly environmentVariable: string;

  constructor(binary: string, source: 'option' | 'environment' | 'path', environmentVariable: string) {
    const where =
      source === 'option'
        ? 'the `binary` option'
        : source === 'environment'
          ? `$${environmentVariable}`
          : `PATH (set $${environmentVariable} or the \`binary\` option to use another)`;
    super(`QEMU binary not found or not executable: ${binary} (from ${where})`);
    this.binary = binary;
    this.source = source;
    this.environmentVariable = environmentVariable;
  }

  static override isInstance(value: unknown): value is QemuBinaryNotFoundError {
    return carriesBrand(value, 'QemuBinaryNotFoundError');
  }
}

/**
 * A configuration value cannot be put on QEMU's command line as given (an id QEMU would
 * reject, an option key with `=` or `,`, a socket path too long for `sun_path`, ...).
 * Thrown before anything is started.
 */
export class MachineConfigError extends MachineError {
  protected static override readonly brand: string = 'MachineConfigError';
  static override readonly kind: QmpkitErrorKind = 'usage';

  /** The option at fault, e.g. `drive.id` or `drive.opts.cache`. */
  readonly option: string;
  readonly value: unknown;

  constructor(option: string, value: unknown, reason: string) {
    super(`invalid ${option} ${JSON.stringify(value)}: ${reason}`);
    this.option = option;
    this.value = value;
  }

  static override isInstance(value: unknown): value is MachineConfigError {
    return carriesBrand(value, 'MachineConfigError');
  }
}

/** An operation was called in a state that does not allow it (e.g. `hmp()` before `launch()`). */
export class MachineStateError extends MachineError {
  protected static override readonly brand: string = 'MachineStateError';
  static override readonly kind: QmpkitErrorKind = 'state';

  readonly operation: string;
  readonly state: string;

  constructor(operation: string, state: string) {
    super(`cannot ${operation}: the process is ${state}`);
    this.operation = operation;
    this.state = state;
  }

  static override isInstance(value: unknown): value is MachineStateError {
    return carriesBrand(value, 'MachineStateError');
  }
}

/** Why a launch failed. */
export type LaunchFailureReason =
  /** The binary could not be started at all (`cause` holds the spawn error). */
  | 'spawn-failed'
  /** QEMU exited before its QMP monitor was ready (bad drive, bad option, ...). */
  | 'exited'
  /** QEMU kept running but the QMP connection could not be established. */
  | 'connect-failed'
  /** The `timeout` expired before QMP was ready; QEMU was killed. */
  | 'timeout'
  /** The `signal` was aborted; QEMU was killed. */
  | 'aborted';

/**
 * `launch()` failed. The process has been stopped and its temporary directory removed by
 * the time this is thrown; `logTail` keeps the end of what QEMU printed.
 */
export class QemuLaunchError extends MachineError {
  protected static override readonly brand: string = 'QemuLaunchError';
  static override readonly kind: QmpkitErrorKind = 'qemu';

  readonly reason: LaunchFailureReason;
  /** The full command line, binary first. */
  readonly argv: readonly string[];
  /** QEMU's exit code, or `null` if it was ended by a signal or never started. */
  readonly exitCode: number | null;
  /** The signal that ended QEMU, if any. */
  readonly signal: NodeJS.Signals | null;
  /** The last lines of QEMU's stdout and stderr. */
  readonly logTail: string;

  constructor(init: {
    reason: LaunchFailureReason;
    argv: readonly string[];
    exitCode: number | null;
    signal: NodeJS.Signals | null;
    logTail: string;
    cause?: unknown;
  }) {
    const status =
      init.reason === 'exited'
        ? init.signal !== null
          ? `QEMU was killed by ${init.signal} during start-up`
          : `QEMU exited with code ${String(init.exitCode)} during start-up`
        : init.reason === 'spawn-failed'
          ? 'QEMU could not be started'
          : init.reason === 'timeout'
            ? 'QEMU did not become ready in time'
            : init.reason === 'aborted'
              ? 'launch aborted'
              : 'could not connect to QEMU\'s QMP monitor';
    const tail = init.logTail.trim();
    super(`${status}: ${init.argv.join(' ')}${tail === '' ? '' : `\n--- log tail ---\n${tail}`}`, { cause: init.cause });
    this.reason = init.reason;
    this.argv = init.argv;
    this.exitCode = init.exitCode;
    this.signal = init.signal;
    this.logTail = init.logTail;
  }

  /** `timeout` and `abort` for those reasons, `connection` when QMP could not connect, else `qemu`. */
  override get kind(): QmpkitErrorKind {
    switch (this.reason) {
      case 'timeout':
        return 'timeout';
      case 'aborted':
        return 'abort';
      case 'connect-failed':
        return 'connection';
      default:
        return 'qemu';
    }
  }

  static override isInstance(value: unknown): value is QemuLaunchError {
    return carriesBrand(value, 'QemuLaunchError');
  }
}

/**
 * A drive name or qemu-io command given to `hmpQemuIo()` would be mis-parsed by HMP
 * (which reads the command as one double-quoted string with backslash escapes), so it
 * was refused before anything was sent.
 */
export class InvalidHmpCommandError extends MachineError {
  protected static override readonly brand: string = 'InvalidHmpCommandError';
  static override readonly kind: QmpkitErrorKind = 'usage';

  readonly argument: 'drive' | 'command';
  readonly value: string;

  constructor(argument: 'drive' | 'command', value: string, reason: string) {
    super(`refusing qemu-io ${argument} ${JSON.stringify(value)}: ${reason}`);
    this.argument = argument;
    this.value = value;
  }

  static override isInstance(value: unknown): value is InvalidHmpCommandError {
    return carriesBrand(value, 'InvalidHmpCommandError');
  }
}

/**
 * A qemu-io command run through HMP reported a failure. HMP's `qemu-io` always "succeeds"
 * at the QMP level; the failure shows only in text (the HMP reply or QEMU's stdout/stderr).
 */
export class QemuIoHmpError extends MachineError {
  protected static override readonly brand: string = 'QemuIoHmpError';
  static override readonly kind: QmpkitErrorKind = 'qemu';

  readonly drive: string;
  readonly command: string;
  /** Everything the command printed: the HMP reply followed by QEMU's own output. */
  readonly output: string;
  /** The first line recognised as a failure, e.g. `write failed: Input/output error`. */
  readonly failure: string;
  /** Every line recognised as a failure, in the order printed (image-tools' `findQemuIoFailures`). */
  readonly failures: readonly string[];

  constructor(drive: string, command: string, output: string, failure: string, failures: readonly string[] = [failure]) {
    super(`qemu-io ${drive} "${command}" failed: ${failure}`);
    this.drive = drive;
    this.command = command;
    this.output = output;
    this.failure = failure;
    this.failures = failures;
  }

  static override isInstance(value: unknown): value is QemuIoHmpError {
    return carriesBrand(value, 'QemuIoHmpError');
  }
}

/** A wait (`waitForExit`, a shutdown phase) did not finish within its timeout. */
export class MachineTimeoutError extends MachineError {
  protected static override readonly brand: string = 'MachineTimeoutError';
  static override readonly kind: QmpkitErrorKind = 'timeout';

  readonly operation: string;
  readonly timeout: number;

  constructor(operation: string, timeout: number) {
    super(`${operation} did not finish within ${timeout} ms`);
    this.operation = operation;
    this.timeout = timeout;
  }

  static override isInstance(value: unknown): value is MachineTimeoutError {
    return carriesBrand(value, 'MachineTimeoutError');
  }
}

/** An operation was cancelled through its `AbortSignal`; `cause` is the signal's reason. */
export class MachineAbortError extends MachineError {
  protected static override readonly brand: string = 'MachineAbortError';
  static override readonly kind: QmpkitErrorKind = 'abort';

  readonly operation: string;

  constructor(operation: string, reason: unknown) {
    super(`${operation} aborted`, { cause: reason });
    this.operation = operation;
  }

  static override isInstance(value: unknown): value is MachineAbortError {
    return carriesBrand(value, 'MachineAbortError');
  }
}

/**
 * QEMU did not exit even after SIGKILL (a process stuck in uninterruptible I/O). The
 * temporary directory is left for the process-exit hook to remove.
 */
export class QemuShutdownError extends MachineError {
  protected static override readonly brand: string = 'QemuShutdownError';
  static override readonly kind: QmpkitErrorKind = 'qemu';

  readonly pid: number;

  constructor(pid: number, waited: number) {
    super(`QEMU (pid ${pid}) did not exit within ${waited} ms of SIGKILL`);
    this.pid = pid;
  }

  static override isInstance(value: unknown): value is QemuShutdownError {
    return carriesBrand(value, 'QemuShutdownError');
  }
}
