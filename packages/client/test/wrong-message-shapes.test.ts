// Each input of the hostile-peer corpus (POISON), sent once the session is ready, must end
// the connection at once with a QmpConnectionError caused by a QmpProtocolError carrying an
// excerpt, and never throw out of the client: wrong shapes (an `error` that is no object with
// string class and desc, `return` beside `error`, an id this client never sent, an event
// without a proper timestamp, ...), text that is not JSON, and nesting past the limit.
import { QmpConnectionError, QmpProtocolError } from '../src/index.js';
import { POISON, rejectionOf, useFakeQmpServer } from './support/fake-server.js';

const fx = useFakeQmpServer();

test.each(POISON.map((text) => [JSON.stringify(text.length > 60 ? `${text.slice(0, 60)}...` : text), text]))(
  '%s ends the connection with a protocol error',
  async (_name, text) => {
    const { client, connection } = await fx.connect();
    const call = client.execute('query-status', undefined, { timeout: 5000 });
    await connection.receive();
    await connection.send(text);
    const error = await rejectionOf(call);
    expect(QmpConnectionError.isInstance(error)).toBe(true);
    const cause = (error as QmpConnectionError).cause;
    expect(QmpProtocolError.isInstance(cause)).toBe(true);
    expect((cause as QmpProtocolError).excerpt?.length).toBeGreaterThan(0);
    expect(client.state).toBe('closed');
  },
);

test('a reply with an id of ours that matches nothing pending is dropped, not fatal', async () => {
  const { client, connection } = await fx.connect();
  const call = client.execute('query-status');
  const command = await connection.receive();
  await connection.send(`{"return": {}, "id": ${(command['id'] as number) + 1000}}\n{"return": "mine", "id": ${JSON.stringify(command['id'])}}\n`);
  await expect(call).resolves.toBe('mine');
  expect(client.state).toBe('ready');
});
