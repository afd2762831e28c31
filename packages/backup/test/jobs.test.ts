import { QmpCommandError } from '@qmpkit/client';
import { qemuImg } from '@qmpkit/image-tools';
import type { QemuMachine } from '@qmpkit/machine';
import { addBitmap, getBitmap, removeBitmap, startBlockdevBackup, startDriveBackup } from '../src/index.js';
import type { BackupQmp, BlockJobErrorInfo, JobProgress, JobStatus } from '../src/index.js';
import { DRIVE0_PATTERN, Scratch, WRITES_A, WRITES_B, addBlkdebugNode, expectJobsSawAllTheirEvents, hmpWrites, qmpOf } from './helpers.js';

describe('backup jobs against QEMU', () => {
  const scratch = new Scratch();
  let vm: QemuMachine;
  let qmp: BackupQmp;
  let drive0: string;

  beforeAll(async () => {
    await scratch.init();
    drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    vm = await scratch.launch([{ file: drive0, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    qmp = qmpOf(vm);
  });
  afterAll(() => scratch.cleanup());
  afterEach(() => {
    // Every job closed its own listener once it ended.
    expect(vm.qmp.events.consumerCount).toBe(0);
  });

  it('follows a full drive-backup to its last event and sees all of them', async () => {
    const target = scratch.path('full.qcow2');
    const statuses: JobStatus[] = [];
    const job = await startDriveBackup(
      qmp,
      { device: 'drive0', sync: 'full', target, format: 'qcow2' },
      { onStatus: (s) => statuses.push(s) },
    );
    expect(job.id).toBe('drive0');
    const result = await job.result;
    expect(result).toMatchObject({ id: 'drive0', status: 'completed', offset: 67108864, len: 67108864, errors: [] });
    expect(result.error).toBeUndefined();
    expect(statuses[0]).toBe('created');
    expect(statuses[statuses.length - 1]).toBe('null');
    expect(statuses).toContain('concluded');
    expect(job.events.map((e) => e.event)).toContain('BLOCK_JOB_COMPLETED');
    expectJobsSawAllTheirEvents(vm, [job]);
    expect(result.qemuDurationMs).toBeGreaterThan(0);
    expect(result.elapsedMs).toBeGreaterThanOrEqual(result.qemuDurationMs - 1);
    expect(await vm.qmp.execute('query-jobs')).toEqual([]);
    expect((await qemuImg.compare(drive0, target, { forceShare: true })).identical).toBe(true);
  });

  it('runs an incremental with a bitmap, which QEMU then resets', async () => {
    const full = scratch.path('anchor.qcow2');
    await (await startDriveBackup(qmp, { device: 'drive0', sync: 'full', target: full, format: 'qcow2' })).expectCompleted();
    await addBitmap(qmp, { node: 'node0', name: 'inc' });
    try {
      await hmpWrites(vm, 'drive0', WRITES_A);
      const target = scratch.path('inc.qcow2');
      await qemuImg.create(target, { format: 'qcow2', size: '64M', backingFile: full, backingFormat: 'qcow2' });
      const job = await startDriveBackup(qmp, {
        'job-id': 'inc0',
        device: 'drive0',
        sync: 'incremental',
        bitmap: 'inc',
        target,
        format: 'qcow2',
        mode: 'existing',
      });
      const result = await job.result;
      expect(result).toMatchObject({ id: 'inc0', status: 'completed', len: 458752, offset: 458752 });
      expect((await getBitmap(qmp, 'node0', 'inc')).count).toBe(0);
      expect((await qemuImg.compare(target, drive0, { forceShare: true })).identical).toBe(true);
    } finally {
      await removeBitmap(qmp, 'node0', 'inc');
    }
  });

  it('throws QEMU\'s error when the job cannot start, and leaves no stray events', async () => {
    const error = await startDriveBackup(qmp, {
      device: 'drive0',
      sync: 'incremental',
      bitmap: 'missing',
      target: scratch.path('never.qcow2'),
      format: 'qcow2',
    }).catch((e: unknown) => e);
    expect(QmpCommandError.isInstance(error)).toBe(true);
    expect((error as QmpCommandError).desc).toMatch(/missing/);
  });

  it('cancels, pauses and resumes a rate-limited job and reports progress', async () => {
    const progress: JobProgress[] = [];
    const job = await startDriveBackup(
      qmp,
      { device: 'drive0', sync: 'full', target: scratch.path('slow.qcow2'), format: 'qcow2', speed: 1024 * 1024 },
      { onProgress: (p) => progress.push(p), progressInterval: 20 },
    );
    await job.waitForStatus('running', { timeout: 10_000 });
    await job.pause();
    await job.waitForStatus('paused', { timeout: 10_000 });
    expect((await job.query())?.status).toBe('paused');
    await job.resume();
    await job.waitForStatus('running', { timeout: 10_000 });
    const seen: JobProgress[] = [];
    for await (const p of job.progress({ interval: 20 })) {
      seen.push(p);
      if (seen.length === 2) break;
    }
    expect(seen[0]).toMatchObject({ id: 'drive0', total: 67108864 });
    await job.cancel();
    const result = await job.result;
    expect(result.status).toBe('cancelled');
    expect(result.offset).toBeLessThan(result.len);
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.every((p) => p.total === 67108864)).toBe(true);
  });

  it('reads the bitmap through the device name while a job holds it, and a cancelled job keeps it', async () => {
    await addBitmap(qmp, { node: 'node0', name: 'held' });
    try {
      await hmpWrites(vm, 'drive0', [[0x5a, '4M', '4M']]);
      const target = scratch.path('held.qcow2');
      await qemuImg.create(target, { format: 'qcow2', size: '64M' });
      const job = await startDriveBackup(qmp, {
        device: 'drive0',
        sync: 'incremental',
        bitmap: 'held',
        target,
        format: 'qcow2',
        mode: 'existing',
        speed: 512 * 1024,
      });
      await job.waitForStatus('running', { timeout: 10_000 });
      await job.pause();
      await job.waitForStatus('paused', { timeout: 10_000 });
      // The device's root is now the job's copy-before-write filter; the bitmap is on node0 below it.
      for (const name of ['drive0', 'node0']) {
        expect(await getBitmap(qmp, name, 'held')).toMatchObject({ busy: true, recording: true, count: 4194304 });
      }
      await job.cancel();
      expect((await job.result).status).toBe('cancelled');
      expect(await getBitmap(qmp, 'drive0', 'held')).toMatchObject({ busy: false, count: 4194304 });
    } finally {
      await removeBitmap(qmp, 'node0', 'held');
    }
  });

  it('waits in pending with auto-finalize off, and dismisses a concluded job with auto-dismiss off', async () => {
    const job = await startDriveBackup(qmp, {
      device: 'drive0',
      sync: 'full',
      target: scratch.path('manual.qcow2'),
      format: 'qcow2',
      'auto-finalize': false,
      'auto-dismiss': false,
    });
    await job.waitForStatus('pending', { timeout: 10_000 });
    expect((await job.query())?.status).toBe('pending');
    await job.finalize();
    const result = await job.result;
    expect(result.status).toBe('completed');
    expect(job.events.map((e) => e.event)).toEqual(expect.arrayContaining(['BLOCK_JOB_PENDING', 'BLOCK_JOB_COMPLETED']));
    expect(await vm.qmp.execute('query-jobs')).toEqual([]);
  });

  it('backs up into a node added with blockdev-add', async () => {
    const target = await scratch.image('bd-target.qcow2', '64M');
    await vm.qmp.execute('blockdev-add', { 'node-name': 'target0', driver: 'qcow2', file: { driver: 'file', filename: target } });
    try {
      const job = await startBlockdevBackup(qmp, { 'job-id': 'bd0', device: 'node0', target: 'target0', sync: 'full' });
      expect((await job.result).status).toBe('completed');
    } finally {
      await vm.qmp.execute('blockdev-del', { 'node-name': 'target0' });
    }
    expect((await qemuImg.compare(drive0, target, { forceShare: true })).identical).toBe(true);
  });
});

describe('backup jobs that hit I/O errors (blkdebug)', () => {
  const scratch = new Scratch();
  let vm: QemuMachine;
  let qmp: BackupQmp;
  let file: string;

  beforeEach(async () => {
    await scratch.init();
    file = await scratch.image('err0.qcow2', '64M', DRIVE0_PATTERN);
    vm = await scratch.launch();
    qmp = qmpOf(vm);
    await addBlkdebugNode(vm, 'drive0', file);
  });
  afterEach(() => scratch.cleanup());

  async function anchor(): Promise<string> {
    const full = scratch.path('full.qcow2');
    await (await startDriveBackup(qmp, { device: 'drive0', sync: 'full', target: full, format: 'qcow2' })).expectCompleted();
    await addBitmap(qmp, { node: 'drive0', name: 'bitmap0' });
    return full;
  }

  async function incremental(parent: string, name: string, extra: { 'on-source-error'?: 'stop' } = {}, onError?: (e: BlockJobErrorInfo) => void) {
    const target = scratch.path(name);
    await qemuImg.create(target, { format: 'qcow2', size: '64M', backingFile: parent, backingFormat: 'qcow2' });
    const job = await startDriveBackup(
      qmp,
      { device: 'drive0', sync: 'incremental', bitmap: 'bitmap0', target, format: 'qcow2', mode: 'existing', ...extra },
      onError ? { onError: (e, j) => { onError(e); void j.resume(); } } : {},
    );
    return { job, target };
  }

  it('reports the failure, keeps the bitmap, and the retry is correct', async () => {
    const full = await anchor();
    await hmpWrites(vm, 'drive0', WRITES_A);
    const failed = await incremental(full, 'inc0.qcow2');
    const r1 = await failed.job.result;
    expect(r1.status).toBe('failed');
    expect(r1.error).toBe('Input/output error');
    expect(r1.errors).toEqual([{ action: 'report', operation: 'read' }]);
    expect((await getBitmap(qmp, 'drive0', 'bitmap0')).count).toBe(458752);

    await hmpWrites(vm, 'drive0', WRITES_B);
    const retry = await incremental(full, 'inc1.qcow2');
    const r2 = await retry.job.result;
    expect(r2.status).toBe('completed');
    expect(r2.len).toBeGreaterThan(458752);
    expect((await getBitmap(qmp, 'drive0', 'bitmap0')).count).toBe(0);
    expectJobsSawAllTheirEvents(vm, [failed.job, retry.job]);
    await vm.shutdown({ timeout: 10_000 });
    expect((await qemuImg.compare(retry.target, file)).identical).toBe(true);
  });

  it('stops on the error with on-source-error=stop, and completes when resumed', async () => {
    const full = await anchor();
    await hmpWrites(vm, 'drive0', WRITES_A);
    const errors: BlockJobErrorInfo[] = [];
    const { job, target } = await incremental(full, 'inc0.qcow2', { 'on-source-error': 'stop' }, (e) => errors.push(e));
    const result = await job.result;
    expect(errors).toEqual([{ action: 'stop', operation: 'read' }]);
    expect(result).toMatchObject({ status: 'completed', errors: [{ action: 'stop', operation: 'read' }] });
    expect((await getBitmap(qmp, 'drive0', 'bitmap0')).count).toBe(0);
    expectJobsSawAllTheirEvents(vm, [job]);
    await vm.shutdown({ timeout: 10_000 });
    expect((await qemuImg.compare(target, file)).identical).toBe(true);
  });
});
