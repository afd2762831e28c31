#!/usr/bin/env node
// Throughput of @qmpkit/client against the QEMU-side limit.
//
// One `qemu-system-x86_64 -machine none` with two QMP monitors: one for a minimal raw-socket
// client written here (it writes command lines and counts reply lines, nothing more: the
// fastest a Node client can possibly be), one for @qmpkit/client from packages/client/dist;
// they swap monitors every round.
// Each runs N `query-status` commands sequentially (awaiting each reply; the two clients take
// turns every --slice commands) and pipelined (all N in flight at once), alternating the two
// clients over several rounds so drift in machine load hits both alike. Medians of commands/s are compared; the last line is
// `ratio sequential=X pipelined=Y` (client / raw). The Node process's CPU time per command
// is printed too: it is what the client itself costs, and unlike wall time it barely moves
// when other work competes for the machine.
//
// Usage: node bench/qmp.mjs [--commands 5000] [--rounds 6] [--slice 250]
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { Duplex } from 'node:stream';
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
const SLICE = option('slice', 250);

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

/** Wall time in seconds and this process's CPU time in µs. */
async function timed(run) {
  const cpu = process.cpuUsage();
  const start = process.hrtime.bigint();
  await run();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const used = process.cpuUsage(cpu);
  return { seconds, cpu: used.user + used.system };
}

/**
 * The client's own cost, free of QEMU and of machine load: both clients against an
 * in-memory peer that answers each command line on the next turn of the event loop,
 * best of several runs (the minimum is the run least disturbed by other processes).
 */
async function inProcessOverhead(runs = 8, n = 5000) {
  const reply = (id) => `{"return": {"status": "running", "singlestep": false, "running": true}, "id": ${id}}\r\n`;
  const peer = () => {
    let pending = '';
    const stream = new Duplex({
      read() {},
      write(chunk, _encoding, callback) {
        pending += chunk.toString();
        let out = '';
        let newline;
        while ((newline = pending.indexOf('\n')) >= 0) {
          const id = /"id":(\d+)/.exec(pending.slice(0, newline))?.[1] ?? 'null';
          pending = pending.slice(newline + 1);
          out += reply(id);
        }
        if (out) setImmediate(() => this.push(out));
        callback();
      },
    });
    setImmediate(() => stream.push('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}\n'));
    return stream;
  };
  const qmp = await QmpClient.connect(peer(), { connectTimeout: 5000 });
  const raw = peer();
  let seen = 0;
  let wake;
  raw.on('data', (chunk) => {
    for (let at = chunk.indexOf('\n'); at !== -1; at = chunk.indexOf('\n', at + 1)) seen++;
    if (wake) {
      const resolve = wake;
      wake = undefined;
      resolve();
    }
  });
  await new Promise((resolve) => setTimeout(resolve, 10));
  seen = 0;
  let bestClient = Infinity;
  let bestRaw = Infinity;
  for (let run = 0; run < runs; run++) {
    let start = process.hrtime.bigint();
    for (let i = 0; i < n; i++) await qmp.execute('query-status');
    bestClient = Math.min(bestClient, Number(process.hrtime.bigint() - start) / n / 1000);
    start = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      raw.write(`{"execute":"query-status","id":${i}}\n`);
      const target = seen + 1;
      while (seen < target) await new Promise((resolve) => { wake = resolve; });
    }
    bestRaw = Math.min(bestRaw, Number(process.hrtime.bigint() - start) / n / 1000);
  }
  await qmp.close({ timeout: 10 });
  raw.destroy();
  return { client: bestClient, raw: bestRaw };
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

const dir = await mkdtemp(join(tmpdir(), 'qmpkit-bench-'));
const monitors = [join(dir, 'monitor-a.sock'), join(dir, 'monitor-b.sock')];
const qemu = spawn(
  process.env.QEMU_SYSTEM ?? 'qemu-system-x86_64',
  ['-machine', 'none', '-nodefaults', '-display', 'none',
    '-qmp', `unix:${monitors[0]},server=on,wait=off`, '-qmp', `unix:${monitors[1]},server=on,wait=off`],
  { stdio: ['ignore', 'ignore', 'inherit'] },
);
const qemuExited = new Promise((resolve) => qemu.once('exit', resolve));
let failed = false;
let raw;
let qmp;
try {
  // The clients swap monitors every round (reconnecting, untimed), so a difference between
  // QEMU's two monitors cannot pass for a difference between the clients.
  const attach = async (round) => {
    raw?.close();
    await qmp?.close({ timeout: 500 });
    raw = await RawQmp.connect(monitors[round % 2]);
    qmp = await QmpClient.connect(monitors[(round + 1) % 2], { connectTimeout: 10_000 });
  };
  await attach(0);
  const results = { raw: { sequential: [], pipelined: [] }, client: { sequential: [], pipelined: [] } };
  const cpu = { raw: { sequential: [], pipelined: [] }, client: { sequential: [], pipelined: [] } };
  let nextRawId = 1;
  const runners = {
    raw: {
      sequential: (n) => raw.sequential(n, (nextRawId += n)),
      pipelined: (n) => raw.pipelined(n, (nextRawId += n)),
    },
    client: {
      sequential: (n) => clientSequential(qmp, n),
      pipelined: (n) => clientPipelined(qmp, n),
    },
  };

  // Warm-up: JIT and QEMU's allocator, not measured.
  for (const who of ['raw', 'client']) {
    for (const mode of ['sequential', 'pipelined']) await runners[who][mode](COMMANDS);
  }

  console.log(`${COMMANDS} query-status per client and mode, ${ROUNDS} rounds, QEMU ${qmp.version.qemu.major}.${qmp.version.qemu.minor}.${qmp.version.qemu.micro}`);
  for (let round = 0; round < ROUNDS; round++) {
    if (round > 0) await attach(round);
    const line = [];
    // Sequential: the clients take turns every SLICE commands, so a burst of load from
    // elsewhere on the machine hits both about equally; each client's rate is its N commands
    // over the sum of its slice times.
    const spent = { raw: { seconds: 0, cpu: 0 }, client: { seconds: 0, cpu: 0 } };
    const slices = Math.ceil(COMMANDS / SLICE);
    for (let slice = 0; slice < slices; slice++) {
      const count = Math.min(SLICE, COMMANDS - slice * SLICE);
      const order = (round + slice) % 2 === 0 ? ['raw', 'client'] : ['client', 'raw'];
      for (const who of order) {
        const { seconds, cpu: used } = await timed(() => runners[who].sequential(count));
        spent[who].seconds += seconds;
        spent[who].cpu += used;
      }
    }
    for (const who of ['raw', 'client']) {
      results[who].sequential.push(COMMANDS / spent[who].seconds);
      cpu[who].sequential.push(spent[who].cpu / COMMANDS);
      line.push(`${who} sequential ${(COMMANDS / spent[who].seconds).toFixed(0)}/s`);
    }
    // Pipelined: all N in flight at once, clients alternating which goes first.
    for (const who of round % 2 === 0 ? ['raw', 'client'] : ['client', 'raw']) {
      const { seconds, cpu: used } = await timed(() => runners[who].pipelined(COMMANDS));
      results[who].pipelined.push(COMMANDS / seconds);
      cpu[who].pipelined.push(used / COMMANDS);
      line.push(`${who} pipelined ${(COMMANDS / seconds).toFixed(0)}/s`);
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
  const overhead = await inProcessOverhead();
  console.log(
    `client-side cost without QEMU (in-memory peer, best of 8): raw ${overhead.raw.toFixed(2)} µs/command, ` +
      `@qmpkit/client ${overhead.client.toFixed(2)} µs/command (+${(overhead.client - overhead.raw).toFixed(2)} µs)`,
  );
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
