// Regression: a complete line that is not JSON, such as `{"return": {,,,}`, arriving after
// negotiation failed JSON.parse on the line fast path and went to a scanner that only
// balanced braces. Two '{' against one '}' left it "inside a message" for good: every later
// reply was swallowed as part of that message until the 10 MiB limit, the connection stayed
// 'ready', and every command timed out (or hung, without a timeout). The grammar check now
// fails at the first byte JSON rules out, and the connection ends at once.
import { QmpConnectionError, QmpProtocolError, QmpTimeoutError } from '../src/index.js';
import { rejectionOf, useFakeQmpServer } from './support/fake-server.js';

const fx = useFakeQmpServer();

async function expectConnectionEndsAtOnce(line: string | Buffer, split?: number): Promise<void> {
  const { client, connection } = await fx.connect();
  // Generous timeouts: a deaf connection would show as QmpTimeoutError after 5 s.
  const first = client.execute('query-status', undefined, { timeout: 5000 });
  const second = client.execute('query-block', undefined, { timeout: 5000 });
  const wait = client.events.wait('STOP', { timeout: 5000 });
  const a = await connection.receive();
  const b = await connection.receive();
  const bytes = Buffer.isBuffer(line) ? line : Buffer.from(line);
  if (split === undefined) {
    await connection.send(bytes);
  } else {
    await connection.send(bytes.subarray(0, split));
    await connection.send(bytes.subarray(split));
  }
  // The replies that follow must not be taken as part of the broken line.
  await connection.send(`{"return": {"status": "running"}, "id": ${JSON.stringify(a['id'])}}\n{"return": [], "id": ${JSON.stringify(b['id'])}}\n`);
  const started = Date.now();
  const errors = await Promise.all([rejectionOf(first), rejectionOf(second), rejectionOf(wait)]);
  expect(Date.now() - started).toBeLessThan(4000);
  for (const error of errors) {
    expect(QmpTimeoutError.isInstance(error)).toBe(false);
    expect(QmpConnectionError.isInstance(error)).toBe(true);
    expect(QmpProtocolError.isInstance((error as QmpConnectionError).cause)).toBe(true);
  }
  expect(errors[1]).toBe(errors[0]);
  expect(client.state).toBe('closed');
  expect(await client.closed).toBe(errors[0]);
}

test('a complete line that is not JSON ends the connection at once', async () => {
  await expectConnectionEndsAtOnce('{"return": {,,,}\n');
});

test('the same line split across reads, at the comma', async () => {
  await expectConnectionEndsAtOnce('{"return": {,,,}\n', 12);
});

test('the error names the offending byte and shows the line', async () => {
  const { client, connection } = await fx.connect();
  const call = client.execute('query-status');
  await connection.receive();
  await connection.send('{"return": {,,,}\n');
  const error = (await rejectionOf(call)) as QmpConnectionError;
  const cause = error.cause as QmpProtocolError;
  expect(cause.message).toBe('malformed QMP stream: "," where a member name or \'}\' was expected (byte 12 of the message)');
  expect(cause.excerpt).toBe('{"return": {,');
});

test('other lines that can never become JSON', async () => {
  for (const line of ['{"return": {"a" 1}}\n', '{"return": [1 2]}\n', '{"return": tru}\n', '{"return": "\u0001"}\n', '{"return": 01}\n', '{"return": {}}}\n']) {
    await expectConnectionEndsAtOnce(line);
  }
});
