import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A `qemu-system-x86_64 -machine none` started for one test file, with a QMP socket. */
export interface TestQemu {
  readonly dir: string;
  readonly socket: string;
  readonly child: ChildProcess;
  /** Output QEMU wrote to stderr so far; helps when a test fails. */
  readonly stderr: () => string;
  /** Kills QEMU (if still running), waits for it to exit and removes the scratch directory. */
  stop(): Promise<void>;
}

export const QEMU_BINARY = process.env['QEMU_SYSTEM'] ?? 'qemu-system-x86_64';

/** The version QEMU_BINARY reports (`QEMU emulator version 11.1.3 (...)`): what its greeting must say. */
export function binaryVersion(): { major: number; minor: number; micro: number } {
  const text = execFileSync(QEMU_BINARY, ['--version'], { encoding: 'utf8' });
  const match = /version (\d+)\.(\d+)\.(\d+)/.exec(text);
  if (match === null) throw new Error(`cannot read the version of ${QEMU_BINARY} from: ${text}`);
  return { major: Number(match[1]), minor: Number(match[2]), micro: Number(match[3]) };
}
export const BASE_ARGS = ['-machine', 'none', '-nodefaults', '-display', 'none'];

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

export async function killAndWait(child: ChildProcess): Promise<void> {
  const done = exited(child);
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await done;
}

/**
 * Starts QEMU with `-qmp unix:<dir>/qmp.sock,server=on,wait=off`. The socket appears a
 * little after the process starts; `QmpClient.connect` retries until it does, which is
 * part of what these tests exercise.
 */
// Every QEMU this file starts, until stopped. If a test hangs and jest times it out, its
// `finally` never runs; the hooks below still reap the process and its scratch directory.
const running = new Set<TestQemu>();
afterAll(async () => {
  await Promise.all([...running].map((qemu) => qemu.stop()));
});
process.once('exit', () => {
  for (const qemu of running) qemu.child.kill('SIGKILL');
});

export async function startQemu(extraArgs: readonly string[] = []): Promise<TestQemu> {
  const dir = await mkdtemp(join(tmpdir(), 'qmpkit-client-'));
  const socket = join(dir, 'qmp.sock');
  let child: ChildProcess;
  try {
    child = spawn(QEMU_BINARY, [...BASE_ARGS, '-qmp', `unix:${socket},server=on,wait=off`, ...extraArgs], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (text: string) => {
    stderr += text;
  });
  const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
  spawnError.catch(() => undefined);
  const qemu: TestQemu = {
    dir,
    socket,
    child,
    stderr: () => stderr,
    async stop() {
      running.delete(qemu);
      try {
        await killAndWait(child);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
  running.add(qemu);
  return qemu;
}
