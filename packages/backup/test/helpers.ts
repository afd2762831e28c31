// Scratch directories, images and QEMU machines for the integration tests: everything
// created here is removed by `cleanup()` (called from afterEach/afterAll), also on failure.
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qemuImg, qemuIo } from '@qmpkit/image-tools';
import { QemuMachine, QemuStorageDaemon } from '@qmpkit/machine';
import type { DriveOptions, QemuProcess, QemuStorageDaemonOptions } from '@qmpkit/machine';
import { isJobEvent, type BackupJob, type BackupQmp } from '../src/index.js';
import type { JobInfo } from '../src/qapi.js';

/** The CLI as shipped: the built dist/cli.js (turbo builds before it tests). */
export const CLI = join(__dirname, '..', 'dist', 'cli.js');

export interface CliRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export type Pattern = readonly [pattern: number, offset: string | number, length: string | number];

/** The default pattern of iotest 124's drives. */
export const DRIVE0_PATTERN: readonly Pattern[] = [
  [0x41, 0, 512],
  [0xd5, '1M', '32k'],
  [0xdc, '32M', '124k'],
];
export const DRIVE1_PATTERN: readonly Pattern[] = [
  [0x14, 0, 512],
  [0x5d, '1M', '32k'],
  [0xcd, '32M', '124k'],
];
export const WRITES_A: readonly Pattern[] = [
  [0xab, 0, 512],
  [0xfe, '16M', '256k'],
  [0x64, '32736k', '64k'],
];
export const WRITES_B: readonly Pattern[] = [
  [0x9a, 0, 512],
  [0x55, '8M', '352k'],
  [0x78, '15872k', '1M'],
];

export class Scratch {
  readonly machines: QemuProcess[] = [];
  readonly processes: ChildProcess[] = [];
  dir = '';

  async init(): Promise<this> {
    this.dir = await mkdtemp(join(tmpdir(), 'qmpkit-backup-'));
    return this;
  }

  path(name: string): string {
    return join(this.dir, name);
  }

  async image(name: string, size = '64M', patterns: readonly Pattern[] = []): Promise<string> {
    const file = this.path(name);
    await qemuImg.create(file, { format: 'qcow2', size });
    if (patterns.length > 0) {
      await qemuIo.run(file, patterns.map(([p, o, l]) => `write -P${p} ${o} ${l}`), { format: 'qcow2' });
    }
    return file;
  }

  async launch(drives: readonly DriveOptions[] = [], args: readonly string[] = []): Promise<QemuMachine> {
    const vm = new QemuMachine({ drives, args });
    this.machines.push(vm);
    await vm.launch({ timeout: 20_000 });
    return vm;
  }

  /** A qemu-storage-daemon (no HMP), stopped in `cleanup()`. */
  async storageDaemon(options: QemuStorageDaemonOptions): Promise<QemuStorageDaemon> {
    const qsd = new QemuStorageDaemon(options);
    this.machines.push(qsd);
    await qsd.launch({ timeout: 20_000 });
    return qsd;
  }

  /**
   * Start the CLI; `umask` runs it under that umask (through sh). The process is killed in
   * `cleanup()` if it is still running.
   */
  cli(
    args: readonly string[],
    options: { umask?: number; timeout?: number; cwd?: string } = {},
  ): { child: ChildProcess; done: Promise<CliRun>; stderrSoFar: () => string } {
    const argv =
      options.umask === undefined
        ? [process.execPath, CLI, ...args]
        : ['/bin/sh', '-c', `umask ${options.umask.toString(8).padStart(3, '0')} && exec "$0" "$@"`, process.execPath, CLI, ...args];
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], ...(options.cwd ? { cwd: options.cwd } : {}) });
    this.processes.push(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeout ?? 90_000);
    const done = new Promise<CliRun>((resolve) => {
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, stdout, stderr });
      });
    });
    return { child, done, stderrSoFar: () => stderr };
  }

  async cleanup(): Promise<void> {
    for (const child of this.processes.splice(0)) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    for (const vm of this.machines.splice(0)) {
      await vm.shutdown({ timeout: 10_000 }).catch(() => vm.kill());
    }
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}

/** Guest-like writes through HMP qemu-io, then a flush (which also drives blkdebug's state machine). */
export async function hmpWrites(vm: QemuMachine, drive: string, patterns: readonly Pattern[]): Promise<void> {
  for (const [p, o, l] of patterns) await vm.hmpQemuIo(drive, `write -P${p} ${o} ${l}`);
  await vm.hmpQemuIo(drive, 'flush');
}

/** blockdev-add a qcow2 node over blkdebug that fails the first read after the next flush (iotest 124's rule). */
export async function addBlkdebugNode(vm: QemuMachine, nodeName: string, file: string): Promise<void> {
  await vm.qmp.execute('blockdev-add', {
    'node-name': nodeName,
    driver: 'qcow2',
    file: {
      driver: 'blkdebug',
      image: { driver: 'file', filename: file },
      'set-state': [{ event: 'flush_to_disk', state: 1, new_state: 2 }],
      'inject-error': [{ event: 'read_aio', errno: 5, state: 2, immediately: false, once: true }],
    },
  });
}

/** The machine's client, as this package's functions take it. */
export function qmpOf(vm: QemuMachine): BackupQmp {
  return vm.qmp;
}

/**
 * Each job saw every event QEMU sent about it: its `events` are exactly the events of its id
 * in the client's history from its first to its last (the very same objects, in order),
 * from JOB_STATUS_CHANGE 'created' to 'null'; and no job is still listening (nothing is left
 * subscribed on the client).
 */
export function expectJobsSawAllTheirEvents(vm: QemuMachine, jobs: readonly BackupJob[]): void {
  const history = vm.qmp.events.buffered;
  for (const job of jobs) {
    const first = history.indexOf(job.events[0] as (typeof history)[number]);
    const last = history.indexOf(job.events[job.events.length - 1] as (typeof history)[number]);
    expect(first).toBeGreaterThanOrEqual(0);
    const own = history.slice(first, last + 1).filter((e) => isJobEvent(e, job.id));
    expect(job.events.length).toBe(own.length);
    expect(job.events.every((e, i) => e === own[i])).toBe(true);
    // From the first (its listener was open before the command) to the last.
    expect(job.events[0]).toMatchObject({ event: 'JOB_STATUS_CHANGE', data: { status: 'created' } });
    expect(job.events[job.events.length - 1]).toMatchObject({ event: 'JOB_STATUS_CHANGE', data: { status: 'null' } });
  }
  expect(vm.qmp.events.consumerCount).toBe(0);
}

/** Chain target nodes still open in QEMU (a run must remove its own, whatever its end). */
export async function targetNodes(vm: QemuMachine): Promise<string[]> {
  const nodes = (await vm.qmp.execute('query-named-block-nodes', { flat: true })) as Array<{ 'node-name'?: string }>;
  return nodes.map((n) => n['node-name'] ?? '').filter((n) => n.startsWith('qmpkit-target-'));
}

/** Poll `query-jobs` until a job matches (every 20 ms, up to `timeout` ms). */
export async function waitForJob(
  vm: QemuMachine,
  match: (job: JobInfo) => boolean,
  timeout = 30_000,
): Promise<JobInfo> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const jobs = (await vm.qmp.execute('query-jobs')) as JobInfo[];
    const found = jobs.find(match);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`no matching job within ${timeout} ms (jobs: ${JSON.stringify(jobs)})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A machine with a drive and a second QMP socket for the CLI. */
export async function launchWithSocket(
  scratch: Scratch,
  drive: string,
  options: { nodeName?: string } = {},
): Promise<{ vm: QemuMachine; socket: string }> {
  const socket = scratch.path(`qmp-${scratch.machines.length}.sock`);
  const vm = await scratch.launch([{ file: drive, format: 'qcow2', id: 'drive0', nodeName: options.nodeName ?? 'node0' }], [
    '-qmp',
    `unix:${socket},server=on,wait=off`,
  ]);
  return { vm, socket };
}

/** Wait (polling every 20 ms, up to `timeout` ms) until `read()` matches. */
export async function waitForText(read: () => string, pattern: RegExp, timeout = 30_000): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!pattern.test(read())) {
    if (Date.now() > deadline) throw new Error(`no ${String(pattern)} within ${timeout} ms in: ${read()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A machine whose drive is attached to a device (virtio-blk-pci `vd0` on drive0), which the
 * 'snapshot-access' fleecing method needs (it switches the device's drive to its filter).
 * `-machine none` has no bus for a disk, so this is a PC that never runs (`-S`): the block
 * layer, QMP and HMP work as with `none`, no guest code runs and no accelerator is needed.
 */
export async function launchWithDevice(scratch: Scratch, drive: string, args: readonly string[] = []): Promise<QemuMachine> {
  const vm = new QemuMachine({
    machine: 'pc',
    drives: [{ file: drive, format: 'qcow2', id: 'drive0', nodeName: 'node0' }],
    args: ['-S', '-m', '32', '-device', 'virtio-blk-pci,drive=drive0,id=vd0', ...args],
  });
  scratch.machines.push(vm);
  await vm.launch({ timeout: 20_000 });
  return vm;
}

/**
 * What a pull-mode run may leave in QEMU: exports, nodes and jobs named qmpkit-*, frozen
 * bitmaps (`-pull-` / `-frozen`), and whether the NBD server still runs (a second start fails).
 */
export async function pullLeftovers(vm: QemuMachine): Promise<{ exports: string[]; nodes: string[]; jobs: string[]; bitmaps: string[]; nbdServer: boolean }> {
  const exports = ((await vm.qmp.execute('query-block-exports')) as Array<{ id: string }>).map((e) => e.id);
  const nodes = ((await vm.qmp.execute('query-named-block-nodes', { flat: true })) as Array<{ 'node-name'?: string }>)
    .map((n) => n['node-name'] ?? '')
    .filter((n) => n.startsWith('qmpkit-'));
  const jobs = ((await vm.qmp.execute('query-jobs')) as JobInfo[]).map((j) => j.id);
  // Every node's: while a fleecing filter is above the drive, the device's name leads to the filter.
  const named = (await vm.qmp.execute('query-named-block-nodes', { flat: true })) as Array<{ 'dirty-bitmaps'?: Array<{ name?: string }> }>;
  const bitmaps = named
    .flatMap((n) => n['dirty-bitmaps'] ?? [])
    .map((b) => b.name ?? '')
    .filter((n) => /-pull-|-frozen$/.test(n));
  let nbdServer = false;
  const probe = join(tmpdir(), `qmpkit-probe-${process.pid}-${Date.now()}.sock`);
  try {
    await vm.qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: probe } } });
    await vm.qmp.execute('nbd-server-stop');
  } catch {
    nbdServer = true;
  } finally {
    await rm(probe, { force: true });
  }
  return { exports, nodes, jobs, bitmaps, nbdServer };
}

export const NO_PULL_LEFTOVERS = { exports: [], nodes: [], jobs: [], bitmaps: [], nbdServer: false };

// Run by `qmpSync`: connect to a QMP socket, negotiate, run each command, print the replies.
const QMP_SYNC_SCRIPT = `
const net = require('node:net');
const [socket, json] = process.argv.slice(1);
const commands = JSON.parse(json);
const conn = net.connect(socket);
let buffer = '';
let sent = -1;
const replies = [];
const next = () => {
  sent++;
  if (sent > commands.length) { process.stdout.write(JSON.stringify(replies.slice(1))); conn.end(); return; }
  conn.write(JSON.stringify(sent === 0 ? { execute: 'qmp_capabilities' } : commands[sent - 1]) + '\\n');
};
conn.on('data', (chunk) => {
  buffer += chunk;
  let i;
  while ((i = buffer.indexOf('\\n')) >= 0) {
    const line = buffer.slice(0, i); buffer = buffer.slice(i + 1);
    const msg = JSON.parse(line);
    if (msg.QMP) next();
    else if ('return' in msg || 'error' in msg) { replies.push(msg); next(); }
  }
});
`;

/**
 * Run QMP commands on a second monitor (`socket`) in a child process while this process
 * waits, blocked: from a synchronous callback (a backup's onProgress) the commands are done
 * in QEMU before this process reads another byte, e.g. guest writes right after a pull-mode
 * backup's point and before its first read. Returns the replies.
 */
export function qmpSync(socket: string, commands: ReadonlyArray<{ execute: string; arguments?: object }>): Array<{ return?: unknown; error?: { desc: string } }> {
  const out = execFileSync(process.execPath, ['-e', QMP_SYNC_SCRIPT, socket, JSON.stringify(commands)], { encoding: 'utf8', timeout: 20_000 });
  return JSON.parse(out) as Array<{ return?: unknown; error?: { desc: string } }>;
}

/** Guest writes through HMP qemu-io on a second monitor, done when this returns (see `qmpSync`). */
export function hmpWritesSync(socket: string, drive: string, patterns: readonly Pattern[]): void {
  const commands = [...patterns.map(([p, o, l]) => `write -P${p} ${o} ${l}`), 'flush'].map((c) => ({
    execute: 'human-monitor-command',
    arguments: { 'command-line': `qemu-io ${drive} "${c}"` },
  }));
  const replies = qmpSync(socket, commands);
  const failed = replies.find((r) => r.error !== undefined || (typeof r.return === 'string' && /error|fail/i.test(r.return)));
  if (failed) throw new Error(`qemu-io through ${socket} failed: ${JSON.stringify(failed)}`);
}

/** The drive as patterns written over zeroes describe it (a model to compare restores with). */
export function driveModel(size: number): { apply(patterns: readonly Pattern[]): void; bytes: Buffer } {
  const bytes = Buffer.alloc(size);
  const n = (v: string | number): number => (typeof v === 'number' ? v : parseSizeArg(v));
  return {
    bytes,
    apply(patterns) {
      for (const [p, o, l] of patterns) bytes.fill(p, n(o), n(o) + n(l));
    },
  };
}

function parseSizeArg(value: string): number {
  const m = /^(0x[0-9a-f]+|\d+)([kKmMgG]?)$/.exec(value);
  if (!m) throw new Error(`not a qemu-io size: ${value}`);
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? '').toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * unit;
}
