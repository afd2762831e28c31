import { randomUUID } from 'node:crypto';
import { access, mkdir, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { UnsupportedQcow2LayoutError, createQcow2Image, qemuImg as defaultQemuImg } from '@qmpkit/image-tools';
import type { QemuImg } from '@qmpkit/image-tools';
import { asBlockdevBackup, attachTarget, chainBackupCommand, detachTargets, type TargetNode } from './backup-command.js';
import { bitmapStatusOf, checkGranularity, removeBitmap, resolveNode } from './bitmaps.js';
import type { BitmapStatus } from './bitmaps.js';
import {
  BackupJobError,
  ManifestError,
  NewFullBackupRequiredError,
  TargetExistsError,
} from './errors.js';
import type { ChainBrokenReason } from './errors.js';
import type { BackupJob, BackupJobOptions, JobProgress, JobResult } from './job.js';
import type { DriveBackup } from './qapi.js';
import {
  MANIFEST_FILE,
  lastBase,
  newChainId,
  readManifest,
  resolveBackupFile,
  writeManifest,
} from './manifest.js';
import type { BackupKind, Manifest, ManifestBackup, ManifestDrive } from './manifest.js';
import type { BackupQmp, CallOptions } from './qmp.js';
import { Transaction } from './transaction.js';
import { restoreChain, verifyChain } from './verify.js';
import type { RestoreOptions, VerifyOptions, VerifyReport } from './verify.js';

export const DEFAULT_BITMAP = 'qmpkit-backup';

export interface ChainDriveOptions {
  /** Device (drive id) or node-name to back up; the bitmap is created on it. */
  node: string;
  /** Bitmap name. Default 'qmpkit-backup'. */
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
}

export interface ChainBackupOptions extends CallOptions {
  /** Replace a target file that already exists (otherwise `TargetExistsError`). */
  overwrite?: boolean;
  /** Rate limit of each job, bytes per second. */
  speed?: number;
  onProgress?: (progress: JobProgress & { node: string }) => void;
  progressInterval?: number;
  /** Called with each job as soon as it has started (e.g. to pause or watch it). */
  onJob?: (job: BackupJob, node: string) => void;
}

export interface ChainIncrementalOptions extends ChainBackupOptions {
  /** When the chain cannot be continued, take a new full backup instead of throwing. */
  fullIfBroken?: boolean;
  /** Accept a drive that grew since the last backup (default true); a shrunk drive is always refused. */
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
}

export interface DriveCheck {
  node: string;
  ok: boolean;
  reason?: ChainBrokenReason;
  detail?: string;
  bitmap?: BitmapStatus;
  driveSize?: number;
}

/** An empty qcow2 backup target: its virtual size and, for a layered backup, its parent. */
interface TargetImage {
  size: number;
  backingFile?: string;
  backingFormat?: string;
}

interface PreparedDrive {
  options: ChainDriveOptions;
  drive: ManifestDrive;
  target: string;
  parent: string | null;
  currentSize: number;
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

/** What a chain of one drive and a group of several share: everything but how they are opened. */
abstract class BackupChainBase {
  readonly dir: string;
  readonly manifestPath: string;
  #qmp: BackupQmp;
  #drives: ChainDriveOptions[];
  #manifest: Manifest | undefined;
  #qemuImg: QemuImg;

  protected constructor(options: BackupChainGroupOptions, manifestPath: string, manifest: Manifest | undefined) {
    this.#qmp = options.qmp;
    this.dir = options.dir;
    this.manifestPath = manifestPath;
    this.#manifest = manifest;
    this.#qemuImg = options.qemuImg ?? defaultQemuImg;
    this.#drives = options.drives.map((d) => {
      if (d.granularity !== undefined) checkGranularity(d.granularity);
      const fromManifest = manifest?.drives.find((m) => m.node === d.node);
      const bitmap = d.bitmap ?? fromManifest?.bitmap ?? DEFAULT_BITMAP;
      const result: ChainDriveOptions = { node: d.node, bitmap };
      const granularity = d.granularity ?? fromManifest?.granularity;
      if (granularity !== undefined) result.granularity = granularity;
      const persistent = d.persistent ?? fromManifest?.persistent;
      if (persistent !== undefined) result.persistent = persistent;
      return result;
    });
  }

  protected static async load(
    options: BackupChainGroupOptions,
  ): Promise<{ path: string; manifest: Manifest | undefined }> {
    if (options.drives.length === 0) throw new ManifestError(options.manifest ?? options.dir, 'a chain needs at least one drive');
    const nodes = new Set(options.drives.map((d) => d.node));
    if (nodes.size !== options.drives.length) throw new ManifestError(options.manifest ?? options.dir, 'a drive is listed twice');
    const path = options.manifest ?? join(options.dir, MANIFEST_FILE);
    const manifest = await readManifest(path);
    if (manifest) {
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

  /** Check whether an incremental can continue the chain, per drive. */
  async check(options: CallOptions & { allowGrowth?: boolean } = {}): Promise<DriveCheck[]> {
    const manifest = this.#manifest;
    const checks: DriveCheck[] = [];
    for (const d of this.#drives) {
      const bitmapName = d.bitmap ?? DEFAULT_BITMAP;
      const fail = (reason: ChainBrokenReason, detail: string, extra: Partial<DriveCheck> = {}): void => {
        checks.push({ node: d.node, ok: false, reason, detail, ...extra });
      };
      const drive = manifest?.drives.find((m) => m.node === d.node);
      const base = drive ? lastBase(drive) : undefined;
      if (!manifest || !drive || !base) {
        fail('no-full-backup', 'the chain has no full backup yet');
        continue;
      }
      const [baseExists, resolved] = await Promise.all([
        exists(resolveBackupFile(this.manifestPath, base.file)),
        resolveNode(this.#qmp, d.node, options),
      ]);
      if (!baseExists) {
        fail('last-backup-missing', `its last backup ${base.file} is missing`);
        continue;
      }
      const driveSize = resolved.info.image?.['virtual-size'];
      const info = (resolved.info['dirty-bitmaps'] ?? []).find((b) => b.name === bitmapName);
      if (!info) {
        fail('bitmap-missing', `bitmap "${bitmapName}" does not exist (QEMU was restarted or it was removed)`);
        continue;
      }
      const bitmap: BitmapStatus = bitmapStatusOf(info);
      const extra: Partial<DriveCheck> = { bitmap };
      if (driveSize !== undefined) extra.driveSize = driveSize;
      if (bitmap.inconsistent) {
        fail('bitmap-inconsistent', `bitmap "${bitmapName}" is inconsistent (QEMU stopped without storing it)`, extra);
      } else if (!bitmap.recording) {
        fail('bitmap-disabled', `bitmap "${bitmapName}" is disabled, so writes may be missing from it`, extra);
      } else if (bitmap.granularity !== drive.granularity) {
        fail(
          'granularity-mismatch',
          `bitmap "${bitmapName}" has granularity ${bitmap.granularity}, the chain was taken with ${drive.granularity}`,
          extra,
        );
      } else if (driveSize === undefined) {
        fail('size-mismatch', 'the drive reports no size', extra);
      } else if (driveSize < drive.driveSize || (driveSize > drive.driveSize && options.allowGrowth === false)) {
        fail('size-mismatch', `the drive is ${driveSize} bytes, the chain expects ${drive.driveSize}`, extra);
      } else if (manifest.pending) {
        fail(
          'interrupted',
          `the ${manifest.pending.kind} backup run ${manifest.pending.run} (started ${manifest.pending.started}) never recorded its outcome, so the bitmap may have been reset without a backup`,
          extra,
        );
      } else {
        checks.push({ node: d.node, ok: true, ...extra });
      }
    }
    return checks;
  }

  /** Start a new chain: a full backup of every drive and a fresh bitmap, in one transaction. */
  async full(options: ChainBackupOptions = {}): Promise<ChainRunResult> {
    const started = performance.now();
    await mkdir(this.dir, { recursive: true });
    const chainId = newChainId();
    const run = randomUUID();
    const tx = new Transaction();
    const prepared: PreparedDrive[] = [];
    const created: string[] = [];
    // Targets opened as nodes for blockdev-backup (see backup-command.ts), closed when the run ends.
    const targets: TargetNode[] = [];
    const bitmapsTouched: Array<{ node: string; name: string }> = [];
    try {
      for (const d of this.#drives) {
        const name = d.bitmap ?? DEFAULT_BITMAP;
        const resolved = await resolveNode(this.#qmp, d.node, options);
        const size = resolved.info.image?.['virtual-size'];
        if (size === undefined) throw new ManifestError(this.manifestPath, `drive ${d.node} reports no size`);
        const target = join(this.dir, `${sanitize(d.node)}.${chainId.slice(0, 8)}.000.full.qcow2`);
        await this.#claimTarget(target, options.overwrite === true);
        prepared.push({
          options: d,
          target,
          parent: null,
          currentSize: size,
          drive: {
            node: d.node,
            bitmap: name,
            granularity: 0,
            persistent: d.persistent ?? resolved.info.drv === 'qcow2',
            driveSize: size,
            targetFormat: 'qcow2',
            backups: [],
          },
        });
        const existing = (resolved.info['dirty-bitmaps'] ?? []).find((b) => b.name === name);
        const persistent = d.persistent ?? resolved.info.drv === 'qcow2';
        const reusable =
          existing !== undefined &&
          !(existing.inconsistent ?? false) &&
          existing.persistent === persistent &&
          (d.granularity === undefined || existing.granularity === d.granularity);
        if (existing && reusable) {
          tx.bitmapClear(d.node, name);
          if (!existing.recording) tx.bitmapEnable(d.node, name);
        } else {
          // A bitmap that cannot be reset in place (inconsistent after a crash, other
          // granularity or persistence) is dropped; the new chain starts from nothing anyway.
          if (existing) await removeBitmap(this.#qmp, d.node, name, options);
          const add: { node: string; name: string; persistent: boolean; granularity?: number } = {
            node: d.node,
            name,
            persistent,
          };
          if (d.granularity !== undefined) add.granularity = d.granularity;
          tx.bitmapAdd(add);
        }
        bitmapsTouched.push({ node: d.node, name });
        await this.#createTarget(target, { size }, options);
        created.push(target);
        this.#addBackup(tx, { ...this.#backupArgs(d.node, target, 'full', run, options), sync: 'full' }, this.#jobOptions(d.node, options), targets);
      }
    } catch (error) {
      await Promise.all(created.map((f) => rm(f, { force: true })));
      throw error;
    }
    // An existing chain is about to lose its bitmaps' state: mark it until the outcome is known.
    const previous = this.#manifest;
    if (previous) await this.#markPending(previous, { run, kind: 'full', created });
    const results = await this.#runTransaction(tx, options, created, previous, targets);
    // The job that failed explains the run better than the ones cancelled because of it.
    const failed = results.find((r) => r.status === 'failed') ?? results.find((r) => r.status !== 'completed');
    if (failed) {
      await Promise.all(created.map((f) => rm(f, { force: true })));
      if (previous) {
        await writeManifest(this.manifestPath, previous);
        this.#manifest = previous;
      }
      // The bitmaps were reset for a chain that does not exist: drop them so that no
      // incremental of the previous chain can follow this reset.
      for (const b of bitmapsTouched) await removeBitmap(this.#qmp, b.node, b.name).catch(() => undefined);
      throw this.#failure(failed, results);
    }
    // Granularity is what QEMU chose when none was asked for: read it back.
    const after = await Promise.all(prepared.map((p) => resolveNode(this.#qmp, p.options.node, options)));
    const time = new Date().toISOString();
    const backups: ManifestBackup[] = [];
    prepared.forEach((p, i) => {
      const result = results[i] as JobResult;
      const info = after[i]?.info['dirty-bitmaps']?.find((b) => b.name === p.drive.bitmap);
      p.drive.granularity = info?.granularity ?? p.options.granularity ?? 0;
      const backup = this.#record('full', p, result, time, run);
      p.drive.backups.push(backup);
      backups.push(backup);
    });
    const manifest: Manifest = {
      format: 'qmpkit-backup-chain',
      version: 1,
      chainId,
      created: time,
      updated: time,
      drives: prepared.map((p) => p.drive),
    };
    await writeManifest(this.manifestPath, manifest);
    this.#manifest = manifest;
    return { kind: 'full', run, chainId, backups, results, elapsedMs: performance.now() - started };
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
    const started = performance.now();
    const checkOptions: CallOptions & { allowGrowth?: boolean } = this.#callOptions(options);
    if (options.allowGrowth !== undefined) checkOptions.allowGrowth = options.allowGrowth;
    const manifest = this.#manifest;
    const run = randomUUID();
    // The targets and the pending mark are prepared while the chain is checked (they need
    // only the manifest); if the check fails they are undone, so a refusal changes nothing.
    const canPrepare =
      manifest !== undefined &&
      manifest.pending === undefined &&
      this.#drives.every((d) => {
        const drive = manifest.drives.find((m) => m.node === d.node);
        return drive !== undefined && lastBase(drive) !== undefined;
      });
    const [checked, preparation] = await Promise.allSettled([
      this.check(checkOptions),
      canPrepare ? this.#prepareLayer(manifest, kind, run, options) : Promise.resolve(undefined),
    ]);
    const undo = async (): Promise<void> => {
      if (preparation.status === 'fulfilled' && preparation.value && manifest) {
        await Promise.all(preparation.value.map((p) => rm(p.target, { force: true })));
        await writeManifest(this.manifestPath, manifest);
        this.#manifest = manifest;
      }
    };
    if (checked.status === 'rejected') {
      await undo();
      throw checked.reason;
    }
    const checks = checked.value;
    const broken = checks.find((c) => !c.ok);
    if (broken || !manifest) {
      await undo();
      if (options.fullIfBroken) return this.full(options);
      const b = broken ?? { node: this.#drives[0]?.node ?? '', reason: 'no-full-backup' as const, detail: 'no manifest' };
      const d = this.#drives.find((x) => x.node === b.node);
      throw new NewFullBackupRequiredError(
        b.node,
        d?.bitmap ?? DEFAULT_BITMAP,
        b.reason ?? 'no-full-backup',
        b.detail ?? 'the chain cannot be continued',
      );
    }
    if (preparation.status === 'rejected') throw preparation.reason;
    const prepared = preparation.value as PreparedDrive[];
    const created = prepared.map((p) => p.target);
    try {
      // A drive that grew gets a target of its new size.
      for (const [i, p] of prepared.entries()) {
        const size = checks[i]?.driveSize;
        if (size === undefined || size === p.currentSize) continue;
        p.currentSize = size;
        await rm(p.target, { force: true });
        await this.#createTarget(p.target, this.#layerImage(p), options);
      }
    } catch (error) {
      await undo();
      throw error;
    }
    const tx = new Transaction();
    const targets: TargetNode[] = [];
    if (this.#drives.length > 1) tx.completionMode('grouped');
    for (const p of prepared) {
      const args = this.#backupArgs(p.options.node, p.target, kind === 'incremental' ? 'incremental' : 'bitmap', run, options);
      args.bitmap = p.drive.bitmap;
      if (kind === 'differential') args['bitmap-mode'] = 'never';
      this.#addBackup(tx, args, this.#jobOptions(p.options.node, options), targets);
    }
    const results = await this.#runTransaction(tx, options, created, manifest, targets);
    // The job that failed explains the run better than the ones cancelled because of it.
    const failed = results.find((r) => r.status === 'failed') ?? results.find((r) => r.status !== 'completed');
    if (failed) {
      // QEMU merged the bitmaps back (failed or cancelled job): the manifest goes back to what
      // it was, the targets go, and the next incremental covers everything since the last good one.
      await Promise.all(created.map((f) => rm(f, { force: true })));
      await writeManifest(this.manifestPath, manifest);
      this.#manifest = manifest;
      throw this.#failure(failed, results);
    }
    const time = new Date().toISOString();
    const next: Manifest = structuredClone(manifest);
    delete next.pending;
    const backups: ManifestBackup[] = [];
    prepared.forEach((p, i) => {
      const drive = next.drives.find((m) => m.node === p.options.node) as ManifestDrive;
      const backup = this.#record(kind, p, results[i] as JobResult, time, run);
      drive.backups.push(backup);
      drive.driveSize = p.currentSize;
      backups.push(backup);
    });
    next.updated = time;
    await writeManifest(this.manifestPath, next);
    this.#manifest = next;
    return { kind, run, chainId: next.chainId, backups, results, elapsedMs: performance.now() - started };
  }

  /**
   * Create every drive's target (sized as the manifest last saw the drive) and mark the run
   * pending in the manifest, side by side. On failure, what was done is undone.
   */
  async #prepareLayer(
    manifest: Manifest,
    kind: 'incremental' | 'differential',
    run: string,
    options: ChainIncrementalOptions,
  ): Promise<PreparedDrive[]> {
    const prepared: PreparedDrive[] = this.#drives.map((d) => {
      const drive = manifest.drives.find((m) => m.node === d.node) as ManifestDrive;
      const base = lastBase(drive) as ManifestBackup;
      const seq = String(drive.backups.length).padStart(3, '0');
      const suffix = kind === 'incremental' ? 'inc' : 'diff';
      const target = join(this.dir, `${sanitize(d.node)}.${manifest.chainId.slice(0, 8)}.${seq}.${suffix}.qcow2`);
      return { options: d, drive, target, parent: base.file, currentSize: drive.driveSize };
    });
    const created: string[] = [];
    const creations = prepared.map(async (p) => {
      await this.#createTarget(p.target, this.#layerImage(p), options, { overwrite: options.overwrite === true });
      created.push(p.target);
    });
    const marking = this.#markPending(manifest, { run, kind, created: prepared.map((p) => p.target) });
    const outcomes = await Promise.allSettled([marking, ...creations]);
    const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failure) {
      await Promise.all(created.map((f) => rm(f, { force: true })));
      if (outcomes[0]?.status === 'fulfilled') {
        await writeManifest(this.manifestPath, manifest);
        this.#manifest = manifest;
      }
      throw failure.reason;
    }
    return prepared;
  }

  /** The qcow2 image of a layered backup: its parent as backing file, named relative to it (same directory). */
  #layerImage(p: PreparedDrive): TargetImage {
    const parent = p.parent ?? '';
    const backingFile = basename(parent) === parent ? parent : resolveBackupFile(this.manifestPath, parent);
    return { size: p.currentSize, backingFile, backingFormat: 'qcow2' };
  }

  /** qemu-img check every image and compare the chain with the source (see `verifyChain`). */
  verify(options: VerifyOptions = {}): Promise<VerifyReport> {
    return verifyChain(this.manifestPath, { qemuImg: this.#qemuImg, ...options });
  }

  /** Flatten the chain of `node` up to a chosen backup into a standalone image. */
  restore(output: string, options: RestoreOptions = {}): Promise<string> {
    return restoreChain(this.manifestPath, output, { qemuImg: this.#qemuImg, ...options });
  }

  /**
   * Record the run as pending before its jobs start: if this process loses track of them
   * (or dies), the chain is refused instead of continued from a bitmap QEMU may have reset.
   */
  async #markPending(manifest: Manifest, p: { run: string; kind: BackupKind; created: string[] }): Promise<void> {
    const marked: Manifest = {
      ...manifest,
      pending: { run: p.run, kind: p.kind, started: new Date().toISOString(), targets: p.created.map((f) => basename(f)) },
    };
    await writeManifest(this.manifestPath, marked);
    this.#manifest = marked;
  }

  /**
   * Create an empty qcow2 target. The file is created exclusively, so an existing one is
   * found without a separate look-up: `TargetExistsError`, or replaced with `overwrite`.
   * Targets are written in-process (image-tools' `createQcow2Image`: the bytes qemu-img would
   * write, without a process per incremental); a layout it leaves to qemu-img goes there.
   */
  async #createTarget(
    target: string,
    image: TargetImage,
    options: CallOptions,
    how: { overwrite: boolean } = { overwrite: false },
  ): Promise<void> {
    const call = this.#callOptions(options);
    try {
      await this.#createInProcess(target, image, call, how.overwrite);
      return;
    } catch (error) {
      if (!UnsupportedQcow2LayoutError.isInstance(error)) throw error;
    }
    await this.#claimTarget(target, how.overwrite);
    const create: Parameters<QemuImg['create']>[1] = { format: 'qcow2', size: image.size, ...call };
    if (image.backingFile !== undefined) {
      create.backingFile = image.backingFile;
      create.backingFormat = image.backingFormat ?? 'qcow2';
      create.unsafe = true;
    }
    await this.#qemuImg.create(target, create);
  }

  async #createInProcess(target: string, image: TargetImage, call: CallOptions, overwrite: boolean): Promise<void> {
    try {
      await createQcow2Image(target, image, call);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      if (!overwrite) throw new TargetExistsError(target);
      await rm(target, { force: true });
      await createQcow2Image(target, image, call);
    }
  }

  async #claimTarget(target: string, overwrite: boolean): Promise<void> {
    if (!(await exists(target))) return;
    if (!overwrite) throw new TargetExistsError(target);
    await rm(target, { force: true });
  }

  /** Adds one backup job to `tx` with the command the connected QEMU prefers (backup-command.ts). */
  #addBackup(tx: Transaction, args: DriveBackup, jobOptions: BackupJobOptions, targets: TargetNode[]): void {
    if (chainBackupCommand(this.#qmp) === 'drive-backup') {
      tx.driveBackup(args, jobOptions);
      return;
    }
    const converted = asBlockdevBackup(args);
    targets.push(converted.target);
    tx.blockdevBackup(converted.args, jobOptions);
  }

  async #runTransaction(
    tx: Transaction,
    options: ChainBackupOptions,
    created: string[],
    before: Manifest | undefined,
    targets: readonly TargetNode[],
  ): Promise<JobResult[]> {
    let started;
    const callOptions = this.#callOptions(options);
    const attached: TargetNode[] = [];
    try {
      for (const target of targets) {
        await attachTarget(this.#qmp, target, callOptions);
        attached.push(target);
      }
      started = await tx.run(this.#qmp, callOptions);
    } catch (error) {
      // QEMU refused a target or the transaction: nothing ran, so nothing is pending.
      await detachTargets(this.#qmp, attached, {}, false);
      await Promise.all(created.map((f) => rm(f, { force: true })));
      if (before) {
        await writeManifest(this.manifestPath, before);
        this.#manifest = before;
      }
      throw error;
    }
    started.jobs.forEach((job) => options.onJob?.(job, job.device));
    let results: JobResult[];
    try {
      results = await started.results();
    } catch (error) {
      // Tracking failed (timeout, abort, QEMU gone): the outcome is unknown, the run stays
      // pending in the manifest. Cancel what may still run so its bitmap is merged back.
      await Promise.all(started.jobs.map((j) => j.abandon()));
      await detachTargets(this.#qmp, attached, {}, false);
      await Promise.all(created.map((f) => rm(f, { force: true })));
      throw error;
    }
    // Every job has ended: close the targets, so QEMU's image lock does not outlive the run
    // (verify and restore open them next). A target that will not close leaves the run
    // unrecorded (pending), like any other unknown outcome.
    await detachTargets(this.#qmp, attached, callOptions, true);
    return results;
  }

  #failure(failed: JobResult, results: JobResult[]): BackupJobError {
    return new BackupJobError(failed.id, failed.status, failed.error, {
      results: results.map((r) => (r.error === undefined ? { id: r.id, status: r.status } : { id: r.id, status: r.status, error: r.error })),
    });
  }

  #record(kind: BackupKind, p: PreparedDrive, result: JobResult, time: string, run: string): ManifestBackup {
    return {
      kind,
      file: basename(p.target),
      parent: p.parent,
      time,
      bytes: result.len,
      driveSize: p.currentSize,
      result: 'completed',
      jobId: result.id,
      durationMs: Math.round(result.qemuDurationMs * 1000) / 1000,
      run,
    };
  }

  #backupArgs(
    node: string,
    target: string,
    sync: 'full' | 'incremental' | 'bitmap',
    run: string,
    options: ChainBackupOptions,
  ): DriveBackup {
    const args: DriveBackup = {
      // One id per run: events of an earlier job of this drive that nobody took (its tracking
      // was abandoned) can never be mistaken for this one's.
      'job-id': `qmpkit-${sanitize(node)}-${run.slice(0, 8)}`,
      device: node,
      sync,
      target,
      format: 'qcow2',
      mode: 'existing',
    };
    if (options.speed !== undefined) args.speed = options.speed;
    return args;
  }

  #jobOptions(node: string, options: ChainBackupOptions): BackupJobOptions {
    const jobOptions: BackupJobOptions = {};
    const onProgress = options.onProgress;
    if (onProgress) jobOptions.onProgress = (p) => onProgress({ ...p, node });
    if (options.progressInterval !== undefined) jobOptions.progressInterval = options.progressInterval;
    return jobOptions;
  }

  #callOptions(options: CallOptions): CallOptions {
    const out: CallOptions = {};
    if (options.timeout !== undefined) out.timeout = options.timeout;
    if (options.signal) out.signal = options.signal;
    return out;
  }
}

export interface BackupChainOptions extends ChainDriveOptions {
  qmp: BackupQmp;
  dir: string;
  manifest?: string;
  qemuImg?: QemuImg;
}

/**
 * Incremental backups of several drives that stay in step: every operation is one transaction
 * over all drives (incrementals with completion-mode 'grouped': if one job fails, all are
 * cancelled, and no bitmap or manifest changes), recorded in one manifest.
 */
export class BackupChainGroup extends BackupChainBase {
  /** Open the chain in `dir` (reading its manifest if there is one). */
  static async open(options: BackupChainGroupOptions): Promise<BackupChainGroup> {
    const { path, manifest } = await BackupChainBase.load(options);
    return new BackupChainGroup(options, path, manifest);
  }
}

/** The incremental backup chain of one drive (a group of one). */
export class BackupChain extends BackupChainBase {
  readonly node: string;

  protected constructor(options: BackupChainOptions, path: string, manifest: Manifest | undefined) {
    super({ ...options, drives: [options] }, path, manifest);
    this.node = options.node;
  }

  static async open(options: BackupChainOptions): Promise<BackupChain> {
    const groupOptions: BackupChainGroupOptions = { qmp: options.qmp, dir: options.dir, drives: [options] };
    if (options.manifest !== undefined) groupOptions.manifest = options.manifest;
    const { path, manifest } = await BackupChainBase.load(groupOptions);
    return new BackupChain(options, path, manifest);
  }

  /** This drive's part of the manifest. */
  get drive(): ManifestDrive | undefined {
    return this.manifest?.drives[0];
  }

  /** This drive's backups, oldest first. */
  get backups(): readonly ManifestBackup[] {
    return this.drive?.backups ?? [];
  }
}
