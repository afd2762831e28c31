import { randomUUID } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { ManifestError } from './errors.js';

export type BackupKind = 'full' | 'incremental' | 'differential';

/** One backup of one drive. */
export interface ManifestBackup {
  kind: BackupKind;
  /** The target image, relative to the manifest's directory unless absolute. */
  file: string;
  /** The image this one is layered on (its backing file), null for a full backup. */
  parent: string | null;
  /** When the job ended (ISO 8601). */
  time: string;
  /** Bytes QEMU copied: the job's `len` (for an incremental, the bitmap's dirty bytes at its start). */
  bytes: number;
  /** The drive's virtual size when this backup was taken. */
  driveSize: number;
  /** Only backups that completed are recorded: a failed one is removed with its target. */
  result: 'completed';
  jobId: string;
  /** QEMU's duration of the job (ms, from its event timestamps). */
  durationMs: number;
  /** Backups of drives taken by one transaction share a run id. */
  run: string;
}

/** One drive's chain. */
export interface ManifestDrive {
  /** Device (drive id) or node-name the backups read from; the bitmap lives on it. */
  node: string;
  bitmap: string;
  granularity: number;
  persistent: boolean;
  /** Virtual size the chain expects of the drive (grows with the drive). */
  driveSize: number;
  targetFormat: 'qcow2';
  backups: ManifestBackup[];
}

/**
 * A run that was started and whose outcome was never recorded (the helper lost track of its
 * jobs, or its process died). QEMU may have reset the bitmaps for it, so the chain cannot be
 * continued until a new full backup: `check()` reports 'interrupted'.
 */
export interface PendingRun {
  run: string;
  kind: BackupKind;
  started: string;
  /** Target files of the run (they may be left on disk). */
  targets: string[];
}

export interface Manifest {
  format: 'qmpkit-backup-chain';
  version: 1;
  chainId: string;
  created: string;
  updated: string;
  drives: ManifestDrive[];
  pending?: PendingRun;
}

export const MANIFEST_FILE = 'manifest.json';

export function newChainId(): string {
  return randomUUID();
}

export function resolveBackupFile(manifestPath: string, file: string): string {
  return isAbsolute(file) ? file : join(dirname(manifestPath), file);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function validate(path: string, value: unknown): Manifest {
  const fail = (what: string): never => {
    throw new ManifestError(path, what);
  };
  if (!isObject(value)) return fail('is not a JSON object');
  if (value['format'] !== 'qmpkit-backup-chain') return fail('is not a qmpkit backup manifest (format field)');
  if (value['version'] !== 1) return fail(`has unsupported version ${String(value['version'])}`);
  if (typeof value['chainId'] !== 'string') return fail('has no chainId');
  const drives = value['drives'];
  if (!Array.isArray(drives) || drives.length === 0) return fail('lists no drives');
  drives.forEach((d: unknown, i) => {
    if (!isObject(d)) return fail(`drives[${i}] is not an object`);
    for (const key of ['node', 'bitmap'] as const) if (typeof d[key] !== 'string') fail(`drives[${i}].${key} is missing`);
    for (const key of ['granularity', 'driveSize'] as const) {
      if (typeof d[key] !== 'number') fail(`drives[${i}].${key} is missing`);
    }
    if (!Array.isArray(d['backups'])) return fail(`drives[${i}].backups is missing`);
    (d['backups'] as unknown[]).forEach((b, j) => {
      if (!isObject(b) || typeof b['file'] !== 'string' || typeof b['kind'] !== 'string') {
        fail(`drives[${i}].backups[${j}] has no file or kind`);
      }
    });
    return undefined;
  });
  const pending = value['pending'];
  if (pending !== undefined && (!isObject(pending) || typeof pending['run'] !== 'string')) fail('pending is malformed');
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
 * one, so a reader sees the old or the new manifest, never a torn one.
 *
 * No fsync: a power loss could bring back the previous manifest, but QEMU on the same host
 * goes down with it, and the bitmaps it then reports (missing, or inconsistent) refuse the
 * chain anyway; a manifest that names a run in `pending` is refused too. Skipping the flush
 * keeps the write well under a millisecond.
 */
export async function writeManifest(path: string, manifest: Manifest): Promise<void> {
  const temp = `${path}.${process.pid}.${randomUUID().slice(0, 8)}.tmp`;
  try {
    await writeFile(temp, `${JSON.stringify(manifest, null, 2)}\n`, { encoding: 'utf8', flag: 'wx' });
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
