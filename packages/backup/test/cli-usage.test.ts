// Issue 10: the CLI as an operator meets it. Usage errors are found before anything happens
// (exit 2 with the command's usage line, JSON under --json), a missing socket fails at once,
// relative paths work whatever QEMU's working directory, and hints name the CLI's flags.
import { mkdir, readFile, readdir, stat } from 'node:fs/promises';
import { qemuImg } from '@qmpkit/image-tools';
import { DRIVE0_PATTERN, Scratch, WRITES_A, WRITES_B, hmpWrites, launchWithSocket, waitForJob } from './helpers.js';

describe('qmpkit-backup usage', () => {
  const scratch = new Scratch();
  beforeAll(() => scratch.init());
  afterAll(() => scratch.cleanup());

  // Each refused before any socket is touched or file written: the socket does not even exist.
  it.each([
    ['no arguments', [], /no command given/, 'qmpkit-backup <command>'],
    ['an unknown command', ['frobnicate', '--dir', 'd'], /unknown command "frobnicate"/, 'qmpkit-backup <command>'],
    ['options before the command', ['--dir', 'd', 'full'], /the command comes first/, 'qmpkit-backup <command>'],
    ['a granularity QEMU would refuse', ['full', '--socket', 'none.sock', '--dir', 'd', '--node', 'drive0', '--granularity', '3000'], /--granularity: .*3000.*power of two/, 'qmpkit-backup full'],
    ['an option the command does not take', ['full', '--socket', 'none.sock', '--dir', 'd', '--node', 'drive0', '--size', '5'], /full does not take --size/, 'qmpkit-backup full'],
    ['an unknown option', ['status', '--dir', 'd', '--frob'], /Unknown option '--frob'/, 'qmpkit-backup status'],
    ['a missing --dir', ['verify'], /--dir is required/, 'qmpkit-backup verify'],
    ['a missing --socket', ['incremental', '--dir', 'd'], /incremental needs --socket/, 'qmpkit-backup incremental'],
    ['a bad --format', ['restore', '--dir', 'd', '--output', 'o', '--format', 'vmdk'], /--format must be qcow2 or raw/, 'qmpkit-backup restore'],
    ['a bad --up-to', ['restore', '--dir', 'd', '--output', 'o', '--up-to', '-x'], /--up-to/, 'qmpkit-backup restore'],
    ['a bad --file-mode', ['restore', '--dir', 'd', '--output', 'o', '--file-mode', '0400'], /--file-mode: .*owner read and write/, 'qmpkit-backup restore'],
    ['a bad --speed', ['full', '--socket', 's', '--dir', 'd', '--node', 'n', '--speed', '1.5'], /--speed must be a whole number/, 'qmpkit-backup full'],
    ['a bad --progress', ['full', '--socket', 's', '--dir', 'd', '--node', 'n', '--progress', 'fancy'], /--progress must be/, 'qmpkit-backup full'],
    ['a bad --chain', ['status', '--dir', 'd', '--chain', 'xyz'], /--chain takes a chain id/, 'qmpkit-backup status'],
    ['a prune without what to keep', ['prune', '--dir', 'd'], /prune needs --keep-chains/, 'qmpkit-backup prune'],
    ['a prune keeping nothing', ['prune', '--dir', 'd', '--keep-points', '0'], /--keep-points must be a whole number of at least 1/, 'qmpkit-backup prune'],
    ['a node given twice', ['full', '--socket', 's', '--dir', 'd', '--node', 'a', '--node', 'a'], /given twice/, 'qmpkit-backup full'],
    ['a resize without --size', ['resize', '--socket', 's', '--dir', 'd', '--node', 'a'], /resize needs --size/, 'qmpkit-backup resize'],
    ['an unknown --mode', ['full', '--socket', 's', '--dir', 'd', '--node', 'n', '--mode', 'sideways'], /--mode must be push or pull, got "sideways"/, 'qmpkit-backup full'],
    ['--compress in pull mode', ['full', '--socket', 's', '--dir', 'd', '--node', 'n', '--mode', 'pull', '--compress'], /--compress applies to --mode push only/, 'qmpkit-backup full'],
    ['--speed in pull mode', ['incremental', '--socket', 's', '--dir', 'd', '--mode', 'pull', '--speed', '100'], /--speed applies to --mode push only/, 'qmpkit-backup incremental'],
    ['--fleecing without pull mode', ['full', '--socket', 's', '--dir', 'd', '--node', 'n', '--fleecing', 'auto'], /--fleecing applies to --mode pull only/, 'qmpkit-backup full'],
    ['an unknown --fleecing', ['full', '--socket', 's', '--dir', 'd', '--node', 'n', '--mode', 'pull', '--fleecing', 'magic'], /--fleecing must be auto, snapshot-access or backup-sync-none/, 'qmpkit-backup full'],
  ])('%s: exit 2 with the usage line, nothing created', async (_what, args, message, usage) => {
    const cwd = scratch.path(`usage-${Math.random().toString(16).slice(2, 8)}`);
    await mkdir(cwd);
    const run = await scratch.cli(args, { cwd }).done;
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(message);
    expect(run.stderr).toContain(`usage: ${usage}`);
    expect(await readdir(cwd)).toEqual([]);
    // The same error as JSON on stdout under --json.
    const json = await scratch.cli([...args, '--json'], { cwd }).done;
    expect(json.code).toBe(2);
    expect(JSON.parse(json.stdout)).toMatchObject({ error: { name: 'UsageError', message: expect.stringMatching(message), exitCode: 2 } });
  });

  it('has --help for every command, listing only its options', async () => {
    const general = await scratch.cli(['--help']).done;
    expect(general.code).toBe(0);
    for (const command of ['full', 'incremental', 'status', 'verify', 'restore', 'resize', 'prune']) {
      expect(general.stdout).toMatch(new RegExp(`^  ${command} `, 'm'));
      const help = await scratch.cli([command, '--help']).done;
      expect({ command, code: help.code }).toEqual({ command, code: 0 });
      expect(help.stdout.split('\n')[0]).toMatch(new RegExp(`^usage: qmpkit-backup ${command} `));
      expect(help.stdout).toMatch(/exit status: 0 success, 1 failure, 2 usage error/);
    }
    const full = (await scratch.cli(['help', 'full']).done).stdout;
    expect(full).toMatch(/--compress/);
    expect(full).not.toMatch(/--keep-points/);
    const prune = (await scratch.cli(['prune', '-h']).done).stdout;
    expect(prune).toMatch(/--keep-points N/);
    expect(prune).not.toMatch(/--socket/);
  });

  it('a missing socket fails at once, naming it and --wait', async () => {
    const started = performance.now();
    const run = await scratch.cli(['full', '--socket', 'nowhere.sock', '--dir', 'backups', '--node', 'drive0', '--json'], { cwd: scratch.dir }).done;
    expect(performance.now() - started).toBeLessThan(5000);
    expect(run.code).toBe(1);
    const error = (JSON.parse(run.stdout) as { error: { message: string } }).error;
    expect(error.message).toContain(`no QMP socket at ${scratch.path('nowhere.sock')}`);
    expect(error.message).toContain('--wait SECONDS');
    expect(await readdir(scratch.dir)).not.toContain('backups');
  });
});

describe('qmpkit-backup against QEMU, as an operator runs it', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  it('--wait waits for a QEMU that starts after the CLI', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const socket = scratch.path('late.sock');
    const run = scratch.cli(['full', '--socket', socket, '--dir', scratch.path('backups'), '--node', 'drive0', '--wait', '30', '--json']);
    await new Promise((r) => setTimeout(r, 500));
    await scratch.launch([{ file: drive0, format: 'qcow2', id: 'drive0', nodeName: 'node0' }], ['-qmp', `unix:${socket},server=on,wait=off`]);
    const result = await run.done;
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ kind: 'full' });
  });

  it('works from another working directory with relative paths; restore takes --up-to -2 and writes into a directory', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const { vm, socket } = await launchWithSocket(scratch, drive0);
    // The CLI runs in work/, QEMU in this process' directory: the relative --dir is the CLI's.
    const work = scratch.path('work');
    await mkdir(work);
    const cli = (args: string[]): ReturnType<typeof scratch.cli>['done'] => scratch.cli(args, { cwd: work }).done;
    const sock = '../' + socket.slice(scratch.dir.length + 1);
    expect((await cli(['full', '--socket', sock, '--dir', 'backups', '--node', 'drive0'])).code).toBe(0);
    const references: string[] = [];
    for (const writes of [WRITES_A, WRITES_B]) {
      references.push(scratch.path(`point-${references.length}.raw`));
      // The drive as the next backup will see it (QEMU has it open: read with force-share).
      await qemuImg.run(['convert', '-U', '-f', 'qcow2', '-O', 'raw', drive0, references[references.length - 1] as string]);
      await hmpWrites(vm, 'drive0', writes);
      const inc = await cli(['incremental', '--socket', sock, '--dir', 'backups']);
      expect(inc.code).toBe(0);
    }
    expect((await readdir(scratch.path('work/backups'))).filter((f) => f.endsWith('.qcow2')).length).toBe(3);
    await vm.shutdown({ timeout: 10_000 });
    expect((await cli(['verify', '--dir', 'backups', '--source', `drive0=../drive0.qcow2`])).code).toBe(0);

    // --up-to -2: the backup before the newest (the first incremental), restored into a directory.
    await mkdir(scratch.path('work/out'));
    const restore = await cli(['restore', '--dir', 'backups', '--output', 'out', '--up-to', '-2', '--format', 'raw', '--json']);
    expect(restore.code).toBe(0);
    const output = (JSON.parse(restore.stdout) as { output: string }).output;
    expect(output).toMatch(new RegExp(`^${scratch.path('work/out/')}drive0\\.[0-9a-f]{8}\\.001\\.inc\\.restored\\.raw$`));
    expect((await qemuImg.compare(output, references[1] as string)).identical).toBe(true);
    // A negative control: the point before differs.
    expect((await qemuImg.compare(output, references[0] as string)).identical).toBe(false);
    // The same name again: refused, with the CLI's flag as the remedy.
    const again = await cli(['restore', '--dir', 'backups', '--output', 'out', '--up-to', '-2', '--format', 'raw']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already exists \(--overwrite replaces it\)/);
    expect(again.stderr).not.toMatch(/overwrite: true/);
    expect((await cli(['restore', '--dir', 'backups', '--output', 'out', '--up-to', '-2', '--format', 'raw', '--overwrite'])).code).toBe(0);
  });

  it('leaves no directory behind when the first full fails, and names the CLI flag in its hints', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const { vm, socket } = await launchWithSocket(scratch, drive0);
    // A wrong node: refused by QEMU before anything is written.
    const wrong = await scratch.cli(['full', '--socket', socket, '--dir', scratch.path('new/backups'), '--node', 'nope']).done;
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/no block device or node named "nope"/);
    expect(await stat(scratch.path('new')).catch(() => undefined)).toBeUndefined();
    // A drive busy with another job: the run fails after it made the directory (QEMU refuses
    // its bitmap on the job's filter node), and undoes it.
    await vm.qmp.execute('drive-backup', { 'job-id': 'other', device: 'drive0', sync: 'full', target: scratch.path('other.qcow2'), format: 'qcow2', speed: 65536 });
    await waitForJob(vm, (j) => j.id === 'other' && j.status === 'running');
    const busy = await scratch.cli(['full', '--socket', socket, '--dir', scratch.path('new/backups'), '--node', 'drive0']).done;
    expect(busy.code).toBe(1);
    expect(await stat(scratch.path('new')).catch(() => undefined)).toBeUndefined();
    await vm.qmp.execute('job-cancel', { id: 'other' });
    while (((await vm.qmp.execute('query-jobs')) as Array<{ id: string }>).some((j) => j.id === 'other')) {
      await new Promise((r) => setTimeout(r, 20));
    }

    // The chain cannot continue: the hint is the CLI's flag, not the library's option.
    const dir = scratch.path('backups');
    expect((await scratch.cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0']).done).code).toBe(0);
    const manifest = JSON.parse(await readFile(`${dir}/manifest.json`, 'utf8')) as { drives: Array<{ bitmap: string }> };
    await vm.qmp.execute('block-dirty-bitmap-remove', { node: 'drive0', name: manifest.drives[0]?.bitmap ?? '' });
    const refused = await scratch.cli(['incremental', '--socket', socket, '--dir', dir, '--json']).done;
    expect(refused.code).toBe(3);
    const error = (JSON.parse(refused.stdout) as { error: { message: string; reason: string } }).error;
    expect(error.reason).toBe('bitmap-missing');
    expect(error.message).toMatch(/incremental --full-if-broken/);
    expect(error.message).not.toMatch(/fullIfBroken/);
  });
});
