import { Command, Info, Option, OPTION_MAGIC, REQUEST_MAGIC } from './constants.js';

// Everything the client sends, one function per message. No I/O: each returns the bytes.
// Numbers on the wire are big-endian; 64-bit offsets are written as two 32-bit halves so
// the hot path (requests) needs no BigInt.

export const REQUEST_SIZE = 28;
const OPTION_HEADER_SIZE = 16;

function writeUint64(buffer: Buffer, value: number, at: number): void {
  buffer.writeUInt32BE(Math.floor(value / 0x1_0000_0000), at);
  buffer.writeUInt32BE(value >>> 0, at + 4);
}

/** The 32-bit client flags that answer the server's greeting. */
export function serializeClientFlags(flags: number): Buffer {
  const buffer = Buffer.allocUnsafe(4);
  buffer.writeUInt32BE(flags >>> 0, 0);
  return buffer;
}

/** One option: IHAVEOPT, the option number, the data length, the data. */
export function serializeOption(option: number, data: Uint8Array = new Uint8Array(0)): Buffer {
  const buffer = Buffer.allocUnsafe(OPTION_HEADER_SIZE + data.length);
  buffer.writeBigUInt64BE(OPTION_MAGIC, 0);
  buffer.writeUInt32BE(option, 8);
  buffer.writeUInt32BE(data.length, 12);
  buffer.set(data, OPTION_HEADER_SIZE);
  return buffer;
}

function lengthPrefixed(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const buffer = Buffer.allocUnsafe(4 + bytes.length);
  buffer.writeUInt32BE(bytes.length, 0);
  bytes.copy(buffer, 4);
  return buffer;
}

/** NBD_OPT_GO (or NBD_OPT_INFO): export name, then the information requests. */
export function serializeGo(exportName: string, infoRequests: readonly number[] = [Info.BLOCK_SIZE], option: number = Option.GO): Buffer {
  const name = lengthPrefixed(exportName);
  const requests = Buffer.allocUnsafe(2 + 2 * infoRequests.length);
  requests.writeUInt16BE(infoRequests.length, 0);
  infoRequests.forEach((info, i) => requests.writeUInt16BE(info, 2 + 2 * i));
  return serializeOption(option, Buffer.concat([name, requests]));
}

export function serializeStructuredReply(): Buffer {
  return serializeOption(Option.STRUCTURED_REPLY);
}

/** NBD_OPT_SET_META_CONTEXT (or LIST_META_CONTEXT): export name, query count, queries. */
export function serializeMetaContext(exportName: string, queries: readonly string[], option: number = Option.SET_META_CONTEXT): Buffer {
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32BE(queries.length, 0);
  return serializeOption(option, Buffer.concat([lengthPrefixed(exportName), count, ...queries.map(lengthPrefixed)]));
}

export function serializeAbort(): Buffer {
  return serializeOption(Option.ABORT);
}

/**
 * Writes one 28-byte request into `target` at `at` (so a burst of requests can share one
 * buffer and one write). `handle` is the client's number for the request; it travels in the
 * low 32 bits of the 64-bit handle, the high half being zero.
 */
export function writeRequest(
  target: Buffer,
  at: number,
  type: number,
  flags: number,
  handle: number,
  offset: number,
  length: number,
): void {
  target.writeUInt32BE(REQUEST_MAGIC, at);
  target.writeUInt16BE(flags, at + 4);
  target.writeUInt16BE(type, at + 6);
  target.writeUInt32BE(0, at + 8);
  target.writeUInt32BE(handle >>> 0, at + 12);
  writeUint64(target, offset, at + 16);
  target.writeUInt32BE(length >>> 0, at + 24);
}

/** One request as its own buffer. */
export function serializeRequest(type: number, flags: number, handle: number, offset: number, length: number): Buffer {
  const buffer = Buffer.allocUnsafe(REQUEST_SIZE);
  writeRequest(buffer, 0, type, flags, handle, offset, length);
  return buffer;
}

export function serializeDisconnect(handle: number): Buffer {
  return serializeRequest(Command.DISC, 0, handle, 0, 0);
}
