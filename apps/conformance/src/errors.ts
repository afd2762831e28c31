import { QmpkitError, hasBrand, setBrand as setQmpkitBrand, type QmpkitErrorKind } from '@qmpkit/errors';

import { checkLabel, type FailedCheck } from './checks.js';

// Every error the conformance app throws. The base extends `QmpkitError` of `@qmpkit/errors`, the
// root of every qmpkit error: each class names its brand (`Symbol.for('qmpkit.conformance.<Class>')`,
// so `isInstance` keeps working when two copies of the app's modules are loaded, jest + dist) and
// its `kind`.

/**
 * Brands `target` as this app's class `name`. The classes here declare a static `brand` instead
 * (the base constructor sets it); kept for classes written in the earlier pattern.
 */
function setBrand(target: object, name: string): void {
  setQmpkitBrand(target, 'conformance', name);
}

export interface ConformanceErrorOptions {
  cause?: unknown;
}

/** Base class of every error of this app. */
export class ConformanceError extends QmpkitError {
  protected static override readonly scope: string = 'conformance';
  protected static override readonly brand: string = 'ConformanceError';

  static override isInstance(value: unknown): value is ConformanceError {
    return hasBrand(value, 'conformance', 'ConformanceError');
  }

  /** The named check this failure belongs to, once a case has said (see `CaseContext.checking`). */
  failedCheck: FailedCheck | undefined;

  constructor(message: string, options: ConformanceErrorOptions = {}) {
    super(message, options);
    this.failedCheck = undefined;
  }

  /** Name the check this failure belongs to; its message then starts with `[origin: name]`. */
  forCheck(check: FailedCheck): this {
    if (this.failedCheck === undefined) {
      this.failedCheck = { ...check };
      this.message = `${checkLabel(check)} ${this.message}`;
    }
    return this;
  }
}

/** A command-line option is missing its value, malformed, or unknown. Exit status 2. */
export class CliUsageError extends ConformanceError {
  protected static override readonly brand: string = 'CliUsageError';
  static override readonly kind: QmpkitErrorKind = 'usage';

  static override isInstance(value: unknown): value is CliUsageError {
    return hasBrand(value, Symbol.for('qmpkit.conformance.CliUsageError'));
  }

  /** The option at fault (`--jobs`), or undefined when the command line as a whole is wrong. */
  readonly option: string | undefined;
  readonly value: string | undefined;

  constructor(message: string, details: { option?: string; value?: string; cause?: unknown } = {}) {
    super(message, { cause: details.cause });
    this.option = details.option;
    this.value = details.value;
  }
}

/**
 * A QEMU binary to test is not an executable file (the option's path, the environment
 * variable's, or the name on PATH). Nothing was run: every case would fail the same way.
 * The CLI reports it as a usage error (exit 2).
 */
export class BinaryNotFoundError extends ConformanceError {
  protected static override readonly brand: string = 'BinaryNotFoundError';
  static override readonly kind: QmpkitErrorKind = 'not-found';

  static override isInstance(value: unknown): value is BinaryNotFoundError {
    return hasBrand(value, Symbol.for('qmpkit.conformance.BinaryNotFoundError'));
  }

  /** `qemu-system`, `qemu-img` or `qemu-io`. */
  readonly binary: string;
  /** The command-line option that names it, e.g. `--qemu-system`. */
  readonly option: string;
  /** What was looked for: the path given, or the name searched on PATH. */
  readonly path: string;

  constructor(binary: string, option: string, path: string, source: 'option' | 'environment' | 'path', variable: string) {
    const where =
      source === 'option' ? option : source === 'environment' ? `$${variable}` : `PATH (name one with ${option} or $${variable})`;
    super(`${binary} not found or not executable: ${path} (from ${where})`);
    this.binary = binary;
    this.option = option;
    this.path = path;
  }
}

/**
 * The scratch directory asked for (`--scratch-dir`, `scratchDir`) is missing, not a directory
 * or not writable. Nothing was run. The CLI reports it as a usage error (exit 2).
 */
export class ScratchDirError extends ConformanceError {
  protected static override readonly brand: string = 'ScratchDirError';
  static override readonly kind: QmpkitErrorKind = 'not-found';

  static override isInstance(value: unknown): value is ScratchDirError {
    return hasBrand(value, Symbol.for('qmpkit.conformance.ScratchDirError'));
  }

  /** The directory, as an absolute path. */
  readonly path: string;
  /** What is wrong with it: `no such directory`, `not a directory`, `not writable`. */
  readonly reason: string;

  constructor(path: string, reason: string) {
    super(`scratch directory ${path}: ${reason}`);
    this.path = path;
    this.reason = reason;
  }
}

/**
 * A check of a case did not hold. `check` names what was checked (the same thing the reference
 * test asserts), `expected` and `actual` are what differed.
 */
export class CaseAssertionError extends ConformanceError {
  protected static override readonly brand: string = 'CaseAssertionError';
  static override readonly kind: QmpkitErrorKind = 'check';

  static override isInstance(value: unknown): value is CaseAssertionError {
    return hasBrand(value, Symbol.for('qmpkit.conformance.CaseAssertionError'));
  }

  readonly check: string;
  readonly expected: unknown;
  readonly actual: unknown;

  constructor(check: string, expected: unknown, actual: unknown, options: ConformanceErrorOptions & { detail?: string } = {}) {
    super(
      `${check}: expected ${show(expected)}, got ${show(actual)}${options.detail ? ` (${options.detail})` : ''}`,
      options,
    );
    this.check = check;
    this.expected = expected;
    this.actual = actual;
  }
}

/**
 * Two comparison engines gave different verdicts on the same pair of images: at least one of
 * them is wrong, so the comparison decides nothing and the case fails.
 */
export class EngineDisagreementError extends CaseAssertionError {
  protected static override readonly brand: string = 'EngineDisagreementError';
  static override readonly kind: QmpkitErrorKind = 'check';

  static override isInstance(value: unknown): value is EngineDisagreementError {
    return hasBrand(value, Symbol.for('qmpkit.conformance.EngineDisagreementError'));
  }

  /** Each engine's verdict, e.g. `{ 'in-process': 'Images are identical.', 'qemu-img': 'Content mismatch at offset 0!' }`. */
  readonly verdicts: Readonly<Record<string, string>>;

  constructor(what: string, verdicts: Record<string, string>) {
    super(`${what}: the comparison engines agree`, 'one verdict', verdicts);
    this.verdicts = { ...verdicts };
  }
}

/** An image comparison or map could not be made (qemu-img exited 2 or worse or could not run, or a reader refused the image). */
export class ComparisonError extends ConformanceError {
  protected static override readonly brand: string = 'ComparisonError';
  static override readonly kind: QmpkitErrorKind = 'tool';

  static override isInstance(value: unknown): value is ComparisonError {
    return hasBrand(value, Symbol.for('qmpkit.conformance.ComparisonError'));
  }

  readonly engine: string;
  /** The two images compared, or the one image mapped. */
  readonly files: readonly string[];

  constructor(engine: string, files: readonly string[], reason: string, options: ConformanceErrorOptions = {}) {
    const what = files.length === 1 ? `map ${files[0]}` : `compare ${files[0]} with ${files[1]}`;
    super(`${engine} could not ${what}: ${reason}`, options);
    this.engine = engine;
    this.files = files;
  }
}

/** A case ran longer than `--timeout`; its machines were killed and its tools aborted. */
export class CaseTimeoutError extends ConformanceError {
  protected static override readonly brand: string = 'CaseTimeoutError';
  static override readonly kind: QmpkitErrorKind = 'timeout';

  static override isInstance(value: unknown): value is CaseTimeoutError {
    return hasBrand(value, Symbol.for('qmpkit.conformance.CaseTimeoutError'));
  }

  readonly caseId: string;
  readonly timeoutMs: number;

  constructor(caseId: string, timeoutMs: number) {
    super(`${caseId} did not finish within ${timeoutMs} ms`);
    this.caseId = caseId;
    this.timeoutMs = timeoutMs;
  }
}

/**
 * Thrown by a case whose precondition the QEMU under test does not meet (for example a build
 * without the blkdebug driver). The case is reported as skipped, with `reason`.
 */
export class CaseSkip extends ConformanceError {
  protected static override readonly brand: string = 'CaseSkip';
  static override readonly kind: QmpkitErrorKind = 'unsupported';

  static override isInstance(value: unknown): value is CaseSkip {
    return hasBrand(value, Symbol.for('qmpkit.conformance.CaseSkip'));
  }

  readonly reason: string;

  constructor(reason: string, options: ConformanceErrorOptions = {}) {
    super(`skipped: ${reason}`, options);
    this.reason = reason;
  }
}

/** The run was interrupted (SIGINT or the caller's AbortSignal) before every case finished. */
export class RunAbortedError extends ConformanceError {
  protected static override readonly brand: string = 'RunAbortedError';
  static override readonly kind: QmpkitErrorKind = 'abort';

  static override isInstance(value: unknown): value is RunAbortedError {
    return hasBrand(value, Symbol.for('qmpkit.conformance.RunAbortedError'));
  }

  constructor(options: ConformanceErrorOptions = {}) {
    super('the conformance run was interrupted', options);
  }
}

/** Compact rendering of an expected/actual value for a one-line failure message. */
export function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (value === undefined) return 'undefined';
  if (typeof value === 'bigint') return `${value}n`;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
