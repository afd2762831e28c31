import { QmpProtocolError } from './errors.js';

/** QEMU's own Python client allows 10 MiB; `query-qmp-schema` alone is several hundred KiB. */
export const DEFAULT_MAX_MESSAGE_SIZE = 10 * 1024 * 1024;

export interface QmpParserOptions {
  /** Largest message accepted, in bytes of UTF-8. Default 10 MiB. */
  maxMessageSize?: number;
}

const SPACE = 0x20;
const TAB = 0x09;
const LF = 0x0a;
const CR = 0x0d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

function excerpt(bytes: Buffer, start: number, end: number): string {
  const text = bytes.toString('utf8', start, Math.min(end, start + 200));
  return end - start > 200 ? `${text}...` : text;
}

/**
 * Assembles QMP messages from a byte stream cut into arbitrary chunks. It does no I/O:
 * the connection feeds it whatever the socket delivers and gets whole messages back.
 *
 * QEMU ends each message with a newline, but the stream is plain JSON text, so message
 * boundaries are found by tracking object nesting outside strings rather than by trusting
 * newlines (newlines only drive a fast path for complete lines, see `#wholeLines`). The
 * structural scan resumes where the previous chunk stopped, never from the start of the
 * message; bytes of an incomplete message are kept as the chunks they arrived in and joined once, when the
 * message completes, so a large reply costs one copy, not one per chunk. Decoding to text
 * happens only on whole messages, which is what keeps multi-byte UTF-8 characters split
 * across chunks intact (JSON's structural characters are ASCII and never occur inside a
 * multi-byte sequence).
 *
 * Malformed input or a message over the size limit throws a `QmpProtocolError`; after that
 * the parser stays failed and throws the same error on every call, because the stream can
 * no longer be resynchronised with certainty.
 */
export class QmpMessageParser {
  readonly maxMessageSize: number;

  // Chunks (or chunk tails) holding the incomplete message, and their total length.
  #held: Buffer[] = [];
  #heldBytes = 0;
  #inMessage = false;
  #depth = 0;
  #inString = false;
  #escaped = false;
  #failure: QmpProtocolError | undefined;

  constructor(options: QmpParserOptions = {}) {
    const max = options.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE;
    if (!Number.isSafeInteger(max) || max <= 0) {
      throw new RangeError(`maxMessageSize must be a positive integer, got ${String(max)}`);
    }
    this.maxMessageSize = max;
  }

  /** Bytes of a message that has started but not finished. */
  get bufferedBytes(): number {
    return this.#heldBytes;
  }

  /** True while part of a message has been received and the rest has not. */
  get inMessage(): boolean {
    return this.#inMessage;
  }

  /**
   * Feeds one chunk and returns the messages it completed (parsed JSON values), in order.
   * Throws `QmpProtocolError` on malformed JSON or an oversize message.
   */
  push(chunk: Uint8Array | string): unknown[] {
    if (this.#failure) throw this.#failure;
    const bytes = typeof chunk === 'string'
      ? Buffer.from(chunk, 'utf8')
      : Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const messages: unknown[] = [];
    try {
      const from = this.#inMessage ? 0 : this.#wholeLines(bytes, messages);
      if (from < bytes.length) this.#scan(bytes, from, messages);
    } catch (error) {
      this.#held = [];
      this.#heldBytes = 0;
      this.#failure = error instanceof QmpProtocolError
        ? error
        : new QmpProtocolError('failed to parse QMP stream', { cause: error });
      throw this.#failure;
    }
    return messages;
  }

  /**
   * Declares the end of the stream. Throws `QmpProtocolError` if it ends inside a message,
   * which is what a server closing mid-reply looks like.
   */
  end(): void {
    if (this.#failure) throw this.#failure;
    if (this.#inMessage) {
      const held = this.#heldBytes;
      const joined = Buffer.concat(this.#held, held);
      this.#held = [];
      this.#heldBytes = 0;
      this.#failure = new QmpProtocolError(`stream ended inside a message after ${held} byte(s)`, {
        excerpt: excerpt(joined, 0, joined.length),
      });
      throw this.#failure;
    }
  }

  /**
   * The fast path for what QEMU actually sends, one message per line: starting between
   * messages, a line that parses as one JSON object is exactly the next message (JSON's
   * grammar leaves nothing but whitespace after it), so it needs no byte-by-byte scan;
   * `indexOf` and `JSON.parse` run natively. At the first line that does not parse (a
   * message continued on the next line, two messages on one line, garbage) or a chunk
   * ending mid-line, it returns the offset where the structural scan must take over.
   */
  #wholeLines(bytes: Buffer, out: unknown[]): number {
    const length = bytes.length;
    const max = this.maxMessageSize;
    let from = 0;
    while (from < length) {
      const newline = bytes.indexOf(LF, from);
      if (newline < 0 || newline - from > max) return from;
      let first = from;
      while (first < newline && isSpace(bytes[first]!)) first++;
      if (first < newline) {
        if (bytes[first] !== OPEN_BRACE) return from;
        let value: unknown;
        try {
          value = JSON.parse(bytes.toString('utf8', first, newline));
        } catch {
          return from;
        }
        if (typeof value !== 'object' || value === null || Array.isArray(value)) return from;
        out.push(value);
      }
      from = newline + 1;
    }
    return from;
  }

  #scan(bytes: Buffer, from: number, out: unknown[]): void {
    const length = bytes.length;
    const max = this.maxMessageSize;
    let depth = this.#depth;
    let inString = this.#inString;
    let escaped = this.#escaped;
    let inMessage = this.#inMessage;
    // Where the current message starts in this chunk (0 when it began in an earlier one).
    let start = from;

    for (let i = from; i < length; i++) {
      const c = bytes[i]!;
      if (inString) {
        if (escaped) escaped = false;
        else if (c === BACKSLASH) escaped = true;
        else if (c === QUOTE) inString = false;
        continue;
      }
      if (!inMessage) {
        if (c === OPEN_BRACE) {
          inMessage = true;
          depth = 1;
          start = i;
        } else if (!isSpace(c)) {
          throw new QmpProtocolError(`malformed QMP stream: expected '{' but found ${JSON.stringify(String.fromCharCode(c))}`, {
            excerpt: excerpt(bytes, i, length),
          });
        }
        continue;
      }
      if (c === QUOTE) inString = true;
      else if (c === OPEN_BRACE || c === OPEN_BRACKET) depth++;
      else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
        if (--depth === 0) {
          inMessage = false;
          const size = this.#heldBytes + (i + 1 - start);
          if (size > max) throw this.#oversize(size);
          let text: string;
          if (this.#heldBytes === 0) {
            text = bytes.toString('utf8', start, i + 1);
          } else {
            this.#held.push(bytes.subarray(0, i + 1));
            text = Buffer.concat(this.#held, size).toString('utf8');
            this.#held = [];
            this.#heldBytes = 0;
          }
          out.push(parseMessage(text));
        }
      }
    }

    if (inMessage) {
      const tail = length - start;
      if (this.#heldBytes + tail > max) throw this.#oversize(this.#heldBytes + tail);
      if (tail > 0) {
        this.#held.push(start === 0 ? bytes : bytes.subarray(start));
        this.#heldBytes += tail;
      }
    }
    this.#depth = depth;
    this.#inString = inString;
    this.#escaped = escaped;
    this.#inMessage = inMessage;
  }

  #oversize(size: number): QmpProtocolError {
    return new QmpProtocolError(
      `QMP message exceeds the size limit of ${this.maxMessageSize} bytes (at least ${size} bytes received)`,
    );
  }
}

function isSpace(c: number): boolean {
  return c === SPACE || c === CR || c === TAB || c === LF;
}

function parseMessage(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new QmpProtocolError(`malformed JSON in QMP message: ${(error as Error).message}`, {
      cause: error,
      excerpt: text.length > 200 ? `${text.slice(0, 200)}...` : text,
    });
  }
}
