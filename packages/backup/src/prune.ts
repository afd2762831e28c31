// Retention: removing whole earlier chains, and merging the oldest restore points of the
// current chain into one standalone image. Nothing a restore may still read is changed in
// place: a merged point is written beside the chain as a new standalone image, checked to read
// as the point it replaces, recorded in the manifest as a pending prune, and only then renamed
// over the file it replaces (one atomic rename; the file reads as the same point before and
// after). The manifest then lists what remains, and the files nothing lists any more are
// deleted last. A prune interrupted anywhere leaves a chain that verifies and restores as
// before or as after it, and the next operation that changes the chain completes it.
import { randomUUID } from 'node:crypto';
import { readdir, rename, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';

import { compareImages, qemuImg as defaultQemuImg } from '@qmpkit/image-tools';
import type { QemuImg } from '@qmpkit/image-tools';

import { digestFile } from './digest.js';
import { ManifestError } from './errors.js';
import { DEFAULT_FILE_MODE, checkFileMode, restrictFile } from './file-mode.js';
import { appendRunLog, backupLineage, chainsOf, readManifest, resolveBackupFile, writeManifest } from './manifest.js';
import type { Manifest, ManifestBackup, ManifestChain, ManifestDrive, PendingPrune } from './manifest.js';
import { processAlive } from './pending.js';
import type { CallOptions } from './qmp.js';
import { verifyChain } from './verify.js';
import type { VerifyReport } from './verify.js';

export interface PruneOptions extends CallOptions {
  /** Keep this many chains, the current one included (>= 1); delete the files of older ones. */
  keepChains?: number;
  /**
   * Keep this many restore points (backups) of the current chain (>= 1): the oldest kept
   * point becomes a standalone image holding everything before it, and the older points are
   * deleted. A differential at that boundary keeps the backup it is layered on as its base.
   */
  keepPoints?: number;
  /** Verify what remains (digests and qemu-img check of every file of the current chain; default true). */
  verify?: boolean;
  /** Mode of rewritten images and of the manifest (default 0o600). */
  fileMode?: number;
  qemuImg?: QemuImg;
}

export interface PruneResult {
  /** Ids of the chains removed. */
  removedChains: string[];
  /** Backups rewritten as standalone images, and the files each folded in. */
  merged: Array<{ node: string; file: string; mergedFrom: string[] }>;
  /** Files deleted (relative to the manifest's directory, as the manifest named them). */
  removedFiles: string[];
  /** The remaining current chain, verified (unless `verify: false`). */
  verify?: VerifyReport;
  manifest: Manifest;
}

function callOptions(options: CallOptions): CallOptions {
  const out: CallOptions = {};
  if (options.timeout !== undefined) out.timeout = options.timeout;
  if (options.signal) out.signal = options.signal;
  return out;
}

function checkKeep(name: string, value: number | undefined): void {
  if (value !== undefined && (!Number.isSafeInteger(value) || value < 1)) {
    throw new RangeError(`prune: ${name} must be a whole number of at least 1, got ${String(value)}`);
  }
}

async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined)) !== undefined;
}

function filesOf(chains: readonly ManifestChain[]): Set<string> {
  return new Set(chains.flatMap((c) => c.drives.flatMap((d) => d.backups.map((b) => b.file))));
}

/** Refuses to touch a chain another process is changing. */
function checkIdle(manifestPath: string, manifest: Manifest): void {
  if (manifest.pending) {
    throw new ManifestError(
      manifestPath,
      `backup run ${manifest.pending.run} is pending (in progress, or left by a process that died): let it end, or let the next backup resolve it, before pruning`,
    );
  }
  const prune = manifest.prune;
  if (prune && prune.pid !== process.pid && processAlive(prune.pid, prune.host)) {
    throw new ManifestError(manifestPath, `a prune by process ${prune.pid} is in progress`);
  }
}

/**
 * Finish a prune that was interrupted: rename the standalone images that are still beside the
 * files they replace, write the manifest as the prune left it, delete the files it no longer
 * lists. Idempotent. Returns the manifest as written (unchanged when no prune is pending).
 */
export async function completePrune(manifestPath: string, manifest: Manifest, options: { fileMode?: number } = {}): Promise<Manifest> {
  const prune = manifest.prune;
  if (!prune) return manifest;
  if (prune.pid !== process.pid && processAlive(prune.pid, prune.host)) {
    throw new ManifestError(manifestPath, `a prune by process ${prune.pid} is in progress`);
  }
  const mode = checkFileMode(options.fileMode ?? DEFAULT_FILE_MODE);
  for (const r of prune.replace) {
    const temp = resolveBackupFile(manifestPath, r.temp);
    if (await exists(temp)) await rename(temp, resolveBackupFile(manifestPath, r.file));
  }
  const next: Manifest = { ...manifest, drives: prune.drives, updated: new Date().toISOString() };
  delete next.prune;
  await writeManifest(manifestPath, next, { mode });
  const listed = filesOf(chainsOf(next));
  for (const file of prune.remove) {
    if (!listed.has(file)) await rm(resolveBackupFile(manifestPath, file), { force: true });
  }
  return next;
}

/** One drive's part of a keep-points prune. */
interface DrivePrune {
  node: string;
  /** The backup that becomes standalone (when it has a parent), holding everything before it. */
  base: ManifestBackup;
  keep: ManifestBackup[];
  drop: ManifestBackup[];
  /** Where the standalone image is written first (relative to the manifest's directory, like `base.file`). */
  temp?: string;
  digest?: { digest: string; size: number };
  mergedFrom: string[];
}

function planDrive(manifestPath: string, drive: ManifestDrive, keepPoints: number): DrivePrune | undefined {
  const backups = drive.backups;
  const first = backups.length - keepPoints;
  if (first <= 0) return undefined;
  // The oldest kept point, or (a differential) the backup it is layered on.
  let at = first;
  while (at > 0 && backups[at]?.kind === 'differential') at--;
  const base = backups[at] as ManifestBackup;
  const keep = [base, ...backups.slice(first).filter((b) => b !== base)];
  const drop = backups.filter((b) => !keep.includes(b));
  const kept = new Set(keep.map((b) => b.file));
  for (const b of keep) {
    if (b !== base && b.parent !== null && !kept.has(b.parent)) {
      throw new ManifestError(manifestPath, `cannot prune ${drive.node}: ${b.file} is layered on ${b.parent}, which would be removed`);
    }
  }
  if (drop.length === 0 && base.parent === null) return undefined;
  const mergedFrom = backupLineage(drive, base).slice(1).map((b) => b.file);
  return { node: drive.node, base, keep, drop, mergedFrom };
}

/**
 * Remove earlier chains (`keepChains`) and fold the oldest restore points of the current chain
 * into a standalone image (`keepPoints`), then verify what remains. Needs no QEMU: the chain's
 * bitmaps describe the changes since its newest backup, which a prune never removes.
 */
export async function pruneChain(manifestPath: string, options: PruneOptions): Promise<PruneResult> {
  checkKeep('keepChains', options.keepChains);
  checkKeep('keepPoints', options.keepPoints);
  if (options.keepChains === undefined && options.keepPoints === undefined) {
    throw new RangeError('prune: say what to keep (keepChains, keepPoints)');
  }
  const call = callOptions(options);
  const img = options.qemuImg ?? defaultQemuImg;
  const mode = checkFileMode(options.fileMode ?? DEFAULT_FILE_MODE);
  let manifest = await readManifest(manifestPath);
  if (!manifest) throw new ManifestError(manifestPath, 'does not exist');
  checkIdle(manifestPath, manifest);
  manifest = await completePrune(manifestPath, manifest, { fileMode: mode });
  await removeStaleTemps(manifestPath);

  const id = randomUUID();
  const history = manifest.history ?? [];
  const keptHistory = options.keepChains === undefined ? history : history.slice(0, options.keepChains - 1);
  const removedChains = history.slice(keptHistory.length);
  const plans = options.keepPoints === undefined ? [] : manifest.drives.map((d) => planDrive(manifestPath, d, options.keepPoints as number)).filter((p) => p !== undefined);

  const written: string[] = [];
  try {
    // The standalone images, each checked to read exactly as the point it replaces.
    for (const p of plans) {
      if (p.base.parent === null) continue;
      p.temp = `${p.base.file}.prune-${id.slice(0, 8)}.tmp`;
      const source = resolveBackupFile(manifestPath, p.base.file);
      const temp = resolveBackupFile(manifestPath, p.temp);
      written.push(temp);
      const compress = [p.base, ...p.drop].some((b) => b.compressed === true);
      await img.convert(source, temp, { format: 'qcow2', outputFormat: 'qcow2', ...(compress ? { compress: true } : {}), ...call });
      await restrictFile(temp, mode);
      const same = await compareImages(temp, source, { formatA: 'qcow2', formatB: 'qcow2', qemuImg: img, ...call });
      if (!same.identical) throw new ManifestError(manifestPath, `the standalone copy of ${p.base.file} does not read as it: ${same.message}`);
      p.digest = await digestFile(temp, call);
    }
  } catch (error) {
    await Promise.all(written.map((f) => rm(f, { force: true })));
    throw error;
  }

  const drives = manifest.drives.map((d) => {
    const p = plans.find((x) => x.node === d.node);
    if (!p) return d;
    const backups = p.keep.map((b) => {
      if (b !== p.base || !p.digest) return b;
      const base: ManifestBackup = { ...b, parent: null, fileSize: p.digest.size, digest: p.digest.digest, mergedFrom: [...p.mergedFrom, ...(b.mergedFrom ?? [])] };
      if ([p.base, ...p.drop].some((x) => x.compressed === true)) base.compressed = true;
      return base;
    });
    return { ...d, backups };
  });
  const remaining = filesOf([{ ...manifest, drives }, ...keptHistory]);
  const remove = [...filesOf([...removedChains, { chainId: '', version: 2, created: '', updated: '', drives: manifest.drives }])].filter(
    (f) => !remaining.has(f),
  );
  const pending: PendingPrune = {
    id,
    started: new Date().toISOString(),
    pid: process.pid,
    host: hostname(),
    replace: plans.filter((p) => p.temp && p.digest).map((p) => ({
      node: p.node,
      file: p.base.file,
      temp: p.temp as string,
      digest: p.digest?.digest as string,
      fileSize: p.digest?.size as number,
    })),
    remove,
    drives,
  };
  const withHistory: Manifest = { ...manifest };
  if (keptHistory.length > 0) withHistory.history = keptHistory;
  else delete withHistory.history;
  // From this write on, the prune is completed (never undone): by this call, or the next one.
  await writeManifest(manifestPath, { ...withHistory, prune: pending }, { mode });
  const next = await completePrune(manifestPath, { ...withHistory, prune: pending }, { fileMode: mode });
  await appendRunLog(manifestPath, { run: id, kind: 'prune', time: new Date().toISOString(), outcome: 'completed', files: remove }, { mode }).catch(
    () => undefined,
  );
  const result: PruneResult = {
    removedChains: removedChains.map((c) => c.chainId),
    merged: plans.filter((p) => p.digest).map((p) => ({ node: p.node, file: p.base.file, mergedFrom: p.mergedFrom })),
    removedFiles: remove,
    manifest: next,
  };
  if (options.verify !== false) {
    result.verify = await verifyChain(manifestPath, { ...call, qemuImg: img, throwOnFailure: false });
  }
  return result;
}

/** Standalone images of a prune that died before recording them (nothing refers to them). */
async function removeStaleTemps(manifestPath: string): Promise<void> {
  const dir = dirname(manifestPath);
  const names = await readdir(dir).catch(() => [] as string[]);
  await Promise.all(names.filter((n) => /\.prune-[0-9a-f]{8}\.tmp$/.test(n)).map((n) => rm(join(dir, n), { force: true })));
}
