// Regression: a message nested about 5,000 levels deep threw `RangeError: Maximum call stack
// size exceeded` while the excerpt for its protocol error was built (recursively, with
// JSON.stringify), out of the socket's data handler. Nesting past `maxMessageDepth` (1024,
// QEMU's own limit for what it reads) is now a protocol error found while the bytes are
// read, before anything recursive sees the value, and excerpts are built by a walk that
// cannot throw and does bounded work whatever it is given.
import { DEFAULT_MAX_DEPTH, QmpConnectionError, QmpMessageParser, QmpProtocolError } from '../src/index.js';
import { excerptOf } from '../src/excerpt.js';
import { GREETING, rejectionOf, useFakeQmpServer } from './support/fake-server.js';

const fx = useFakeQmpServer();

/** `{"return": [[...]], "id": id}` with the reply object at depth 1 and `arrays` arrays inside. */
function nested(arrays: number, id = 1): string {
  return `{"return": ${'['.repeat(arrays)}${']'.repeat(arrays)}, "id": ${id}}`;
}

test('5,000 levels after negotiation end the connection with a protocol error', async () => {
  const { client, connection } = await fx.connect();
  const call = client.execute('query-status');
  const command = await connection.receive();
  await connection.send(`${nested(5000, command['id'] as number)}\n`);
  const error = await rejectionOf(call);
  expect(QmpConnectionError.isInstance(error)).toBe(true);
  const cause = (error as QmpConnectionError).cause as QmpProtocolError;
  expect(QmpProtocolError.isInstance(cause)).toBe(true);
  expect(cause.message).toBe('QMP message nested deeper than 1024 levels');
  expect(cause.excerpt).toMatch(/^\{"return": \[{50}/);
});

test('during negotiation, deep nesting fails connect with a QmpProtocolError', async () => {
  const accepted = fx.server.accept();
  const pending = rejectionOf(fx.connectClient());
  const connection = await accepted;
  await connection.send(GREETING);
  await connection.receive();
  // Split, so the grammar scan (not the line fast path) meets it.
  const text = nested(5000);
  await connection.send(text.slice(0, 3000));
  await connection.send(`${text.slice(3000)}\n`);
  const error = await pending;
  expect(QmpProtocolError.isInstance(error)).toBe(true);
  expect((error as Error).message).toMatch(/nested deeper than 1024 levels/);
});

test('the limit is exact on both the line fast path and the split path, and configurable', () => {
  expect(DEFAULT_MAX_DEPTH).toBe(1024);
  for (const newline of ['\n', '']) {
    expect(new QmpMessageParser().push(`${nested(1023)}${newline}`)).toHaveLength(1);
    expect(() => new QmpMessageParser().push(`${nested(1024)}${newline}`)).toThrow(/nested deeper than 1024 levels/);
  }
  const strings = `{"return": "${'['.repeat(5000)}"}\n`;
  expect(new QmpMessageParser().push(strings)).toHaveLength(1);
  expect(new QmpMessageParser({ maxDepth: 5000 }).push(`${nested(4999)}\n`)).toHaveLength(1);
  expect(() => new QmpMessageParser({ maxDepth: 3 }).push('{"a": {"b": {"c": {}}}}\n')).toThrow(/deeper than 3/);
});

test('excerptOf cannot throw, however deep, large or strange the value', () => {
  let deep: unknown = 'bottom';
  for (let i = 0; i < 200_000; i++) deep = i % 2 === 0 ? [deep] : { d: deep };
  expect(excerptOf(deep)).toBe(`${'{"d":['.repeat(40).slice(0, 200)}...`);
  const huge = { return: 'x'.repeat(10 * 1024 * 1024), more: Array.from({ length: 100_000 }, (_, i) => i) };
  expect(excerptOf(huge)).toHaveLength(203);
  const cyclic: Record<string, unknown> = { a: 1 };
  cyclic['self'] = cyclic;
  expect(excerptOf(cyclic)).toMatch(/^\{"a":1,"self":\{"a":1,"self":.*\.\.\.$/);
  let called = false;
  const withToJson = { toJSON: () => ((called = true), 'replaced'), x: 1 };
  expect(excerptOf(withToJson)).toBe('{"toJSON":[function],"x":1}');
  expect(called).toBe(false);
  const getter = Object.defineProperty({}, 'boom', { enumerable: true, get: () => { throw new Error('getter'); } });
  expect(excerptOf(getter)).toBe('(a value that cannot be shown)');
  const revoked = Proxy.revocable({}, {});
  revoked.revoke();
  expect(excerptOf(revoked.proxy)).toBe('(a value that cannot be shown)');
  expect(excerptOf({ s: 'é"\\', n: null, b: true, u: undefined, big: 10n, sym: Symbol('s') })).toBe('{"s":"é\\"\\\\","n":null,"b":true,"u":undefined,"big":10,"sym":Symbol(s)}');
  expect(excerptOf(JSON.parse('{"__proto__": {"polluted": 1}}'))).toBe('{"__proto__":{"polluted":1}}');
});
