import { existsSync } from 'node:fs';

import { QmpCommandError } from '@qmpkit/client';
import { qemuImg } from '@qmpkit/image-tools';
import type { QemuMachine } from '@qmpkit/machine';

import {
  BlockDriverUnavailableError,
  BlockdevCreateError,
  addBitmap,
  addNode,
  createTargetNode,
  getBitmap,
  listBitmaps,
  removeNode,
  runBlockdevCreate,
  startBlockdevBackup,
} from '../src/index.js';
import type { BackupQmp, BitmapStatus } from '../src/index.js';
import { Scratch, qmpOf } from './helpers.js';

// Nodes added at run time and blockdev-backup into them, the way QEMU's iotest 257 drives a
// backup: target nodes, a named copy-before-write filter, x-perf, auto-finalize off, and a
// job cancelled with force while it waits to be finalized.

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const CLUSTER = 65536;

describe('block nodes and blockdev-backup into them', () => {
  const scratch = new Scratch();
  let vm: QemuMachine;
  let qmp: BackupQmp;
  let source: string;

  beforeAll(async () => {
    await scratch.init();
    source = await scratch.image('source.qcow2', '64M', [
      [0x11, 0, '64k'],
      [0x22, '1M', '64k'],
    ]);
    vm = await scratch.launch();
    qmp = qmpOf(vm);
    await addNode(qmp, { driver: 'qcow2', 'node-name': 'src', file: { driver: 'file', filename: source } });
  });
  afterAll(() => scratch.cleanup());

  it('creates a target in-process (refusing an existing file) and backs up into it', async () => {
    const file = scratch.path('full-in-process.qcow2');
    await createTargetNode(qmp, { nodeName: 'full0', filename: file, size: SIZE });
    const again = await createTargetNode(qmp, { nodeName: 'full0b', filename: file, size: SIZE }).catch((e: unknown) => e);
    expect((again as NodeJS.ErrnoException).code).toBe('EEXIST');

    const job = await startBlockdevBackup(qmp, { 'job-id': 'full0-job', device: 'src', target: 'full0', sync: 'full' });
    expect(await job.result).toMatchObject({ status: 'completed', offset: SIZE, len: SIZE });
    await removeNode(qmp, 'full0');
    // The source is still open in QEMU: qemu-img reads it with -U (shared).
    expect((await qemuImg.compare(source, file, { formatA: 'qcow2', formatB: 'qcow2', forceShare: true })).identical).toBe(true);
  });

  it('creates a target through blockdev-create jobs (dismissed, nothing left) with a cluster size', async () => {
    const file = scratch.path('full-qemu.qcow2');
    await createTargetNode(qmp, { nodeName: 'full1', filename: file, size: SIZE, clusterSize: 128 * 1024, create: 'blockdev-create' });
    expect(await vm.qmp.execute('query-jobs')).toEqual([]);
    const nodes = await vm.qmp.execute('query-named-block-nodes', { flat: true });
    expect(nodes.filter((n) => n['node-name'] === 'full1' || n['node-name'] === 'full1-file').map((n) => n.drv).sort()).toEqual([
      'file',
      'qcow2',
    ]);
    const job = await startBlockdevBackup(qmp, { 'job-id': 'full1-job', device: 'src', target: 'full1', sync: 'full' });
    expect((await job.result).status).toBe('completed');
    await removeNode(qmp, 'full1');
    await removeNode(qmp, 'full1-file');
    const info = await qemuImg.info(file);
    expect(info['cluster-size']).toBe(128 * 1024);
    expect(info['virtual-size']).toBe(SIZE);
    // The source is still open in QEMU: qemu-img reads it with -U (shared).
    expect((await qemuImg.compare(source, file, { formatA: 'qcow2', formatB: 'qcow2', forceShare: true })).identical).toBe(true);
  });

  it('reports a failed blockdev-create job with QEMU\'s reason and dismisses it', async () => {
    const file = scratch.path('bad-cluster.qcow2');
    await runBlockdevCreate(qmp, 'bad-file', { driver: 'file', filename: file, size: 0 });
    await addNode(qmp, { driver: 'file', 'node-name': 'bad-file-node', filename: file });
    const error = await runBlockdevCreate(qmp, 'bad-format', { driver: 'qcow2', file: 'bad-file-node', size: SIZE, 'cluster-size': 12345 }).catch(
      (e: unknown) => e,
    );
    expect(BlockdevCreateError.isInstance(error)).toBe(true);
    expect((error as BlockdevCreateError).jobId).toBe('bad-format');
    expect((error as BlockdevCreateError).qemuError).toMatch(/[Cc]luster size/);
    expect(await vm.qmp.execute('query-jobs')).toEqual([]);
    await removeNode(qmp, 'bad-file-node');
  });

  it('names a driver the build lacks, and passes other refusals through', async () => {
    const missing = await addNode(qmp, {
      driver: 'qcow2',
      'node-name': 'nowhere',
      // A driver name QEMU does not know is what a build without the driver reports too.
      file: { driver: 'no-such-driver' as 'file', filename: scratch.path('x') },
    }).catch((e: unknown) => e);
    expect(BlockDriverUnavailableError.isInstance(missing)).toBe(true);
    expect((missing as BlockDriverUnavailableError).driver).toBe('no-such-driver');

    const duplicate = await addNode(qmp, { driver: 'qcow2', 'node-name': 'src', file: { driver: 'file', filename: source } }).catch(
      (e: unknown) => e,
    );
    expect(QmpCommandError.isInstance(duplicate)).toBe(true);
    expect(BlockDriverUnavailableError.isInstance(duplicate)).toBe(false);
  });

  it('blockdev-backup with a named filter and x-perf waits in pending; force-cancel keeps the bitmap', async () => {
    await addBitmap(qmp, { node: 'src', name: 'b0', granularity: CLUSTER });
    await vm.hmpQemuIo('src', 'write -P0x33 2M 64k');
    const target = scratch.path('inc.qcow2');
    await createTargetNode(qmp, { nodeName: 'inc0', filename: target, size: SIZE });
    const job = await startBlockdevBackup(qmp, {
      'job-id': 'inc-job',
      device: 'src',
      target: 'inc0',
      sync: 'bitmap',
      bitmap: 'b0',
      'bitmap-mode': 'on-success',
      'auto-finalize': false,
      'filter-node-name': 'cbw-filter',
      'x-perf': { 'max-workers': 1 },
    });
    await job.waitForStatus('pending');

    // The filter is a node of its own, with QEMU's anonymous bitmaps; bitmap b0 is busy.
    const all = await listBitmaps(qmp);
    expect([...all.keys()].sort()).toEqual(['cbw-filter', 'src']);
    const anonymous = (list: BitmapStatus[] | undefined): BitmapStatus[] => (list ?? []).filter((b) => b.name === '');
    expect(anonymous(all.get('cbw-filter')).length).toBeGreaterThan(0);
    expect(await getBitmap(qmp, 'src', 'b0')).toMatchObject({ count: CLUSTER, busy: true, recording: true });

    // A write through the filter while pending is recorded by the job's anonymous bitmap on src.
    await vm.hmpQemuIo('cbw-filter', 'write -P0x44 3M 64k');
    const recording = anonymous((await listBitmaps(qmp)).get('src')).filter((b) => b.recording);
    expect(recording.map((b) => b.count)).toEqual([CLUSTER]);

    await job.cancel({ force: true });
    const result = await job.result;
    expect(result.status).toBe('cancelled');
    // Cancelled: on-success keeps what b0 had and merges the write made during the job.
    expect(await getBitmap(qmp, 'src', 'b0')).toMatchObject({ count: 2 * CLUSTER, busy: false, recording: true });
    expect([...(await listBitmaps(qmp)).keys()]).toEqual(['src']);
    expect(await vm.qmp.execute('query-jobs')).toEqual([]);
    expect(existsSync(target)).toBe(true);
  });

  it('force-cancels through block-job-cancel, which QEMU refuses for an unknown job', async () => {
    const job = await startBlockdevBackup(qmp, {
      'job-id': 'gone-job',
      device: 'src',
      target: 'inc0',
      sync: 'full',
      'auto-finalize': false,
    });
    await job.waitForStatus('pending');
    await job.cancel({ force: true });
    expect((await job.result).status).toBe('cancelled');
    const error = await job.cancel({ force: true }).catch((e: unknown) => e);
    expect(QmpCommandError.isInstance(error)).toBe(true);
    expect((error as QmpCommandError).command).toMatchObject({ execute: 'block-job-cancel', arguments: { device: 'gone-job', force: true } });
  });
});
