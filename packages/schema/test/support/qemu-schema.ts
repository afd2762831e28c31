// Reads `query-qmp-schema` from the installed qemu-system-x86_64. A deliberately minimal QMP
// exchange over node:net (greeting, qmp_capabilities, one command): this package sits below
// @qmpkit/client in the dependency order and cannot use it.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** One entry of QEMU's SchemaInfo list (qapi/introspect.json), as far as the parity test needs it. */
export interface SchemaInfo {
  readonly name: string;
  readonly 'meta-type': 'builtin' | 'enum' | 'array' | 'object' | 'alternate' | 'command' | 'event';
  readonly features?: readonly string[];
  readonly 'json-type'?: string;
  readonly values?: readonly string[];
  readonly 'element-type'?: string;
  readonly members?: readonly { readonly name?: string; readonly type?: string; readonly default?: null }[];
  readonly tag?: string;
  readonly variants?: readonly { readonly case: string; readonly type: string }[];
  readonly 'arg-type'?: string;
  readonly 'ret-type'?: string;
  readonly 'allow-oob'?: boolean;
}

interface QmpMessage {
  readonly QMP?: unknown;
  readonly return?: unknown;
  readonly error?: { readonly class: string; readonly desc: string };
  readonly id?: unknown;
  readonly event?: string;
}

/** Yields complete JSON messages from a socket; QMP separates them with newlines. */
function messageReader(socket: Socket): () => Promise<QmpMessage> {
  let buffer = '';
  const ready: QmpMessage[] = [];
  const waiting: { resolve: (m: QmpMessage) => void; reject: (e: Error) => void }[] = [];
  let failure: Error | undefined;
  const fail = (error: Error) => {
    failure = error;
    for (const w of waiting.splice(0)) w.reject(error);
  };
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    buffer += chunk;
    for (let nl = buffer.indexOf('\n'); nl !== -1; nl = buffer.indexOf('\n')) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line === '') continue;
      const message = JSON.parse(line) as QmpMessage;
      const waiter = waiting.shift();
      if (waiter) waiter.resolve(message);
      else ready.push(message);
    }
  });
  socket.on('error', fail);
  socket.on('close', () => fail(new Error('QMP socket closed')));
  return () => {
    const next = ready.shift();
    if (next) return Promise.resolve(next);
    if (failure) return Promise.reject(failure);
    return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
  };
}

function connectWhenListening(path: string, deadline: number, qemu: ChildProcess, spawnError: () => Error | undefined): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const failedToStart = spawnError();
      if (failedToStart !== undefined) {
        reject(failedToStart);
        return;
      }
      if (qemu.exitCode !== null) {
        reject(new Error(`qemu-system-x86_64 exited with ${qemu.exitCode} before QMP was reachable`));
        return;
      }
      const socket = connect(path);
      socket.once('connect', () => resolve(socket));
      socket.once('error', (error: NodeJS.ErrnoException) => {
        socket.destroy();
        // QEMU creates the socket shortly after start; until then connecting fails.
        if ((error.code === 'ENOENT' || error.code === 'ECONNREFUSED') && Date.now() < deadline) {
          setTimeout(attempt, 20);
        } else {
          reject(error);
        }
      });
    };
    attempt();
  });
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Starts QEMU, returns its `query-qmp-schema` and version, and always stops QEMU and removes its files. */
export async function readLiveSchema(binary = 'qemu-system-x86_64', timeoutMs = 20_000): Promise<{ schema: SchemaInfo[]; version: unknown }> {
  const dir = mkdtempSync(join(tmpdir(), 'qmpkit-schema-'));
  const path = join(dir, 'qmp.sock');
  const qemu = spawn(
    binary,
    ['-machine', 'none', '-nodefaults', '-display', 'none', '-qmp', `unix:${path},server=on,wait=off`],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  qemu.stderr?.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  let spawnError: Error | undefined;
  const exited = new Promise<void>((resolve) => {
    qemu.once('exit', () => resolve());
    // A binary that cannot be started emits 'error' and never 'exit'.
    qemu.once('error', (error) => {
      spawnError = error;
      resolve();
    });
  });
  let socket: Socket | undefined;
  try {
    const deadline = Date.now() + timeoutMs;
    socket = await connectWhenListening(path, deadline, qemu, () => spawnError);
    const next = messageReader(socket);
    const remaining = () => Math.max(1, deadline - Date.now());
    const greeting = await withTimeout(next(), remaining(), 'the QMP greeting');
    const version = (greeting.QMP as { version?: unknown } | undefined)?.version;
    const execute = async (command: string, id: number): Promise<unknown> => {
      socket?.write(`${JSON.stringify({ execute: command, id })}\n`);
      for (;;) {
        const reply = await withTimeout(next(), remaining(), `the reply to ${command}`);
        if (reply.event !== undefined) continue;
        if (reply.id !== id) throw new Error(`unexpected QMP message ${JSON.stringify(reply)}`);
        if (reply.error) throw new Error(`${command} failed: ${reply.error.class}: ${reply.error.desc}`);
        return reply.return;
      }
    };
    await execute('qmp_capabilities', 1);
    const schema = (await execute('query-qmp-schema', 2)) as SchemaInfo[];
    return { schema, version };
  } catch (error) {
    throw new Error(`reading the live QMP schema failed (qemu stderr: ${stderr.trim() || 'empty'})`, { cause: error });
  } finally {
    socket?.destroy();
    if (spawnError === undefined && qemu.exitCode === null && qemu.signalCode === null) qemu.kill('SIGKILL');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  }
}
