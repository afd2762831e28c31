// Issue 9: Ctrl-C in the CLI left QEMU's job running, a partial target on disk and a
// 'pending' manifest; a full started while that job still ran failed with a misleading
// "Dirty bitmap not found", and so did anything after a killed CLI. Now SIGINT cancels the
// job and undoes the run (exit 130), and a run killed outright leaves a job the next run
// finds by its id and reports as such.
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { QemuMachine } from '@qmpkit/machine';
import { QmpClient } from '@qmpkit/client';
import { BackupChain, JobTrackingError, PendingRunError, getBitmap, readRunLog } from '../src/index.js';
import type { Manifest } from '../src/index.js';
import type { JobInfo } from '../src/qapi.js';
import { DRIVE0_PATTERN, Scratch, hmpWrites, launchWithSocket, targetNodes, waitForJob, waitForText } from './helpers.js';

const MiB = 1048576;

async function manifestOf(dir: string): Promise<Manifest> {
  return JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest;
}

async function jobs(vm: QemuMachine): Promise<unknown[]> {
  return (await vm.qmp.execute('query-jobs')) as unknown[];
}

describe('interrupted CLI runs', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  /**
   * Run the CLI throttled, SIGKILL it once its job runs, then let the orphaned job finish: it
   * waits in 'concluded' with its result (chain jobs run with auto-dismiss off).
   */
  async function orphanThatCompletes(vm: QemuMachine, args: string[]): Promise<JobInfo> {
    const run = scratch.cli([...args, '--speed', String(MiB)]);
    const job = await waitForJob(vm, (j) => j.status === 'running');
    run.child.kill('SIGKILL');
    await run.done;
    await vm.qmp.execute('block-job-set-speed', { device: job.id, speed: 0 });
    await waitForJob(vm, (j) => j.id === job.id && j.status === 'concluded');
    return job;
  }

  async function setup(): Promise<{ vm: QemuMachine; socket: string; drive0: string; dir: string }> {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const { vm, socket } = await launchWithSocket(scratch, drive0);
    return { vm, socket, drive0, dir: scratch.path('backups') };
  }

  it('SIGINT during a throttled full cancels the job, leaves nothing behind, and the next full and incremental verify', async () => {
    const { vm, socket, drive0, dir } = await setup();
    const run = scratch.cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0', '--speed', String(MiB)]);
    await waitForJob(vm, (j) => j.status === 'running');
    run.child.kill('SIGINT');
    const result = await run.done;
    expect(result.code).toBe(130);
    expect(result.stderr).toMatch(/SIGINT: cancelling the backup job/);
    expect(await jobs(vm)).toEqual([]);
    expect(await targetNodes(vm)).toEqual([]);
    // No manifest (there was no chain), no target, no bitmap: only the run log says what happened.
    expect((await readdir(dir)).sort()).toEqual(['manifest.runs.jsonl']);
    expect((await readRunLog(join(dir, 'manifest.json'))).map((e) => [e.kind, e.outcome])).toEqual([['full', 'aborted']]);
    expect((await vm.qmp.execute('query-block'))[0]?.inserted?.['dirty-bitmaps'] ?? []).toEqual([]);

    expect((await scratch.cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0']).done).code).toBe(0);
    await hmpWrites(vm, 'drive0', [[0x31, '5M', '64k']]);
    const inc = await scratch.cli(['incremental', '--socket', socket, '--dir', dir, '--json']).done;
    expect(inc.code).toBe(0);
    expect(JSON.parse(inc.stdout)).toMatchObject({ backups: [{ kind: 'incremental', bytes: 65536 }] });
    await vm.shutdown({ timeout: 10_000 });
    expect((await scratch.cli(['verify', '--dir', dir, '--source', `drive0=${drive0}`]).done).code).toBe(0);
  });

  it('SIGINT during an incremental undoes it: the bitmap keeps every write, the next incremental copies them all and verifies', async () => {
    const { vm, socket, drive0, dir } = await setup();
    expect((await scratch.cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0']).done).code).toBe(0);
    const before = await readFile(join(dir, 'manifest.json'), 'utf8');
    const bitmap = (await manifestOf(dir)).drives[0]?.bitmap as string;
    await hmpWrites(vm, 'drive0', [[0x5a, '4M', '4M']]);
    const run = scratch.cli(['incremental', '--socket', socket, '--dir', dir, '--speed', String(MiB)]);
    await waitForJob(vm, (j) => j.status === 'running');
    // Writes during the cancelled run are kept too.
    await hmpWrites(vm, 'drive0', [[0x5b, '20M', '64k']]);
    run.child.kill('SIGINT');
    const result = await run.done;
    expect(result.code).toBe(130);
    expect(await jobs(vm)).toEqual([]);
    expect(await targetNodes(vm)).toEqual([]);
    expect(await readFile(join(dir, 'manifest.json'), 'utf8')).toBe(before);
    expect((await readdir(dir)).filter((f) => f.includes('.inc.'))).toEqual([]);
    expect((await getBitmap(vm.qmp, 'drive0', bitmap)).count).toBe(4 * MiB + 65536);
    expect((await readRunLog(join(dir, 'manifest.json'))).at(-1)).toMatchObject({ kind: 'incremental', outcome: 'aborted' });

    const status = await scratch.cli(['status', '--socket', socket, '--dir', dir]).done;
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/last run: incremental \S+ aborted/);
    const inc = await scratch.cli(['incremental', '--socket', socket, '--dir', dir, '--json']).done;
    expect(inc.code).toBe(0);
    expect(JSON.parse(inc.stdout)).toMatchObject({ backups: [{ kind: 'incremental', bytes: 4 * MiB + 65536 }] });
    await vm.shutdown({ timeout: 10_000 });
    expect((await scratch.cli(['verify', '--dir', dir, '--source', `drive0=${drive0}`]).done).code).toBe(0);
  });

  it('SIGKILL of the CLI mid-job leaves an orphan job that the next run reports, never a missing bitmap; cancelling it continues the chain', async () => {
    const { vm, socket, drive0, dir } = await setup();
    expect((await scratch.cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0']).done).code).toBe(0);
    await hmpWrites(vm, 'drive0', [[0x5a, '4M', '4M']]);
    // Slow enough (64 KiB/s for 4 MiB) that it is still running through every step below.
    const run = scratch.cli(['incremental', '--socket', socket, '--dir', dir, '--speed', String(64 * 1024)]);
    const job = await waitForJob(vm, (j) => j.status === 'running');
    run.child.kill('SIGKILL');
    expect((await run.done).signal).toBe('SIGKILL');
    const pending = (await manifestOf(dir)).pending;
    expect(pending?.drives?.[0]?.jobId).toBe(job.id);
    // The killed run's target is still open in QEMU; the manifest names its node.
    expect(await targetNodes(vm)).toEqual([pending?.drives?.[0]?.targetNode]);

    const status = await scratch.cli(['status', '--socket', socket, '--dir', dir]).done;
    expect(status.code).toBe(4);
    expect(status.stdout).toContain(job.id);
    expect(status.stdout).toMatch(/is gone: cancel it/);
    expect(status.stdout).not.toMatch(/not carry|bitmap-missing|needs a new full/);
    for (const command of [['incremental'], ['full', '--node', 'drive0']]) {
      const refused = await scratch.cli([...command, '--socket', socket, '--dir', dir]).done;
      expect({ command: command[0], code: refused.code }).toEqual({ command: command[0], code: 4 });
      expect(refused.stderr).toContain(job.id);
      expect(refused.stderr).toMatch(/--cancel-orphan-job/);
      expect(refused.stderr).not.toMatch(/not found|missing/i);
    }
    // The status without QEMU names the pending run and its process.
    const offline = await scratch.cli(['status', '--dir', dir]).done;
    expect(offline.stdout).toMatch(new RegExp(`pending: incremental run ${pending?.run ?? '?'} .* by process ${String(pending?.pid)}`));

    const resumed = await scratch.cli(['incremental', '--socket', socket, '--dir', dir, '--cancel-orphan-job', '--json']).done;
    expect(resumed.code).toBe(0);
    expect(JSON.parse(resumed.stdout)).toMatchObject({ backups: [{ kind: 'incremental', bytes: 4 * MiB }] });
    expect(await jobs(vm)).toEqual([]);
    expect(await targetNodes(vm)).toEqual([]);
    expect((await readdir(dir)).filter((f) => f.endsWith('.qcow2')).length).toBe(2);
    await vm.shutdown({ timeout: 10_000 });
    expect((await scratch.cli(['verify', '--dir', dir, '--source', `drive0=${drive0}`]).done).code).toBe(0);
  });

  it('a job that completes after its CLI was killed is recorded by the next run, which then continues the chain', async () => {
    const { vm, socket, drive0, dir } = await setup();
    expect((await scratch.cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0']).done).code).toBe(0);
    await hmpWrites(vm, 'drive0', [[0x5a, '4M', '2M']]);
    const job = await orphanThatCompletes(vm, ['incremental', '--socket', socket, '--dir', dir]);
    await hmpWrites(vm, 'drive0', [[0x5c, '30M', '64k']]);
    const next = await scratch.cli(['incremental', '--socket', socket, '--dir', dir, '--json']).done;
    expect(next.code).toBe(0);
    expect(JSON.parse(next.stdout)).toMatchObject({ backups: [{ kind: 'incremental', bytes: 65536 }] });
    const m = await manifestOf(dir);
    expect(m.drives[0]?.backups.map((b) => [b.kind, b.jobId === job.id])).toEqual([
      ['full', false],
      ['incremental', true],
      ['incremental', false],
    ]);
    // Its QEMU time went unseen: the duration recorded is the bound from the run's start.
    expect(m.drives[0]?.backups[1]).toMatchObject({ durationEstimated: true, bytes: 2 * MiB, jobLength: 2 * MiB });
    expect(m.drives[0]?.backups[1]?.durationMs).toBeGreaterThan(0);
    expect(m.drives[0]?.backups[2]?.durationEstimated).toBeUndefined();
    expect(await jobs(vm)).toEqual([]);
    expect(await targetNodes(vm)).toEqual([]);
    await vm.shutdown({ timeout: 10_000 });
    expect((await scratch.cli(['verify', '--dir', dir, '--source', `drive0=${drive0}`]).done).code).toBe(0);
  });

  it('a full that completes after its CLI was killed is recorded by the next run, and replaces the chain before it', async () => {
    const { vm, socket, drive0, dir } = await setup();
    expect((await scratch.cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0']).done).code).toBe(0);
    const old = await manifestOf(dir);
    const job = await orphanThatCompletes(vm, ['full', '--socket', socket, '--dir', dir]);
    await hmpWrites(vm, 'drive0', [[0x5d, '9M', '64k']]);
    const next = await scratch.cli(['incremental', '--socket', socket, '--dir', dir, '--json']).done;
    expect(next.code).toBe(0);
    expect(JSON.parse(next.stdout)).toMatchObject({ backups: [{ kind: 'incremental', bytes: 65536 }] });
    const m = await manifestOf(dir);
    expect(m.chainId).not.toBe(old.chainId);
    expect(m.drives[0]?.backups.map((b) => [b.kind, b.jobId === job.id])).toEqual([
      ['full', true],
      ['incremental', false],
    ]);
    // The replaced chain's bitmap and mark are gone; the new chain's are there.
    const names = ((await vm.qmp.execute('query-block'))[0]?.inserted?.['dirty-bitmaps'] ?? []).map((b) => b.name).sort();
    expect(names).toEqual([m.drives[0]?.bitmap, m.drives[0]?.mark?.bitmap].sort());
    expect(await targetNodes(vm)).toEqual([]);
    await vm.shutdown({ timeout: 10_000 });
    expect((await scratch.cli(['verify', '--dir', dir, '--source', `drive0=${drive0}`]).done).code).toBe(0);
  });

  it('a second SIGINT quits at once and leaves the job to be found by the next run', async () => {
    const { vm, socket, dir } = await setup();
    expect((await scratch.cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0']).done).code).toBe(0);
    await hmpWrites(vm, 'drive0', [[0x5a, '4M', '4M']]);
    const run = scratch.cli(['incremental', '--socket', socket, '--dir', dir, '--speed', String(64 * 1024)]);
    await waitForJob(vm, (j) => j.status === 'running');
    // QEMU stopped: the cancel the first SIGINT asks for cannot complete, so the second decides.
    process.kill(vm.pid as number, 'SIGSTOP');
    try {
      run.child.kill('SIGINT');
      await waitForText(run.stderrSoFar, /cancelling the backup job/);
      run.child.kill('SIGINT');
      const result = await run.done;
      expect(result.code).toBe(130);
      expect(result.stderr).toMatch(/again: quitting now/);
    } finally {
      process.kill(vm.pid as number, 'SIGCONT');
    }
    const status = await scratch.cli(['status', '--socket', socket, '--dir', dir]).done;
    expect(status.code).toBe(4);
    expect(status.stdout).toMatch(/an earlier run is pending/);
    const resumed = await scratch.cli(['incremental', '--socket', socket, '--dir', dir, '--cancel-orphan-job', '--json']).done;
    expect(resumed.code).toBe(0);
    expect(JSON.parse(resumed.stdout)).toMatchObject({ backups: [{ kind: 'incremental', bytes: 4 * MiB }] });
  });

  it('in the library, a run whose connection was lost is an orphan for the same process too: reported, then cancelled on request', async () => {
    const { vm, socket, drive0, dir } = await setup();
    const first = await QmpClient.connect(socket);
    const chain = await BackupChain.open({ qmp: first, dir, node: 'drive0' });
    await chain.full();
    await hmpWrites(vm, 'drive0', [[0x5a, '4M', '4M']]);
    const lost = await chain
      .incremental({
        speed: 64 * 1024,
        onJob: (job) => {
          void job.waitForStatus('running').then(() => first.close());
        },
      })
      .catch((e: unknown) => e);
    expect(JobTrackingError.isInstance(lost)).toBe(true);
    const job = await waitForJob(vm, (j) => j.status === 'running');
    chain.qmp = await QmpClient.connect(socket);
    try {
      const pending = await chain.incremental().catch((e: unknown) => e);
      expect(PendingRunError.isInstance(pending)).toBe(true);
      expect((pending as PendingRunError).ownerAlive).toBe(false);
      expect((pending as PendingRunError).jobs.map((j) => j.id)).toEqual([job.id]);
      const next = await chain.incremental({ cancelOrphanJob: true });
      expect(next.backups[0]?.bytes).toBe(4 * MiB);
    } finally {
      await (chain.qmp as QmpClient).close();
    }
    await vm.shutdown({ timeout: 10_000 });
    expect((await chain.verify({ sources: { drive0 } })).ok).toBe(true);
  });
});
