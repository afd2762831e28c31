#!/usr/bin/env node
// Throughput of @qmpkit/client against the QEMU-side limit.
//
// One `qemu-system-x86_64 -machine none` with two QMP monitors: one for a minimal raw-socket
// client written here (it writes command lines and counts reply lines, nothing more: the
// fastest a Node client can possibly be), one for @qmpkit/client from packages/client/dist.
// Each runs N `query-status` commands sequentially (awaiting each reply) and pipelined (all in
// flight at once), alternating the two clients over several rounds so drift in machine load
// hits both alike. Medians of commands/s are compared; the last line is
// `ratio sequential=X pipelined=Y` (client / raw). The Node process's CPU time per command
// is printed too: it is what the client itself costs, and unlike wall time it barely moves
// when other work competes for the machine.
//
// Usage: node bench/qmp.mjs [--commands 5000] [--rounds 5]
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function option(name, fallback) {
  const index = process.argv.indexOf(`--${name}`);
  if (index < 0) return fallback;
  const value = Number(process.argv[index + 1]);
  if (!Number.isSafeInteger(value) || value <= 0) throw new Error(`--${name} needs a positive integer`);
  return value;
}

const COMMANDS = option('commands', 5000);
const ROUNDS = option('rounds', 6);

const { QmpClient } = await import(pathToFileURL(join(root, 'packages/client/dist/index.js')).href);

/** The raw client: one socket, lines out, newline-counted lines in. */
class RawQmp {
  static async connect(path, timeout = 10_000) {
    const deadline = Date.now() + timeout;
    for (;;) {
      try {
        const socket = await new Promise((resolve, reject) => {
          const s = connect(path);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        const raw = new RawQmp(socket);
        await raw.#lines(1); // greeting
        socket.write('{"execute":"qmp_capabilities"}\n');
        await raw.#lines(1);
        return raw;
      } catch (error) {
        if (Date.now() > deadline || !['ENOENT', 'ECONNREFUSED'].includes(error.code)) throw error;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  }

  #socket;
  #seen = 0;
  #target = 0;
  #wake = undefined;

  constructor(socket) {
    this.#socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (chunk) => {
      let at = -1;
      while ((at = chunk.indexOf(10, at + 1)) !== -1) this.#seen++;
      if (this.#wake && this.#seen >= this.#target) {
        const wake = this.#wake;
        this.#wake = undefined;
        wake();
      }
    });
  }

  #lines(count) {
    this.#target = this.#seen + count;
    if (this.#seen >= this.#target) return Promise.resolve();
    return new Promise((resolve) => {
      this.#wake = resolve;
    });
  }

  async sequential(n, firstId) {
    for (let i = 0; i < n; i++) {
      this.#socket.write(`{"execute":"query-status","id":${firstId + i}}\n`);
      await this.#lines(1);
    }
  }

  async pipelined(n, firstId) {
    const done = this.#lines(n);
    let text = '';
    for (let i = 0; i < n; i++) text += `{"execute":"query-status","id":${firstId + i}}\n`;
    this.#socket.write(text);
    await done;
  }

  close() {
    this.#socket.destroy();
  }
}

async function clientSequential(qmp, n) {
  for (let i = 0; i < n; i++) {
    const status = await qmp.execute('query-status');
    if (status.running !== true) throw new Error(`unexpected reply ${JSON.stringify(status)}`);
  }
}

async function clientPipelined(qmp, n) {
  const calls = new Array(n);
  for (let i = 0; i < n; i++) calls[i] = qmp.execute('query-status');
  const results = await Promise.all(calls);
  if (results.length !== n || results[n - 1].running !== true) throw new Error('unexpected replies');
}

/** Commands per second of wall time, and this process's CPU time per command in µs. */
async function timed(run) {
  const cpu = process.cpuUsage();
  const start = process.hrtime.bigint();
  await run();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const used = process.cpuUsage(cpu);
  return { rate: COMMANDS / seconds, cpu: (used.user + used.system) / COMMANDS };
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

const dir = await mkdtemp(join(tmpdir(), 'qmpkit-bench-'));
const rawSocket = join(dir, 'raw.sock');
const clientSocket = join(dir, 'client.sock');
const qemu = spawn(
  process.env.QEMU_SYSTEM ?? 'qemu-system-x86_64',
  ['-machine', 'none', '-nodefaults', '-display', 'none',
    '-qmp', `unix:${rawSocket},server=on,wait=off`, '-qmp', `unix:${clientSocket},server=on,wait=off`],
  { stdio: ['ignore', 'ignore', 'inherit'] },
);
const qemuExited = new Promise((resolve) => qemu.once('exit', resolve));
let failed = false;
let raw;
let qmp;
try {
  raw = await RawQmp.connect(rawSocket);
  qmp = await QmpClient.connect(clientSocket, { connectTimeout: 10_000 });
  const results = { raw: { sequential: [], pipelined: [] }, client: { sequential: [], pipelined: [] } };
  const cpu = { raw: { sequential: [], pipelined: [] }, client: { sequential: [], pipelined: [] } };
  let nextRawId = 1;
  const runners = {
    raw: {
      sequential: () => raw.sequential(COMMANDS, (nextRawId += COMMANDS)),
      pipelined: () => raw.pipelined(COMMANDS, (nextRawId += COMMANDS)),
    },
    client: {
      sequential: () => clientSequential(qmp, COMMANDS),
      pipelined: () => clientPipelined(qmp, COMMANDS),
    },
  };

  // Warm-up: JIT and QEMU's allocator, not measured.
  for (const who of ['raw', 'client']) {
    for (const mode of ['sequential', 'pipelined']) await runners[who][mode]();
  }

  console.log(`${COMMANDS} query-status per run, ${ROUNDS} rounds, QEMU ${qmp.version.qemu.major}.${qmp.version.qemu.minor}.${qmp.version.qemu.micro}`);
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? ['raw', 'client'] : ['client', 'raw'];
    const line = [];
    for (const mode of ['sequential', 'pipelined']) {
      for (const who of order) {
        const { rate, cpu: perCommand } = await timed(runners[who][mode]);
        results[who][mode].push(rate);
        cpu[who][mode].push(perCommand);
        line.push(`${who} ${mode} ${rate.toFixed(0)}/s`);
      }
    }
    console.log(`round ${round + 1}: ${line.join(', ')}`);
  }

  const summary = {};
  for (const mode of ['sequential', 'pipelined']) {
    const rawRate = median(results.raw[mode]);
    const clientRate = median(results.client[mode]);
    summary[mode] = clientRate / rawRate;
    console.log(
      `${mode}: raw ${rawRate.toFixed(0)} commands/s, @qmpkit/client ${clientRate.toFixed(0)} commands/s (medians); ` +
        `Node CPU per command: raw ${median(cpu.raw[mode]).toFixed(1)} µs, @qmpkit/client ${median(cpu.client[mode]).toFixed(1)} µs`,
    );
  }
  console.log(`targets: sequential >= 0.95, pipelined >= 0.98`);
  console.log(`ratio sequential=${summary.sequential.toFixed(3)} pipelined=${summary.pipelined.toFixed(3)}`);
} catch (error) {
  failed = true;
  console.error('benchmark failed:', error);
} finally {
  raw?.close();
  await qmp?.close({ timeout: 500 }).catch(() => undefined);
  if (qemu.exitCode === null && qemu.signalCode === null) qemu.kill('SIGKILL');
  await qemuExited;
  await rm(dir, { recursive: true, force: true });
}
process.exitCode = failed ? 1 : 0;
