import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import type { QemuProcess } from '../src/index.js';

const run = promisify(execFile);

/** Creates an image with qemu-img (argv, no shell). */
export async function createImage(path: string, format: 'qcow2' | 'raw', size: string): Promise<void> {
  await run('qemu-img', ['create', '-q', '-f', format, path, size]);
}

/**
 * Whether `pid` is a live process. A zombie counts as gone: it runs no code and holds no
 * files, it only waits for its parent (or init) to collect its status.
 */
export async function isAlive(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (stat === undefined) return false;
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X';
}

/**
 * Waits until `pid` is gone. A process that is not our child sends us no exit event, so
 * this polls /proc, with a deadline.
 */
export async function waitUntilGone(pid: number, timeout = 5_000): Promise<boolean> {
  const deadline = Date.now() + timeout;
  while (await isAlive(pid)) {
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return true;
}

/**
 * A scratch directory for one test file (`qmpkit-machine-test-*` under the system temp
 * dir). Machines launched by the file use it as their `tmpDir`, so what they leave behind
 * can be checked without seeing other suites' processes.
 */
export class Scratch {
  readonly dir: string;
  readonly #processes: QemuProcess[] = [];
  readonly #pids = new Set<number>();

  private constructor(dir: string) {
    this.dir = dir;
  }

  static async create(): Promise<Scratch> {
    return new Scratch(await mkdtemp(join(tmpdir(), 'qmpkit-machine-test-')));
  }

  path(name: string): string {
    return join(this.dir, name);
  }

  /** Remembers a process so `cleanUp()` stops it and `leftovers()` checks it. */
  track<T extends QemuProcess>(proc: T): T {
    this.#processes.push(proc);
    return proc;
  }

  /** Remembers a pid that must be gone at the end (call once the process is launched). */
  rememberPid(pid: number | undefined): void {
    if (pid !== undefined) this.#pids.add(pid);
  }

  /** Pids of tracked processes still alive and per-run directories still present. */
  async leftovers(): Promise<{ alive: number[]; dirs: string[] }> {
    for (const proc of this.#processes) this.rememberPid(proc.pid);
    const alive: number[] = [];
    for (const pid of this.#pids) if (await isAlive(pid)) alive.push(pid);
    const dirs = (await readdir(this.dir)).filter((name) => name.startsWith('qmpkit-machine-'));
    return { alive, dirs };
  }

  /** Stops every tracked process (SIGKILL: this runs after failures too) and removes the directory. */
  async cleanUp(): Promise<void> {
    for (const proc of this.#processes) {
      this.rememberPid(proc.pid);
      proc.kill('SIGCONT');
      proc.kill('SIGKILL');
      await proc.waitForExit({ timeout: 5_000 }).catch(() => undefined);
    }
    // Processes started by child Node processes (exit-hook tests) are not ours to wait for;
    // if one survived a failing test, it is killed here, recognised by the scratch path on
    // its command line so a reused pid is never hit.
    for (const pid of this.#pids) {
      const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.includes(this.dir)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Gone in the meantime.
        }
      }
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}
