import { open, rm, stat } from 'node:fs/promises';

import {
  addBitmap,
  getBitmap,
  startDriveBackup,
  type BackupJob,
  type BitmapStatus,
  type JobResult,
} from '@qmpkit/backup';
import { createQcow2Image, QemuIo } from '@qmpkit/image-tools';
import type { MachineQmpClient, QemuMachine } from '@qmpkit/machine';
import type { BlockdevDriver, BlockdevOptions, DriveBackup } from '@qmpkit/schema';

import { expectEqual, expectFields, expectTrue } from '../assert.js';
import type { CaseContext } from '../context.js';
import { CaseAssertionError } from '../errors.js';
import type { Verdict } from '../verdict.js';
import type { Iotest124Check } from './checks.js';
import { bytes, DirtyChunks, DiskContent, type ByteWrite } from './model.js';

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

/** A write in bytes, for the model. */
export function byteWrite([pattern, offset, length]: PatternWrite): ByteWrite {
  return { pattern, offset: bytes(offset), length: bytes(length) };
}

/** QEMU's default bitmap granularity for the suite's images (qcow2 with 64 KiB clusters). */
export const DEFAULT_GRANULARITY = 65536;
/** QEMU's backup copies whole clusters of max(64 KiB, the target's cluster size). */
const BACKUP_MIN_CLUSTER = 65536;
/** qemu-io's `write` pattern when none is given. */
export const QEMU_IO_DEFAULT_PATTERN = 0xcd;
// The suite's own list, not @qmpkit/backup's: the accounting must not share the SDK's idea of
// which events belong to jobs, since that is part of what it checks.
const JOB_EVENT_NAMES: ReadonlySet<string> = new Set([
  'JOB_STATUS_CHANGE',
  'BLOCK_JOB_COMPLETED',
  'BLOCK_JOB_CANCELLED',
  'BLOCK_JOB_ERROR',
  'BLOCK_JOB_READY',
  'BLOCK_JOB_PENDING',
]);

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
  format: BlockdevDriver;
  /** What the guest sees on the drive now, from the writes made to it (the model). */
  content: DiskContent;
  /** What the anchor backup holds, once it was made. */
  anchorContent?: DiskContent;
  /** The drive's bitmaps, as the model tracks them. */
  bitmaps: TrackedBitmap[];
}

export interface BackupPair {
  incremental: string;
  reference: string;
  /** The drive's content when the incremental completed (what both images must hold). */
  content?: DiskContent;
}

/** A bitmap, the chunks the model says it holds, and the images backed up through it, oldest first. */
export class TrackedBitmap {
  readonly name: string;
  readonly drive: Drive;
  readonly backups: BackupPair[] = [];
  readonly dirty: DirtyChunks;
  #next = 0;
  readonly #path: (name: string) => string;

  constructor(name: string, drive: Drive, granularity: number, path: (name: string) => string) {
    this.name = name;
    this.drive = drive;
    this.dirty = new DirtyChunks(granularity);
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

/** A listener on all of a machine's events (the client's QmpEventListener). */
type CaseEvents = ReturnType<MachineQmpClient['events']['listen']>;

/** An event as the client delivers it, for the accounting of job events. */
interface SeenEvent {
  event: string;
  data?: unknown;
  timestamp: { seconds: number; microseconds: number };
}

function eventKey(e: SeenEvent): string {
  return `${e.event} ${JSON.stringify(e.data ?? {})} ${e.timestamp.seconds}.${e.timestamp.microseconds}`;
}

/** What `qemu-io read -P` prints for a range that holds the pattern, and what it prints when not. */
const PATTERN_FAILED = /Pattern verification failed/;

export class Scenario {
  readonly ctx: CaseContext;
  readonly vm: QemuMachine;
  readonly drives: Drive[] = [];
  readonly bitmaps: TrackedBitmap[] = [];
  readonly #comparisons = new Map<string, Promise<Verdict>>();
  /** Every job event QEMU sent, as a callback saw it (independent of who took it from a queue). */
  readonly #seenJobEvents: SeenEvent[] = [];
  /** Job events someone accounted for: each tracked job's, and those the case waited for itself. */
  readonly #jobs: BackupJob[] = [];
  readonly #takenEvents: SeenEvent[] = [];
  /**
   * The case's own queue of QEMU's events, as iotests' VM object collects them for event_wait
   * and get_qmp_events: opened at launch with the client's history, so it holds every event QEMU
   * sent. The case's waits take from it and "no events left" drains it; the SDK's backup jobs
   * follow their events through listeners of their own, and the events of the jobs the case
   * tracks count as taken by them.
   */
  #events: CaseEvents | undefined;

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

  /** One pass of a named check (see cases/checks.ts). */
  check<T>(name: Iotest124Check, fn: () => Promise<T> | T): Promise<T> {
    return this.ctx.checking(name, fn);
  }

  addNode(id: string, pattern: readonly PatternWrite[]): Drive {
    const content = new DiskContent(bytes(IMAGE_SIZE));
    for (const w of pattern) content.write(byteWrite(w));
    const drive: Drive = {
      id,
      file: this.ctx.path(`${id}.${IMAGE_FORMAT}`),
      backup: this.ctx.path(`${id}.full.backup.${IMAGE_FORMAT}`),
      format: IMAGE_FORMAT,
      content,
      bitmaps: [],
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
    const drive = this.addNode('drive0', DRIVE0_PATTERN);
    await this.ctx.imageFromTemplate('drive0', writeCommands(DRIVE0_PATTERN), drive.file);
    return drive;
  }

  /** drive1 with its own pattern. */
  async createDrive1(): Promise<Drive> {
    const drive = this.addNode('drive1', DRIVE1_PATTERN);
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
    this.#events = this.qmp.events.listen(undefined, { history: true });
    // A callback sees every event whoever takes it from a queue: the base of the accounting
    // of job events at the end of the case. No job exists before this point.
    this.qmp.events.on('event', (event) => {
      if (JOB_EVENT_NAMES.has(event.event)) this.#seenJobEvents.push(event);
    });
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

  /** Jobs started elsewhere (a transaction) whose events the end-of-case accounting expects. */
  track(...jobs: BackupJob[]): void {
    this.#jobs.push(...jobs);
  }

  /** Start a drive-backup through the SDK and track it. */
  async startBackup(args: DriveBackupArgs, options: Parameters<typeof startDriveBackup>[2] = {}): Promise<BackupJob> {
    const job = await startDriveBackup(this.qmp, args, { ...this.call, ...options });
    this.track(job);
    return job;
  }

  /**
   * drive-backup and wait until the job is gone; the job must end as expected: completed with
   * offset == len, or failed with `expect.error`. Returns the job and its result.
   */
  async backupJob(args: DriveBackupArgs, expect: BackupExpectation = { error: EIO_MESSAGE }): Promise<[BackupJob, JobResult, boolean]> {
    const job = await this.startBackup(args);
    const result = await job.result;
    const completed = await this.check('job-end', () => checkBackupEnd(job, result, expect));
    return [job, result, completed];
  }

  /** `backupJob`, for whether it completed. */
  async backup(args: DriveBackupArgs, expect: BackupExpectation = { error: EIO_MESSAGE }): Promise<boolean> {
    return (await this.backupJob(args, expect))[2];
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
    drive.anchorContent = drive.content.clone();
    return drive.backup;
  }

  /**
   * The reference's drive-backup without a job-id, so QEMU names the job; the reference waits
   * for BLOCK_JOB_COMPLETED of the device and then for the job's last JOB_STATUS_CHANGE. The
   * suite's own check: the job QEMU made is named after the device.
   */
  async backupWithoutJobId(args: Omit<DriveBackupArgs, 'job-id'>): Promise<boolean> {
    // The case's queue has held every event since launch, so, as iotests' event_wait, these
    // waits take events that came before them (in order) as well as later ones.
    const events = this.#caseEvents();
    await this.qmp.execute('drive-backup', args, this.call);
    const completed = await events.wait('BLOCK_JOB_COMPLETED', this.call);
    this.#takenEvents.push(completed);
    const id = completed.data.device;
    for (;;) {
      const change = await events.wait('JOB_STATUS_CHANGE', { ...this.call, match: { data: { id } } });
      this.#takenEvents.push(change);
      if (change.data.status === 'null') break;
    }
    await this.check('qemu-chosen-job-id', () => expectEqual('id of the job QEMU named for a drive-backup without job-id', args.device, id));
    return this.check('job-end', () => {
      if (completed.data.error !== undefined) {
        throw new CaseAssertionError(`backup job ${id} end`, 'completed', `failed (${completed.data.error})`);
      }
      expectEqual(`backup job ${id}: offset at completion equals len`, completed.data.len, completed.data.offset);
      return true;
    });
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
    const bitmap = new TrackedBitmap(name, drive, granularity ?? DEFAULT_GRANULARITY, (n) => this.ctx.path(n));
    this.bitmaps.push(bitmap);
    await addBitmap(
      this.qmp,
      granularity === undefined ? { node: drive.id, name } : { node: drive.id, name, granularity },
      this.call,
    );
    drive.bitmaps.push(bitmap);
    return bitmap;
  }

  /** A bitmap cleared by QEMU (block-dirty-bitmap-clear, alone or in a transaction). */
  bitmapCleared(bitmap: TrackedBitmap): void {
    bitmap.dirty.clear();
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

  /** The bytes an incremental job through `bitmap` must copy into a target with `targetCluster`-byte clusters. */
  expectedCopy(bitmap: TrackedBitmap, targetCluster = 65536): number {
    return bitmap.dirty.copied(Math.max(BACKUP_MIN_CLUSTER, targetCluster), bitmap.drive.content.size);
  }

  /**
   * An incremental job through `bitmap` completed: it must have copied exactly what the
   * bitmap recorded (`expected`, taken before the job), and the bitmap is now clean.
   */
  async incrementalCompleted(bitmap: TrackedBitmap, result: JobResult, expected: number): Promise<void> {
    await this.check('job-copied-dirty', () =>
      expectEqual(`bytes copied by incremental job ${result.id} (len) against the bytes ${bitmap.name} recorded`, expected, result.len),
    );
    bitmap.dirty.clear();
    const last = bitmap.backups[bitmap.backups.length - 1];
    if (last !== undefined) last.content = bitmap.drive.content.clone();
  }

  /** The incremental job of `createIncremental` into `target` (`targetCluster`: its cluster size). */
  async incrementalJob(bitmap: TrackedBitmap, target: string, targetCluster?: number): Promise<boolean> {
    const expected = this.expectedCopy(bitmap, targetCluster);
    const [, result, done] = await this.backupJob({
      'job-id': bitmap.drive.id,
      device: bitmap.drive.id,
      sync: 'incremental',
      bitmap: bitmap.name,
      format: bitmap.drive.format,
      target,
      mode: 'existing',
    });
    if (done) await this.incrementalCompleted(bitmap, result, expected);
    return done;
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
    const done = await this.incrementalJob(bitmap, target);
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

  /** One guest-like write through HMP's qemu-io (`command`), which the model records as `write`. */
  async hmpWrite(drive: Drive, command: string, write: ByteWrite): Promise<void> {
    await this.vm.hmpQemuIo(drive.id, command, this.call);
    drive.content.write(write);
    for (const bitmap of drive.bitmaps) bitmap.dirty.mark(write);
  }

  /**
   * Guest-like writes through HMP's qemu-io, then a flush (which also advances blkdebug's
   * state); then every bitmap of the drive must have the granularity it was given and the
   * dirty bytes the writes predict.
   */
  async hmpWrites(drive: Drive, writes: readonly PatternWrite[]): Promise<void> {
    const commands = writeCommands(writes);
    for (const [i, w] of writes.entries()) await this.hmpWrite(drive, commands[i] as string, byteWrite(w));
    await this.vm.hmpQemuIo(drive.id, 'flush', this.call);
    await this.expectDirtyBitmaps(drive);
  }

  /** Every bitmap of `drive`, as QEMU reports it, against the model. */
  async expectDirtyBitmaps(drive: Drive): Promise<void> {
    for (const bitmap of drive.bitmaps) {
      await this.check('bitmap-dirty-count', async () => {
        const status = await getBitmap(this.qmp, drive.id, bitmap.name, this.call);
        const expected = { granularity: bitmap.dirty.granularity, count: bitmap.dirty.count(drive.content.size) };
        expectFields(`granularity and dirty bytes of bitmap ${bitmap.name} on ${drive.id} after the writes`, expected, status);
      });
    }
  }

  async expectBitmapStatus(node: string, bitmap: string, expected: Partial<BitmapStatus>): Promise<void> {
    await this.check('bitmap-status', async () => {
      const status = await getBitmap(this.qmp, node, bitmap, this.call);
      expectFields(`status of bitmap ${bitmap} on ${node}`, expected, status);
    });
  }

  async expectNoActiveBlockJobs(): Promise<void> {
    await this.check('no-active-jobs', async () => {
      const jobs = await this.qmp.execute('query-block-jobs', {}, this.call);
      expectEqual('active block jobs (query-block-jobs)', [], jobs.map((j) => j.device));
    });
  }

  /** The case's own event queue (see `#events`). */
  #caseEvents(): CaseEvents {
    if (this.#events === undefined) throw new Error('the case has not launched QEMU');
    return this.#events;
  }

  /**
   * Takes everything in the case's event queue except the events of the jobs the case tracks
   * (each job's tracking took those, through its own listener: the same event objects).
   */
  #untakenEvents(): SeenEvent[] {
    const byJobs = new Map<SeenEvent, number>();
    for (const e of this.#jobs.flatMap((j) => j.events)) byJobs.set(e, (byJobs.get(e) ?? 0) + 1);
    return this.#caseEvents()
      .drain()
      .filter((e) => {
        const n = byJobs.get(e) ?? 0;
        if (n > 0) byJobs.set(e, n - 1);
        return n === 0;
      });
  }

  /**
   * Nothing is left in the case's event queue (every event was someone's to take); then the
   * suite's control that the same look does find an event nobody took: `stop` and `cont` make
   * QEMU send STOP and RESUME (no job runs at this point, and the machine has no CPU to stop).
   */
  async expectNoPendingEvents(when: string): Promise<void> {
    await this.check('no-events-left', () => {
      const left = this.#untakenEvents();
      expectEqual(`events left over ${when}`, [], left.map((e) => e.event));
    });
    await this.check('event-buffer-control', async () => {
      for (const [command, event] of [
        ['stop', 'STOP'],
        ['cont', 'RESUME'],
      ] as const) {
        await this.qmp.execute(command, {}, this.call);
        // QEMU sends the event before the command's reply, so it is queued by now.
        const found = this.#untakenEvents();
        expectEqual(`events left over after \`${command}\` ${when}`, [event], found.map((e) => e.event));
      }
    });
  }

  /**
   * The end of every case, while QEMU still runs: what was written reads back from the drives
   * and from the newest backup of each chain, and every job event is accounted for.
   */
  async finish(): Promise<void> {
    for (const drive of this.drives) await this.readBackDrive(drive);
    for (const bitmap of this.bitmaps) {
      if (bitmap.backups.length > 0) await this.readBackRestored(bitmap);
    }
    await this.expectJobEventsAccounted();
  }

  /** `qemu-io read -P` of every written range through HMP on `node`; true when all held. */
  async #readBack(node: string, writes: readonly ByteWrite[], what: string): Promise<void> {
    for (const w of writes) {
      const output = await this.#hmpRead(node, w);
      if (PATTERN_FAILED.test(output) || !output.includes(`read ${w.length}/${w.length} bytes at offset ${w.offset}`)) {
        throw new CaseAssertionError(
          `read -P 0x${w.pattern.toString(16)} ${w.offset} ${w.length} on ${what}`,
          'the pattern',
          output.trim() || 'no output',
        );
      }
    }
  }

  /**
   * The command is written and its output read here, not by the SDK, whose qemu-io commands
   * and failure detection are under test. HMP's qemu-io prints to QEMU's stdout (the case's
   * log), and has flushed it by the time QEMU replies.
   */
  async #hmpRead(node: string, w: ByteWrite): Promise<string> {
    const log = this.vm.logPath;
    if (log === undefined) throw new Error('the machine has no log to read qemu-io output from');
    const before = (await stat(log)).size;
    const reply = await this.vm.hmp(`qemu-io ${node} "read -P 0x${w.pattern.toString(16).padStart(2, '0')} ${w.offset} ${w.length}"`, this.call);
    const handle = await open(log, 'r');
    try {
      const { size } = await handle.stat();
      const printed = Buffer.alloc(Math.max(0, size - before));
      await handle.read(printed, 0, printed.length, before);
      return reply + printed.toString('utf8');
    } finally {
      await handle.close();
    }
  }

  async readBackDrive(drive: Drive): Promise<void> {
    await this.check('read-back-drive', async () => {
      const written = drive.content.written();
      await this.#readBack(drive.id, written, `drive ${drive.id}`);
      // The read-back must be able to say no: the first range read with another pattern fails.
      const first = written[0];
      if (first !== undefined) {
        const wrong = { ...first, pattern: first.pattern ^ 0xff };
        const output = await this.#hmpRead(drive.id, wrong);
        expectTrue(`read -P with a wrong pattern (0x${wrong.pattern.toString(16)}) on ${drive.id} is refused`, PATTERN_FAILED.test(output), output.trim());
      }
    });
  }

  /**
   * The newest image of `bitmap`'s chain, opened read-only with its backing chain (a restore
   * of the newest backup), holds every pattern written to the drive up to that backup.
   */
  async readBackRestored(bitmap: TrackedBitmap): Promise<void> {
    const newest = bitmap.backups[bitmap.backups.length - 1];
    if (newest?.content === undefined) return;
    const node = `restored-${bitmap.drive.id}-${bitmap.name}`;
    await this.check('read-back-restored', async () => {
      await this.qmp.execute(
        'blockdev-add',
        { 'node-name': node, driver: 'qcow2', 'read-only': true, file: { driver: 'file', filename: newest.incremental } },
        this.call,
      );
      try {
        await this.#readBack(node, newest.content?.written() ?? [], `${base(newest.incremental)} with its backing chain`);
      } finally {
        await this.qmp.execute('blockdev-del', { 'node-name': node }, this.call);
      }
    });
  }

  /**
   * No job event is left over: every job event QEMU sent (as a callback saw it) was taken by the
   * tracking of a job or by a wait of the case, and none twice; each job's last event is its
   * JOB_STATUS_CHANGE to 'null', and query-jobs lists nothing.
   */
  async expectJobEventsAccounted(): Promise<void> {
    await this.check('job-events-accounted', async () => {
      const accounted = new Map<string, number>();
      for (const e of [...this.#jobs.flatMap((j) => j.events), ...this.#takenEvents]) {
        const key = eventKey(e);
        accounted.set(key, (accounted.get(key) ?? 0) + 1);
      }
      const leftOver: string[] = [];
      const lastStatus = new Map<string, string>();
      for (const e of this.#seenJobEvents) {
        const key = eventKey(e);
        const n = accounted.get(key) ?? 0;
        if (n > 0) accounted.set(key, n - 1);
        else leftOver.push(key);
        const data = (e.data ?? {}) as Record<string, unknown>;
        if (e.event === 'JOB_STATUS_CHANGE') lastStatus.set(String(data['id']), String(data['status']));
      }
      expectEqual('job events no job tracking or wait of the case took', [], leftOver);
      // Each event is taken once: one taken twice (by a job, or a job and a wait) was not sent twice.
      const twice = [...accounted].filter(([, n]) => n > 0).map(([key]) => key);
      expectEqual('job events taken more often than QEMU sent them', [], twice);
      const unfinished = [...lastStatus].filter(([, status]) => status !== 'null').map(([id, status]) => `${id}: ${status}`);
      expectEqual('jobs whose last JOB_STATUS_CHANGE is not "null"', [], unfinished);
      const jobs = await this.qmp.execute('query-jobs', {}, this.call);
      expectEqual('jobs listed by query-jobs at the end of the case', [], jobs.map((j) => `${j.id}: ${j.status}`));
    });
  }

  async shutdown(): Promise<void> {
    await this.vm.shutdown({ timeout: 10_000 });
  }

  /**
   * The newest (incremental, reference) pair of `bitmap` is final: nothing writes either image
   * again. Their comparison starts now, beside what the case does next, instead of after
   * shutdown; `checkBackups` still requires it, so no check is dropped, only started earlier.
   * (Not for an image that is still to be changed, like the target rebased after its backup.)
   * QEMU has closed both: each job's last event comes after its target is released, and with
   * the default engines qemu-img takes its image locks and would refuse an image still held.
   */
  pairFinished(bitmap: TrackedBitmap = this.lastBitmap()): void {
    const last = bitmap.backups[bitmap.backups.length - 1];
    if (last !== undefined) this.#compare(last.incremental, last.reference);
  }

  #compare(a: string, b: string): Promise<Verdict> {
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
   * the drive itself (the machine must be shut down so the drive file is complete and unlocked);
   * then the negative controls.
   */
  async checkBackups(): Promise<void> {
    const comparisons: Array<{ what: string; result: Promise<Verdict> }> = [];
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
    const controls = this.#negativeControls();
    // Independent reads of closed images run together; failures are reported in the reference's order.
    for (const c of comparisons) {
      await this.check('image-compare', async () => {
        const result = await c.result;
        if (!result.identical) {
          throw new CaseAssertionError(`image comparison ${c.what}`, 'identical', 'different', { detail: result.message });
        }
      });
    }
    await controls();
  }

  /** Only the negative controls (for a case that, like the reference, compares nothing else). */
  async checkNegativeControls(): Promise<void> {
    await this.#negativeControls()();
  }

  /**
   * For each drive, the newest full backup (anchor or reference) that the writes since make
   * different from the drive: the comparison must say "different", with the message qemu-img
   * gives for the first difference the model predicts. A comparer that always agrees fails here.
   * Started at once; the returned function checks the verdicts.
   */
  #negativeControls(): () => Promise<void> {
    const controls: Array<{ what: string; expected: { identical: boolean; message: string }; result: Promise<Verdict> }> = [];
    for (const drive of this.drives) {
      const candidates: Array<{ file: string; content: DiskContent | undefined }> = [
        ...drive.bitmaps.flatMap((b) => b.backups.map((p) => ({ file: p.reference, content: p.content }))).reverse(),
        { file: drive.backup, content: drive.anchorContent },
      ];
      for (const candidate of candidates) {
        if (candidate.content === undefined) continue;
        const expected = drive.content.comparedWith(candidate.content);
        if (expected.identical) continue;
        controls.push({
          what: `${base(drive.file)} against the older backup ${base(candidate.file)}`,
          expected,
          result: this.#compare(drive.file, candidate.file),
        });
        break;
      }
    }
    return async () => {
      for (const c of controls) {
        await this.check('negative-control', async () => {
          const result = await c.result;
          expectEqual(`negative control: ${c.what}`, c.expected, { identical: result.identical, message: result.message });
        });
      }
    };
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
