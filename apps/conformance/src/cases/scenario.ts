import { rm } from 'node:fs/promises';

import {
  addBitmap,
  getBitmap,
  startDriveBackup,
  type BackupJob,
  type BitmapStatus,
  type JobResult,
} from '@qmpkit/backup';
import { createQcow2Image, QemuIo, type CompareResult } from '@qmpkit/image-tools';
import type { MachineQmpClient, QemuMachine } from '@qmpkit/machine';
import type { BlockdevOptions, DriveBackup } from '@qmpkit/schema';

import { expectEqual, expectFields, expectTrue } from '../assert.js';
import type { CaseContext } from '../context.js';
import { CaseAssertionError } from '../errors.js';

// The bookkeeping of an incremental-backup case: drives, bitmaps and the chain of
// (incremental, reference) image pairs each bitmap produced, with the steps the reference
// test composes its cases from. Names of files follow the reference, so kept artifacts of a
// failed case can be compared with an iotest run side by side.

export const IMAGE_FORMAT = 'qcow2' as const;
export const IMAGE_SIZE = '64M';
/** The error QEMU reports for a job that hit the injected EIO. */
export const EIO_MESSAGE = 'Input/output error';

/** A write as (pattern byte, offset, length), in qemu-io's size syntax. */
export type PatternWrite = readonly [pattern: number, offset: string | number, length: string | number];

/** The pattern the reference writes into drive0 before every case. */
export const DRIVE0_PATTERN: readonly PatternWrite[] = [
  [0x41, 0, 512],
  [0xd5, '1M', '32k'],
  [0xdc, '32M', '124k'],
];

/** The pattern of the second drive of the transaction cases. */
export const DRIVE1_PATTERN: readonly PatternWrite[] = [
  [0x14, 0, 512],
  [0x5d, '1M', '32k'],
  [0xcd, '32M', '124k'],
];

/** First round of guest writes: a full overwrite, a new segment, a partial overlap. */
export const GUEST_WRITES_1: readonly PatternWrite[] = [
  [0xab, 0, 512],
  [0xfe, '16M', '256k'],
  [0x64, '32736k', '64k'],
];

/** Second round, one of each kind again. */
export const GUEST_WRITES_2: readonly PatternWrite[] = [
  [0x9a, 0, 512],
  [0x55, '8M', '352k'],
  [0x78, '15872k', '1M'],
];

/** drive1's writes in the transaction cases. */
export const DRIVE1_GUEST_WRITES: readonly PatternWrite[] = [
  [0xba, 0, 512],
  [0xef, '16M', '256k'],
  [0x46, '32736k', '64k'],
];

/**
 * Dirty bytes after GUEST_WRITES_1 with 64 KiB granularity: 512 B at 0 (one chunk),
 * 256 KiB at 16 MiB (four), 64 KiB straddling 32 MiB (two): seven chunks.
 */
export const GUEST_WRITES_1_DIRTY_BYTES = 458752;

/** The shared starting images the selected cases use (see `ImageTemplates`). */
export function imageTemplates(ids: readonly string[]): Array<{ name: string; writes: string[] }> {
  const templates = [{ name: 'drive0', writes: writeCommands(DRIVE0_PATTERN) }];
  if (ids.some((id) => id.includes('test_transaction_failure'))) {
    templates.push({ name: 'drive1', writes: writeCommands(DRIVE1_PATTERN) });
  }
  return templates;
}

export function writeCommands(writes: readonly PatternWrite[]): string[] {
  return writes.map(([pattern, offset, length]) => QemuIo.writeCommand({ pattern, offset, length }));
}

/** blkdebug on the image file: EIO once on the first read after the first flush. */
export function blkdebugFile(filename: string): BlockdevOptions {
  return {
    driver: 'blkdebug',
    image: { driver: 'file', filename },
    // State 1 -> 2 on the first flush (hmp writes end with one), then one read fails.
    'set-state': [{ event: 'flush_to_disk', state: 1, new_state: 2 }],
    'inject-error': [{ event: 'read_aio', errno: 5, state: 2, immediately: false, once: true }],
  };
}

export interface Drive {
  /** Device or node name the QMP commands use. */
  id: string;
  file: string;
  /** Target of the anchor (full) backup. */
  backup: string;
  format: string;
}

export interface BackupPair {
  incremental: string;
  reference: string;
}

/** A bitmap and the images backed up through it, oldest first. */
export class TrackedBitmap {
  readonly name: string;
  readonly drive: Drive;
  readonly backups: BackupPair[] = [];
  #next = 0;
  readonly #path: (name: string) => string;

  constructor(name: string, drive: Drive, path: (name: string) => string) {
    this.name = name;
    this.drive = drive;
    this.#path = path;
  }

  /** Reserve the next pair of file names (`drive0.bitmap0.inc0.qcow2`, `...ref0...`). */
  newTarget(): BackupPair {
    const n = this.#next++;
    const stem = `${this.drive.id}.${this.name}.`;
    const pair = {
      incremental: this.#path(`${stem}inc${n}.${this.drive.format}`),
      reference: this.#path(`${stem}ref${n}.${this.drive.format}`),
    };
    this.backups.push(pair);
    return pair;
  }

  /** The newest incremental/reference pair; before any, the anchor backup (without reference). */
  lastTarget(): { incremental: string; reference: string | undefined } {
    const last = this.backups[this.backups.length - 1];
    return last ?? { incremental: this.drive.backup, reference: undefined };
  }

  /** Forget the newest pair (a failed backup) and delete its files. */
  async dropLast(): Promise<void> {
    const last = this.backups.pop();
    if (last === undefined) return;
    this.#next--;
    await Promise.all([rm(last.incremental, { force: true }), rm(last.reference, { force: true })]);
  }
}

export interface BackupExpectation {
  /** Expect the job to fail with this error (else to complete). */
  error?: string;
}

export class Scenario {
  readonly ctx: CaseContext;
  readonly vm: QemuMachine;
  readonly drives: Drive[] = [];
  readonly bitmaps: TrackedBitmap[] = [];
  readonly #comparisons = new Map<string, Promise<CompareResult>>();

  constructor(ctx: CaseContext) {
    this.ctx = ctx;
    this.vm = ctx.newMachine();
  }

  get qmp(): MachineQmpClient {
    return this.vm.qmp;
  }

  /** Call options: every QMP call and tool run of a case ends with the case's signal. */
  get call(): { signal: AbortSignal } {
    return { signal: this.ctx.signal };
  }

  addNode(id: string): Drive {
    const drive: Drive = {
      id,
      file: this.ctx.path(`${id}.${IMAGE_FORMAT}`),
      backup: this.ctx.path(`${id}.full.backup.${IMAGE_FORMAT}`),
      format: IMAGE_FORMAT,
    };
    this.drives.push(drive);
    return drive;
  }

  drive(index = 0): Drive {
    const drive = this.drives[index];
    if (drive === undefined) throw new Error(`the case has no drive #${index}`);
    return drive;
  }

  /** drive0 with the reference's default pattern (64 MiB qcow2). */
  async createDrive0(): Promise<Drive> {
    const drive = this.addNode('drive0');
    await this.ctx.imageFromTemplate('drive0', writeCommands(DRIVE0_PATTERN), drive.file);
    return drive;
  }

  /** drive1 with its own pattern. */
  async createDrive1(): Promise<Drive> {
    const drive = this.addNode('drive1');
    await this.ctx.imageFromTemplate('drive1', writeCommands(DRIVE1_PATTERN), drive.file);
    return drive;
  }

  /**
   * A qcow2 image as the reference's img_create makes it (64M unless said, the backing file's
   * format = qcow2), written in-process by image-tools' `createQcow2Image`: the bytes `qemu-img
   * create` writes, without a process per image. Like qemu-img, it replaces an existing file.
   */
  async createImage(
    file: string,
    options: { size?: string; backingFile?: string; clusterSize?: string } = {},
  ): Promise<void> {
    await createQcow2Image(
      file,
      {
        size: options.size ?? IMAGE_SIZE,
        overwrite: true,
        ...(options.clusterSize === undefined ? {} : { clusterSize: options.clusterSize }),
        ...(options.backingFile === undefined ? {} : { backingFile: options.backingFile, backingFormat: IMAGE_FORMAT }),
      },
      this.call,
    );
  }

  /** The reference's VM set-up: drive0 attached with node-name node0. */
  attachDrive0(drive: Drive): void {
    this.vm.addDrive({ file: drive.file, format: drive.format, id: drive.id, nodeName: 'node0' });
  }

  async launch(): Promise<void> {
    await this.ctx.launch(this.vm);
  }

  /** Add `drive` as a node of the same name, its file behind a blkdebug filter. */
  async addBlkdebugNode(drive: Drive): Promise<void> {
    try {
      await this.qmp.execute(
        'blockdev-add',
        { 'node-name': drive.id, driver: 'qcow2', file: blkdebugFile(drive.file) },
        this.call,
      );
    } catch (error) {
      if (error instanceof Error && /Unknown driver 'blkdebug'/.test(error.message)) {
        this.ctx.skip("this QEMU build has no 'blkdebug' block driver", error);
      }
      throw error;
    }
  }

  /**
   * drive-backup and wait until the job is gone; the job must end as expected: completed with
   * offset == len, or failed with `expect.error`. Returns whether it completed.
   */
  async backup(args: DriveBackupArgs, expect: BackupExpectation = { error: EIO_MESSAGE }): Promise<boolean> {
    const job = await startDriveBackup(this.qmp, args, this.call);
    const result = await job.result;
    return checkBackupEnd(job, result, expect);
  }

  async anchorBackup(drive: Drive = this.lastDrive()): Promise<string> {
    const done = await this.backup({
      'job-id': drive.id,
      device: drive.id,
      sync: 'full',
      format: drive.format,
      target: drive.backup,
    });
    expectTrue(`anchor (full) backup of ${drive.id} completes`, done);
    return drive.backup;
  }

  /** A full backup of the drive as it is now, to compare the newest incremental with. */
  async referenceBackup(bitmap: TrackedBitmap = this.lastBitmap()): Promise<void> {
    const reference = bitmap.lastTarget().reference;
    if (reference === undefined) throw new Error(`${bitmap.name} has no incremental backup to make a reference for`);
    const done = await this.backup({
      'job-id': bitmap.drive.id,
      device: bitmap.drive.id,
      sync: 'full',
      format: bitmap.drive.format,
      target: reference,
    });
    expectTrue(`reference (full) backup of ${bitmap.drive.id} completes`, done);
  }

  async addBitmap(name: string, drive: Drive, granularity?: number): Promise<TrackedBitmap> {
    const bitmap = new TrackedBitmap(name, drive, (n) => this.ctx.path(n));
    this.bitmaps.push(bitmap);
    await addBitmap(
      this.qmp,
      granularity === undefined ? { node: drive.id, name } : { node: drive.id, name, granularity },
      this.call,
    );
    return bitmap;
  }

  /** Create the next incremental target of `bitmap`, backed by its newest image. */
  async prepareBackup(
    bitmap: TrackedBitmap = this.lastBitmap(),
    options: { parent?: string; size?: string } = {},
  ): Promise<string> {
    const parent = options.parent ?? bitmap.lastTarget().incremental;
    const { incremental } = bitmap.newTarget();
    await this.createImage(incremental, { backingFile: parent, ...(options.size === undefined ? {} : { size: options.size }) });
    return incremental;
  }

  /**
   * An incremental backup through `bitmap` into a new (or the given) target. On success a
   * reference backup follows; on failure the target is dropped, and the failure must have been
   * expected (`validate: false`).
   */
  async createIncremental(
    bitmap: TrackedBitmap = this.lastBitmap(),
    options: { validate?: boolean; target?: string } = {},
  ): Promise<boolean> {
    const target = options.target ?? (await this.prepareBackup(bitmap));
    const done = await this.backup({
      'job-id': bitmap.drive.id,
      device: bitmap.drive.id,
      sync: 'incremental',
      bitmap: bitmap.name,
      format: bitmap.drive.format,
      target,
      mode: 'existing',
    });
    if (done) {
      await this.referenceBackup(bitmap);
      this.pairFinished(bitmap);
    } else {
      await bitmap.dropLast();
      if (options.validate !== false) {
        throw new CaseAssertionError(`incremental backup of ${bitmap.drive.id} through ${bitmap.name}`, 'completed', 'failed');
      }
    }
    return done;
  }

  /** Guest-like writes through HMP's qemu-io, then a flush (which also advances blkdebug's state). */
  async hmpWrites(drive: Drive, writes: readonly PatternWrite[]): Promise<void> {
    for (const command of writeCommands(writes)) await this.vm.hmpQemuIo(drive.id, command, this.call);
    await this.vm.hmpQemuIo(drive.id, 'flush', this.call);
  }

  async expectBitmapStatus(node: string, bitmap: string, expected: Partial<BitmapStatus>): Promise<void> {
    const status = await getBitmap(this.qmp, node, bitmap, this.call);
    expectFields(`status of bitmap ${bitmap} on ${node}`, expected, status);
  }

  async expectNoActiveBlockJobs(): Promise<void> {
    const jobs = await this.qmp.execute('query-block-jobs', {}, this.call);
    expectEqual('active block jobs (query-block-jobs)', [], jobs.map((j) => j.device));
  }

  /** Nothing is left in the client's event buffer (every event was someone's to take). */
  expectNoPendingEvents(when: string): void {
    const left = this.qmp.events.drain();
    expectEqual(`events left over ${when}`, [], left.map((e) => e.event));
  }

  async shutdown(): Promise<void> {
    await this.vm.shutdown({ timeout: 10_000 });
  }

  /**
   * The newest (incremental, reference) pair of `bitmap` is final: nothing writes either image
   * again. Their comparison starts now, beside what the case does next, instead of after
   * shutdown; `checkBackups` still requires it, so no check is dropped, only started earlier.
   * (Not for an image that is still to be changed, like the target rebased after its backup.)
   */
  pairFinished(bitmap: TrackedBitmap = this.lastBitmap()): void {
    const last = bitmap.backups[bitmap.backups.length - 1];
    if (last !== undefined) this.#compare(last.incremental, last.reference);
  }

  #compare(a: string, b: string): Promise<CompareResult> {
    const key = `${a}\0${b}`;
    let pending = this.#comparisons.get(key);
    if (pending === undefined) {
      if (this.#comparisons.size === 0) {
        // A comparison still running when the case ends (failed early) must not outlive it.
        this.ctx.defer(async () => {
          await Promise.allSettled(this.#comparisons.values());
        });
      }
      pending = this.ctx.compare(a, b);
      // Awaited by checkBackups; until then a rejection is not unhandled.
      pending.catch(() => undefined);
      this.#comparisons.set(key, pending);
    }
    return pending;
  }

  /**
   * Each incremental equals its reference, and the newest image of each bitmap's chain equals
   * the drive itself (the machine must be shut down so the drive file is complete and unlocked).
   */
  async checkBackups(): Promise<void> {
    const comparisons: Array<{ what: string; result: Promise<CompareResult> }> = [];
    for (const bitmap of this.bitmaps) {
      for (const pair of bitmap.backups) {
        comparisons.push({
          what: `${base(pair.incremental)} against ${base(pair.reference)}`,
          result: this.#compare(pair.incremental, pair.reference),
        });
      }
      const last = bitmap.lastTarget().incremental;
      comparisons.push({
        what: `${base(last)} against the drive ${base(bitmap.drive.file)}`,
        result: this.#compare(last, bitmap.drive.file),
      });
    }
    // Independent reads of closed images run together; failures are reported in the reference's order.
    for (const c of comparisons) {
      const result = await c.result;
      if (!result.identical) {
        throw new CaseAssertionError(`image comparison ${c.what}`, 'identical', 'different', { detail: result.message });
      }
    }
  }

  lastDrive(): Drive {
    const drive = this.drives[this.drives.length - 1];
    if (drive === undefined) throw new Error('the case has no drive');
    return drive;
  }

  lastBitmap(): TrackedBitmap {
    const bitmap = this.bitmaps[this.bitmaps.length - 1];
    if (bitmap === undefined) throw new Error('the case has no bitmap');
    return bitmap;
  }
}

function base(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** The drive-backup arguments the cases use. */
export type DriveBackupArgs = DriveBackup;

/**
 * How the reference judges a finished backup: BLOCK_JOB_COMPLETED without error must have
 * offset == len; with an error, it must be the expected one.
 */
export function checkBackupEnd(job: BackupJob, result: JobResult, expect: BackupExpectation): boolean {
  const what = `backup job ${job.id}`;
  if (result.status === 'cancelled') {
    throw new CaseAssertionError(`${what} end`, expect.error === undefined ? 'completed' : `failed (${expect.error})`, 'cancelled');
  }
  if (result.status === 'completed') {
    expectEqual(`${what}: offset at completion equals len`, result.len, result.offset);
    return true;
  }
  if (expect.error === undefined) {
    throw new CaseAssertionError(`${what} end`, 'completed', `failed (${result.error ?? 'no error text'})`);
  }
  expectEqual(`${what}: error of the failed job`, expect.error, result.error);
  return false;
}
