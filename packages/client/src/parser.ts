import { QmpProtocolError } from './errors.js';

/** QEMU's own Python client allows 10 MiB; `query-qmp-schema` alone is several hundred KiB. */
export const DEFAULT_MAX_MESSAGE_SIZE = 10 * 1024 * 1024;

/**
 * QEMU's JSON parser refuses input nested deeper than 1024; nothing QEMU sends comes close
 * (its deepest replies, `query-block` with a backing chain, nest two levels per image).
 */
export const DEFAULT_MAX_DEPTH = 1024;

export interface QmpParserOptions {
  /** Largest message accepted, in bytes of UTF-8. Default 10 MiB. */
  maxMessageSize?: number;
  /** Deepest nesting of objects and arrays accepted. Default 1024. */
  maxDepth?: number;
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
const COMMA = 0x2c;
const COLON = 0x3a;
const MINUS = 0x2d;
const PLUS = 0x2b;
const DOT = 0x2e;
const DIGIT_0 = 0x30;
const DIGIT_9 = 0x39;
const LOWER_E = 0x65;
const UPPER_E = 0x45;

// What the scanner expects next. Between messages only '{' may start one (a QMP message
// is always an object); inside one, the states follow JSON's grammar token by token.
const BETWEEN = 0;
const VALUE = 1; // after ':' or ',' in an array
const ARRAY_FIRST = 2; // after '[': a value or ']'
const OBJECT_FIRST = 3; // after '{': a key or '}'
const KEY = 4; // after ',' in an object
const COLON_NEXT = 5; // after a key
const AFTER_VALUE = 6; // ',' or the closer of the innermost container
const STRING = 7;
const STRING_ESCAPE = 8; // after a backslash
const STRING_HEX = 9; // inside \uXXXX
const NUMBER_MINUS = 10; // after '-'
const NUMBER_ZERO = 11; // a leading 0
const NUMBER_INT = 12;
const NUMBER_DOT = 13;
const NUMBER_FRACTION = 14;
const NUMBER_E = 15;
const NUMBER_E_SIGN = 16;
const NUMBER_EXPONENT = 17;
const LITERAL = 18; // true, false, null

const IN_OBJECT = 1;
const IN_ARRAY = 2;

const LITERALS: Readonly<Record<number, string>> = { 0x74: 'true', 0x66: 'false', 0x6e: 'null' };

const EXPECTED: Readonly<Record<number, string>> = {
  [BETWEEN]: "'{' (the start of a QMP message)",
  [VALUE]: 'a value',
  [ARRAY_FIRST]: "a value or ']'",
  [OBJECT_FIRST]: "a member name or '}'",
  [KEY]: 'a member name',
  [COLON_NEXT]: "':'",
  [AFTER_VALUE]: "',' or the end of the object or array",
  [STRING]: 'string contents (control characters must be escaped)',
  [STRING_ESCAPE]: 'an escape character',
  [STRING_HEX]: 'a hex digit',
  [NUMBER_MINUS]: 'a digit',
  [NUMBER_DOT]: 'a digit',
  [NUMBER_E]: "a digit or sign",
  [NUMBER_E_SIGN]: 'a digit',
  [LITERAL]: 'true, false or null',
};

function isSpace(c: number): boolean {
  return c === SPACE || c === LF || c === CR || c === TAB;
}

function isDigit(c: number): boolean {
  return c >= DIGIT_0 && c <= DIGIT_9;
}

function isHex(c: number): boolean {
  return isDigit(c) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66);
}

function isEscape(c: number): boolean {
  // " \ / b f n r t (u is handled separately)
  return c === QUOTE || c === BACKSLASH || c === 0x2f || c === 0x62 || c === 0x66 || c === 0x6e || c === 0x72 || c === 0x74;
}

function excerpt(bytes: Buffer, start: number, end: number): string {
  const text = bytes.toString('utf8', start, Math.min(end, start + 200));
  return end - start > 200 ? `${text}...` : text;
}

function describeByte(c: number): string {
  return c >= 0x20 && c < 0x7f ? JSON.stringify(String.fromCharCode(c)) : `byte 0x${c.toString(16).padStart(2, '0')}`;
}

/**
 * Assembles QMP messages from a byte stream cut into arbitrary chunks. It does no I/O:
 * the connection feeds it whatever the socket delivers and gets whole messages back.
 *
 * QEMU ends each message with a newline, so a complete line is tried first with the native
 * `JSON.parse` (see `#wholeLines`). Everything else (a message split across chunks, spread
 * over lines as QEMU's `pretty=on` writes it, several on one line, or garbage) goes through
 * `#scan`, an incremental check of JSON's grammar that resumes where the previous chunk
 * stopped. Because it follows the grammar, not just the nesting, input that cannot be the
 * start of a JSON object fails at the first byte that rules it out: `{"return": {,` is an
 * error at the comma, not a message that never ends. Bytes of an incomplete message are kept
 * as the chunks they arrived in and joined once, when the message completes; decoding to text
 * happens only on whole messages, which keeps multi-byte UTF-8 characters split across chunks
 * intact (JSON's structural characters are ASCII and never occur inside a multi-byte sequence).
 *
 * Malformed input, a message over the size limit or nested deeper than `maxDepth` throws a
 * `QmpProtocolError`; after that the parser stays failed and throws the same error on every
 * call, because the stream can no longer be resynchronised with certainty.
 */
export class QmpMessageParser {
  readonly maxMessageSize: number;
  readonly maxDepth: number;

  // Chunks (or chunk tails) holding the incomplete message, and their total length.
  #held: Buffer[] = [];
  #heldBytes = 0;
  #inMessage = false;
  #state = BETWEEN;
  #depth = 0;
  // Container kinds by depth (index 1 is the message object itself).
  readonly #stack: Uint8Array;
  #stringIsKey = false;
  #hexLeft = 0;
  #literal = '';
  #literalAt = 0;
  #failure: QmpProtocolError | undefined;

  constructor(options: QmpParserOptions = {}) {
    const max = options.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE;
    if (!Number.isSafeInteger(max) || max <= 0) {
      throw new RangeError(`maxMessageSize must be a positive integer, got ${String(max)}`);
    }
    const depth = options.maxDepth ?? DEFAULT_MAX_DEPTH;
    if (!Number.isSafeInteger(depth) || depth < 1 || depth > 1_000_000) {
      throw new RangeError(`maxDepth must be an integer from 1 to 1000000, got ${String(depth)}`);
    }
    this.maxMessageSize = max;
    this.maxDepth = depth;
    this.#stack = new Uint8Array(depth + 1);
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
   * Feeds one chunk and returns the messages it completed (parsed JSON objects), in order.
   * Malformed JSON, an oversize or too deeply nested message throws a `QmpProtocolError`,
   * except when the chunk completed messages before the fault: those are returned (they
   * arrived intact, and in order before it), `failure` is set, and the next call throws.
   */
  push(chunk: Uint8Array | string): unknown[] {
    if (this.#failure) throw this.#failure;
    const bytes = typeof chunk === 'string'
      ? Buffer.from(chunk, 'utf8')
      : Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const messages: unknown[] = [];
    try {
      const length = bytes.length;
      let at = this.#inMessage ? this.#scan(bytes, 0, messages) : 0;
      while (at < length) {
        at = this.#wholeLines(bytes, at, messages);
        if (at < length) at = this.#scan(bytes, at, messages);
      }
    } catch (error) {
      this.#held = [];
      this.#heldBytes = 0;
      this.#failure = error instanceof QmpProtocolError
        ? error
        : new QmpProtocolError('failed to parse QMP stream', { cause: error });
      if (messages.length === 0) throw this.#failure;
    }
    return messages;
  }

  /** The protocol error that stopped the parser, if any; every later call throws it. */
  get failure(): QmpProtocolError | undefined {
    return this.#failure;
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
   * `indexOf` and `JSON.parse` run natively. Lines too short to nest past `maxDepth` need no
   * depth check either, which covers nearly every reply. At the first line that does not
   * parse (a message continued on the next line, two messages on one line, garbage) or a
   * chunk ending mid-line, it returns the offset where the grammar scan must take over.
   */
  #wholeLines(bytes: Buffer, from: number, out: unknown[]): number {
    const length = bytes.length;
    const max = this.maxMessageSize;
    const shallow = 2 * this.maxDepth;
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
        // A line that parsed and starts with '{' is an object. Nesting d deep takes 2d bytes.
        if (newline - first > shallow) this.#checkDepth(bytes, first, newline);
        out.push(value);
      }
      from = newline + 1;
    }
    return from;
  }

  /** Throws if the valid JSON text in bytes[from, to) nests deeper than `maxDepth`. */
  #checkDepth(bytes: Buffer, from: number, to: number): void {
    const max = this.maxDepth;
    let depth = 0;
    let inString = false;
    for (let i = from; i < to; i++) {
      const c = bytes[i]!;
      if (inString) {
        if (c === BACKSLASH) i++;
        else if (c === QUOTE) inString = false;
      } else if (c === QUOTE) {
        inString = true;
      } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
        if (++depth > max) throw this.#tooDeep(bytes, from, i + 1);
      } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
        depth--;
      }
    }
  }

  /**
   * Checks bytes from `from` against JSON's grammar, resuming the state left by the previous
   * chunk, until one message completes (returning the offset after it) or the chunk ends
   * (returning its length, with the incomplete message held).
   */
  #scan(bytes: Buffer, from: number, out: unknown[]): number {
    const length = bytes.length;
    const stack = this.#stack;
    const maxDepth = this.maxDepth;
    let state = this.#state;
    let depth = this.#depth;
    // Where the current message starts in this chunk (0 when it began in an earlier one).
    let start = from;

    let i = from;
    for (; i < length; i++) {
      const c = bytes[i]!;
      switch (state) {
        case STRING: {
          // The common case, plain string bytes, in a tight loop.
          let j = i;
          let d = c;
          while (d !== QUOTE && d !== BACKSLASH && d >= SPACE) {
            if (++j === length) break;
            d = bytes[j]!;
          }
          i = j;
          if (j === length) continue;
          if (d === QUOTE) state = this.#stringIsKey ? COLON_NEXT : AFTER_VALUE;
          else if (d === BACKSLASH) state = STRING_ESCAPE;
          else throw this.#unexpected(bytes, start, i, state);
          continue;
        }
        case STRING_ESCAPE:
          if (c === 0x75) {
            state = STRING_HEX;
            this.#hexLeft = 4;
          } else if (isEscape(c)) {
            state = STRING;
          } else {
            throw this.#unexpected(bytes, start, i, state);
          }
          continue;
        case STRING_HEX:
          if (!isHex(c)) throw this.#unexpected(bytes, start, i, state);
          if (--this.#hexLeft === 0) state = STRING;
          continue;
        case BETWEEN:
          if (isSpace(c)) continue;
          if (c !== OPEN_BRACE) throw this.#unexpected(bytes, i, i, state);
          this.#inMessage = true;
          start = i;
          depth = 1;
          stack[1] = IN_OBJECT;
          state = OBJECT_FIRST;
          continue;
        case OBJECT_FIRST:
        case KEY:
          if (isSpace(c)) continue;
          if (c === QUOTE) {
            this.#stringIsKey = true;
            state = STRING;
            continue;
          }
          if (c === CLOSE_BRACE && state === OBJECT_FIRST) break; // closes below
          throw this.#unexpected(bytes, start, i, state);
        case COLON_NEXT:
          if (isSpace(c)) continue;
          if (c !== COLON) throw this.#unexpected(bytes, start, i, state);
          state = VALUE;
          continue;
        case NUMBER_ZERO:
        case NUMBER_INT:
        case NUMBER_FRACTION:
        case NUMBER_EXPONENT:
          if (isDigit(c)) {
            if (state === NUMBER_ZERO) throw this.#unexpected(bytes, start, i, state);
            continue;
          }
          if (c === DOT && (state === NUMBER_ZERO || state === NUMBER_INT)) {
            state = NUMBER_DOT;
            continue;
          }
          if ((c === LOWER_E || c === UPPER_E) && state !== NUMBER_EXPONENT) {
            state = NUMBER_E;
            continue;
          }
          // The number ended; this byte is whatever follows it.
          state = AFTER_VALUE;
          i--;
          continue;
        case NUMBER_MINUS:
          if (c === DIGIT_0) state = NUMBER_ZERO;
          else if (isDigit(c)) state = NUMBER_INT;
          else throw this.#unexpected(bytes, start, i, state);
          continue;
        case NUMBER_DOT:
          if (!isDigit(c)) throw this.#unexpected(bytes, start, i, state);
          state = NUMBER_FRACTION;
          continue;
        case NUMBER_E:
          if (c === PLUS || c === MINUS) state = NUMBER_E_SIGN;
          else if (isDigit(c)) state = NUMBER_EXPONENT;
          else throw this.#unexpected(bytes, start, i, state);
          continue;
        case NUMBER_E_SIGN:
          if (!isDigit(c)) throw this.#unexpected(bytes, start, i, state);
          state = NUMBER_EXPONENT;
          continue;
        case LITERAL:
          if (c !== this.#literal.charCodeAt(this.#literalAt)) throw this.#unexpected(bytes, start, i, state);
          if (++this.#literalAt === this.#literal.length) state = AFTER_VALUE;
          continue;
        case AFTER_VALUE:
          if (isSpace(c)) continue;
          if (c === COMMA) {
            state = stack[depth] === IN_OBJECT ? KEY : VALUE;
            continue;
          }
          if ((c === CLOSE_BRACE && stack[depth] === IN_OBJECT) || (c === CLOSE_BRACKET && stack[depth] === IN_ARRAY)) break;
          throw this.#unexpected(bytes, start, i, state);
        case VALUE:
        case ARRAY_FIRST:
          if (isSpace(c)) continue;
          if (c === CLOSE_BRACKET && state === ARRAY_FIRST) break;
          if (c === QUOTE) {
            this.#stringIsKey = false;
            state = STRING;
          } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
            if (depth >= maxDepth) throw this.#tooDeep(bytes, start, i + 1);
            stack[++depth] = c === OPEN_BRACE ? IN_OBJECT : IN_ARRAY;
            state = c === OPEN_BRACE ? OBJECT_FIRST : ARRAY_FIRST;
          } else if (c === MINUS) {
            state = NUMBER_MINUS;
          } else if (c === DIGIT_0) {
            state = NUMBER_ZERO;
          } else if (isDigit(c)) {
            state = NUMBER_INT;
          } else {
            const literal = LITERALS[c];
            if (literal === undefined) throw this.#unexpected(bytes, start, i, state);
            this.#literal = literal;
            this.#literalAt = 1;
            state = LITERAL;
          }
          continue;
        default:
          throw new QmpProtocolError(`internal parser state ${state}`);
      }
      // Only the closers of a container reach here.
      if (--depth > 0) {
        state = AFTER_VALUE;
        continue;
      }
      // The message is complete.
      const end = i + 1;
      const size = this.#heldBytes + (end - start);
      if (size > this.maxMessageSize) throw this.#oversize(size);
      let text: string;
      if (this.#heldBytes === 0) {
        text = bytes.toString('utf8', start, end);
      } else {
        this.#held.push(bytes.subarray(0, end));
        text = Buffer.concat(this.#held, size).toString('utf8');
        this.#held = [];
        this.#heldBytes = 0;
      }
      this.#inMessage = false;
      this.#state = BETWEEN;
      this.#depth = 0;
      out.push(parseMessage(text));
      return end;
    }

    if (this.#inMessage) {
      const tail = length - start;
      if (this.#heldBytes + tail > this.maxMessageSize) throw this.#oversize(this.#heldBytes + tail);
      if (tail > 0) {
        this.#held.push(start === 0 ? bytes : bytes.subarray(start));
        this.#heldBytes += tail;
      }
    }
    this.#state = state;
    this.#depth = depth;
    return length;
  }

  #unexpected(bytes: Buffer, start: number, at: number, state: number): QmpProtocolError {
    const c = bytes[at]!;
    let text: string;
    let where = '';
    if (!this.#inMessage) {
      text = excerpt(bytes, at, bytes.length);
    } else {
      const offset = this.#heldBytes + (at - start);
      where = ` (byte ${offset} of the message)`;
      // The message's start, and when the error is further in, the bytes just before it.
      text = offset < 200
        ? this.#messageHead(bytes, start, offset + 1)
        : `${this.#messageHead(bytes, start, 100)}...${bytes.toString('utf8', Math.max(start, at - 80), at + 1)}`;
    }
    return new QmpProtocolError(
      `malformed QMP stream: ${describeByte(c)} where ${EXPECTED[state] ?? 'something else'} was expected${where}`,
      { excerpt: text },
    );
  }

  #tooDeep(bytes: Buffer, start: number, end: number): QmpProtocolError {
    return new QmpProtocolError(`QMP message nested deeper than ${this.maxDepth} levels`, {
      excerpt: `${this.#messageHead(bytes, start, Math.min(200, this.#heldBytes + (end - start)))}...`,
    });
  }

  /** The first `count` bytes of the current message (held chunks first), as text. */
  #messageHead(bytes: Buffer, start: number, count: number): string {
    const joined = Buffer.concat([...this.#held, bytes.subarray(start, start + count)]);
    return joined.toString('utf8', 0, Math.min(count, joined.length));
  }

  #oversize(size: number): QmpProtocolError {
    return new QmpProtocolError(
      `QMP message exceeds the size limit of ${this.maxMessageSize} bytes (at least ${size} bytes received)`,
    );
  }
}

function parseMessage(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    // Unreachable while the scan follows JSON's grammar exactly; kept as the last word.
    throw new QmpProtocolError(`malformed JSON in QMP message: ${(error as Error).message}`, {
      cause: error,
      excerpt: text.length > 200 ? `${text.slice(0, 200)}...` : text,
    });
  }
}
