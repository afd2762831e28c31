import { QmpkitError, hasBrand as hasQmpkitBrand, type QmpkitErrorKind } from '@qmpkit/errors';
import type { QapiErrorClass } from '@qmpkit/schema';
import type { QmpCommandMessage, QmpErrorReply } from './messages.js';

/** Whether `value` carries the brand of this package's class `name` (`Symbol.for('qmpkit.client.<name>')`). */
function hasBrand(value: unknown, name: string): boolean {
  return hasQmpkitBrand(value, 'client', name);
}

/**
 * Base of every error this package throws; it extends `QmpkitError` of `@qmpkit/errors`, the
 * root of every qmpkit error. Each class names its brand (`Symbol.for('qmpkit.client.<Class>')`,
 * set for the class and every base, so `isInstance()` works across duplicate installs where
 * `instanceof` would not; spelled out because bundlers may rename classes) and its `kind`.
 */
export class QmpError extends QmpkitError {
  protected static override readonly scope: string = 'client';
  protected static override readonly brand: string = 'QmpError';

  static override isInstance(value: unknown): value is QmpError {
    return hasBrand(value, 'QmpError');
  }
}

// Every class of QEMU's QapiErrorClass. `satisfies` keeps the list equal to the schema's enum:
// a class added to or removed from it fails to compile here.
const KNOWN_ERROR_CLASSES: ReadonlySet<string> = new Set(Object.keys({
  GenericError: true,
  CommandNotFound: true,
  DeviceNotActive: true,
  DeviceNotFound: true,
  KVMMissingCap: true,
} satisfies Record<QapiErrorClass, true>));

/** QEMU answered a command with an error reply. */
export class QmpCommandError extends QmpError {
  protected static override readonly brand: string = 'QmpCommandError';
  static override readonly kind: QmpkitErrorKind = 'qemu';

  /**
   * QMP error class: `GenericError`, `CommandNotFound`, `DeviceNotFound`, ... A class that
   * QEMU 7.2's schema does not list (from a newer or patched QEMU) is reported as
   * `GenericError`, what QEMU itself uses for every new error; the class as sent stays in
   * `reply.error.class`.
   */
  readonly errorClass: QapiErrorClass;
  /** QEMU's human-readable description. */
  readonly desc: string;
  /** The command as it was sent (including its id). */
  readonly command: QmpCommandMessage;
  /** The error reply as it was received. */
  readonly reply: QmpErrorReply;

  constructor(command: QmpCommandMessage, reply: QmpErrorReply) {
    super(`${command.execute ?? command['exec-oob'] ?? 'command'}: ${reply.error.class}: ${reply.error.desc}`);
    const sent = reply.error.class;
    this.errorClass = KNOWN_ERROR_CLASSES.has(sent) ? (sent as QapiErrorClass) : 'GenericError';
    this.desc = reply.error.desc;
    this.command = command;
    this.reply = reply;
  }

  static override isInstance(value: unknown): value is QmpCommandError {
    return hasBrand(value, 'QmpCommandError');
  }
}

/**
 * The connection is unusable: the server went away, sent something that cannot be
 * trusted (malformed JSON, an error reply without an id), or the client was closed.
 * `cause` holds the underlying socket or protocol error when there is one.
 */
export class QmpConnectionError extends QmpError {
  protected static override readonly brand: string = 'QmpConnectionError';
  static override readonly kind: QmpkitErrorKind = 'connection';

  static override isInstance(value: unknown): value is QmpConnectionError {
    return hasBrand(value, 'QmpConnectionError');
  }
}

/** An operation did not finish within its `timeout`. */
export class QmpTimeoutError extends QmpError {
  protected static override readonly brand: string = 'QmpTimeoutError';
  static override readonly kind: QmpkitErrorKind = 'timeout';

  /** The timeout that expired, in milliseconds. */
  readonly timeout: number;
  /** What was being waited for, e.g. `execute query-status` or `event STOP`. */
  readonly operation: string;

  constructor(operation: string, timeout: number, options?: { cause?: unknown }) {
    super(`${operation} timed out after ${timeout} ms`, options);
    this.operation = operation;
    this.timeout = timeout;
  }

  static override isInstance(value: unknown): value is QmpTimeoutError {
    return hasBrand(value, 'QmpTimeoutError');
  }
}

/** An operation was cancelled through its AbortSignal; `cause` is the signal's reason. */
export class QmpAbortError extends QmpError {
  protected static override readonly brand: string = 'QmpAbortError';
  static override readonly kind: QmpkitErrorKind = 'abort';

  readonly operation: string;

  constructor(operation: string, reason: unknown) {
    super(`${operation} was aborted`, { cause: reason });
    this.operation = operation;
  }

  static override isInstance(value: unknown): value is QmpAbortError {
    return hasBrand(value, 'QmpAbortError');
  }
}

/**
 * The peer broke the QMP wire protocol: malformed JSON, a message over the size limit,
 * a bad greeting, or a message of no known kind.
 */
export class QmpProtocolError extends QmpError {
  protected static override readonly brand: string = 'QmpProtocolError';
  static override readonly kind: QmpkitErrorKind = 'protocol';

  /** The offending text, cut to a readable length, when there is one. */
  readonly excerpt: string | undefined;

  constructor(message: string, options?: { cause?: unknown; excerpt?: string }) {
    super(message, options);
    this.excerpt = options?.excerpt;
  }

  static override isInstance(value: unknown): value is QmpProtocolError {
    return hasBrand(value, 'QmpProtocolError');
  }
}

/**
 * Capability negotiation failed: `oob` was asked for but not offered, `qmp_capabilities`
 * was refused, or an out-of-band command was used on a connection without `oob`.
 */
export class QmpNegotiationError extends QmpError {
  protected static override readonly brand: string = 'QmpNegotiationError';
  static override readonly kind: QmpkitErrorKind = 'protocol';

  /** Capabilities the server offered in its greeting, when known. */
  readonly offered: readonly string[] | undefined;

  constructor(message: string, options?: { cause?: unknown; offered?: readonly string[] }) {
    super(message, options);
    this.offered = options?.offered;
  }

  static override isInstance(value: unknown): value is QmpNegotiationError {
    return hasBrand(value, 'QmpNegotiationError');
  }
}

/**
 * A `stream()` consumer fell behind: its bounded queue filled up and events were dropped.
 * The events queued before the overflow are delivered first, then this error ends the stream.
 */
export class QmpEventOverflowError extends QmpError {
  protected static override readonly brand: string = 'QmpEventOverflowError';
  static override readonly kind: QmpkitErrorKind = 'overflow';

  /** The stream's queue capacity. */
  readonly capacity: number;
  /** How many events were dropped. */
  readonly dropped: number;

  constructor(capacity: number, dropped: number) {
    super(`event stream overflowed its queue of ${capacity}: ${dropped} event(s) dropped`);
    this.capacity = capacity;
    this.dropped = dropped;
  }

  static override isInstance(value: unknown): value is QmpEventOverflowError {
    return hasBrand(value, 'QmpEventOverflowError');
  }
}

/** Where a schema verdict comes from: a generated series' tables, or the server's own introspection. */
export type QmpSchemaSource = { kind: 'generated'; series: string } | { kind: 'query-qmp-schema' };

function describeSchemaSource(source: QmpSchemaSource): string {
  return source.kind === 'generated' ? `the generated QEMU ${source.series} schema` : 'its query-qmp-schema';
}

/**
 * The connected QEMU has no such command (by the schema check of `schemaCheck` or
 * `loadSchema()`): raised before anything is sent, instead of QEMU's CommandNotFound.
 */
export class QmpUnsupportedCommandError extends QmpError {
  protected static override readonly brand: string = 'QmpUnsupportedCommandError';
  static override readonly kind: QmpkitErrorKind = 'unsupported';

  readonly command: string;
  /** The server's version, e.g. `7.2.22`. */
  readonly qemuVersion: string;
  readonly source: QmpSchemaSource;

  constructor(command: string, qemuVersion: string, source: QmpSchemaSource) {
    super(`QEMU ${qemuVersion} has no QMP command '${command}' (per ${describeSchemaSource(source)}); nothing was sent`);
    this.command = command;
    this.qemuVersion = qemuVersion;
    this.source = source;
  }

  static override isInstance(value: unknown): value is QmpUnsupportedCommandError {
    return hasBrand(value, 'QmpUnsupportedCommandError');
  }
}

/**
 * The connected QEMU's command takes no argument of that name, or lacks a required one: raised
 * before anything is sent, instead of QEMU's GenericError ("Parameter 'x' is unexpected").
 */
export class QmpUnsupportedArgumentError extends QmpError {
  protected static override readonly brand: string = 'QmpUnsupportedArgumentError';
  static override readonly kind: QmpkitErrorKind = 'unsupported';

  readonly command: string;
  /** Arguments given that the command does not take. */
  readonly unknown: readonly string[];
  /** Required arguments that were not given. */
  readonly missing: readonly string[];
  /** Every argument the command takes on this QEMU. */
  readonly accepted: readonly string[];
  readonly qemuVersion: string;
  readonly source: QmpSchemaSource;

  constructor(
    command: string,
    details: { unknown: readonly string[]; missing: readonly string[]; accepted: readonly string[] },
    qemuVersion: string,
    source: QmpSchemaSource,
  ) {
    const parts = [
      ...(details.unknown.length > 0 ? [`takes no argument ${details.unknown.map((a) => `'${a}'`).join(', ')}`] : []),
      ...(details.missing.length > 0 ? [`needs ${details.missing.map((a) => `'${a}'`).join(', ')}`] : []),
    ];
    super(`QMP command '${command}' of QEMU ${qemuVersion} ${parts.join(' and ')} (per ${describeSchemaSource(source)}); nothing was sent`);
    this.command = command;
    this.unknown = details.unknown;
    this.missing = details.missing;
    this.accepted = details.accepted;
    this.qemuVersion = qemuVersion;
    this.source = source;
  }

  static override isInstance(value: unknown): value is QmpUnsupportedArgumentError {
    return hasBrand(value, 'QmpUnsupportedArgumentError');
  }
}
