// What a chain must satisfy before it grows, in two parts: its files (no QEMU needed: every
// file present, of the size recorded with its digest) and its drives (the chain's own bitmap,
// the mark of its last backup, the size history). `check()` and `status` report both.
import { bitmapStatusOf } from './bitmaps.js';
import type { BitmapStatus, ResolvedNode } from './bitmaps.js';
import { fileProblem } from './digest.js';
import type { ChainBrokenReason } from './errors.js';
import { chainsOf, findChain, lastBase, readManifest, resolveBackupFile } from './manifest.js';
import type { Manifest, ManifestChain, ManifestDrive, PendingPrune, PendingRun } from './manifest.js';
import type { PendingRunState } from './pending.js';

/** One recorded file of the chain as it is on disk. */
export interface ChainFileStatus {
  node: string;
  file: string;
  kind: string;
  /** 'ok', 'missing', or 'size' (not the size recorded with its digest). */
  state: 'ok' | 'missing' | 'size';
  /** A digest was recorded for it (manifest version 2). */
  digest: boolean;
}

/** One chain of a directory, in short. */
export interface ChainSummary {
  chainId: string;
  /** The chain backups continue (the others are history, kept until pruned). */
  current: boolean;
  version: 1 | 2;
  created: string;
  updated: string;
  /** Backups of its first drive (every drive has one per run). */
  backups: number;
  nodes: string[];
}

/** A chain as its directory shows it, without QEMU. */
export interface ChainStatus {
  manifestPath: string;
  manifest: Manifest | undefined;
  /** The chain `files` describes: the current one unless another was asked for. */
  chain: ManifestChain | undefined;
  /** Every chain of the directory, the current one first. */
  chains: ChainSummary[];
  /** Written by @qmpkit/backup 0.1: cannot be continued (see 'legacy-bitmap'). */
  legacy: boolean;
  files: ChainFileStatus[];
  pending: PendingRun | undefined;
  /** A prune that was interrupted (the next change to the chain completes it). */
  prune: PendingPrune | undefined;
}

export type DriveCheckReason = ChainBrokenReason | 'run-pending';

export interface DriveCheck {
  node: string;
  ok: boolean;
  /** Why the chain cannot continue; 'run-pending': an earlier run's job is still in QEMU (see `PendingRunError`). */
  reason?: DriveCheckReason;
  detail?: string;
  bitmap?: BitmapStatus;
  driveSize?: number;
  /** The chain's mark on the drive: its bitmap, and the dirty bytes QEMU reports against those the chain set. */
  mark?: { bitmap: string; count: number; expected: number } | null;
  /**
   * The next backup copies everything from `coverFrom` to `coverTo` besides what the bitmap
   * recorded: the drive was shrunk to `coverFrom` with `chain.resize()` and grew back, and
   * the chain still holds the old data up to `coverTo` (the size of its last base backup).
   */
  coverFrom?: number;
  coverTo?: number;
  /** Files of the chain that are missing or damaged. */
  files?: ChainFileStatus[];
}

/**
 * Check every recorded file of a chain (the manifest's current one by default): present, and
 * of the recorded size (or, during an unfinished prune, the size of its replacement). No file is read.
 */
export async function inspectChainFiles(manifestPath: string, manifest: Manifest, chain: Pick<ManifestChain, 'drives'> = manifest): Promise<ChainFileStatus[]> {
  const files = chain.drives.flatMap((d) => d.backups.map((b) => ({ d, b })));
  return Promise.all(
    files.map(async ({ d, b }) => {
      const path = resolveBackupFile(manifestPath, b.file);
      let problem = await fileProblem(path, b.fileSize);
      const replacement = manifest.prune?.replace.find((r) => r.file === b.file);
      if (problem === 'size' && replacement && (await fileProblem(path, replacement.fileSize)) === undefined) problem = undefined;
      return { node: d.node, file: b.file, kind: b.kind, state: problem ?? 'ok', digest: b.digest !== undefined };
    }),
  );
}

/**
 * A directory's chains as the files show them (no QEMU needed): every chain in short, and the
 * files of one (`chain`: its id or first 8 hex digits; default the current one).
 */
export async function inspectChain(manifestPath: string, options: { chain?: string } = {}): Promise<ChainStatus> {
  const manifest = await readManifest(manifestPath);
  if (!manifest) {
    return { manifestPath, manifest, chain: undefined, chains: [], legacy: false, files: [], pending: undefined, prune: undefined };
  }
  const chain = findChain(manifestPath, manifest, options.chain);
  const chains = chainsOf(manifest).map((c, i) => ({
    chainId: c.chainId,
    current: i === 0,
    version: c.version,
    created: c.created,
    updated: c.updated,
    backups: c.drives[0]?.backups.length ?? 0,
    nodes: c.drives.map((d) => d.node),
  }));
  return {
    manifestPath,
    manifest,
    chain,
    chains,
    legacy: chain.version === 1,
    files: await inspectChainFiles(manifestPath, manifest, chain),
    pending: manifest.pending,
    prune: manifest.prune,
  };
}

/** The mark bits' expected dirty bytes: one granule per bit. */
export function markExpected(drive: ManifestDrive): number {
  return (drive.mark?.bits.length ?? 0) * drive.granularity;
}

/** The offset of the last granule of a drive of `size` bytes. */
export function lastGranule(size: number, granularity: number): number {
  return Math.floor(Math.max(0, size - 1) / granularity) * granularity;
}

/** The smallest size the drive had since its last backup, as `chain.resize()` recorded it. */
export function smallestSize(drive: ManifestDrive): number {
  return Math.min(drive.driveSize, ...(drive.resizes ?? []).map((r) => r.to));
}

/** The size the chain last knew the drive to have: after its last recorded resize, else at its last backup. */
export function lastKnownSize(drive: ManifestDrive): number {
  const resizes = drive.resizes ?? [];
  return resizes.length > 0 ? (resizes[resizes.length - 1]?.to ?? drive.driveSize) : drive.driveSize;
}

export interface DriveFacts {
  manifest: Manifest;
  drive: ManifestDrive;
  files: readonly ChainFileStatus[];
  pending: PendingRunState | undefined;
  resolved: ResolvedNode;
  allowGrowth: boolean | undefined;
}

/**
 * Whether an incremental can continue the chain of one drive, from what QEMU reports now.
 * The checks run in an order that names the first cause: an earlier run still in QEMU, the
 * manifest's age, the files, the chain's own bitmap, its mark, the size history.
 */
export function checkDrive(facts: DriveFacts): DriveCheck {
  const { manifest, drive, resolved } = facts;
  const node = drive.node;
  const fail = (reason: DriveCheckReason, detail: string, extra: Partial<DriveCheck> = {}): DriveCheck => ({
    node,
    ok: false,
    reason,
    detail,
    ...extra,
  });
  const bitmaps = resolved.info['dirty-bitmaps'] ?? [];
  const driveSize = resolved.info.image?.['virtual-size'];
  const info = bitmaps.find((b) => b.name === drive.bitmap);
  const extra: Partial<DriveCheck> = {};
  if (info) extra.bitmap = bitmapStatusOf(info);
  if (driveSize !== undefined) extra.driveSize = driveSize;
  const damaged = facts.files.filter((f) => f.node === node && f.state !== 'ok');
  if (damaged.length > 0) extra.files = damaged;

  const pending = facts.pending;
  if (pending && pending.run.mode === 'pull') {
    return fail(
      'run-pending',
      pending.ownerAlive
        ? `the pull-mode ${pending.run.kind} backup run ${pending.run.run} is in progress (process ${String(pending.run.pid)} is copying it)`
        : `the pull-mode ${pending.run.kind} backup run ${pending.run.run} was left by process ${String(pending.run.pid)}, which is gone; the next backup takes down what it left in QEMU and merges its frozen bitmap back`,
      extra,
    );
  }
  if (pending && pending.state !== 'gone') {
    const jobs = pending.jobs.map((j) => `${j.id} (${j.status})`).join(', ');
    return fail(
      'run-pending',
      pending.state === 'running'
        ? `the ${pending.run.kind} backup run ${pending.run.run} still has job ${jobs} in QEMU${pending.ownerAlive ? ` (process ${String(pending.run.pid)} is running it)` : `, and the process that started it (${String(pending.run.pid)}) is gone: cancel it with cancelOrphanJob / --cancel-orphan-job`}`
        : `the ${pending.run.kind} backup run ${pending.run.run} ended while nobody watched (job ${jobs}); the next backup records its outcome`,
      extra,
    );
  }
  if (manifest.version === 1) {
    return fail(
      'legacy-bitmap',
      `the chain was written by @qmpkit/backup 0.1, where every chain on a drive shared the bitmap "${drive.bitmap}": another chain may have reset it, so its changes cannot be trusted`,
      extra,
    );
  }
  const base = lastBase(drive);
  if (!base) return fail('no-full-backup', 'the chain has no full backup yet', extra);
  const baseState = facts.files.find((f) => f.node === node && f.file === base.file)?.state;
  if (baseState === 'missing') return fail('last-backup-missing', `its last backup ${base.file} is missing`, extra);
  if (damaged.length > 0) {
    const f = damaged[0] as ChainFileStatus;
    return fail(
      'backup-damaged',
      `${f.file} ${f.state === 'missing' ? 'is missing' : 'is not the size recorded with its digest'}${damaged.length > 1 ? ` (and ${damaged.length - 1} more)` : ''}`,
      extra,
    );
  }
  if (!info) {
    const now = resolved.info.file;
    if (drive.image !== undefined && now !== drive.image) {
      return fail(
        'drive-changed',
        `the drive does not carry the chain's bitmap "${drive.bitmap}" and now holds ${now}, not ${drive.image} (another drive under the same name, or another VM)`,
        extra,
      );
    }
    return fail(
      'bitmap-missing',
      `the drive does not carry the chain's bitmap "${drive.bitmap}" (QEMU was restarted without it, it was removed, or this is another VM's drive)`,
      extra,
    );
  }
  const bitmap = bitmapStatusOf(info);
  if (bitmap.inconsistent) {
    return fail('bitmap-inconsistent', `bitmap "${drive.bitmap}" is inconsistent (QEMU stopped without storing it)`, extra);
  }
  if (!bitmap.recording) {
    return fail('bitmap-disabled', `bitmap "${drive.bitmap}" is disabled, so writes may be missing from it`, extra);
  }
  if (bitmap.granularity !== drive.granularity) {
    return fail(
      'granularity-mismatch',
      `bitmap "${drive.bitmap}" has granularity ${bitmap.granularity}, the chain was taken with ${drive.granularity}`,
      extra,
    );
  }
  if (drive.mark) {
    const markInfo = bitmaps.find((b) => b.name === drive.mark?.bitmap);
    const expected = markExpected(drive);
    if (!markInfo) {
      const others = bitmaps.filter((b) => b.name?.startsWith(`${drive.bitmap}-`)).map((b) => b.name ?? '');
      return fail(
        'bitmap-stale',
        others.length > 0
          ? `the drive carries the chain's bitmap with mark ${others.join(', ')}, not ${drive.mark.bitmap} of the last backup: the image is an older copy, or another copy of this chain's directory continued it`
          : `the drive carries the chain's bitmap but not its mark ${drive.mark.bitmap}: it was removed, or the image is a copy taken before the last backup`,
        { ...extra, mark: null },
      );
    }
    extra.mark = { bitmap: drive.mark.bitmap, count: markInfo.count, expected };
    if (markInfo.count < expected) {
      return fail(
        'size-mismatch',
        `the drive was shrunk below ${Math.max(...drive.mark.bits) + drive.granularity} bytes since the last backup without chain.resize() (the chain's mark lost bits): what was cut and grown back cannot be told apart from unchanged data`,
        extra,
      );
    }
    if (markInfo.count > expected || markInfo.recording) {
      return fail('bitmap-stale', `the chain's mark ${drive.mark.bitmap} was changed by someone else`, extra);
    }
  }
  // Checked after the bitmap: after a restart of QEMU, the missing bitmap is the cause to name.
  if (pending?.state === 'gone' && pending.run.kind !== 'full') {
    return fail(
      'interrupted',
      `the ${pending.run.kind} backup run ${pending.run.run} (started ${pending.run.started}) never recorded its outcome and QEMU no longer knows its job, so the bitmap may have been reset without a backup`,
      extra,
    );
  }
  if (driveSize === undefined) return fail('size-mismatch', 'the drive reports no size', extra);
  const known = lastKnownSize(drive);
  if (driveSize < known) {
    return fail(
      'size-mismatch',
      `the drive is ${driveSize} bytes, the chain expects ${known}: it was shrunk without chain.resize()`,
      extra,
    );
  }
  if (driveSize > known) {
    if (facts.allowGrowth === false) {
      return fail('size-mismatch', `the drive grew from ${known} to ${driveSize} bytes (allowGrowth: false)`, extra);
    }
    if (!drive.mark || drive.mark.bits.length === 0) {
      return fail(
        'size-mismatch',
        `the drive grew from ${known} to ${driveSize} bytes without chain.resize(), and this QEMU gives no way to see whether it was shrunk first`,
        extra,
      );
    }
  }
  const smallest = smallestSize(drive);
  const stale = Math.min(base.driveSize, driveSize);
  if (smallest < stale) {
    extra.coverFrom = smallest;
    extra.coverTo = stale;
  }
  return { node, ok: true, ...extra };
}
