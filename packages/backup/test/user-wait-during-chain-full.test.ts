// Regression (issue 11): a user's `vm.qmp.events.wait('BLOCK_JOB_COMPLETED')` running while
// `chain.full()` tracked its job took the event out of the client's shared buffer: the
// backup succeeded in QEMU, but the chain threw BackupJobError ("the job ended without
// BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED") and the manifest recorded nothing. The job
// now has a listener of its own, opened before its command, so both succeed here.
import { readFile } from 'node:fs/promises';
import { qemuImg } from '@qmpkit/image-tools';
import type { QemuMachine } from '@qmpkit/machine';
import { BackupChain, type BackupJob, type BackupQmp, type Manifest } from '../src/index.js';
import { DRIVE0_PATTERN, Scratch, expectJobsSawAllTheirEvents, qmpOf } from './helpers.js';

describe("a user's event waits while a chain backs up", () => {
  const scratch = new Scratch();
  let vm: QemuMachine;
  let qmp: BackupQmp;
  let drive0: string;

  beforeEach(async () => {
    await scratch.init();
    drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    vm = await scratch.launch([{ file: drive0, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    qmp = qmpOf(vm);
  });
  afterEach(() => scratch.cleanup());

  it('wait for BLOCK_JOB_COMPLETED during chain.full(): both succeed and the manifest records the backup', async () => {
    const chain = await BackupChain.open({ qmp, dir: scratch.path('backups'), node: 'drive0' });
    const jobs: BackupJob[] = [];
    // As the client's README shows it, started before the backup so it cannot miss the event.
    const userWait = vm.qmp.events.wait('BLOCK_JOB_COMPLETED', { timeout: 60_000 });
    const full = await chain.full({ onJob: (job) => jobs.push(job) });
    const completed = await userWait;

    expect(completed.data.device).toBe(jobs[0]?.id);
    expect(completed.data.offset).toBe(67108864);
    expect(full.backups[0]).toMatchObject({ kind: 'full', result: 'completed', jobLength: 67108864 });
    const manifest = JSON.parse(await readFile(chain.manifestPath, 'utf8')) as Manifest;
    expect(manifest.pending).toBeUndefined();
    expect(manifest.drives[0]?.backups.map((b) => [b.kind, b.result, b.jobId])).toEqual([['full', 'completed', jobs[0]?.id]]);
    // The job saw the very event the user got, with all its others.
    expect(jobs[0]?.events).toContain(completed);
    expectJobsSawAllTheirEvents(vm, jobs);

    await vm.shutdown({ timeout: 10_000 });
    const target = full.backups[0]?.file ?? '';
    expect((await qemuImg.compare(drive0, scratch.path(`backups/${target}`))).identical).toBe(true);
  });

  it('a user who drains their own listener and clears the history as every event arrives cannot break it either', async () => {
    const chain = await BackupChain.open({ qmp, dir: scratch.path('backups'), node: 'drive0' });
    using everything = vm.qmp.events.listen();
    const greedy = (): void => {
      everything.drain();
      vm.qmp.events.clear();
    };
    vm.qmp.events.on('event', greedy);
    try {
      const full = await chain.full();
      expect(full.backups[0]).toMatchObject({ kind: 'full', result: 'completed' });
      expect(chain.backups).toHaveLength(1);
    } finally {
      vm.qmp.events.off('event', greedy);
    }
  });
});
