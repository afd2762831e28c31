// Regression: qemu-storage-daemon 7.2, connected to within a millisecond of its socket
// appearing, sometimes opens the monitor twice: a second greeting follows the first, the
// monitor is back in negotiation mode, and the qmp_capabilities already sent may go
// unanswered. connect() failed with "unexpected second greeting" or hung until its deadline.
// In the same race the monitor may mangle what it reads and answer the qmp_capabilities
// with an error without an id ("JSON parse error, expecting value"); connect() failed with
// "sent an error reply without an id" (seen once in CI).
import { QmpConnectionError, QmpNegotiationError, type QmpTranscriptEntry } from '../src/index.js';
import { GREETING, rejectionOf, useFakeQmpServer, type FakeConnection, type LooseClient } from './support/fake-server.js';

const fx = useFakeQmpServer();

/** After a repaired negotiation the connection serves a command as usual. */
async function expectUsable(client: LooseClient, connection: FakeConnection): Promise<void> {
  const status = client.execute('query-status');
  const command = await connection.receive();
  await connection.send(`{"return": {"status": "running", "running": true}, "id": ${JSON.stringify(command['id'])}}\n`);
  await expect(status).resolves.toEqual({ status: 'running', running: true });
}

test('a greeting while qmp_capabilities is pending restarts negotiation', async () => {
  const accepted = fx.server.accept();
  const pending = fx.connectClient();
  const connection = await accepted;
  await connection.send(GREETING);
  const first = await connection.receive();
  expect(first['execute']).toBe('qmp_capabilities');
  // The monitor is reset: the first command is never answered.
  await connection.send(GREETING);
  const second = await connection.receive();
  expect(second['execute']).toBe('qmp_capabilities');
  expect(second['id']).not.toEqual(first['id']);
  await connection.send(`{"return": {}, "id": ${JSON.stringify(second['id'])}}\n`);
  const client = await pending;
  expect(client.state).toBe('ready');
  await expectUsable(client, connection);
});

test('"already negotiated" on the repeated qmp_capabilities counts as success', async () => {
  const accepted = fx.server.accept();
  const pending = fx.connectClient();
  const connection = await accepted;
  await connection.send(GREETING);
  const first = await connection.receive();
  await connection.send(GREETING);
  const second = await connection.receive();
  // The first command ran after the reset; the repeat is refused as QEMU refuses it then.
  await connection.send(`{"return": {}, "id": ${JSON.stringify(first['id'])}}\n`);
  await connection.send(
    `{"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}, "id": ${JSON.stringify(second['id'])}}\n`,
  );
  const client = await pending;
  expect(client.state).toBe('ready');
});

test('a peer that keeps greeting is given up with a QmpNegotiationError', async () => {
  const accepted = fx.server.accept();
  const pending = rejectionOf(fx.connectClient());
  const connection = await accepted;
  await connection.send(GREETING);
  for (let i = 0; i < 4; i++) {
    await connection.receive();
    await connection.send(GREETING);
  }
  const error = await pending;
  expect(QmpNegotiationError.isInstance(error)).toBe(true);
  expect((error as Error).message).toMatch(/disturbed negotiation 4 times \(last: greeted again\)/);
});

test('a first qmp_capabilities refused with CommandNotFound is still a negotiation error', async () => {
  const accepted = fx.server.accept();
  const pending = rejectionOf(fx.connectClient());
  const connection = await accepted;
  await connection.send(GREETING);
  const first = await connection.receive();
  await connection.send(`{"error": {"class": "CommandNotFound", "desc": "nope"}, "id": ${JSON.stringify(first['id'])}}\n`);
  expect(QmpNegotiationError.isInstance(await pending)).toBe(true);
});

const PARSE_ERROR = '{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}\r\n';
const STRAY_ERROR = '{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\r\n';

test('an id-less parse error while negotiating resyncs the parser and negotiates again', async () => {
  const transcript: QmpTranscriptEntry[] = [];
  const accepted = fx.server.accept();
  const pending = fx.connectClient({ transcript: (entry: QmpTranscriptEntry) => transcript.push(entry) });
  const connection = await accepted;
  await connection.send(GREETING);
  const first = await connection.receive();
  expect(first['execute']).toBe('qmp_capabilities');
  expect(connection.resyncBytes).toBe(0);
  // What QEMU answers when the tail of the command reached a fresh parser: two errors.
  await connection.send(PARSE_ERROR + PARSE_ERROR);
  const second = await connection.receive();
  expect(second['execute']).toBe('qmp_capabilities');
  expect(second['id']).not.toEqual(first['id']);
  // The resync byte went out before the new command, once.
  expect(connection.resyncBytes).toBe(1);
  // As QEMU does: one error for the 0xFF, then the command's reply.
  await connection.send(STRAY_ERROR);
  await connection.send(`{"return": {}, "id": ${JSON.stringify(second['id'])}}\r\n`);
  const client = await pending;
  expect(client.state).toBe('ready');
  await expectUsable(client, connection);
  // Nothing vanished: the three id-less errors are in the transcript, marked as absorbed.
  const noise = transcript.filter((entry) => entry.direction === 'in' && entry.dropped === 'negotiation-noise');
  expect(noise).toHaveLength(3);
  const raw = transcript.filter((entry) => entry.direction === 'out-raw');
  expect(raw.map((entry) => [...(entry.message as Uint8Array)])).toEqual([[0xff]]);
  // Once negotiated, an id-less error is fatal again.
  const call = client.execute('query-status');
  await connection.receive();
  await connection.send(PARSE_ERROR);
  expect(QmpConnectionError.isInstance(await rejectionOf(call))).toBe(true);
});

test('a resync attempt that goes unanswered is retried, then given up with a QmpNegotiationError', async () => {
  const accepted = fx.server.accept();
  const pending = rejectionOf(fx.connectClient({ connectTimeout: 20_000 }));
  const connection = await accepted;
  await connection.send(GREETING);
  await connection.receive();
  await connection.send(PARSE_ERROR);
  // Three resync attempts, each left unanswered for its 1 s window.
  for (let i = 1; i <= 3; i++) {
    await connection.receive();
    expect(connection.resyncBytes).toBe(i);
  }
  const error = await pending;
  expect(QmpNegotiationError.isInstance(error)).toBe(true);
  expect((error as Error).message).toMatch(/disturbed negotiation 4 times \(last: did not answer qmp_capabilities after a resync\)/);
}, 15_000);

test('"already negotiated" after a resync counts as success', async () => {
  const accepted = fx.server.accept();
  const pending = fx.connectClient();
  const connection = await accepted;
  await connection.send(GREETING);
  await connection.receive();
  // Part of the mangled input still made a qmp_capabilities that ran.
  await connection.send(PARSE_ERROR);
  const second = await connection.receive();
  await connection.send(STRAY_ERROR);
  await connection.send(
    `{"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}, "id": ${JSON.stringify(second['id'])}}\n`,
  );
  expect((await pending).state).toBe('ready');
});
