// The server's side of the wire, for fake servers and parser tests: each function returns the
// bytes a server sends. Written from the protocol description, independently of src/, so a
// misreading of the specification in the client does not hide in a shared helper.

export const FIXED_NEWSTYLE = 1;
export const NO_ZEROES = 2;

function u16(value: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(value);
  return b;
}
function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value >>> 0);
  return b;
}
function u64(value: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(value));
  return b;
}

export function greeting(flags = FIXED_NEWSTYLE | NO_ZEROES): Buffer {
  return Buffer.concat([Buffer.from('NBDMAGIC'), Buffer.from('IHAVEOPT'), u16(flags)]);
}

export function optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([Buffer.from('0003e889045565a9', 'hex'), u32(option), u32(type), u32(data.length), data]);
}

export const OPT = { GO: 7, STRUCTURED_REPLY: 8, SET_META_CONTEXT: 10, ABORT: 2 } as const;
export const REP = { ACK: 1, INFO: 3, META_CONTEXT: 4, ERR_UNSUP: 0x80000001, ERR_UNKNOWN: 0x80000006 } as const;

export function infoExport(option: number, size: number, transmissionFlags: number): Buffer {
  return optionReply(option, REP.INFO, Buffer.concat([u16(0), u64(size), u16(transmissionFlags)]));
}
export function infoBlockSize(option: number, minimum: number, preferred: number, maximum: number): Buffer {
  return optionReply(option, REP.INFO, Buffer.concat([u16(3), u32(minimum), u32(preferred), u32(maximum)]));
}
export function metaContext(option: number, id: number, name: string): Buffer {
  return optionReply(option, REP.META_CONTEXT, Buffer.concat([u32(id), Buffer.from(name)]));
}
export function ack(option: number): Buffer {
  return optionReply(option, REP.ACK);
}
export function optionError(option: number, type: number, message = ''): Buffer {
  return optionReply(option, type, Buffer.from(message));
}

export const DONE = 1;
export const TYPE = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 0x8001, ERROR_OFFSET: 0x8002 } as const;

export function simpleReply(handle: number, error = 0, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([u32(0x67446698), u32(error), u64(handle), data]);
}

export function chunk(handle: number, flags: number, type: number, payload: Buffer): Buffer {
  return Buffer.concat([u32(0x668e33ef), u16(flags), u16(type), u64(handle), u32(payload.length), payload]);
}

export function none(handle: number): Buffer {
  return chunk(handle, DONE, TYPE.NONE, Buffer.alloc(0));
}
export function offsetData(handle: number, offset: number, data: Buffer, flags = 0): Buffer {
  return chunk(handle, flags, TYPE.OFFSET_DATA, Buffer.concat([u64(offset), data]));
}
export function offsetHole(handle: number, offset: number, length: number, flags = 0): Buffer {
  return chunk(handle, flags, TYPE.OFFSET_HOLE, Buffer.concat([u64(offset), u32(length)]));
}
export function blockStatus(handle: number, contextId: number, extents: readonly (readonly [number, number])[], flags = DONE): Buffer {
  return chunk(handle, flags, TYPE.BLOCK_STATUS, Buffer.concat([u32(contextId), ...extents.flatMap(([l, f]) => [u32(l), u32(f)])]));
}
export function errorChunk(handle: number, errno: number, message = '', offset?: number, flags = DONE): Buffer {
  const text = Buffer.from(message);
  const parts = [u32(errno), u16(text.length), text];
  if (offset !== undefined) parts.push(u64(offset));
  return chunk(handle, flags, offset === undefined ? TYPE.ERROR : TYPE.ERROR_OFFSET, Buffer.concat(parts));
}

/** A request as the client sends it, decoded. */
export interface WireRequest {
  flags: number;
  type: number;
  handle: number;
  offset: number;
  length: number;
}

export function decodeRequest(bytes: Buffer): WireRequest {
  if (bytes.readUInt32BE(0) !== 0x25609513) throw new Error(`bad request magic ${bytes.subarray(0, 4).toString('hex')}`);
  return {
    flags: bytes.readUInt16BE(4),
    type: bytes.readUInt16BE(6),
    handle: Number(bytes.readBigUInt64BE(8)),
    offset: Number(bytes.readBigUInt64BE(16)),
    length: bytes.readUInt32BE(24),
  };
}
