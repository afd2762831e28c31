import { randomUUID } from 'node:crypto';
import { access, rm } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import {
  ImageFileExistsError,
  Qcow2ImageWriter,
  UnsupportedQcow2LayoutError,
  createQcow2Image,
  mapImageData,
  qemuImg as defaultQemuImg,
} from '@qmpkit/image-tools';
import { BASE_ALLOCATION, NbdClient, qemuDirtyBitmapContext } from '@qmpkit/nbd';
import type { QemuImg, Qcow2WriterOptions } from '@qmpkit/image-tools';
import { asBlockdevBackup, chainBackupCommand, targetNodeName, targetNodeOptions } from './backup-command.js';
import { setBitmapRanges } from './bitmap-ranges.js';
import { checkGranularity, resolveNode } from './bitmaps.js';
import type { ResolvedNode } from './bitmaps.js';
import {
  checkDrive,
  inspectChain,
  inspectChainFiles,
  lastGranule,
  lastKnownSize,
  markExpected,
  smallestSize,
} from './chain-check.js';
import type { ChainStatus, DriveCheck } from './chain-check.js';
import { ChainRun } from './chain-run.js';
import type { ConcludedJob } from './chain-run.js';
import { digestFile } from './digest.js';
import {
  chooseFleecing,
  fleecingNames,
  makeScratch,
  pendingPullDrive,
  pullCapabilities,
  qomPathOf,
  removeLeftovers,
  setUpFleecing,
  watchFleecing,
} from './fleecing.js';
import type { FleecingChoice, FleecingDrive } from './fleecing.js';
import { CopyProgress, copySegments, planCopy } from './pull-copy.js';
import { DEFAULT_PULL_CLUSTER } from './pull.js';
import {
  BackupAbortedError,
  BackupJobError,
  BitmapRangeError,
  DriveBusyError,
  JobTrackingError,
  ManifestError,
  NewFullBackupRequiredError,
  PendingRunError,
  TargetExistsError,
} from './errors.js';
import type { ChainBrokenReason } from './errors.js';
import { DEFAULT_FILE_MODE, checkFileMode, makeDirectory, restrictFile } from './file-mode.js';
import type { BackupJob, BackupJobOptions, JobProgress, JobResult } from './job.js';
import {
  MANIFEST_FILE,
  MANIFEST_VERSION,
  lastBase,
  newChainId,
  readManifest,
  resolveBackupFile,
  appendRunLog,
  currentChain,
  writeManifest,
} from './manifest.js';
import type {
  BackupKind,
  BackupMode,
  Manifest,
  ManifestBackup,
  ManifestDrive,
  ManifestMark,
  PendingDrive,
  PendingPullDrive,
  PendingRun,
  RunLogEntry,
} from './manifest.js';
import { cancelPendingJobs, dismissJobs, inspectPendingRun, processAlive, removeTargetNodes } from './pending.js';
import type { PendingRunState } from './pending.js';
import type { BlockInfo, DriveBackup } from './qapi.js';
import { execute } from './qmp.js';
import type { BackupQmp, CallOptions } from './qmp.js';
import { Transaction } from './transaction.js';
import { completePrune, pruneChain } from './prune.js';
import type { PruneOptions, PruneResult } from './prune.js';
import { RunDeadline } from './run-deadline.js';
import { restoreChain, verifyChain } from './verify.js';
import type { RestoreOptions, VerifyOptions, VerifyReport } from './verify.js';

/** Prefix of a chain's bitmap name: the bitmap is `<prefix>-<first 8 hex digits of the chain id>`. */
export const DEFAULT_BITMAP_PREFIX = 'qmpkit';
/**
 * The bitmap every chain of @qmpkit/backup 0.1 used. Chains no longer share it: a manifest
 * naming it (version 1) is refused with reason 'legacy-bitmap'. Kept for code that looks it up.
 * @deprecated chains name their bitmap after their id; see `ManifestDrive.bitmap`.
 */
export const DEFAULT_BITMAP = 'qmpkit-backup';

export interface ChainDriveOptions {
  /** Device (drive id) or node-name to back up; the bitmap is created on it. */
  node: string;
  /**
   * Prefix of the chain's bitmap name (default 'qmpkit'): a new chain's bitmap is
   * `<prefix>-<first 8 hex digits of its id>`, so chains never share one. (In 0.1 this was
   * the whole name.)
   */
  bitmap?: string;
  /** Bitmap granularity in bytes (power of two, 512 B .. 2 GiB). Default: QEMU's choice. */
  granularity?: number;
  /** Store the bitmap in the qcow2 image so it survives a clean QEMU restart. Default: true on qcow2 nodes. */
  persistent?: boolean;
}

export interface BackupChainGroupOptions {
  qmp: BackupQmp;
  /** Directory of the targets and (by default) the manifest. */
  dir: string;
  drives: readonly ChainDriveOptions[];
  /** Manifest path. Default `<dir>/manifest.json`. */
  manifest?: string;
  /** qemu-img wrapper to use (e.g. another binary). */
  qemuImg?: QemuImg;
  /**
   * Mode of the backup images and the manifest, whatever the umask (default 0o600: owner
   * only). Directories the chain creates get it plus search where it allows reading (0o700).
   * Pass e.g. 0o640 to let a group read the backups.
   */
  fileMode?: number;
}

export interface ChainBackupOptions extends CallOptions {
  /** Replace a target file that already exists (otherwise `TargetExistsError`). */
  overwrite?: boolean;
  /** Rate limit of each job, bytes per second. */
  speed?: number;
  /**
   * Write compressed qcow2 clusters (the job's `compress` option): smaller backups for more
   * CPU time. Each backup records whether it is compressed; a chain may mix both.
   */
  compress?: boolean;
  onProgress?: (progress: JobProgress & { node: string }) => void;
  progressInterval?: number;
  /** Called with each job as soon as it has started (e.g. to pause or watch it). */
  onJob?: (job: BackupJob, node: string) => void;
  /**
   * An earlier run left a job running in QEMU and its process is gone: cancel it (QEMU
   * merges its bitmap back) and continue. Without this, `PendingRunError`.
   */
  cancelOrphanJob?: boolean;
  /**
   * 'push' (default): a QEMU backup job writes each target. 'pull': QEMU exports a
   * point-in-time view of each drive over NBD (fleecing) with the chain's bitmap frozen at
   * the same point, and this process reads the dirty extents (everything allocated for a
   * full) and writes the same target files. Recorded per backup (`mode: 'pull'`). `speed`,
   * `compress` and `onJob` are push-only.
   */
  mode?: BackupMode;
  /** Pull mode: how the point-in-time view is made (default 'auto'; see `FleecingMethod`). */
  fleecing?: FleecingChoice;
}

export interface ChainIncrementalOptions extends ChainBackupOptions {
  /** When the chain cannot be continued, take a new full backup instead of throwing. */
  fullIfBroken?: boolean;
  /** Accept a drive that grew since the last backup (default true); a shrink outside `resize()` is always refused. */
  allowGrowth?: boolean;
}

/** What one chain operation produced: one backup per drive, all from one transaction. */
export interface ChainRunResult {
  kind: BackupKind;
  run: string;
  chainId: string;
  backups: ManifestBackup[];
  results: JobResult[];
  /** Wall-clock time of the whole operation (ms). */
  elapsedMs: number;
  /** Pull mode: how each drive's view was made, in drive order. */
  fleecing?: Array<{ node: string; method: FleecingChoice }>;
  /**
   * Pull mode: steps of the teardown that failed after every target was complete (the run was
   * recorded); what they name may be left in QEMU. Empty or absent normally.
   */
  leftovers?: string[];
}

export interface ChainResizeOptions extends CallOptions {
  /** Which drive (default: the chain's only one). */
  node?: string;
}

export interface ChainResizeResult {
  node: string;
  from: number;
  to: number;
  /** The smallest size the drive had since its last backup: the next backup copies everything past it. */
  smallest: number;
  /** False when the chain has no backup yet (nothing to record). */
  recorded: boolean;
}

export type { DriveCheck } from './chain-check.js';

/** The plan of one drive's part in a run. */
interface DrivePlan {
  options: ChainDriveOptions;
  node: string;
  target: string;
  parent: string | null;
  size: number;
  sync: 'full' | 'incremental' | 'bitmap';
  /** The job resets the chain's bitmap on success (a full or an incremental): the base moves. */
  resets: boolean;
  bitmap: string;
  granularity: number;
  persistent: boolean;
  /**
   * The chain's mark after the run. 'fresh': a new mark (a new chain, or a full copy) with a
   * bit at the drive's end; 'carry': a new mark merged from the last one (an incremental),
   * with a bit at the new end if the drive grew; 'keep': the mark stays (a differential).
   */
  markAction: 'fresh' | 'carry' | 'keep';
  mark: ManifestMark | null;
  /** The mark this run replaces (removed once the run is recorded). */
  oldMark: string | undefined;
  /** Bitmaps this run adds (removed if it is undone). */
  added: string[];
  cover?: { from: number; to: number };
  image?: string;
  /** The node the target is opened as for blockdev-backup (none: the job is a drive-backup). */
  targetNode?: string;
  compress?: boolean;
  /** Pull mode: the drive's fleecing (named in the pending record). */
  fleece?: FleecingDrive;
  pull?: PendingPullDrive;
}

function sanitize(name: string): string {
  return name.replace(/[^A-Za-z0-9_.-]/g, '_');
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

function callOptions(options: CallOptions): CallOptions {
  const out: CallOptions = {};
  if (options.timeout !== undefined) out.timeout = options.timeout;
  if (options.signal) out.signal = options.signal;
  return out;
}

/** A job of a run that completed, as the manifest records it. */
interface RecordedJob {
  drive: PendingDrive;
  /** The job's len. */
  jobLength: number;
  durationMs: number;
  /** durationMs is an upper bound (a run recorded by a later one). */
  estimated?: boolean;
}

/** Guest bytes of data stored in the image itself (not in its backing files): what a backup job wrote. */
async function allocatedBytes(file: string, call: CallOptions): Promise<number> {
  const map = await mapImageData(file, { format: 'qcow2', ...call });
  return map.extents.filter((e) => e.depth === 0).reduce((sum, e) => sum + e.length, 0);
}

/** A new chain's entry for a drive, from its part of the run. */
function manifestDrive(d: PendingDrive): ManifestDrive {
  const drive: ManifestDrive = {
    node: d.node,
    // A full's first added bitmap is the new chain's own.
    bitmap: d.bitmaps[0] ?? '',
    granularity: d.granularity,
    persistent: d.persistent,
    driveSize: d.driveSize,
    targetFormat: 'qcow2',
    backups: [],
    mark: d.mark,
    resizes: [],
  };
  if (d.image !== undefined) drive.image = d.image;
  return drive;
}

/**
 * The sequence number of a drive's next backup file: one past the highest in its file names
 * (a prune removes older backups from the list, never numbers from use).
 */
function nextSequence(drive: ManifestDrive): number {
  let next = drive.backups.length;
  for (const b of drive.backups) {
    const seq = /\.(\d+)\.(?:full|inc|diff)\.qcow2$/.exec(b.file)?.[1];
    if (seq !== undefined) next = Math.max(next, Number(seq) + 1);
  }
  return next;
}

/** Options that only one mode understands are refused with the other, before anything happens. */
function checkModeOptions(options: ChainBackupOptions): void {
  const mode = options.mode ?? 'push';
  if (mode !== 'push' && mode !== 'pull') throw new RangeError(`mode must be 'push' or 'pull', got ${String(mode)}`);
  const fleecing = options.fleecing;
  if (fleecing !== undefined && fleecing !== 'auto' && fleecing !== 'snapshot-access' && fleecing !== 'backup-sync-none') {
    throw new RangeError(`fleecing must be 'auto', 'snapshot-access' or 'backup-sync-none', got ${String(fleecing)}`);
  }
  if (mode === 'push') {
    if (fleecing !== undefined) throw new RangeError("fleecing applies to mode 'pull' only");
    return;
  }
  for (const option of ['compress', 'speed', 'onJob'] as const) {
    if (options[option] !== undefined && options[option] !== false) {
      throw new RangeError(`${option} applies to mode 'push' only (a pull-mode backup has no backup job)`);
    }
  }
}

function chainBitmapName(prefix: string, chainId: string): string {
  return `${prefix}-${chainId.slice(0, 8)}`;
}

function markName(bitmap: string, run: string): string {
  return `${bitmap}-${run.slice(0, 8)}`;
}

/**
 * Incremental backups of several drives that stay in step: every operation is one transaction
 * over all drives (with completion-mode 'grouped': if one job fails, all are cancelled, and no
 * bitmap or manifest changes), recorded in one manifest.
 */
export class BackupChainGroup {
  readonly dir: string;
  readonly manifestPath: string;
  readonly fileMode: number;
  #qmp: BackupQmp;
  #drives: ChainDriveOptions[];
  #manifest: Manifest | undefined;
  #qemuImg: QemuImg;

  protected constructor(options: BackupChainGroupOptions, manifestPath: string, manifest: Manifest | undefined) {
    this.#qmp = options.qmp;
    // QEMU opens the targets under these paths, from its own working directory.
    this.dir = resolve(options.dir);
    this.manifestPath = manifestPath;
    this.#manifest = manifest;
    this.#qemuImg = options.qemuImg ?? defaultQemuImg;
    this.fileMode = checkFileMode(options.fileMode ?? DEFAULT_FILE_MODE);
    this.#drives = options.drives.map((d) => {
      if (d.granularity !== undefined) checkGranularity(d.granularity);
      const result: ChainDriveOptions = { node: d.node };
      if (d.bitmap !== undefined) result.bitmap = d.bitmap;
      if (d.granularity !== undefined) result.granularity = d.granularity;
      if (d.persistent !== undefined) result.persistent = d.persistent;
      return result;
    });
  }

  /** Open the chain in `dir` (reading its manifest if there is one). */
  static async open(options: BackupChainGroupOptions): Promise<BackupChainGroup> {
    const { path, manifest } = await BackupChainGroup.load(options);
    return new BackupChainGroup(options, path, manifest);
  }

  protected static async load(options: BackupChainGroupOptions): Promise<{ path: string; manifest: Manifest | undefined }> {
    if (options.drives.length === 0) throw new ManifestError(options.manifest ?? options.dir, 'a chain needs at least one drive');
    const nodes = new Set(options.drives.map((d) => d.node));
    if (nodes.size !== options.drives.length) throw new ManifestError(options.manifest ?? options.dir, 'a drive is listed twice');
    const path = resolve(options.manifest ?? join(options.dir, MANIFEST_FILE));
    const manifest = await readManifest(path);
    if (manifest && manifest.drives.some((d) => d.backups.length > 0)) {
      const recorded = manifest.drives.map((d) => d.node).sort();
      const asked = [...nodes].sort();
      if (recorded.join('\0') !== asked.join('\0')) {
        throw new ManifestError(path, `records drives ${recorded.join(', ')}, not ${asked.join(', ')}`);
      }
    }
    return { path, manifest };
  }

  /** The manifest as last written (undefined before the first full backup). */
  get manifest(): Manifest | undefined {
    return this.#manifest;
  }

  get qmp(): BackupQmp {
    return this.#qmp;
  }

  /** Use another connection (e.g. after QEMU was restarted). */
  set qmp(qmp: BackupQmp) {
    this.#qmp = qmp;
  }

  get nodes(): string[] {
    return this.#drives.map((d) => d.node);
  }

  /** The chain's files as the directory shows them (no QEMU needed). */
  inspect(): Promise<ChainStatus> {
    return inspectChain(this.manifestPath);
  }

  /**
   * Check whether an incremental can continue the chain, per drive: an earlier run still in
   * QEMU, every file present with its recorded size, the chain's own bitmap, the mark of its
   * last backup, and the size history. Read-only.
   */
  async check(options: CallOptions & { allowGrowth?: boolean } = {}): Promise<DriveCheck[]> {
    const call = callOptions(options);
    const manifest = await this.#reload();
    if (!manifest || manifest.drives.every((d) => d.backups.length === 0)) {
      const pending = manifest?.pending ? await inspectPendingRun(this.#qmp, manifest.pending, this.nodes, call) : undefined;
      return this.#drives.map((d) =>
        pending && pending.state !== 'gone'
          ? { node: d.node, ok: false, reason: 'run-pending', detail: `the full backup run ${pending.run.run} still has a job in QEMU` }
          : { node: d.node, ok: false, reason: 'no-full-backup', detail: 'the chain has no full backup yet' },
      );
    }
    const [files, pending, resolved] = await Promise.all([
      inspectChainFiles(this.manifestPath, manifest),
      manifest.pending ? inspectPendingRun(this.#qmp, manifest.pending, this.nodes, call) : Promise.resolve(undefined),
      Promise.all(this.#drives.map((d) => resolveNode(this.#qmp, d.node, call))),
    ]);
    return this.#drives.map((d, i) => {
      const drive = manifest.drives.find((m) => m.node === d.node);
      if (!drive) return { node: d.node, ok: false, reason: 'no-full-backup', detail: 'the chain has no backup of this drive' };
      return checkDrive({
        manifest,
        drive,
        files,
        pending,
        resolved: resolved[i] as ResolvedNode,
        allowGrowth: options.allowGrowth,
      });
    });
  }

  /** The chain's files and, with QEMU, whether every drive can continue. */
  async status(options: CallOptions = {}): Promise<ChainStatus & { drives: DriveCheck[] }> {
    const [inspected, drives] = await Promise.all([this.inspect(), this.check(options)]);
    return { ...inspected, drives };
  }

  /**
   * Resolve a run an earlier process left pending: record it if its jobs completed, undo it
   * if they failed or were cancelled, cancel them first when `cancelOrphanJob` is set and
   * their process is gone. Throws `PendingRunError` while a job still runs. Does nothing when
   * no run is pending, and leaves a run whose jobs QEMU no longer knows pending ('interrupted').
   */
  async recover(options: CallOptions & { cancelOrphanJob?: boolean } = {}): Promise<'none' | 'recorded' | 'undone' | 'unknown'> {
    const call = callOptions(options);
    let manifest = await this.#reload();
    // A prune that was interrupted is finished first (it is never undone).
    if (manifest?.prune) {
      manifest = await completePrune(this.manifestPath, manifest, { fileMode: this.fileMode });
      this.#manifest = manifest;
    }
    const run = manifest?.pending;
    if (!manifest || !run) return 'none';
    if (run.mode === 'pull') return this.#recoverPull(manifest, run, call);
    let state = await inspectPendingRun(this.#qmp, run, this.nodes, call);
    if (state.state === 'running') {
      if (!options.cancelOrphanJob || state.ownerAlive) {
        throw new PendingRunError(
          run.run,
          state.jobs.map(({ id, node, status }) => ({ id, node, status })),
          { pid: run.pid, host: run.host, alive: state.ownerAlive },
        );
      }
      await cancelPendingJobs(this.#qmp, state.jobs, call);
      state = await inspectPendingRun(this.#qmp, run, this.nodes, call);
      if (state.state === 'running') {
        throw new PendingRunError(
          run.run,
          state.jobs.map(({ id, node, status }) => ({ id, node, status })),
          { pid: run.pid, host: run.host, alive: false },
        );
      }
    }
    if (state.state === 'gone') {
      // No job uses the run's target nodes any more (QEMU may still have them open).
      await removeTargetNodes(this.#qmp, run, call);
      // A full of a new chain never touched the chain in the manifest: its leftovers can go.
      if (run.kind === 'full' && run.drives) {
        await this.#undoPending(manifest, state, 'the run\'s jobs are gone from QEMU');
        return 'undone';
      }
      return 'unknown';
    }
    if (state.jobs.every((j) => j.outcome?.status === 'completed')) {
      await this.#adopt(manifest, state, call);
      return 'recorded';
    }
    await this.#undoPending(manifest, state, state.jobs.find((j) => j.outcome?.error)?.outcome?.error ?? 'failed');
    return 'undone';
  }

  /** Record a pending run whose jobs all completed while nobody watched (QEMU's time for them is unknown). */
  async #adopt(manifest: Manifest, state: PendingRunState, call: CallOptions): Promise<void> {
    const run = state.run;
    // Its events went unseen: its time is bounded by the run's start and now.
    const upperBound = Math.max(0, Date.now() - Date.parse(run.started));
    const done: RecordedJob[] = (run.drives ?? []).map((drive) => ({
      drive,
      jobLength: state.jobs.find((j) => j.id === drive.jobId)?.outcome?.len ?? 0,
      durationMs: Number.isFinite(upperBound) ? upperBound : 0,
      estimated: true,
    }));
    await removeTargetNodes(this.#qmp, run, call);
    await this.#record({ id: run.run, kind: run.kind, chainId: run.chainId ?? manifest.chainId }, manifest, done, call);
    await dismissJobs(this.#qmp, state.jobs.map((j) => j.id));
  }

  /**
   * Record a run whose jobs all completed: hash every target, add the backups to the manifest
   * (a new one for a full), write it, log the run, then drop the marks and (for a full) the
   * chain it replaced. Shared by a run that saw its jobs end and one adopted later.
   */
  async #record(
    run: { id: string; kind: BackupKind; chainId: string },
    before: Manifest | undefined,
    done: RecordedJob[],
    call: CallOptions = {},
  ): Promise<{ next: Manifest; backups: ManifestBackup[] }> {
    const files = done.map(({ drive }) => resolveBackupFile(this.manifestPath, drive.target));
    const [digests, allocated] = await Promise.all([
      Promise.all(files.map((f) => digestFile(f, call))),
      Promise.all(files.map((f) => allocatedBytes(f, call))),
    ]);
    const time = new Date().toISOString();
    let next: Manifest;
    if (run.kind === 'full') {
      next = this.#newManifest(run.chainId, time, done.map(({ drive }) => manifestDrive(drive)));
      // The chain this full replaces stays reachable (status, verify, restore --chain) until pruned.
      const history = before ? [...(before.drives.some((d) => d.backups.length > 0) ? [currentChain(before)] : []), ...(before.history ?? [])] : [];
      if (history.length > 0) next.history = history;
    } else {
      next = structuredClone(before as Manifest);
    }
    delete next.pending;
    const backups = done.map(({ drive: d, jobLength, durationMs, estimated }, i) => {
      const drive = next.drives.find((m) => m.node === d.node) as ManifestDrive;
      const digest = digests[i] as { digest: string; size: number };
      const backup: ManifestBackup = {
        kind: d.sync === 'full' && d.resets ? 'full' : run.kind,
        file: d.target,
        parent: d.parent,
        time,
        bytes: allocated[i] as number,
        jobLength,
        driveSize: d.driveSize,
        result: 'completed',
        jobId: d.jobId,
        durationMs,
        run: run.id,
        fileSize: digest.size,
        digest: digest.digest,
      };
      if (estimated === true) backup.durationEstimated = true;
      if (d.compress === true) backup.compressed = true;
      if (d.coveredFrom !== undefined) backup.coveredFrom = d.coveredFrom;
      if (d.pull !== undefined) backup.mode = 'pull';
      drive.backups.push(backup);
      drive.driveSize = d.driveSize;
      drive.granularity = d.granularity;
      drive.mark = d.mark;
      drive.resizes = [];
      return backup;
    });
    next.updated = time;
    await this.#write(next);
    const logged: RunLogEntry = { run: run.id, kind: run.kind, time, outcome: 'completed', files: backups.map((b) => b.file) };
    if (done.some(({ drive }) => drive.pull !== undefined)) logged.mode = 'pull';
    await this.#log(logged);
    for (const { drive } of done) {
      if (drive.oldMark) await execute(this.#qmp, 'block-dirty-bitmap-remove', { node: drive.node, name: drive.oldMark }).catch(() => undefined);
    }
    if (run.kind === 'full') await this.#removeSuperseded(before, next);
    return { next, backups };
  }

  /** Undo a pending run whose jobs failed, were cancelled, or (for a full) are gone: as `ChainRun.rollback()` would have. */
  async #undoPending(manifest: Manifest, state: PendingRunState, error: string): Promise<void> {
    const run = state.run;
    await dismissJobs(this.#qmp, state.jobs.filter((j) => j.status === 'concluded').map((j) => j.id));
    await removeTargetNodes(this.#qmp, run);
    await this.#forgetPending(manifest, run, error);
  }

  /**
   * A pending pull-mode run. Its process copies the data, so no one else can finish it: while
   * that process is alive, `PendingRunError`; once it is gone, take down what it left in QEMU
   * (exports, the NBD server, filter and fleecing nodes, fleecing jobs) and on disk, merge each
   * frozen bitmap back into the chain's bitmap, then undo the rest as `ChainRun.rollback()`
   * would have. A frozen bitmap that cannot be merged back leaves the run pending ('unknown'):
   * the chain's bitmap may miss writes, and the chain is refused until a new full.
   */
  async #recoverPull(manifest: Manifest, run: PendingRun, call: CallOptions): Promise<'undone' | 'unknown'> {
    const drives = run.drives ?? [];
    if (processAlive(run.pid, run.host, run.run)) {
      throw new PendingRunError(run.run, drives.map((d) => ({ id: d.jobId, node: d.node, status: 'pull-mode copy' })), {
        pid: run.pid,
        host: run.host,
        alive: true,
      });
    }
    const pulled = drives.filter((d) => d.pull !== undefined).map((d) => ({ node: d.node, jobId: d.jobId, pull: d.pull as PendingPullDrive }));
    const failures = run.pull ? await removeLeftovers(this.#qmp, { pull: run.pull, drives: pulled }, call) : [];
    let whole = true;
    for (const d of pulled) {
      const frozen = d.pull.frozenBitmap;
      if (frozen === undefined) continue;
      const chainBitmap = manifest.drives.find((m) => m.node === d.node)?.bitmap;
      // By the drive's name first: after a QEMU restart its node may have another node-name.
      const info =
        (await resolveNode(this.#qmp, d.node, call).catch(() => undefined)) ??
        (await resolveNode(this.#qmp, d.pull.nodeName, call).catch(() => undefined));
      const found = info?.info['dirty-bitmaps']?.find((b) => b.name === frozen);
      // Not there: the point was never taken (the chain's bitmap was not cleared), or QEMU
      // restarted and lost both (then the check finds the chain's bitmap missing too).
      if (!found) continue;
      const node = info?.nodeName ?? d.pull.nodeName;
      try {
        // An inconsistent copy (QEMU stopped without storing it) cannot be merged; the chain's
        // bitmap is then inconsistent too, which the check reports.
        const actions: object[] = [];
        if (found.inconsistent !== true && chainBitmap !== undefined) {
          actions.push({ type: 'block-dirty-bitmap-merge', data: { node, target: chainBitmap, bitmaps: [frozen] } });
        }
        actions.push({ type: 'block-dirty-bitmap-remove', data: { node, name: frozen } });
        await execute(this.#qmp, 'transaction', { actions }, call);
      } catch (error) {
        whole = false;
        failures.push(`merge bitmap ${frozen} back into ${chainBitmap ?? '?'}: ${(error as Error).message}`);
      }
    }
    if (!whole) {
      await this.#log({ run: run.run, kind: run.kind, mode: 'pull', time: new Date().toISOString(), outcome: 'failed', error: failures.join('; ') });
      return 'unknown';
    }
    await this.#forgetPending(manifest, run, `its process ${String(run.pid)} is gone${failures.length > 0 ? ` (${failures.join('; ')})` : ''}`);
    return 'undone';
  }

  /** The end of undoing a pending run: its new bitmaps and targets removed, the manifest without it, the run logged. */
  async #forgetPending(manifest: Manifest, run: PendingRun, error: string): Promise<void> {
    for (const d of run.drives ?? []) {
      for (const name of [...d.bitmaps].reverse()) {
        await execute(this.#qmp, 'block-dirty-bitmap-remove', { node: d.node, name }).catch(() => undefined);
      }
    }
    await Promise.all(run.targets.map((t) => rm(resolveBackupFile(this.manifestPath, t), { force: true })));
    const restored: Manifest = { ...manifest };
    delete restored.pending;
    if (restored.drives.every((d) => d.backups.length === 0)) {
      await rm(this.manifestPath, { force: true });
      this.#manifest = undefined;
    } else {
      await this.#write(restored);
    }
    const entry: RunLogEntry = { run: run.run, kind: run.kind, time: new Date().toISOString(), outcome: 'failed', error };
    if (run.mode === 'pull') entry.mode = 'pull';
    await this.#log(entry);
  }

  async #log(entry: RunLogEntry): Promise<void> {
    await appendRunLog(this.manifestPath, entry, { mode: this.fileMode }).catch(() => undefined);
  }

  /** Start a new chain: a full backup of every drive and a new bitmap of the chain's own, in one transaction. */
  async full(options: ChainBackupOptions = {}): Promise<ChainRunResult> {
    checkModeOptions(options);
    const started = performance.now();
    const call = callOptions(options);
    await this.recover(options);
    const previous = this.#manifest;
    const resolved = await Promise.all(this.#drives.map((d) => resolveNode(this.#qmp, d.node, call)));
    const taken = new Set(resolved.flatMap((r) => (r.info['dirty-bitmaps'] ?? []).map((b) => b.name ?? '')));
    let chainId = newChainId();
    // Two chains on one drive must never share a bitmap: a new id if the name is in use.
    while (this.#drives.some((d) => taken.has(chainBitmapName(d.bitmap ?? DEFAULT_BITMAP_PREFIX, chainId)))) {
      chainId = newChainId();
    }
    const run = new ChainRun(this.#context(), randomUUID(), 'full', options.mode ?? 'push');
    const plans: DrivePlan[] = this.#drives.map((d, i) => {
      const r = resolved[i] as ResolvedNode;
      const size = r.info.image?.['virtual-size'];
      if (size === undefined) throw new ManifestError(this.manifestPath, `drive ${d.node} reports no size`);
      const bitmap = chainBitmapName(d.bitmap ?? DEFAULT_BITMAP_PREFIX, chainId);
      const plan: DrivePlan = {
        options: d,
        node: d.node,
        target: join(this.dir, `${sanitize(d.node)}.${chainId.slice(0, 8)}.000.full.qcow2`),
        parent: null,
        size,
        sync: 'full',
        resets: true,
        bitmap,
        granularity: d.granularity ?? 0,
        persistent: d.persistent ?? r.info.drv === 'qcow2',
        markAction: 'fresh',
        mark: { bitmap: markName(bitmap, run.id), bits: [] },
        oldMark: undefined,
        added: [bitmap, markName(bitmap, run.id)],
      };
      if (r.info.file) plan.image = r.info.file;
      return plan;
    });
    const fresh = this.#newManifest(
      chainId,
      new Date().toISOString(),
      plans.map((p) => manifestDrive(this.#pendingDrive(p, run))),
    );
    return this.#execute(run, plans, previous, previous ?? fresh, options, started, chainId);
  }

  /** An incremental backup of every drive: what changed since the last full or incremental. */
  incremental(options: ChainIncrementalOptions = {}): Promise<ChainRunResult> {
    return this.#layered('incremental', options);
  }

  /**
   * A differential backup (sync 'bitmap', bitmap-mode 'never'): what changed since the last
   * full or incremental, without resetting the bitmap, so the next incremental still covers it.
   */
  differential(options: ChainIncrementalOptions = {}): Promise<ChainRunResult> {
    return this.#layered('differential', options);
  }

  async #layered(kind: 'incremental' | 'differential', options: ChainIncrementalOptions): Promise<ChainRunResult> {
    checkModeOptions(options);
    const started = performance.now();
    await this.recover(options);
    const checkOptions: CallOptions & { allowGrowth?: boolean } = callOptions(options);
    if (options.allowGrowth !== undefined) checkOptions.allowGrowth = options.allowGrowth;
    const checks = await this.check(checkOptions);
    const manifest = this.#manifest;
    const broken = checks.find((c) => !c.ok);
    if (broken || !manifest) {
      if (options.fullIfBroken && broken?.reason !== 'run-pending') return this.full(options);
      const b = broken ?? { node: this.#drives[0]?.node ?? '', reason: 'no-full-backup' as const, detail: 'no manifest' };
      const bitmap = manifest?.drives.find((m) => m.node === b.node)?.bitmap ?? '(none yet)';
      throw new NewFullBackupRequiredError(
        b.node,
        bitmap,
        (b.reason === 'run-pending' ? 'interrupted' : b.reason ?? 'no-full-backup') as ChainBrokenReason,
        b.detail ?? 'the chain cannot be continued',
      );
    }
    const run = new ChainRun(this.#context(), randomUUID(), kind, options.mode ?? 'push');
    const plans: DrivePlan[] = [];
    for (const [i, d] of this.#drives.entries()) {
      const drive = manifest.drives.find((m) => m.node === d.node) as ManifestDrive;
      const check = checks[i] as DriveCheck;
      const base = lastBase(drive) as ManifestBackup;
      const size = check.driveSize ?? drive.driveSize;
      const seq = String(nextSequence(drive)).padStart(3, '0');
      const suffix = kind === 'incremental' ? 'inc' : 'diff';
      const resets = kind === 'incremental';
      const plan: DrivePlan = {
        options: d,
        node: d.node,
        target: join(this.dir, `${sanitize(d.node)}.${manifest.chainId.slice(0, 8)}.${seq}.${suffix}.qcow2`),
        parent: base.file,
        size,
        sync: resets ? 'incremental' : 'bitmap',
        resets,
        bitmap: drive.bitmap,
        granularity: drive.granularity,
        persistent: drive.persistent,
        markAction: resets && drive.mark ? 'carry' : 'keep',
        mark: drive.mark ?? null,
        oldMark: undefined,
        added: [],
      };
      if (check.coverFrom !== undefined && check.coverTo !== undefined) plan.cover = { from: check.coverFrom, to: check.coverTo };
      if (plan.markAction === 'carry' && drive.mark) {
        plan.mark = { bitmap: markName(drive.bitmap, run.id), bits: [...drive.mark.bits] };
        plan.oldMark = drive.mark.bitmap;
        plan.added.push(plan.mark.bitmap);
      }
      plans.push(plan);
    }
    return this.#execute(run, plans, manifest, manifest, options, started, manifest.chainId);
  }

  /**
   * Everything a run does, in order, through one `ChainRun` whose `rollback()` undoes it:
   * mark the run pending, create the targets, add the bitmaps, start the jobs in one
   * transaction, wait for them (cancelling on abort or timeout), then record or undo.
   */
  async #execute(
    run: ChainRun,
    plans: DrivePlan[],
    before: Manifest | undefined,
    pendingBase: Manifest,
    options: ChainBackupOptions,
    started: number,
    chainId: string,
  ): Promise<ChainRunResult> {
    try {
      if (run.mode === 'pull') return await this.#runPull(run, plans, before, pendingBase, options, started, chainId);
      return await this.#run(run, plans, before, pendingBase, options, started, chainId);
    } finally {
      run.ended();
    }
  }

  async #run(
    run: ChainRun,
    plans: DrivePlan[],
    before: Manifest | undefined,
    pendingBase: Manifest,
    options: ChainBackupOptions,
    started: number,
    chainId: string,
  ): Promise<ChainRunResult> {
    const call = callOptions(options);
    let startError: unknown;
    try {
      // Copy what a chain.resize() cut and grew back before anything else: the bits go into
      // the chain's bitmap, where they stay if this run is undone (the next one copies them).
      for (const p of plans) await this.#cover(p, call);
      await this.#makeDirectory(run);
      // blockdev-backup where QEMU has it (backup-command.ts): each target is opened as a node.
      if (chainBackupCommand(this.#qmp) === 'blockdev-backup') plans.forEach((p, i) => (p.targetNode = targetNodeName(run.id, i)));
      if (options.compress === true) plans.forEach((p) => (p.compress = true));
      await run.markPending(before, pendingBase, chainId, plans.map((p) => this.#pendingDrive(p, run)));
      for (const p of plans) {
        await this.#createTarget(p, options);
        run.created(p.target);
        if (p.targetNode !== undefined) await run.addNode(targetNodeOptions({ nodeName: p.targetNode, file: p.target }), call);
      }
      for (const p of plans) await this.#prepareBitmaps(run, p, call);
      // The granularity QEMU chose and the mark's bits are known now: what a later run needs
      // to record this one if this process dies.
      await run.updatePending(plans.map((p) => this.#pendingDrive(p, run)));
      const tx = new Transaction();
      if (plans.length > 1) tx.completionMode('grouped');
      for (const p of plans) {
        const args = this.#backupArgs(p, run.id, options);
        if (p.targetNode === undefined) tx.driveBackup(args, this.#jobOptions(p.node, options));
        else tx.blockdevBackup(asBlockdevBackup(args, p.targetNode).args, this.#jobOptions(p.node, options));
      }
      const jobs = await run.start(tx, plans.map((p) => p.node), call);
      jobs.forEach((job) => options.onJob?.(job, job.device));
      // A resize is refused while the jobs run; one made between the checks and the start
      // shows on the marks now. (Not under the run's signal: an abort now cancels the jobs.)
      await this.#checkMarksAfterStart(run, plans, options.timeout === undefined ? {} : { timeout: options.timeout });
    } catch (error) {
      const aborted = options.signal?.aborted === true;
      // Nothing started: undo what was prepared. Jobs that started are followed to their end first.
      if (run.jobs.length === 0) {
        await run.rollback(aborted ? { outcome: 'aborted' } : undefined);
        throw aborted ? new BackupAbortedError(run.id, 'abort', { cause: options.signal?.reason }) : error;
      }
      if (aborted) run.stop('abort');
      else {
        startError = error;
        run.stop('error');
      }
    }
    let concluded: ConcludedJob[];
    try {
      concluded = await run.waitConcluded({ signal: options.signal, timeout: options.timeout });
    } catch (error) {
      // The outcome is unknown: the run stays pending; what may still run is cancelled.
      await run.abandon();
      await run.removeNodes().catch(() => undefined);
      await Promise.all(plans.map((p) => rm(p.target, { force: true })));
      if (startError === undefined) throw error;
      throw new JobTrackingError(run.jobs.map((j) => j.id).join(', '), `lost track of the job (${(startError as Error).message}); the run stays pending`, {
        cause: startError,
      });
    }
    if (startError !== undefined) {
      // A job that completed before its cancel took effect reset its bitmap for a backup that
      // cannot be trusted: the chain's bitmap goes too, so the chain asks for a new full.
      for (const [i, c] of concluded.entries()) {
        const p = plans[i] as DrivePlan;
        if (c.status === 'completed' && p.resets && run.kind !== 'full') {
          run.undoWith(`remove bitmap ${p.bitmap} of ${p.node}`, async () => {
            await execute(this.#qmp, 'block-dirty-bitmap-remove', { node: p.node, name: p.bitmap });
          });
        }
      }
      await run.rollback({ outcome: 'failed', error: (startError as Error).message });
      throw startError;
    }
    // The job that failed explains the run better than the ones cancelled because of it.
    const failed = concluded.find((c) => c.status === 'failed') ?? concluded.find((c) => c.status !== 'completed');
    if (failed) {
      const outcome = run.stopped ? 'aborted' : failed.status === 'cancelled' ? 'cancelled' : 'failed';
      await run.rollback({ outcome, ...(failed.error ? { error: failed.error } : {}) });
      if (run.stopped === 'abort' || run.stopped === 'timeout') {
        throw new BackupAbortedError(run.id, run.stopped, { cause: options.signal?.reason });
      }
      const results = await Promise.all(run.jobs.map((j) => j.result));
      throw this.#failure(results.find((r) => r.id === failed.job.id) ?? (results[0] as JobResult), results);
    }
    try {
      // Every job completed; QEMU holds the targets' image lock until their nodes are gone, so
      // they go before the targets are hashed (and later verified, restored).
      await run.removeNodes();
    } catch (error) {
      // The backups are good but still open in QEMU: the run stays pending (its jobs wait in
      // 'concluded'), and the next run records it.
      throw new JobTrackingError(
        run.jobs.map((j) => j.id).join(', '),
        `the jobs completed but QEMU did not close their targets (${(error as Error).message}); the run stays pending`,
        { cause: error },
      );
    }
    return this.#commit(run, plans, concluded, before, started, chainId);
  }

  /**
   * A pull-mode run, through the same `ChainRun` (pending record, undo log, run log) as a
   * push run: mark the run pending (with the names of everything it will set up), create the
   * targets (writers that refuse an existing file), add the chain's bitmaps, take the fleecing
   * point of every drive (one transaction with the frozen bitmaps), export the views, copy the
   * extents into the targets, tear the fleecing down, record. Any failure, an abort or the
   * timeout rolls the run back: writers aborted, export and nodes removed, the frozen copy
   * merged back into the chain's bitmap, the manifest as before.
   */
  async #runPull(
    run: ChainRun,
    plans: DrivePlan[],
    before: Manifest | undefined,
    pendingBase: Manifest,
    options: ChainBackupOptions,
    started: number,
    chainId: string,
  ): Promise<ChainRunResult> {
    // Aborted by the caller's signal, the timeout, or the first drive whose copy fails.
    const stop = new RunDeadline(options);
    const signal = stop.signal;
    const call: CallOptions = { signal };
    const overwrite = options.overwrite === true;
    const writers: Qcow2ImageWriter[] = [];
    const copies: Array<{ len: number; durationMs: number; elapsedMs: number; total: number }> = [];
    const progress = plans.map((p) => new CopyProgress(options.onProgress, this.#jobId(p.node, run.id), p.node, options.progressInterval));
    let recorded = false;
    // Until the point is taken nothing has started: a failure then is undone without a run log entry, as in push mode.
    let pointTaken = false;
    try {
      for (const p of plans) await this.#cover(p, call);
      await this.#makeDirectory(run);
      const caps = await pullCapabilities(this.#qmp, call);
      const blocks = await execute<BlockInfo[]>(this.#qmp, 'query-block', undefined, call);
      const resolved = await Promise.all(plans.map((p) => resolveNode(this.#qmp, p.node, call)));
      const chosen = plans.map((p, i) => chooseFleecing(p.node, resolved[i]?.nodeName ?? p.node, blocks, caps, options.fleecing ?? 'auto'));
      const scratch = await makeScratch(run, this.dir, run.id);
      plans.forEach((p, i) => {
        const c = chosen[i] as ReturnType<typeof chooseFleecing>;
        const names = fleecingNames(run.id, i);
        const d: FleecingDrive = {
          node: p.node,
          nodeName: resolved[i]?.nodeName ?? p.node,
          size: p.size,
          method: c.method,
          image: join(scratch.dir, `fleece-${i}.${c.method === 'snapshot-access' ? 'raw' : 'qcow2'}`),
          tempNode: names.tempNode,
          jobId: this.#jobId(p.node, run.id),
          exportId: names.exportId,
          exportNode: c.method === 'snapshot-access' ? names.accessNode : names.tempNode,
          // A full starts the chain's bitmap (removed if the run fails); a later backup freezes a
          // copy of it at the point, which is what the export reads and what it gets back on failure.
          bitmap: { name: p.bitmap, reset: p.resets, persistent: p.persistent },
        };
        if (run.kind !== 'full' && d.bitmap) d.bitmap.frozen = `${p.bitmap}-${run.id.slice(0, 8)}-frozen`;
        if (c.method === 'snapshot-access') {
          d.qdev = c.qdev as string;
          d.qomPath = qomPathOf(d.qdev);
          d.cbwNode = names.cbwNode;
          d.accessNode = names.accessNode;
        }
        p.fleece = d;
        p.pull = pendingPullDrive(d);
      });
      const pull = { scratch: scratch.dir, nbdServer: true, ...(scratch.socketDir === undefined ? {} : { socketDir: scratch.socketDir }) };
      await run.markPending(before, pendingBase, chainId, plans.map((p) => this.#pendingDrive(p, run)), pull);
      // The targets first, as in push mode: an existing one is refused before QEMU is touched.
      for (const p of plans) {
        const writer = await this.#openTarget(p, overwrite, signal);
        writers.push(writer);
        run.created(p.target);
        run.undoWith(`abort the writer of ${p.target}`, () => writer.abort());
      }
      for (const p of plans) await this.#prepareBitmaps(run, p, call);
      for (const p of plans) {
        const d = p.fleece as FleecingDrive;
        if (d.bitmap) {
          d.bitmap.granularity = p.granularity;
          // The frozen copy survives a QEMU restart where the chain's bitmap does: a later run merges it back.
          d.bitmap.persistent = p.persistent;
        }
      }
      await run.updatePending(plans.map((p) => this.#pendingDrive(p, run)));
      const drives = plans.map((p) => p.fleece as FleecingDrive);
      await setUpFleecing(this.#qmp, run, drives, caps, scratch.socket, call, {
        pointTaken: () => (pointTaken = true),
        // A resize between the checks and the point shows on the marks now.
        afterPoint: () => this.#checkMarksAfterStart(run, plans, call),
      });
      const watch = watchFleecing(drives, (error) => stop.abort(error));
      run.teardownWith('stop watching the fleecing jobs', async () => watch.disarm());
      // Every drive at once; the first failure stops the others.
      const settled = await Promise.allSettled(
        plans.map(async (p, i) => {
          try {
            copies[i] = await this.#pullDrive(run, p, writers[i] as Qcow2ImageWriter, scratch.socket, progress[i] as CopyProgress, signal);
          } catch (error) {
            stop.abort(error);
            throw error;
          }
        }),
      );
      // A fleecing job that ended under the copy explains the failed reads.
      if (BackupJobError.isInstance(stop.reason)) throw stop.reason;
      const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
      // Every read happened while the views were the point in time.
      watch.check();
      // Every target is complete. Take the fleecing down before recording: QEMU lets go of
      // the drive, and a teardown that fails only leaves names in QEMU (reported, not fatal).
      const leftovers = await run.tearDown();
      const done: RecordedJob[] = plans.map((p, i) => ({
        drive: this.#pendingDrive(p, run),
        jobLength: copies[i]?.len ?? 0,
        durationMs: copies[i]?.durationMs ?? 0,
      }));
      const { next, backups } = await this.#record({ id: run.id, kind: run.kind, chainId }, before, done, call);
      recorded = true;
      run.committed();
      // The frozen copies have done their work; the chain's bitmap holds the writes since the point.
      for (const p of plans) {
        const frozen = p.fleece?.bitmap?.frozen;
        if (frozen === undefined) continue;
        await execute(this.#qmp, 'block-dirty-bitmap-remove', { node: p.fleece?.nodeName ?? p.node, name: frozen }).catch((error: unknown) => {
          leftovers.push(`remove bitmap ${frozen}: ${(error as Error).message}`);
        });
      }
      progress.forEach((p) => p.finish(true));
      const results: JobResult[] = plans.map((p, i) => ({
        id: this.#jobId(p.node, run.id),
        status: 'completed',
        offset: copies[i]?.total ?? 0,
        len: copies[i]?.total ?? 0,
        errors: [],
        qemuDurationMs: copies[i]?.durationMs ?? 0,
        elapsedMs: copies[i]?.elapsedMs ?? 0,
      }));
      return {
        kind: run.kind,
        run: run.id,
        chainId: next.chainId,
        backups,
        results,
        elapsedMs: performance.now() - started,
        fleecing: plans.map((p) => ({ node: p.node, method: p.fleece?.method ?? 'auto' })),
        leftovers,
      };
    } catch (error) {
      progress.forEach((p) => p.finish(false));
      if (recorded) throw error;
      const why = options.signal?.aborted === true ? 'abort' : stop.timedOut ? 'timeout' : undefined;
      const message = error instanceof Error ? error.message : String(error);
      await run.rollback(why ? { outcome: 'aborted', error: message } : pointTaken ? { outcome: 'failed', error: message } : undefined);
      if (why) throw new BackupAbortedError(run.id, why, { cause: why === 'abort' ? options.signal?.reason : error });
      throw error;
    } finally {
      stop.dispose();
    }
  }

  /** Open a pull-mode target: refused when it exists, unless `overwrite` (then replaced). */
  async #openTarget(p: DrivePlan, overwrite: boolean, signal: AbortSignal): Promise<Qcow2ImageWriter> {
    const image: Qcow2WriterOptions = { size: p.size, fileMode: this.fileMode, signal };
    if (p.parent !== null) {
      // Backing files are named relative to the target (same directory), so the directory can move.
      image.backingFile = basename(p.parent) === p.parent ? p.parent : resolveBackupFile(this.manifestPath, p.parent);
      image.backingFormat = 'qcow2';
    }
    try {
      return await Qcow2ImageWriter.create(p.target, image);
    } catch (error) {
      if (!ImageFileExistsError.isInstance(error)) throw error;
      if (!overwrite) throw new TargetExistsError(p.target);
      await rm(p.target, { force: true });
      return Qcow2ImageWriter.create(p.target, image);
    }
  }

  /** Copy one drive's view into its target and close it. */
  async #pullDrive(
    run: ChainRun,
    p: DrivePlan,
    writer: Qcow2ImageWriter,
    socket: string,
    progress: CopyProgress,
    signal: AbortSignal,
  ): Promise<{ len: number; durationMs: number; elapsedMs: number; total: number }> {
    const started = performance.now();
    const d = p.fleece as FleecingDrive;
    // A full (or a layered run that became a full copy) reads everything allocated.
    const context = p.sync === 'full' ? undefined : qemuDirtyBitmapContext(d.bitmap?.frozen as string);
    const nbd = await NbdClient.connect(socket, { exportName: d.exportId, metaContexts: [BASE_ALLOCATION, ...(context ? [context] : [])], signal });
    run.teardownWith(`disconnect from export ${d.exportId}`, () => nbd.close());
    const plan = await planCopy(nbd, { bitmapContext: context, cluster: DEFAULT_PULL_CLUSTER, signal });
    progress.start(plan.total);
    const copyStarted = performance.now();
    await copySegments(nbd, plan.segments, writer, { signal, progress, reuseBuffers: true });
    await writer.close();
    await nbd.disconnect();
    return { len: plan.dirty, durationMs: performance.now() - copyStarted, elapsedMs: performance.now() - started, total: plan.total };
  }

  /** Every job completed: hash the targets, record the run, then drop what it replaced. */
  async #commit(
    run: ChainRun,
    plans: DrivePlan[],
    concluded: ConcludedJob[],
    before: Manifest | undefined,
    started: number,
    chainId: string,
  ): Promise<ChainRunResult> {
    // QEMU has reset the bitmaps: from here the run can only be recorded. If that fails the
    // run stays pending (its jobs wait in 'concluded') and the next run records it.
    const done: RecordedJob[] = plans.map((p, i) => ({
      drive: this.#pendingDrive(p, run),
      jobLength: concluded[i]?.len ?? 0,
      durationMs: concluded[i]?.durationMs ?? 0,
    }));
    const { next, backups } = await this.#record({ id: run.id, kind: run.kind, chainId }, before, done);
    run.committed();
    // The jobs were dismissed after the manifest was written: their QEMU time is up to 'concluded'.
    const results = (await run.dismissJobs()).map((r, i) => ({ ...r, qemuDurationMs: concluded[i]?.durationMs ?? r.qemuDurationMs }));
    return { kind: run.kind, run: run.id, chainId: next.chainId, backups, results, elapsedMs: performance.now() - started };
  }

  /**
   * Resize a drive through the chain (QMP block_resize) and record it, so the next backup
   * copies everything past the smallest size the drive had since the last backup: the part a
   * shrink cut off reads as zeroes once grown back, while the chain still holds the old data.
   */
  async resize(size: number, options: ChainResizeOptions = {}): Promise<ChainResizeResult> {
    const call = callOptions(options);
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`resize: size must be a positive integer, got ${size}`);
    const node = options.node ?? (this.#drives.length === 1 ? this.#drives[0]?.node : undefined);
    if (node === undefined || !this.nodes.includes(node)) {
      throw new ManifestError(this.manifestPath, `resize: say which drive (${this.nodes.join(', ')})`);
    }
    await this.recover(call);
    const manifest = this.#manifest;
    const before = await resolveNode(this.#qmp, node, call);
    const from = before.info.image?.['virtual-size'] ?? 0;
    const args = before.device === node ? { device: node, size } : { 'node-name': before.nodeName ?? node, size };
    await execute(this.#qmp, 'block_resize', args, call);
    const drive = manifest?.drives.find((d) => d.node === node);
    if (!manifest || !drive || drive.backups.length === 0 || manifest.version === 1) {
      return { node, from, to: size, smallest: Math.min(from, size), recorded: false };
    }
    const next = structuredClone(manifest);
    const d = next.drives.find((x) => x.node === node) as ManifestDrive;
    const time = new Date().toISOString();
    const resizes = [...(d.resizes ?? [])];
    const known = lastKnownSize(d);
    if (from !== known) {
      // The drive changed size behind the chain's back. A bit of the mark that is still set
      // vouches that the drive never got below it; without bits, nothing does.
      const floor = d.mark && d.mark.bits.length > 0 ? Math.max(...d.mark.bits) : 0;
      resizes.push({ time, from: known, to: Math.min(floor, from), untracked: true });
    }
    if (size < from && d.mark && d.mark.bits.length > 0) await this.#rearmAfterShrink(before, d, size, call);
    resizes.push({ time, from, to: size });
    d.resizes = resizes;
    next.updated = new Date().toISOString();
    await this.#write(next);
    return { node, from, to: size, smallest: smallestSize(d), recorded: true };
  }

  /**
   * After a shrink made here, the mark keeps the bits below the new end and gets one at the
   * new end, so a later shrink below it, made behind the chain's back, still shows. Only when
   * the mark had every bit it should before: otherwise it keeps the evidence of that shrink.
   */
  async #rearmAfterShrink(before: ResolvedNode, d: ManifestDrive, size: number, call: CallOptions): Promise<void> {
    const mark = d.mark as ManifestMark;
    const had = before.info['dirty-bitmaps']?.find((b) => b.name === mark.bitmap)?.count;
    if (had !== markExpected(d)) return;
    const after = await resolveNode(this.#qmp, d.node, call);
    const survivors = mark.bits.filter((b) => b < size);
    const now = after.info['dirty-bitmaps']?.find((b) => b.name === mark.bitmap)?.count;
    if (now !== survivors.length * d.granularity) return;
    const bit = lastGranule(size, d.granularity);
    if (survivors.includes(bit)) {
      d.mark = { bitmap: mark.bitmap, bits: survivors };
      return;
    }
    try {
      await setBitmapRanges(this.#qmp, { node: d.node, bitmap: mark.bitmap, size, granularity: d.granularity }, [
        { start: bit, end: bit + d.granularity },
      ], call);
      d.mark = { bitmap: mark.bitmap, bits: [...survivors, bit].sort((a, b) => a - b) };
    } catch {
      // Without the new bit the survivors still describe the mark exactly.
      d.mark = { bitmap: mark.bitmap, bits: survivors };
    }
  }

  /**
   * Remove earlier chains and fold the oldest restore points of the current one into a
   * standalone image, then verify what remains (see `pruneChain`). Needs no QEMU.
   */
  async prune(options: Omit<PruneOptions, 'fileMode' | 'qemuImg'>): Promise<PruneResult> {
    const result = await pruneChain(this.manifestPath, { qemuImg: this.#qemuImg, fileMode: this.fileMode, ...options });
    this.#manifest = result.manifest;
    return result;
  }

  /** qemu-img check every image and compare the chain with the source (see `verifyChain`). */
  verify(options: VerifyOptions = {}): Promise<VerifyReport> {
    return verifyChain(this.manifestPath, { qemuImg: this.#qemuImg, ...options });
  }

  /** Flatten the chain of `node` up to a chosen backup into a standalone image. */
  restore(output: string, options: RestoreOptions = {}): Promise<string> {
    return restoreChain(this.manifestPath, output, { qemuImg: this.#qemuImg, fileMode: this.fileMode, ...options });
  }

  // ---- the steps of a run ----

  #context(): { qmp: BackupQmp; manifestPath: string; fileMode: number } {
    return { qmp: this.#qmp, manifestPath: this.manifestPath, fileMode: this.fileMode };
  }

  async #reload(): Promise<Manifest | undefined> {
    this.#manifest = await readManifest(this.manifestPath);
    return this.#manifest;
  }

  async #write(manifest: Manifest): Promise<void> {
    await writeManifest(this.manifestPath, manifest, { mode: this.fileMode });
    this.#manifest = manifest;
  }

  /** The backup directory, created for the run if needed (removed again if the run leaves it empty). */
  async #makeDirectory(run: ChainRun): Promise<void> {
    const first = await makeDirectory(this.dir, this.fileMode);
    if (first !== undefined) run.createdDirectory(first, this.dir);
  }

  #newManifest(chainId: string, time: string, drives: ManifestDrive[]): Manifest {
    return { format: 'qmpkit-backup-chain', version: MANIFEST_VERSION, chainId, created: time, updated: time, drives };
  }

  #pendingDrive(p: DrivePlan, run: ChainRun): PendingDrive {
    const d: PendingDrive = {
      node: p.node,
      jobId: this.#jobId(p.node, run.id),
      target: basename(p.target),
      parent: p.parent,
      sync: p.sync,
      resets: p.resets,
      driveSize: p.size,
      granularity: p.granularity,
      persistent: p.persistent,
      bitmaps: p.added,
      mark: p.mark ? { bitmap: p.mark.bitmap, bits: [...p.mark.bits] } : null,
    };
    if (p.oldMark !== undefined) d.oldMark = p.oldMark;
    if (p.cover) d.coveredFrom = p.cover.from;
    if (p.image !== undefined) d.image = p.image;
    if (p.targetNode !== undefined) d.targetNode = p.targetNode;
    if (p.compress === true) d.compress = true;
    if (p.pull !== undefined) d.pull = p.pull;
    return d;
  }

  /**
   * Set the chain bitmap's bits from the smallest size the drive had (recorded by `resize()`)
   * to the end of what the chain holds, so the job copies that part from the drive. Where
   * QEMU offers no way to set bits, the drive's backup becomes a full copy instead: a new base
   * for an incremental, a standalone image (that keeps the bitmap) for a differential.
   */
  async #cover(p: DrivePlan, call: CallOptions): Promise<void> {
    if (!p.cover || p.sync === 'full') return;
    try {
      await setBitmapRanges(
        this.#qmp,
        { node: p.node, bitmap: p.bitmap, size: p.size, granularity: p.granularity },
        [{ start: p.cover.from, end: p.cover.to }],
        call,
      );
    } catch (error) {
      if (!BitmapRangeError.isInstance(error) || error.reason !== 'unsupported') throw error;
      p.sync = 'full';
      p.parent = null;
      if (p.resets) {
        p.target = p.target.replace(/\.inc\.qcow2$/, '.full.qcow2');
        p.markAction = 'fresh';
        if (p.mark) p.mark = { bitmap: p.mark.bitmap, bits: [] };
      }
    }
  }

  /**
   * The bitmaps a run needs before its jobs start. A new chain: its bitmap (recording) and its
   * mark. An incremental: the next mark, merged from the last one. A mark gets a bit at the
   * drive's end when it has none there yet (the drive is new to it, or grew).
   */
  async #prepareBitmaps(run: ChainRun, p: DrivePlan, call: CallOptions): Promise<void> {
    if (run.kind === 'full') {
      const add: Record<string, unknown> = { node: p.node, name: p.bitmap, persistent: p.persistent };
      if (p.options.granularity !== undefined) add['granularity'] = p.options.granularity;
      await execute(this.#qmp, 'block-dirty-bitmap-add', add, call);
      run.addedBitmap(p.node, p.bitmap);
      // QEMU chose the granularity when none was asked for: the mark needs the same.
      const info = (await resolveNode(this.#qmp, p.node, call)).info['dirty-bitmaps']?.find((b) => b.name === p.bitmap);
      p.granularity = info?.granularity ?? p.granularity;
    }
    const mark = p.mark;
    if (p.markAction === 'keep' || !mark) return;
    await execute(
      this.#qmp,
      'block-dirty-bitmap-add',
      { node: p.node, name: mark.bitmap, persistent: p.persistent, granularity: p.granularity, disabled: true },
      call,
    );
    run.addedBitmap(p.node, mark.bitmap);
    if (p.markAction === 'carry' && p.oldMark) {
      await execute(this.#qmp, 'block-dirty-bitmap-merge', { node: p.node, target: mark.bitmap, bitmaps: [p.oldMark] }, call);
    }
    // A carried mark without bits belongs to a QEMU that cannot set them: do not try again.
    const end = lastGranule(p.size, p.granularity);
    if ((p.markAction === 'carry' && mark.bits.length === 0) || mark.bits.includes(end)) return;
    try {
      await setBitmapRanges(this.#qmp, { node: p.node, bitmap: mark.bitmap, size: p.size, granularity: p.granularity }, [
        { start: end, end: end + p.granularity },
      ], call);
      mark.bits = [...mark.bits, end].sort((a, b) => a - b);
    } catch (error) {
      // No HMP (e.g. qemu-storage-daemon): the mark still names the run; shrinks show only as sizes.
      if (!BitmapRangeError.isInstance(error) || error.reason !== 'unsupported') throw error;
    }
  }

  /** After the start: every mark still has all its bits (no shrink slipped in before the jobs began). */
  async #checkMarksAfterStart(run: ChainRun, plans: DrivePlan[], call: CallOptions): Promise<void> {
    for (const p of plans) {
      if (!p.mark || p.mark.bits.length === 0) continue;
      const resolved = await resolveNode(this.#qmp, p.node, call);
      const count = resolved.info['dirty-bitmaps']?.find((b) => b.name === p.mark?.bitmap)?.count;
      if (count !== p.mark.bits.length * p.granularity) {
        throw new DriveBusyError(
          p.node,
          `was resized while backup run ${run.id} started (its mark has ${String(count)} dirty bytes, not ${p.mark.bits.length * p.granularity}): the run was cancelled, run it again`,
        );
      }
    }
  }

  /**
   * Create an empty qcow2 target with the chain's file mode. The file is created exclusively,
   * so an existing one is found without a separate look-up: `TargetExistsError`, or replaced
   * with `overwrite`. Targets are written in-process (image-tools' `createQcow2Image`: the
   * bytes qemu-img would write, without a process per incremental); a layout it leaves to
   * qemu-img goes there.
   */
  async #createTarget(p: DrivePlan, options: ChainBackupOptions): Promise<void> {
    const call = callOptions(options);
    const overwrite = options.overwrite === true;
    const image: { size: number; backingFile?: string; backingFormat?: string } = { size: p.size };
    if (p.parent !== null) {
      // Backing files are named relative to the target (same directory), so the directory can move.
      image.backingFile = basename(p.parent) === p.parent ? p.parent : resolveBackupFile(this.manifestPath, p.parent);
      image.backingFormat = 'qcow2';
    }
    try {
      await this.#createInProcess(p.target, image, call, overwrite);
    } catch (error) {
      if (!UnsupportedQcow2LayoutError.isInstance(error)) throw error;
      if (await exists(p.target)) {
        if (!overwrite) throw new TargetExistsError(p.target);
        await rm(p.target, { force: true });
      }
      const create: Parameters<QemuImg['create']>[1] = { format: 'qcow2', size: image.size, ...call };
      if (image.backingFile !== undefined) {
        create.backingFile = image.backingFile;
        create.backingFormat = image.backingFormat ?? 'qcow2';
        create.unsafe = true;
      }
      await this.#qemuImg.create(p.target, create);
    }
    // Empty so far (QEMU writes the data later): its mode is set before anything is in it.
    await restrictFile(p.target, this.fileMode);
  }

  async #createInProcess(
    target: string,
    image: { size: number; backingFile?: string; backingFormat?: string },
    call: CallOptions,
    overwrite: boolean,
  ): Promise<void> {
    try {
      await createQcow2Image(target, image, call);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      if (!overwrite) throw new TargetExistsError(target);
      await rm(target, { force: true });
      await createQcow2Image(target, image, call);
    }
  }

  /**
   * A new chain replaced the one in this directory: the old chain's own bitmap and marks are
   * of no use to anyone (its manifest is gone) and are removed. Bitmaps of other chains, and
   * the shared bitmap of 0.1 chains, are never touched.
   */
  async #removeSuperseded(previous: Manifest | undefined, next: Manifest): Promise<void> {
    if (!previous || previous.version === 1 || previous.chainId === next.chainId) return;
    for (const d of previous.drives) {
      if (d.backups.length === 0) continue;
      const names = [d.bitmap, ...(d.mark ? [d.mark.bitmap] : [])];
      for (const name of names) {
        if (next.drives.some((n) => n.bitmap === name || n.mark?.bitmap === name)) continue;
        await execute(this.#qmp, 'block-dirty-bitmap-remove', { node: d.node, name }).catch(() => undefined);
      }
    }
  }

  #failure(failed: JobResult, results: JobResult[]): BackupJobError {
    return new BackupJobError(failed.id, failed.status, failed.error, {
      results: results.map((r) => (r.error === undefined ? { id: r.id, status: r.status } : { id: r.id, status: r.status, error: r.error })),
    });
  }

  #jobId(node: string, run: string): string {
    // One id per run: events of an earlier job of this drive that nobody took (its tracking
    // was abandoned) can never be mistaken for this one's, and the next run finds a job left
    // behind by a killed process by this id.
    return `qmpkit-${sanitize(node)}-${run.slice(0, 8)}`;
  }

  #backupArgs(p: DrivePlan, run: string, options: ChainBackupOptions): DriveBackup {
    const args: DriveBackup = {
      'job-id': this.#jobId(p.node, run),
      device: p.node,
      sync: p.sync,
      target: p.target,
      format: 'qcow2',
      mode: 'existing',
      bitmap: p.bitmap,
      // The job stays 'concluded' until the manifest records it: a process killed before that
      // leaves its result in QEMU for the next run.
      'auto-dismiss': false,
    };
    // A full (a new chain, or a full copy) resets the bitmap when it succeeds, like an
    // incremental; a differential keeps it. On failure QEMU merges everything back.
    args['bitmap-mode'] = p.resets ? 'on-success' : 'never';
    if (options.speed !== undefined) args.speed = options.speed;
    if (p.compress === true) args.compress = true;
    return args;
  }

  #jobOptions(node: string, options: ChainBackupOptions): BackupJobOptions {
    const jobOptions: BackupJobOptions = { dismissConcluded: false };
    const onProgress = options.onProgress;
    if (onProgress) jobOptions.onProgress = (p) => onProgress({ ...p, node });
    if (options.progressInterval !== undefined) jobOptions.progressInterval = options.progressInterval;
    return jobOptions;
  }
}

export interface BackupChainOptions extends ChainDriveOptions {
  qmp: BackupQmp;
  dir: string;
  manifest?: string;
  qemuImg?: QemuImg;
  fileMode?: number;
}

/** The incremental backup chain of one drive: a group of one, with single-drive accessors. */
export class BackupChain {
  readonly node: string;
  readonly #group: BackupChainGroup;

  protected constructor(node: string, group: BackupChainGroup) {
    this.node = node;
    this.#group = group;
  }

  static async open(options: BackupChainOptions): Promise<BackupChain> {
    const drive: ChainDriveOptions = { node: options.node };
    if (options.bitmap !== undefined) drive.bitmap = options.bitmap;
    if (options.granularity !== undefined) drive.granularity = options.granularity;
    if (options.persistent !== undefined) drive.persistent = options.persistent;
    const groupOptions: BackupChainGroupOptions = { qmp: options.qmp, dir: options.dir, drives: [drive] };
    if (options.manifest !== undefined) groupOptions.manifest = options.manifest;
    if (options.qemuImg !== undefined) groupOptions.qemuImg = options.qemuImg;
    if (options.fileMode !== undefined) groupOptions.fileMode = options.fileMode;
    return new BackupChain(options.node, await BackupChainGroup.open(groupOptions));
  }

  get dir(): string {
    return this.#group.dir;
  }

  get manifestPath(): string {
    return this.#group.manifestPath;
  }

  get manifest(): Manifest | undefined {
    return this.#group.manifest;
  }

  get qmp(): BackupQmp {
    return this.#group.qmp;
  }

  set qmp(qmp: BackupQmp) {
    this.#group.qmp = qmp;
  }

  /** This drive's part of the manifest. */
  get drive(): ManifestDrive | undefined {
    return this.manifest?.drives[0];
  }

  /** This drive's backups, oldest first. */
  get backups(): readonly ManifestBackup[] {
    return this.drive?.backups ?? [];
  }

  check(options: CallOptions & { allowGrowth?: boolean } = {}): Promise<DriveCheck[]> {
    return this.#group.check(options);
  }

  inspect(): Promise<ChainStatus> {
    return this.#group.inspect();
  }

  status(options: CallOptions = {}): Promise<ChainStatus & { drives: DriveCheck[] }> {
    return this.#group.status(options);
  }

  recover(options: CallOptions & { cancelOrphanJob?: boolean } = {}): Promise<'none' | 'recorded' | 'undone' | 'unknown'> {
    return this.#group.recover(options);
  }

  full(options: ChainBackupOptions = {}): Promise<ChainRunResult> {
    return this.#group.full(options);
  }

  incremental(options: ChainIncrementalOptions = {}): Promise<ChainRunResult> {
    return this.#group.incremental(options);
  }

  differential(options: ChainIncrementalOptions = {}): Promise<ChainRunResult> {
    return this.#group.differential(options);
  }

  /** Resize the drive through the chain (see `BackupChainGroup.resize`). */
  resize(size: number, options: CallOptions = {}): Promise<ChainResizeResult> {
    return this.#group.resize(size, { ...options, node: this.node });
  }

  verify(options: VerifyOptions = {}): Promise<VerifyReport> {
    return this.#group.verify(options);
  }

  prune(options: Omit<PruneOptions, 'fileMode' | 'qemuImg'>): Promise<PruneResult> {
    return this.#group.prune(options);
  }

  restore(output: string, options: RestoreOptions = {}): Promise<string> {
    return this.#group.restore(output, options);
  }
}
