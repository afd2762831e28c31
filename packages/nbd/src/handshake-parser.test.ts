import fc from 'fast-check';
import * as wire from '../test/support/wire.js';
import { NbdProtocolError } from './errors.js';
import { HandshakeParser, type HandshakeMessage } from './handshake-parser.js';

const negotiation = Buffer.concat([
  wire.greeting(),
  wire.ack(wire.OPT.STRUCTURED_REPLY),
  wire.metaContext(wire.OPT.SET_META_CONTEXT, 1, 'base:allocation'),
  wire.metaContext(wire.OPT.SET_META_CONTEXT, 2, 'qemu:dirty-bitmap:b0'),
  wire.ack(wire.OPT.SET_META_CONTEXT),
  wire.optionReply(wire.OPT.GO, wire.REP.INFO, Buffer.from([0, 1, ...Buffer.from('disk')])),
  wire.infoBlockSize(wire.OPT.GO, 1, 4096, 32 << 20),
  wire.optionReply(wire.OPT.GO, wire.REP.INFO, Buffer.from([0, 9, 1, 2])),
  wire.infoExport(wire.OPT.GO, 2 ** 40 + 512, 0x48f),
  wire.ack(wire.OPT.GO),
]);
// After the ACK to NBD_OPT_GO: the transmission phase.
const transmission = wire.none(1);

const want: HandshakeMessage[] = [
  { kind: 'greeting', handshakeFlags: 3 },
  { kind: 'ack', option: 8 },
  { kind: 'meta-context', option: 10, id: 1, name: 'base:allocation' },
  { kind: 'meta-context', option: 10, id: 2, name: 'qemu:dirty-bitmap:b0' },
  { kind: 'ack', option: 10 },
  { kind: 'info-name', option: 7, name: 'disk' },
  { kind: 'info-block-size', option: 7, minimum: 1, preferred: 4096, maximum: 32 << 20 },
  { kind: 'info-other', option: 7, infoType: 9 },
  { kind: 'info-export', option: 7, size: 2 ** 40 + 512, transmissionFlags: 0x48f },
  { kind: 'ack', option: 7 },
];

function feed(pieces: Buffer[]): { messages: HandshakeMessage[]; rest: Buffer; done: boolean } {
  const parser = new HandshakeParser();
  const messages: HandshakeMessage[] = [];
  for (const piece of pieces) messages.push(...parser.push(piece));
  return { messages, rest: parser.takeRemainder(), done: parser.done };
}

test('a whole negotiation decodes the same when split at every position, and stops after GO', () => {
  const stream = Buffer.concat([negotiation, transmission]);
  for (let i = 0; i <= stream.length; i++) {
    const { messages, rest, done } = feed([stream.subarray(0, i), stream.subarray(i)]);
    expect(messages).toEqual(want);
    expect(done).toBe(true);
    expect(rest.equals(transmission)).toBe(true);
  }
});

test('random cuts give the same messages (property)', () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: negotiation.length }), { maxLength: 20 }), (cuts) => {
      const points = [...new Set(cuts)].sort((a, b) => a - b);
      const pieces: Buffer[] = [];
      let last = 0;
      for (const p of [...points, negotiation.length]) {
        pieces.push(negotiation.subarray(last, p));
        last = p;
      }
      expect(feed(pieces).messages).toEqual(want);
    }),
  );
});

function refusal(bytes: Buffer): NbdProtocolError {
  try {
    new HandshakeParser().push(bytes);
  } catch (error) {
    expect(NbdProtocolError.isInstance(error)).toBe(true);
    return error as NbdProtocolError;
  }
  throw new Error('expected a protocol error');
}

test('bad greetings are refused early and by name', () => {
  expect(refusal(Buffer.from('HTTP/1.1')).message).toMatch(/expected NBDMAGIC/);
  expect(new HandshakeParser().push(Buffer.from('NBD'))).toEqual([]); // a valid prefix waits for more
  expect(refusal(Buffer.from('NBX')).message).toMatch(/expected NBDMAGIC/);
  expect(refusal(Buffer.from('NBDXX')).message).toMatch(/expected NBDMAGIC/);
  expect(refusal(Buffer.concat([Buffer.from('NBDMAGIC'), Buffer.from('0000420281861253', 'hex'), Buffer.alloc(2)])).message).toMatch(/old-style/);
  expect(refusal(Buffer.concat([Buffer.from('NBDMAGICXHAVEOPT'), Buffer.alloc(2)])).message).toMatch(/expected IHAVEOPT/);
});

test('bad option replies are refused', () => {
  const g = wire.greeting();
  const bad = wire.ack(7);
  bad[0] = 0x99;
  expect(refusal(Buffer.concat([g, bad])).message).toMatch(/bad magic in an option reply/);
  const huge = wire.ack(7);
  huge.writeUInt32BE(1 << 30, 16);
  expect(refusal(Buffer.concat([g, huge])).message).toMatch(/exceeds the limit/);
  expect(refusal(Buffer.concat([g, wire.optionReply(7, 1, Buffer.from('x'))])).message).toMatch(/malformed NBD_REP_ACK/);
  expect(refusal(Buffer.concat([g, wire.optionReply(7, 3, Buffer.from([0, 0, 1]))])).message).toMatch(/malformed NBD_INFO_EXPORT/);
  expect(refusal(Buffer.concat([g, wire.optionReply(7, 3, Buffer.from([0, 3, 1]))])).message).toMatch(/malformed NBD_INFO_BLOCK_SIZE/);
  expect(refusal(Buffer.concat([g, wire.optionReply(7, 77)])).message).toMatch(/unknown option reply type 77/);
  expect(refusal(Buffer.concat([g, wire.optionReply(10, 4, Buffer.from([0, 0, 0, 1, 0xff]))])).message).toMatch(/not valid UTF-8/);
  const tooBig = Buffer.concat([Buffer.from([0]), Buffer.from('ffffffffffffffff0000', 'hex').subarray(0, 8), Buffer.from([0, 1])]);
  expect(refusal(Buffer.concat([g, wire.optionReply(7, 3, Buffer.concat([Buffer.from([0]), tooBig]))])).message).toMatch(/beyond what this client can address/);
});

test('error replies carry the server message', () => {
  const { messages } = feed([wire.greeting(), wire.optionError(7, wire.REP.ERR_UNKNOWN, 'export "x" not present')]);
  expect(messages[1]).toEqual({ kind: 'error', option: 7, replyType: 0x80000006, message: 'export "x" not present' });
});
