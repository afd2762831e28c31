import { access, mkdtemp, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { qemuImg as defaultQemuImg } from '@qmpkit/image-tools';
import type { QemuImg } from '@qmpkit/image-tools';
import { ManifestError, TargetExistsError, VerifyError } from './errors.js';
import { readManifest, resolveBackupFile } from './manifest.js';
import type { Manifest, ManifestBackup, ManifestDrive } from './manifest.js';
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
  /** Throw `VerifyError` on any failure (default true); false returns the report only. */
  throwOnFailure?: boolean;
  qemuImg?: QemuImg;
}

export interface ImageVerdict {
  node: string;
  file: string;
  /** qemu-img check: clean, or what it found. */
  check: 'clean' | 'corrupted' | 'leaked';
  /** Against its reference, when one was given. */
  reference?: { file: string; identical: boolean; message: string };
}

export interface VerifyReport {
  ok: boolean;
  images: ImageVerdict[];
  /** Newest backup of each drive compared with its source, when one was given. */
  sources: Array<{ node: string; file: string; source: string; identical: boolean; message: string }>;
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

/**
 * Check every image of the chain with `qemu-img check`, compare backups with their reference
 * images, and the newest backup of each drive (through its backing chain) with the drive.
 */
export async function verifyChain(manifestPath: string, options: VerifyOptions = {}): Promise<VerifyReport> {
  const img = options.qemuImg ?? defaultQemuImg;
  const manifest = await load(manifestPath);
  const report: VerifyReport = { ok: true, images: [], sources: [], failures: [] };
  const drives = manifest.drives.filter((d) => !options.nodes || options.nodes.includes(d.node));
  for (const drive of drives) {
    for (const backup of drive.backups) {
      const file = resolveBackupFile(manifestPath, backup.file);
      const checked = await img.check(file, { format: 'qcow2', ...callOptions(options) });
      const verdict: ImageVerdict = { node: drive.node, file: backup.file, check: checked.status };
      if (checked.status !== 'clean') report.failures.push(`${backup.file}: qemu-img check found the image ${checked.status}`);
      const reference = options.references?.[backup.file];
      if (reference !== undefined) {
        const cmp = await img.compare(file, reference, { formatA: 'qcow2', ...callOptions(options) });
        verdict.reference = { file: reference, identical: cmp.identical, message: cmp.message };
        if (!cmp.identical) report.failures.push(`${backup.file} differs from ${reference}: ${cmp.message}`);
      }
      report.images.push(verdict);
    }
    const source = options.sources?.[drive.node];
    const newest = drive.backups[drive.backups.length - 1];
    if (source !== undefined && newest) {
      const file = resolveBackupFile(manifestPath, newest.file);
      const cmp = await img.compare(file, source, { formatA: 'qcow2', forceShare: true, ...callOptions(options) });
      report.sources.push({ node: drive.node, file: newest.file, source, identical: cmp.identical, message: cmp.message });
      if (!cmp.identical) report.failures.push(`${newest.file} differs from the drive ${source}: ${cmp.message}`);
    }
  }
  report.ok = report.failures.length === 0;
  if (!report.ok && options.throwOnFailure !== false) throw new VerifyError(report.failures);
  return report;
}

export interface RestoreOptions extends CallOptions {
  /** Which drive (default: the manifest's only drive). */
  node?: string;
  /** Up to which backup: its index in the drive's list, or its file name. Default: the newest. */
  upTo?: number | string;
  /** Output format (default qcow2). */
  format?: 'qcow2' | 'raw';
  /** Replace `output` if it exists. */
  overwrite?: boolean;
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

export function pickDrive(manifestPath: string, manifest: Manifest, node: string | undefined): ManifestDrive {
  if (node === undefined) {
    if (manifest.drives.length !== 1) {
      throw new ManifestError(manifestPath, `has ${manifest.drives.length} drives: say which node to restore`);
    }
    return manifest.drives[0] as ManifestDrive;
  }
  const drive = manifest.drives.find((d) => d.node === node);
  if (!drive) throw new ManifestError(manifestPath, `has no drive "${node}"`);
  return drive;
}

/**
 * Flatten the chain of one drive up to a chosen backup into a standalone image (`qemu-img
 * convert` of that backup reads through its backing files). Written beside `output` first and
 * renamed, so a failed restore leaves no half image under the output name. Returns the output path.
 */
export async function restoreChain(manifestPath: string, output: string, options: RestoreOptions = {}): Promise<string> {
  const img = options.qemuImg ?? defaultQemuImg;
  const manifest = await load(manifestPath);
  const drive = pickDrive(manifestPath, manifest, options.node);
  const backup = pickBackup(manifestPath, drive, options.upTo);
  let outputExists = true;
  try {
    await access(output);
  } catch {
    outputExists = false;
  }
  if (outputExists && options.overwrite !== true) throw new TargetExistsError(output);
  const scratch = await mkdtemp(join(dirname(output), '.qmpkit-restore-'));
  try {
    const temp = join(scratch, 'image');
    await img.convert(resolveBackupFile(manifestPath, backup.file), temp, {
      format: 'qcow2',
      outputFormat: options.format ?? 'qcow2',
      ...callOptions(options),
    });
    await rename(temp, output);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
  return output;
}
