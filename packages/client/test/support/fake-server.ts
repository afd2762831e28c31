import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { QmpClient, type ConnectOptions, type LooseCommands, type LooseEvents } from '../../src/index.js';

/** The scripted server answers any command name, so its clients are untyped. */
export type LooseClient = QmpClient<LooseCommands, LooseEvents>;

export const GREETING = '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}\r\n';

/** One QMP event as QEMU writes it, without the line end. */
export function eventLine(event: string, data?: Record<string, unknown>, seconds = 1): string {
  const message: Record<string, unknown> = { event };
  if (data !== undefined) message['data'] = data;
  message['timestamp'] = { seconds, microseconds: 0 };
  return JSON.stringify(message);
}

/**
 * One accepted connection of the scripted server: the test decides byte by byte what
 * the client receives, and reads the commands the client sent.
 */
export class FakeConnection {
  readonly socket: Socket;
  readonly #received: Record<string, unknown>[] = [];
  readonly #waiters: ((message: Record<string, unknown>) => void)[] = [];
  #buffer = '';
  /** 0xFF bytes (the client's parser resync) received so far; they are not part of any line. */
  resyncBytes = 0;
  readonly ended: Promise<void>;

  constructor(socket: Socket) {
    this.socket = socket;
    // Bytes, not text: 0xFF never occurs in UTF-8, so it is counted and removed before decoding.
    const decoder = new StringDecoder('utf8');
    // The client writes one command per line, so a line splitter is enough here.
    socket.on('data', (chunk: Buffer) => {
      const kept = chunk.filter((byte) => byte !== 0xff);
      this.resyncBytes += chunk.length - kept.length;
      this.#buffer += decoder.write(Buffer.from(kept));
      let newline: number;
      while ((newline = this.#buffer.indexOf('\n')) >= 0) {
        const line = this.#buffer.slice(0, newline);
        this.#buffer = this.#buffer.slice(newline + 1);
        if (line.trim() === '') continue;
        const message = JSON.parse(line) as Record<string, unknown>;
        const waiter = this.#waiters.shift();
        if (waiter) waiter(message);
        else this.#received.push(message);
      }
    });
    socket.on('error', () => undefined);
    this.ended = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  /** The next command the client sends. */
  receive(): Promise<Record<string, unknown>> {
    const next = this.#received.shift();
    if (next) return Promise.resolve(next);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** The next command the client sends, or undefined once the connection has closed. */
  receiveOrEnd(): Promise<Record<string, unknown> | undefined> {
    return Promise.race([this.receive(), this.ended.then(() => undefined)]);
  }

  /**
   * Writes `bytes` cut at `cuts` (fractions of its length, in any order), one write per
   * piece with a turn of the event loop between, as a slow or unlucky peer delivers them.
   * Errors (the client may have hung up) are ignored: a hostile peer does not care.
   */
  async sendInPieces(bytes: Buffer, cuts: readonly number[]): Promise<void> {
    const offsets = [...new Set(cuts.map((c) => Math.floor(c * bytes.length)))].filter((o) => o > 0 && o < bytes.length).sort((a, b) => a - b);
    let previous = 0;
    for (const offset of [...offsets, bytes.length]) {
      if (this.socket.destroyed || this.socket.writableEnded) return;
      if (offset > previous) await this.send(bytes.subarray(previous, offset)).catch(() => undefined);
      previous = offset;
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  send(data: string | Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.socket.write(data, (error) => (error ? reject(error) : resolve())));
  }

  /** Sends an event (with `data` when given) stamped with `seconds`, as QEMU frames it. */
  sendEvent(event: string, data?: Record<string, unknown>, seconds = 1): Promise<void> {
    return this.send(`${eventLine(event, data, seconds)}\r\n`);
  }

  /** Answers the next command with `return` (echoing its id). */
  async reply(value: unknown = {}): Promise<Record<string, unknown>> {
    const command = await this.receive();
    await this.send(`${JSON.stringify({ return: value, id: command['id'] })}\r\n`);
    return command;
  }

  /** Greets and accepts `qmp_capabilities`. */
  async handshake(): Promise<void> {
    await this.send(GREETING);
    const command = await this.reply({});
    if (command['execute'] !== 'qmp_capabilities') throw new Error(`expected qmp_capabilities, got ${JSON.stringify(command)}`);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** A unix-socket server under a `qmpkit-client-*` temp dir that hands out connections. */
export class FakeQmpServer {
  readonly dir: string;
  readonly path: string;
  readonly #server: Server;
  readonly #connections: FakeConnection[] = [];
  readonly #accepted: FakeConnection[] = [];
  readonly #waiters: ((connection: FakeConnection) => void)[] = [];

  private constructor(dir: string, server: Server) {
    this.dir = dir;
    this.path = join(dir, 'qmp.sock');
    this.#server = server;
    server.on('connection', (socket) => {
      const connection = new FakeConnection(socket);
      this.#connections.push(connection);
      const waiter = this.#waiters.shift();
      if (waiter) waiter(connection);
      else this.#accepted.push(connection);
    });
  }

  static async start(): Promise<FakeQmpServer> {
    const dir = await mkdtemp(join(tmpdir(), 'qmpkit-client-'));
    const server = createServer();
    const fake = new FakeQmpServer(dir, server);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(fake.path, () => resolve());
      });
    } catch (error) {
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
    return fake;
  }

  accept(): Promise<FakeConnection> {
    const next = this.#accepted.shift();
    if (next) return Promise.resolve(next);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Connects a client and completes the handshake on both sides. */
  async connect(options: ConnectOptions = {}): Promise<{ client: LooseClient; connection: FakeConnection }> {
    const accepted = this.accept();
    const clientPromise = QmpClient.connect<LooseCommands, LooseEvents>(this.path, { connectTimeout: 5000, ...options });
    const connection = await accepted;
    await connection.handshake();
    const client = await clientPromise;
    return { client, connection };
  }

  async close(): Promise<void> {
    for (const connection of this.#connections) connection.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** Connections for one test file: a fresh server per test, and every client it opened closed after. */
export interface FakeServerFixture {
  /** The current test's server. */
  readonly server: FakeQmpServer;
  /** Starts a client connecting; the test plays the server's side of the handshake. */
  connectClient(options?: ConnectOptions): Promise<LooseClient>;
  /** Connects a client and completes the handshake on both sides. */
  connect(options?: ConnectOptions): Promise<{ client: LooseClient; connection: FakeConnection }>;
}

/** Registers the beforeEach/afterEach hooks behind a `FakeServerFixture`; call it at the top of a test file. */
export function useFakeQmpServer(): FakeServerFixture {
  let current: FakeQmpServer | undefined;
  const clients: LooseClient[] = [];
  beforeEach(async () => {
    current = await FakeQmpServer.start();
  });
  afterEach(async () => {
    for (const client of clients.splice(0)) await client.close({ timeout: 100 });
    await current?.close();
    current = undefined;
  });
  const fixture: FakeServerFixture = {
    get server(): FakeQmpServer {
      if (current === undefined) throw new Error('the fake QMP server exists only while a test runs');
      return current;
    },
    async connectClient(options = {}) {
      const client = await QmpClient.connect<LooseCommands, LooseEvents>(fixture.server.path, { connectTimeout: 5000, ...options });
      clients.push(client);
      return client;
    },
    async connect(options = {}) {
      const pair = await fixture.server.connect(options);
      clients.push(pair.client);
      return pair;
    },
  };
  return fixture;
}

/** Resolves with what `promise` rejects with; fails the test if it resolves. */
export function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    (value) => {
      throw new Error(`expected a rejection, got ${JSON.stringify(value)}`);
    },
    (error: unknown) => error,
  );
}

/** One thing a scripted peer sends. `command` is the index of a command sent after negotiation. */
export type PeerItem =
  | { kind: 'event'; name: string; data?: Record<string, unknown> | undefined; pretty?: boolean }
  | { kind: 'reply'; command: number; value: unknown; pretty?: boolean }
  | { kind: 'error'; command: number; errorClass: string; desc: string; pretty?: boolean }
  | { kind: 'stray'; id: number; value: unknown }
  | { kind: 'space'; text: string }
  /** Complete input that breaks the protocol on its own (see POISON). */
  | { kind: 'poison'; text: string }
  /** Arbitrary bytes: what they do depends on what surrounds them. */
  | { kind: 'garbage'; bytes: Uint8Array };

/**
 * What a hostile peer does over one connection: what it sends before and as its greeting,
 * how it answers `qmp_capabilities` (later repeats are accepted), what it sends once the
 * client has sent `commands` commands, and how it ends. Each phase is cut into pieces at
 * `cuts` (fractions of its length).
 */
export interface PeerScript {
  preGreeting: PeerItem[];
  greeting: 'valid' | 'none' | { kind: 'poison'; text: string } | { kind: 'garbage'; bytes: Uint8Array };
  negotiation: { items: PeerItem[]; answer: 'ok' | 'refuse' | 'id-less-error' | 'greet-again' | 'silence' };
  commands: number;
  items: PeerItem[];
  end: 'close' | 'destroy' | 'hang' | 'cut-mid-message';
  cuts: number[];
}

/**
 * Input that breaks QMP on its own, in every phase: each is either not JSON (found at the
 * latest at its line end), or a complete JSON message of a shape QEMU never sends.
 */
export const POISON: readonly string[] = [
  '{"return": {,,,}\n',
  '{"return": 0, "error": null}\n',
  '{"return": 1, "error": {"class": "GenericError", "desc": "x"}, "id": 1}\n',
  '{"error": "text"}\n',
  '{"error": {"class": 1, "desc": "x"}}\n',
  '{"error": {"class": "GenericError"}}\n',
  '{"return": {}, "id": "1"}\n',
  '{"return": {}, "id": -1}\n',
  '{"return": {}, "id": 1.5}\n',
  '{"return": {}, "id": null}\n',
  '{"return": {}, "id": {"nested": 1}}\n',
  '{"event": 5, "timestamp": {"seconds": 1, "microseconds": 0}}\n',
  '{"event": "STOP"}\n',
  '{"event": "STOP", "data": [], "timestamp": {"seconds": 1, "microseconds": 0}}\n',
  '{"event": "STOP", "timestamp": {"seconds": "1", "microseconds": 0}}\n',
  '{"event": "STOP", "return": 1, "timestamp": {"seconds": 1, "microseconds": 0}}\n',
  '{"QMP": {"version": 7, "capabilities": []}}\n',
  '{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}, "capabilities": [1]}}\n',
  '{"hello": 1}\n',
  '{}\n',
  '[1, 2]\n',
  '"text"\n',
  '{"return": tru}\n',
  '{"return": 01}\n',
  '{"return": "\u0001"}\n',
  '{"return": "\\x"}\n',
  '{"return": NaN}\n',
  '{"return": 1}}\n',
  '{"return": 1, }\n',
  '{"return" 1}\n',
  'garbage\n',
  '\u0000\n',
  `{"return": ${'['.repeat(5000)}${']'.repeat(5000)}, "id": 1}\n`,
  `{"return": ${'{"a":'.repeat(3000)}1${'}'.repeat(3000)}}\n`,
];

function encodeItem(item: PeerItem, ids: readonly number[]): Buffer {
  const frame = (message: unknown, pretty: boolean | undefined): Buffer =>
    Buffer.from(`${pretty === true ? JSON.stringify(message, null, 2) : JSON.stringify(message)}\r\n`);
  switch (item.kind) {
    case 'event': {
      const message: Record<string, unknown> = { event: item.name };
      if (item.data !== undefined) message['data'] = item.data;
      message['timestamp'] = { seconds: 1, microseconds: 2 };
      return frame(message, item.pretty);
    }
    case 'reply':
      return frame({ return: item.value, id: ids[item.command] }, item.pretty);
    case 'error':
      return frame({ error: { class: item.errorClass, desc: item.desc }, id: ids[item.command] }, item.pretty);
    case 'stray':
      return frame({ return: item.value, id: item.id }, false);
    case 'space':
      return Buffer.from(item.text);
    case 'poison':
      return Buffer.from(item.text);
    case 'garbage':
      return Buffer.from(item.bytes);
  }
}

/** The ids of the commands a `HostilePeer` saw after negotiation, and how its run ended. */
export interface PeerRecord {
  ids: number[];
  negotiationAnswered: boolean;
}

/**
 * Plays a `PeerScript` on one accepted connection. Resolves once the script has run to its
 * end (or the client hung up); the socket is left as the script's `end` says.
 */
export async function playPeerScript(connection: FakeConnection, script: PeerScript): Promise<PeerRecord> {
  const record: PeerRecord = { ids: [], negotiationAnswered: false };
  const phase = (items: readonly PeerItem[], tail: Buffer = Buffer.alloc(0)): Buffer =>
    Buffer.concat([...items.map((item) => encodeItem(item, record.ids)), tail]);
  const greeting = script.greeting === 'valid'
    ? Buffer.from(GREETING)
    : script.greeting === 'none'
      ? Buffer.alloc(0)
      : script.greeting.kind === 'poison' ? Buffer.from(script.greeting.text) : Buffer.from(script.greeting.bytes);
  await connection.sendInPieces(phase(script.preGreeting, greeting), script.cuts);
  let capabilities = 0;
  for (;;) {
    const command = await connection.receiveOrEnd();
    if (command === undefined) return record;
    if (command['execute'] === 'qmp_capabilities') {
      capabilities++;
      const id = command['id'];
      if (capabilities > 1) {
        await connection.send(`${JSON.stringify({ return: {}, id })}\r\n`).catch(() => undefined);
        continue;
      }
      const answer = script.negotiation.answer;
      const tail = answer === 'ok'
        ? `${JSON.stringify({ return: {}, id })}\r\n`
        : answer === 'refuse'
          ? `${JSON.stringify({ error: { class: 'GenericError', desc: 'refused' }, id })}\r\n`
          : answer === 'id-less-error'
            ? '{"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword"}}\r\n'
            : answer === 'greet-again' ? GREETING : '';
      record.negotiationAnswered = answer !== 'silence';
      await connection.sendInPieces(phase(script.negotiation.items, Buffer.from(tail)), script.cuts);
      continue;
    }
    if (typeof command['id'] === 'number') record.ids.push(command['id']);
    if (record.ids.length < script.commands) continue;
    await connection.sendInPieces(phase(script.items), script.cuts);
    switch (script.end) {
      case 'close':
        connection.socket.end();
        break;
      case 'destroy':
        connection.destroy();
        break;
      case 'cut-mid-message':
        await connection.send('{"return": {"status": "runn').catch(() => undefined);
        connection.socket.end();
        break;
      case 'hang':
        break;
    }
    return record;
  }
}
