import * as wire from '../test/support/wire.js';
import { NbdProtocolError } from './errors.js';
import { ReplyParser, type ReplyChunk, type ReplyHandler } from './reply-parser.js';

function recorder(simpleLength = 0): { handler: ReplyHandler; chunks: ReplyChunk[]; data: Buffer[] } {
  const chunks: ReplyChunk[] = [];
  const data: Buffer[] = [];
  return {
    chunks,
    data,
    handler: {
      onSimpleReply: () => simpleLength,
      onSimpleData: (_h, _p, b) => data.push(Buffer.from(b)),
      onSimpleReplyEnd: () => undefined,
      onChunkHeader: () => undefined,
      onOffsetDataStart: () => undefined,
      onOffsetData: (_h, _o, b) => data.push(Buffer.from(b)),
      onChunk: (c) => chunks.push(c),
    },
  };
}

function failure(bytes: Buffer, options?: { maxBufferedPayload?: number }): NbdProtocolError {
  const parser = new ReplyParser(recorder().handler, options);
  try {
    parser.push(bytes);
    parser.end();
  } catch (error) {
    expect(NbdProtocolError.isInstance(error)).toBe(true);
    // The parser stays failed: the stream cannot be trusted after a violation.
    expect(() => parser.push(wire.none(1))).toThrow(error as Error);
    return error as NbdProtocolError;
  }
  throw new Error('expected a protocol error');
}

describe('reply parser refuses what the protocol forbids', () => {
  test('bad magic is refused as soon as its 4 bytes are in, with an excerpt', () => {
    const parser = new ReplyParser(recorder().handler);
    parser.push(Buffer.from([0xde, 0xad]));
    expect(() => parser.push(Buffer.from([0xbe, 0xef]))).toThrow(/bad reply magic 0xdeadbeef/);
    const error = failure(Buffer.concat([Buffer.from('0badc0de', 'hex'), Buffer.alloc(40)]));
    expect(error.excerpt).toMatch(/^0badc0de/);
  });

  test('impossible chunk lengths are refused from the header, before any payload', () => {
    const header = (type: number, length: number, flags = 1): Buffer => {
      const b = wire.chunk(7, flags, type, Buffer.alloc(0));
      b.writeUInt32BE(length, 16);
      return b;
    };
    expect(failure(header(wire.TYPE.NONE, 4)).message).toMatch(/NONE chunk with a payload/);
    expect(failure(header(wire.TYPE.NONE, 0, 0)).message).toMatch(/without NBD_REPLY_FLAG_DONE/);
    expect(failure(header(wire.TYPE.OFFSET_DATA, 8)).message).toMatch(/at least 9/);
    expect(failure(header(wire.TYPE.OFFSET_HOLE, 16)).message).toMatch(/exactly 12/);
    expect(failure(header(wire.TYPE.BLOCK_STATUS, 4)).message).toMatch(/positive multiple of 8/);
    expect(failure(header(wire.TYPE.BLOCK_STATUS, 13)).message).toMatch(/positive multiple of 8/);
    expect(failure(header(wire.TYPE.ERROR, 5)).message).toMatch(/at least 6/);
    expect(failure(header(wire.TYPE.ERROR_OFFSET, 13)).message).toMatch(/at least 14/);
    expect(failure(header(3, 0)).message).toMatch(/unknown structured reply type 3/);
    // An oversized buffered chunk is refused without waiting for (or allocating) its 4 GiB.
    expect(failure(header(wire.TYPE.BLOCK_STATUS, 0xffff_fffc)).message).toMatch(/exceeds the limit/);
    expect(failure(header(wire.TYPE.ERROR, 2048), { maxBufferedPayload: 1024 }).message).toMatch(/exceeds the limit of 1024/);
  });

  test('payload contents are checked', () => {
    expect(failure(wire.offsetHole(1, 0, 0)).message).toMatch(/hole size of 0/);
    expect(failure(wire.blockStatus(1, 0, [[512, 0], [0, 1]])).message).toMatch(/descriptor 1 has a length of 0/);
    expect(failure(wire.errorChunk(1, 0, 'x')).message).toMatch(/error value of 0/);
    const lying = wire.errorChunk(1, 5, 'abc');
    lying.writeUInt16BE(200, 24); // message length past the payload
    expect(failure(lying).message).toMatch(/does not fit/);
    const badText = wire.errorChunk(1, 5, 'ab');
    badText[26] = 0xff;
    expect(failure(badText).message).toMatch(/not valid UTF-8/);
  });

  test('an unknown error chunk type still decodes as an error (bit 15 set)', () => {
    const r = recorder();
    const payload = Buffer.concat([Buffer.from([0, 0, 0, 5, 0, 2]), Buffer.from('hi'), Buffer.alloc(3)]);
    new ReplyParser(r.handler).push(wire.chunk(9, 1, 0x8009, payload));
    expect(r.chunks).toEqual([{ type: 'error', handle: 9, flags: 1, chunkType: 0x8009, errno: 5, message: 'hi', offset: undefined }]);
  });

  test('end() inside a message names what was missing', () => {
    const parser = new ReplyParser(recorder().handler);
    parser.push(wire.offsetData(1, 0, Buffer.alloc(100)).subarray(0, 60));
    expect(() => parser.end()).toThrow(/68 byte\(s\) of an OFFSET_DATA chunk missing/);
  });

  test('a handler that refuses a header fails the parser with that error', () => {
    const r = recorder();
    r.handler.onChunkHeader = (h) => {
      throw new NbdProtocolError(`no request ${h}`);
    };
    const parser = new ReplyParser(r.handler);
    expect(() => parser.push(wire.none(42))).toThrow('no request 42');
    expect(() => parser.push(wire.none(1))).toThrow('no request 42');
  });
});

describe('reply parser delivers data without copying', () => {
  test('OFFSET_DATA pieces are views of the pushed chunk', () => {
    const views: Buffer[] = [];
    const r = recorder();
    r.handler.onOffsetData = (_h, _o, b) => views.push(b);
    const bytes = wire.offsetData(3, 4096, Buffer.alloc(1000, 7), 1);
    new ReplyParser(r.handler).push(bytes);
    expect(views).toHaveLength(1);
    expect(views[0]!.buffer).toBe(bytes.buffer);
    expect(r.chunks).toEqual([{ type: 'offset-data', handle: 3, flags: 1, offset: 4096, length: 1000 }]);
  });

  test('a simple read reply carries exactly the length the handler asked for, then the next reply', () => {
    const r = recorder(5);
    const ended: number[] = [];
    r.handler.onSimpleReplyEnd = (h) => ended.push(h);
    const parser = new ReplyParser(r.handler);
    parser.push(Buffer.concat([wire.simpleReply(1, 0, Buffer.from('hello')), wire.none(2)]));
    expect(Buffer.concat(r.data).toString()).toBe('hello');
    expect(ended).toEqual([1]);
    expect(r.chunks).toEqual([{ type: 'none', handle: 2, flags: 1 }]);
  });

  test('handles above 32 bits are reported as numbers (the client treats them as unknown)', () => {
    const r = recorder();
    new ReplyParser(r.handler).push(wire.none(2 ** 40));
    expect(r.chunks[0]!.handle).toBe(2 ** 40);
  });
});
