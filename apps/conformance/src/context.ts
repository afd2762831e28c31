import { constants as fsConstants } from 'node:fs';
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';

import { createQcow2Image, QemuImg, QemuIo, setBackingFile } from '@qmpkit/image-tools';
import { QemuMachine } from '@qmpkit/machine';

import type { CheckDefinition } from './checks.js';
import { CaseSkip, ConformanceError } from './errors.js';
import type { BinaryOptions } from './options.js';
import type { CaseScope } from './runner.js';
import {
  DEFAULT_COMPARE_ENGINE,
  makeComparer,
  makeMapper,
  verdictEngines,
  type CompareWith,
  type ImageComparer,
  type ImageMapper,
  type Verdict,
  type VerdictEngine,
} from './verdict.js';

/** The image tools and the system emulator the cases run, as the CLI options chose them. */
export interface SuiteTools {
  qemuImg: QemuImg;
  qemuIo: QemuIo;
  /** undefined: the machine package's default lookup ($QEMU_SYSTEM, else qemu-system-x86_64 on PATH). */
  qemuSystem: string | undefined;
  /** The engines that decide image comparisons and maps (see verdict.ts); they must all agree. */
  engines: readonly VerdictEngine[];
  /** Compares two qcow2 images as `qemu-img compare` does, with the engine(s) the options chose. */
  compare: ImageComparer;
  /** `qemu-img rebase -u` of a qcow2 image onto a qcow2 backing file (suite 257's verification). */
  rebase(file: string, backing: string, signal: AbortSignal): Promise<void>;
  /** The data extents `qemu-img map` lists for a qcow2 image, with the engine(s) the options chose. */
  mapData: ImageMapper;
}

export function makeTools(binaries: BinaryOptions, compareWith: CompareWith = DEFAULT_COMPARE_ENGINE): SuiteTools {
  const qemuImg = new QemuImg(binaries.qemuImg === undefined ? {} : { binary: binaries.qemuImg });
  const qemuImgBinary = binaries.qemuImg ?? (process.env['QEMU_IMG'] || 'qemu-img');
  const engines = verdictEngines(compareWith);
  return {
    qemuImg,
    qemuIo: new QemuIo(binaries.qemuIo === undefined ? {} : { binary: binaries.qemuIo }),
    qemuSystem: binaries.qemuSystem,
    engines,
    compare: makeComparer(engines, qemuImgBinary),
    // A header rewrite, not a verdict: in-process (image-tools' setBackingFile writes the header
    // `qemu-img rebase -u` writes) unless qemu-img alone decides; the comparisons that follow
    // read the header it wrote, with every engine chosen.
    rebase:
      engines.length === 1 && engines[0] === 'qemu-img'
        ? (file, backing, signal) =>
            qemuImg.rebase(file, { format: 'qcow2', unsafe: true, backingFile: backing, backingFormat: 'qcow2', signal })
        : async (file, backing, signal) => {
            await setBackingFile(file, { file: backing, format: 'qcow2' }, { qemuImg, signal });
          },
    // A verdict (which clusters a backup holds): decided like the comparisons.
    mapData: makeMapper(engines, qemuImgBinary),
  };
}

/** What the run wants to hear from a case's machines. */
export interface MachineObserver {
  /** QEMU's version as a launched machine reported it in its QMP greeting. */
  onVersion(version: string): void;
}

/** Where a case gets its starting images from (built once per run, see `ImageTemplates`). */
export interface TemplateSource {
  get(name: string, writes: readonly string[], runDir: string, signal: AbortSignal): Promise<string>;
}

/**
 * Images every case starts from, built once per run and copied into each case's directory.
 * The reference builds them in each test's set-up with the same qemu-img and qemu-io commands;
 * the copies are byte for byte what those commands produce, without two spawns per case.
 */
export class ImageTemplates implements TemplateSource {
  readonly #tools: SuiteTools;
  readonly #built = new Map<string, Promise<string>>();

  constructor(tools: SuiteTools) {
    this.#tools = tools;
  }

  /**
   * A 64 MiB qcow2 image with `writes` (qemu-io commands) applied, in `runDir`; built on
   * first use (or when `prefetch`ed), shared afterwards.
   */
  get(name: string, writes: readonly string[], runDir: string, signal: AbortSignal): Promise<string> {
    const key = `${runDir}\0${name}`;
    let built = this.#built.get(key);
    if (built === undefined) {
      built = this.#build(join(runDir, `${name}.qcow2`), writes, signal);
      this.#built.set(key, built);
    }
    return built;
  }

  /** Start building a template before any case asks for it. */
  prefetch(name: string, writes: readonly string[], runDir: string, signal: AbortSignal): void {
    // A failure is reported to the cases that use the template, not here.
    this.get(name, writes, runDir, signal).catch(() => undefined);
  }

  async #build(file: string, writes: readonly string[], signal: AbortSignal): Promise<string> {
    // The bytes `qemu-img create -f qcow2 ... 64M` writes, without its process start on the
    // path every case waits on.
    await createQcow2Image(file, { size: '64M' }, { signal });
    await this.#tools.qemuIo.run(file, writes, { format: 'qcow2', signal });
    return file;
  }
}

/** What a shared fixture is made with: the run's directory and signal, the tools. */
export interface FixtureScope {
  runDir: string;
  /** Aborts when the run is interrupted or ends: a fixture kills what it started then. */
  signal: AbortSignal;
  tools: SuiteTools;
  observer: MachineObserver;
}

/** Something the cases of a run share, e.g. one QEMU for a table of refused commands. */
export interface SharedFixture<T> {
  value: T;
  /** Graceful release at the end of the run. */
  dispose(): Promise<void>;
}

/**
 * Fixtures made once per run on first use and released when the run ends (`disposeAll`), or
 * killed through the run signal when it is interrupted. A case that fails leaves them to the
 * others: a fixture must not be changed by a case.
 */
export class RunFixtures {
  readonly #made = new Map<string, Promise<SharedFixture<unknown>>>();

  get<T>(key: string, create: (scope: FixtureScope) => Promise<SharedFixture<T>>, scope: FixtureScope): Promise<T> {
    let made = this.#made.get(key);
    if (made === undefined) {
      made = create(scope);
      made.catch(() => undefined);
      this.#made.set(key, made);
    }
    return made.then((f) => f.value as T);
  }

  async disposeAll(): Promise<void> {
    const made = [...this.#made.values()];
    this.#made.clear();
    await Promise.allSettled(made.map(async (f) => (await f).dispose()));
  }
}

/**
 * QEMU machines handed from one case to the next, per kind (`key`), so that a run of many
 * short scenarios starts one QEMU per worker instead of one per case. A case gets a machine
 * that a passing case gave back after proving it as empty as a fresh one (see
 * `CaseContext.reusableMachine`); a machine of a failed, timed-out or interrupted case is
 * killed, never handed on. Idle machines are shut down when the run ends and killed when it is
 * interrupted.
 */
export class MachinePool {
  readonly #idle = new Map<string, QemuMachine[]>();
  readonly #live = new Set<QemuMachine>();
  readonly #logs = new Map<QemuMachine, string>();
  #made = 0;
  #closed = false;

  /** An idle machine of `key`, else a new one from `make` (not launched: `launched` false). */
  take(key: string, make: (index: number) => { machine: QemuMachine; log: string }): { machine: QemuMachine; launched: boolean } {
    const idle = this.#idle.get(key)?.pop();
    if (idle !== undefined) return { machine: idle, launched: true };
    const { machine, log } = make(this.#made++);
    this.#live.add(machine);
    this.#logs.set(machine, log);
    return { machine, launched: false };
  }

  /** The log file of a machine of the pool (every case it served wrote to it). */
  logOf(machine: QemuMachine): string | undefined {
    return this.#logs.get(machine);
  }

  /** Hands `machine` to the next case of `key`; a pool that is closed, or a machine not running, stops it instead. */
  give(key: string, machine: QemuMachine): void {
    if (this.#closed || machine.state !== 'running') {
      this.drop(machine);
      return;
    }
    const idle = this.#idle.get(key) ?? [];
    idle.push(machine);
    this.#idle.set(key, idle);
  }

  /** Kills `machine` and forgets it (a failed or killed case's machine). */
  drop(machine: QemuMachine): void {
    this.#live.delete(machine);
    this.#logs.delete(machine);
    for (const idle of this.#idle.values()) {
      const at = idle.indexOf(machine);
      if (at >= 0) idle.splice(at, 1);
    }
    machine.kill('SIGKILL');
  }

  /** Kills every machine at once (the run was interrupted). */
  killAll(): void {
    this.#closed = true;
    for (const machine of this.#live) machine.kill('SIGKILL');
    this.#live.clear();
    this.#idle.clear();
  }

  /** Shuts the idle machines down (the run has ended); machines still in use are killed. */
  async closeAll(): Promise<void> {
    this.#closed = true;
    const idle = [...this.#idle.values()].flat();
    this.#idle.clear();
    for (const machine of this.#live) if (!idle.includes(machine)) machine.kill('SIGKILL');
    this.#live.clear();
    await Promise.allSettled(idle.map((m) => m.shutdown({ timeout: 5_000 }).catch(() => m.kill('SIGKILL'))));
  }
}

function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

/** What a case works with: its directory and signal, the tools, and machines it owns. */
export class CaseContext {
  readonly id: string;
  readonly dir: string;
  readonly signal: AbortSignal;
  readonly tools: SuiteTools;
  readonly #scope: CaseScope;
  readonly #templates: TemplateSource;
  readonly #observer: MachineObserver;
  readonly #checks: Readonly<Record<string, CheckDefinition>>;
  readonly #fixtures: RunFixtures;
  readonly #pool: MachinePool;
  readonly #handBacks = new Map<QemuMachine, () => void>();
  #machines = 0;

  constructor(
    scope: CaseScope,
    tools: SuiteTools,
    templates: TemplateSource,
    observer: MachineObserver,
    checks: Readonly<Record<string, CheckDefinition>>,
    fixtures: RunFixtures = new RunFixtures(),
    pool: MachinePool = new MachinePool(),
  ) {
    this.id = scope.id;
    this.dir = scope.dir;
    this.signal = scope.signal;
    this.tools = tools;
    this.#scope = scope;
    this.#templates = templates;
    this.#observer = observer;
    this.#checks = checks;
    this.#fixtures = fixtures;
    this.#pool = pool;
  }

  /** The run's fixture `key`, made by `create` for the first case that asks (see `RunFixtures`). */
  shared<T>(key: string, create: (scope: FixtureScope) => Promise<SharedFixture<T>>): Promise<T> {
    const scope: FixtureScope = {
      runDir: this.#scope.runDir,
      signal: this.#scope.runSignal,
      tools: this.tools,
      observer: this.#observer,
    };
    return abortable(this.#fixtures.get(key, create, scope), this.signal);
  }

  get qemuImg(): QemuImg {
    return this.tools.qemuImg;
  }

  /** Compares two of the case's qcow2 images (qemu-img compare's verdict), ending with the case. */
  compare(a: string, b: string): Promise<Verdict> {
    return this.tools.compare(a, b, this.signal);
  }

  /**
   * Run `fn` as one pass of the named check: counted for the report when it returns, and a
   * failure of the app's own kind is labelled with the check (`[suite: job-copied-dirty] ...`).
   */
  async checking<T>(name: string, fn: () => Promise<T> | T): Promise<T> {
    const definition = this.#checks[name];
    if (definition === undefined) throw new Error(`unknown check ${name}`);
    let value: T;
    try {
      value = await fn();
    } catch (error) {
      if (ConformanceError.isInstance(error)) error.forCheck({ name, origin: definition.origin });
      throw error;
    }
    this.#scope.recordCheck(name, definition.origin);
    return value;
  }

  /**
   * Work done for the named check whose pass is counted elsewhere (e.g. comparisons made
   * together and judged one by one): a failure of the app's own kind, such as two verdict
   * engines disagreeing, is labelled with the check; nothing is counted.
   */
  async gathering<T>(name: string, work: Promise<T>): Promise<T> {
    const definition = this.#checks[name];
    if (definition === undefined) throw new Error(`unknown check ${name}`);
    try {
      return await work;
    } catch (error) {
      if (ConformanceError.isInstance(error)) error.forCheck({ name, origin: definition.origin });
      throw error;
    }
  }

  get qemuIo(): QemuIo {
    return this.tools.qemuIo;
  }

  /** Path of `name` inside the case's scratch directory. */
  path(name: string): string {
    return join(this.dir, name);
  }

  /** Copy the shared template image `name` (built from `writes` on first use) to `target`. */
  async imageFromTemplate(name: string, writes: readonly string[], target: string): Promise<void> {
    const template = await abortable(this.#templates.get(name, writes, this.#scope.runDir, this.#scope.runSignal), this.signal);
    // FICLONE shares extents where the file system can; otherwise a plain copy.
    await copyFile(template, target, fsConstants.COPYFILE_FICLONE);
  }

  /**
   * A machine (not launched) whose QMP socket and log live in the case directory, so a kept
   * failed case has its QEMU log and an interrupted run leaves nothing elsewhere. It is killed
   * on timeout or interruption and shut down after the case if still running.
   */
  newMachine(): QemuMachine {
    const index = this.#machines++;
    const log = this.path(index === 0 ? 'qemu.log' : `qemu-${index}.log`);
    const machine = new QemuMachine({
      ...(this.tools.qemuSystem === undefined ? {} : { binary: this.tools.qemuSystem }),
      tmpDir: this.dir,
      logFile: log,
    });
    this.#scope.onKill(() => {
      machine.kill('SIGKILL');
    });
    this.#scope.onTeardown(async () => {
      await machine.shutdown({ timeout: 5_000 }).catch(() => {
        machine.kill('SIGKILL');
      });
    });
    return machine;
  }

  /**
   * A running machine of kind `key` that the case may hand on to the next case of that kind:
   * one given back by an earlier case, or a new one launched now (its socket and log in the
   * run's directory). The case must leave it as a fresh launch finds it (no block node, no
   * job) and say so with `handBack(machine)`; unless it does and passes, the machine is
   * killed when the case ends (its log copied into the case directory as `qemu.log` first, for
   * `--keep-artifacts`). It is killed on timeout and interruption as the case's own machines are.
   */
  async reusableMachine(key: string): Promise<QemuMachine> {
    const runDir = this.#scope.runDir;
    const { machine, launched } = this.#pool.take(key, (index) => {
      const log = join(runDir, `${key}-${index}.log`);
      const made = new QemuMachine({
        ...(this.tools.qemuSystem === undefined ? {} : { binary: this.tools.qemuSystem }),
        tmpDir: runDir,
        logFile: log,
      });
      return { machine: made, log };
    });
    let handedBack = false;
    let given = false;
    this.#handBacks.set(machine, () => {
      handedBack = true;
    });
    // The runner calls kill hooks on timeout and interruption, and once more after every case's
    // teardown: by then a machine given to the next case is no longer this case's to kill.
    this.#scope.onKill(() => {
      if (!given) this.#pool.drop(machine);
    });
    this.#scope.onTeardown(async (failed) => {
      this.#handBacks.delete(machine);
      if (handedBack && !failed && machine.state === 'running') {
        given = true;
        this.#pool.give(key, machine);
        return;
      }
      const log = this.#pool.logOf(machine);
      if (failed && log !== undefined) await copyFile(log, this.path('qemu.log')).catch(() => undefined);
      this.#pool.drop(machine);
    });
    if (!launched) await this.launch(machine);
    return machine;
  }

  /**
   * The case leaves `machine` (from `reusableMachine`) as it found it: it goes to the next
   * case of its kind if this case passes.
   */
  handBack(machine: QemuMachine): void {
    const handBack = this.#handBacks.get(machine);
    if (handBack === undefined) throw new Error('handBack: not a machine of this case from reusableMachine()');
    handBack();
  }

  /** Launch `machine` under the case's signal and note QEMU's version for the report. */
  async launch(machine: QemuMachine): Promise<void> {
    await machine.launch({ signal: this.signal, timeout: 30_000 });
    const { major, minor, micro } = machine.qmp.version.qemu;
    const pkg = machine.qmp.version.package.trim();
    this.#observer.onVersion(`${major}.${minor}.${micro}${pkg ? ` (${pkg})` : ''}`);
  }

  /** Run `fn` after the case body, also when it failed (last registered runs first). */
  defer(fn: () => Promise<void> | void): void {
    this.#scope.onTeardown(fn);
  }

  /** End the case as skipped: the QEMU under test lacks something the case needs. */
  skip(reason: string, cause?: unknown): never {
    throw new CaseSkip(reason, { cause });
  }
}
