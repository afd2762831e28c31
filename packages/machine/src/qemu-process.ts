import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, watch, type FSWatcher } from 'node:fs';
import { chmod, mkdtemp, open, readFile, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { QmpClient, type ConnectOptions } from '@qmpkit/client';
import type { QmpCommands, QmpEvents } from '@qmpkit/schema';

import { resolveQemuBinary } from './binary.js';
import {
  MachineAbortError,
  MachineConfigError,
  MachineStateError,
  MachineTimeoutError,
  QemuLaunchError,
  QemuShutdownError,
  type LaunchFailureReason,
} from './errors.js';
import { trackForExit, untrackForExit, type ExitHookEntry } from './exit-hook.js';
import { escapeOptionValue } from './option-syntax.js';

/**
 * Options passed through to `QmpClient.connect()` when the process is launched. The
 * connect deadline and signal come from `launch()`'s own `timeout` and `signal`.
 */
export type QmpConnectOptions = Omit<ConnectOptions, 'signal' | 'connectTimeout'>;

/** The connected client, `machine.qmp`: commands and events typed from QEMU 7.2's schema. */
export type MachineQmpClient = QmpClient<QmpCommands, QmpEvents>;

/**
 * `idle`: never launched. `launching`: started, QMP not yet ready. `running`: QMP connected.
 * `stopping`: `shutdown()` in progress. `exited`: the process ended (it can be launched again).
 */
export type QemuProcessState = 'idle' | 'launching' | 'running' | 'stopping' | 'exited';

export interface ExitStatus {
  /** Exit code, or `null` when the process was ended by a signal (or never started). */
  exitCode: number | null;
  /** The signal that ended the process, if any. */
  signal: NodeJS.Signals | null;
}

export interface ShutdownResult extends ExitStatus {
  /**
   * What ended the process: `quit` over QMP, `SIGTERM`, `SIGKILL`, or `exited` when it had
   * already ended on its own (or was never launched) before `shutdown()` was called.
   */
  method: 'quit' | 'SIGTERM' | 'SIGKILL' | 'exited';
}

export interface TimeoutOptions {
  /** Milliseconds. */
  timeout?: number;
  signal?: AbortSignal;
}

export interface QemuProcessOptions {
  /** Path or name of the binary; else the environment variable, else the default name on PATH. */
  binary?: string;
  /** Extra command-line arguments, appended after the ones the class builds. */
  args?: readonly string[];
  /** Environment for the child (default: `process.env`); also consulted for the binary variable and PATH. */
  env?: NodeJS.ProcessEnv;
  /** Parent of the private `qmpkit-machine-*` directory (default: `os.tmpdir()`). */
  tmpDir?: string;
  /**
   * Write QEMU's stdout and stderr to this file (appending) instead of a log inside the
   * temporary directory. The file is yours: it is not removed.
   */
  logFile?: string;
  /** Passed to `QmpClient.connect()` (event history size, transcript, ...). */
  qmp?: QmpConnectOptions;
}

/** Describes one kind of QEMU program to the shared process code. */
export interface QemuProgram {
  /** Name looked up on PATH when neither the option nor the variable names a binary. */
  defaultBinary: string;
  /** Environment variable naming the binary, e.g. `QEMU_SYSTEM`. */
  environmentVariable: string;
}

const DEFAULT_LAUNCH_TIMEOUT = 30_000;
const DEFAULT_SHUTDOWN_TIMEOUT = 30_000;
/** Share of the shutdown timeout given to `quit` before SIGTERM; SIGTERM gets the rest. */
const QUIT_SHARE = 0.6;
/** SIGKILL cannot be caught; a process still there after this is stuck in the kernel. */
const SIGKILL_WAIT = 5_000;
/**
 * When the QMP connection fails during start-up, QEMU is usually on its way out; its
 * 'exit' can arrive a moment after the socket closes. Waiting this long for it lets the
 * error say "exited with code 1" (with the log) instead of a bare connection failure.
 */
const EXIT_GRACE = 1_000;
/** `sun_path` holds 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;
const LOG_TAIL_LINES = 20;
const LOG_TAIL_BYTES = 4096;
/** The log is kept in memory after its directory is removed, up to this many bytes (the end). */
const KEPT_LOG_BYTES = 1024 * 1024;
const TEMP_DIR_PREFIX = 'qmpkit-machine-';
/** Reads of the log for one command's output; qemu-io prints far less than this per command. */
const LOG_READ_CHUNK = 16 * 1024;
const QMP_SOCKET_NAME = 'qmp.sock';

/** Everything about one launch; a process object can be launched again after it exits. */
interface Run {
  readonly argv: readonly string[];
  readonly dir: string;
  readonly logPath: string;
  readonly ownsLog: boolean;
  readonly entry: ExitHookEntry;
  readonly child: ChildProcess;
  qmp: MachineQmpClient | undefined;
  spawnError: unknown;
  exit: ExitStatus | undefined;
  /** Resolves when the child has exited (or failed to spawn). */
  childExited: Promise<ExitStatus>;
  /** Resolves after the exit has been handled: QMP closed, log kept, directory removed. */
  finished: Promise<ExitStatus>;
  keptLog: string | undefined;
  /** The log opened for reading what the process printed during one command (see `logSince`). */
  logReader: Promise<FileHandle | undefined> | undefined;
  dirRemoved: boolean;
  shutdown: Promise<ShutdownResult> | undefined;
}

function tailOf(text: string): string {
  const end = text.length > LOG_TAIL_BYTES ? text.slice(-LOG_TAIL_BYTES) : text;
  const lines = end.split('\n');
  return lines.slice(-LOG_TAIL_LINES - 1).join('\n');
}

type WaitOutcome = 'exited' | 'timeout' | 'aborted';

/** Waits for the child's exit, at most `timeout` ms (no limit when undefined). */
function waitForExitOf(run: Run, timeout: number | undefined, signal: AbortSignal | undefined): Promise<WaitOutcome> {
  if (run.exit !== undefined) return Promise.resolve('exited');
  if (signal?.aborted === true) return Promise.resolve('aborted');
  return new Promise<WaitOutcome>((resolve) => {
    const done = (outcome: WaitOutcome): void => {
      if (timer !== undefined) clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      resolve(outcome);
    };
    const onAbort = (): void => done('aborted');
    const timer = timeout === undefined ? undefined : setTimeout(() => done('timeout'), Math.max(0, timeout));
    signal?.addEventListener('abort', onAbort, { once: true });
    void run.childExited.then(() => done('exited'));
  });
}

/**
 * Resolves once `name` exists in `dir`. QEMU needs 100-200 ms to create its socket, and a
 * connect loop with back-off tends to notice it up to one back-off step late; watching the
 * private directory notices it at once. Where watching is not possible it resolves at once
 * and the client's own retries do the waiting.
 */
function socketCreated(dir: string, name: string, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    let watcher: FSWatcher | undefined;
    const finish = (error?: unknown): void => {
      if (settled) return;
      settled = true;
      watcher?.close();
      signal.removeEventListener('abort', onAbort);
      if (error === undefined) resolve();
      else reject(error);
    };
    const onAbort = (): void => finish(signal.reason ?? new Error('aborted'));
    if (signal.aborted) {
      onAbort();
      return;
    }
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      watcher = watch(dir, (_event, file) => {
        if (file === name) finish();
      });
      watcher.on('error', () => finish());
    } catch {
      finish();
      return;
    }
    // Created before the watch started?
    if (existsSync(join(dir, name))) finish();
  });
}

/**
 * The process management shared by `QemuMachine` and `QemuStorageDaemon`: a private
 * temporary directory for the QMP socket and the log, spawning with stdout/stderr in the
 * log, connecting the QMP client, noticing the exit, shutting down with escalation, and
 * the process-exit hook. Subclasses only say which binary to run and build its arguments.
 */
export abstract class QemuProcess implements AsyncDisposable {
  readonly #program: QemuProgram;
  readonly #options: QemuProcessOptions;
  readonly #extraArgs: string[];
  #state: QemuProcessState = 'idle';
  #run: Run | undefined;
  /** Set while a launch creates its directory and spawns (before `#run` exists). */
  #starting: Promise<Run> | undefined;

  protected constructor(program: QemuProgram, options: QemuProcessOptions) {
    this.#program = program;
    this.#options = options;
    this.#extraArgs = [...(options.args ?? [])];
  }

  /**
   * The program's arguments (without the binary), given the QMP socket to serve. Called at
   * each launch, after the extra arguments' owners had their chance to add to them.
   *
   * @param qmpChardev a `-chardev`/`--chardev` value for the QMP socket (already escaped)
   */
  protected abstract buildArguments(qmpChardev: string, qmpChardevId: string): string[];

  /** Appends raw command-line arguments, used from the next launch on. */
  addArgs(...args: string[]): this {
    this.#extraArgs.push(...args);
    return this;
  }

  /** The extra arguments given through `args` / `addArgs()`. */
  protected get extraArgs(): readonly string[] {
    return this.#extraArgs;
  }

  get state(): QemuProcessState {
    return this.#state;
  }

  /** The command line of the current or last launch, binary first. */
  get argv(): readonly string[] | undefined {
    return this.#run?.argv;
  }

  /** Process id of the current or last launch. */
  get pid(): number | undefined {
    return this.#run?.child.pid;
  }

  /** Exit code once the process has exited (`null` while running or when killed by a signal). */
  get exitCode(): number | null {
    return this.#run?.exit?.exitCode ?? null;
  }

  /** Signal that ended the process, once it has exited. */
  get signal(): NodeJS.Signals | null {
    return this.#run?.exit?.signal ?? null;
  }

  /**
   * Path of the stdout/stderr log while it exists: during a run, or afterwards when
   * `logFile` was given. The contents stay readable through `log()` after the temporary
   * directory is gone.
   */
  get logPath(): string | undefined {
    const run = this.#run;
    if (run === undefined) return undefined;
    return run.ownsLog && run.dirRemoved ? undefined : run.logPath;
  }

  /** The temporary directory of the current run (holds the QMP socket), while it exists. */
  get tempDir(): string | undefined {
    const run = this.#run;
    return run === undefined || run.dirRemoved ? undefined : run.dir;
  }

  /**
   * What the process wrote to stdout and stderr in the current or last run. After the
   * temporary directory is removed, the last MiB is kept in memory and returned.
   */
  async log(): Promise<string> {
    const run = this.#run;
    if (run === undefined) return '';
    if (run.ownsLog && run.dirRemoved) return run.keptLog ?? '';
    return readFile(run.logPath, 'utf8').catch(() => run.keptLog ?? '');
  }

  /** The connected QMP client. Throws before the first successful launch. */
  get qmp(): MachineQmpClient {
    const qmp = this.#run?.qmp;
    if (qmp === undefined) throw new MachineStateError('use QMP', this.#state === 'idle' ? 'not launched' : this.#state);
    return qmp;
  }

  /** Throws unless the process is running with QMP connected. */
  protected requireRunning(operation: string): MachineQmpClient {
    const qmp = this.#run?.qmp;
    if (this.#state !== 'running' || qmp === undefined) throw new MachineStateError(operation, this.#state);
    return qmp;
  }

  /**
   * The QMP socket of the current run (a unix socket in the private directory), while it
   * exists. `qmp` is connected to it, and QEMU serves one client at a time per monitor: another
   * client waits (its greeting never comes) until `qmp` is closed. A program that needs its own
   * connection beside `qmp` adds a monitor of its own (`addArgs('-qmp', 'unix:PATH,server=on,wait=off')`).
   */
  get qmpSocketPath(): string | undefined {
    const run = this.#run;
    return run === undefined || run.dirRemoved ? undefined : join(run.dir, QMP_SOCKET_NAME);
  }

  /**
   * The log opened once per run and kept open, so reading what one command printed costs one
   * fstat before and one positioned read after it, instead of opening and closing the file.
   */
  #logReader(run: Run): Promise<FileHandle | undefined> {
    // Once the process has exited, cleanup closes the reader it finds; one opened later would leak.
    if (run.logReader === undefined && run.exit !== undefined) return Promise.resolve(undefined);
    run.logReader ??= open(run.logPath, 'r').catch(() => undefined);
    return run.logReader;
  }

  /** The log's current size, so a caller can read what the process prints from now on. */
  protected async logOffset(): Promise<number> {
    const run = this.#run;
    if (run === undefined) return 0;
    const file = await this.#logReader(run);
    return file === undefined ? 0 : (await file.stat().catch(() => ({ size: 0 }))).size;
  }

  /** What the process printed since `logOffset()` returned `offset` (reads only the new bytes). */
  protected async logSince(offset: number): Promise<string> {
    const run = this.#run;
    if (run === undefined) return '';
    const file = await this.#logReader(run);
    if (file === undefined) return '';
    const chunks: Buffer[] = [];
    let position = offset;
    try {
      for (;;) {
        const buffer = Buffer.allocUnsafe(LOG_READ_CHUNK);
        const { bytesRead } = await file.read(buffer, 0, buffer.length, position);
        chunks.push(buffer.subarray(0, bytesRead));
        position += bytesRead;
        // A short read of a regular file is its end: no second call just to be told so.
        if (bytesRead < buffer.length) break;
      }
    } catch {
      // Closed by the exit's cleanup meanwhile: what was read is all there is.
    }
    return Buffer.concat(chunks).toString('utf8');
  }

  /**
   * Starts the process and connects QMP. Resolves with `this` once QMP is ready; if the
   * process exits first (or the timeout or signal ends the wait) the process is stopped, its
   * directory removed, and a `QemuLaunchError` with the log's tail is thrown.
   */
  async launch(options: TimeoutOptions = {}): Promise<this> {
    if (this.#state !== 'idle' && this.#state !== 'exited') throw new MachineStateError('launch', this.#state);
    const { timeout = DEFAULT_LAUNCH_TIMEOUT, signal } = options;
    if (signal?.aborted === true) throw new MachineAbortError('launch', signal.reason);
    const env = this.#options.env ?? process.env;
    const binary = resolveQemuBinary(this.#options.binary, this.#program.environmentVariable, this.#program.defaultBinary, env);

    this.#state = 'launching';
    const starting = this.#start(binary, env);
    this.#starting = starting;
    let run: Run;
    try {
      run = await starting;
    } catch (error) {
      this.#state = this.#run === undefined ? 'idle' : 'exited';
      throw error;
    } finally {
      this.#starting = undefined;
    }
    this.#run = run;
    void run.childExited.then(() => {
      if (this.#run === run) this.#state = 'exited';
    });

    const failure = await this.#connect(run, timeout, signal);
    if (failure === undefined) {
      this.#state = 'running';
      return this;
    }
    if (run.exit === undefined) run.child.kill('SIGKILL');
    await run.finished;
    throw new QemuLaunchError({
      reason: failure.reason,
      argv: run.argv,
      exitCode: run.exit?.exitCode ?? null,
      signal: failure.reason === 'exited' ? (run.exit?.signal ?? null) : null,
      logTail: tailOf(run.keptLog ?? ''),
      cause: failure.cause,
    });
  }

  async #start(binary: string, env: NodeJS.ProcessEnv): Promise<Run> {
    const parent = this.#options.tmpDir ?? tmpdir();
    const dir = await mkdtemp(join(parent, TEMP_DIR_PREFIX)).catch((error: unknown) => {
      throw new MachineConfigError('tmpDir', parent, `cannot create a directory there: ${String(error)}`);
    });
    const entry: ExitHookEntry = { pid: undefined, exited: false, dir };
    trackForExit(entry);
    try {
      // mkdtemp already uses 0700; said again in case a umask or platform differs.
      await chmod(dir, 0o700);
      const socketPath = join(dir, QMP_SOCKET_NAME);
      if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) {
        throw new MachineConfigError('tmpDir', this.#options.tmpDir, `the QMP socket path ${socketPath} is longer than ${MAX_SOCKET_PATH} bytes`);
      }
      const chardevId = 'qmpkit-qmp';
      // wait=on: QEMU accepts our connection while it creates the chardev, before the monitor
      // exists. With wait=off, QEMU 7.2 accepts in its main thread while the monitor attaches
      // its handlers in the monitor I/O thread; when the two overlap, the socket is left with a
      // reader in each thread. They take turns at single bytes, so commands reach the JSON parser
      // mangled ("JSON parse error, stray '-ve'") for the life of the connection, and the monitor
      // may also greet twice. No client can repair that; connecting before the monitor exists
      // avoids it. (The client still resyncs a mangled negotiation for other servers.)
      const chardev = `socket,id=${chardevId},path=${escapeOptionValue(socketPath)},server=on,wait=on`;
      const argv = [binary, ...this.buildArguments(chardev, chardevId)];
      const ownsLog = this.#options.logFile === undefined;
      const logPath = this.#options.logFile ?? join(dir, 'qemu.log');
      // One descriptor for both streams, opened for appending: QEMU's stdout and stderr then
      // land in the file in the order QEMU wrote them, and the file survives a Node crash.
      let fd: number;
      try {
        fd = openSync(logPath, 'a', 0o600);
      } catch (error) {
        throw new MachineConfigError('logFile', logPath, `cannot open it for appending: ${String(error)}`);
      }
      let child: ChildProcess;
      try {
        child = spawn(binary, argv.slice(1), { stdio: ['ignore', fd, fd], env });
      } finally {
        closeSync(fd);
      }
      entry.pid = child.pid;

      let markExited!: (status: ExitStatus) => void;
      const childExited = new Promise<ExitStatus>((resolve) => {
        markExited = resolve;
      });
      const run: Run = {
        argv,
        dir,
        logPath,
        ownsLog,
        entry,
        child,
        qmp: undefined,
        spawnError: undefined,
        exit: undefined,
        childExited,
        finished: childExited.then((status) => this.#cleanUp(run).then(() => status)),
        keptLog: undefined,
        logReader: undefined,
        dirRemoved: false,
        shutdown: undefined,
      };
      child.once('exit', (exitCode, exitSignal) => {
        entry.exited = true;
        run.exit = { exitCode, signal: exitSignal };
        markExited(run.exit);
      });
      // Stays attached for the child's lifetime: 'error' also reports a failed kill(), and an
      // 'error' without a listener would crash the application.
      child.on('error', (error) => {
        // Only a failed spawn leaves no pid; that child will never emit 'exit'.
        if (child.pid !== undefined || run.exit !== undefined) return;
        entry.exited = true;
        run.spawnError = error;
        run.exit = { exitCode: null, signal: null };
        markExited(run.exit);
      });
      return run;
    } catch (error) {
      untrackForExit(entry);
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
  }

  /** After the child is gone: close QMP, keep the log, remove the directory. Never throws. */
  async #cleanUp(run: Run): Promise<void> {
    if (run.qmp !== undefined) await run.qmp.close().catch(() => undefined);
    const reader = await run.logReader;
    await reader?.close().catch(() => undefined);
    const bytes = await readFile(run.logPath).catch(() => Buffer.alloc(0));
    run.keptLog = bytes.subarray(Math.max(0, bytes.length - KEPT_LOG_BYTES)).toString('utf8');
    await rm(run.dir, { recursive: true, force: true }).catch(() => undefined);
    run.dirRemoved = true;
    untrackForExit(run.entry);
  }

  async #connect(
    run: Run,
    timeout: number,
    signal: AbortSignal | undefined,
  ): Promise<{ reason: LaunchFailureReason; cause: unknown } | undefined> {
    if (run.spawnError !== undefined) return { reason: 'spawn-failed', cause: run.spawnError };
    const deadline = Date.now() + timeout;
    const controller = new AbortController();
    let timedOut = false;
    const onAbort = (): void => controller.abort(signal?.reason);
    if (signal?.aborted === true) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort(new MachineTimeoutError('launch', timeout));
    }, timeout);
    let settled = false;
    void run.childExited.then(() => {
      if (!settled) controller.abort(new Error('QEMU exited'));
    });

    const socketPath = join(run.dir, QMP_SOCKET_NAME);
    const connecting = socketCreated(run.dir, QMP_SOCKET_NAME, controller.signal).then(() =>
      QmpClient.connect<QmpCommands, QmpEvents>(socketPath, {
        ...(this.#options.qmp ?? {}),
        connectTimeout: Math.max(0, deadline - Date.now()),
        signal: controller.signal,
      }),
    );
    try {
      const qmp = await Promise.race([connecting, run.childExited.then(() => undefined)]);
      if (qmp !== undefined) {
        run.qmp = qmp;
        // The exit may have been noticed while connect() was settling; then cleanup has
        // already looked at run.qmp and missed it.
        if (run.exit !== undefined) await qmp.close().catch(() => undefined);
        else return undefined;
      } else {
        // Lost the race to the exit: make sure a late connection is not leaked.
        void connecting.then((late) => late.close(), () => undefined);
      }
      return { reason: run.spawnError === undefined ? 'exited' : 'spawn-failed', cause: run.spawnError };
    } catch (error) {
      if (run.spawnError !== undefined) return { reason: 'spawn-failed', cause: run.spawnError };
      if (run.exit !== undefined) return { reason: 'exited', cause: error };
      if (signal?.aborted === true) return { reason: 'aborted', cause: signal.reason };
      if (timedOut) return { reason: 'timeout', cause: error };
      const outcome = await waitForExitOf(run, Math.max(0, Math.min(EXIT_GRACE, deadline - Date.now())), undefined);
      return { reason: outcome === 'exited' ? 'exited' : Date.now() >= deadline ? 'timeout' : 'connect-failed', cause: error };
    } finally {
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * Waits until the process has exited and its directory is removed. Does not ask it to
   * exit; see `shutdown()`.
   */
  async waitForExit(options: TimeoutOptions = {}): Promise<ExitStatus> {
    const run = this.#run;
    if (run === undefined) throw new MachineStateError('wait for exit', 'not launched');
    const outcome = await waitForExitOf(run, options.timeout, options.signal);
    if (outcome === 'timeout') throw new MachineTimeoutError('waitForExit', options.timeout ?? 0);
    if (outcome === 'aborted') throw new MachineAbortError('waitForExit', options.signal?.reason);
    return run.finished;
  }

  /**
   * Stops the process: `quit` over QMP, then SIGTERM, then SIGKILL. `quit` gets 60 % of the
   * timeout (default 30 s) and SIGTERM the rest, so SIGKILL is sent no later than `timeout`
   * after the call. Without a usable QMP connection it starts at SIGTERM. Resolves after
   * the process has exited and its temporary directory is removed. Calling it again (or
   * after the process exited by itself) returns the same result; on a never-launched
   * object it resolves at once. Aborting `signal` skips straight to SIGKILL and rejects with
   * `MachineAbortError` once the process is gone.
   */
  shutdown(options: TimeoutOptions = {}): Promise<ShutdownResult> {
    const starting = this.#starting;
    if (starting !== undefined) {
      // A launch is between "directory created" and "spawned": let it get that far, then stop it.
      const again = (): Promise<ShutdownResult> => this.shutdown(options);
      return starting.then(again, again);
    }
    const run = this.#run;
    if (run === undefined) return Promise.resolve({ exitCode: null, signal: null, method: 'exited' });
    run.shutdown ??= this.#shutdown(run, options.timeout ?? DEFAULT_SHUTDOWN_TIMEOUT, options.signal);
    return run.shutdown;
  }

  async #shutdown(run: Run, timeout: number, signal: AbortSignal | undefined): Promise<ShutdownResult> {
    if (run.exit !== undefined) {
      return { ...(await run.finished), method: 'exited' };
    }
    if (this.#run === run && this.#state === 'running') this.#state = 'stopping';
    const deadline = Date.now() + timeout;
    let method: ShutdownResult['method'] = 'SIGTERM';
    let outcome: WaitOutcome = 'timeout';

    const qmp = run.qmp;
    if (qmp !== undefined && qmp.state === 'ready') {
      method = 'quit';
      const quitBudget = Math.floor(timeout * QUIT_SHARE);
      // QEMU may close the socket before its reply is read; the exit is what counts.
      void qmp.execute('quit', {}, { timeout: quitBudget }).catch(() => undefined);
      outcome = await waitForExitOf(run, quitBudget, signal);
    }
    if (outcome === 'timeout') {
      method = 'SIGTERM';
      run.child.kill('SIGTERM');
      outcome = await waitForExitOf(run, deadline - Date.now(), signal);
    }
    if (outcome !== 'exited') {
      method = 'SIGKILL';
      run.child.kill('SIGKILL');
      if ((await waitForExitOf(run, SIGKILL_WAIT, undefined)) !== 'exited') {
        throw new QemuShutdownError(run.child.pid ?? -1, SIGKILL_WAIT);
      }
    }
    const status = await run.finished;
    if (outcome === 'aborted') throw new MachineAbortError('shutdown', signal?.reason);
    return { ...status, method };
  }

  /**
   * Sends a signal (default SIGKILL) to the process if it is still running; returns whether
   * one was sent. Cleanup follows the exit; `await waitForExit()` to wait for it.
   */
  kill(signal: NodeJS.Signals = 'SIGKILL'): boolean {
    const run = this.#run;
    if (run?.child === undefined || run.exit !== undefined) return false;
    return run.child.kill(signal);
  }

  /** `await using`: shuts down with the default timeout. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }
}
