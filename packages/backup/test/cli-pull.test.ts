// `qmpkit-backup full|incremental --mode pull` against QEMU: the same files, figures and
// restores as push mode for the same writes, a chain that mixes both modes, and relative paths
// that hold whatever QEMU's working directory (the NBD socket and targets are made absolute).
import { mkdir } from 'node:fs/promises';
import { qemuImg } from '@qmpkit/image-tools';
import { DRIVE0_PATTERN, NO_PULL_LEFTOVERS, Scratch, WRITES_A, WRITES_B, hmpWrites, launchWithSocket, pullLeftovers } from './helpers.js';

interface RunJson {
  kind: string;
  backups: Array<{ file: string; kind: string; bytes: number; jobLength?: number; driveSize: number; mode?: string }>;
}

describe('qmpkit-backup --mode pull', () => {
  const scratch = new Scratch();
  beforeEach(() => scratch.init());
  afterEach(() => scratch.cleanup());

  it('takes the same backups as push mode for the same writes, and restores the same images', async () => {
    const pullDrive = await scratch.image('pull.qcow2', '64M', DRIVE0_PATTERN);
    const pushDrive = await scratch.image('push.qcow2', '64M', DRIVE0_PATTERN);
    const pull = await launchWithSocket(scratch, pullDrive);
    const push = await launchWithSocket(scratch, pushDrive);
    // The CLI runs in a directory of its own and is given relative paths: QEMU's working
    // directory is another one, so a path handed to QEMU unresolved would miss.
    const cwd = scratch.path('operator');
    await mkdir(cwd);
    const rel = (p: string): string => `../${p.slice(scratch.dir.length + 1)}`;
    const backup = async (vmSocket: string, dir: string, kind: 'full' | 'incremental', mode: 'push' | 'pull'): Promise<RunJson> => {
      const args = [kind, '--socket', rel(vmSocket), '--dir', rel(dir), '--json', '--mode', mode];
      if (kind === 'full') args.push('--node', 'drive0', '--granularity', '65536');
      const run = await scratch.cli(args, { cwd }).done;
      expect({ args, code: run.code, stderr: run.stderr }).toEqual({ args, code: 0, stderr: '' });
      return JSON.parse(run.stdout) as RunJson;
    };
    const pullDir = scratch.path('pull-backups');
    const pushDir = scratch.path('push-backups');

    const runs: Array<[RunJson, RunJson]> = [];
    runs.push([await backup(pull.socket, pullDir, 'full', 'pull'), await backup(push.socket, pushDir, 'full', 'push')]);
    for (const writes of [WRITES_A, WRITES_B]) {
      await hmpWrites(pull.vm, 'drive0', writes);
      await hmpWrites(push.vm, 'drive0', writes);
      runs.push([await backup(pull.socket, pullDir, 'incremental', 'pull'), await backup(push.socket, pushDir, 'incremental', 'push')]);
    }
    for (const [p, q] of runs) {
      const [pb, qb] = [p.backups[0], q.backups[0]];
      expect(pb?.mode).toBe('pull');
      expect(qb?.mode ?? 'push').toBe('push');
      // Same bytes (what was copied), same drive size, same kind, same file layout.
      expect({ kind: pb?.kind, bytes: pb?.bytes, driveSize: pb?.driveSize }).toEqual({ kind: qb?.kind, bytes: qb?.bytes, driveSize: qb?.driveSize });
      const layout = (file: string | undefined): string | undefined => file?.replace(/\.[0-9a-f]{8}\./, '.<chain>.');
      expect(layout(pb?.file)).toBe(layout(qb?.file));
    }
    // An incremental copied what the writes dirtied, not the drive.
    expect(runs[1]?.[0].backups[0]?.bytes).toBe(458752);

    const status = await scratch.cli(['status', '--socket', rel(pull.socket), '--dir', rel(pullDir)], { cwd }).done;
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/pull mode/);
    expect(status.stdout).toMatch(/drive0: can continue \(0 dirty bytes\)/);
    expect(await pullLeftovers(pull.vm)).toEqual(NO_PULL_LEFTOVERS);

    await pull.vm.shutdown({ timeout: 10_000 });
    await push.vm.shutdown({ timeout: 10_000 });
    const verify = await scratch.cli(['verify', '--dir', pullDir, '--source', `drive0=${pullDrive}`]).done;
    expect(verify.code).toBe(0);
    for (const [dir, name] of [[pullDir, 'pull'], [pushDir, 'push']] as const) {
      const out = scratch.path(`${name}.restored.raw`);
      const restore = await scratch.cli(['restore', '--dir', dir, '--output', out, '--format', 'raw']).done;
      expect(restore.code).toBe(0);
    }
    expect((await qemuImg.compare(scratch.path('pull.restored.raw'), pullDrive)).identical).toBe(true);
    expect((await qemuImg.compare(scratch.path('pull.restored.raw'), scratch.path('push.restored.raw'))).identical).toBe(true);
    // Negative control: the first point of the pull chain is not the drive after the writes.
    const first = scratch.path('pull.first.raw');
    expect((await scratch.cli(['restore', '--dir', pullDir, '--output', first, '--format', 'raw', '--up-to', '0']).done).code).toBe(0);
    expect((await qemuImg.compare(first, pullDrive)).identical).toBe(false);
  });

  it('continues a push chain in pull mode and back: one chain, restorable at every point', async () => {
    const drive = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const { vm, socket } = await launchWithSocket(scratch, drive);
    const dir = scratch.path('backups');
    const copies: string[] = [];
    const snapshot = async (): Promise<void> => {
      const copy = scratch.path(`state-${copies.length}.qcow2`);
      // The drive's state at this point, read through QEMU (the drive is open in it).
      await vm.qmp.execute('human-monitor-command', { 'command-line': `qemu-io drive0 "flush"` });
      await qemuImg.convert(drive, copy, { format: 'qcow2', outputFormat: 'qcow2', forceShare: true });
      copies.push(copy);
    };
    const run = async (args: string[]): Promise<RunJson> => {
      const r = await scratch.cli([...args, '--socket', socket, '--dir', dir, '--json']).done;
      expect({ args, code: r.code, stderr: r.stderr }).toEqual({ args, code: 0, stderr: '' });
      return JSON.parse(r.stdout) as RunJson;
    };
    expect((await run(['full', '--node', 'drive0'])).backups[0]?.mode ?? 'push').toBe('push');
    await snapshot();
    await hmpWrites(vm, 'drive0', WRITES_A);
    expect((await run(['incremental', '--mode', 'pull'])).backups[0]?.mode).toBe('pull');
    await snapshot();
    await hmpWrites(vm, 'drive0', WRITES_B);
    expect((await run(['incremental'])).backups[0]?.mode ?? 'push').toBe('push');
    await snapshot();
    await vm.shutdown({ timeout: 10_000 });

    for (let i = 0; i < copies.length; i++) {
      const out = scratch.path(`restored-${i}.raw`);
      expect((await scratch.cli(['restore', '--dir', dir, '--output', out, '--format', 'raw', '--up-to', String(i)]).done).code).toBe(0);
      for (let j = 0; j < copies.length; j++) {
        // Each point equals the drive as it was then, and differs from the other states.
        expect({ point: i, state: j, identical: (await qemuImg.compare(out, copies[j] as string)).identical }).toEqual({ point: i, state: j, identical: i === j });
      }
    }
  });
});
