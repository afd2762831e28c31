import { randomUUID } from 'node:crypto';
import { appendFile, chmod, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { ManifestError } from './errors.js';
import { DEFAULT_FILE_MODE } from './file-mode.js';
import type { FleecingMethod } from './fleecing.js';

export type BackupKind = 'full' | 'incremental' | 'differential';

/**
 * How a backup was taken. 'push': a QEMU backup job wrote the target. 'pull': QEMU exported a
 * point-in-time view of the drive over NBD (fleecing) and this process read it and wrote the
 * target. Both make the same files.
 */
export type BackupMode = 'push' | 'pull';

/** One backup of one drive. */
export interface ManifestBackup {
  kind: BackupKind;
  /** The target image, relative to the manifest's directory unless absolute. */
  file: string;
  /** The image this one is layered on (its backing file), null for a full backup. */
  parent: string | null;
  /** When the job ended (ISO 8601). */
  time: string;
  /**
   * What the job wrote: the guest bytes of data allocated in the target image itself (not in
   * its backing files). Backups recorded by earlier versions have the job's `len` here.
   */
  bytes: number;
  /**
   * The job's `len`: what QEMU went through (for a full the whole drive, for an incremental
   * the bitmap's dirty bytes at its start). Not in backups recorded by earlier versions.
   */
  jobLength?: number;
  /** The drive's virtual size when this backup was taken. */
  driveSize: number;
  /** Only backups that completed are recorded: a failed one is removed with its target. */
  result: 'completed';
  jobId: string;
  /** QEMU's duration of the job (ms, from its event timestamps). */
  durationMs: number;
  /**
   * The run was recorded by a later one, which saw none of its job's events: `durationMs` is
   * the time from the run's start until it was found concluded, an upper bound.
   */
  durationEstimated?: boolean;
  /** Written with the job's `compress` option: compressed qcow2 clusters. */
  compressed?: boolean;
  /**
   * Set by `prune --keep-points`: the backup was rewritten as a standalone image (no backing
   * file, same content), folding in these older files, which were removed.
   */
  mergedFrom?: string[];
  /** Backups of drives taken by one transaction share a run id. */
  run: string;
  /** 'pull' for a pull-mode backup (then `jobId` names the run's fleecing, `durationMs` the copy); absent: push. */
  mode?: 'pull';
  /** Size of the image file in bytes when it was recorded (version 2). */
  fileSize?: number;
  /** Digest of the whole image file, `sha256:<hex>` (version 2). */
  digest?: string;
  /**
   * Why a backup of an existing chain copied more than its bitmap: the drive was resized with
   * `chain.resize()` and everything from `coveredFrom` to the end was copied.
   */
  coveredFrom?: number;
}

/** A resize made through `chain.resize()` since the drive's last backup. */
export interface ManifestResize {
  time: string;
  from: number;
  to: number;
  /**
   * Not a resize the chain made: `chain.resize()` found the drive at a size the chain did not
   * know, and records that change as going down to the lowest size the mark can vouch for
   * (0 when it has no bits), so the next backup copies from there.
   */
  untracked?: boolean;
}

/**
 * The chain's mark on the drive: a disabled bitmap named after the chain and the run of the
 * last backup that reset the chain's bitmap, with a set bit in the last granule of every size
 * listed in `bits` (their offsets). Its name tells a drive that carries the chain's newest
 * state from an older copy of it; a shrink of the drive drops the bits past the new end, so a
 * shrink made behind the chain's back shows as a lower count. `bits` is empty where QEMU
 * offers no way to set them (no HMP, e.g. qemu-storage-daemon).
 */
export interface ManifestMark {
  bitmap: string;
  bits: number[];
}

/** One drive's chain. */
export interface ManifestDrive {
  /** Device (drive id) or node-name the backups read from; the bitmap lives on it. */
  node: string;
  /** The chain's own dirty bitmap: `<prefix>-<first 8 hex digits of the chain id>` since version 2. */
  bitmap: string;
  granularity: number;
  persistent: boolean;
  /** Virtual size of the drive at its last backup. */
  driveSize: number;
  targetFormat: 'qcow2';
  backups: ManifestBackup[];
  /** The image file QEMU reported for the node at the full backup (version 2, for diagnostics). */
  image?: string;
  /** Version 2; null when the mark could not be made. */
  mark?: ManifestMark | null;
  /** Resizes made with `chain.resize()` since the last backup (version 2). */
  resizes?: ManifestResize[];
}

/**
 * A run that was started and whose outcome was never recorded (the helper lost track of its
 * jobs, or its process died). The next run looks for its jobs in QEMU by id: one that has
 * concluded is adopted (recorded or rolled back by its result), one still running is reported
 * (`PendingRunError`), and when none is left the outcome is unknown, so a layered chain cannot
 * be continued until a new full backup: `check()` reports 'interrupted'.
 */
export interface PendingRun {
  run: string;
  kind: BackupKind;
  started: string;
  /** Target files of the run (they may be left on disk). */
  targets: string[];
  /** Version 2: what the run did per drive, enough to record or undo it later. */
  drives?: PendingDrive[];
  /** Version 2: the process that started the run. */
  pid?: number;
  host?: string;
  /** Version 2: the chain the run belongs to (a full starts a new one). */
  chainId?: string;
  /** A pull-mode run: this process copies the data, so the run can only end here (see `PendingPull`). */
  mode?: 'pull';
  pull?: PendingPull;
}

/**
 * What a pull-mode run set up that is not per drive. Such a run is never adopted by a later
 * one (nobody else copied its data): once its process is gone, the next run takes down what it
 * left in QEMU and merges each frozen bitmap back into the chain's bitmap.
 */
export interface PendingPull {
  /** The run's private directory (temporary fleecing images, the NBD socket). */
  scratch: string;
  /** A second private directory for the socket, when the first one's path is too long for one. */
  socketDir?: string;
  /** The run started QEMU's NBD server (and stops it again). */
  nbdServer: boolean;
}

/** What a pull-mode run set up in QEMU for one drive, by name, so a later run can take it down. */
export interface PendingPullDrive {
  fleecing: FleecingMethod;
  /** The resolved node name of the drive (the fleecing image's backing, the filter's child). */
  nodeName: string;
  /** The frozen copy of the chain's bitmap at the fleecing point (exported); none for a full. */
  frozenBitmap?: string;
  /** The temporary fleecing image (in `PendingPull.scratch`). */
  image: string;
  /** Node of the fleecing image. */
  tempNode: string;
  /** 'snapshot-access': the copy-before-write filter, the snapshot-access node, and the device whose drive was switched. */
  cbwNode?: string;
  accessNode?: string;
  qdev?: string;
  exportId: string;
}

export interface PendingDrive {
  node: string;
  jobId: string;
  target: string;
  parent: string | null;
  /** The sync mode the job ran with. */
  sync: 'full' | 'incremental' | 'bitmap';
  /** The job resets the chain's bitmap when it succeeds (a full or an incremental). */
  resets: boolean;
  driveSize: number;
  granularity: number;
  persistent: boolean;
  /** Bitmaps the run created (the new chain's bitmap, a new mark): removed when the run is undone. */
  bitmaps: string[];
  /** The mark of the chain once the run is recorded. */
  mark: ManifestMark | null;
  /** The mark the run replaces (removed once it is recorded). */
  oldMark?: string;
  coveredFrom?: number;
  image?: string;
  /** The node the run opened its target as (blockdev-backup): removed when the run is recorded or undone. */
  targetNode?: string;
  /** The job writes compressed clusters. */
  compress?: boolean;
  /** A pull-mode run's fleecing of this drive. */
  pull?: PendingPullDrive;
}

/** A chain of the directory that a newer full backup replaced; kept (restorable) until pruned. */
export interface ManifestChain {
  chainId: string;
  /** The manifest version the chain was written with (1: @qmpkit/backup 0.1). */
  version: 1 | 2;
  created: string;
  updated: string;
  drives: ManifestDrive[];
}

/**
 * A prune in progress (`pruneChain`): written before any file changes, so a prune that is
 * interrupted is completed by the next operation that changes the chain. Until then the
 * manifest's backups are as before the prune, and each file being replaced is valid with
 * either its recorded digest or the one here (both read as the same point).
 */
export interface PendingPrune {
  id: string;
  started: string;
  pid: number;
  host: string;
  /** Standalone images written beside the chain, each renamed over the file it replaces. */
  replace: Array<{ node: string; file: string; temp: string; digest: string; fileSize: number }>;
  /** Files no longer needed once the manifest lists `drives`. */
  remove: string[];
  /** The chain's drives after the prune. */
  drives: ManifestDrive[];
}

export interface Manifest {
  format: 'qmpkit-backup-chain';
  /** 1: written by @qmpkit/backup 0.1 (every chain used the bitmap 'qmpkit-backup'); 2: owned bitmaps, marks, digests. */
  version: 1 | 2;
  chainId: string;
  created: string;
  updated: string;
  drives: ManifestDrive[];
  pending?: PendingRun;
  /** Earlier chains of the directory, newest first (`prune --keep-chains` removes them). */
  history?: ManifestChain[];
  /** A prune that has not finished (see `PendingPrune`). */
  prune?: PendingPrune;
}

export const MANIFEST_FILE = 'manifest.json';
export const MANIFEST_VERSION = 2;

export function newChainId(): string {
  return randomUUID();
}

export function resolveBackupFile(manifestPath: string, file: string): string {
  return isAbsolute(file) ? file : join(dirname(manifestPath), file);
}

/** The chain a manifest describes (its current one), as a history entry. */
export function currentChain(manifest: Manifest): ManifestChain {
  return { chainId: manifest.chainId, version: manifest.version, created: manifest.created, updated: manifest.updated, drives: manifest.drives };
}

/** Every chain of the manifest, the current one first, then the earlier ones, newest first. */
export function chainsOf(manifest: Manifest): ManifestChain[] {
  return [currentChain(manifest), ...(manifest.history ?? [])];
}

/**
 * The chain with id `id` (the whole id, or a prefix of at least 8 characters, as in file
 * names); the current one when `id` is undefined.
 */
export function findChain(manifestPath: string, manifest: Manifest, id: string | undefined): ManifestChain {
  const chains = chainsOf(manifest);
  if (id === undefined) return chains[0] as ManifestChain;
  const found = chains.filter((c) => c.chainId === id || (id.length >= 8 && c.chainId.startsWith(id)));
  if (found.length === 1) return found[0] as ManifestChain;
  const known = chains.map((c) => c.chainId.slice(0, 8)).join(', ');
  throw new ManifestError(
    manifestPath,
    found.length === 0 ? `has no chain "${id}" (chains: ${known})` : `chain "${id}" is ambiguous (chains: ${known})`,
  );
}

/**
 * The digests a file of the chain may have: its recorded one, and during an unfinished prune
 * the one of the standalone image replacing it (same content).
 */
export function acceptedDigests(manifest: Manifest, backup: ManifestBackup): Array<{ digest: string; fileSize?: number }> {
  const out: Array<{ digest: string; fileSize?: number }> = [];
  if (backup.digest !== undefined) out.push(backup.fileSize === undefined ? { digest: backup.digest } : { digest: backup.digest, fileSize: backup.fileSize });
  for (const r of manifest.prune?.replace ?? []) if (r.file === backup.file) out.push({ digest: r.digest, fileSize: r.fileSize });
  return out;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The drives of a chain (the current one, an earlier one, or a pending prune's result). */
function validateDrives(drives: unknown, prefix: string, fail: (what: string) => never): void {
  if (!Array.isArray(drives) || drives.length === 0) fail(`${prefix ? `${prefix}drives` : ''} lists no drives`.trim());
  (drives as unknown[]).forEach((d: unknown, i) => {
    const at = `${prefix}drives[${i}]`;
    if (!isObject(d)) return fail(`${at} is not an object`);
    for (const key of ['node', 'bitmap'] as const) if (typeof d[key] !== 'string') fail(`${at}.${key} is missing`);
    for (const key of ['granularity', 'driveSize'] as const) {
      if (typeof d[key] !== 'number') fail(`${at}.${key} is missing`);
    }
    if (!Array.isArray(d['backups'])) return fail(`${at}.backups is missing`);
    (d['backups'] as unknown[]).forEach((b, j) => {
      if (!isObject(b) || typeof b['file'] !== 'string' || typeof b['kind'] !== 'string') {
        fail(`${at}.backups[${j}] has no file or kind`);
      }
    });
    const mark = d['mark'];
    if (mark !== undefined && mark !== null) {
      if (!isObject(mark) || typeof mark['bitmap'] !== 'string' || !Array.isArray(mark['bits'])) {
        fail(`${at}.mark is malformed`);
      }
    }
    const resizes = d['resizes'];
    if (resizes !== undefined && !Array.isArray(resizes)) fail(`${at}.resizes is malformed`);
    return undefined;
  });
}

function validate(path: string, value: unknown): Manifest {
  const fail = (what: string): never => {
    throw new ManifestError(path, what);
  };
  if (!isObject(value)) return fail('is not a JSON object');
  if (value['format'] !== 'qmpkit-backup-chain') return fail('is not a qmpkit backup manifest (format field)');
  const version = value['version'];
  if (version !== 1 && version !== 2) {
    return fail(`has unsupported version ${String(version)} (this @qmpkit/backup reads versions 1 and 2)`);
  }
  if (typeof value['chainId'] !== 'string') return fail('has no chainId');
  validateDrives(value['drives'], '', fail);
  const pending = value['pending'];
  if (pending !== undefined && (!isObject(pending) || typeof pending['run'] !== 'string')) fail('pending is malformed');
  const history = value['history'];
  if (history !== undefined) {
    if (!Array.isArray(history)) fail('history is malformed');
    (history as unknown[]).forEach((c, i) => {
      if (!isObject(c) || typeof c['chainId'] !== 'string') return fail(`history[${i}] is malformed`);
      validateDrives(c['drives'], `history[${i}].`, fail);
      return undefined;
    });
  }
  const prune = value['prune'];
  if (prune !== undefined) {
    if (!isObject(prune) || !Array.isArray(prune['replace']) || !Array.isArray(prune['remove'])) return fail('prune is malformed');
    validateDrives(prune['drives'], 'prune.', fail);
  }
  return value as unknown as Manifest;
}

/** Read a manifest; undefined when the file does not exist. */
export async function readManifest(path: string): Promise<Manifest | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ManifestError(path, 'cannot be read', { cause: error });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new ManifestError(path, 'is not valid JSON', { cause: error });
  }
  return validate(path, parsed);
}

/**
 * Replace the manifest atomically: write a temporary file beside it, rename it over the old
 * one, so a reader sees the old or the new manifest, never a torn one. The file gets `mode`
 * (default 0600) whatever the umask: it names the drive's images and the chain's bitmaps.
 *
 * No fsync: a power loss could bring back the previous manifest, but QEMU on the same host
 * goes down with it, and the bitmaps it then reports (missing, inconsistent, or carrying a
 * mark of a later run) refuse the chain anyway; a manifest that names a run in `pending` is
 * refused too. Skipping the flush keeps the write well under a millisecond.
 */
export async function writeManifest(path: string, manifest: Manifest, options: { mode?: number } = {}): Promise<void> {
  const mode = options.mode ?? DEFAULT_FILE_MODE;
  const temp = `${path}.${process.pid}.${randomUUID().slice(0, 8)}.tmp`;
  try {
    await writeFile(temp, `${JSON.stringify(manifest, null, 2)}\n`, { encoding: 'utf8', flag: 'wx', mode });
    // The umask may have taken bits away from a widened mode: set it exactly.
    await chmod(temp, mode);
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw new ManifestError(path, 'could not be written', { cause: error });
  }
}

/** The backup an incremental or differential is layered on: the last one after which the bitmap was reset. */
export function lastBase(drive: ManifestDrive): ManifestBackup | undefined {
  for (let i = drive.backups.length - 1; i >= 0; i--) {
    const b = drive.backups[i];
    if (b && b.kind !== 'differential') return b;
  }
  return undefined;
}

/** The files a restore of `backup` reads: the backup and its parents, newest first. */
export function backupLineage(drive: ManifestDrive, backup: ManifestBackup): ManifestBackup[] {
  const lineage: ManifestBackup[] = [backup];
  const seen = new Set([backup.file]);
  let parent = backup.parent;
  while (parent !== null) {
    const p = parent;
    const found = drive.backups.find((b) => b.file === p);
    // A parent the manifest does not list is reported by the caller as missing.
    if (!found || seen.has(found.file)) break;
    lineage.push(found);
    seen.add(found.file);
    parent = found.parent;
  }
  return lineage;
}

/** One line of a chain's run log (`<manifest>.runs.jsonl` beside the manifest): how a run ended. */
export interface RunLogEntry {
  run: string;
  /** What ran: a backup, or a prune of the chain's history. */
  kind: BackupKind | 'prune';
  /** When the run ended (ISO 8601). */
  time: string;
  outcome: 'completed' | 'failed' | 'cancelled' | 'aborted';
  /** 'pull' for a pull-mode run; absent: push (or a prune). */
  mode?: 'pull';
  error?: string;
  /** Backup files the run recorded. */
  files?: string[];
}

/** The run log of a manifest: `manifest.json` -> `manifest.runs.jsonl`. */
export function runLogPath(manifestPath: string): string {
  return `${manifestPath.replace(/\.json$/, '')}.runs.jsonl`;
}

/**
 * Append how a run ended to the chain's run log (mode as the manifest's). The manifest holds
 * what the chain is; the log says what happened to runs that left no backup (a failed or
 * cancelled run leaves the manifest exactly as it was).
 */
export async function appendRunLog(manifestPath: string, entry: RunLogEntry, options: { mode?: number } = {}): Promise<void> {
  const path = runLogPath(manifestPath);
  const mode = options.mode ?? DEFAULT_FILE_MODE;
  await appendFile(path, `${JSON.stringify(entry)}\n`, { encoding: 'utf8', mode });
  await chmod(path, mode);
}

/** The run log's entries, oldest first ([] when there is none; unreadable lines are skipped). */
export async function readRunLog(manifestPath: string): Promise<RunLogEntry[]> {
  let text: string;
  try {
    text = await readFile(runLogPath(manifestPath), 'utf8');
  } catch {
    return [];
  }
  const entries: RunLogEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      entries.push(JSON.parse(line) as RunLogEntry);
    } catch {
      // A torn last line (a process killed while appending) says nothing.
    }
  }
  return entries;
}
