// Regression: qemu-storage-daemon 7.2, connected to within a millisecond of its socket
// appearing, sometimes opens the monitor twice: a second greeting follows the first, the
// monitor is back in negotiation mode, and the qmp_capabilities already sent may go
// unanswered. connect() failed with "unexpected second greeting" or hung until its deadline.
import { QmpNegotiationError } from '../src/index.js';
import { GREETING, rejectionOf, useFakeQmpServer } from './support/fake-server.js';

const fx = useFakeQmpServer();

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
  // The connection is usable afterwards.
  const status = client.execute('query-status');
  const command = await connection.receive();
  await connection.send(`{"return": {"status": "running", "running": true}, "id": ${JSON.stringify(command['id'])}}\n`);
  await expect(status).resolves.toEqual({ status: 'running', running: true });
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
  expect((error as Error).message).toMatch(/greeted 5 times/);
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
