// Pull-mode chains (`mode: 'pull'`): the same files, manifest and checks as push mode.
// - side by side with a push chain on an identical drive, the same writes: every backup has the
//   same bytes, verifies, and restores to the same image;
// - the guest writes during each backup (right after the point, before the first read): each
//   backup restores to the drive as it was at its point, and the next one has those writes;
// - a failure mid-read (the NBD connection dropped, an abort, the target's file system full, a
//   QMP error after the point) leaves no export, filter, fleecing node, job, frozen bitmap or
//   temporary file, the manifest as it was, and the next incremental has the failed interval's
//   writes;
// - a process killed mid-copy: the next run takes down what it left and continues the chain.
// Both fleecing methods: 'backup-sync-none' on `-machine none`, 'snapshot-access' on a PC that
// never runs, with the drives on virtio-blk devices.
import { spawn } from 'node:child_process';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { compareImages } from '@qmpkit/image-tools';
import { QemuMachine } from '@qmpkit/machine';
import {
  BackupAbortedError,
  BackupChain,
  BackupChainGroup,
  BackupJobError,
  PullUnavailableError,
  getBitmap,
  readManifest,
  readRunLog,
} from '../src/index.js';
import type { ChainBackupOptions, FleecingMethod, JobProgress, Manifest } from '../src/index.js';
import {
  DRIVE0_PATTERN,
  NO_PULL_LEFTOVERS,
  Scratch,
  WRITES_A,
  WRITES_B,
  driveModel,
  hmpWrites,
  hmpWritesSync,
  pullLeftovers,
  qmpSync,
} from './helpers.js';
import type { Pattern } from './helpers.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const DIST = join(__dirname, '..', 'dist', 'index.js');

interface Machine {
  vm: QemuMachine;
  /** A second QMP monitor, for `qmpSync`. */
  socket: string;
}

/** A machine with drive0 (and drive1), on devices for 'snapshot-access'. */
async function launch(scratch: Scratch, method: FleecingMethod, drives: string[]): Promise<Machine> {
  const socket = scratch.path(`qmp-${scratch.machines.length}.sock`);
  const args = ['-qmp', `unix:${socket},server=on,wait=off`];
  const device = method === 'snapshot-access';
  if (device) args.push('-S', '-m', '32', ...drives.flatMap((_, i) => ['-device', `virtio-blk-pci,drive=drive${i},id=vd${i}`]));
  const vm = new QemuMachine({
    ...(device ? { machine: 'pc' } : {}),
    drives: drives.map((file, i) => ({ file, format: 'qcow2' as const, id: `drive${i}`, nodeName: `node${i}` })),
    args,
  });
  scratch.machines.push(vm);
  await vm.launch({ timeout: 20_000 });
  return { vm, socket };
}

async function pullDirs(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).filter((f) => f.startsWith('.qmpkit-pull-'));
}

async function rawRestore(chain: BackupChain, scratch: Scratch, upTo: number, name: string): Promise<Buffer> {
  const out = scratch.path(name);
  await chain.restore(out, { upTo, format: 'raw', overwrite: true });
  const bytes = await readFile(out);
  await rm(out);
  return bytes;
}

function firstDifference(a: Buffer, b: Buffer): string {
  if (a.length !== b.length) return `lengths ${a.length} and ${b.length}`;
  const i = a.findIndex((v, j) => v !== b[j]);
  return i === -1 ? 'none' : `at ${i}: 0x${a[i]?.toString(16)} vs 0x${b[i]?.toString(16)}`;
}

const methods: FleecingMethod[] = ['backup-sync-none', 'snapshot-access'];

describe.each(methods)('pull-mode chains, fleecing %s', (method) => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());
  beforeEach(() => scratch.init());

  it('match a push chain of an identical drive: same bytes, verify, same restores', async () => {
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const drive1 = await scratch.image('drive1.qcow2', '64M', DRIVE0_PATTERN);
    const { vm } = await launch(scratch, method, [drive0, drive1]);
    const push = await BackupChain.open({ qmp: vm.qmp, dir: scratch.path('push'), node: 'drive0', granularity: 65536 });
    const pull = await BackupChain.open({ qmp: vm.qmp, dir: scratch.path('pull'), node: 'drive1', granularity: 65536 });
    const progress: JobProgress[] = [];
    const options: ChainBackupOptions = { mode: 'pull', fleecing: method, onProgress: (p) => progress.push(p) };
    const both = async (patterns: readonly Pattern[], zero?: string): Promise<void> => {
      for (const drive of ['drive0', 'drive1']) {
        await hmpWrites(vm, drive, patterns);
        if (zero) await vm.hmpQemuIo(drive, `write -z ${zero}`);
      }
    };

    const results = [[await push.full(), await pull.full(options)]];
    await both(WRITES_A);
    results.push([await push.incremental(), await pull.incremental(options)]);
    await both(WRITES_B);
    results.push([await push.differential(), await pull.differential(options)]);
    // A cluster of data zeroed again: the incremental must hide the older data with a zero cluster.
    await both([[0x33, '40M', '128k']], '16M 64k');
    results.push([await push.incremental(), await pull.incremental(options)]);

    for (const [p, q] of results) {
      const a = p?.backups[0];
      const b = q?.backups[0];
      expect(b).toMatchObject({ kind: a?.kind, bytes: a?.bytes, jobLength: a?.jobLength, driveSize: a?.driveSize, mode: 'pull' });
      expect(a?.mode).toBeUndefined();
      expect(q?.fleecing).toEqual([{ node: 'drive1', method }]);
      expect(q?.leftovers).toEqual([]);
      expect(q?.results[0]).toMatchObject({ status: 'completed' });
    }
    expect(results.map(([, q]) => q?.backups[0]?.bytes)).toEqual([262144, 458752, 1507328, 1572864]);
    // One final report per backup, each complete.
    const finals = progress.filter((p) => p.final === true);
    expect(finals).toHaveLength(4);
    for (const f of finals) expect(f.current).toBe(f.total);
    // What each went through: the drive for the full, the bitmap's dirty bytes for the others,
    // as a push job's len.
    expect(finals.map((f) => f.total)).toEqual(results.map(([p]) => p?.backups[0]?.jobLength));

    expect(await pullLeftovers(vm)).toEqual(NO_PULL_LEFTOVERS);
    expect(await pullDirs(pull.dir)).toEqual([]);
    // The bitmaps record the same: nothing since the last backup.
    expect((await getBitmap(vm.qmp, 'drive1', pull.drive?.bitmap as string)).count).toBe((await getBitmap(vm.qmp, 'drive0', push.drive?.bitmap as string)).count);
    expect((await pull.check())[0]).toMatchObject({ ok: true });
    await expect(pull.verify()).resolves.toMatchObject({ ok: true });
    await vm.shutdown();
    await expect(pull.verify({ sources: { drive1 } })).resolves.toMatchObject({ ok: true });
    for (let i = 0; i < 4; i++) {
      await push.restore(scratch.path(`push-${i}.qcow2`), { upTo: i });
      await pull.restore(scratch.path(`pull-${i}.qcow2`), { upTo: i });
      const same = await compareImages(scratch.path(`push-${i}.qcow2`), scratch.path(`pull-${i}.qcow2`));
      expect({ i, identical: same.identical }).toEqual({ i, identical: true });
    }
    const manifest = (await readManifest(pull.manifestPath)) as Manifest;
    expect(manifest.version).toBe(2);
    expect(manifest.pending).toBeUndefined();
    expect((await readRunLog(pull.manifestPath)).map((e) => [e.outcome, e.mode])).toEqual(Array(4).fill(['completed', 'pull']));
  });

  it('each backup holds the drive at its point while the guest writes during it; the next one has those writes', async () => {
    const drive = await scratch.image('drive0.qcow2', '64M');
    const { vm, socket } = await launch(scratch, method, [drive]);
    const model = driveModel(SIZE);
    const chain = await BackupChain.open({ qmp: vm.qmp, dir: scratch.path('pull'), node: 'drive0' });
    const points: Buffer[] = [];
    const rounds: Array<{ before: Pattern[]; during: Pattern[] }> = [
      { before: [[0x11, 0, '24M'], [0x12, '60M', '1M']], during: [[0x91, '20M', '1M'], [0x92, '62M', '64k'], [0x93, '8M', '64k']] },
      { before: [[0x21, '4M', '12M']], during: [[0x94, '12M', '2M'], [0x95, '40M', '64k']] },
      { before: [[0x31, '30M', '16M']], during: [[0x96, '44M', '1M'], [0x97, 0, '64k']] },
    ];
    for (const [i, round] of rounds.entries()) {
      await hmpWrites(vm, 'drive0', round.before);
      model.apply(round.before);
      points.push(Buffer.from(model.bytes));
      let written = false;
      const options: ChainBackupOptions = {
        mode: 'pull',
        fleecing: method,
        progressInterval: 0,
        // The first report comes after the point and before the first read: the guest writes
        // then, done in QEMU before this process goes on.
        onProgress: () => {
          if (written) return;
          written = true;
          hmpWritesSync(socket, 'drive0', round.during);
        },
      };
      const result = i === 0 ? await chain.full(options) : await chain.incremental(options);
      expect(written).toBe(true);
      expect(result.fleecing).toEqual([{ node: 'drive0', method }]);
      model.apply(round.during);
    }
    await vm.shutdown();
    for (const [i, point] of points.entries()) {
      const restored = await rawRestore(chain, scratch, i, `restored-${i}.raw`);
      expect({ i, difference: firstDifference(restored, point) }).toEqual({ i, difference: 'none' });
    }
    await expect(chain.verify()).resolves.toMatchObject({ ok: true });
  });

  describe('a failure mid-read leaves nothing behind and the next incremental has the interval', () => {
    let vm: QemuMachine;
    let socket: string;
    let chain: BackupChain;
    const model = driveModel(SIZE);

    beforeEach(async () => {
      model.bytes.fill(0);
      const drive = await scratch.image('drive0.qcow2', '64M');
      ({ vm, socket } = await launch(scratch, method, [drive]));
      chain = await BackupChain.open({ qmp: vm.qmp, dir: scratch.path('pull'), node: 'drive0' });
      await chain.full({ mode: 'pull', fleecing: method });
      // 40 MiB to copy: the failure comes while most of it is still to be read.
      const before: Pattern[] = [[0x41, 0, '40M']];
      await hmpWrites(vm, 'drive0', before);
      model.apply(before);
    });

    /** Run a failing incremental, check what it left, then the next incremental and its restore. */
    async function failThenContinue(failing: ChainBackupOptions): Promise<unknown> {
      const manifestBefore = await readFile(chain.manifestPath, 'utf8');
      const files = await readdir(chain.dir);
      const error = await chain.incremental({ mode: 'pull', fleecing: method, ...failing }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(Error);
      expect(await pullLeftovers(vm)).toEqual(NO_PULL_LEFTOVERS);
      expect((await readdir(chain.dir)).sort()).toEqual([...files].sort());
      expect(await readFile(chain.manifestPath, 'utf8')).toBe(manifestBefore);
      const log = (await readRunLog(chain.manifestPath)).at(-1);
      expect(log).toMatchObject({ kind: 'incremental', mode: 'pull' });
      expect(log?.outcome).toMatch(/failed|aborted/);
      // The bitmap covers the interval: the 40 MiB, and the write made during the failed run.
      expect((await getBitmap(vm.qmp, 'drive0', chain.drive?.bitmap as string)).count).toBe(40 * MiB + 65536);

      const next = await chain.incremental({ mode: 'pull', fleecing: method });
      expect(next.backups[0]).toMatchObject({ kind: 'incremental', bytes: 40 * MiB + 65536 });
      await vm.shutdown();
      const restored = await rawRestore(chain, scratch, -1, 'restored.raw');
      expect(firstDifference(restored, model.bytes)).toBe('none');
      return error;
    }

    /** Once the copy has started: a guest write outside the dirty range (recorded by the chain's bitmap), then `then`. */
    function midCopy(then: () => void): Pick<ChainBackupOptions, 'onProgress' | 'progressInterval'> {
      let done = false;
      return {
        progressInterval: 0,
        onProgress: (p) => {
          if (done || p.current === 0 || p.final === true) return;
          done = true;
          const during: Pattern[] = [[0x99, '50M', '64k']];
          hmpWritesSync(socket, 'drive0', during);
          model.apply(during);
          then();
        },
      };
    }

    it('the NBD connection dropped (the export removed under it)', async () => {
      const error = await failThenContinue(
        midCopy(() => {
          const [exports] = qmpSync(socket, [{ execute: 'query-block-exports' }]);
          const id = (exports?.return as Array<{ id: string }>)[0]?.id as string;
          qmpSync(socket, [{ execute: 'block-export-del', arguments: { id, mode: 'hard' } }]);
        }),
      );
      expect((error as Error).name).toMatch(/^Nbd/);
    });

    it('an abort', async () => {
      const controller = new AbortController();
      const error = await failThenContinue({ signal: controller.signal, ...midCopy(() => controller.abort(new Error('operator'))) });
      expect(BackupAbortedError.isInstance(error)).toBe(true);
      expect(error).toMatchObject({ reason: 'abort' });
    });

    // Only this method has a job: one that ends takes its filter away, and the view would show new writes.
    if (method === 'backup-sync-none') {
      it('the fleecing job cancelled under the copy', async () => {
        const error = await failThenContinue(
          midCopy(() => {
            const [jobs] = qmpSync(socket, [{ execute: 'query-jobs' }]);
            const id = (jobs?.return as Array<{ id: string }>)[0]?.id as string;
            qmpSync(socket, [{ execute: 'job-cancel', arguments: { id } }]);
          }),
        );
        expect(BackupJobError.isInstance(error)).toBe(true);
        expect((error as Error).message).toMatch(/fleecing job ended/);
      });
    }

    it('a QMP error after the point: QEMU\'s NBD server already runs', async () => {
      await vm.qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: scratch.path('theirs.sock') } } });
      const manifestBefore = await readFile(chain.manifestPath, 'utf8');
      const during: Pattern[] = [[0x99, '50M', '64k']];
      await hmpWrites(vm, 'drive0', during);
      model.apply(during);
      const error = await chain.incremental({ mode: 'pull', fleecing: method }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(PullUnavailableError.isInstance(error)).toBe(true);
      expect(error).toMatchObject({ reason: 'nbd-server-running', kind: 'state' });
      // Theirs still runs; nothing of ours is left.
      expect(await pullLeftovers(vm)).toEqual({ ...NO_PULL_LEFTOVERS, nbdServer: true });
      expect(await readFile(chain.manifestPath, 'utf8')).toBe(manifestBefore);
      expect((await getBitmap(vm.qmp, 'drive0', chain.drive?.bitmap as string)).count).toBe(40 * MiB + 65536);
      await vm.qmp.execute('nbd-server-stop');
      const next = await chain.incremental({ mode: 'pull', fleecing: method });
      expect(next.backups[0]).toMatchObject({ bytes: 40 * MiB + 65536 });
    });
  });
});

describe('a pull-mode group of two drives', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  it('takes one point for both, and restores each drive as it was', async () => {
    await scratch.init();
    const drives = [await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN), await scratch.image('drive1.qcow2', '64M', WRITES_A)];
    const { vm } = await launch(scratch, 'backup-sync-none', drives);
    const group = await BackupChainGroup.open({ qmp: vm.qmp, dir: scratch.path('pull'), drives: [{ node: 'drive0' }, { node: 'drive1' }] });
    const full = await group.full({ mode: 'pull' });
    expect(full.backups.map((b) => [b.kind, b.mode])).toEqual([['full', 'pull'], ['full', 'pull']]);
    expect(new Set(full.backups.map((b) => b.run)).size).toBe(1);
    await hmpWrites(vm, 'drive0', WRITES_B);
    await hmpWrites(vm, 'drive1', [[0x77, '5M', '1M']]);
    const inc = await group.incremental({ mode: 'pull' });
    expect(inc.backups.map((b) => b.bytes)).toEqual([1507328, MiB]);
    expect(await pullLeftovers(vm)).toEqual(NO_PULL_LEFTOVERS);
    await vm.shutdown();
    await expect(group.verify({ sources: { drive0: drives[0] as string, drive1: drives[1] as string } })).resolves.toMatchObject({ ok: true });
  });
});

describe('pull-mode chain: the target\'s file system fills up mid-copy', () => {
  const scratch = new Scratch();
  let mounted: string | undefined;
  afterEach(async () => {
    if (mounted) await new Promise((resolve) => spawn('umount', [mounted as string]).on('close', resolve));
    mounted = undefined;
    await scratch.cleanup();
  });

  it('the writer fails (ENOSPC): nothing left behind, the next incremental has the interval', async () => {
    await scratch.init();
    const dir = scratch.path('small');
    await mkdir(dir);
    // A real full file system: a 8 MiB tmpfs (needs root, as the rest of this suite runs here).
    const code = await new Promise<number | null>((resolve) => spawn('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', dir]).on('close', resolve));
    expect(code).toBe(0);
    mounted = dir;
    const drive = await scratch.image('drive0.qcow2', '64M');
    const vm = await scratch.launch([{ file: drive, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    const chain = await BackupChain.open({ qmp: vm.qmp, dir, node: 'drive0' });
    await chain.full({ mode: 'pull' });
    await hmpWrites(vm, 'drive0', [[0x41, 0, '20M']]);
    const manifestBefore = await readFile(chain.manifestPath, 'utf8');
    const error = await chain.incremental({ mode: 'pull' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toMatchObject({ name: 'ImageFileError', code: 'ENOSPC' });
    expect(await pullLeftovers(vm)).toEqual(NO_PULL_LEFTOVERS);
    expect(await readFile(chain.manifestPath, 'utf8')).toBe(manifestBefore);
    expect((await readdir(dir)).sort()).toEqual(['drive0.' + chain.manifest?.chainId.slice(0, 8) + '.000.full.qcow2', 'manifest.json', 'manifest.runs.jsonl']);
    expect((await getBitmap(vm.qmp, 'drive0', chain.drive?.bitmap as string)).count).toBe(20 * MiB);
    expect((await chain.check())[0]).toMatchObject({ ok: true });
  });
});

describe('pull-mode chain: a process killed mid-copy', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  /** A chain with a full, 40 MiB written since, and another process killed while it pulls the incremental. */
  async function killedMidCopy(): Promise<{ vm: QemuMachine; drive: string; dir: string; chain: BackupChain; model: ReturnType<typeof driveModel> }> {
    await scratch.init();
    const drive = await scratch.image('drive0.qcow2', '64M');
    const { vm, socket } = await launch(scratch, 'backup-sync-none', [drive]);
    const model = driveModel(SIZE);
    const dir = scratch.path('pull');
    const chain = await BackupChain.open({ qmp: vm.qmp, dir, node: 'drive0' });
    await chain.full({ mode: 'pull' });
    const before: Pattern[] = [[0x51, 0, '40M']];
    await hmpWrites(vm, 'drive0', before);
    model.apply(before);
    const script = scratch.path('pull.mjs');
    await writeFile(
      script,
      `import { BackupChain } from ${JSON.stringify(DIST)};
import { QmpClient } from ${JSON.stringify(join(__dirname, '..', '..', 'client', 'dist', 'index.js'))};
const qmp = await QmpClient.connect(${JSON.stringify(socket)});
const chain = await BackupChain.open({ qmp, dir: ${JSON.stringify(dir)}, node: 'drive0' });
await chain.incremental({ mode: 'pull', progressInterval: 0, onProgress: (p) => {
  if (p.current > 0) { process.stdout.write('copying\\n'); Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60000); }
} });
`,
    );
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
    scratch.processes.push(child);
    await new Promise<void>((resolve, reject) => {
      child.stdout?.on('data', (d: Buffer) => d.toString().includes('copying') && resolve());
      child.on('close', (c) => reject(new Error(`the pull process ended (${String(c)}) before it copied`)));
    });
    // While its process lives, the run is in progress: status says so.
    const status = await chain.status();
    expect(status.drives[0]).toMatchObject({ ok: false, reason: 'run-pending' });
    expect(status.drives[0]?.detail).toMatch(/in progress/);
    child.kill('SIGKILL');
    await new Promise((resolve) => child.on('close', resolve));
    const manifest = (await readManifest(chain.manifestPath)) as Manifest;
    expect(manifest.pending).toMatchObject({ kind: 'incremental', mode: 'pull' });
    expect(await pullDirs(dir)).toHaveLength(1);
    return { vm, drive, dir, chain, model };
  }

  /** The next incremental undoes the killed run and has everything since the full. */
  async function continues(vm: QemuMachine, dir: string, chain: BackupChain, model: ReturnType<typeof driveModel>): Promise<void> {
    const after: Pattern[] = [[0x52, '48M', '64k']];
    await hmpWrites(vm, 'drive0', after);
    model.apply(after);
    const next = await chain.incremental({ mode: 'pull' });
    expect(next.backups[0]).toMatchObject({ kind: 'incremental', bytes: 40 * MiB + 65536 });
    expect(await pullLeftovers(vm)).toEqual(NO_PULL_LEFTOVERS);
    expect(await pullDirs(dir)).toEqual([]);
    const log = await readRunLog(chain.manifestPath);
    expect(log.at(-2)).toMatchObject({ kind: 'incremental', mode: 'pull', outcome: 'failed' });
    expect(log.at(-2)?.error).toMatch(/is gone/);
    await vm.shutdown();
    expect(firstDifference(await rawRestore(chain, scratch, -1, 'restored.raw'), model.bytes)).toBe('none');
    await expect(chain.verify()).resolves.toMatchObject({ ok: true });
  }

  it('leaves the run pending; the next run takes down what it left and the chain continues', async () => {
    const { vm, dir, chain, model } = await killedMidCopy();
    const left = await pullLeftovers(vm);
    expect(left).toMatchObject({ exports: [expect.any(String)], jobs: [expect.any(String)], bitmaps: [expect.stringMatching(/-frozen$/)], nbdServer: true });
    await continues(vm, dir, chain, model);
  });

  it('and QEMU restarted since: the frozen copy was stored with the drive and is merged back', async () => {
    const { vm, drive, dir, chain, model } = await killedMidCopy();
    await vm.shutdown();
    const { vm: again } = await launch(scratch, 'backup-sync-none', [drive]);
    chain.qmp = again.qmp;
    expect((await pullLeftovers(again)).bitmaps).toEqual([expect.stringMatching(/-frozen$/)]);
    await continues(again, dir, chain, model);
  });
});

describe('pull-mode options', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  it('refuses push-only options and an impossible fleecing method before anything happens', async () => {
    await scratch.init();
    const drive = await scratch.image('drive0.qcow2', '64M');
    const vm = await scratch.launch([{ file: drive, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    const chain = await BackupChain.open({ qmp: vm.qmp, dir: scratch.path('pull'), node: 'drive0' });
    await expect(chain.full({ mode: 'pull', compress: true })).rejects.toThrow(/compress applies to mode 'push' only/);
    await expect(chain.full({ mode: 'pull', speed: 1 })).rejects.toThrow(/speed applies to mode 'push' only/);
    await expect(chain.full({ fleecing: 'snapshot-access' })).rejects.toThrow(/fleecing applies to mode 'pull' only/);
    await expect(chain.full({ mode: 'pul' as 'pull' })).rejects.toThrow(/mode must be 'push' or 'pull'/);
    // A drive without a device cannot be switched to a filter.
    const error = await chain.full({ mode: 'pull', fleecing: 'snapshot-access' }).then(() => undefined, (e: unknown) => e);
    expect(PullUnavailableError.isInstance(error)).toBe(true);
    expect(error).toMatchObject({ reason: 'fleecing-method', node: 'drive0' });
    expect(await pullLeftovers(vm)).toEqual(NO_PULL_LEFTOVERS);
    expect(await readdir(scratch.dir)).not.toContain('pull');
  });
});
