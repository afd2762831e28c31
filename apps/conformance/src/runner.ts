import { mkdtempSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { CheckTally, type CheckCount, type CheckOrigin, type FailedCheck } from './checks.js';
import { CaseSkip, CaseTimeoutError, ConformanceError, RunAbortedError } from './errors.js';

export type CaseStatus = 'passed' | 'failed' | 'skipped';

export interface CaseResult {
  id: string;
  /** The suite of the case (set by `runConformance`; the generic runner leaves it out). */
  suite?: string;
  status: CaseStatus;
  durationMs: number;
  /** Failure message, or the reason of a skip. */
  error?: string;
  /** Scratch directory kept for inspection (failed case with `keepArtifacts`). */
  artifactsDir?: string;
  /** The named checks the case passed, and how often (absent when it recorded none). */
  checks?: CheckCount[];
  /** The named check whose failure failed the case, when the failure belongs to one. */
  failedCheck?: FailedCheck;
}

/** What the runner hands to each case: its scratch directory, signal and clean-up hooks. */
export interface CaseScope {
  readonly id: string;
  /** Private scratch directory, removed after the case unless it failed and artifacts are kept. */
  readonly dir: string;
  /** Aborts on the case's timeout and on interruption of the whole run. */
  readonly signal: AbortSignal;
  /** Directory shared by every case of the run (read-mostly fixtures), removed at the end. */
  readonly runDir: string;
  /** Signal of the whole run (for fixtures shared between cases, which outlive one case's timeout). */
  readonly runSignal: AbortSignal;
  /**
   * Called after the case body settles, also on failure, timeout and interruption, last
   * registered first. `failed` tells whether the case failed (to collect logs for artifacts).
   */
  onTeardown(fn: (failed: boolean) => Promise<void> | void): void;
  /** Called synchronously when the case must stop now (timeout, interruption): kill processes. */
  onKill(fn: () => void): void;
  /** Count a passed check for the case's report (`times` passes at once). */
  recordCheck(name: string, origin: CheckOrigin, times?: number): void;
}

export interface CaseDefinition<C> {
  id: string;
  /** Relative cost estimate; heavier cases start first so the run ends sooner on few cores. */
  weight?: number;
  run(context: C): Promise<void>;
}

export interface RunCasesOptions<C> {
  cases: ReadonlyArray<CaseDefinition<C>>;
  makeContext: (scope: CaseScope) => C;
  jobs: number;
  timeoutMs: number;
  keepArtifacts: boolean;
  signal?: AbortSignal;
  onCaseStart?: (id: string) => void;
  onCaseEnd?: (result: CaseResult) => void;
  /** Called once the run directory exists, before the first case: start shared preparation. */
  onRunStart?: (runDir: string, signal: AbortSignal) => void;
  /** Called after the last case, before the run directory is removed: release what cases shared. */
  onRunEnd?: () => Promise<void>;
  /**
   * Directory under which the run makes its scratch directories (default: `os.tmpdir()`, read
   * once when the run starts). It must exist; the run removes only what it made there.
   */
  scratchDir?: string;
}

export interface RunCasesResult {
  /** In the order of `cases`. */
  cases: CaseResult[];
  wallMs: number;
}

export const SCRATCH_PREFIX = 'qmpkit-conformance-';

/** After a kill, how long a case body may take to notice before the runner moves on. */
const SETTLE_GRACE_MS = 3_000;
/** Upper bound for one case's teardown (machine shutdown, removal). */
const TEARDOWN_LIMIT_MS = 10_000;

interface LiveCase {
  kills: Array<() => void>;
  dirs: string[];
}

/**
 * Everything a run has alive right now, so an interrupt can release it even when an async
 * teardown is stuck: `releaseSync()` kills processes and removes directories synchronously.
 */
export class LiveResources {
  private readonly cases = new Set<LiveCase>();
  private readonly dirs = new Set<string>();

  track(): LiveCase {
    const live: LiveCase = { kills: [], dirs: [] };
    this.cases.add(live);
    return live;
  }

  untrack(live: LiveCase): void {
    this.cases.delete(live);
  }

  addDir(dir: string): void {
    this.dirs.add(dir);
  }

  removeDir(dir: string): void {
    this.dirs.delete(dir);
  }

  releaseSync(): void {
    for (const live of this.cases) {
      for (const kill of live.kills) {
        try {
          kill();
        } catch {
          // Best effort: the process may already be gone.
        }
      }
    }
    for (const dir of this.dirs) rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
    this.dirs.clear();
  }
}

/** Every live run of this process; the CLI's last-resort interrupt path releases them. */
export const liveRuns = new Set<LiveResources>();

function ownLine(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  return error.name && error.name !== 'Error' ? `${error.name}: ${error.message}` : error.message;
}

/** The error's own line, then its causes (a launch failure's cause says why QMP did not connect). */
export function messageOf(error: unknown): string {
  const parts: string[] = [];
  let current: unknown = error;
  for (let depth = 0; current !== undefined && current !== null && depth < 4; depth++) {
    parts.push(`${depth === 0 ? '' : 'caused by '}${ownLine(current)}`);
    if (!(current instanceof Error)) break;
    current = current.cause;
  }
  return parts.join('\n');
}

/** Waits until `promise` settles or `ms` pass, whichever is first; never rejects. */
async function settleWithin<T>(promise: Promise<T>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    promise.then(
      () => undefined,
      () => undefined,
    ),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  if (timer !== undefined) clearTimeout(timer);
}

/**
 * Run the cases, `jobs` at a time, each in its own scratch directory under `scratchDir`
 * (default os.tmpdir()) with a timeout. Rejects with `RunAbortedError` when `signal` aborts,
 * after everything is released.
 */
export async function runCases<C>(options: RunCasesOptions<C>): Promise<RunCasesResult> {
  const started = performance.now();
  const runController = new AbortController();
  const outer = options.signal;
  const onOuterAbort = (): void => runController.abort(new RunAbortedError({ cause: outer?.reason }));
  if (outer?.aborted) throw new RunAbortedError({ cause: outer.reason });

  // Read once: every directory of the run goes under the same root, whatever changes TMPDIR
  // later. Made synchronously before anything is registered, so a bad root leaks nothing and
  // an interrupt always finds the directory in `live`.
  const scratchRoot = options.scratchDir ?? tmpdir();
  const runDir = mkdtempSync(join(scratchRoot, `${SCRATCH_PREFIX}run-`));
  const live = new LiveResources();
  live.addDir(runDir);
  liveRuns.add(live);
  outer?.addEventListener('abort', onOuterAbort, { once: true });
  // Shared preparation stops when the run is interrupted and when it ends (e.g. every case
  // failed before a template it started was used).
  const runEnd = new AbortController();
  const runSignal = AbortSignal.any([runController.signal, runEnd.signal]);
  options.onRunStart?.(runDir, runSignal);

  const results = new Map<string, CaseResult>();
  const queue = [...options.cases].sort((a, b) => (b.weight ?? 1) - (a.weight ?? 1));

  const runOne = async (definition: CaseDefinition<C>): Promise<CaseResult> => {
    const controller = new AbortController();
    const tracked = live.track();
    const teardowns: Array<(failed: boolean) => Promise<void> | void> = [];
    const killAll = (): void => {
      for (const kill of tracked.kills) {
        try {
          kill();
        } catch {
          // Already gone.
        }
      }
    };
    const onRunAbort = (): void => {
      controller.abort(runController.signal.reason);
      killAll();
    };
    runController.signal.addEventListener('abort', onRunAbort, { once: true });

    const dir = mkdtempSync(join(scratchRoot, SCRATCH_PREFIX));
    live.addDir(dir);
    tracked.dirs.push(dir);
    const tally = new CheckTally();
    let failedCheck: FailedCheck | undefined;
    const scope: CaseScope = {
      id: definition.id,
      dir,
      signal: controller.signal,
      runDir,
      runSignal,
      onTeardown: (fn) => {
        teardowns.push(fn);
      },
      onKill: (fn) => {
        tracked.kills.push(fn);
      },
      recordCheck: (name, origin, times) => {
        tally.record(name, origin, times);
      },
    };

    options.onCaseStart?.(definition.id);
    const t0 = performance.now();
    let status: CaseStatus = 'passed';
    let error: string | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      const body = Promise.resolve().then(() => definition.run(options.makeContext(scope)));
      const timedOut = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          const timeout = new CaseTimeoutError(definition.id, options.timeoutMs);
          controller.abort(timeout);
          killAll();
          // Give the body a moment to unwind through its finally blocks before reporting.
          void settleWithin(body, SETTLE_GRACE_MS).then(() => reject(timeout));
        }, options.timeoutMs);
      });
      await Promise.race([body, timedOut]);
    } catch (caught) {
      if (CaseSkip.isInstance(caught)) {
        status = 'skipped';
        error = caught.reason;
      } else {
        status = 'failed';
        if (ConformanceError.isInstance(caught)) failedCheck = caught.failedCheck;
        const reason: unknown = controller.signal.aborted ? controller.signal.reason : undefined;
        if (CaseTimeoutError.isInstance(caught)) error = caught.message;
        else if (CaseTimeoutError.isInstance(reason)) {
          // What the case was doing when it was stopped; its cause (the timeout) is said already.
          const own = ownLine(caught);
          error = `${reason.message}\nstopped during: ${own.split('\n', 1)[0] ?? own}`;
        } else error = messageOf(caught);
      }
    } finally {
      if (timer !== undefined) clearTimeout(timer);
    }
    const durationMs = Math.round(performance.now() - t0);

    const failed = status === 'failed';
    for (const teardown of teardowns.reverse()) {
      try {
        await settleWithin(Promise.resolve().then(() => teardown(failed)), TEARDOWN_LIMIT_MS);
      } catch {
        // Teardown is best effort; the case result stands.
      }
    }
    runController.signal.removeEventListener('abort', onRunAbort);
    killAll();
    live.untrack(tracked);

    const result: CaseResult = { id: definition.id, status, durationMs };
    if (error !== undefined) result.error = error;
    const checks = tally.counts();
    if (checks.length > 0) result.checks = checks;
    if (failedCheck !== undefined) result.failedCheck = failedCheck;
    if (failed && options.keepArtifacts && !runController.signal.aborted) {
      result.artifactsDir = dir;
    } else {
      await rm(dir, { recursive: true, force: true, maxRetries: 3 });
    }
    live.removeDir(dir);
    return result;
  };

  const worker = async (): Promise<void> => {
    for (;;) {
      if (runController.signal.aborted) return;
      const next = queue.shift();
      if (next === undefined) return;
      const result = await runOne(next);
      results.set(next.id, result);
      if (!runController.signal.aborted) options.onCaseEnd?.(result);
    }
  };

  try {
    const workers = Array.from({ length: Math.max(1, Math.min(options.jobs, options.cases.length)) }, () => worker());
    await Promise.all(workers);
  } finally {
    outer?.removeEventListener('abort', onOuterAbort);
    if (options.onRunEnd) await settleWithin(options.onRunEnd(), TEARDOWN_LIMIT_MS);
    runEnd.abort(new Error('the run has ended'));
    await rm(runDir, { recursive: true, force: true, maxRetries: 3 });
    live.removeDir(runDir);
    // A kept artifacts directory survives only a completed run: an interrupt removes everything.
    if (runController.signal.aborted) {
      for (const result of results.values()) {
        if (result.artifactsDir !== undefined) {
          await rm(result.artifactsDir, { recursive: true, force: true, maxRetries: 3 });
          delete result.artifactsDir;
        }
      }
    }
    liveRuns.delete(live);
  }
  if (runController.signal.aborted) throw new RunAbortedError({ cause: outer?.reason });

  return {
    cases: options.cases.map((c) => results.get(c.id) ?? { id: c.id, status: 'failed', durationMs: 0, error: 'not run' }),
    wallMs: Math.round(performance.now() - started),
  };
}
