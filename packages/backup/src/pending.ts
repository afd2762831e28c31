// A run recorded as pending in the manifest was started by a process that did not see it
// end (killed, or lost its QEMU connection). Its jobs are looked up in QEMU by their ids:
// chain jobs run with auto-dismiss off and are dismissed only after the manifest records
// their outcome, so a job that ended while nobody watched waits in 'concluded' with its
// result, and the next run can record it (or undo it) instead of guessing.
import { hostname } from 'node:os';
import type { PendingJobInfo } from './errors.js';
import { removeNode } from './nodes.js';
import type { JobInfo } from './qapi.js';
import { execute } from './qmp.js';
import type { BackupQmp, CallOptions } from './qmp.js';
import type { PendingRun } from './manifest.js';

export interface PendingJobState extends PendingJobInfo {
  /** For a concluded job: how it ended. */
  outcome?: { status: 'completed' | 'failed'; error?: string; len: number };
}

export interface PendingRunState {
  run: PendingRun;
  jobs: PendingJobState[];
  /** The process that started the run is alive on this host (so the run is not an orphan). */
  ownerAlive: boolean;
  /**
   * 'running': a job is still in QEMU and not concluded; 'concluded': every job has ended and
   * can be recorded or undone; 'gone': QEMU lists none of them (its outcome is unknown), or
   * the manifest does not say which jobs the run had.
   */
  state: 'running' | 'concluded' | 'gone';
}

/** Job ids of a pending run: recorded since manifest version 2, derived from the run id before. */
export function pendingJobIds(run: PendingRun, nodes: readonly string[]): Array<{ id: string; node: string }> {
  if (run.drives) return run.drives.map((d) => ({ id: d.jobId, node: d.node }));
  return nodes.map((node) => ({ id: `qmpkit-${node.replace(/[^A-Za-z0-9_.-]/g, '_')}-${run.run.slice(0, 8)}`, node }));
}

/** Runs this process has in progress (their pending record names this process). */
export const activeRuns = new Set<string>();

/**
 * Whether the process that started a run is still running it: on this host and alive, and,
 * when it is this very process, only while the run is in progress here (a run this process
 * lost track of is an orphan like any other).
 */
export function processAlive(pid: number | undefined, host: string | undefined, run?: string): boolean {
  if (pid === undefined || host !== hostname()) return false;
  if (pid === process.pid) return run !== undefined && activeRuns.has(run);
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function queryJobs(qmp: BackupQmp, options: CallOptions = {}): Promise<JobInfo[]> {
  return execute<JobInfo[]>(qmp, 'query-jobs', undefined, options);
}

/** Where the jobs of a pending run are now. */
export async function inspectPendingRun(
  qmp: BackupQmp,
  run: PendingRun,
  nodes: readonly string[],
  options: CallOptions = {},
): Promise<PendingRunState> {
  const listed = await queryJobs(qmp, options);
  const jobs: PendingJobState[] = pendingJobIds(run, nodes).map(({ id, node }) => {
    const info = listed.find((j) => j.id === id);
    if (!info) return { id, node, status: 'gone' };
    const state: PendingJobState = { id, node, status: info.status };
    if (info.status === 'concluded') {
      // A cancelled job concludes with an error too ("Operation canceled"): either way QEMU
      // merged the bitmap back, which is all that matters here.
      state.outcome =
        info.error === undefined
          ? { status: 'completed', len: info['total-progress'] }
          : { status: 'failed', error: info.error, len: info['total-progress'] };
    }
    return state;
  });
  // A pull-mode run is copied by its own process: it runs while that process lives (its
  // fleecing job, if any, never ends by itself), and ended with it.
  if (run.mode === 'pull') {
    const ownerAlive = processAlive(run.pid, run.host, run.run);
    return { run, jobs, ownerAlive, state: ownerAlive ? 'running' : 'concluded' };
  }
  const state = jobs.some((j) => j.status === 'gone')
    ? 'gone'
    : jobs.every((j) => j.status === 'concluded')
      ? 'concluded'
      : 'running';
  return { run, jobs, ownerAlive: processAlive(run.pid, run.host, run.run), state };
}

/**
 * Cancel the still running jobs of an orphaned run and wait (polling `query-jobs`, at most
 * `timeout` ms, default 60 s) until every one has concluded.
 */
export async function cancelPendingJobs(qmp: BackupQmp, jobs: readonly PendingJobInfo[], options: CallOptions = {}): Promise<void> {
  for (const j of jobs) {
    if (j.status === 'concluded' || j.status === 'gone') continue;
    await execute(qmp, 'job-cancel', { id: j.id }, options).catch(() => undefined);
  }
  const deadline = Date.now() + (options.timeout ?? 60_000);
  const ids = new Set(jobs.map((j) => j.id));
  for (;;) {
    const listed = (await queryJobs(qmp, options)).filter((j) => ids.has(j.id));
    if (listed.every((j) => j.status === 'concluded')) return;
    if (Date.now() > deadline) return;
    options.signal?.throwIfAborted();
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Dismiss concluded jobs (ignoring ones already gone). */
export async function dismissJobs(qmp: BackupQmp, ids: readonly string[], options: CallOptions = {}): Promise<void> {
  for (const id of ids) await execute(qmp, 'job-dismiss', { id }, options).catch(() => undefined);
}

/**
 * Remove the target nodes a pending run opened (blockdev-backup), ignoring ones already gone:
 * its jobs have ended, and QEMU holds each target's image lock until its node is removed.
 */
export async function removeTargetNodes(qmp: BackupQmp, run: PendingRun, options: CallOptions = {}): Promise<void> {
  for (const d of run.drives ?? []) {
    if (d.targetNode !== undefined) await removeNode(qmp, d.targetNode, options).catch(() => undefined);
  }
}
