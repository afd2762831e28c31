import { mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ToolError, qemuImg as defaultQemuImg } from '@qmpkit/image-tools';
import type { QemuImg } from '@qmpkit/image-tools';
import { digestFile, fileProblem } from './digest.js';
import { ManifestError, TargetExistsError, VerifyError } from './errors.js';
import { DEFAULT_FILE_MODE, checkFileMode, restrictFile } from './file-mode.js';
import { acceptedDigests, backupLineage, findChain, readManifest, resolveBackupFile } from './manifest.js';
import type { Manifest, ManifestBackup, ManifestChain, ManifestDrive } from './manifest.js';
import type { CallOptions } from './qmp.js';

export interface VerifyOptions extends CallOptions {
  /**
   * Per node: the drive's image to compare the newest backup (read through its backing
   * chain) with. The image may be open in a QEMU that no longer writes to it: it is read with
   * qemu-img's force-share (-U).
   */
  sources?: Readonly<Record<string, string>>;
  /** Per backup file (as in the manifest): a reference image it must equal, e.g. a full backup taken at the same moment. */
  references?: Readonly<Record<string, string>>;
  /** Only these nodes (default: every drive of the manifest). */
  nodes?: readonly string[];
  /** Which chain of the directory (its id, or its first 8 hex digits); default the current one. */
  chain?: string;
  /** Throw `VerifyError` on any failure (default true); false returns the report only. */
  throwOnFailure?: boolean;
  qemuImg?: QemuImg;
}

export interface ImageVerdict {
  node: string;
  file: string;
  /**
   * qemu-img check: clean, or what it found; 'missing' when the file is not there,
   * 'unreadable' when qemu-img could not check it at all (not an image, truncated header).
   */
  check: 'clean' | 'corrupted' | 'leaked' | 'missing' | 'unreadable';
  /**
   * The file against the digest recorded when it was made: 'ok', 'mismatch' (it changed),
   * 'missing', or 'unrecorded' (a manifest of version 1 has none).
   */
  digest: 'ok' | 'mismatch' | 'missing' | 'unrecorded';
  /** Against its reference, when one was given. */
  reference?: { file: string; identical: boolean; message: string };
}

export interface VerifyReport {
  ok: boolean;
  images: ImageVerdict[];
  /** Newest backup of each drive compared with its source, when one was given. */
  sources: Array<{ node: string; file: string; source: string; identical: boolean; message: string }>;
  /** One line per problem, each naming the file. */
  failures: string[];
}

async function load(manifestPath: string): Promise<Manifest> {
  const manifest = await readManifest(manifestPath);
  if (!manifest) throw new ManifestError(manifestPath, 'does not exist');
  return manifest;
}

function callOptions(options: CallOptions): CallOptions {
  const out: CallOptions = {};
  if (options.timeout !== undefined) out.timeout = options.timeout;
  if (options.signal) out.signal = options.signal;
  return out;
}

/** A tool's failure as one line: its first stderr line, not the whole error object. */
function toolFailure(error: unknown): string {
  if (ToolError.isInstance(error)) {
    const line = error.stderr.trim().split('\n')[0]?.trim();
    return line || error.message.split('\n')[0] || 'it failed';
  }
  return error instanceof Error ? (error.message.split('\n')[0] ?? 'it failed') : String(error);
}

/**
 * Check one recorded file without anything but itself: present, of the recorded size, with
 * the recorded digest (one read of the file; during an unfinished prune, also the digest of
 * the standalone image replacing it). Returns the failure line, if any.
 */
export async function checkBackupFile(
  manifestPath: string,
  backup: ManifestBackup,
  options: CallOptions = {},
  manifest?: Manifest,
): Promise<{ digest: ImageVerdict['digest']; failure?: string }> {
  const path = resolveBackupFile(manifestPath, backup.file);
  const problem = await fileProblem(path, undefined);
  if (problem === 'missing') return { digest: 'missing', failure: `${backup.file}: missing` };
  if (backup.digest === undefined) return { digest: 'unrecorded' };
  const now = await digestFile(path, callOptions(options));
  const accepted = manifest ? acceptedDigests(manifest, backup) : [{ digest: backup.digest, ...(backup.fileSize === undefined ? {} : { fileSize: backup.fileSize }) }];
  if (accepted.some((a) => now.digest === a.digest && (a.fileSize === undefined || now.size === a.fileSize))) return { digest: 'ok' };
  const size = backup.fileSize !== undefined && now.size !== backup.fileSize ? ` (${now.size} bytes, recorded ${backup.fileSize})` : '';
  return { digest: 'mismatch', failure: `${backup.file}: its content changed since it was made: digest ${now.digest}, recorded ${backup.digest}${size}` };
}

/**
 * Check every file of the chain on its own, with no source needed: present, with the digest
 * recorded when it was made, and clean to `qemu-img check`; compare backups with their
 * reference images, and the newest backup of each drive (through its backing chain) with the
 * drive. Every problem is a line of `failures` naming the file; a tool that cannot read a
 * file is such a line too, never an exception.
 */
export async function verifyChain(manifestPath: string, options: VerifyOptions = {}): Promise<VerifyReport> {
  const img = options.qemuImg ?? defaultQemuImg;
  const call = callOptions(options);
  const manifest = await load(manifestPath);
  const chain = findChain(manifestPath, manifest, options.chain);
  const report: VerifyReport = { ok: true, images: [], sources: [], failures: [] };
  const drives = chain.drives.filter((d) => !options.nodes || options.nodes.includes(d.node));
  for (const drive of drives) {
    const damaged = new Set<string>();
    for (const backup of drive.backups) {
      const file = resolveBackupFile(manifestPath, backup.file);
      // The digest and qemu-img check read the same file: run them side by side.
      const [digest, check] = await Promise.all([
        checkBackupFile(manifestPath, backup, call, manifest),
        img.check(file, { format: 'qcow2', ...call }).then(
          (c) => ({ status: c.status, failure: undefined as string | undefined }),
          (error: unknown) => ({ status: 'unreadable' as const, failure: toolFailure(error) }),
        ),
      ]);
      const verdict: ImageVerdict = {
        node: drive.node,
        file: backup.file,
        check: digest.digest === 'missing' ? 'missing' : check.status,
        digest: digest.digest,
      };
      if (digest.failure) report.failures.push(digest.failure);
      if (digest.digest !== 'missing') {
        if (check.status === 'unreadable') report.failures.push(`${backup.file}: qemu-img check cannot read it: ${check.failure ?? ''}`);
        else if (check.status !== 'clean') report.failures.push(`${backup.file}: qemu-img check found the image ${check.status}`);
      }
      if (digest.failure || verdict.check !== 'clean') damaged.add(backup.file);
      const reference = options.references?.[backup.file];
      if (reference !== undefined && !damaged.has(backup.file)) {
        try {
          const cmp = await img.compare(file, reference, { formatA: 'qcow2', ...call });
          verdict.reference = { file: reference, identical: cmp.identical, message: cmp.message };
          if (!cmp.identical) report.failures.push(`${backup.file} differs from ${reference}: ${cmp.message}`);
        } catch (error) {
          report.failures.push(`${backup.file}: cannot be compared with ${reference}: ${toolFailure(error)}`);
        }
      }
      report.images.push(verdict);
    }
    const source = options.sources?.[drive.node];
    const newest = drive.backups[drive.backups.length - 1];
    if (source !== undefined && newest) {
      const broken = backupLineage(drive, newest).find((b) => damaged.has(b.file));
      if (broken) {
        report.failures.push(`${newest.file} was not compared with the drive ${source}: ${broken.file}, which it reads, failed`);
        continue;
      }
      const file = resolveBackupFile(manifestPath, newest.file);
      try {
        const cmp = await img.compare(file, source, { formatA: 'qcow2', forceShare: true, ...call });
        report.sources.push({ node: drive.node, file: newest.file, source, identical: cmp.identical, message: cmp.message });
        if (!cmp.identical) report.failures.push(`${newest.file} differs from the drive ${source}: ${cmp.message}`);
      } catch (error) {
        report.sources.push({ node: drive.node, file: newest.file, source, identical: false, message: toolFailure(error) });
        report.failures.push(`${newest.file} cannot be compared with the drive ${source}: ${toolFailure(error)}`);
      }
    }
  }
  report.ok = report.failures.length === 0;
  if (!report.ok && options.throwOnFailure !== false) throw new VerifyError(report.failures);
  return report;
}

export interface RestoreOptions extends CallOptions {
  /** Which drive (default: the manifest's only drive). */
  node?: string;
  /** Which chain of the directory (its id, or its first 8 hex digits); default the current one. */
  chain?: string;
  /** Up to which backup: its index in the drive's list, or its file name. Default: the newest. */
  upTo?: number | string;
  /** Output format (default qcow2). */
  format?: 'qcow2' | 'raw';
  /** Replace `output` if it exists. */
  overwrite?: boolean;
  /**
   * Check the digest of every file the restore reads before reading it (default true): a
   * damaged file fails the restore with `VerifyError` naming it, before anything is written.
   */
  checkDigests?: boolean;
  /** Mode of the restored image, whatever the umask (default 0o600). */
  fileMode?: number;
  qemuImg?: QemuImg;
}

export function pickBackup(manifestPath: string, drive: ManifestDrive, upTo: number | string | undefined): ManifestBackup {
  const backups = drive.backups;
  let backup: ManifestBackup | undefined;
  if (upTo === undefined) backup = backups[backups.length - 1];
  else if (typeof upTo === 'number') backup = backups[upTo < 0 ? backups.length + upTo : upTo];
  else backup = backups.find((b) => b.file === upTo || resolveBackupFile(manifestPath, b.file) === upTo);
  if (!backup) throw new ManifestError(manifestPath, `drive ${drive.node} has no backup ${String(upTo ?? '(none at all)')}`);
  return backup;
}

export function pickDrive(manifestPath: string, chain: Pick<ManifestChain, 'drives'>, node: string | undefined): ManifestDrive {
  if (node === undefined) {
    if (chain.drives.length !== 1) {
      throw new ManifestError(manifestPath, `has ${chain.drives.length} drives (${chain.drives.map((d) => d.node).join(', ')}): say which node to restore`);
    }
    return chain.drives[0] as ManifestDrive;
  }
  const drive = chain.drives.find((d) => d.node === node);
  if (!drive) throw new ManifestError(manifestPath, `has no drive "${node}"`);
  return drive;
}

/** The name a restore into a directory gives its image: the backup's name, `.restored.<format>`. */
export function restoredName(backup: ManifestBackup, format: 'qcow2' | 'raw'): string {
  return `${basename(backup.file).replace(/\.qcow2$/, '')}.restored.${format}`;
}

/**
 * Flatten the chain of one drive up to a chosen backup into a standalone image (`qemu-img
 * convert` of that backup reads through its backing files). `output` may be an existing
 * directory: the image is then written inside it (`restoredName`). Every file it reads is
 * checked against its recorded digest first. Written beside `output` first and renamed, so a
 * failed restore leaves no half image under the output name. Returns the output path.
 */
export async function restoreChain(manifestPath: string, output: string, options: RestoreOptions = {}): Promise<string> {
  const img = options.qemuImg ?? defaultQemuImg;
  const fileMode = checkFileMode(options.fileMode ?? DEFAULT_FILE_MODE);
  const manifest = await load(manifestPath);
  const drive = pickDrive(manifestPath, findChain(manifestPath, manifest, options.chain), options.node);
  const backup = pickBackup(manifestPath, drive, options.upTo);
  if ((await stat(output).catch(() => undefined))?.isDirectory() === true) {
    output = join(output, restoredName(backup, options.format ?? 'qcow2'));
  }
  const existing = await stat(output).catch(() => undefined);
  if (existing?.isDirectory() === true) throw new TargetExistsError(output);
  if (existing && options.overwrite !== true) throw new TargetExistsError(output);
  if (options.checkDigests !== false) {
    const lineage = backupLineage(drive, backup);
    const last = lineage[lineage.length - 1];
    const failures: string[] = [];
    if (last && last.parent !== null) failures.push(`${last.file}: its parent ${last.parent} is not in the manifest`);
    const checked = await Promise.all(lineage.map((b) => checkBackupFile(manifestPath, b, callOptions(options), manifest)));
    for (const c of checked) if (c.failure) failures.push(c.failure);
    if (failures.length > 0) throw new VerifyError(failures);
  }
  const scratch = await mkdtemp(join(dirname(output), '.qmpkit-restore-'));
  try {
    const temp = join(scratch, 'image');
    await img.convert(resolveBackupFile(manifestPath, backup.file), temp, {
      format: 'qcow2',
      outputFormat: options.format ?? 'qcow2',
      ...callOptions(options),
    });
    await restrictFile(temp, fileMode);
    await rename(temp, output);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
  return output;
}
