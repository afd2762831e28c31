import { BackupJobError, JobTrackingError } from './errors.js';
import type { BlockdevBackup, DriveBackup, JobInfo, JobStatus } from './qapi.js';
import { eventTimeMs, execute, listenEvents, record } from './qmp.js';
import type { BackupQmp, CallOptions, LooseListener, QmpEventLike } from './qmp.js';

/** One BLOCK_JOB_ERROR: what the job was doing and what QEMU did about it. */
export interface BlockJobErrorInfo {
  action: 'ignore' | 'report' | 'stop';
  operation: 'read' | 'write';
}

export type JobEndStatus = 'completed' | 'failed' | 'cancelled';

export interface JobResult {
  id: string;
  /**
   * completed: BLOCK_JOB_COMPLETED without error and offset == len; failed: BLOCK_JOB_COMPLETED
   * with an error (or short of len); cancelled: BLOCK_JOB_CANCELLED.
   */
  status: JobEndStatus;
  offset: number;
  len: number;
  error?: string;
  errors: BlockJobErrorInfo[];
  /** QEMU's own time for the job: its first to its last JOB_STATUS_CHANGE, by event timestamps (ms). */
  qemuDurationMs: number;
  /** Wall-clock time from the call that started the job until this result (ms). */
  elapsedMs: number;
}

export interface JobProgress {
  id: string;
  status: JobStatus;
  current: number;
  total: number;
  /**
   * The job's last report: from its BLOCK_JOB_COMPLETED / BLOCK_JOB_CANCELLED event, sent once
   * when it concludes; for a job that completed, `current === total`.
   */
  final?: boolean;
}

export interface JobCancelOptions extends CallOptions {
  /** Cancel with `block-job-cancel` and `force: true` instead of `job-cancel`. */
  force?: boolean;
}

export interface BackupJobOptions extends CallOptions {
  /**
   * Progress while the job runs (`query-jobs` every `progressInterval` ms, default 250) and a
   * last report from the job's end event when it concludes (`final: true`; `current === total`
   * when it completed), so even a job that ends before the first poll reports once. Reports
   * never go backwards and none follows the final one.
   */
  onProgress?: (progress: JobProgress) => void;
  progressInterval?: number;
  /** Called on every BLOCK_JOB_ERROR as it arrives (with on-*-error=stop the job is paused: `job.resume()`). */
  onError?: (error: BlockJobErrorInfo, job: BackupJob) => void;
  /** Called on every JOB_STATUS_CHANGE. */
  onStatus?: (status: JobStatus, job: BackupJob) => void;
  /**
   * With auto-dismiss false the job stays 'concluded' until dismissed. By default the job
   * reads its error from `query-jobs` and dismisses it, so `result` still means "job gone";
   * pass false to call `job.dismiss()` yourself.
   */
  dismissConcluded?: boolean;
}

const JOB_EVENTS = [
  'JOB_STATUS_CHANGE',
  'BLOCK_JOB_COMPLETED',
  'BLOCK_JOB_CANCELLED',
  'BLOCK_JOB_ERROR',
  'BLOCK_JOB_READY',
  'BLOCK_JOB_PENDING',
] as const;

/** Whether an event is about the job `id` (BLOCK_JOB_* name the job id `device`, except PENDING's `id`). */
export function isJobEvent(event: QmpEventLike, id: string): boolean {
  const data = record(event.data);
  switch (event.event) {
    case 'JOB_STATUS_CHANGE':
    case 'BLOCK_JOB_PENDING':
      return data['id'] === id;
    case 'BLOCK_JOB_COMPLETED':
    case 'BLOCK_JOB_CANCELLED':
    case 'BLOCK_JOB_ERROR':
    case 'BLOCK_JOB_READY':
      return data['device'] === id;
    default:
      return false;
  }
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new Error('aborted');
}

interface StatusWaiter {
  status: JobStatus;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/**
 * A backup job followed through its events until QEMU has forgotten it. Created by
 * `startDriveBackup`, `startBlockdevBackup` or `Transaction.run`.
 */
export class BackupJob {
  readonly id: string;
  readonly device: string;
  readonly kind: 'drive-backup' | 'blockdev-backup';
  readonly args: Readonly<DriveBackup | BlockdevBackup>;
  /** Resolves after the job's final JOB_STATUS_CHANGE ('null'); rejects only if tracking failed. */
  readonly result: Promise<JobResult>;
  /** Every event of this job, in order, as its own listener received them. */
  readonly events: QmpEventLike[] = [];
  readonly errors: BlockJobErrorInfo[] = [];

  #qmp: BackupQmp;
  #options: BackupJobOptions;
  #status: JobStatus = 'undefined';
  #done = false;
  #tracking = new AbortController();
  #statusWaiters: StatusWaiter[] = [];
  #startedAt: number;
  #startFailed = false;
  #progressDone = false;
  #lastProgress: JobProgress | undefined;
  // The job's own queue of its events, opened before the command that starts the job, so
  // no other reader of the connection's events (a user's wait, another job) can take them.
  #listener: LooseListener;

  /** @internal Use startDriveBackup / startBlockdevBackup / Transaction. */
  constructor(
    qmp: BackupQmp,
    kind: 'drive-backup' | 'blockdev-backup',
    args: DriveBackup | BlockdevBackup,
    options: BackupJobOptions = {},
  ) {
    this.#qmp = qmp;
    this.kind = kind;
    this.args = args;
    this.device = args.device;
    this.id = args['job-id'] ?? args.device;
    this.#options = options;
    this.#startedAt = performance.now();
    this.#listener = listenEvents(qmp, JOB_EVENTS, (e) => isJobEvent(e, this.id));
    this.result = this.#track();
    // The caller may never await `result` (e.g. the start command failed): no unhandled rejection.
    this.result.catch(() => undefined);
    if (options.onProgress) void this.#pollProgress(options.progressInterval ?? 250);
  }

  /** The last status seen in a JOB_STATUS_CHANGE ('undefined' before the first). */
  get status(): JobStatus {
    return this.#status;
  }

  get done(): boolean {
    return this.#done;
  }

  async #track(): Promise<JobResult> {
    const { signal, timeout } = this.#options;
    const signals = [this.#tracking.signal];
    if (signal) signals.push(signal);
    if (timeout !== undefined) signals.push(AbortSignal.timeout(timeout));
    const combined = AbortSignal.any(signals);
    let completed: Record<string, unknown> | undefined;
    let cancelled: Record<string, unknown> | undefined;
    let concludedError: string | undefined;
    try {
      for (;;) {
        let event: QmpEventLike;
        try {
          event = await this.#listener.wait({ signal: combined });
        } catch (error) {
          if (this.#startFailed) throw error;
          const why = combined.aborted
            ? signal?.aborted
              ? 'tracking aborted'
              : 'timed out waiting for the job to end'
            : 'waiting for its events failed';
          throw new JobTrackingError(this.id, why, { cause: combined.aborted ? abortReason(combined) : error });
        }
        this.events.push(event);
        const data = record(event.data);
        switch (event.event) {
          case 'JOB_STATUS_CHANGE': {
            const status = data['status'] as JobStatus;
            this.#status = status;
            this.#options.onStatus?.(status, this);
            if (status === 'concluded') this.#finalProgress(completed ?? cancelled);
            this.#settleStatusWaiters(status);
            if (status === 'concluded' && this.args['auto-dismiss'] === false && this.#options.dismissConcluded !== false) {
              concludedError = (await this.query({ signal: combined }))?.error;
              await execute(this.#qmp, 'job-dismiss', { id: this.id }, { signal: combined });
            }
            break;
          }
          case 'BLOCK_JOB_COMPLETED':
            completed = data;
            break;
          case 'BLOCK_JOB_CANCELLED':
            cancelled = data;
            break;
          case 'BLOCK_JOB_ERROR': {
            const info: BlockJobErrorInfo = {
              action: data['action'] as BlockJobErrorInfo['action'],
              operation: data['operation'] as BlockJobErrorInfo['operation'],
            };
            this.errors.push(info);
            this.#options.onError?.(info, this);
            break;
          }
          default:
            break;
        }
        if (event.event === 'JOB_STATUS_CHANGE' && data['status'] === 'null') break;
      }
    } finally {
      this.#done = true;
      this.#closeListener();
      this.#settleStatusWaiters(undefined);
    }
    return this.#summarise(completed, cancelled, concludedError);
  }

  /** Stops listening; events that arrived but were not processed (tracking stopped early) are kept. */
  #closeListener(): void {
    try {
      this.events.push(...this.#listener.drain());
    } catch {
      // An overflowed queue cannot say what it lost; tracking has already failed then.
    }
    this.#listener.close();
  }

  #summarise(
    completed: Record<string, unknown> | undefined,
    cancelled: Record<string, unknown> | undefined,
    concludedError: string | undefined,
  ): JobResult {
    const first = this.events[0];
    const last = this.events[this.events.length - 1];
    const qemuDurationMs = first && last ? eventTimeMs(last.timestamp) - eventTimeMs(first.timestamp) : 0;
    const base = {
      id: this.id,
      errors: [...this.errors],
      qemuDurationMs,
      elapsedMs: performance.now() - this.#startedAt,
    };
    const end = cancelled ?? completed;
    const offset = typeof end?.['offset'] === 'number' ? end['offset'] : 0;
    const len = typeof end?.['len'] === 'number' ? end['len'] : 0;
    if (cancelled) return { ...base, status: 'cancelled', offset, len };
    if (completed) {
      const error = typeof completed['error'] === 'string' ? completed['error'] : undefined;
      if (error !== undefined) return { ...base, status: 'failed', offset, len, error };
      if (offset !== len) {
        return { ...base, status: 'failed', offset, len, error: `job ended at offset ${offset} of ${len}` };
      }
      return { ...base, status: 'completed', offset, len };
    }
    // A job that concluded without BLOCK_JOB_* (aborted before running) still ended badly.
    return {
      ...base,
      status: 'failed',
      offset,
      len,
      error: concludedError ?? 'the job ended without BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED',
    };
  }

  #settleStatusWaiters(status: JobStatus | undefined): void {
    this.#statusWaiters = this.#statusWaiters.filter((w) => {
      if (status === undefined) {
        w.reject(new JobTrackingError(this.id, `the job ended before reaching status "${w.status}"`));
        return false;
      }
      if (w.status === status) {
        w.resolve();
        return false;
      }
      return true;
    });
  }

  /** Resolves when a JOB_STATUS_CHANGE to `status` arrives (e.g. 'pending' with auto-finalize false). */
  waitForStatus(status: JobStatus, options: CallOptions = {}): Promise<void> {
    if (this.#status === status) return Promise.resolve();
    if (this.#done) return Promise.reject(new JobTrackingError(this.id, `the job has ended (status "${this.#status}")`));
    return new Promise<void>((resolve, reject) => {
      const cleanups: Array<() => void> = [];
      const waiter: StatusWaiter = {
        status,
        resolve: () => {
          cleanups.forEach((c) => c());
          resolve();
        },
        reject: (e) => {
          cleanups.forEach((c) => c());
          reject(e);
        },
      };
      const fail = (why: string, cause: unknown): void => {
        this.#statusWaiters = this.#statusWaiters.filter((w) => w !== waiter);
        waiter.reject(new JobTrackingError(this.id, why, { cause }));
      };
      if (options.timeout !== undefined) {
        const t = setTimeout(() => fail(`timed out waiting for status "${status}"`, undefined), options.timeout);
        cleanups.push(() => clearTimeout(t));
      }
      if (options.signal) {
        const s = options.signal;
        if (s.aborted) return fail('aborted', abortReason(s));
        const onAbort = (): void => fail('aborted', abortReason(s));
        s.addEventListener('abort', onAbort, { once: true });
        cleanups.push(() => s.removeEventListener('abort', onAbort));
      }
      this.#statusWaiters.push(waiter);
    });
  }

  /** The job's entry in `query-jobs`, or undefined once QEMU has dropped it. */
  async query(options: CallOptions = {}): Promise<JobInfo | undefined> {
    const jobs = await execute<JobInfo[]>(this.#qmp, 'query-jobs', undefined, options);
    return jobs.find((j) => j.id === this.id);
  }

  async pause(options: CallOptions = {}): Promise<void> {
    await execute(this.#qmp, 'job-pause', { id: this.id }, options);
  }

  /** Resume a paused job, also one stopped by an error with on-*-error=stop. */
  async resume(options: CallOptions = {}): Promise<void> {
    await execute(this.#qmp, 'job-resume', { id: this.id }, options);
  }

  /**
   * Ask QEMU to cancel the job; `result` then reports 'cancelled' (or 'completed' if it won the
   * race). `force: true` sends `block-job-cancel` with `force`, which also cancels a job that is
   * paused or whose completion would otherwise be triggered (a mirror that is ready).
   */
  async cancel(options: JobCancelOptions = {}): Promise<void> {
    const { force, ...call } = options;
    if (force === true) await execute(this.#qmp, 'block-job-cancel', { device: this.id, force: true }, call);
    else await execute(this.#qmp, 'job-cancel', { id: this.id }, call);
  }

  /** With auto-finalize false: finalize a job waiting in 'pending'. */
  async finalize(options: CallOptions = {}): Promise<void> {
    await execute(this.#qmp, 'job-finalize', { id: this.id }, options);
  }

  /** With auto-dismiss false and `dismissConcluded: false`: dismiss a 'concluded' job. */
  async dismiss(options: CallOptions = {}): Promise<void> {
    await execute(this.#qmp, 'job-dismiss', { id: this.id }, options);
  }

  /** The result, turned into a `BackupJobError` unless the job completed. */
  async expectCompleted(): Promise<JobResult> {
    const r = await this.result;
    if (r.status !== 'completed') throw new BackupJobError(r.id, r.status, r.error);
    return r;
  }

  /** Progress from `query-jobs` every `interval` ms until the job is gone. */
  async *progress(options: { interval?: number; signal?: AbortSignal } = {}): AsyncGenerator<JobProgress, void, undefined> {
    const interval = options.interval ?? 250;
    const ended = this.result.then(
      () => undefined,
      () => undefined,
    );
    let listed = false;
    while (!this.#done) {
      options.signal?.throwIfAborted();
      const info = await this.query(options.signal ? { signal: options.signal } : {});
      if (info) {
        listed = true;
        yield { id: this.id, status: info.status, current: info['current-progress'], total: info['total-progress'] };
      } else if (listed) {
        return;
      }
      // Not listed yet: the first poll can overtake the command that creates the job.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([ended, new Promise<void>((r) => (timer = setTimeout(r, interval)))]);
      clearTimeout(timer);
    }
  }

  async #pollProgress(interval: number): Promise<void> {
    try {
      for await (const p of this.progress({ interval })) {
        if (this.#progressDone) break;
        this.#reportProgress(p);
      }
    } catch {
      // Progress is advisory: a failed poll (e.g. the connection closing) must not fail the job.
    }
  }

  /**
   * One progress report to `onProgress`: nothing after the final one, no repeat of the last,
   * never less done than already reported (a poll answered after a later one was handled).
   */
  #reportProgress(p: JobProgress): void {
    const onProgress = this.#options.onProgress;
    if (!onProgress || this.#progressDone) return;
    const last = this.#lastProgress;
    if (p.final === true) this.#progressDone = true;
    else if (last && (p.current < last.current || (p.current === last.current && p.total === last.total && p.status === last.status))) return;
    this.#lastProgress = p;
    try {
      onProgress(p);
    } catch {
      // A throwing callback must not end the tracking (nor escape into the caller's process).
    }
  }

  /** The job concluded: its end event says how far it got; a completed job got to the end. */
  #finalProgress(end: Record<string, unknown> | undefined): void {
    const offset = typeof end?.['offset'] === 'number' ? end['offset'] : this.#lastProgress?.current ?? 0;
    const len = typeof end?.['len'] === 'number' ? end['len'] : this.#lastProgress?.total ?? offset;
    this.#reportProgress({ id: this.id, status: 'concluded', current: offset, total: len, final: true });
  }

  /**
   * After tracking failed (timeout, abort): cancel the job if it still runs and collect its
   * remaining events, waiting at most `timeout` ms (default 5000) for its final
   * JOB_STATUS_CHANGE. Never throws.
   */
  async abandon(options: { timeout?: number } = {}): Promise<void> {
    if (!this.#done) this.#tracking.abort(new Error('abandoned'));
    await this.result.catch(() => undefined);
    if (this.#status === 'null') return;
    const deadline = AbortSignal.timeout(options.timeout ?? 5000);
    // Listening first, then asking QEMU: a job that ends in between is either seen ending
    // here or already absent from query-jobs.
    const listener = listenEvents(this.#qmp, JOB_EVENTS, (e) => isJobEvent(e, this.id));
    try {
      if ((await this.query({ signal: deadline })) === undefined) return;
      await this.cancel({ timeout: 2000 }).catch(() => undefined);
      for (;;) {
        const ev = await listener.wait({ signal: deadline });
        this.events.push(ev);
        if (ev.event === 'JOB_STATUS_CHANGE' && record(ev.data)['status'] === 'null') {
          this.#status = 'null';
          return;
        }
      }
    } catch {
      return;
    } finally {
      listener.close();
    }
  }

  /** @internal The command that was to create the job failed: stop tracking, keep its events. */
  async _startFailed(): Promise<void> {
    this.#startFailed = true;
    this.#tracking.abort(new Error('the command starting the job failed'));
    // QEMU sends a failed command's events before its reply, so the job's listener (open
    // since before the command) has all of them by now; ending the tracking collects them.
    await this.result.catch(() => undefined);
  }
}

/** Send `command`; the job listens to its events before it is sent. */
async function start(
  qmp: BackupQmp,
  kind: 'drive-backup' | 'blockdev-backup',
  args: DriveBackup | BlockdevBackup,
  options: BackupJobOptions,
): Promise<BackupJob> {
  const withId = { ...args, 'job-id': args['job-id'] ?? args.device };
  const job = new BackupJob(qmp, kind, withId, options);
  const callOptions: CallOptions = {};
  if (options.signal) callOptions.signal = options.signal;
  if (options.timeout !== undefined) callOptions.timeout = options.timeout;
  try {
    await execute(qmp, kind, withId, callOptions);
  } catch (error) {
    await job._startFailed();
    throw error;
  }
  return job;
}

/** Start a `drive-backup` (source attached with -drive or any node; QEMU opens/creates the target file). */
export function startDriveBackup(qmp: BackupQmp, args: DriveBackup, options: BackupJobOptions = {}): Promise<BackupJob> {
  return start(qmp, 'drive-backup', args, options);
}

/** Start a `blockdev-backup` into a target node added with blockdev-add. */
export function startBlockdevBackup(
  qmp: BackupQmp,
  args: BlockdevBackup,
  options: BackupJobOptions = {},
): Promise<BackupJob> {
  return start(qmp, 'blockdev-backup', args, options);
}
