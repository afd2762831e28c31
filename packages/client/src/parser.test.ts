import { QmpProtocolError } from './errors.js';
import { DEFAULT_MAX_MESSAGE_SIZE, QmpMessageParser } from './parser.js';

const MESSAGES = [
  { QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: '' }, capabilities: ['oob'] } },
  { return: {}, id: 1 },
  { event: 'BLOCK_JOB_COMPLETED', data: { device: 'drive0', note: 'a } in a "string" \\ ü€𝄞' }, timestamp: { seconds: 1, microseconds: 2 } },
  { error: { class: 'GenericError', desc: '[unbalanced { text' }, id: 'x' },
  { return: [[], [{}], { a: [1, 2, 3] }], id: 3 },
];
const STREAM = Buffer.from(MESSAGES.map((m) => `${JSON.stringify(m)}\r\n`).join(''));

function feed(parser: QmpMessageParser, chunks: readonly (Buffer | string)[]): unknown[] {
  return chunks.flatMap((chunk) => parser.push(chunk));
}

describe('QmpMessageParser', () => {
  test('whole stream in one chunk', () => {
    expect(new QmpMessageParser().push(STREAM)).toEqual(MESSAGES);
  });

  test('byte by byte', () => {
    const parser = new QmpMessageParser();
    const chunks = Array.from(STREAM, (byte) => Buffer.from([byte]));
    expect(feed(parser, chunks)).toEqual(MESSAGES);
    expect(parser.inMessage).toBe(false);
    expect(parser.bufferedBytes).toBe(0);
  });

  test('split at every offset into two chunks', () => {
    for (let offset = 0; offset <= STREAM.length; offset++) {
      const parser = new QmpMessageParser();
      expect(feed(parser, [STREAM.subarray(0, offset), STREAM.subarray(offset)])).toEqual(MESSAGES);
    }
  });

  test('messages without newlines between them, and whitespace around them', () => {
    const text = ` \t{"return": 1, "id": 1}{"return": 2, "id": 2}\n\n  {"return" :\n 3 , "id":3}\n`;
    expect(new QmpMessageParser().push(text)).toEqual([
      { return: 1, id: 1 },
      { return: 2, id: 2 },
      { return: 3, id: 3 },
    ]);
  });

  test('accepts Uint8Array views that are not Buffers', () => {
    const bytes = new Uint8Array(STREAM.length + 4);
    bytes.set(STREAM, 2);
    expect(new QmpMessageParser().push(bytes.subarray(2, 2 + STREAM.length))).toEqual(MESSAGES);
  });

  test('malformed JSON inside a message throws QmpProtocolError and stays failed', () => {
    const parser = new QmpMessageParser();
    let error: unknown;
    try {
      parser.push('{"return": {}, "id": 1, oops}\n');
    } catch (e) {
      error = e;
    }
    expect(QmpProtocolError.isInstance(error)).toBe(true);
    // Found at the first byte JSON's grammar rules out, with the message up to it.
    expect((error as Error).message).toBe('malformed QMP stream: "o" where a member name was expected (byte 24 of the message)');
    expect((error as QmpProtocolError).excerpt).toBe('{"return": {}, "id": 1, o');
    expect(() => parser.push('{"return": {}}')).toThrow(error as Error);
  });

  test('text that is not an object at the top level is rejected', () => {
    expect(() => new QmpMessageParser().push('[1, 2]\n')).toThrow(/"\[" where '\{' \(the start of a QMP message\) was expected/);
    expect(() => new QmpMessageParser().push('garbage\n')).toThrow(QmpProtocolError);
  });

  test('messages completed before malformed input in the same chunk are returned; the next call throws', () => {
    const parser = new QmpMessageParser();
    expect(parser.failure).toBeUndefined();
    expect(parser.push('{"return": 1}\n{"return": 2}}')).toEqual([{ return: 1 }, { return: 2 }]);
    expect(parser.failure?.message).toMatch(/"\}" where '\{' \(the start of a QMP message\) was expected/);
    expect(() => parser.push('{"return": 3}\n')).toThrow(parser.failure);
    expect(() => parser.end()).toThrow(parser.failure);
  });

  test('enforces the size limit, also before a message is complete', () => {
    const parser = new QmpMessageParser({ maxMessageSize: 64 });
    expect(parser.push(`{"return": "${'x'.repeat(40)}"}`)).toHaveLength(1);
    const oversize = new QmpMessageParser({ maxMessageSize: 64 });
    oversize.push('{"return": "');
    expect(() => oversize.push('x'.repeat(100))).toThrow(/size limit of 64 bytes/);
    expect(() => new QmpMessageParser({ maxMessageSize: 64 }).push(`{"return": "${'x'.repeat(100)}"}\n`)).toThrow(QmpProtocolError);
  });

  test('the limit counts bytes of one message, not of the stream', () => {
    const parser = new QmpMessageParser({ maxMessageSize: 32 });
    const line = '{"return": {}, "id": 12345}\n';
    expect(Buffer.byteLength(line)).toBeLessThan(32);
    expect(parser.push(line.repeat(100))).toHaveLength(100);
  });

  test('default limit is 10 MiB and a 9 MiB message passes', () => {
    expect(DEFAULT_MAX_MESSAGE_SIZE).toBe(10 * 1024 * 1024);
    const big = { return: 'y'.repeat(9 * 1024 * 1024), id: 1 };
    const bytes = Buffer.from(JSON.stringify(big));
    const parser = new QmpMessageParser();
    const out: unknown[] = [];
    for (let i = 0; i < bytes.length; i += 65536) out.push(...parser.push(bytes.subarray(i, i + 65536)));
    expect(out).toEqual([big]);
  });

  test('end() inside a message throws; between messages it does not', () => {
    const parser = new QmpMessageParser();
    parser.push('{"return": {}}\n');
    expect(() => parser.end()).not.toThrow();
    const cut = new QmpMessageParser();
    cut.push('{"return": {"status": "runn');
    expect(cut.bufferedBytes).toBe(27);
    expect(() => cut.end()).toThrow(/ended inside a message after 27 byte\(s\)/);
  });

  test('rejects a nonsensical size limit', () => {
    expect(() => new QmpMessageParser({ maxMessageSize: 0 })).toThrow(RangeError);
    expect(() => new QmpMessageParser({ maxMessageSize: 1.5 })).toThrow(RangeError);
  });
});
