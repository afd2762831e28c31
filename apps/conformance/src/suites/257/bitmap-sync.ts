import {
  addBitmap,
  addNode,
  BlockDriverUnavailableError,
  createTargetNode,
  listBitmaps,
  removeBitmap,
  removeNode,
  startBlockdevBackup,
  type BackupJob,
  type BitmapStatus,
  type BitmapSyncMode,
  type BlockdevBackup,
  type JobResult,
} from '@qmpkit/backup';
import { createQcow2Image } from '@qmpkit/image-tools';
import type { QemuMachine } from '@qmpkit/machine';
import type { BlockdevOptions } from '@qmpkit/schema';

import { expectEqual } from '../../assert.js';
import type { CaseContext } from '../../context.js';
import { CaseAssertionError } from '../../errors.js';
import type { CaseDefinition } from '../../runner.js';
import { atLeast, pendingListing, bitmap0, versionText, type BitmapListing, type ListedBitmap, type QemuVersion } from './expectations.js';
import { BitmapModel, CLUSTERS, GRANULARITY, SIZE, WRITE_GROUPS, groupClusters, writeCommand } from './model.js';

// The 21 bitmap-sync scenarios of iotest 257. Each one: a drive with four clusters written, a
// full reference backup, bitmap0, six clusters written, a second reference, then the test
// backup #1 through bitmap0 in the given sync mode and bitmap sync mode (sync-mode 'bitmap',
// 'full' or 'top'; bitmap-mode 'on-success', 'always' or 'never'), with no failure, a cancel
// while the job waits to be finalized (writes made meanwhile), or a read error injected by
// blkdebug after one cluster; then more writes, a third reference and test backup #2 (sync
// 'bitmap'), which for a failed #1 is the recovery. After every step the bitmaps of every node
// are compared with what the reference's expected output shows, every job's events with its
// expected ones, and at the end which clusters each test backup holds and how it compares with
// its reference image.

export type SyncMode = 'bitmap' | 'full' | 'top';
export type Failure = 'simulated' | 'intermediate' | 'none';

export interface ScenarioParams {
  sync: SyncMode;
  bitmapMode: BitmapSyncMode;
  failure: Failure;
}

/** How a failing read shows up: the error text of BLOCK_JOB_COMPLETED. */
const EIO = 'Input/output error';
const DRIVE = 'drive0';
const FILTER = 'backup-top';
/** The kind of QEMU the scenarios hand on to each other (see `CaseContext.reusableMachine`). */
const MACHINE = '257.scenario';

/**
 * blkdebug for the 'intermediate' failure: the flush just before test backup #1 arms it (state
 * 1 -> 2), the job's first read moves it on (2 -> 3; that read succeeds: one cluster is copied),
 * and the read after it fails once with EIO.
 *
 * QEMU 11 flushes a backup's source when the job ends (10.0 and 7.2 do not): the end of
 * reference backup #0 and of #1 each flush drive0, and the explicit flush before test backup #1
 * then has nothing left to flush (no flush_to_disk). On QEMU 11 blkdebug therefore counts the
 * flush ending reference #0 (1 -> 2) and is armed by the one ending reference #1 (2 -> 3), right
 * before test backup #1 as the reference intends. Were those flushes missing on 11, blkdebug
 * would never be armed, test backup #1 would not fail, and the case would fail.
 */
function blkdebugOver(filename: string, version: QemuVersion): BlockdevOptions {
  const flushesFirst = atLeast(version, 11) ? 1 : 0;
  const armed = 2 + flushesFirst;
  return {
    driver: 'blkdebug',
    image: { driver: 'file', filename },
    'set-state': [
      ...Array.from({ length: flushesFirst + 1 }, (_, i) => ({ event: 'flush_to_disk' as const, state: 1 + i, new_state: 2 + i })),
      { event: 'read_aio', state: armed, new_state: armed + 1 },
    ],
    'inject-error': [{ event: 'read_aio', errno: 5, state: armed + 1, immediately: false, once: true }],
  };
}

/** Bitmaps of every node as the reference lists them: node -> bitmaps, nodes without any left out. */
function listing(all: Map<string, BitmapStatus[]>): BitmapListing {
  const out: BitmapListing = {};
  for (const node of [...all.keys()].sort()) {
    out[node] = (all.get(node) ?? []).map((b) => {
      const listed: ListedBitmap = {
        count: b.count,
        granularity: b.granularity,
        busy: b.busy,
        recording: b.recording,
        persistent: b.persistent,
      };
      return b.name === '' ? listed : { name: b.name, ...listed };
    });
  }
  return out;
}

/** A BLOCK_JOB_* event as the expected output shows it (without timestamp). */
interface JobEvent {
  event: string;
  data: Record<string, unknown>;
}

class BitmapSyncScenario {
  readonly ctx: CaseContext;
  readonly params: ScenarioParams;
  #vm: QemuMachine | undefined;
  /** Nodes this scenario added, in order (removed at the end, where the reference shuts QEMU down). */
  readonly nodes: string[] = [];
  readonly model = new BitmapModel();
  /** Clusters holding data (what sync 'top' copies and sync 'full' reads). */
  readonly allocated = new Set<number>();
  /** The clusters each test backup must hold data for (its own layer, without a backing file). */
  readonly copied = new Map<'bsync1' | 'bsync2', number[]>();
  version: QemuVersion = { major: 0, minor: 0, micro: 0 };

  constructor(ctx: CaseContext, params: ScenarioParams) {
    this.ctx = ctx;
    this.params = params;
  }

  get vm(): QemuMachine {
    if (this.#vm === undefined) throw new Error('the scenario has no machine yet');
    return this.#vm;
  }

  get call(): { signal: AbortSignal } {
    return { signal: this.ctx.signal };
  }

  file(name: string): string {
    return this.ctx.path(name);
  }

  async prepare(): Promise<void> {
    const img = this.file('img');
    // The image is written in-process while QEMU starts (or is taken over from the scenario
    // before, as a fresh launch would leave it: no node, no job; see releaseMachine()).
    const [, vm] = await Promise.all([createQcow2Image(img, { size: SIZE }, this.call), this.ctx.reusableMachine(MACHINE)]);
    this.#vm = vm;
    this.version = this.vm.qmp.version.qemu;
    const file: BlockdevOptions = { driver: 'file', filename: img };
    try {
      await addNode(
        this.vm.qmp,
        { driver: 'qcow2', 'node-name': DRIVE, file: this.params.failure === 'intermediate' ? blkdebugOver(img, this.version) : file },
        this.call,
      );
      this.nodes.push(DRIVE);
    } catch (error) {
      if (BlockDriverUnavailableError.isInstance(error)) this.ctx.skip(`this QEMU build has no '${error.driver}' block driver`, error);
      throw error;
    }
  }

  /** Writes of group `n` through HMP's qemu-io (on `node`), then the listing of every bitmap. */
  async writeGroup(n: number, node = DRIVE): Promise<BitmapListing> {
    for (const w of WRITE_GROUPS[n] ?? []) await this.vm.hmpQemuIo(node, writeCommand(w), this.call);
    for (const bit of groupClusters(n)) this.allocated.add(bit);
    return this.bitmaps();
  }

  async bitmaps(): Promise<BitmapListing> {
    return listing(await listBitmaps(this.vm.qmp, undefined, this.call));
  }

  expectListing(when: string, expected: BitmapListing, actual: BitmapListing): Promise<void> {
    return this.ctx.checking('bitmap-listing', () =>
      expectEqual(`bitmaps of every node ${when} (QEMU ${versionText(this.version)})`, expected, actual),
    );
  }

  /** bitmap0 alone, as the model says it should be. */
  expectBitmap0(when: string, actual: BitmapListing): Promise<void> {
    return this.expectListing(when, { [DRIVE]: [bitmap0(this.model.bytes)] }, actual);
  }

  /** The job ended as expected and sent exactly these BLOCK_JOB_* events, in this order. */
  async expectJob(job: BackupJob, result: JobResult, status: JobResult['status'], events: JobEvent[]): Promise<void> {
    const seen = job.events
      .filter((e) => e.event.startsWith('BLOCK_JOB_'))
      .map((e) => ({ event: e.event, data: e.data as Record<string, unknown> }));
    await this.ctx.checking('job-events', () => expectEqual(`BLOCK_JOB_* events of job ${job.id}`, events, seen));
    await this.ctx.checking('job-outcome', () => expectEqual(`end of job ${job.id}`, status, result.status));
  }

  /** A new target node `<kind>_target_<n>` on a fresh image file, then blockdev-backup into it. */
  async startBackup(file: string, target: string, args: Omit<BlockdevBackup, 'device' | 'target'>): Promise<BackupJob> {
    await createTargetNode(this.vm.qmp, { nodeName: target, filename: this.file(file), size: SIZE }, this.call);
    this.nodes.push(target);
    return startBlockdevBackup(
      this.vm.qmp,
      { device: DRIVE, target, 'filter-node-name': FILTER, 'x-perf': { 'max-workers': 1 }, ...args },
      this.call,
    );
  }

  async referenceBackup(n: number): Promise<void> {
    const job = await this.startBackup(`fbackup${n}`, `ref_target_${n}`, { 'job-id': `ref_backup_${n}`, sync: 'full' });
    const result = await job.result;
    await this.expectJob(job, result, 'completed', [completed(job.id, SIZE, SIZE)]);
  }

  /** Clusters a backup copies data for: those of its work list that hold data on drive0. */
  dataClusters(work: Iterable<number>): number[] {
    return [...work].filter((c) => this.allocated.has(c)).sort((a, b) => a - b);
  }

  /** Test backup #1's: the bitmap's clusters, or (top, full) every allocated one. */
  firstBackupClusters(): number[] {
    return this.dataClusters(this.params.sync === 'bitmap' ? this.model.bits : this.allocated);
  }

  /** Bytes test backup #1 has to copy: the bitmap, the allocated clusters, or the whole drive. */
  firstBackupLength(): number {
    if (this.params.sync === 'full') return SIZE;
    if (this.params.sync === 'top') return this.allocated.size * GRANULARITY;
    return this.model.bytes;
  }

  async run(): Promise<void> {
    const { sync, bitmapMode, failure } = this.params;
    await this.prepare();

    // 0: writes and the first reference; no bitmap anywhere yet.
    await this.expectListing('after write #0', {}, await this.writeGroup(0));
    await this.referenceBackup(0);
    await addBitmap(this.vm.qmp, { node: DRIVE, name: 'bitmap0', granularity: GRANULARITY }, this.call);

    // 1: writes, bitmap0 records them; second reference.
    const afterWrite1 = await this.writeGroup(1);
    this.model.dirtyGroup(1);
    await this.expectBitmap0('after write #1', afterWrite1);
    await this.referenceBackup(1);

    // Test backup #1, optionally failing.
    if (failure === 'intermediate') {
      // Arms blkdebug: the job's first read succeeds, its second fails.
      await this.vm.hmpQemuIo(DRIVE, 'flush', this.call);
    }
    const len1 = this.firstBackupLength();
    // Clusters without data are not copied as data (they are written as zeroes, if at all); a
    // job failing at its second read has copied its first cluster only.
    const clusters1 = this.firstBackupClusters();
    this.copied.set('bsync1', failure === 'intermediate' ? clusters1.slice(0, 1) : clusters1);
    const job1 = await this.startBackup('bsync1', 'backup_target_1', {
      'job-id': 'backup_1',
      sync,
      bitmap: 'bitmap0',
      'bitmap-mode': bitmapMode,
      'auto-finalize': false,
    });
    if (failure === 'intermediate') {
      await this.failedFirstBackup(job1, len1);
    } else {
      await this.pendingFirstBackup(job1, len1);
    }
    await this.expectBitmap0('after test backup #1', await this.bitmaps());

    // 2: more writes, third reference, then test backup #2 through bitmap0 (the recovery).
    const afterWrite3 = await this.writeGroup(3);
    this.model.dirtyGroup(3);
    await this.expectBitmap0('after write #3', afterWrite3);
    await this.referenceBackup(2);
    const len2 = this.model.bytes;
    this.copied.set('bsync2', this.dataClusters(this.model.bits));
    const job2 = await this.startBackup('bsync2', 'backup_target_2', {
      'job-id': 'backup_2',
      sync: 'bitmap',
      bitmap: 'bitmap0',
      'bitmap-mode': bitmapMode,
      'auto-finalize': false,
    });
    await job2.waitForStatus('pending', this.call);
    await job2.finalize(this.call);
    await this.expectJob(job2, await job2.result, 'completed', [pending(job2.id), completed(job2.id, len2, len2)]);
    if (bitmapMode !== 'never') this.model.clear();
    await this.expectBitmap0('after test backup #2', await this.bitmaps());

    await removeBitmap(this.vm.qmp, DRIVE, 'bitmap0', this.call);
    await this.expectListing('after removing bitmap0', {}, await this.bitmaps());
    await this.releaseMachine();

    await this.verify();
  }

  /**
   * Where the reference shuts QEMU down: remove every node the scenario added, which closes
   * (and flushes) its image as a shutdown does, so the verification reads closed images; then
   * QEMU must hold no block node and no job, as a fresh launch. Only then is it handed to the
   * next scenario; a scenario that fails before leaves its QEMU to be killed.
   */
  async releaseMachine(): Promise<void> {
    for (const node of [...this.nodes].reverse()) await removeNode(this.vm.qmp, node, this.call);
    await this.ctx.checking('nodes-released', async () => {
      const nodes = await this.vm.qmp.execute('query-named-block-nodes', { flat: true }, this.call);
      const jobs = await this.vm.qmp.execute('query-jobs', undefined, this.call);
      expectEqual(
        'block nodes and jobs QEMU holds once the scenario removed its nodes',
        { nodes: [], jobs: [] },
        { nodes: nodes.map((n) => n['node-name']), jobs: jobs.map((j) => j.id) },
      );
    });
    this.ctx.handBack(this.vm);
  }

  /** The job waits in 'pending' while group 2 is written through the filter; then cancel or finalize. */
  async pendingFirstBackup(job: BackupJob, len: number): Promise<void> {
    const { bitmapMode, failure } = this.params;
    await job.waitForStatus('pending', this.call);
    const during = await this.writeGroup(2, FILTER);
    const written = groupClusters(2).size;
    // bitmap0 is frozen while the job runs; the job's own bitmap on drive0 records group 2.
    await this.expectListing('while test backup #1 waits to be finalized', pendingListing(this.version, this.model.bytes, written), during);

    // What bitmap0 holds once the job ends: on success (on-success) or always (always) it is
    // synchronised to what was copied, i.e. cleared; then group 2's writes are merged back.
    if ((bitmapMode === 'on-success' && failure === 'none') || bitmapMode === 'always') this.model.clear();
    this.model.dirtyGroup(2);

    if (failure === 'simulated') {
      await job.cancel(this.call);
      await this.expectJob(job, await job.result, 'cancelled', [pending(job.id), cancelled(job.id, len, len)]);
    } else {
      await job.finalize(this.call);
      await this.expectJob(job, await job.result, 'completed', [pending(job.id), completed(job.id, len, len)]);
    }
  }

  /** blkdebug fails the job's second read: one cluster copied, the job fails with EIO. */
  async failedFirstBackup(job: BackupJob, len: number): Promise<void> {
    const { sync, bitmapMode } = this.params;
    const data = [...this.allocated].sort((a, b) => a - b);
    // 'full' counts the unallocated clusters it skips as done: its offset is where the failing
    // read was, the second allocated cluster. The others copy only what they need: one cluster.
    const offset = sync === 'full' ? (data[1] ?? CLUSTERS) * GRANULARITY : GRANULARITY;
    // A job that does not fail waits in 'pending' (auto-finalize off): stop it and say so.
    const ended = await Promise.race([job.result, job.waitForStatus('pending', this.call).then(() => 'pending' as const)]);
    if (ended === 'pending') {
      await job.cancel({ force: true, ...this.call });
      await job.result;
      throw new CaseAssertionError(`test backup #1 fails on the injected read error (QEMU ${versionText(this.version)})`, 'failed', 'copied everything (pending)');
    }
    await this.expectJob(job, ended, 'failed', [
      { event: 'BLOCK_JOB_ERROR', data: { device: job.id, action: 'report', operation: 'read' } },
      { event: 'BLOCK_JOB_COMPLETED', data: { device: job.id, len, offset, speed: 0, type: 'backup', error: EIO } },
    ]);
    if (bitmapMode === 'always') {
      // 'always' synchronises bitmap0 to what was done: 'top' counts every allocated cluster as
      // to be copied, the copied first cluster is clean, and 'full' leaves everything from the
      // failing cluster on dirty.
      if (sync === 'top') this.model.dirtyGroup(0);
      this.model.clearBit(this.model.firstBit());
      if (sync === 'full') {
        const fail = this.model.firstBit();
        this.model.clear();
        this.model.dirty(Array.from({ length: CLUSTERS - fail }, (_, i) => fail + i));
      }
    }
  }

  /**
   * Which clusters a test backup holds data for, in its own layer (`qemu-img map`, depth 0):
   * exactly those the job had to copy. A stronger check than the comparisons, which would not
   * see a backup that copied more than it had to.
   */
  async checkClusters(image: 'bsync1' | 'bsync2'): Promise<void> {
    const extents = await this.ctx.gathering('backup-clusters', this.ctx.tools.mapData(this.file(image), this.ctx.signal));
    const held: number[] = [];
    for (const e of extents) {
      if (e.depth !== 0) continue;
      for (let c = Math.floor(e.start / GRANULARITY); c <= Math.floor((e.start + e.length - 1) / GRANULARITY); c++) held.push(c);
    }
    await this.ctx.checking('backup-clusters', () =>
      expectEqual(`clusters with data in ${image} (its own layer)`, this.copied.get(image) ?? [], held),
    );
  }

  /** The reference's verification: rebase each test backup onto its base, then compare. */
  async verify(): Promise<void> {
    const { bitmapMode, failure } = this.params;
    // `qemu-img rebase -u`, by default in-process (image-tools' setBackingFile writes the same header).
    const rebase = (image: string, base: string): Promise<void> =>
      this.ctx.tools.rebase(this.file(image), this.file(base), this.ctx.signal);
    // Backup #2 stacks on #1 when #1 is a usable backup (it completed, or 'always' kept what it did).
    const base2 = failure === 'none' || bitmapMode === 'always' ? 'bsync1' : 'fbackup0';
    await Promise.all([rebase('bsync1', 'fbackup0'), rebase('bsync2', base2)]);
    const checks: Array<[string, string, boolean]> = [
      // A backup that failed half way differs from the drive it was taken of; a cancel while
      // pending (everything copied) does not.
      ['bsync1', 'fbackup1', failure !== 'intermediate'],
      ['bsync2', 'fbackup2', true],
      ['img', 'fbackup2', true],
    ];
    // Negative control: the same comparison must be able to say "different", and where: the
    // drive gained data after reference #1 first at cluster 1 (write #2's 0x74 at 0x10000).
    const control = this.ctx.gathering('backup-differs', this.ctx.compare(this.file('img'), this.file('fbackup1')));
    control.catch(() => undefined);
    const [results] = await Promise.all([
      Promise.all(checks.map(([a, b]) => this.ctx.gathering('backup-compare', this.ctx.compare(this.file(a), this.file(b))))),
      this.checkClusters('bsync1'),
      this.checkClusters('bsync2'),
    ]);
    for (const [i, [a, b, identical]] of checks.entries()) {
      const result = results[i];
      await this.ctx.checking('backup-compare', () => {
        if (result === undefined || result.identical !== identical) {
          throw new CaseAssertionError(
            `qemu-img compare ${a} ${b}`,
            identical ? 'identical' : 'mismatch',
            result?.identical ? 'identical' : 'mismatch',
            result ? { detail: result.message } : {},
          );
        }
      });
    }
    const differs = await control;
    await this.ctx.checking('backup-differs', () =>
      expectEqual('negative control: qemu-img compare img fbackup1', { identical: false, message: `Content mismatch at offset ${GRANULARITY}!` }, {
        identical: differs.identical,
        message: differs.message,
      }),
    );
  }
}

const pending = (id: string): JobEvent => ({ event: 'BLOCK_JOB_PENDING', data: { id, type: 'backup' } });
const completed = (device: string, len: number, offset: number): JobEvent => ({
  event: 'BLOCK_JOB_COMPLETED',
  data: { device, len, offset, speed: 0, type: 'backup' },
});
const cancelled = (device: string, len: number, offset: number): JobEvent => ({
  event: 'BLOCK_JOB_CANCELLED',
  data: { device, len, offset, speed: 0, type: 'backup' },
});

export function caseId(p: ScenarioParams): string {
  return `257.${p.sync}.${p.bitmapMode}.${p.failure === 'none' ? 'no-failure' : p.failure}`;
}

/** The reference's order: sync 'bitmap' with every bitmap mode, then 'full' and 'top' without 'never'. */
export function scenarioParams(): ScenarioParams[] {
  const failures: Failure[] = ['simulated', 'intermediate', 'none'];
  const out: ScenarioParams[] = [];
  for (const bitmapMode of ['never', 'on-success', 'always'] as const) {
    for (const failure of failures) out.push({ sync: 'bitmap', bitmapMode, failure });
  }
  for (const sync of ['full', 'top'] as const) {
    for (const bitmapMode of ['on-success', 'always'] as const) {
      for (const failure of failures) out.push({ sync, bitmapMode, failure });
    }
  }
  return out;
}

export const bitmapSyncCases: ReadonlyArray<CaseDefinition<CaseContext>> = scenarioParams().map((params) => ({
  id: caseId(params),
  weight: 10,
  run: (ctx: CaseContext) => new BitmapSyncScenario(ctx, params).run(),
}));
