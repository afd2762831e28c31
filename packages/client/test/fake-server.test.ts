import { mkdir, link } from 'node:fs/promises';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { setImmediate as nextTurn, setTimeout as delay } from 'node:timers/promises';
import {
  QmpAbortError,
  QmpClient,
  QmpCommandError,
  QmpConnectionError,
  QmpNegotiationError,
  QmpProtocolError,
  QmpTimeoutError,
  type LooseCommands,
  type LooseEvents,
  type QmpTranscriptEntry,
} from '../src/index.js';
import { GREETING, rejectionOf, useFakeQmpServer } from './support/fake-server.js';

const fx = useFakeQmpServer();

describe('framing', () => {
  test('a reply split at every byte offset is reassembled', async () => {
    const { client, connection } = await fx.connect();
    // Multi-byte UTF-8 (2, 3 and 4 bytes) so some splits fall inside a character.
    const value = { text: 'é€𝄞 "quoted" \\ {braces} [brackets]', n: [1, 2, { x: null }] };
    for (let offset = 1; ; offset++) {
      const call = client.execute('echo');
      const command = await connection.receive();
      const bytes = Buffer.from(`${JSON.stringify({ return: value, id: command['id'] })}\n`);
      if (offset >= bytes.length) {
        await connection.send(bytes);
        await expect(call).resolves.toEqual(value);
        break;
      }
      await connection.send(bytes.subarray(0, offset));
      await nextTurn();
      await connection.send(bytes.subarray(offset));
      await expect(call).resolves.toEqual(value);
    }
  });

  test('several messages in one chunk: events and replies, in order', async () => {
    const transcript: QmpTranscriptEntry[] = [];
    const { client, connection } = await fx.connect({ transcript: (entry) => transcript.push(entry) });
    const seen: string[] = [];
    client.events.on('event', (event) => seen.push(event.event));
    const first = client.execute('first');
    const second = client.execute('second');
    const a = await connection.receive();
    const b = await connection.receive();
    transcript.length = 0;
    await connection.send(
      `{"event": "A", "timestamp": {"seconds": 1, "microseconds": 2}}\n{"return": 1, "id": ${JSON.stringify(a['id'])}}` +
        `{"event": "B", "data": {"x": 1}, "timestamp": {"seconds": 1, "microseconds": 3}}\r\n{"return": 2, "id": ${JSON.stringify(b['id'])}}\n`,
    );
    await expect(Promise.all([first, second])).resolves.toEqual([1, 2]);
    expect(seen).toEqual(['A', 'B']);
    expect(transcript.map((e) => JSON.stringify(e.message))).toEqual([
      '{"event":"A","timestamp":{"seconds":1,"microseconds":2}}',
      `{"return":1,"id":${JSON.stringify(a['id'])}}`,
      '{"event":"B","data":{"x":1},"timestamp":{"seconds":1,"microseconds":3}}',
      `{"return":2,"id":${JSON.stringify(b['id'])}}`,
    ]);
    expect(client.events.buffered.map((e) => [e.event, e.data])).toEqual([['A', {}], ['B', { x: 1 }]]);
  });
});

describe('fatal server behaviour', () => {
  test('malformed JSON rejects every pending call with QmpConnectionError (cause QmpProtocolError)', async () => {
    const { client, connection } = await fx.connect();
    const calls = [client.execute('a'), client.execute('b')];
    const wait = client.events.wait('NEVER');
    const stream = client.events.stream();
    await connection.receive();
    await connection.send('{"return": {}, "id": 1, oops}\n');
    for (const call of [...calls, wait, stream.next()]) {
      const error = await rejectionOf(call);
      expect(QmpConnectionError.isInstance(error)).toBe(true);
      expect(QmpProtocolError.isInstance((error as QmpConnectionError).cause)).toBe(true);
    }
    expect(client.state).toBe('closed');
    await expect(client.execute('later')).rejects.toBeInstanceOf(QmpConnectionError);
  });

  test('a message over the size limit is a protocol error', async () => {
    const { client, connection } = await fx.connect({ maxMessageSize: 1024 });
    const call = client.execute('big');
    const command = await connection.receive();
    // Sent in pieces: the limit must hold before the message is complete.
    const line = `{"return": "${'x'.repeat(4096)}", "id": ${JSON.stringify(command['id'])}}\n`;
    await connection.send(line.slice(0, 600));
    await connection.send(line.slice(600, 1500));
    const error = await rejectionOf(call);
    expect(QmpConnectionError.isInstance(error)).toBe(true);
    const cause = (error as QmpConnectionError).cause as QmpProtocolError;
    expect(QmpProtocolError.isInstance(cause)).toBe(true);
    expect(cause.message).toMatch(/size limit of 1024 bytes/);
  });

  test('an error reply without an id ends the connection', async () => {
    const { client, connection } = await fx.connect();
    const call = client.execute('pending');
    await connection.receive();
    await connection.send('{"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword"}}\n');
    const error = await rejectionOf(call);
    expect(QmpConnectionError.isInstance(error)).toBe(true);
    expect((error as Error).message).toMatch(/without an id/);
    expect(((error as QmpConnectionError).cause as QmpProtocolError).excerpt).toContain('invalid keyword');
    expect(await client.closed).toBe(error);
  });

  test('the server closing mid-reply rejects pending calls promptly', async () => {
    const { client, connection } = await fx.connect();
    const call = client.execute('query-status');
    const stream = client.events.stream(['STOP']);
    const command = await connection.receive();
    await connection.send(`{"return": {"status": "runn`);
    connection.socket.end();
    const error = await rejectionOf(call);
    expect(QmpConnectionError.isInstance(error)).toBe(true);
    expect((error as Error).message).toMatch(/middle of a message/);
    expect(QmpProtocolError.isInstance((error as QmpConnectionError).cause)).toBe(true);
    expect(command['execute']).toBe('query-status');
    await expect(stream.next()).rejects.toBe(error);
  });

  test('a plain disconnect fails pending calls and waits', async () => {
    const { client, connection } = await fx.connect();
    const call = client.execute('slow');
    const wait = client.events.wait('BLOCK_JOB_COMPLETED', { match: { data: { device: 'drive0' } } });
    await connection.receive();
    connection.destroy();
    const [callError, waitError] = await Promise.all([rejectionOf(call), rejectionOf(wait)]);
    expect(QmpConnectionError.isInstance(callError)).toBe(true);
    expect(waitError).toBe(callError);
  });
});

describe('ids, timeouts and aborts', () => {
  test('a reply with an unknown id is dropped and reported to the transcript', async () => {
    const transcript: QmpTranscriptEntry[] = [];
    const { client, connection } = await fx.connect({ transcript: (entry) => transcript.push(entry) });
    const call = client.execute('query-status');
    const command = await connection.receive();
    await connection.send('{"return": "stray", "id": 424242}\n{"error": {"class": "GenericError", "desc": "late"}, "id": 99}\n');
    await connection.send(`{"return": "mine", "id": ${JSON.stringify(command['id'])}}\n`);
    await expect(call).resolves.toBe('mine');
    const dropped = transcript.filter((e) => e.direction === 'in' && e.dropped === 'unknown-id');
    expect(dropped.map((e) => e.message)).toEqual([
      { return: 'stray', id: 424242 },
      { error: { class: 'GenericError', desc: 'late' }, id: 99 },
    ]);
    expect(transcript.some((e) => e.direction === 'out' && e.message.execute === 'query-status' && e.message.id === command['id'])).toBe(true);
    expect(client.state).toBe('ready');
  });

  test('a timeout on one command leaves the connection usable', async () => {
    const transcript: QmpTranscriptEntry[] = [];
    const { client, connection } = await fx.connect({ transcript: (entry) => transcript.push(entry) });
    const slow = client.execute('slow', undefined, { timeout: 50 });
    const slowCommand = await connection.receive();
    const error = await rejectionOf(slow);
    expect(QmpTimeoutError.isInstance(error)).toBe(true);
    expect((error as QmpTimeoutError).timeout).toBe(50);
    expect(client.pendingCount).toBe(0);
    // The late reply is dropped; the next command gets its own answer.
    await connection.send(`{"return": "late", "id": ${JSON.stringify(slowCommand['id'])}}\n`);
    const next = client.execute('next');
    await connection.reply('fresh');
    await expect(next).resolves.toBe('fresh');
    expect(transcript.filter((e) => e.direction === 'in' && e.dropped).map((e) => e.message)).toEqual([
      { return: 'late', id: slowCommand['id'] },
    ]);
  });

  test('commandTimeout applies to every command unless overridden', async () => {
    const { client, connection } = await fx.connect({ commandTimeout: 30 });
    await expect(client.execute('a')).rejects.toBeInstanceOf(QmpTimeoutError);
    const b = client.execute('b', undefined, { timeout: 5000 });
    await connection.receive();
    await connection.reply('ok');
    await expect(b).resolves.toBe('ok');
  });

  test('abort through an AbortSignal', async () => {
    const { client, connection } = await fx.connect();
    const controller = new AbortController();
    const call = client.execute('slow', undefined, { signal: controller.signal });
    await connection.receive();
    controller.abort(new Error('user gave up'));
    const error = await rejectionOf(call);
    expect(QmpAbortError.isInstance(error)).toBe(true);
    expect(((error as QmpAbortError).cause as Error).message).toBe('user gave up');
    expect(client.pendingCount).toBe(0);
    // An already-aborted signal: nothing is sent at all.
    await expect(client.execute('never-sent', undefined, { signal: controller.signal })).rejects.toBeInstanceOf(QmpAbortError);
    const next = client.execute('after');
    const command = await connection.reply(7);
    expect(command['execute']).toBe('after');
    await expect(next).resolves.toBe(7);
  });

  test('an error reply rejects with QmpCommandError and nothing else', async () => {
    const { client, connection } = await fx.connect();
    const call = client.execute('device_del', { id: 'x' });
    const command = await connection.receive();
    const reply = { error: { class: 'DeviceNotFound', desc: "Device 'x' not found" }, id: command['id'] };
    await connection.send(`${JSON.stringify(reply)}\n`);
    const error = (await rejectionOf(call)) as QmpCommandError;
    expect(QmpCommandError.isInstance(error)).toBe(true);
    expect(error).toMatchObject({ errorClass: 'DeviceNotFound', desc: "Device 'x' not found", reply });
    expect(error.command).toEqual({ execute: 'device_del', arguments: { id: 'x' }, id: command['id'] });
    expect(client.state).toBe('ready');
  });

  test('close() rejects pending commands and ends streams normally', async () => {
    const { client, connection } = await fx.connect();
    const call = client.execute('pending');
    const stream = client.events.stream();
    await connection.receive();
    const closing = client.close();
    expect(client.state).toBe('closing');
    await expect(call).rejects.toBeInstanceOf(QmpConnectionError);
    await expect(stream.next()).resolves.toEqual({ value: undefined, done: true });
    await closing;
    expect(client.state).toBe('closed');
    expect(await client.closed).toBeUndefined();
  });
});

describe('connecting', () => {
  test('a server that never greets: connect times out with a clear error', async () => {
    const accepted = fx.server.accept();
    const started = Date.now();
    const error = await rejectionOf(QmpClient.connect(fx.server.path, { connectTimeout: 200 }));
    expect(QmpTimeoutError.isInstance(error)).toBe(true);
    expect((error as Error).message).toMatch(/greeting/);
    expect(Date.now() - started).toBeLessThan(2000);
    const connection = await accepted;
    await connection.ended;
  });

  test('retries until the socket exists', async () => {
    const path = join(fx.server.dir, 'late', 'qmp.sock');
    // Nothing exists at `path` yet: the client keeps retrying on ENOENT.
    const pending = QmpClient.connect(path, { connectTimeout: 5000 });
    let settled = false;
    void pending.then(() => (settled = true), () => (settled = true));
    let accepted = 0;
    const listener = createServer((socket) => {
      accepted++;
      socket.write(GREETING);
      socket.on('data', (data) => {
        const { id } = JSON.parse(data.toString()) as { id: number };
        socket.write(`{"return": {}, "id": ${id}}\n`);
      });
    });
    try {
      // The point of the test is a socket that appears late, as QEMU's does.
      await delay(100);
      expect(settled).toBe(false);
      await mkdir(dirname(path));
      await new Promise<void>((resolve) => listener.listen(path, resolve));
      const client = await pending;
      expect(client.state).toBe('ready');
      expect(accepted).toBe(1);
      await client.close({ timeout: 100 });
    } finally {
      await new Promise<void>((resolve) => listener.close(() => resolve()));
    }
  });

  test('TCP: { host, port }', async () => {
    const listener = createServer((socket) => {
      socket.write(GREETING);
      socket.on('data', (data) => {
        for (const line of data.toString().split('\n').filter(Boolean)) {
          const { id, execute } = JSON.parse(line) as { id: number; execute: string };
          socket.write(`${JSON.stringify({ return: execute === 'qmp_capabilities' ? {} : { over: 'tcp' }, id })}\n`);
        }
      });
    });
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    try {
      const address = listener.address();
      if (address === null || typeof address === 'string') throw new Error('no TCP address');
      const client = await QmpClient.connect<LooseCommands, LooseEvents>({ host: '127.0.0.1', port: address.port }, { connectTimeout: 5000 });
      expect(client.target).toBe(`127.0.0.1:${address.port}`);
      await expect(client.execute('anything')).resolves.toEqual({ over: 'tcp' });
      await client.close({ timeout: 100 });
    } finally {
      await new Promise<void>((resolve) => listener.close(() => resolve()));
    }
  });

  test('a socket file nobody listens on (ECONNREFUSED) is retried until the deadline', async () => {
    const live = `${fx.server.dir}/live.sock`;
    const stale = `${fx.server.dir}/stale.sock`;
    // A second name for the socket survives the listener (which unlinks only its own name):
    // a socket file without a listener, as a QEMU that just died leaves behind.
    const listener = createServer();
    await new Promise<void>((resolve) => listener.listen(live, resolve));
    await link(live, stale);
    await new Promise<void>((resolve) => listener.close(() => resolve()));
    const error = await rejectionOf(QmpClient.connect(stale, { connectTimeout: 150 }));
    expect(QmpTimeoutError.isInstance(error)).toBe(true);
    expect(((error as QmpTimeoutError).cause as NodeJS.ErrnoException).code).toBe('ECONNREFUSED');
  });

  test('a missing socket fails with QmpTimeoutError at the deadline, ENOENT attached', async () => {
    const error = await rejectionOf(QmpClient.connect(`${fx.server.dir}/absent.sock`, { connectTimeout: 150 }));
    expect(QmpTimeoutError.isInstance(error)).toBe(true);
    expect(((error as QmpTimeoutError).cause as NodeJS.ErrnoException).code).toBe('ENOENT');
  });

  test('oob requested but not offered: QmpNegotiationError', async () => {
    const accepted = fx.server.accept();
    const pending = rejectionOf(QmpClient.connect(fx.server.path, { oob: true, connectTimeout: 2000 }));
    const connection = await accepted;
    await connection.send('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 2}, "package": ""}, "capabilities": []}}\n');
    const error = await pending;
    expect(QmpNegotiationError.isInstance(error)).toBe(true);
    expect((error as QmpNegotiationError).offered).toEqual([]);
    await connection.ended;
  });

  test('qmp_capabilities refused: QmpNegotiationError with the command error as cause', async () => {
    const accepted = fx.server.accept();
    const pending = rejectionOf(QmpClient.connect(fx.server.path, { connectTimeout: 2000 }));
    const connection = await accepted;
    await connection.send(GREETING);
    const command = await connection.receive();
    await connection.send(`{"error": {"class": "GenericError", "desc": "no"}, "id": ${JSON.stringify(command['id'])}}\n`);
    const error = await pending;
    expect(QmpNegotiationError.isInstance(error)).toBe(true);
    expect(QmpCommandError.isInstance((error as Error).cause)).toBe(true);
  });

  test('a bad greeting is a QmpProtocolError', async () => {
    const accepted = fx.server.accept();
    const pending = rejectionOf(QmpClient.connect(fx.server.path, { connectTimeout: 2000 }));
    const connection = await accepted;
    await connection.send('{"return": {}, "id": 1}\n');
    const error = await pending;
    expect(QmpProtocolError.isInstance(error)).toBe(true);
    expect((error as Error).message).toMatch(/expected a QMP greeting/);
  });

  test('an aborted connect rejects with QmpAbortError', async () => {
    const controller = new AbortController();
    const pending = rejectionOf(QmpClient.connect(`${fx.server.dir}/absent.sock`, { connectTimeout: 10_000, signal: controller.signal }));
    setTimeout(() => controller.abort(), 30);
    expect(QmpAbortError.isInstance(await pending)).toBe(true);
  });
});
