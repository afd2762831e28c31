// Regression: `{"return": 0, "error": null}` without an id was taken for an error reply
// without an id, and reading its class threw `TypeError: Cannot read properties of null
// (reading 'class')` from the socket's data handler: an uncaught exception, which ends an
// ordinary Node process, after negotiation and during it alike. A reply must have exactly
// one of `return` and `error`, and `error` must be an object with string `class` and `desc`;
// anything else is a protocol error that ends the connection (or the connect) cleanly.
import { QmpConnectionError, QmpProtocolError } from '../src/index.js';
import { GREETING, rejectionOf, useFakeQmpServer } from './support/fake-server.js';

const fx = useFakeQmpServer();

const MALFORMED = [
  '{"return": 0, "error": null}\n',
  '{"error": null}\n',
  '{"error": {"class": "GenericError", "desc": 5}}\n',
  '{"return": 1, "error": {"class": "GenericError", "desc": "x"}}\n',
];

test('after negotiation: the connection ends with a protocol error, nothing escapes', async () => {
  for (const line of MALFORMED) {
    const { client, connection } = await fx.connect();
    const call = client.execute('query-status');
    await connection.receive();
    await connection.send(line);
    const error = await rejectionOf(call);
    expect(QmpConnectionError.isInstance(error)).toBe(true);
    const cause = (error as QmpConnectionError).cause as QmpProtocolError;
    expect(QmpProtocolError.isInstance(cause)).toBe(true);
    expect(cause.excerpt).toBe(line.trim().replace(/ /g, ''));
    expect(client.state).toBe('closed');
  }
});

test('during negotiation: connect rejects with a QmpProtocolError', async () => {
  for (const line of MALFORMED) {
    const accepted = fx.server.accept();
    const pending = rejectionOf(fx.connectClient({ connectTimeout: 5000 }));
    const connection = await accepted;
    await connection.send(GREETING);
    await connection.receive();
    await connection.send(line);
    const error = await pending;
    expect(QmpProtocolError.isInstance(error)).toBe(true);
    await connection.ended;
  }
});

test('before the greeting: connect rejects with a QmpProtocolError', async () => {
  const accepted = fx.server.accept();
  const pending = rejectionOf(fx.connectClient({ connectTimeout: 5000 }));
  const connection = await accepted;
  await connection.send('{"return": 0, "error": null}\n');
  expect(QmpProtocolError.isInstance(await pending)).toBe(true);
  await connection.ended;
});
