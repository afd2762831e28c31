// Regression: under load, QEMU sometimes wrote an event to a freshly accepted monitor
// connection before its greeting (the greeting goes out from a bottom half, events go to
// every monitor not in negotiation mode), and connect() failed with
// "QmpProtocolError: expected a QMP greeting, got an event".
import { QmpProtocolError, QmpTimeoutError, type QmpTranscriptEntry } from '../src/index.js';
import { GREETING, eventLine, rejectionOf, useFakeQmpServer } from './support/fake-server.js';

const fx = useFakeQmpServer();

test('an event before the greeting is delivered to the event hub and connect succeeds', async () => {
  const transcript: QmpTranscriptEntry[] = [];
  const accepted = fx.server.accept();
  const pending = fx.connectClient({ transcript: (entry) => transcript.push(entry) });
  const connection = await accepted;
  await connection.sendEvent('RESUME', undefined, 1);
  await connection.sendEvent('BLOCK_IO_ERROR', { device: 'drive0', operation: 'write', action: 'report' }, 2);
  await connection.send(GREETING);
  const command = await connection.receive();
  expect(command['execute']).toBe('qmp_capabilities');
  // Still negotiating: QEMU does not send events now, but one that does come is kept too.
  await connection.sendEvent('STOP', undefined, 3);
  await connection.send(`{"return": {}, "id": ${JSON.stringify(command['id'])}}\n`);
  const client = await pending;

  expect(client.state).toBe('ready');
  expect(client.version.qemu).toEqual({ major: 7, minor: 2, micro: 0 });
  const stop = await client.events.wait('STOP', { history: true, timeout: 1000 });
  expect(stop.timestamp.seconds).toBe(3);
  using early = client.events.listen(undefined, { history: true });
  expect(early.drain().map((e) => [e.event, e.data, e.timestamp.seconds])).toEqual([
    ['RESUME', {}, 1],
    ['BLOCK_IO_ERROR', { device: 'drive0', operation: 'write', action: 'report' }, 2],
    ['STOP', {}, 3],
  ]);
  // Recorded in arrival order, before the greeting.
  expect(transcript.map((e) => (e.direction === 'out' ? `out ${e.message.execute ?? ''}` : `${e.direction} ${Object.keys(e.message as object)[0] ?? ''}`))).toEqual([
    'in event',
    'in event',
    'in QMP',
    'out qmp_capabilities',
    'in event',
    'in return',
  ]);
});

test('an event in the same chunk as the greeting stays in the history for a later wait', async () => {
  const accepted = fx.server.accept();
  const pending = fx.connectClient();
  const connection = await accepted;
  await connection.send(`${eventLine('RESUME', undefined, 1)}\r\n${GREETING}`);
  await connection.reply({});
  const client = await pending;
  const seen: string[] = [];
  client.events.on('event', (e) => seen.push(e.event));
  await connection.sendEvent('STOP', undefined, 2);
  await expect(client.events.wait('STOP', { timeout: 1000 })).resolves.toMatchObject({ event: 'STOP' });
  expect(seen).toEqual(['STOP']);
  await expect(client.events.wait('RESUME', { history: true, timeout: 1000 })).resolves.toMatchObject({ timestamp: { seconds: 1 } });
});

test('events without a greeting still end in a connect timeout', async () => {
  const accepted = fx.server.accept();
  const pending = rejectionOf(fx.connectClient({ connectTimeout: 200 }));
  const connection = await accepted;
  await connection.sendEvent('RESUME');
  const error = await pending;
  expect(QmpTimeoutError.isInstance(error)).toBe(true);
  expect((error as Error).message).toMatch(/greeting/);
});

test.each([
  ['a reply after an event', `${eventLine('RESUME')}\n{"return": {}, "id": 1}\n`, /expected a QMP greeting, got a reply/],
  ['malformed JSON', 'Hello, this is not QMP\n', /malformed QMP stream/],
  ['a message of no known kind', '{"hello": "world"}\n', /no known QMP kind/],
])('%s before the greeting is a QmpProtocolError', async (_name, bytes, message) => {
  const accepted = fx.server.accept();
  const pending = rejectionOf(fx.connectClient());
  const connection = await accepted;
  await connection.send(bytes);
  const error = await pending;
  expect(QmpProtocolError.isInstance(error)).toBe(true);
  expect((error as Error).message).toMatch(message);
});
