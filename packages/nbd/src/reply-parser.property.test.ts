import fc from 'fast-check';
import * as wire from '../test/support/wire.js';
import { ReplyParser, type ReplyChunk, type ReplyHandler } from './reply-parser.js';

// A model of one reply message, the bytes a server sends for it, and what the parser must
// report for it. Data is recorded concatenated per message, so the record is the same
// however the stream was cut.
type Model =
  | { kind: 'simple'; handle: number; error: number; data: Buffer }
  | { kind: 'data'; handle: number; offset: number; data: Buffer; done: boolean }
  | { kind: 'hole'; handle: number; offset: number; length: number; done: boolean }
  | { kind: 'status'; handle: number; contextId: number; extents: [number, number][] }
  | { kind: 'error'; handle: number; errno: number; message: string; offset: number | undefined }
  | { kind: 'none'; handle: number };

const handle = fc.integer({ min: 0, max: 0xffff_ffff });
const bytes = (max: number) => fc.uint8Array({ minLength: 1, maxLength: max }).map((a) => Buffer.from(a));

const model: fc.Arbitrary<Model> = fc.oneof(
  fc.record({ kind: fc.constant('simple' as const), handle, error: fc.constant(0), data: bytes(300) }),
  fc.record({ kind: fc.constant('simple' as const), handle, error: fc.integer({ min: 1, max: 200 }), data: fc.constant(Buffer.alloc(0)) }),
  fc.record({ kind: fc.constant('data' as const), handle, offset: fc.integer({ min: 0, max: 2 ** 40 }), data: bytes(300), done: fc.boolean() }),
  fc.record({ kind: fc.constant('hole' as const), handle, offset: fc.integer({ min: 0, max: 2 ** 40 }), length: fc.integer({ min: 1, max: 2 ** 32 - 1 }), done: fc.boolean() }),
  fc.record({
    kind: fc.constant('status' as const),
    handle,
    contextId: fc.integer({ min: 0, max: 0xffff_ffff }),
    extents: fc.array(fc.tuple(fc.integer({ min: 1, max: 2 ** 32 - 1 }), fc.integer({ min: 0, max: 0xffff_ffff })), { minLength: 1, maxLength: 20 }),
  }),
  fc.record({
    kind: fc.constant('error' as const),
    handle,
    errno: fc.integer({ min: 1, max: 0xffff_ffff }),
    message: fc.string({ maxLength: 40 }),
    offset: fc.option(fc.integer({ min: 0, max: 2 ** 40 }), { nil: undefined }),
  }),
  fc.record({ kind: fc.constant('none' as const), handle }),
);

function encode(m: Model): Buffer {
  switch (m.kind) {
    case 'simple':
      return wire.simpleReply(m.handle, m.error, m.data);
    case 'data':
      return wire.offsetData(m.handle, m.offset, m.data, m.done ? wire.DONE : 0);
    case 'hole':
      return wire.offsetHole(m.handle, m.offset, m.length, m.done ? wire.DONE : 0);
    case 'status':
      return wire.blockStatus(m.handle, m.contextId, m.extents);
    case 'error':
      return wire.errorChunk(m.handle, m.errno, m.message, m.offset);
    case 'none':
      return wire.none(m.handle);
  }
}

function expected(m: Model): unknown {
  switch (m.kind) {
    case 'simple':
      return { simple: m.handle, error: m.error, data: m.data.toString('hex') };
    case 'data':
      return { type: 'offset-data', handle: m.handle, flags: m.done ? 1 : 0, offset: m.offset, length: m.data.length, data: m.data.toString('hex') };
    case 'hole':
      return { type: 'offset-hole', handle: m.handle, flags: m.done ? 1 : 0, offset: m.offset, length: m.length };
    case 'status':
      return { type: 'block-status', handle: m.handle, flags: 1, contextId: m.contextId, descriptors: m.extents.flat() };
    case 'error':
      return { type: 'error', handle: m.handle, flags: 1, chunkType: m.offset === undefined ? 0x8001 : 0x8002, errno: m.errno, message: m.message, offset: m.offset };
    case 'none':
      return { type: 'none', handle: m.handle, flags: 1 };
  }
}

/** Feeds `pieces` and returns what the parser reported, normalised. */
function run(messages: readonly Model[], pieces: readonly Buffer[]): unknown[] {
  const out: unknown[] = [];
  const simpleLengths = messages.filter((m) => m.kind === 'simple').map((m) => (m as { data: Buffer }).data.length);
  let data: Buffer[] = [];
  let dataStart: number | undefined;
  const handler: ReplyHandler = {
    onSimpleReply: () => simpleLengths.shift()!,
    onSimpleData: (_h, position, b) => {
      expect(position).toBe(data.reduce((n, d) => n + d.length, 0));
      data.push(Buffer.from(b));
    },
    onSimpleReplyEnd: (h, error) => {
      out.push({ simple: h, error, data: Buffer.concat(data).toString('hex') });
      data = [];
    },
    onChunkHeader: () => undefined,
    onOffsetDataStart: (_h, offset) => {
      dataStart = offset;
    },
    onOffsetData: (_h, offset, b) => {
      expect(offset).toBe(dataStart! + data.reduce((n, d) => n + d.length, 0));
      data.push(Buffer.from(b));
    },
    onChunk: (c: ReplyChunk) => {
      if (c.type === 'offset-data') {
        out.push({ ...c, data: Buffer.concat(data).toString('hex') });
        data = [];
      } else if (c.type === 'block-status') {
        out.push({ ...c, descriptors: [...c.descriptors] });
      } else {
        out.push({ ...c });
      }
    },
  };
  const parser = new ReplyParser(handler);
  for (const piece of pieces) parser.push(piece);
  parser.end();
  return out;
}

describe('reply parsing with the input cut anywhere', () => {
  test('split at every position into two pieces gives the same replies as the whole stream', () => {
    fc.assert(
      fc.property(fc.array(model, { minLength: 1, maxLength: 6 }), (messages) => {
        const stream = Buffer.concat(messages.map(encode));
        const want = messages.map(expected);
        expect(run(messages, [stream])).toEqual(want);
        for (let i = 1; i < stream.length; i++) {
          expect(run(messages, [stream.subarray(0, i), stream.subarray(i)])).toEqual(want);
        }
      }),
      { numRuns: 60 },
    );
  });

  test('byte by byte, and at random cut points, the replies are the same', () => {
    fc.assert(
      fc.property(
        fc.array(model, { minLength: 1, maxLength: 8 }),
        fc.array(fc.integer({ min: 0, max: 10_000 }), { maxLength: 12 }),
        (messages, cuts) => {
          const stream = Buffer.concat(messages.map(encode));
          const want = messages.map(expected);
          const bytesOneByOne = [...stream].map((b) => Buffer.of(b));
          expect(run(messages, bytesOneByOne)).toEqual(want);
          const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
          const pieces: Buffer[] = [];
          let last = 0;
          for (const p of [...points, stream.length]) {
            pieces.push(stream.subarray(last, p));
            last = p;
          }
          expect(run(messages, pieces)).toEqual(want);
        },
      ),
      { numRuns: 100 },
    );
  });

  test('a stream cut short anywhere inside a message is reported at end(), never as a reply', () => {
    fc.assert(
      fc.property(model, fc.nat(), (message, cut) => {
        const bytes = encode(message);
        const at = 1 + (cut % (bytes.length - 1));
        expect(() => run([message], [bytes.subarray(0, at)])).toThrow(/ended inside a reply/);
      }),
      { numRuns: 200 },
    );
  });
});
