import { watch, type FSWatcher } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { basename, dirname } from 'node:path';
import type { Duplex } from 'node:stream';
import {
  QmpAbortError,
  QmpCommandError,
  QmpConnectionError,
  QmpNegotiationError,
  QmpProtocolError,
  QmpTimeoutError,
} from './errors.js';
import type { QmpCommandInfo, QmpCommands, QmpEvents, QmpOobCommandName } from '@qmpkit/schema';

import { type QmpSchemaCheck, type QmpSchemaInfoEntry, QmpSchemaView } from './schema-view.js';
import { QmpEventHub, kDispatch, kEnd, type EventHubOptions, type EventSpecs } from './events.js';
import { describeThrown, excerptOf } from './excerpt.js';
import {
  classifyServerMessage,
  isEchoableId,
  isErrorReply,
  type QmpCommandMessage,
  type QmpGreeting,
  type QmpRawEvent,
  type QmpReply,
  type QmpSuccessReply,
  type QmpVersion,
} from './messages.js';
import { QmpMessageParser } from './parser.js';
import { serializeCommand } from './serializer.js';

/** Any map from command name to `{ args; returns }`, e.g. `QmpCommands` from `@qmpkit/schema`. */
export type CommandSpecs<C> = { [K in keyof C]: { args: unknown; returns: unknown } };

/**
 * A command map for servers other than stock QEMU 7.2 (or for untyped use): any name,
 * any object as arguments, `unknown` back. Use it as `QmpClient<LooseCommands, LooseEvents>`.
 */
export interface LooseCommands {
  [name: string]: { args: Record<string, unknown> | undefined; returns: unknown };
}

/**
 * Names `executeOob` accepts for command map `C`: for `QmpCommands`, the commands QEMU's
 * schema marks `allow-oob` (`QmpOobCommandName`); for any other map, every name (the client
 * cannot know which of its commands allow out-of-band execution).
 */
export type OobCommandName<C> = [C] extends [QmpCommands] ? QmpOobCommandName & keyof C : keyof C & string;

export type CommandArgs<C, K extends keyof C> = C[K] extends { args: infer A } ? A : never;
export type CommandReturn<C, K extends keyof C> = C[K] extends { returns: infer R } ? R : never;

export interface CommandOptions {
  /** Milliseconds; rejects with `QmpTimeoutError`. Defaults to the connection's `commandTimeout`. */
  timeout?: number;
  /** Rejects with `QmpAbortError` when aborted. */
  signal?: AbortSignal;
}

/** `args` may be left out exactly when the command has no required argument. */
export type ExecuteParameters<A> = {} extends A
  ? [args?: A | undefined, options?: CommandOptions]
  : [args: A, options?: CommandOptions];

export type ConnectTarget = string | { path: string } | { host: string; port: number } | Duplex;

export type QmpTranscriptEntry =
  | { direction: 'out'; time: number; message: QmpCommandMessage }
  | {
      direction: 'in';
      time: number;
      message: unknown;
      /**
       * Set when the message was not delivered: `'unknown-id'` for a reply whose id matches no
       * pending command, `'negotiation-noise'` for an error reply without an id received while
       * negotiation was being repaired (see `QmpClient.connect`).
       */
      dropped?: 'unknown-id' | 'negotiation-noise';
    }
  | {
      /**
       * Bytes written that are not a command: the single byte 0xFF sent while negotiating to
       * put the server's JSON parser back into a known state after it reported input it could
       * not parse.
       */
      direction: 'out-raw';
      time: number;
      message: Uint8Array;
    }
  | {
      /**
       * Not traffic: a buffered event (received, and recorded as `in`, earlier) was evicted
       * from the full history buffer, so later waits and `drain()` will not see it.
       */
      direction: 'evicted';
      time: number;
      /** The evicted event as it was buffered (`data` is `{}` when QEMU sent none). */
      message: QmpRawEvent;
      /** Events evicted on this connection so far, this one included (`events.evicted`). */
      evicted: number;
    };

export interface ConnectOptions {
  /**
   * Deadline in ms for the whole connect: waiting for the socket to appear and accept,
   * the greeting, and negotiation. Default 10 000.
   */
  connectTimeout?: number;
  signal?: AbortSignal;
  /** Enable out-of-band execution; fails with `QmpNegotiationError` if the server does not offer it. */
  oob?: boolean;
  /** Default timeout of every command in ms; none when omitted. */
  commandTimeout?: number;
  /** Events kept for late waiters and `drain()`. Default 1000. */
  eventHistorySize?: number;
  /** Largest message accepted from the server, in bytes. Default 10 MiB. */
  maxMessageSize?: number;
  /**
   * Deepest nesting of objects and arrays accepted in a message from the server. Default
   * 1024, the limit QEMU's own JSON parser applies to what it reads.
   */
  maxMessageDepth?: number;
  /**
   * Called with every message sent and received, with dropped replies, and with events
   * evicted from the full history buffer. Off by default.
   */
  transcript?: (entry: QmpTranscriptEntry) => void;
  /**
   * Called before sending a command that the connected QEMU's schema marks `deprecated` (e.g.
   * `drive-backup`), once per command sent: the generated schema of the greeting's series (for
   * a series newer than any generated, the newest older one), or the server's own after
   * `loadSchema()`. Off by default; `process.emitWarning` is a common choice.
   */
  onDeprecatedCommand?: (name: string, info: QmpCommandInfo) => void;
  /**
   * Check commands and their top-level arguments before sending, and fail fast with
   * `QmpUnsupportedCommandError` / `QmpUnsupportedArgumentError` instead of QEMU's generic
   * errors: `'greeting'` against the generated schema of the greeting's series (when
   * @qmpkit/schema has it), `'introspect'` against `query-qmp-schema`, read while connecting.
   * Default `'off'` (a later `loadSchema()` turns the check on).
   */
  schemaCheck?: QmpSchemaCheck;
}

export interface CloseOptions {
  /** How long to wait for the peer to close its side before destroying the socket. Default 2000 ms. */
  timeout?: number;
}

export type QmpConnectionState = 'connecting' | 'negotiating' | 'ready' | 'closing' | 'closed';

type State =
  | { kind: 'connecting' }
  | { kind: 'negotiating' }
  | { kind: 'ready' }
  | { kind: 'closing'; done: Promise<void> }
  | { kind: 'closed'; error: QmpConnectionError; lost: boolean };

interface PendingCommand {
  name: string;
  args: unknown;
  oob: boolean;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  timer: NodeJS.Timeout | undefined;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

const RETRYABLE_CONNECT_ERRORS = new Set(['ENOENT', 'ECONNREFUSED']);

function isDuplex(target: ConnectTarget): target is Duplex {
  return typeof target === 'object' && target !== null && typeof (target as Duplex).pipe === 'function'
    && typeof (target as Duplex).write === 'function';
}

function describeTarget(target: ConnectTarget): string {
  if (typeof target === 'string') return target;
  if (isDuplex(target)) return 'stream';
  if ('path' in target) return target.path;
  return `${target.host}:${target.port}`;
}

function commandMessage(name: string, args: unknown, id: number, oob: boolean): QmpCommandMessage {
  const message: QmpCommandMessage = oob ? { 'exec-oob': name } : { execute: name };
  if (args !== undefined) message.arguments = args;
  message.id = id;
  return message;
}

function openSocketOnce(target: string | { path: string } | { host: string; port: number }): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = typeof target === 'string'
      ? createConnection({ path: target })
      : 'path' in target ? createConnection({ path: target.path }) : createConnection({ host: target.host, port: target.port });
    const onError = (error: Error): void => {
      socket.off('connect', onConnect);
      socket.destroy();
      reject(error);
    };
    const onConnect = (): void => {
      socket.off('error', onError);
      resolve(socket);
    };
    socket.once('error', onError);
    socket.once('connect', onConnect);
  });
}

// Retries start at 1 ms and stay short: a QEMU being launched creates its socket within
// milliseconds, and each retry costs only a failed connect(), so a long back-off would
// mostly add latency to every launch.
/** How often negotiation restarts (repeated greeting, unparsed input) before the connection is given up. */
const MAX_NEGOTIATION_RESTARTS = 3;
/**
 * Any byte that can never appear in JSON text makes QEMU's JSON lexer report one error and
 * start afresh, whatever state it was in (mid-string included); the QMP specification names
 * 0xFF for this.
 */
const RESYNC_BYTE = Buffer.of(0xff);
/** How long a qmp_capabilities sent after a resync may go unanswered before another resync. */
const RESYNC_ATTEMPT_TIMEOUT = 1000;

const FIRST_RETRY_DELAY = 1;
const MAX_RETRY_DELAY = 10;

/**
 * Watches the directory of a unix socket path so that a retry waiting for the socket wakes
 * as soon as QEMU creates it, instead of at the next poll. The poll stays as the fallback:
 * inotify may be unavailable or out of watches, and a socket that exists but is not yet
 * listening (ECONNREFUSED) changes nothing in the directory.
 */
class SocketFileWatch {
  readonly #watcher: FSWatcher;
  #changed = false;
  #wake: (() => void) | undefined;

  private constructor(directory: string, name: string) {
    this.#watcher = watch(directory, { persistent: false }, (_type, filename) => {
      // Without a filename (allowed by the platform) any change may be the socket.
      if (filename !== null && filename !== name) return;
      this.#changed = true;
      this.#wake?.();
    });
    // The directory may be removed while watched; polling still covers that case.
    this.#watcher.on('error', () => this.close());
  }

  /** A watch on `path`'s directory, or undefined when it cannot be watched (e.g. it does not exist yet). */
  static open(path: string): SocketFileWatch | undefined {
    try {
      return new SocketFileWatch(dirname(path), basename(path));
    } catch {
      return undefined;
    }
  }

  /** Forgets earlier changes; called before each attempt so only newer ones wake the retry. */
  reset(): void {
    this.#changed = false;
  }

  /** Whether the socket's name changed since the last `reset()`. */
  get changed(): boolean {
    return this.#changed;
  }

  set onChange(wake: (() => void) | undefined) {
    this.#wake = wake;
  }

  close(): void {
    this.#wake = undefined;
    this.#watcher.close();
  }
}

/**
 * Waits `ms` before the next connect attempt, or less when `watch` sees the socket appear.
 * Resolves true when woken by the watch.
 */
function pauseBeforeRetry(
  ms: number,
  signal: AbortSignal | undefined,
  operation: string,
  socketWatch: SocketFileWatch | undefined,
): Promise<boolean> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new QmpAbortError(operation, signal.reason));
      return;
    }
    if (socketWatch?.changed) {
      resolve(true);
      return;
    }
    const finish = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (socketWatch) socketWatch.onChange = undefined;
    };
    const onAbort = (): void => {
      finish();
      reject(new QmpAbortError(operation, signal?.reason));
    };
    const timer = setTimeout(() => {
      finish();
      resolve(false);
    }, ms);
    if (socketWatch) {
      socketWatch.onChange = () => {
        finish();
        resolve(true);
      };
    }
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Connects, retrying while the socket does not exist yet or refuses: QEMU creates its
 * listening socket a little after the process starts, so the first attempts often fail.
 */
async function openSocket(
  target: string | { path: string } | { host: string; port: number },
  deadline: number,
  connectTimeout: number,
  signal: AbortSignal | undefined,
): Promise<Socket> {
  const operation = `connect to ${describeTarget(target)}`;
  const path = typeof target === 'string' ? target : 'path' in target ? target.path : undefined;
  let socketWatch: SocketFileWatch | undefined;
  let wait = FIRST_RETRY_DELAY;
  try {
    for (;;) {
      if (signal?.aborted) throw new QmpAbortError(operation, signal.reason);
      socketWatch?.reset();
      let lastError: NodeJS.ErrnoException;
      try {
        const socket = await raceDeadline(openSocketOnce(target), deadline, connectTimeout, signal, operation, (s) => s.destroy());
        return socket;
      } catch (error) {
        if (QmpTimeoutError.isInstance(error) || QmpAbortError.isInstance(error)) throw error;
        lastError = error as NodeJS.ErrnoException;
        if (!RETRYABLE_CONNECT_ERRORS.has(lastError.code ?? '')) {
          throw new QmpConnectionError(`cannot ${operation}: ${lastError.message}`, { cause: lastError });
        }
      }
      // Opened late, once the socket is known to be missing, so an already-running QEMU costs
      // no watch; retried on each miss because the directory itself may appear later.
      if (path !== undefined && socketWatch === undefined && lastError.code === 'ENOENT') socketWatch = SocketFileWatch.open(path);
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new QmpTimeoutError(operation, connectTimeout, { cause: lastError });
      const woken = await pauseBeforeRetry(Math.min(wait, remaining), signal, operation, socketWatch);
      // After the socket appears QEMU may still be between bind() and listen(): retry quickly.
      wait = woken ? FIRST_RETRY_DELAY : Math.min(wait * 2, MAX_RETRY_DELAY);
    }
  } finally {
    socketWatch?.close();
  }
}

/** Settles with `promise`, or rejects at the deadline or on abort (disposing a late result). */
function raceDeadline<T>(
  promise: Promise<T>,
  deadline: number,
  timeout: number,
  signal: AbortSignal | undefined,
  operation: string,
  dispose?: (value: T) => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const finish = (): boolean => {
      if (settled) return false;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      return true;
    };
    const onAbort = (): void => {
      if (finish()) reject(new QmpAbortError(operation, signal?.reason));
    };
    const timer = setTimeout(() => {
      if (finish()) reject(new QmpTimeoutError(operation, timeout));
    }, Math.max(0, deadline - Date.now()));
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        if (finish()) resolve(value);
        else dispose?.(value);
      },
      (error: unknown) => {
        if (finish()) reject(error);
      },
    );
  });
}

/**
 * The `QmpProtocolError` that explains a failure to handle what the peer sent: the error
 * itself when it is one, else (a fault of the client's own, triggered by that input) a
 * protocol error wrapping it, with an excerpt of the message.
 */
function asProtocolError(error: unknown, message: unknown): QmpProtocolError {
  if (QmpProtocolError.isInstance(error)) return error;
  return new QmpProtocolError(`failed to handle a message: ${describeThrown(error)}`, {
    cause: error,
    ...(message === undefined ? {} : { excerpt: excerptOf(message) }),
  });
}

/**
 * A QMP connection. Create it with `QmpClient.connect()`; the type parameters are the
 * command and event maps (`QmpCommands` and `QmpEvents` from `@qmpkit/schema`).
 *
 * Commands get increasing integer ids and are matched to replies by id, so any number
 * may be in flight. A reply whose id matches nothing (for example one arriving after its
 * command timed out) is dropped and reported to the transcript. A disconnect, malformed
 * data, or (once negotiated) an error reply without an id (QEMU's way of saying it could
 * not parse what it got) ends the connection: every pending command, `events.wait()` and
 * `events.stream()` then fails with a `QmpConnectionError` whose `cause` says why. During
 * negotiation, a repeated greeting or an id-less error restarts it (a QEMU 7.2 start-up race).
 */
export class QmpClient<
  C extends CommandSpecs<C> = QmpCommands,
  E extends EventSpecs<E> = QmpEvents,
  O extends keyof C & string = OobCommandName<C>,
> {
  /** Events of this connection: listeners, waits, streams and the history buffer. */
  readonly events: QmpEventHub<E>;
  /** Where this client is connected: a socket path, `host:port`, or `stream`. */
  readonly target: string;

  readonly #stream: Duplex;
  readonly #parser: QmpMessageParser;
  readonly #pending = new Map<number, PendingCommand>();
  readonly #transcript: ((entry: QmpTranscriptEntry) => void) | undefined;
  readonly #commandTimeout: number | undefined;
  readonly #onDeprecatedCommand: ((name: string, info: QmpCommandInfo) => void) | undefined;
  #schemaCheck: QmpSchemaCheck;
  #schema: QmpSchemaView | undefined;
  #state: State = { kind: 'connecting' };
  #nextId = 0;
  #greeting: QmpGreeting | undefined;
  #greetingWaiter: { resolve: (g: QmpGreeting) => void; reject: (e: unknown) => void } | undefined;
  #onNegotiationNoise: ((noise: 'greeting' | 'unparsed') => void) | undefined;
  #oob = false;
  #outbox = '';
  #batching = false;
  readonly #closed: Promise<QmpConnectionError | undefined>;
  #resolveClosed!: (error: QmpConnectionError | undefined) => void;

  private constructor(stream: Duplex, target: string, options: ConnectOptions) {
    this.#stream = stream;
    this.target = target;
    this.#parser = new QmpMessageParser({
      ...(options.maxMessageSize === undefined ? {} : { maxMessageSize: options.maxMessageSize }),
      ...(options.maxMessageDepth === undefined ? {} : { maxDepth: options.maxMessageDepth }),
    });
    this.#transcript = options.transcript;
    this.#commandTimeout = options.commandTimeout;
    this.#onDeprecatedCommand = options.onDeprecatedCommand;
    this.#schemaCheck = options.schemaCheck ?? 'off';
    const hubOptions: EventHubOptions<E> = {};
    if (options.eventHistorySize !== undefined) hubOptions.historySize = options.eventHistorySize;
    if (this.#transcript) {
      hubOptions.onEvict = (event, evicted) => this.#record({ direction: 'evicted', time: Date.now(), message: event, evicted });
    }
    this.events = new QmpEventHub<E>(hubOptions);
    this.#closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    stream.on('data', this.#onData);
    stream.on('error', this.#onError);
    stream.on('end', this.#onEnd);
    stream.on('close', this.#onClose);
    if ('setNoDelay' in stream && typeof (stream as Socket).setNoDelay === 'function') (stream as Socket).setNoDelay(true);
  }

  /**
   * Connects to a QMP server, reads its greeting and negotiates capabilities. `target` is a
   * unix socket path, `{ path }`, `{ host, port }`, or a connected Duplex stream (for
   * `-qmp stdio`: `Duplex.from({ readable: child.stdout, writable: child.stdin })`).
   */
  static async connect<
    C extends CommandSpecs<C> = QmpCommands,
    E extends EventSpecs<E> = QmpEvents,
    O extends keyof C & string = OobCommandName<C>,
  >(
    target: ConnectTarget,
    options: ConnectOptions = {},
  ): Promise<QmpClient<C, E, O>> {
    const connectTimeout = options.connectTimeout ?? 10_000;
    const deadline = Date.now() + connectTimeout;
    const signal = options.signal;
    const name = describeTarget(target);
    if (signal?.aborted) throw new QmpAbortError(`connect to ${name}`, signal.reason);
    const stream = isDuplex(target) ? target : await openSocket(target, deadline, connectTimeout, signal);
    const client = new QmpClient<C, E, O>(stream, name, options);
    try {
      await client.#negotiate(options, deadline, connectTimeout);
      if (client.#schemaCheck === 'introspect') await client.loadSchema({ timeout: Math.max(1, deadline - Date.now()), ...(signal ? { signal } : {}) });
    } catch (error) {
      client.#fail(new QmpConnectionError(`connecting to ${name} failed`, { cause: error }), false);
      // A bad greeting is the peer's fault, not the connection's: report it as such.
      if (QmpConnectionError.isInstance(error) && QmpProtocolError.isInstance(error.cause)) throw error.cause;
      throw error;
    }
    return client;
  }

  /** `'connecting' | 'negotiating' | 'ready' | 'closing' | 'closed'`. */
  get state(): QmpConnectionState {
    return this.#state.kind;
  }

  /** The server's greeting, as received. */
  get greeting(): QmpGreeting {
    if (!this.#greeting) throw new QmpConnectionError('no greeting received yet');
    return this.#greeting;
  }

  /** Server version from the greeting (`version.qemu.major` etc.). */
  get version(): QmpVersion {
    return this.greeting.QMP.version;
  }

  /**
   * What the connected QEMU understands (commands, top-level arguments, deprecations): from the
   * generated schema of the greeting's series, or from `query-qmp-schema` after `loadSchema()`.
   */
  get schema(): QmpSchemaView {
    this.#schema ??= QmpSchemaView.fromGreeting(this.version);
    return this.#schema;
  }

  /**
   * Reads the server's `query-qmp-schema` and from then on checks every command against it
   * (as `schemaCheck: 'introspect'` does while connecting). Resolves with the new view.
   */
  async loadSchema(options?: CommandOptions): Promise<QmpSchemaView> {
    const entries = (await this.#send('query-qmp-schema', undefined, options, false)) as QmpSchemaInfoEntry[];
    this.#schema = QmpSchemaView.fromIntrospection(this.version, entries);
    this.#schemaCheck = 'introspect';
    return this.#schema;
  }

  /** Capabilities the server offered in its greeting. */
  get capabilities(): readonly string[] {
    return this.greeting.QMP.capabilities;
  }

  /** Whether out-of-band execution was negotiated. */
  get oob(): boolean {
    return this.#oob;
  }

  /** Commands sent and not yet answered. */
  get pendingCount(): number {
    return this.#pending.size;
  }

  /**
   * Resolves when the connection has ended: with `undefined` after `close()`, or with the
   * `QmpConnectionError` that ended it. Never rejects.
   */
  get closed(): Promise<QmpConnectionError | undefined> {
    return this.#closed;
  }

  /**
   * Runs a command and resolves with its `return` value. Rejects with `QmpCommandError`
   * on an error reply, `QmpTimeoutError`, `QmpAbortError`, or `QmpConnectionError`.
   */
  execute<K extends keyof C & string>(name: K, ...params: ExecuteParameters<CommandArgs<C, K>>): Promise<CommandReturn<C, K>>;
  // Plain parameters in the implementation: no rest array allocated per command.
  execute(name: string, args?: unknown, options?: CommandOptions): Promise<unknown> {
    return this.#send(name, args, options, false);
  }

  /**
   * Runs a command out of band (`exec-oob`), which QEMU handles even while an in-band
   * command is still running. Only commands QEMU marks `allow-oob` qualify, and only those
   * compile (the third type parameter, `OobCommandName<C>` by default). Rejects with
   * `QmpNegotiationError` when the connection was not opened with `oob: true`.
   */
  executeOob<K extends O>(name: K, ...params: ExecuteParameters<CommandArgs<C, K>>): Promise<CommandReturn<C, K>>;
  executeOob(name: string, args?: unknown, options?: CommandOptions): Promise<unknown> {
    if (!this.#oob) {
      return Promise.reject(new QmpNegotiationError(
        `cannot run ${name} out of band: the connection was not negotiated with oob (connect with { oob: true })`,
        this.#greeting ? { offered: this.#greeting.QMP.capabilities } : {},
      ));
    }
    return this.#send(name, args, options, true);
  }

  /** Runs an HMP command line through `human-monitor-command` and returns its text output. */
  async hmp(commandLine: string, options?: CommandOptions): Promise<string> {
    const output = await this.#send('human-monitor-command', { 'command-line': commandLine }, options, false);
    return typeof output === 'string' ? output : '';
  }

  /**
   * Closes the connection: pending commands and waits reject with `QmpConnectionError`,
   * streams end. Resolves once the socket has closed.
   */
  close(options: CloseOptions = {}): Promise<void> {
    const state = this.#state;
    if (state.kind === 'closed') return Promise.resolve();
    if (state.kind === 'closing') return state.done;
    const error = new QmpConnectionError(`connection to ${this.target} closed by the client`);
    this.#rejectAll(error);
    this.events[kEnd](error, false);
    const stream = this.#stream;
    const done = new Promise<void>((resolve) => {
      const timer = setTimeout(() => stream.destroy(), options.timeout ?? 2000);
      void this.#closed.then(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    this.#state = { kind: 'closing', done };
    if (stream.destroyed) {
      this.#fail(error, false);
    } else {
      this.#flush();
      stream.end();
    }
    return done;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #negotiate(options: ConnectOptions, deadline: number, connectTimeout: number): Promise<void> {
    this.#state = { kind: 'negotiating' };
    const signal = options.signal;
    const greetingPromise = new Promise<QmpGreeting>((resolve, reject) => {
      this.#greetingWaiter = { resolve, reject };
    });
    const greeting = await raceDeadline(greetingPromise, deadline, connectTimeout, signal, `waiting for the QMP greeting from ${this.target}`);
    const offered = greeting.QMP.capabilities;
    const enable: string[] = [];
    if (options.oob) {
      if (!offered.includes('oob')) {
        throw new QmpNegotiationError(
          `out-of-band execution was requested but ${this.target} does not offer the oob capability (offered: ${offered.join(', ') || 'none'})`,
          { offered },
        );
      }
      enable.push('oob');
    }
    // QEMU 7.2 can open a monitor connection twice when a client connects while the monitor is
    // still being set up (seen with qemu-storage-daemon connected to within a millisecond of its
    // socket appearing). Two things follow, alone or together:
    // - a second greeting: the monitor is back in negotiation mode, and a qmp_capabilities
    //   already sent may be dropped unanswered;
    // - an error reply without an id ("JSON parse error, ..."): for a moment the input was read
    //   from two places, so what reached the JSON parser was not what was sent.
    // Either restarts negotiation. After a parse error the new attempt starts with RESYNC_BYTE,
    // so leftover input cannot swallow the new command; the byte earns one more id-less error
    // (absorbed), and replies to the abandoned command are dropped as unknown ids. On a repeat,
    // "already negotiated" (CommandNotFound) means an earlier command took effect after all,
    // which is success too. Outside negotiation an id-less error still ends the connection.
    let resync = false;
    for (let attempt = 0; ; attempt++) {
      const remaining = Math.max(1, deadline - Date.now());
      const abandon = new AbortController();
      const commandSignal = signal ? AbortSignal.any([signal, abandon.signal]) : abandon.signal;
      const attemptResync = resync;
      const disturbed = new Promise<'greeting' | 'unparsed'>((resolve) => {
        this.#onNegotiationNoise = (noise) => {
          // After a resync, id-less errors are the expected answer to the resync byte and to
          // leftovers it cleared; only a reply (or a timeout) ends that attempt.
          if (noise === 'unparsed' && attemptResync) return;
          resolve(noise);
        };
      });
      if (attemptResync) this.#writeRaw(RESYNC_BYTE);
      const timeout = attemptResync ? Math.min(remaining, RESYNC_ATTEMPT_TIMEOUT) : remaining;
      const sent = this.#send('qmp_capabilities', enable.length > 0 ? { enable } : undefined, { timeout, signal: commandSignal }, false);
      let restartReason: string;
      try {
        const outcome = await Promise.race([sent.then(() => 'negotiated' as const), disturbed]);
        if (outcome === 'negotiated') break;
        abandon.abort();
        sent.catch(() => undefined);
        if (outcome === 'unparsed') resync = true;
        restartReason = outcome === 'greeting' ? 'greeted again' : 'could not parse its input';
      } catch (error) {
        if (QmpCommandError.isInstance(error)) {
          if (attempt > 0 && error.errorClass === 'CommandNotFound') break;
          throw new QmpNegotiationError(`qmp_capabilities was refused: ${error.desc}`, { cause: error, offered });
        }
        // A resync attempt that went unanswered is tried again while the deadline allows.
        if (!(attemptResync && QmpTimeoutError.isInstance(error) && Date.now() < deadline)) throw error;
        restartReason = 'did not answer qmp_capabilities after a resync';
      } finally {
        this.#onNegotiationNoise = undefined;
      }
      if (attempt >= MAX_NEGOTIATION_RESTARTS) {
        throw new QmpNegotiationError(
          `${this.target} disturbed negotiation ${attempt + 1} times (last: ${restartReason}); giving up`,
          { offered },
        );
      }
    }
    this.#oob = enable.includes('oob');
    if (this.#state.kind === 'negotiating') this.#state = { kind: 'ready' };
  }

  #send(name: string, args: unknown, options: CommandOptions | undefined, oob: boolean): Promise<unknown> {
    const state = this.#state;
    if (state.kind !== 'ready' && !(state.kind === 'negotiating' && name === 'qmp_capabilities')) {
      const error = state.kind === 'closed'
        ? state.error
        : new QmpConnectionError(`cannot run ${name}: the connection to ${this.target} is ${state.kind}`);
      return Promise.reject(error);
    }
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(new QmpAbortError(`execute ${name}`, signal.reason));
    if (state.kind === 'ready') {
      if (this.#schemaCheck !== 'off') {
        const refusal = this.schema.check(name, args);
        if (refusal !== undefined) return Promise.reject(refusal);
      }
      if (this.#onDeprecatedCommand) {
        const info = this.schema.deprecation(name);
        if (info !== undefined) this.#onDeprecatedCommand(name, info);
      }
    }
    const id = ++this.#nextId;
    let line: string;
    try {
      line = serializeCommand(name, args, id, oob);
    } catch (error) {
      return Promise.reject(error);
    }
    const timeout = options?.timeout ?? this.#commandTimeout;
    return new Promise<unknown>((resolve, reject) => {
      const entry: PendingCommand = { name, args, oob, resolve, reject, timer: undefined, signal, onAbort: undefined };
      this.#pending.set(id, entry);
      if (timeout !== undefined) {
        entry.timer = setTimeout(() => {
          if (this.#settle(id, entry)) reject(new QmpTimeoutError(`execute ${name}`, timeout));
        }, timeout);
      }
      if (signal) {
        entry.onAbort = () => {
          if (this.#settle(id, entry)) reject(new QmpAbortError(`execute ${name}`, signal.reason));
        };
        signal.addEventListener('abort', entry.onAbort, { once: true });
      }
      this.#write(line);
      if (this.#transcript) this.#record({ direction: 'out', time: Date.now(), message: commandMessage(name, args, id, oob) });
    });
  }

  /**
   * The first command of a tick is written at once, so a caller awaiting each reply adds
   * no latency; commands issued later in the same tick are joined and go out in one write
   * at the end of it, so a burst of pipelined commands costs one syscall, not one each.
   */
  #write(line: string): void {
    if (this.#batching) {
      this.#outbox += line;
      return;
    }
    const stream = this.#stream;
    if (!stream.destroyed && !stream.writableEnded) stream.write(line);
    this.#batching = true;
    process.nextTick(this.#flush);
  }

  /** Writes bytes that are not a command, after anything batched, so order is kept. */
  #writeRaw(bytes: Buffer): void {
    this.#flush();
    const stream = this.#stream;
    if (!stream.destroyed && !stream.writableEnded) stream.write(bytes);
    if (this.#transcript) this.#record({ direction: 'out-raw', time: Date.now(), message: Uint8Array.from(bytes) });
  }

  readonly #flush = (): void => {
    this.#batching = false;
    const text = this.#outbox;
    if (text === '') return;
    this.#outbox = '';
    const stream = this.#stream;
    if (!stream.destroyed && !stream.writableEnded) stream.write(text);
  };

  /** Removes a pending command and its timer and abort listener; false if it was already settled. */
  #settle(id: number, entry: PendingCommand): boolean {
    if (this.#pending.get(id) !== entry) return false;
    this.#pending.delete(id);
    if (entry.timer !== undefined) clearTimeout(entry.timer);
    if (entry.onAbort) entry.signal?.removeEventListener('abort', entry.onAbort);
    return true;
  }

  #record(entry: QmpTranscriptEntry): void {
    try {
      this.#transcript?.(entry);
    } catch (error) {
      // A faulty transcript callback must not break the connection.
      process.nextTick(() => {
        throw error;
      });
    }
  }

  // Nothing a peer sends may throw out of here: this runs in the socket's 'data' handler,
  // where an exception is an uncaught exception in the user's process. Any failure while
  // taking a chunk apart or handling a message ends the connection instead.
  readonly #onData = (chunk: Buffer | string): void => {
    let messages: unknown[];
    try {
      messages = this.#parser.push(chunk);
    } catch (error) {
      this.#fail(new QmpConnectionError(`malformed data from ${this.target}: ${describeThrown(error)}`, {
        cause: asProtocolError(error, undefined),
      }), true);
      return;
    }
    for (let i = 0; i < messages.length; i++) {
      if (this.#state.kind === 'closed') return;
      const message = messages[i];
      try {
        this.#handle(message);
      } catch (error) {
        this.#fail(new QmpConnectionError(`unexpected message from ${this.target}: ${describeThrown(error)}`, {
          cause: asProtocolError(error, message),
        }), true);
        return;
      }
    }
    // Messages completed before malformed input in the same chunk were handled first.
    const failure = this.#parser.failure;
    if (failure !== undefined) {
      this.#fail(new QmpConnectionError(`malformed data from ${this.target}: ${failure.message}`, { cause: failure }), true);
    }
  };

  #handle(value: unknown): void {
    // Most traffic is successful replies to pending commands; they skip building a
    // classification, with the same checks inline.
    if (
      this.#greetingWaiter === undefined && typeof value === 'object' && value !== null && 'return' in value
      && !('error' in value) && !('event' in value) && !('QMP' in value)
    ) {
      const id = (value as QmpSuccessReply).id;
      if (id === undefined || isEchoableId(id)) {
        this.#handleReply(value as QmpSuccessReply);
        return;
      }
    }
    let kind: ReturnType<typeof classifyServerMessage>;
    try {
      kind = classifyServerMessage(value);
    } catch (error) {
      if (this.#transcript) this.#record({ direction: 'in', time: Date.now(), message: value });
      throw error;
    }
    // QEMU writes the greeting from a bottom half after the socket is accepted, while events
    // go to every monitor not in negotiation mode, so an event can come first on a fresh
    // connection. It is a real event: it goes to the hub (in order) and the greeting is
    // still awaited. Only a reply before the greeting breaks the protocol.
    if (this.#greetingWaiter && kind.kind === 'reply') {
      if (this.#transcript) this.#record({ direction: 'in', time: Date.now(), message: value });
      this.#fail(new QmpConnectionError(`${this.target} did not start with a QMP greeting`, {
        cause: new QmpProtocolError('expected a QMP greeting, got a reply', { excerpt: excerptOf(value) }),
      }), true);
      return;
    }
    switch (kind.kind) {
      case 'reply':
        this.#handleReply(kind.message);
        return;
      case 'event':
        if (this.#transcript) this.#record({ direction: 'in', time: Date.now(), message: value });
        this.events[kDispatch](kind.message);
        return;
      case 'greeting': {
        if (this.#transcript) this.#record({ direction: 'in', time: Date.now(), message: value });
        const waiter = this.#greetingWaiter;
        if (this.#greeting && this.#state.kind === 'negotiating') {
          // The monitor was opened again (see #negotiate): its latest greeting counts.
          this.#greeting = kind.message;
          this.#onNegotiationNoise?.('greeting');
          return;
        }
        if (this.#greeting || !waiter) {
          this.#fail(new QmpConnectionError(`unexpected second greeting from ${this.target}`, {
            cause: new QmpProtocolError('greeting received after the session started', { excerpt: excerptOf(value) }),
          }), true);
          return;
        }
        this.#greeting = kind.message;
        this.#greetingWaiter = undefined;
        waiter.resolve(kind.message);
        return;
      }
    }
  }

  /** A reply whose shape was checked: exactly one of `return` and `error`, an id of ours if any. */
  #handleReply(reply: QmpReply): void {
    const id = reply.id;
    const entry = id === undefined ? undefined : this.#pending.get(id);
    if (entry === undefined) {
      if (id === undefined && isErrorReply(reply)) {
        const onNoise = this.#onNegotiationNoise;
        if (onNoise && this.#state.kind === 'negotiating') {
          // Only qmp_capabilities has been sent; #negotiate repairs the session (see there).
          if (this.#transcript) this.#record({ direction: 'in', time: Date.now(), message: reply, dropped: 'negotiation-noise' });
          onNoise('unparsed');
          return;
        }
        if (this.#transcript) this.#record({ direction: 'in', time: Date.now(), message: reply });
        // QEMU answers without an id only when it could not even parse a request, so the
        // two sides no longer agree on what was sent; nothing pending can be trusted.
        const cause = new QmpProtocolError(`error reply without an id: ${reply.error.class}: ${reply.error.desc}`, {
          excerpt: excerptOf(reply),
        });
        this.#fail(new QmpConnectionError(`${this.target} sent an error reply without an id (${reply.error.desc})`, { cause }), true);
        return;
      }
      if (this.#transcript) this.#record({ direction: 'in', time: Date.now(), message: reply, dropped: 'unknown-id' });
      return;
    }
    if (this.#transcript) this.#record({ direction: 'in', time: Date.now(), message: reply });
    this.#settle(id as number, entry);
    if ('return' in reply) {
      entry.resolve(reply.return);
    } else {
      entry.reject(new QmpCommandError(commandMessage(entry.name, entry.args, id as number, entry.oob), reply));
    }
  }

  readonly #onError = (error: Error): void => {
    this.#fail(new QmpConnectionError(`connection to ${this.target} failed: ${error.message}`, { cause: error }), true);
  };

  readonly #onEnd = (): void => {
    let cause: unknown;
    try {
      this.#parser.end();
    } catch (error) {
      cause = error;
    }
    const closing = this.#state.kind === 'closing';
    const message = cause === undefined
      ? `${this.target} closed the connection`
      : `${this.target} closed the connection in the middle of a message`;
    this.#fail(new QmpConnectionError(message, cause === undefined ? undefined : { cause }), !closing);
  };

  readonly #onClose = (): void => {
    const closing = this.#state.kind === 'closing';
    this.#fail(new QmpConnectionError(`connection to ${this.target} closed`), !closing);
  };

  #rejectAll(error: QmpConnectionError): void {
    const pending = [...this.#pending];
    for (const [id, entry] of pending) {
      if (this.#settle(id, entry)) entry.reject(error);
    }
    const waiter = this.#greetingWaiter;
    this.#greetingWaiter = undefined;
    waiter?.reject(error);
  }

  /** Ends the connection once: rejects everything pending, ends waits and streams, destroys the stream. */
  #fail(error: QmpConnectionError, lost: boolean): void {
    const state = this.#state;
    if (state.kind === 'closed') return;
    const wasClosing = state.kind === 'closing';
    this.#state = { kind: 'closed', error, lost };
    this.#rejectAll(error);
    this.events[kEnd](error, lost);
    this.#stream.off('data', this.#onData);
    // Keep an error listener: a destroyed socket may still report, and an unhandled
    // 'error' would crash the process.
    if (!this.#stream.destroyed) this.#stream.destroy();
    this.#resolveClosed(wasClosing ? undefined : error);
  }
}
