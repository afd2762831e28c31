/**
 * The root of every qmpkit error.
 *
 * Every error class of every qmpkit package extends {@link QmpkitError} through its package's
 * base class (`QmpError`, `MachineError`, `BackupError`, ...). Instances carry
 * `Symbol.for` brands, global to the whole process, so the checks below answer correctly when
 * a program ends up with two copies of a package (two versions, or its ESM and CommonJS
 * builds), where `instanceof` would not:
 *
 * - `Symbol.for('qmpkit.error')` on every instance: {@link QmpkitError.isInstance}, {@link isQmpkitError};
 * - `Symbol.for('qmpkit.<scope>.<brand>')` for the class and each of its bases: the classes'
 *   own `isInstance`, e.g. `QmpTimeoutError.isInstance(error)`.
 *
 * Brand names are spelled out per class (`brand`) because bundlers may rename classes.
 */

/** What went wrong, in terms a caller acts on; every qmpkit error has one ({@link QmpkitError.kind}). */
export type QmpkitErrorKind =
  /** A deadline (`timeout`) passed before the operation finished. */
  | 'timeout'
  /** The caller's `AbortSignal` fired, or the run was interrupted. */
  | 'abort'
  /** An argument, option or call was refused before anything was sent or spawned: fix the call. */
  | 'usage'
  /** Something named does not exist: a node, a bitmap, a binary. */
  | 'not-found'
  /** The operation does not fit the current state: a machine not running, a chain that needs a new full backup. */
  | 'state'
  /** QEMU (or the NBD server standing in for it) refused or failed: an error reply, a failed job, QEMU exiting during start-up. */
  | 'qemu'
  /** A connection could not be made, or ended. */
  | 'connection'
  /** The peer broke the wire protocol (QMP, NBD). */
  | 'protocol'
  /** A QEMU tool (`qemu-img`, `qemu-io`) failed. */
  | 'tool'
  /** Not supported here: an image layout, a driver the QEMU build lacks, a case's precondition. */
  | 'unsupported'
  /** Data is not what it must be: a verification mismatch, an unreadable manifest. */
  | 'integrity'
  /** A consumer fell behind a bounded queue and data was dropped. */
  | 'overflow'
  /** A conformance check did not hold. */
  | 'check'
  /** Not classified (a class that did not declare its kind). */
  | 'other';

/** Every {@link QmpkitErrorKind}, e.g. for exhaustive tests and reports. */
export const QMPKIT_ERROR_KINDS: readonly QmpkitErrorKind[] = Object.freeze([
  'timeout',
  'abort',
  'usage',
  'not-found',
  'state',
  'qemu',
  'connection',
  'protocol',
  'tool',
  'unsupported',
  'integrity',
  'overflow',
  'check',
  'other',
] as const satisfies readonly QmpkitErrorKind[]);

export interface QmpkitErrorOptions {
  cause?: unknown;
}

const FAMILY_BRAND = Symbol.for('qmpkit.error');

/** The brand symbol of class `brand` of package `scope`: `Symbol.for('qmpkit.<scope>.<brand>')`. */
export function brandSymbol(scope: string, brand: string): symbol {
  return Symbol.for(`qmpkit.${scope}.${brand}`);
}

/** Marks `target` with the brand of class `brand` of package `scope` (non-enumerable: it stays out of logs and JSON). */
export function setBrand(target: object, scope: string, brand: string): void {
  Object.defineProperty(target, brandSymbol(scope, brand), { value: true, enumerable: false, configurable: true });
}

/**
 * Whether `value` carries the brand of class `brand` of package `scope`, or, given one symbol,
 * that brand (`hasBrand(error, Symbol.for('qmpkit.backup.VerifyError'))`).
 */
export function hasBrand(value: unknown, scope: string, brand: string): boolean;
export function hasBrand(value: unknown, brand: symbol): boolean;
export function hasBrand(value: unknown, scopeOrSymbol: string | symbol, brand?: string): boolean {
  const key = typeof scopeOrSymbol === 'symbol' ? scopeOrSymbol : brandSymbol(scopeOrSymbol, brand ?? '');
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[key] === true;
}

function ownString(target: unknown, key: string): string | undefined {
  if (typeof target !== 'function' || !Object.prototype.hasOwnProperty.call(target, key)) return undefined;
  const value = (target as unknown as Record<string, unknown>)[key];
  return typeof value === 'string' && value !== '' ? value : undefined;
}

/**
 * Base of every qmpkit error. A package declares one subclass with its `scope` (the package's
 * part of the brand symbols) and each class declares its `brand` and `kind`:
 *
 * ```ts
 * export class QmpError extends QmpkitError {
 *   protected static override readonly scope: string = 'client';
 *   protected static override readonly brand: string = 'QmpError';
 * }
 * export class QmpTimeoutError extends QmpError {
 *   protected static override readonly brand: string = 'QmpTimeoutError';
 *   static override readonly kind: QmpkitErrorKind = 'timeout';
 *   static override isInstance(value: unknown): value is QmpTimeoutError {
 *     return hasBrand(value, 'client', 'QmpTimeoutError');
 *   }
 * }
 * ```
 *
 * The constructor brands the instance for its class and every base up to this one and sets
 * `name` to the class's brand. A class whose kind depends on the instance (a tool killed by a
 * timeout, a launch that was aborted) overrides the `kind` getter.
 */
export class QmpkitError extends Error {
  /** The package's part of the brand symbols (`Symbol.for('qmpkit.<scope>.<brand>')`). */
  protected static readonly scope: string = 'errors';
  /** The class's name in its brand symbol and in `error.name`. */
  protected static readonly brand: string = 'QmpkitError';
  /** The kind of this class's errors (instances may refine it: see the `kind` getter). */
  static readonly kind: QmpkitErrorKind = 'other';

  constructor(message: string, options?: QmpkitErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    Object.defineProperty(this, FAMILY_BRAND, { value: true, enumerable: false, configurable: true });
    let name: string | undefined;
    for (let ctor: unknown = new.target; typeof ctor === 'function' && ctor !== QmpkitError && ctor !== Error; ctor = Object.getPrototypeOf(ctor)) {
      const brand = ownString(ctor, 'brand');
      if (brand === undefined) continue;
      name ??= brand;
      setBrand(this, (ctor as unknown as { scope: string }).scope, brand);
    }
    this.name = name ?? 'QmpkitError';
  }

  /** What went wrong, in terms a caller acts on (`timeout`, `abort`, `qemu`, `usage`, ...). */
  get kind(): QmpkitErrorKind {
    const kind = (this.constructor as { kind?: unknown }).kind;
    return typeof kind === 'string' && (QMPKIT_ERROR_KINDS as readonly string[]).includes(kind) ? (kind as QmpkitErrorKind) : 'other';
  }

  /** Whether `value` is an error of any qmpkit package, from any copy of it. */
  static isInstance(value: unknown): value is QmpkitError {
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[FAMILY_BRAND] === true;
  }
}

/**
 * Whether `value` is a qmpkit error, and, with `kind`, one of that kind (or of any of those kinds):
 * `isQmpkitError(error, 'timeout')` is true for `QmpTimeoutError`, `MachineTimeoutError`,
 * a `QemuImgError` whose tool was killed at its timeout, ...
 */
export function isQmpkitError(value: unknown, kind?: QmpkitErrorKind | readonly QmpkitErrorKind[]): value is QmpkitError {
  if (!QmpkitError.isInstance(value)) return false;
  if (kind === undefined) return true;
  const actual = value.kind;
  return typeof kind === 'string' ? actual === kind : kind.includes(actual);
}

/**
 * The kind of any thrown value: a qmpkit error's own kind; `abort` or `timeout` for the
 * `DOMException`s an `AbortSignal` rejects with (`AbortError`, `TimeoutError`); otherwise
 * undefined. For classes whose kind follows their cause (`kind` of a job whose tracking
 * was lost because a wait timed out is `timeout`).
 */
export function errorKind(value: unknown): QmpkitErrorKind | undefined {
  if (QmpkitError.isInstance(value)) return value.kind;
  if (typeof value === 'object' && value !== null) {
    const name = (value as { name?: unknown }).name;
    if (name === 'AbortError') return 'abort';
    if (name === 'TimeoutError') return 'timeout';
  }
  return undefined;
}

/**
 * The qmpkit error classes among a module's exports, with the kind each declares: for tests
 * that every class says its kind, and for documentation. `errorClassKinds(await import('@qmpkit/client'))`
 * is `{ QmpError: 'other', QmpCommandError: 'qemu', QmpTimeoutError: 'timeout', ... }`.
 */
export function errorClassKinds(namespace: Readonly<Record<string, unknown>>): Record<string, QmpkitErrorKind> {
  const kinds: Record<string, QmpkitErrorKind> = {};
  for (const [name, value] of Object.entries(namespace).sort(([a], [b]) => a.localeCompare(b))) {
    if (typeof value !== 'function' || ownString(value, 'brand') === 'QmpkitError' || !extendsRoot(value)) continue;
    const kind = (value as { kind?: unknown }).kind;
    kinds[name] = typeof kind === 'string' && (QMPKIT_ERROR_KINDS as readonly string[]).includes(kind) ? (kind as QmpkitErrorKind) : 'other';
  }
  return kinds;
}

/** Whether a class extends the root of this or another copy of this package (whose own static `brand` is 'QmpkitError'). */
function extendsRoot(value: unknown): boolean {
  for (let ctor: unknown = value; typeof ctor === 'function' && ctor !== Function.prototype; ctor = Object.getPrototypeOf(ctor)) {
    if (ownString(ctor, 'brand') === 'QmpkitError') return true;
  }
  return false;
}
