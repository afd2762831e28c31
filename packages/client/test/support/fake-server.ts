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
