import { QmpkitError, hasBrand as hasQmpkitBrand, type QmpkitErrorKind } from '@qmpkit/errors';

import { errnoName, optionName, optionReplyErrorName } from './constants.js';

/** Whether `value` carries the brand of this package's class `name` (`Symbol.for('qmpkit.nbd.<name>')`). */
function hasBrand(value: unknown, name: string): boolean {
  return hasQmpkitBrand(value, 'nbd', name);
}

/**
 * Base of every error this package throws; it extends `QmpkitError` of `@qmpkit/errors`, the
 * root of every qmpkit error. Each class names its brand (`Symbol.for('qmpkit.nbd.<Class>')`,
 * set for the class and every base, so `isInstance()` works across duplicate installs where
 * `instanceof` would not; spelled out because bundlers may rename classes) and its `kind`.
 */
export class NbdError extends QmpkitError {
  protected static override readonly scope: string = 'nbd';
  protected static override readonly brand: string = 'NbdError';

  static override isInstance(value: unknown): value is NbdError {
    return hasBrand(value, 'NbdError');
  }
}

/**
 * The connection is unusable: the server went away, broke the protocol (then `cause` is an
 * `NbdProtocolError`), or the client was closed. Every request pending at that moment fails
 * with the same instance.
 */
export class NbdConnectionError extends NbdError {
  protected static override readonly brand: string = 'NbdConnectionError';
  static override readonly kind: QmpkitErrorKind = 'connection';

  static override isInstance(value: unknown): value is NbdConnectionError {
    return hasBrand(value, 'NbdConnectionError');
  }
}

/**
 * The server sent something the protocol does not allow: a bad magic number, a reply to a
 * request that is not in flight, a chunk of the wrong size or type, data outside the range
 * asked for. Nothing after it can be trusted, so it always ends the connection.
 */
export class NbdProtocolError extends NbdError {
  protected static override readonly brand: string = 'NbdProtocolError';
  static override readonly kind: QmpkitErrorKind = 'protocol';

  /** Up to 64 bytes around where the violation was seen, as hex, when there are any. */
  readonly excerpt: string | undefined;

  constructor(message: string, options?: { cause?: unknown; excerpt?: Uint8Array }) {
    super(message, options);
    this.excerpt = options?.excerpt === undefined ? undefined : Buffer.from(options.excerpt.subarray(0, 64)).toString('hex');
  }

  static override isInstance(value: unknown): value is NbdProtocolError {
    return hasBrand(value, 'NbdProtocolError');
  }
}

/**
 * The server refused an option during the handshake (an `NBD_REP_ERR_*` reply), or did not
 * offer what the caller required (an export, structured replies, a metadata context).
 */
export class NbdHandshakeError extends NbdError {
  protected static override readonly brand: string = 'NbdHandshakeError';
  static override readonly kind: QmpkitErrorKind = 'protocol';

  /** The option that failed, e.g. `NBD_OPT_GO`. */
  readonly option: string;
  /** The server's error reply type (`NBD_REP_ERR_UNKNOWN`, ...), when it sent one. */
  readonly reply: string | undefined;
  /** The server's message for a human, when it sent one. */
  readonly serverMessage: string | undefined;

  constructor(message: string, details: { option: number; replyType?: number; serverMessage?: string; cause?: unknown }) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.option = optionName(details.option);
    this.reply = details.replyType === undefined ? undefined : optionReplyErrorName(details.replyType);
    this.serverMessage = details.serverMessage;
  }

  static override isInstance(value: unknown): value is NbdHandshakeError {
    return hasBrand(value, 'NbdHandshakeError');
  }
}

/** The kind of request, in the specification's words. */
export type NbdCommandName = 'read' | 'block-status';

/**
 * The server answered one request with an error (an error chunk, or a simple reply with a
 * nonzero error). The connection stays usable.
 */
export class NbdCommandError extends NbdError {
  protected static override readonly brand: string = 'NbdCommandError';
  static override readonly kind: QmpkitErrorKind = 'qemu';

  readonly command: NbdCommandName;
  /** The request's offset and length as sent. */
  readonly offset: number;
  readonly length: number;
  /** The NBD error value (1 EPERM, 5 EIO, 22 EINVAL, 28 ENOSPC, 75 EOVERFLOW, 95 ENOTSUP, 108 ESHUTDOWN). */
  readonly errno: number;
  /** `'EIO'`, `'EINVAL'`, ... (or `errno N` for a value the specification does not define). */
  readonly code: string;
  /** The server's message, when its error chunk carried one. */
  readonly serverMessage: string | undefined;
  /** Where the error happened, when the server said (NBD_REPLY_TYPE_ERROR_OFFSET). */
  readonly errorOffset: number | undefined;

  constructor(details: {
    command: NbdCommandName;
    offset: number;
    length: number;
    errno: number;
    serverMessage?: string | undefined;
    errorOffset?: number | undefined;
  }) {
    const code = errnoName(details.errno);
    const where = details.errorOffset === undefined ? '' : ` at offset ${details.errorOffset}`;
    const text = details.serverMessage ? `: ${details.serverMessage}` : '';
    super(`${details.command} of ${details.length} byte(s) at offset ${details.offset} failed with ${code}${where}${text}`);
    this.command = details.command;
    this.offset = details.offset;
    this.length = details.length;
    this.errno = details.errno;
    this.code = code;
    this.serverMessage = details.serverMessage;
    this.errorOffset = details.errorOffset;
  }

  static override isInstance(value: unknown): value is NbdCommandError {
    return hasBrand(value, 'NbdCommandError');
  }
}

/** An operation did not finish within its `timeout`. */
export class NbdTimeoutError extends NbdError {
  protected static override readonly brand: string = 'NbdTimeoutError';
  static override readonly kind: QmpkitErrorKind = 'timeout';

  /** What was being waited for, e.g. `read of 65536 byte(s) at offset 0`. */
  readonly operation: string;
  /** Milliseconds. */
  readonly timeout: number;

  constructor(operation: string, timeout: number, options?: { cause?: unknown }) {
    super(`${operation} timed out after ${timeout} ms`, options);
    this.operation = operation;
    this.timeout = timeout;
  }

  static override isInstance(value: unknown): value is NbdTimeoutError {
    return hasBrand(value, 'NbdTimeoutError');
  }
}

/** An operation was cancelled through its AbortSignal; `cause` is the signal's reason. */
export class NbdAbortError extends NbdError {
  protected static override readonly brand: string = 'NbdAbortError';
  static override readonly kind: QmpkitErrorKind = 'abort';

  readonly operation: string;

  constructor(operation: string, reason: unknown) {
    super(`${operation} was aborted`, { cause: reason });
    this.operation = operation;
  }

  static override isInstance(value: unknown): value is NbdAbortError {
    return hasBrand(value, 'NbdAbortError');
  }
}

/** A caller's argument was refused before anything was sent (out of range, wrong type, unknown context). */
export class NbdArgumentError extends NbdError {
  protected static override readonly brand: string = 'NbdArgumentError';
  static override readonly kind: QmpkitErrorKind = 'usage';

  readonly argument: string;
  readonly value: unknown;

  constructor(argument: string, value: unknown, reason: string) {
    super(`invalid ${argument} (${describe(value)}): ${reason}`);
    this.argument = argument;
    this.value = value;
  }

  static override isInstance(value: unknown): value is NbdArgumentError {
    return hasBrand(value, 'NbdArgumentError');
  }
}

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}...` : value);
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean' || value == null) return String(value);
  return typeof value;
}
