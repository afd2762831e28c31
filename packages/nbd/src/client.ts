import { setMaxListeners } from 'node:events';
import type { Socket } from 'node:net';
import {
  Command,
  DEFAULT_MAX_BLOCK_SIZE,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  Info,
  NbdErrno,
  Option,
  OptionReply,
  REPLY_FLAG_DONE,
  ReplyType,
  TransmissionFlag,
  optionName,
  optionReplyErrorName,
} from './constants.js';
import { Coverage } from './coverage.js';
import {
  NbdAbortError,
  NbdArgumentError,
  NbdCommandError,
  NbdConnectionError,
  NbdHandshakeError,
  NbdProtocolError,
  type NbdCommandName,
} from './errors.js';
import { HandshakeParser, type HandshakeMessage } from './handshake-parser.js';
import { ReplyParser, type ReplyChunk, type ReplyHandler } from './reply-parser.js';
import {
  REQUEST_SIZE,
  serializeAbort,
  serializeClientFlags,
  serializeDisconnect,
  serializeGo,
  serializeMetaContext,
  serializeStructuredReply,
  writeRequest,
} from './serializer.js';
import { describeTarget, openSocket, withDeadline, type NbdTarget } from './socket.js';

export interface NbdConnectOptions {
  /** The export to use. Default `''` (the server's default export). */
  exportName?: string | undefined;
  /** Deadline in ms for the socket to appear and accept, and for the whole handshake. Default 10 000. */
  connectTimeout?: number | undefined;
  signal?: AbortSignal | undefined;
  /**
   * Ask for structured replies (default true). They carry holes without sending zeroes, errors
   * with messages, and are required for block status. With false the server answers reads
   * with simple replies.
   */
  structuredReplies?: boolean | undefined;
  /**
   * Metadata contexts to select, e.g. `['base:allocation', 'qemu:dirty-bitmap:bitmap0']`. Each
   * must be granted by the server, or connect fails with `NbdHandshakeError`.
   */
  metaContexts?: readonly string[] | undefined;
  /** Default timeout of each request, in ms; none when omitted. */
  requestTimeout?: number | undefined;
  /** Requests on the wire at once; more wait in a queue. Default 16. */
  maxInFlight?: number | undefined;
  /**
   * Largest read request sent; longer reads are split. Default: the server's maximum block
   * size, or 32 MiB when it advertises none (the specification's advice).
   */
  maxRequestSize?: number | undefined;
}

/** Options of each awaited operation. */
export interface NbdRequestOptions {
  /** Milliseconds; rejects with `NbdTimeoutError`. Defaults to the connection's `requestTimeout`. */
  timeout?: number | undefined;
  /** Rejects with `NbdAbortError` when aborted. */
  signal?: AbortSignal | undefined;
}

export interface NbdBlockSize {
  /** Requests are aligned to this (1 when the server advertises nothing). */
  minimum: number;
  /** The size below which I/O is inefficient. */
  preferred: number;
  /** The largest request the server accepts (0xffffffff for no limit). */
  maximum: number;
  /** Whether the server sent these values (NBD_INFO_BLOCK_SIZE); otherwise they are the defaults. */
  advertised: boolean;
}

/** What `NBD_OPT_GO` said about the export. */
export interface NbdExportInfo {
  /** The name used to select it (or the server's canonical name, when it sent one). */
  name: string;
  description: string | undefined;
  /** Bytes. */
  size: number;
  /** The raw 16-bit transmission flags (see `TransmissionFlag`). */
  transmissionFlags: number;
  readOnly: boolean;
  canFlush: boolean;
  canTrim: boolean;
  canWriteZeroes: boolean;
  canMultiConn: boolean;
  canCache: boolean;
  rotational: boolean;
  blockSize: NbdBlockSize;
}

/** A run of bytes with one status (`flags`) in one metadata context. */
export interface NbdExtent {
  offset: number;
  length: number;
  /** For base:allocation `ExtentFlag.HOLE | ExtentFlag.ZERO`; for a dirty bitmap `ExtentFlag.DIRTY`; for qemu:allocation-depth the depth. */
  flags: number;
}

export interface NbdExtentsOptions extends NbdRequestOptions {
  /** The metadata context, e.g. `'base:allocation'`; may be left out when exactly one was selected. */
  context?: string | undefined;
  /** Default 0. */
  offset?: number | undefined;
  /** Default: to the end of the export. */
  length?: number | undefined;
}

/** One block read by `readRanges`: the data of [offset, offset + length). */
export interface NbdBlock {
  offset: number;
  length: number;
  data: Buffer;
}

export interface NbdReadRangesOptions extends NbdRequestOptions {
  /** Reads kept in flight ahead of the consumer. Default 8. */
  readAhead?: number | undefined;
  /** Largest block yielded (ranges are split into blocks of at most this). Default 1 MiB. */
  blockSize?: number | undefined;
  /**
   * Recycle the blocks' buffers: a block's `data` is then valid only until the loop asks for the
   * next block (copy it to keep it). Saves allocating (and the kernel faulting in) fresh memory
   * for every block, which is most of the client's CPU cost on long copies. Default false.
   */
  reuseBuffers?: boolean | undefined;
}

export type NbdConnectionState = 'connecting' | 'negotiating' | 'ready' | 'closing' | 'closed';

type State =
  | { kind: 'connecting' }
  | { kind: 'negotiating' }
  | { kind: 'ready' }
  | { kind: 'closing'; done: Promise<void> }
  | { kind: 'closed'; error: NbdConnectionError };

/** One call of the public API (a read may become several requests). */
interface Operation {
  readonly name: string;
  abandoned: boolean;
}

interface PendingRequest {
  readonly handle: number;
  readonly command: NbdCommandName;
  readonly type: number;
  readonly flags: number;
  readonly offset: number;
  readonly length: number;
  readonly op: Operation;
  /** Where read data goes (`targetStart` is the index for `offset`); dropped when the op is abandoned. */
  target: Buffer | undefined;
  readonly targetStart: number;
  coverage: Coverage | undefined;
  statuses: Map<number, Uint32Array> | undefined;
  error: NbdCommandError | undefined;
  readonly resolve: (request: PendingRequest) => void;
  readonly reject: (error: unknown) => void;
}

const DEFAULT_CONNECT_TIMEOUT = 10_000;
const DEFAULT_MAX_IN_FLIGHT = 16;
const DEFAULT_READ_AHEAD = 8;
const DEFAULT_BLOCK = 1024 * 1024;
/** Requests ask for at most this much at once: a multiple of every legal minimum block size. */
const MAX_STATUS_REQUEST = 0x8000_0000;
const NO_LIMIT = 0xffff_ffff;
/** Size of the buffer the socket reads into (between payloads that are read in place). */
const READ_BUFFER_SIZE = 256 * 1024;
/** Data payloads at least this long are read by the socket straight into the caller's buffer. */
const DIRECT_READ_THRESHOLD = 16 * 1024;

const noop = (): void => undefined;

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

function checkInteger(argument: string, value: unknown, min = 0): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new NbdArgumentError(argument, value, `must be an integer >= ${min}`);
  }
  return value;
}

/**
 * An NBD connection in the transmission phase. Create it with `NbdClient.connect()`.
 *
 * Requests are matched to replies by handle, so many can be in flight (`maxInFlight`); the
 * server may answer in any order. Every failure is a named error: a server's error reply
 * fails only that request (`NbdCommandError`); anything the protocol does not allow (a bad
 * magic number, a reply to no request, a chunk of impossible size, data outside the request)
 * ends the connection and fails every pending request with one `NbdConnectionError` whose
 * `cause` is the `NbdProtocolError`. Nothing the server sends can throw out of the client.
 */
export class NbdClient {
  /** Where the client is connected: a socket path or `host:port`. */
  readonly target: string;

  #socket: Socket | undefined;
  #state: State = { kind: 'connecting' };
  readonly #handshake = new HandshakeParser();
  readonly #replies: ReplyParser;
  #inTransmission = false;
  readonly #inbox: HandshakeMessage[] = [];
  #inboxWaiter: { resolve: (message: HandshakeMessage) => void; reject: (error: unknown) => void } | undefined;
  #export: NbdExportInfo | undefined;
  #structured = false;
  readonly #contextsByName = new Map<string, number>();
  readonly #contextsById = new Map<number, string>();
  readonly #requestTimeout: number | undefined;
  readonly #maxInFlight: number;
  readonly #maxRequestOption: number | undefined;
  #maxRequest = DEFAULT_MAX_BLOCK_SIZE;
  readonly #inFlight = new Map<number, PendingRequest>();
  readonly #queue: PendingRequest[] = [];
  #queueHead = 0;
  #nextHandle = 0;
  readonly #outbox: PendingRequest[] = [];
  #flushScheduled = false;
  readonly #readBuffer = Buffer.allocUnsafe(READ_BUFFER_SIZE);
  /** Set while the socket reads straight into a request's buffer. */
  #direct = false;
  /** Set by close(): replies still arriving for the requests it failed are not read. */
  #discarding = false;
  readonly #closed: Promise<NbdConnectionError | undefined>;
  #resolveClosed!: (error: NbdConnectionError | undefined) => void;
  #drained: (() => void) | undefined;

  private constructor(target: string, options: NbdConnectOptions) {
    this.target = target;
    this.#requestTimeout = options.requestTimeout;
    this.#maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
    this.#maxRequestOption = options.maxRequestSize;
    this.#replies = new ReplyParser(this.#replyHandler);
    this.#closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
  }

  /**
   * Connects, negotiates (fixed newstyle: structured replies, metadata contexts, NBD_OPT_GO
   * with block size constraints) and returns a client in the transmission phase.
   *
   * Rejects with `NbdHandshakeError` when the server refuses (unknown export, a context it
   * does not offer), `NbdProtocolError` when it breaks the protocol, `NbdConnectionError`
   * when the socket fails, `NbdTimeoutError` / `NbdAbortError`, or `NbdArgumentError`.
   */
  static async connect(target: NbdTarget, options: NbdConnectOptions = {}): Promise<NbdClient> {
    const exportName = options.exportName ?? '';
    if (typeof exportName !== 'string' || Buffer.byteLength(exportName) > 4096) {
      throw new NbdArgumentError('exportName', exportName, 'must be a string of at most 4096 bytes');
    }
    const maxInFlight = checkInteger('maxInFlight', options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT, 1);
    if (options.maxRequestSize !== undefined) checkInteger('maxRequestSize', options.maxRequestSize, 1);
    for (const context of options.metaContexts ?? []) {
      if (typeof context !== 'string' || !/^[^:\s]+:/.test(context) || Buffer.byteLength(context) > 4096) {
        throw new NbdArgumentError('metaContexts', context, 'a context name is a namespace, a colon and a leaf name (e.g. base:allocation)');
      }
    }
    if (options.structuredReplies === false && (options.metaContexts?.length ?? 0) > 0) {
      throw new NbdArgumentError('metaContexts', options.metaContexts, 'metadata contexts need structured replies');
    }
    const connectTimeout = options.connectTimeout ?? DEFAULT_CONNECT_TIMEOUT;
    const deadline = Date.now() + connectTimeout;
    const signal = options.signal;
    const name = describeTarget(target);
    if (signal?.aborted) throw new NbdAbortError(`connect to ${name}`, signal.reason);
    const client = new NbdClient(name, { ...options, maxInFlight });
    const socket = await openSocket(target, client.#onread, deadline, connectTimeout, signal);
    client.#attach(socket);
    try {
      await client.#negotiate(exportName, options, deadline, connectTimeout);
    } catch (error) {
      client.#abortHandshake();
      client.#fail(new NbdConnectionError(`connecting to ${name} failed`, { cause: error }));
      // The peer's fault is reported as such, not as a lost connection.
      if (NbdConnectionError.isInstance(error) && NbdProtocolError.isInstance(error.cause)) throw error.cause;
      throw error;
    }
    return client;
  }

  /** `'connecting' | 'negotiating' | 'ready' | 'closing' | 'closed'`. */
  get state(): NbdConnectionState {
    return this.#state.kind;
  }

  /** The export, as the handshake described it. */
  get export(): NbdExportInfo {
    if (!this.#export) throw new NbdConnectionError('the handshake has not finished');
    return this.#export;
  }

  /** Whether structured replies were negotiated. */
  get structuredReplies(): boolean {
    return this.#structured;
  }

  /** The metadata contexts the server selected, by name (values are the server's context ids). */
  get metaContexts(): ReadonlyMap<string, number> {
    return this.#contextsByName;
  }

  /** Requests sent and not yet answered (including abandoned ones whose replies are still due). */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  /** The largest read request this client sends. */
  get maxRequestSize(): number {
    return this.#maxRequest;
  }

  /**
   * Resolves when the connection has ended: with `undefined` after `disconnect()`/`close()`,
   * or with the `NbdConnectionError` that ended it. Never rejects.
   */
  get closed(): Promise<NbdConnectionError | undefined> {
    return this.#closed;
  }

  /**
   * Reads `length` bytes at `offset`. Long reads are split into requests of at most
   * `maxRequestSize`, sent together (up to `maxInFlight` on the wire); unaligned reads are
   * widened to the export's minimum block size and cut back. Holes reported by the server
   * (structured replies) come back as zeroes.
   *
   * Rejects with `NbdCommandError` (the server's error), `NbdArgumentError` (outside the
   * export), `NbdTimeoutError`, `NbdAbortError`, or `NbdConnectionError`.
   */
  read(offset: number, length: number, options: NbdRequestOptions = {}): Promise<Buffer> {
    let plan: { start: number; end: number };
    try {
      plan = this.#checkRange('read', offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (length === 0) return Promise.resolve(Buffer.alloc(0));
    const { start, end } = plan;
    const target = Buffer.allocUnsafe(end - start);
    return this.#run(`read of ${length} byte(s) at offset ${offset}`, options, async (op) => {
      await this.#readPieces(op, target, start, end);
      return start === offset && end === offset + length ? target : target.subarray(offset - start, offset - start + length);
    });
  }

  /**
   * Reads `buffer.length` bytes at `offset` into `buffer` (no allocation when the range is
   * aligned to the minimum block size, which it always is for QEMU's exports) and resolves with
   * it. Same splitting, errors and options as `read`. On failure the buffer's contents are
   * unspecified.
   */
  readInto(buffer: Buffer, offset: number, options: NbdRequestOptions = {}): Promise<Buffer> {
    const length = buffer.length;
    let plan: { start: number; end: number };
    try {
      plan = this.#checkRange('read', offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (length === 0) return Promise.resolve(buffer);
    const { start, end } = plan;
    if (start !== offset || end !== offset + length) {
      return this.read(offset, length, options).then((data) => {
        data.copy(buffer);
        return buffer;
      });
    }
    return this.#run(`read of ${length} byte(s) at offset ${offset}`, options, async (op) => {
      await this.#readPieces(op, buffer, start, end);
      return buffer;
    });
  }

  #readPieces(op: Operation, target: Buffer, start: number, end: number): Promise<unknown> {
    const step = this.#maxRequest;
    if (end - start <= step) return this.#submit(op, 'read', Command.READ, 0, start, end - start, target, 0);
    const pieces: Promise<PendingRequest>[] = [];
    for (let at = start; at < end; at += step) {
      pieces.push(this.#submit(op, 'read', Command.READ, 0, at, Math.min(step, end - at), target, at - start));
    }
    return Promise.all(pieces);
  }

  /**
   * One NBD_CMD_BLOCK_STATUS request: the extents the server reports from `offset` on, for
   * every selected context (the server may cover less than `length`, or a little more).
   */
  blockStatus(offset: number, length: number, options: NbdRequestOptions = {}): Promise<Map<string, NbdExtent[]>> {
    let plan: { start: number; end: number };
    try {
      if (this.#contextsByName.size === 0) {
        throw new NbdArgumentError('metaContexts', [], 'block status needs a metadata context selected at connect (metaContexts option)');
      }
      plan = this.#checkRange('blockStatus', offset, length);
      if (length === 0) throw new NbdArgumentError('length', length, 'must be at least 1');
      if (plan.end - plan.start > NO_LIMIT) throw new NbdArgumentError('length', length, `must be at most ${NO_LIMIT}`);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#run(`block status of ${length} byte(s) at offset ${offset}`, options, async (op) => {
      const request = await this.#submit(op, 'block-status', Command.BLOCK_STATUS, 0, plan.start, plan.end - plan.start, undefined, 0);
      const result = new Map<string, NbdExtent[]>();
      for (const [id, descriptors] of request.statuses!) {
        const extents: NbdExtent[] = [];
        let at = plan.start;
        for (let i = 0; i < descriptors.length; i += 2) {
          extents.push({ offset: at, length: descriptors[i]!, flags: descriptors[i + 1]! });
          at += descriptors[i]!;
        }
        result.set(this.#contextsById.get(id)!, extents);
      }
      return result;
    });
  }

  /**
   * The extents of one metadata context over [offset, offset + length), in order, contiguous
   * and clipped to the range; neighbours with the same flags are joined. Block status requests
   * are sent as the iteration goes; `timeout` applies to each of them, `signal` to the whole.
   *
   * ```ts
   * for await (const extent of nbd.extents({ context: 'qemu:dirty-bitmap:bitmap0' })) {
   *   if (extent.flags & ExtentFlag.DIRTY) console.log(extent.offset, extent.length);
   * }
   * ```
   */
  async *extents(options: NbdExtentsOptions = {}): AsyncGenerator<NbdExtent, void, undefined> {
    const contextName = options.context ?? this.#onlyContext();
    const contextId = this.#contextsByName.get(contextName);
    if (contextId === undefined) {
      throw new NbdArgumentError('context', contextName, `not selected at connect (selected: ${[...this.#contextsByName.keys()].join(', ') || 'none'})`);
    }
    const size = this.export.size;
    const offset = options.offset ?? 0;
    const length = options.length ?? size - checkInteger('offset', offset);
    this.#checkRange('extents', offset, length);
    const end = offset + length;
    const minimum = this.export.blockSize.minimum;
    let position = offset;
    let held: NbdExtent | undefined;
    while (position < end) {
      const start = position - (position % minimum);
      const stop = Math.min(start + MAX_STATUS_REQUEST, Math.min(size, Math.ceil(end / minimum) * minimum));
      const requestOptions: NbdRequestOptions = {};
      if (options.timeout !== undefined) requestOptions.timeout = options.timeout;
      if (options.signal !== undefined) requestOptions.signal = options.signal;
      const descriptors = await this.#run(`block status of ${stop - start} byte(s) at offset ${start}`, requestOptions, async (op) => {
        const request = await this.#submit(op, 'block-status', Command.BLOCK_STATUS, 0, start, stop - start, undefined, 0);
        return request.statuses!.get(contextId)!;
      });
      let at = start;
      for (let i = 0; i < descriptors.length && at < end; i += 2) {
        const from = Math.max(at, position);
        at += descriptors[i]!;
        const to = Math.min(at, end);
        if (to <= from) continue;
        const flags = descriptors[i + 1]!;
        if (held && held.flags === flags && held.offset + held.length === from) {
          held.length += to - from;
        } else {
          if (held) yield held;
          held = { offset: from, length: to - from, flags };
        }
      }
      if (at <= position) {
        // The specification guarantees progress; a server that makes none would loop forever.
        const error = new NbdProtocolError(`block status at offset ${start} reported no extent past offset ${position}`);
        this.#fail(new NbdConnectionError(`${this.target} broke the protocol: ${error.message}`, { cause: error }));
        throw error;
      }
      position = Math.min(at, end);
    }
    if (held) yield held;
  }

  /**
   * Reads the given ranges (for example the dirty extents of a bitmap) and yields their data
   * in order, in blocks of at most `blockSize` bytes, keeping `readAhead` reads in flight ahead
   * of the consumer. The consumer sets the pace: no more than `readAhead` blocks are buffered,
   * whatever the source yields. Breaking out of the loop abandons the reads still in flight.
   *
   * ```ts
   * async function* dirty() {
   *   for await (const e of nbd.extents({ context: 'qemu:dirty-bitmap:b0' })) if (e.flags & ExtentFlag.DIRTY) yield e;
   * }
   * for await (const block of nbd.readRanges(dirty())) await sink.write(block.offset, block.data);
   * ```
   */
  async *readRanges(
    ranges: Iterable<{ offset: number; length: number }> | AsyncIterable<{ offset: number; length: number }>,
    options: NbdReadRangesOptions = {},
  ): AsyncGenerator<NbdBlock, void, undefined> {
    const readAhead = checkInteger('readAhead', options.readAhead ?? DEFAULT_READ_AHEAD, 1);
    const blockSize = checkInteger('blockSize', options.blockSize ?? DEFAULT_BLOCK, 1);
    const requestOptions: NbdRequestOptions = {};
    if (options.timeout !== undefined) requestOptions.timeout = options.timeout;
    if (options.signal !== undefined) requestOptions.signal = options.signal;
    const reuse = options.reuseBuffers === true;
    const pool: Buffer[] = [];
    const window: { offset: number; length: number; data: Promise<Buffer>; buffer: Buffer | undefined }[] = [];
    const abandon = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, abandon.signal]) : abandon.signal;
    // Each read in flight listens to the signal; readAhead of them at once is the design.
    setMaxListeners(readAhead + 16, signal);
    requestOptions.signal = signal;
    let lent: Buffer | undefined;
    const next = async (): Promise<NbdBlock> => {
      const head = window.shift()!;
      const data = await head.data;
      if (lent) pool.push(lent);
      lent = head.buffer;
      return { offset: head.offset, length: head.length, data };
    };
    try {
      for await (const range of ranges) {
        const offset = checkInteger('range offset', range.offset);
        const length = checkInteger('range length', range.length);
        for (let at = offset; at < offset + length; at += blockSize) {
          const size = Math.min(blockSize, offset + length - at);
          let buffer: Buffer | undefined;
          let data: Promise<Buffer>;
          if (reuse) {
            buffer = pool.pop() ?? Buffer.allocUnsafe(blockSize);
            data = this.readInto(buffer.subarray(0, size), at, requestOptions);
          } else {
            data = this.read(at, size, requestOptions);
          }
          data.catch(noop); // awaited below; this only keeps an early break from leaving it unhandled
          window.push({ offset: at, length: size, data, buffer });
          while (window.length >= readAhead) yield await next();
        }
      }
      while (window.length > 0) yield await next();
    } finally {
      if (window.length > 0) abandon.abort(new Error('readRanges ended before its reads were consumed'));
    }
  }

  /**
   * Soft disconnect: stops taking requests, lets those in flight finish (until `timeout`,
   * default 10 s; then they fail with `NbdConnectionError`), sends NBD_CMD_DISC and waits for
   * the server to close. Resolves when the socket has closed.
   */
  disconnect(options: { timeout?: number } = {}): Promise<void> {
    const state = this.#state;
    if (state.kind === 'closed') return Promise.resolve();
    if (state.kind === 'closing') return state.done;
    const timeout = options.timeout ?? 10_000;
    const done = (async () => {
      const timer = setTimeout(() => {
        this.#fail(new NbdConnectionError(`disconnect from ${this.target} timed out after ${timeout} ms`));
      }, timeout);
      try {
        await this.#untilDrained();
        this.#sendDisconnect();
        await this.#closed;
      } finally {
        clearTimeout(timer);
      }
    })();
    this.#state = { kind: 'closing', done };
    return done;
  }

  /**
   * Closes at once: pending requests fail with `NbdConnectionError`, NBD_CMD_DISC is sent when
   * possible, the socket is ended (destroyed after `timeout`, default 2 s).
   */
  close(options: { timeout?: number } = {}): Promise<void> {
    const state = this.#state;
    if (state.kind === 'closed') return Promise.resolve();
    const error = new NbdConnectionError(`connection to ${this.target} closed by the client`);
    this.#discarding = true;
    this.#rejectAll(error);
    this.#sendDisconnect();
    const socket = this.#socket;
    const timer = setTimeout(() => socket?.destroy(), options.timeout ?? 2000);
    const done = this.#closed.then(() => clearTimeout(timer));
    if (state.kind !== 'closing') this.#state = { kind: 'closing', done };
    if (!socket || socket.destroyed) this.#fail(error, true);
    return done;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.disconnect();
  }

  // ---------------------------------------------------------------- handshake

  async #negotiate(exportName: string, options: NbdConnectOptions, deadline: number, timeout: number): Promise<void> {
    this.#state = { kind: 'negotiating' };
    const signal = options.signal;
    const next = (): Promise<HandshakeMessage> =>
      withDeadline(this.#nextMessage(), deadline, timeout, signal, `handshake with ${this.target}`);

    const greeting = await next();
    if (greeting.kind !== 'greeting') throw new NbdProtocolError('expected the server greeting');
    if ((greeting.handshakeFlags & FLAG_FIXED_NEWSTYLE) === 0) {
      throw new NbdHandshakeError(`${this.target} does not support fixed newstyle negotiation`, { option: Option.GO });
    }
    let clientFlags = FLAG_C_FIXED_NEWSTYLE;
    if (greeting.handshakeFlags & FLAG_NO_ZEROES) clientFlags |= FLAG_C_NO_ZEROES;
    this.#write(serializeClientFlags(clientFlags));

    const contexts = options.metaContexts ?? [];
    if (options.structuredReplies !== false) {
      this.#write(serializeStructuredReply());
      const reply = this.#expectReplyTo(Option.STRUCTURED_REPLY, await next());
      if (reply.kind === 'ack') {
        this.#structured = true;
      } else if (reply.kind === 'error' && reply.replyType === OptionReply.ERR_UNSUP && contexts.length === 0) {
        this.#structured = false;
      } else {
        throw this.#refusal(Option.STRUCTURED_REPLY, reply, 'structured replies');
      }
    }

    if (contexts.length > 0) {
      this.#write(serializeMetaContext(exportName, contexts));
      for (;;) {
        const reply = this.#expectReplyTo(Option.SET_META_CONTEXT, await next());
        if (reply.kind === 'ack') break;
        if (reply.kind !== 'meta-context') throw this.#refusal(Option.SET_META_CONTEXT, reply, `metadata contexts ${contexts.join(', ')}`);
        if (this.#contextsById.has(reply.id) || this.#contextsByName.has(reply.name)) {
          throw new NbdProtocolError(`metadata context id ${reply.id} (${reply.name}) was granted twice`);
        }
        this.#contextsById.set(reply.id, reply.name);
        this.#contextsByName.set(reply.name, reply.id);
      }
      const missing = contexts.filter((c) => !this.#contextsByName.has(c));
      if (missing.length > 0) {
        const granted = [...this.#contextsByName.keys()];
        throw new NbdHandshakeError(
          `export ${JSON.stringify(exportName)} on ${this.target} does not offer the metadata context(s) ${missing.join(', ')}` +
            ` (granted: ${granted.join(', ') || 'none'})`,
          { option: Option.SET_META_CONTEXT },
        );
      }
    }

    // Asking for NBD_INFO_BLOCK_SIZE is a promise to honour the constraints, which #checkRange does.
    this.#write(serializeGo(exportName, [Info.BLOCK_SIZE, Info.NAME, Info.DESCRIPTION]));
    let size: number | undefined;
    let transmissionFlags = 0;
    let name = exportName;
    let description: string | undefined;
    let blockSize: NbdBlockSize = { minimum: 1, preferred: 4096, maximum: NO_LIMIT, advertised: false };
    for (;;) {
      const reply = this.#expectReplyTo(Option.GO, await next());
      if (reply.kind === 'ack') break;
      switch (reply.kind) {
        case 'info-export':
          size = reply.size;
          transmissionFlags = reply.transmissionFlags;
          break;
        case 'info-name':
          name = reply.name;
          break;
        case 'info-description':
          description = reply.description;
          break;
        case 'info-block-size':
          blockSize = checkBlockSize(reply.minimum, reply.preferred, reply.maximum);
          break;
        case 'info-other':
          break;
        default:
          throw this.#refusal(Option.GO, reply, `export ${JSON.stringify(exportName)}`);
      }
    }
    if (size === undefined) throw new NbdProtocolError('the server accepted NBD_OPT_GO without sending NBD_INFO_EXPORT');
    const flag = (bit: number): boolean => (transmissionFlags & bit) !== 0;
    this.#export = {
      name,
      description,
      size,
      transmissionFlags,
      readOnly: flag(TransmissionFlag.READ_ONLY),
      canFlush: flag(TransmissionFlag.SEND_FLUSH),
      canTrim: flag(TransmissionFlag.SEND_TRIM),
      canWriteZeroes: flag(TransmissionFlag.SEND_WRITE_ZEROES),
      canMultiConn: flag(TransmissionFlag.CAN_MULTI_CONN),
      canCache: flag(TransmissionFlag.SEND_CACHE),
      rotational: flag(TransmissionFlag.ROTATIONAL),
      blockSize,
    };
    let max = Math.min(this.#maxRequestOption ?? DEFAULT_MAX_BLOCK_SIZE, blockSize.maximum === NO_LIMIT ? DEFAULT_MAX_BLOCK_SIZE : blockSize.maximum);
    if (this.#maxRequestOption !== undefined && blockSize.maximum === NO_LIMIT) max = this.#maxRequestOption;
    // A request's length is a 32-bit field; 2 GiB keeps every split far from its limit.
    max = Math.min(max, MAX_STATUS_REQUEST);
    max -= max % blockSize.minimum;
    this.#maxRequest = Math.max(max, blockSize.minimum);
    if (this.#state.kind === 'negotiating') this.#state = { kind: 'ready' };
  }

  #nextMessage(): Promise<HandshakeMessage> {
    const message = this.#inbox.shift();
    if (message) return Promise.resolve(message);
    const state = this.#state;
    if (state.kind === 'closed') return Promise.reject(state.error);
    return new Promise((resolve, reject) => {
      this.#inboxWaiter = { resolve, reject };
    });
  }

  #expectReplyTo(option: number, message: HandshakeMessage): HandshakeMessage {
    if (message.kind === 'greeting' || message.option !== option) {
      throw new NbdProtocolError(
        `expected a reply to ${optionName(option)}, got ${message.kind === 'greeting' ? 'a greeting' : `a reply to ${optionName(message.option)}`}`,
      );
    }
    return message;
  }

  #refusal(option: number, reply: HandshakeMessage, what: string): HandshakeFailure {
    if (reply.kind !== 'error') {
      return new NbdProtocolError(`unexpected ${reply.kind} reply to ${optionName(option)}`);
    }
    const reason = reply.replyType === OptionReply.ERR_UNKNOWN
      ? 'not found'
      : reply.replyType === OptionReply.ERR_TLS_REQD
        ? 'requires TLS, which this client does not implement'
        : reply.replyType === OptionReply.ERR_UNSUP
          ? 'not supported by the server'
          : `refused (${optionReplyErrorName(reply.replyType)})`;
    const message = reply.message ? `: ${reply.message}` : '';
    return new NbdHandshakeError(`${what} on ${this.target}: ${reason}${message}`, {
      option,
      replyType: reply.replyType,
      serverMessage: reply.message,
    });
  }

  /** Ends option haggling politely when negotiation fails (NBD_OPT_ABORT is the soft disconnect there). */
  #abortHandshake(): void {
    if (this.#inTransmission || this.#state.kind === 'closed') return;
    this.#write(serializeAbort());
  }

  // ---------------------------------------------------------------- socket

  #attach(socket: Socket): void {
    this.#socket = socket;
    socket.on('error', this.#onError);
    socket.on('end', this.#onEnd);
    socket.on('close', this.#onClose);
    socket.setNoDelay(true);
  }

  /**
   * The socket reads into a buffer this picks before each read: while a long data payload is
   * being received, the destination itself (so the bytes are copied once, by the kernel);
   * otherwise one reused buffer.
   */
  readonly #onread = {
    buffer: (): Uint8Array => {
      const pending = this.#inTransmission ? this.#replies.pendingDataBytes : 0;
      if (pending >= DIRECT_READ_THRESHOLD) {
        const destination = this.#directDestination(pending);
        if (destination) {
          this.#direct = true;
          return destination;
        }
      }
      this.#direct = false;
      return this.#readBuffer;
    },
    callback: (bytes: number, buffer: Uint8Array): boolean => {
      if (this.#direct) {
        this.#direct = false;
        if (this.#state.kind === 'closed' || this.#discarding) return true;
        try {
          this.#replies.consumedInPlace(bytes);
        } catch (error) {
          this.#protocolFailure(error);
        }
        return true;
      }
      this.#onData(Buffer.from(buffer.buffer, buffer.byteOffset, bytes));
      return true;
    },
  };

  /** The part of the current request's buffer that the next `bytes` of data belong to. */
  #directDestination(bytes: number): Uint8Array | undefined {
    const current = this.#replies.currentData;
    if (!current) return undefined;
    const request = this.#inFlight.get(current.handle);
    if (!request?.target) return undefined;
    const at = request.targetStart + (current.absolute ? current.position - request.offset : current.position);
    return request.target.subarray(at, at + bytes);
  }

  #onData(chunk: Buffer): void {
    if (this.#state.kind === 'closed' || this.#discarding) return;
    if (this.#inTransmission) {
      try {
        this.#replies.push(chunk);
      } catch (error) {
        this.#protocolFailure(error);
      }
      return;
    }
    let messages: HandshakeMessage[];
    try {
      messages = this.#handshake.push(chunk);
    } catch (error) {
      this.#protocolFailure(error);
      return;
    }
    for (const message of messages) {
      const waiter = this.#inboxWaiter;
      this.#inboxWaiter = undefined;
      if (waiter) waiter.resolve(message);
      else this.#inbox.push(message);
    }
    if (this.#handshake.done) {
      this.#inTransmission = true;
      const rest = this.#handshake.takeRemainder();
      if (rest.length > 0) {
        try {
          this.#replies.push(rest);
        } catch (error) {
          this.#protocolFailure(error);
        }
      }
    }
  }

  #protocolFailure(error: unknown): void {
    const cause = NbdProtocolError.isInstance(error)
      ? error
      : new NbdProtocolError(`unexpected failure while decoding: ${(error as Error)?.message}`, { cause: error });
    this.#fail(new NbdConnectionError(`${this.target} broke the NBD protocol: ${cause.message}`, { cause }));
  }

  readonly #onError = (error: Error): void => {
    this.#fail(new NbdConnectionError(`connection to ${this.target} failed: ${error.message}`, { cause: error }));
  };

  readonly #onEnd = (): void => {
    let cause: unknown;
    if (this.#inTransmission) {
      try {
        this.#replies.end();
      } catch (error) {
        cause = error;
      }
    }
    const closing = this.#state.kind === 'closing';
    const message = cause === undefined
      ? `${this.target} closed the connection`
      : `${this.target} closed the connection in the middle of a reply`;
    const error = new NbdConnectionError(message, cause === undefined ? undefined : { cause });
    this.#fail(error, closing && cause === undefined && this.#inFlight.size === 0);
  };

  readonly #onClose = (): void => {
    const closing = this.#state.kind === 'closing';
    this.#fail(new NbdConnectionError(`connection to ${this.target} closed`), closing && this.#inFlight.size === 0);
  };

  #write(bytes: Uint8Array): void {
    const socket = this.#socket;
    if (socket && !socket.destroyed && !socket.writableEnded) socket.write(bytes);
  }

  #sendDisconnect(): void {
    const socket = this.#socket;
    if (!socket || socket.destroyed || socket.writableEnded) return;
    this.#flush();
    if (this.#inTransmission) socket.write(serializeDisconnect(this.#allocateHandle()));
    else socket.write(serializeAbort());
    socket.end();
  }

  // ---------------------------------------------------------------- requests

  /** Validates a range and widens it to the minimum block size; returns the bytes to request. */
  #checkRange(what: string, offset: number, length: number): { start: number; end: number } {
    checkInteger('offset', offset);
    checkInteger('length', length);
    const info = this.#export;
    const state = this.#state;
    if (!info || state.kind !== 'ready') {
      throw state.kind === 'closed' ? state.error : new NbdConnectionError(`cannot ${what}: the connection to ${this.target} is ${state.kind}`);
    }
    if (offset + length > info.size) {
      throw new NbdArgumentError('length', length, `offset ${offset} + length ${length} is past the end of the export (${info.size} bytes)`);
    }
    const minimum = info.blockSize.minimum;
    const start = offset - (offset % minimum);
    const end = Math.min(Math.ceil((offset + length) / minimum) * minimum, info.size);
    return { start, end };
  }

  #onlyContext(): string {
    if (this.#contextsByName.size === 1) return this.#contextsByName.keys().next().value!;
    throw new NbdArgumentError('context', undefined, `name one of the selected contexts (${[...this.#contextsByName.keys()].join(', ') || 'none'})`);
  }

  /** Runs one public operation under its timeout and signal; on failure its requests are abandoned. */
  async #run<T>(name: string, options: NbdRequestOptions, body: (op: Operation) => Promise<T>): Promise<T> {
    const signal = options.signal;
    if (signal?.aborted) throw new NbdAbortError(name, signal.reason);
    const timeout = options.timeout ?? this.#requestTimeout;
    const op: Operation = { name, abandoned: false };
    const work = body(op);
    try {
      return await withDeadline(work, timeout === undefined ? undefined : Date.now() + timeout, timeout ?? 0, signal, name);
    } catch (error) {
      op.abandoned = true;
      work.catch(noop);
      throw error;
    }
  }

  #submit(
    op: Operation,
    command: NbdCommandName,
    type: number,
    flags: number,
    offset: number,
    length: number,
    target: Buffer | undefined,
    targetStart: number,
  ): Promise<PendingRequest> {
    return new Promise((resolve, reject) => {
      const request: PendingRequest = {
        handle: 0,
        command,
        type,
        flags,
        offset,
        length,
        op,
        target,
        targetStart,
        coverage: undefined,
        statuses: undefined,
        error: undefined,
        resolve,
        reject,
      };
      this.#queue.push(request);
      this.#pump();
    });
  }

  /** Moves queued requests onto the wire while fewer than `maxInFlight` are there. */
  #pump(): void {
    const queue = this.#queue;
    while (this.#queueHead < queue.length && this.#inFlight.size < this.#maxInFlight) {
      const request = queue[this.#queueHead]!;
      queue[this.#queueHead++] = undefined as unknown as PendingRequest;
      if (request.op.abandoned) {
        request.reject(new NbdAbortError(request.op.name, 'abandoned'));
        continue;
      }
      const handle = this.#allocateHandle();
      (request as { handle: number }).handle = handle;
      if (request.command === 'read' && this.#structured) request.coverage = new Coverage();
      if (request.command === 'block-status') request.statuses = new Map();
      this.#inFlight.set(handle, request);
      this.#outbox.push(request);
    }
    if (this.#queueHead === queue.length) {
      queue.length = 0;
      this.#queueHead = 0;
    } else if (this.#queueHead > 1024 && this.#queueHead * 2 > queue.length) {
      queue.splice(0, this.#queueHead);
      this.#queueHead = 0;
    }
    if (this.#outbox.length > 0 && !this.#flushScheduled) {
      this.#flushScheduled = true;
      process.nextTick(this.#flush);
    }
  }

  /** Requests issued in one tick go out in one write. */
  readonly #flush = (): void => {
    this.#flushScheduled = false;
    const outbox = this.#outbox;
    if (outbox.length === 0) return;
    const bytes = Buffer.allocUnsafe(REQUEST_SIZE * outbox.length);
    for (let i = 0; i < outbox.length; i++) {
      const r = outbox[i]!;
      writeRequest(bytes, i * REQUEST_SIZE, r.type, r.flags, r.handle, r.offset, r.length);
    }
    outbox.length = 0;
    this.#write(bytes);
  };

  #allocateHandle(): number {
    // Handles are 32-bit counters (the high half of the 64-bit handle stays zero); one still
    // in flight after a wrap-around is skipped.
    do {
      this.#nextHandle = (this.#nextHandle + 1) >>> 0;
    } while (this.#inFlight.has(this.#nextHandle));
    return this.#nextHandle;
  }

  #complete(request: PendingRequest): void {
    this.#inFlight.delete(request.handle);
    if (request.error) {
      request.reject(request.error);
      if (request.error.errno === NbdErrno.ESHUTDOWN && this.#state.kind === 'ready') {
        // The specification asks for a soft disconnect once the server says it is shutting down.
        void this.disconnect().catch(noop);
      }
    } else {
      request.resolve(request);
    }
    this.#pump();
    if (this.#inFlight.size === 0 && this.#drained) this.#drained();
  }

  #untilDrained(): Promise<void> {
    if (this.#inFlight.size === 0 && this.#queueHead === this.#queue.length) return Promise.resolve();
    return new Promise((resolve) => {
      this.#drained = () => {
        if (this.#queueHead !== this.#queue.length) return;
        this.#drained = undefined;
        resolve();
      };
    });
  }

  #lookup(handle: number, what: string): PendingRequest {
    const request = this.#inFlight.get(handle);
    if (!request) throw new NbdProtocolError(`${what} for handle ${handle}, which is not in flight`);
    return request;
  }

  /** Where the parser's decoded replies are checked against their requests and applied. */
  readonly #replyHandler: ReplyHandler = {
    onSimpleReply: (handle, error) => {
      const request = this.#lookup(handle, 'simple reply');
      if (error !== 0) {
        request.error = new NbdCommandError({ command: request.command, offset: request.offset, length: request.length, errno: error });
        return 0;
      }
      if (request.command === 'block-status') throw new NbdProtocolError('a successful block status reply must be structured');
      if (this.#structured) throw new NbdProtocolError('simple reply with data to a read, though structured replies were negotiated');
      return request.length;
    },
    onSimpleData: (handle, position, bytes) => {
      const request = this.#inFlight.get(handle)!;
      if (request.target) bytes.copy(request.target, request.targetStart + position);
    },
    onSimpleReplyEnd: (handle) => {
      this.#complete(this.#inFlight.get(handle)!);
    },
    onChunkHeader: (handle, _flags, type, length) => {
      const request = this.#lookup(handle, 'structured reply chunk');
      if (!this.#structured) throw new NbdProtocolError('structured reply chunk, though structured replies were not negotiated');
      if (type === ReplyType.OFFSET_DATA || type === ReplyType.OFFSET_HOLE) {
        if (request.command !== 'read') throw new NbdProtocolError(`content chunk in the reply to ${request.command}`);
        if (type === ReplyType.OFFSET_DATA && length - 8 > request.length) {
          throw new NbdProtocolError(`OFFSET_DATA chunk of ${length - 8} byte(s) in the reply to a read of ${request.length}`);
        }
      } else if (type === ReplyType.BLOCK_STATUS && request.command !== 'block-status') {
        throw new NbdProtocolError(`block status chunk in the reply to ${request.command}`);
      }
    },
    onOffsetDataStart: (handle, offset, length) => {
      this.#cover(this.#inFlight.get(handle)!, offset, length, 'OFFSET_DATA');
    },
    onOffsetData: (handle, offset, bytes) => {
      const request = this.#inFlight.get(handle)!;
      if (request.target) bytes.copy(request.target, request.targetStart + offset - request.offset);
    },
    onChunk: (chunk) => this.#onChunk(chunk),
  };

  #cover(request: PendingRequest, offset: number, length: number, what: string): void {
    if (offset < request.offset || offset + length > request.offset + request.length) {
      throw new NbdProtocolError(
        `${what} chunk [${offset}, ${offset + length}) is outside the request [${request.offset}, ${request.offset + request.length})`,
      );
    }
    if (!request.coverage!.add(offset, offset + length)) {
      throw new NbdProtocolError(`${what} chunk [${offset}, ${offset + length}) overlaps data already received`);
    }
  }

  #onChunk(chunk: ReplyChunk): void {
    const request = this.#inFlight.get(chunk.handle)!;
    switch (chunk.type) {
      case 'offset-hole':
        this.#cover(request, chunk.offset, chunk.length, 'OFFSET_HOLE');
        if (request.target) {
          const at = request.targetStart + chunk.offset - request.offset;
          request.target.fill(0, at, at + chunk.length);
        }
        break;
      case 'block-status': {
        const name = this.#contextsById.get(chunk.contextId);
        if (name === undefined) throw new NbdProtocolError(`block status for context id ${chunk.contextId}, which was not selected`);
        if (request.statuses!.has(chunk.contextId)) throw new NbdProtocolError(`two block status chunks for context ${name} in one reply`);
        let total = 0;
        const d = chunk.descriptors;
        for (let i = 0; i < d.length - 2; i += 2) total += d[i]!;
        // All but the last extent must lie within the request; the last may run past it.
        if (total >= request.length) throw new NbdProtocolError(`block status for ${name} describes more extents than the request's ${request.length} bytes`);
        request.statuses!.set(chunk.contextId, d);
        break;
      }
      case 'error':
        if (chunk.offset !== undefined && (chunk.offset < request.offset || chunk.offset >= request.offset + request.length)) {
          throw new NbdProtocolError(`error offset ${chunk.offset} is outside the request [${request.offset}, ${request.offset + request.length})`);
        }
        request.error ??= new NbdCommandError({
          command: request.command,
          offset: request.offset,
          length: request.length,
          errno: chunk.errno,
          serverMessage: chunk.message || undefined,
          errorOffset: chunk.offset,
        });
        break;
      case 'none':
      case 'offset-data':
        break;
    }
    if ((chunk.flags & REPLY_FLAG_DONE) === 0) return;
    if (!request.error) {
      if (request.command === 'read' && request.coverage!.covered !== request.length) {
        throw new NbdProtocolError(`the reply to a read of ${request.length} byte(s) ended after covering ${request.coverage!.covered}`);
      }
      if (request.command === 'block-status' && request.statuses!.size !== this.#contextsById.size) {
        throw new NbdProtocolError(`the block status reply covered ${request.statuses!.size} of ${this.#contextsById.size} selected context(s)`);
      }
    }
    this.#complete(request);
  }

  // ---------------------------------------------------------------- failure

  #rejectAll(error: NbdConnectionError): void {
    const requests = [...this.#inFlight.values(), ...this.#queue.slice(this.#queueHead)];
    this.#inFlight.clear();
    this.#queue.length = 0;
    this.#queueHead = 0;
    this.#outbox.length = 0;
    for (const request of requests) request.reject(error);
    const waiter = this.#inboxWaiter;
    this.#inboxWaiter = undefined;
    waiter?.reject(error);
    if (this.#drained) this.#drained();
  }

  /** Ends the connection once: everything pending fails with `error`, the socket is destroyed. */
  #fail(error: NbdConnectionError, clean = false): void {
    const state = this.#state;
    if (state.kind === 'closed') return;
    const wasClosing = state.kind === 'closing';
    this.#state = { kind: 'closed', error };
    this.#rejectAll(error);
    const socket = this.#socket;
    if (socket && !socket.destroyed) socket.destroy();
    this.#resolveClosed(wasClosing && clean ? undefined : error);
  }
}

type HandshakeFailure = NbdHandshakeError | NbdProtocolError;

/** Checks NBD_INFO_BLOCK_SIZE against the specification's rules, which the client relies on. */
function checkBlockSize(minimum: number, preferred: number, maximum: number): NbdBlockSize {
  if (!isPowerOfTwo(minimum) || minimum > 65536) {
    throw new NbdProtocolError(`minimum block size ${minimum} is not a power of two up to 64 KiB`);
  }
  if (!isPowerOfTwo(preferred) || preferred < Math.max(minimum, 512)) {
    throw new NbdProtocolError(`preferred block size ${preferred} is not a power of two of at least ${Math.max(minimum, 512)}`);
  }
  if (maximum !== NO_LIMIT && (maximum % minimum !== 0 || maximum < minimum)) {
    throw new NbdProtocolError(`maximum block size ${maximum} is not a multiple of the minimum ${minimum}`);
  }
  return { minimum, preferred, maximum, advertised: true };
}

