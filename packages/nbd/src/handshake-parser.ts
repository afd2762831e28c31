import {
  INIT_MAGIC,
  Info,
  OLDSTYLE_MAGIC,
  Option,
  OPTION_MAGIC,
  OPTION_REPLY_MAGIC,
  OptionReply,
} from './constants.js';
import { NbdProtocolError } from './errors.js';

/** What the server sends during the handshake, decoded. */
export type HandshakeMessage =
  | { kind: 'greeting'; handshakeFlags: number }
  | { kind: 'ack'; option: number }
  | { kind: 'server'; option: number; name: string; details: string }
  | { kind: 'info-export'; option: number; size: number; transmissionFlags: number }
  | { kind: 'info-name'; option: number; name: string }
  | { kind: 'info-description'; option: number; description: string }
  | { kind: 'info-block-size'; option: number; minimum: number; preferred: number; maximum: number }
  /** An information type this client does not know; the specification says to ignore it. */
  | { kind: 'info-other'; option: number; infoType: number }
  | { kind: 'meta-context'; option: number; id: number; name: string }
  /** An `NBD_REP_ERR_*` reply (bit 31 set), with the server's message if any. */
  | { kind: 'error'; option: number; replyType: number; message: string };

const GREETING_SIZE = 18;
const REPLY_HEADER_SIZE = 20;
/**
 * Largest option reply accepted. Every reply the client asks for carries at most a string
 * (4096 bytes by the specification) and a few numbers; anything bigger is not a reply this
 * client could have asked for, and is refused before it is buffered.
 */
export const MAX_OPTION_REPLY_DATA = 16 * 1024;

const utf8 = new TextDecoder('utf-8', { fatal: true });

function text(bytes: Buffer, what: string): string {
  try {
    return utf8.decode(bytes);
  } catch (error) {
    throw new NbdProtocolError(`${what} is not valid UTF-8`, { cause: error, excerpt: bytes });
  }
}

/**
 * Decodes the server's side of the fixed newstyle handshake from a byte stream cut into
 * arbitrary chunks: the greeting, then option replies. It does no I/O. After the successful
 * reply to NBD_OPT_GO (its NBD_REP_ACK) the transmission phase begins, so the parser stops
 * there and leaves any further bytes for `takeRemainder()`.
 *
 * Malformed input throws an `NbdProtocolError`; the parser then stays failed.
 */
export class HandshakeParser {
  #buffer: Buffer = Buffer.alloc(0);
  #greeted = false;
  #done = false;
  #failure: NbdProtocolError | undefined;

  /** True once the reply that ends the handshake (ACK to NBD_OPT_GO) was decoded. */
  get done(): boolean {
    return this.#done;
  }

  push(chunk: Uint8Array): HandshakeMessage[] {
    if (this.#failure) throw this.#failure;
    // Handshake traffic is a few hundred bytes; joining chunks keeps this simple, and the
    // bytes are copied, so the caller may reuse `chunk`.
    this.#buffer = this.#buffer.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.#buffer, chunk]);
    const out: HandshakeMessage[] = [];
    try {
      this.#parse(out);
    } catch (error) {
      this.#failure = NbdProtocolError.isInstance(error)
        ? error
        : new NbdProtocolError('failed to decode the handshake', { cause: error });
      throw this.#failure;
    }
    return out;
  }

  /** Bytes received after the handshake ended (they belong to the transmission phase). */
  takeRemainder(): Buffer {
    const rest = this.#buffer;
    this.#buffer = Buffer.alloc(0);
    return rest;
  }

  #parse(out: HandshakeMessage[]): void {
    let at = 0;
    const buffer = this.#buffer;
    if (!this.#greeted) {
      if (buffer.length < GREETING_SIZE) {
        // Check what is there already, so garbage is refused without waiting for more.
        this.#checkGreetingPrefix(buffer);
        return;
      }
      const initMagic = buffer.readBigUInt64BE(0);
      if (initMagic !== INIT_MAGIC) {
        throw new NbdProtocolError("bad magic in the server's greeting (expected NBDMAGIC)", { excerpt: buffer.subarray(0, 16) });
      }
      const second = buffer.readBigUInt64BE(8);
      if (second === OLDSTYLE_MAGIC) {
        throw new NbdProtocolError('the server uses the old-style handshake, which cannot select exports or negotiate options');
      }
      if (second !== OPTION_MAGIC) {
        throw new NbdProtocolError("bad magic in the server's greeting (expected IHAVEOPT)", { excerpt: buffer.subarray(0, 16) });
      }
      out.push({ kind: 'greeting', handshakeFlags: buffer.readUInt16BE(16) });
      this.#greeted = true;
      at = GREETING_SIZE;
    }
    while (!this.#done && buffer.length - at >= REPLY_HEADER_SIZE) {
      if (buffer.readBigUInt64BE(at) !== OPTION_REPLY_MAGIC) {
        throw new NbdProtocolError('bad magic in an option reply', { excerpt: buffer.subarray(at, at + REPLY_HEADER_SIZE) });
      }
      const option = buffer.readUInt32BE(at + 8);
      const type = buffer.readUInt32BE(at + 12);
      const length = buffer.readUInt32BE(at + 16);
      if (length > MAX_OPTION_REPLY_DATA) {
        throw new NbdProtocolError(`option reply of ${length} bytes exceeds the limit of ${MAX_OPTION_REPLY_DATA}`, {
          excerpt: buffer.subarray(at, at + REPLY_HEADER_SIZE),
        });
      }
      if (buffer.length - at - REPLY_HEADER_SIZE < length) break;
      const data = buffer.subarray(at + REPLY_HEADER_SIZE, at + REPLY_HEADER_SIZE + length);
      const message = decodeOptionReply(option, type, data);
      out.push(message);
      at += REPLY_HEADER_SIZE + length;
      if (message.kind === 'ack' && option === Option.GO) this.#done = true;
    }
    this.#buffer = at === 0 ? buffer : buffer.subarray(at);
  }

  #checkGreetingPrefix(buffer: Buffer): void {
    const expected = Buffer.alloc(8);
    expected.writeBigUInt64BE(INIT_MAGIC, 0);
    const n = Math.min(buffer.length, 8);
    if (!buffer.subarray(0, n).equals(expected.subarray(0, n))) {
      throw new NbdProtocolError("bad magic in the server's greeting (expected NBDMAGIC)", { excerpt: buffer });
    }
  }
}

function decodeOptionReply(option: number, type: number, data: Buffer): HandshakeMessage {
  if (type >= 0x8000_0000) {
    return { kind: 'error', option, replyType: type, message: data.length === 0 ? '' : text(data, 'an error message') };
  }
  const invalid = (what: string): NbdProtocolError =>
    new NbdProtocolError(`malformed ${what} reply (${data.length} byte(s) of data)`, { excerpt: data });
  switch (type) {
    case OptionReply.ACK:
      if (data.length !== 0) throw invalid('NBD_REP_ACK');
      return { kind: 'ack', option };
    case OptionReply.SERVER: {
      if (data.length < 4) throw invalid('NBD_REP_SERVER');
      const nameLength = data.readUInt32BE(0);
      if (nameLength > data.length - 4) throw invalid('NBD_REP_SERVER');
      return {
        kind: 'server',
        option,
        name: text(data.subarray(4, 4 + nameLength), 'an export name'),
        details: text(data.subarray(4 + nameLength), 'export details'),
      };
    }
    case OptionReply.INFO: {
      if (data.length < 2) throw invalid('NBD_REP_INFO');
      const infoType = data.readUInt16BE(0);
      switch (infoType) {
        case Info.EXPORT: {
          if (data.length !== 12) throw invalid('NBD_INFO_EXPORT');
          const high = data.readUInt32BE(2);
          const size = high * 0x1_0000_0000 + data.readUInt32BE(6);
          if (!Number.isSafeInteger(size)) {
            throw new NbdProtocolError(`export size ${data.readBigUInt64BE(2)} is beyond what this client can address (2^53 - 1 bytes)`);
          }
          return { kind: 'info-export', option, size, transmissionFlags: data.readUInt16BE(10) };
        }
        case Info.NAME:
          return { kind: 'info-name', option, name: text(data.subarray(2), 'the export name') };
        case Info.DESCRIPTION:
          return { kind: 'info-description', option, description: text(data.subarray(2), 'the export description') };
        case Info.BLOCK_SIZE:
          if (data.length !== 14) throw invalid('NBD_INFO_BLOCK_SIZE');
          return {
            kind: 'info-block-size',
            option,
            minimum: data.readUInt32BE(2),
            preferred: data.readUInt32BE(6),
            maximum: data.readUInt32BE(10),
          };
        default:
          return { kind: 'info-other', option, infoType };
      }
    }
    case OptionReply.META_CONTEXT:
      if (data.length < 5) throw invalid('NBD_REP_META_CONTEXT');
      return { kind: 'meta-context', option, id: data.readUInt32BE(0), name: text(data.subarray(4), 'a metadata context name') };
    default:
      throw new NbdProtocolError(`unknown option reply type ${type} to option ${option}`, { excerpt: data });
  }
}
