import { REPLY_FLAG_DONE, REPLY_TYPE_ERROR_BIT, ReplyType, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC } from './constants.js';
import { NbdProtocolError } from './errors.js';

/** A structured reply chunk other than the data of OFFSET_DATA, decoded. */
export type ReplyChunk =
  | { type: 'none'; handle: number; flags: number }
  /** Sent after the data of an OFFSET_DATA chunk was delivered through `onOffsetData`. */
  | { type: 'offset-data'; handle: number; flags: number; offset: number; length: number }
  | { type: 'offset-hole'; handle: number; flags: number; offset: number; length: number }
  /** `descriptors` holds pairs: extent length, status flags, extent length, status flags, ... */
  | { type: 'block-status'; handle: number; flags: number; contextId: number; descriptors: Uint32Array }
  /**
   * An error chunk (bit 15 of the type set): NBD_REPLY_TYPE_ERROR, ERROR_OFFSET (with
   * `offset`), or an error type this client does not know, which still fails the request.
   */
  | { type: 'error'; handle: number; flags: number; chunkType: number; errno: number; message: string; offset: number | undefined };

/**
 * Where the parser delivers what it decodes. The connection implements it; every method
 * may throw (an `NbdProtocolError` for a reply the request does not allow), which fails the
 * parser for good. Buffers passed in are views of the pushed chunk: valid only during the call.
 */
export interface ReplyHandler {
  /**
   * A simple reply's header. Returns how many data bytes follow it: the request's length for a
   * successful read, else 0. The specification makes the stream depend on this: a simple
   * reply does not say how much data it carries.
   */
  onSimpleReply(handle: number, error: number): number;
  /** Data of a simple reply, `position` bytes into the request. */
  onSimpleData(handle: number, position: number, bytes: Buffer): void;
  /** The simple reply (and its data, if any) is complete. */
  onSimpleReplyEnd(handle: number, error: number): void;
  /** A structured chunk's header, before its payload; the place to refuse an impossible length. */
  onChunkHeader(handle: number, flags: number, type: number, length: number): void;
  /** An OFFSET_DATA chunk's place, known before any of its data arrives (the place to refuse it). */
  onOffsetDataStart(handle: number, offset: number, length: number): void;
  /** Data of an OFFSET_DATA chunk, at absolute export offset `offset`. */
  onOffsetData(handle: number, offset: number, bytes: Buffer): void;
  /** A complete chunk. */
  onChunk(chunk: ReplyChunk): void;
}

export interface ReplyParserOptions {
  /**
   * Largest payload accepted for a chunk that is buffered whole (block status, errors, holes).
   * QEMU's block status replies stay within 1 MiB. Default 4 MiB. OFFSET_DATA payloads are not
   * buffered: they stream through `onOffsetData`, and the handler bounds them by the request.
   */
  maxBufferedPayload?: number;
}

const SIMPLE_HEADER_SIZE = 16;
const STRUCTURED_HEADER_SIZE = 20;
const DEFAULT_MAX_BUFFERED_PAYLOAD = 4 * 1024 * 1024;

const enum State {
  Header,
  SimpleData,
  DataOffset,
  Data,
  Payload,
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function uint64(buffer: Buffer, at: number): number {
  return buffer.readUInt32BE(at) * 0x1_0000_0000 + buffer.readUInt32BE(at + 4);
}

/**
 * Decodes transmission-phase replies (simple replies and structured reply chunks) from a byte
 * stream cut into arbitrary chunks, without I/O.
 *
 * Throughput matters here, so the parser never copies read data: OFFSET_DATA payloads and
 * simple read replies are handed to the handler as views of the pushed chunk, and the
 * connection copies them once, into the caller's buffer. Only headers split across chunks
 * and small whole-chunk payloads are copied. The parser keeps no reference to a pushed chunk
 * after `push` returns, so the connection may read the socket into one reused buffer.
 */
export class ReplyParser {
  readonly #handler: ReplyHandler;
  readonly #maxBufferedPayload: number;
  #state = State.Header;
  /** Header or offset bytes gathered across chunks. */
  readonly #scratch = Buffer.alloc(STRUCTURED_HEADER_SIZE);
  #scratchFill = 0;
  // The message being decoded.
  #handle = 0;
  #flags = 0;
  #type = 0;
  #error = 0;
  /** Bytes of the current data or payload still to come. */
  #remaining = 0;
  /** Next data position: relative for simple replies, absolute for OFFSET_DATA. */
  #position = 0;
  #dataOffset = 0;
  #dataLength = 0;
  #payload: Buffer | undefined;
  #payloadFill = 0;
  #failure: NbdProtocolError | undefined;

  constructor(handler: ReplyHandler, options: ReplyParserOptions = {}) {
    this.#handler = handler;
    this.#maxBufferedPayload = options.maxBufferedPayload ?? DEFAULT_MAX_BUFFERED_PAYLOAD;
  }

  /** True between messages: a stream ending here ended cleanly. */
  get atMessageBoundary(): boolean {
    return this.#state === State.Header && this.#scratchFill === 0;
  }

  /**
   * While the parser is inside read data, how many bytes of it are still to come (else 0).
   * The connection uses it to size socket reads that land directly in the caller's buffer.
   */
  get pendingDataBytes(): number {
    return this.#state === State.Data || this.#state === State.SimpleData ? this.#remaining : 0;
  }

  push(chunk: Buffer): void {
    if (this.#failure) throw this.#failure;
    try {
      this.#parse(chunk);
    } catch (error) {
      this.#failure = NbdProtocolError.isInstance(error)
        ? error
        : new NbdProtocolError(`reply handling failed: ${(error as Error).message}`, { cause: error });
      throw this.#failure;
    }
  }

  /** Declares the end of the stream; throws `NbdProtocolError` if it ends inside a message. */
  end(): void {
    if (this.#failure) throw this.#failure;
    if (!this.atMessageBoundary) {
      this.#failure = new NbdProtocolError(`the stream ended inside a reply (${this.#describeState()})`);
      throw this.#failure;
    }
  }

  /** The read data being received: its request's handle and the position of its next byte. */
  get currentData(): { handle: number; position: number; absolute: boolean } | undefined {
    if (this.#state === State.Data) return { handle: this.#handle, position: this.#position, absolute: true };
    if (this.#state === State.SimpleData) return { handle: this.#handle, position: this.#position, absolute: false };
    return undefined;
  }

  /**
   * Delivers read data the connection already placed in the caller's buffer itself (a socket
   * read aimed straight at the destination): the parser only accounts for it. `bytes` must be
   * at most `pendingDataBytes`.
   */
  consumedInPlace(byteCount: number): number {
    const position = this.#position;
    this.#position += byteCount;
    this.#remaining -= byteCount;
    if (this.#remaining === 0) this.#finishData();
    return position;
  }

  #describeState(): string {
    switch (this.#state) {
      case State.Header:
        return `${this.#scratchFill} byte(s) of a reply header`;
      case State.SimpleData:
        return `${this.#remaining} byte(s) of a simple reply's data missing`;
      case State.DataOffset:
        return 'an OFFSET_DATA chunk without its offset';
      case State.Data:
        return `${this.#remaining} byte(s) of an OFFSET_DATA chunk missing`;
      case State.Payload:
        return `${this.#remaining} byte(s) of a chunk payload missing`;
    }
  }

  #parse(chunk: Buffer): void {
    const length = chunk.length;
    let at = 0;
    while (at < length) {
      switch (this.#state) {
        case State.Header: {
          if (this.#scratchFill === 0 && length - at >= STRUCTURED_HEADER_SIZE) {
            // Fast path: the whole header is in this chunk.
            at = this.#header(chunk, at);
            break;
          }
          // Gather the magic first, to know whether 16 or 20 bytes make the header.
          const need = this.#scratchFill < 4 ? 4 : this.#headerSize();
          const take = Math.min(need - this.#scratchFill, length - at);
          chunk.copy(this.#scratch, this.#scratchFill, at, at + take);
          this.#scratchFill += take;
          at += take;
          if (this.#scratchFill === 4) this.#headerSize(); // validates the magic early
          if (this.#scratchFill >= 4 && this.#scratchFill === this.#headerSize()) {
            this.#scratchFill = 0;
            this.#header(this.#scratch, 0);
          }
          break;
        }
        case State.SimpleData:
        case State.Data: {
          const take = Math.min(this.#remaining, length - at);
          const piece = chunk.subarray(at, at + take);
          at += take;
          const position = this.#position;
          this.#position += take;
          this.#remaining -= take;
          if (this.#state === State.SimpleData) this.#handler.onSimpleData(this.#handle, position, piece);
          else this.#handler.onOffsetData(this.#handle, position, piece);
          if (this.#remaining === 0) this.#finishData();
          break;
        }
        case State.DataOffset: {
          const take = Math.min(8 - this.#scratchFill, length - at);
          chunk.copy(this.#scratch, this.#scratchFill, at, at + take);
          this.#scratchFill += take;
          at += take;
          if (this.#scratchFill === 8) {
            this.#scratchFill = 0;
            this.#startData(uint64(this.#scratch, 0));
          }
          break;
        }
        case State.Payload: {
          const payload = this.#payload!;
          const take = Math.min(this.#remaining, length - at);
          chunk.copy(payload, this.#payloadFill, at, at + take);
          this.#payloadFill += take;
          this.#remaining -= take;
          at += take;
          if (this.#remaining === 0) {
            this.#payload = undefined;
            this.#state = State.Header;
            this.#handler.onChunk(this.#decode(payload));
          }
          break;
        }
      }
    }
  }

  #headerSize(): number {
    const magic = this.#scratch.readUInt32BE(0);
    if (magic === SIMPLE_REPLY_MAGIC) return SIMPLE_HEADER_SIZE;
    if (magic === STRUCTURED_REPLY_MAGIC) return STRUCTURED_HEADER_SIZE;
    throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16).padStart(8, '0')}`, { excerpt: this.#scratch.subarray(0, 4) });
  }

  /** Decodes a complete header at `at`; returns the offset after it. */
  #header(bytes: Buffer, at: number): number {
    const magic = bytes.readUInt32BE(at);
    if (magic === SIMPLE_REPLY_MAGIC) {
      const error = bytes.readUInt32BE(at + 4);
      const handle = uint64(bytes, at + 8);
      this.#handle = handle;
      this.#error = error;
      const dataLength = this.#handler.onSimpleReply(handle, error);
      if (dataLength > 0) {
        this.#state = State.SimpleData;
        this.#remaining = dataLength;
        this.#position = 0;
      } else {
        this.#handler.onSimpleReplyEnd(handle, error);
      }
      return at + SIMPLE_HEADER_SIZE;
    }
    if (magic !== STRUCTURED_REPLY_MAGIC) {
      throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16).padStart(8, '0')}`, { excerpt: bytes.subarray(at, at + 20) });
    }
    const flags = bytes.readUInt16BE(at + 4);
    const type = bytes.readUInt16BE(at + 6);
    const handle = uint64(bytes, at + 8);
    const length = bytes.readUInt32BE(at + 16);
    this.#handle = handle;
    this.#flags = flags;
    this.#type = type;
    this.#checkChunkLength(type, flags, length, bytes.subarray(at, at + STRUCTURED_HEADER_SIZE));
    this.#handler.onChunkHeader(handle, flags, type, length);
    if (type === ReplyType.OFFSET_DATA) {
      this.#state = State.DataOffset;
      this.#dataLength = length - 8;
    } else if (length === 0) {
      this.#state = State.Header;
      this.#handler.onChunk(this.#decode(Buffer.alloc(0)));
    } else {
      this.#state = State.Payload;
      this.#payload = Buffer.allocUnsafe(length);
      this.#payloadFill = 0;
      this.#remaining = length;
    }
    return at + STRUCTURED_HEADER_SIZE;
  }

  /** Checks what can be checked from the header alone, before any payload is buffered. */
  #checkChunkLength(type: number, flags: number, length: number, header: Buffer): void {
    const bad = (why: string): NbdProtocolError => new NbdProtocolError(why, { excerpt: header });
    switch (type) {
      case ReplyType.NONE:
        if (length !== 0) throw bad(`NBD_REPLY_TYPE_NONE chunk with a payload of ${length} byte(s)`);
        if ((flags & REPLY_FLAG_DONE) === 0) throw bad('NBD_REPLY_TYPE_NONE chunk without NBD_REPLY_FLAG_DONE');
        return;
      case ReplyType.OFFSET_DATA:
        if (length < 9) throw bad(`OFFSET_DATA chunk of ${length} byte(s) (at least 9 required)`);
        return;
      case ReplyType.OFFSET_HOLE:
        if (length !== 12) throw bad(`OFFSET_HOLE chunk of ${length} byte(s) (exactly 12 required)`);
        return;
      case ReplyType.BLOCK_STATUS:
        if (length < 12 || (length - 4) % 8 !== 0) throw bad(`BLOCK_STATUS chunk of ${length} byte(s) (4 + a positive multiple of 8 required)`);
        break;
      default:
        if ((type & REPLY_TYPE_ERROR_BIT) === 0) throw bad(`unknown structured reply type ${type}`);
        if (length < 6) throw bad(`error chunk of ${length} byte(s) (at least 6 required)`);
        if (type === ReplyType.ERROR_OFFSET && length < 14) throw bad(`ERROR_OFFSET chunk of ${length} byte(s) (at least 14 required)`);
    }
    if (length > this.#maxBufferedPayload) {
      throw bad(`chunk payload of ${length} byte(s) exceeds the limit of ${this.#maxBufferedPayload}`);
    }
  }

  #startData(offset: number): void {
    this.#dataOffset = offset;
    this.#position = offset;
    this.#remaining = this.#dataLength;
    this.#state = State.Data;
    this.#handler.onOffsetDataStart(this.#handle, offset, this.#dataLength);
  }

  #finishData(): void {
    const handle = this.#handle;
    if (this.#state === State.SimpleData) {
      this.#state = State.Header;
      this.#handler.onSimpleReplyEnd(handle, this.#error);
      return;
    }
    this.#state = State.Header;
    this.#handler.onChunk({ type: 'offset-data', handle, flags: this.#flags, offset: this.#dataOffset, length: this.#dataLength });
  }

  #decode(payload: Buffer): ReplyChunk {
    const handle = this.#handle;
    const flags = this.#flags;
    const type = this.#type;
    switch (type) {
      case ReplyType.NONE:
        return { type: 'none', handle, flags };
      case ReplyType.OFFSET_HOLE: {
        const length = payload.readUInt32BE(8);
        if (length === 0) throw new NbdProtocolError('OFFSET_HOLE chunk with a hole size of 0', { excerpt: payload });
        return { type: 'offset-hole', handle, flags, offset: uint64(payload, 0), length };
      }
      case ReplyType.BLOCK_STATUS: {
        const count = (payload.length - 4) / 8;
        const descriptors = new Uint32Array(count * 2);
        for (let i = 0; i < count; i++) {
          const length = payload.readUInt32BE(4 + 8 * i);
          if (length === 0) throw new NbdProtocolError(`block status descriptor ${i} has a length of 0`, { excerpt: payload.subarray(0, 64) });
          descriptors[2 * i] = length;
          descriptors[2 * i + 1] = payload.readUInt32BE(8 + 8 * i);
        }
        return { type: 'block-status', handle, flags, contextId: payload.readUInt32BE(0), descriptors };
      }
      default: {
        // Error chunks: error, message length, message, then type-specific fields.
        const errno = payload.readUInt32BE(0);
        const messageLength = payload.readUInt16BE(4);
        const trailer = type === ReplyType.ERROR_OFFSET ? 8 : 0;
        if (6 + messageLength + trailer > payload.length) {
          throw new NbdProtocolError(`error chunk message of ${messageLength} byte(s) does not fit its ${payload.length}-byte payload`, {
            excerpt: payload,
          });
        }
        if (errno === 0) throw new NbdProtocolError('error chunk with an error value of 0', { excerpt: payload });
        let message: string;
        try {
          message = utf8.decode(payload.subarray(6, 6 + messageLength));
        } catch (error) {
          throw new NbdProtocolError('error chunk message is not valid UTF-8', { cause: error, excerpt: payload });
        }
        const offset = type === ReplyType.ERROR_OFFSET ? uint64(payload, 6 + messageLength) : undefined;
        return { type: 'error', handle, flags, chunkType: type, errno, message, offset };
      }
    }
  }
}
