import { QmpCommandError } from '@qmpkit/client';
import { qemuImg } from '@qmpkit/image-tools';
import type { QemuMachine } from '@qmpkit/machine';
import { InvalidTransactionError, Transaction, addBitmap, getBitmap, startDriveBackup } from '../src/index.js';
import type { BackupQmp } from '../src/index.js';
import {
  DRIVE0_PATTERN,
  DRIVE1_PATTERN,
  Scratch,
  WRITES_A,
  WRITES_B,
  addBlkdebugNode,
  expectJobsSawAllTheirEvents,
  hmpWrites,
  qmpOf,
} from './helpers.js';

describe('transactions against QEMU', () => {
  const scratch = new Scratch();
  let vm: QemuMachine;
  let qmp: BackupQmp;

  beforeEach(async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    vm = await scratch.launch([{ file: drive0, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    qmp = qmpOf(vm);
  });
  afterEach(() => scratch.cleanup());

  it('anchors two bitmaps to one full backup, and both incrementals are correct', async () => {
    await addBitmap(qmp, { node: 'drive0', name: 'bitmap0' });
    await hmpWrites(vm, 'drive0', WRITES_A);
    await addBitmap(qmp, { node: 'drive0', name: 'bitmap1' });
    const full = scratch.path('full.qcow2');
    const run = await new Transaction()
      .bitmapClear('drive0', 'bitmap0')
      .bitmapClear('drive0', 'bitmap1')
      .driveBackup({ device: 'drive0', sync: 'full', target: full, format: 'qcow2' })
      .run(qmp);
    expect(run.jobs.map((j) => j.id)).toEqual(['drive0']);
    expect((await run.results()).map((r) => r.status)).toEqual(['completed']);
    expect((await getBitmap(qmp, 'drive0', 'bitmap0')).count).toBe(0);

    await hmpWrites(vm, 'drive0', WRITES_B);
    const targets: string[] = [];
    const jobs = [...run.jobs];
    for (const bitmap of ['bitmap0', 'bitmap1']) {
      const target = scratch.path(`${bitmap}.inc.qcow2`);
      await qemuImg.create(target, { format: 'qcow2', size: '64M', backingFile: full, backingFormat: 'qcow2' });
      const job = await startDriveBackup(qmp, {
        device: 'drive0',
        sync: 'incremental',
        bitmap,
        target,
        format: 'qcow2',
        mode: 'existing',
      });
      expect((await job.result).len).toBe(1507328);
      targets.push(target);
      jobs.push(job);
    }
    expectJobsSawAllTheirEvents(vm, jobs);
    await vm.shutdown({ timeout: 10_000 });
    for (const t of targets) expect((await qemuImg.compare(t, scratch.path('drive0.qcow2'))).identical).toBe(true);
  });

  it('refuses grouped completion with a bitmap action before QEMU does', async () => {
    const tx = new Transaction()
      .bitmapAdd({ node: 'drive0', name: 'x' })
      .driveBackup({ device: 'drive0', sync: 'full', target: scratch.path('x.qcow2'), format: 'qcow2' })
      .completionMode('grouped');
    await expect(tx.run(qmp)).rejects.toThrow(InvalidTransactionError);
    await expect(new Transaction().run(qmp)).rejects.toThrow(InvalidTransactionError);
    await expect(getBitmap(qmp, 'drive0', 'x')).rejects.toThrow(/no dirty bitmap/);
  });

  it('starts nothing when QEMU refuses the transaction, and leaves no stray events', async () => {
    // The first action's job is created in the transaction's prepare phase and torn down again.
    const tx = new Transaction()
      .driveBackup({ device: 'drive0', sync: 'full', target: scratch.path('y.qcow2'), format: 'qcow2' })
      .driveBackup({ device: 'nope', sync: 'full', target: scratch.path('z.qcow2'), format: 'qcow2' });
    const error = await tx.run(qmp).catch((e: unknown) => e);
    expect(QmpCommandError.isInstance(error)).toBe(true);
    expect((error as QmpCommandError).desc).toMatch(/nope/);
    expect(await vm.qmp.execute('query-jobs')).toEqual([]);
    // The trackers heard the job QEMU created and tore down again, and stopped listening.
    expect(vm.qmp.events.consumerCount).toBe(0);
  });

  it('cancels the other drive\'s job when one fails in a grouped transaction, and the re-run succeeds', async () => {
    const drive1 = await scratch.image('drive1.qcow2', '64M', DRIVE1_PATTERN);
    await addBlkdebugNode(vm, 'drive1', drive1);
    await addBitmap(qmp, { node: 'drive0', name: 'bitmap0' });
    await addBitmap(qmp, { node: 'drive1', name: 'bitmap0' });
    const fulls = { drive0: scratch.path('d0.full.qcow2'), drive1: scratch.path('d1.full.qcow2') };
    for (const d of ['drive0', 'drive1'] as const) {
      await (await startDriveBackup(qmp, { device: d, sync: 'full', target: fulls[d], format: 'qcow2' })).expectCompleted();
    }
    await hmpWrites(vm, 'drive0', WRITES_A);
    await hmpWrites(vm, 'drive1', [
      [0xba, 0, 512],
      [0xef, '16M', '256k'],
      [0x46, '32736k', '64k'],
    ]);

    const attempt = async (n: number) => {
      const tx = new Transaction().completionMode('grouped');
      const targets: Record<string, string> = {};
      for (const d of ['drive0', 'drive1'] as const) {
        targets[d] = scratch.path(`${d}.inc${n}.qcow2`);
        await qemuImg.create(targets[d], { format: 'qcow2', size: '64M', backingFile: fulls[d], backingFormat: 'qcow2' });
        tx.driveBackup({ device: d, sync: 'incremental', bitmap: 'bitmap0', target: targets[d], format: 'qcow2', mode: 'existing' });
      }
      const run = await tx.run(qmp);
      return { results: await run.results(), targets, jobs: run.jobs };
    };

    const first = await attempt(0);
    expect(first.results.map((r) => [r.id, r.status])).toEqual([
      ['drive0', 'cancelled'],
      ['drive1', 'failed'],
    ]);
    expect(first.results[1]).toMatchObject({ error: 'Input/output error', errors: [{ action: 'report', operation: 'read' }] });
    expectJobsSawAllTheirEvents(vm, first.jobs);
    expect((await getBitmap(qmp, 'drive0', 'bitmap0')).count).toBe(458752);
    expect((await getBitmap(qmp, 'drive1', 'bitmap0')).count).toBe(458752);

    const second = await attempt(1);
    expect(second.results.map((r) => r.status)).toEqual(['completed', 'completed']);
    expectJobsSawAllTheirEvents(vm, second.jobs);
    await vm.shutdown({ timeout: 10_000 });
    expect((await qemuImg.compare(second.targets['drive0'] as string, scratch.path('drive0.qcow2'))).identical).toBe(true);
    expect((await qemuImg.compare(second.targets['drive1'] as string, drive1)).identical).toBe(true);
  });
});
