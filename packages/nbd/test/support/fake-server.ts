import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdClient, type NbdConnectOptions } from '../../src/index.js';
import * as wire from './wire.js';

/** What the scripted server says about its export during the handshake. */
export interface FakeExport {
  size: number;
  transmissionFlags?: number;
  /** NBD_INFO_BLOCK_SIZE values, sent when given. */
  blockSize?: { minimum: number; preferred: number; maximum: number };
  /** Answer NBD_OPT_STRUCTURED_REPLY with ACK (default) or NBD_REP_ERR_UNSUP. */
  structured?: boolean;
  /** Contexts granted (by name, ids 1, 2, ...) when the client asks for them. */
  contexts?: readonly string[];
  /** Handshake flags of the greeting. */
  handshakeFlags?: number;
}

/** One accepted connection: the test reads what the client sent and decides every byte it gets. */
export class FakeNbdConnection {
  readonly socket: Socket;
  #buffer = Buffer.alloc(0);
  #waiter: (() => void) | undefined;
  #ended = false;
  /** Context ids granted by `handshake`, by name. */
  readonly contexts = new Map<string, number>();
  readonly closed: Promise<void>;

  constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#waiter?.();
    });
    socket.on('end', () => {
      this.#ended = true;
      this.#waiter?.();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  /** The next `n` bytes from the client; rejects if it ends the connection first. */
  async read(n: number): Promise<Buffer> {
    while (this.#buffer.length < n) {
      if (this.#ended) throw new Error(`client ended the connection (wanted ${n} bytes, have ${this.#buffer.length})`);
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
      });
      this.#waiter = undefined;
    }
    const out = this.#buffer.subarray(0, n);
    this.#buffer = this.#buffer.subarray(n);
    return out;
  }

  /** Whether the client has ended its side. */
  get ended(): boolean {
    return this.#ended;
  }

  async option(): Promise<{ option: number; data: Buffer }> {
    const header = await this.read(16);
    if (header.subarray(0, 8).toString() !== 'IHAVEOPT') throw new Error(`bad option magic ${header.toString('hex')}`);
    return { option: header.readUInt32BE(8), data: await this.read(header.readUInt32BE(12)) };
  }

  async request(): Promise<wire.WireRequest> {
    return wire.decodeRequest(await this.read(28));
  }

  send(bytes: Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.socket.write(bytes, (error) => (error ? reject(error) : resolve())));
  }

  /** Plays the server's side of a normal handshake up to the ACK of NBD_OPT_GO. */
  async handshake(exported: FakeExport): Promise<void> {
    await this.send(wire.greeting(exported.handshakeFlags));
    await this.read(4); // client flags
    for (;;) {
      const { option, data } = await this.option();
      if (option === wire.OPT.STRUCTURED_REPLY) {
        await this.send(exported.structured === false ? wire.optionError(option, wire.REP.ERR_UNSUP) : wire.ack(option));
      } else if (option === wire.OPT.SET_META_CONTEXT) {
        const nameLength = data.readUInt32BE(0);
        let at = 4 + nameLength;
        const count = data.readUInt32BE(at);
        at += 4;
        for (let i = 0; i < count; i++) {
          const length = data.readUInt32BE(at);
          const query = data.subarray(at + 4, at + 4 + length).toString();
          at += 4 + length;
          if (exported.contexts?.includes(query)) {
            const id = this.contexts.size + 1;
            this.contexts.set(query, id);
            await this.send(wire.metaContext(option, id, query));
          }
        }
        await this.send(wire.ack(option));
      } else if (option === wire.OPT.GO) {
        if (exported.blockSize) {
          const { minimum, preferred, maximum } = exported.blockSize;
          await this.send(wire.infoBlockSize(option, minimum, preferred, maximum));
        }
        await this.send(wire.infoExport(option, exported.size, exported.transmissionFlags ?? 0x3));
        await this.send(wire.ack(option));
        return;
      } else {
        await this.send(wire.optionError(option, wire.REP.ERR_UNSUP));
      }
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** A unix-socket server under a `qmpkit-nbd-*` temp dir that hands out connections. */
export class FakeNbdServer {
  readonly path: string;
  readonly #dir: string;
  readonly #server: Server;
  readonly #connections: FakeNbdConnection[] = [];
  readonly #accepted: FakeNbdConnection[] = [];
  readonly #waiters: ((connection: FakeNbdConnection) => void)[] = [];

  private constructor(dir: string, server: Server) {
    this.#dir = dir;
    this.path = join(dir, 'nbd.sock');
    this.#server = server;
    server.on('connection', (socket) => {
      const connection = new FakeNbdConnection(socket);
      this.#connections.push(connection);
      const waiter = this.#waiters.shift();
      if (waiter) waiter(connection);
      else this.#accepted.push(connection);
    });
  }

  static async start(): Promise<FakeNbdServer> {
    const dir = await mkdtemp(join(tmpdir(), 'qmpkit-nbd-'));
    const fake = new FakeNbdServer(dir, createServer());
    await new Promise<void>((resolve, reject) => {
      fake.#server.once('error', reject);
      fake.#server.listen(fake.path, () => resolve());
    }).catch(async (error: unknown) => {
      await rm(dir, { recursive: true, force: true });
      throw error;
    });
    return fake;
  }

  accept(): Promise<FakeNbdConnection> {
    const next = this.#accepted.shift();
    if (next) return Promise.resolve(next);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  async close(): Promise<void> {
    for (const connection of this.#connections) connection.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await rm(this.#dir, { recursive: true, force: true });
  }
}

/**
 * Per-test fake server and clients, closed after each test. Jest fails a test on an unhandled
 * rejection by itself (its sandbox keeps `process.on` handlers from seeing them); the
 * process-level check with real handlers is test/containment.test.ts, which runs hostile
 * scenarios in a plain Node process.
 */
export function useFakeNbdServer(): {
  readonly server: FakeNbdServer;
  connect(exported: FakeExport, options?: NbdConnectOptions): Promise<{ client: NbdClient; connection: FakeNbdConnection }>;
  track(client: NbdClient): NbdClient;
} {
  let current: FakeNbdServer | undefined;
  const clients: NbdClient[] = [];
  beforeEach(async () => {
    current = await FakeNbdServer.start();
  });
  afterEach(async () => {
    for (const client of clients.splice(0)) await client.close({ timeout: 100 });
    await current?.close();
    current = undefined;
  });
  const fixture = {
    get server(): FakeNbdServer {
      if (!current) throw new Error('the fake NBD server exists only while a test runs');
      return current;
    },
    track(client: NbdClient): NbdClient {
      clients.push(client);
      return client;
    },
    async connect(exported: FakeExport, options: NbdConnectOptions = {}) {
      const accepted = fixture.server.accept();
      const clientPromise = NbdClient.connect(fixture.server.path, { connectTimeout: 5000, ...options });
      const connection = await accepted;
      await connection.handshake(exported);
      const client = fixture.track(await clientPromise);
      return { client, connection };
    },
  };
  return fixture;
}

/** Resolves with what `promise` rejects with; fails the test if it resolves. */
export function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    (value) => {
      throw new Error(`expected a rejection, got ${String(value)}`);
    },
    (error: unknown) => error,
  );
}
