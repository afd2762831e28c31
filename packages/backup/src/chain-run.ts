// One chain operation (a full, an incremental, a differential) from its first change to its
// outcome. Every change it makes registers how to undo it; `rollback()` undoes them in
// reverse order, so the order of undo steps is reviewable in one place, and a failure, a
// cancel, an abort or a timeout all end in the same code path.
import { hostname } from 'node:os';
import { rm, rmdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { DriveBusyError, JobTrackingError } from './errors.js';
import type { BackupJob, JobEndStatus, JobResult } from './job.js';
import { appendRunLog, writeManifest } from './manifest.js';
import { addNode, removeNode } from './nodes.js';
import type { BlockdevOptions } from './qapi.js';
import type { BackupKind, BackupMode, Manifest, PendingDrive, PendingPull, PendingRun, RunLogEntry } from './manifest.js';
import { activeRuns } from './pending.js';
import { eventTimeMs, execute, record } from './qmp.js';
import type { BackupQmp, CallOptions } from './qmp.js';
import type { Transaction } from './transaction.js';
import { UndoLog } from './undo-log.js';
import type { RunSteps, UndoStepOptions } from './undo-log.js';

/** How long QEMU gets to end cancelled jobs before the run counts them as lost. */
const CANCEL_GRACE_MS = 60_000;

export interface RunContext {
  qmp: BackupQmp;
  manifestPath: string;
  fileMode: number;
}

/** A job's end as its events tell it, read while it waits in 'concluded' (before it is dismissed). */
export interface ConcludedJob {
  job: BackupJob;
  status: JobEndStatus;
  len: number;
  error?: string;
  /** QEMU's time from the job's first event to its conclusion (ms, event timestamps). */
  durationMs: number;
}

/** How a run that recorded nothing ended, for the run log. */
export type RunEnd = Pick<RunLogEntry, 'outcome' | 'error'>;

/** Why a run cancelled its jobs: its AbortSignal, its timeout, or a failure after they started. */
export type RunStop = 'abort' | 'timeout' | 'error';

/** Read a concluded job's end from the events it took (BLOCK_JOB_* come before 'concluded'). */
export function concludedOutcome(job: BackupJob): ConcludedJob {
  let completed: Record<string, unknown> | undefined;
  let cancelled: Record<string, unknown> | undefined;
  for (const e of job.events) {
    if (e.event === 'BLOCK_JOB_COMPLETED') completed = record(e.data);
    if (e.event === 'BLOCK_JOB_CANCELLED') cancelled = record(e.data);
  }
  const first = job.events[0];
  const last = job.events[job.events.length - 1];
  const durationMs = first && last ? Math.round((eventTimeMs(last.timestamp) - eventTimeMs(first.timestamp)) * 1000) / 1000 : 0;
  const end = cancelled ?? completed;
  const len = typeof end?.['len'] === 'number' ? end['len'] : 0;
  const offset = typeof end?.['offset'] === 'number' ? end['offset'] : 0;
  const base = { job, len, durationMs };
  if (cancelled) return { ...base, status: 'cancelled' };
  if (completed) {
    if (typeof completed['error'] === 'string') return { ...base, status: 'failed', error: completed['error'] };
    if (offset !== len) return { ...base, status: 'failed', error: `job ended at offset ${offset} of ${len}` };
    return { ...base, status: 'completed' };
  }
  return { ...base, status: 'failed', error: 'the job concluded without BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED' };
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class ChainRun implements RunSteps {
  readonly id: string;
  readonly kind: BackupKind;
  readonly mode: BackupMode;
  readonly #ctx: RunContext;
  readonly #undo = new UndoLog();
  readonly #nodes: string[] = [];
  /** Directories the run created, deepest first, from `dir` up to the first one created. */
  #directories: string[] = [];
  /** The manifest before the run (undefined: there was none). */
  #before: Manifest | undefined;
  #pendingWritten = false;
  jobs: BackupJob[] = [];
  /** Set when the run's AbortSignal fired or its timeout passed. */
  stopped: RunStop | undefined;

  constructor(ctx: RunContext, id: string, kind: BackupKind, mode: BackupMode = 'push') {
    this.#ctx = ctx;
    this.id = id;
    this.kind = kind;
    this.mode = mode;
  }

  /** Register how to undo a change just made (taken back only if the run fails). */
  undoWith(what: string, step: () => Promise<void>, options: UndoStepOptions = {}): void {
    this.#undo.undoWith(what, step, options);
  }

  /** Register a step taken back however the run ends (an export, a fleecing node). */
  teardownWith(what: string, step: () => Promise<void>): void {
    this.#undo.teardownWith(what, step);
  }

  /** Take back the teardown steps (the run succeeded so far); returns what could not be taken back. */
  async tearDown(): Promise<string[]> {
    return (await this.#undo.tearDown()).failures;
  }

  /** A file the run created: removed on rollback. */
  created(file: string): void {
    this.undoWith(`remove ${file}`, () => rm(file, { force: true }));
  }

  /**
   * Add a block node for the run (a blockdev-backup target, ...): removed by `removeNodes()`
   * once the jobs have ended, or on rollback.
   */
  async addNode(options: BlockdevOptions & { 'node-name': string }, call: CallOptions = {}): Promise<void> {
    const name = options['node-name'];
    await addNode(this.#ctx.qmp, options, call);
    this.#nodes.push(name);
    this.undoWith(`remove node ${name}`, () => this.#removeNode(name));
  }

  /** The nodes the run added and has not removed yet, oldest first. */
  get nodes(): readonly string[] {
    return this.#nodes;
  }

  async #removeNode(name: string): Promise<void> {
    if (!this.#nodes.includes(name)) return;
    await removeNode(this.#ctx.qmp, name);
    this.#nodes.splice(this.#nodes.indexOf(name), 1);
  }

  /**
   * Remove the nodes the run added, newest first. QEMU holds a node's image lock (and may hold
   * its data) until then, so this comes before anything reads the targets; a concluded job no
   * longer uses its target. Every node is tried; the first failure is thrown.
   */
  async removeNodes(): Promise<void> {
    let first: unknown;
    for (const name of [...this.#nodes].reverse()) {
      try {
        await this.#removeNode(name);
      } catch (error) {
        first ??= error;
      }
    }
    if (first !== undefined) throw first;
  }

  /**
   * The run created `dir` and the directories above it up to `first`: on rollback each is
   * removed if the run left it empty (a run log written there keeps it).
   */
  createdDirectory(first: string, dir: string): void {
    const dirs: string[] = [];
    for (let d = dir; ; d = dirname(d)) {
      dirs.push(d);
      if (d === first || dirname(d) === d) break;
    }
    this.#directories = dirs;
  }

  /** A bitmap the run added: removed on rollback. */
  addedBitmap(node: string, name: string): void {
    this.undoWith(`remove bitmap ${name} of ${node}`, async () => {
      await execute(this.#ctx.qmp, 'block-dirty-bitmap-remove', { node, name });
    });
  }

  /**
   * Record the run in the manifest before anything changes in QEMU: if this process loses
   * track of its jobs, or dies, the next run finds them by id instead of trusting a bitmap
   * QEMU may have reset. `base` is the manifest to write the mark into (the current one, or
   * a new chain's while it has no backup yet); `chainId` the chain the run belongs to.
   */
  async markPending(before: Manifest | undefined, base: Manifest, chainId: string, drives: PendingDrive[], pull?: PendingPull): Promise<void> {
    activeRuns.add(this.id);
    this.#before = before;
    this.#pendingBase = base;
    this.#pending = {
      run: this.id,
      kind: this.kind,
      started: new Date().toISOString(),
      targets: drives.map((d) => d.target),
      drives,
      pid: process.pid,
      host: hostname(),
      chainId,
    };
    if (pull) {
      this.#pending.mode = 'pull';
      this.#pending.pull = pull;
    }
    await this.#writePending();
  }

  /** Rewrite the pending record with what is known now (the bitmaps' granularity, the mark's bits). */
  async updatePending(drives: PendingDrive[]): Promise<void> {
    if (!this.#pending) return;
    this.#pending = { ...this.#pending, targets: drives.map((d) => d.target), drives };
    await this.#writePending();
  }

  async #writePending(): Promise<void> {
    await writeManifest(this.#ctx.manifestPath, { ...(this.#pendingBase as Manifest), pending: this.#pending as PendingRun }, {
      mode: this.#ctx.fileMode,
    });
    this.#pendingWritten = true;
  }

  #pendingBase: Manifest | undefined;
  #pending: PendingRun | undefined;

  /**
   * Send the transaction that starts the jobs. QEMU refusing it means no job started; a
   * refusal because the drive is busy (another block job) is named as such.
   */
  async start(tx: Transaction, nodes: readonly string[], options: CallOptions): Promise<BackupJob[]> {
    options.signal?.throwIfAborted();
    try {
      // Not the run's signal or timeout: they cancel the jobs (`waitConcluded`), while the
      // trackers follow the jobs to their end.
      const started = await tx.run(this.#ctx.qmp, {});
      this.jobs = started.jobs;
      return started.jobs;
    } catch (error) {
      const message = errorMessage(error);
      if (/block job|is busy|in use/i.test(message)) {
        throw new DriveBusyError(nodes.join(', '), `QEMU refused the backup because the drive is busy: ${message}`, {
          cause: error,
        });
      }
      throw error;
    }
  }

  /** Cancel every job of the run (once); `waitConcluded()` then follows them to their end. */
  stop(why: RunStop): void {
    if (this.stopped) return;
    this.stopped = why;
    for (const job of this.jobs) void job.cancel({ timeout: 10_000 }).catch(() => undefined);
    const timer = setTimeout(() => this.#grace.abort(new Error('cancelled jobs did not end')), CANCEL_GRACE_MS);
    timer.unref();
  }

  readonly #grace = new AbortController();

  /**
   * Wait until every job has concluded. When `signal` fires or `timeout` passes, every job
   * is cancelled and waited for (QEMU merges the bitmaps back); `stopped` says why. Throws
   * `JobTrackingError` when the jobs cannot be followed to their end (QEMU gone, or not ending
   * a cancelled job within a minute): the caller leaves the run pending.
   */
  async waitConcluded(options: { signal?: AbortSignal | undefined; timeout?: number | undefined }): Promise<ConcludedJob[]> {
    const onAbort = (): void => this.stop('abort');
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const timer = options.timeout === undefined ? undefined : setTimeout(() => this.stop('timeout'), options.timeout);
    if (options.signal?.aborted) this.stop('abort');
    try {
      await Promise.all(this.jobs.map((job) => job.waitForStatus('concluded', { signal: this.#grace.signal })));
    } catch (error) {
      throw JobTrackingError.isInstance(error)
        ? error
        : new JobTrackingError(this.jobs.map((j) => j.id).join(', '), 'lost track of the job', { cause: error });
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
      if (timer) clearTimeout(timer);
    }
    return this.jobs.map(concludedOutcome);
  }

  /** Dismiss the concluded jobs and return their results (QEMU forgets them). */
  async dismissJobs(): Promise<JobResult[]> {
    await Promise.all(this.jobs.map((j) => (j.status === 'concluded' ? j.dismiss().catch(() => undefined) : undefined)));
    return Promise.all(this.jobs.map((j) => j.result));
  }

  /**
   * After tracking was lost: cancel what may still run (its bitmap is merged back) and take
   * its remaining events. The run stays pending in the manifest: its outcome is unknown.
   */
  async abandon(): Promise<void> {
    await Promise.all(this.jobs.map((j) => j.abandon()));
  }

  /**
   * Undo everything the run did, newest first: dismiss its concluded jobs, remove the bitmaps
   * it added, the nodes it added and the targets it created, then put the manifest back exactly as it was and log
   * how the run ended. The manifest goes last, so a process that dies half way leaves the run
   * pending and the next run finishes the undo. Never throws; returns what could not be undone.
   */
  async rollback(end: RunEnd | undefined): Promise<string[]> {
    await Promise.all(this.jobs.map((j) => (j.status === 'concluded' ? j.dismiss().catch(() => undefined) : undefined)));
    const { failures, criticalFailed } = await this.#undo.undoAll();
    // A bitmap that could not be made whole again (a pull run's frozen copy not merged back):
    // the run stays pending, so the next run finishes the undo instead of trusting the bitmap.
    if (criticalFailed) {
      failures.push('the run stays pending in the manifest: the next run finishes undoing it');
      if (end) await this.log(end).catch(() => undefined);
      this.#directories = [];
      await Promise.all(this.jobs.map((j) => j.result.catch(() => undefined)));
      return failures;
    }
    if (this.#pendingWritten) {
      try {
        await this.restoreManifest();
      } catch (error) {
        failures.push(`restore the manifest: ${errorMessage(error)}`);
      }
    }
    if (end) await this.log(end).catch(() => undefined);
    // Last: a directory made for the run and left empty (nothing to say in it) goes too.
    for (const d of this.#directories.splice(0)) {
      try {
        await rmdir(d);
      } catch {
        break;
      }
    }
    await Promise.all(this.jobs.map((j) => j.result.catch(() => undefined)));
    return failures;
  }

  /** The manifest as before the run; removed if there was none before. */
  async restoreManifest(): Promise<void> {
    const before = this.#before;
    if (before) await writeManifest(this.#ctx.manifestPath, before, { mode: this.#ctx.fileMode });
    else await rm(this.#ctx.manifestPath, { force: true });
    this.#pendingWritten = false;
  }

  /** Append how the run ended to the chain's run log. */
  async log(end: RunEnd & { files?: string[] }): Promise<void> {
    const entry: RunLogEntry = { run: this.id, kind: this.kind, time: new Date().toISOString(), outcome: end.outcome };
    if (this.mode === 'pull') entry.mode = 'pull';
    if (end.error !== undefined) entry.error = end.error;
    if (end.files) entry.files = end.files;
    await appendRunLog(this.#ctx.manifestPath, entry, { mode: this.#ctx.fileMode });
  }

  /** The run is over in this process (recorded, undone, or abandoned to a later run). */
  ended(): void {
    activeRuns.delete(this.id);
  }

  /** Forget the undo steps: the run is recorded. */
  committed(): void {
    this.#undo.clear();
    this.#directories = [];
    this.#pendingWritten = false;
  }
}
