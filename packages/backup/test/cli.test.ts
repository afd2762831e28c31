import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { qemuImg } from '@qmpkit/image-tools';
import { readFile } from 'node:fs/promises';
import { removeBitmap } from '../src/index.js';
import type { Manifest } from '../src/index.js';
import { DRIVE0_PATTERN, Scratch, WRITES_A, hmpWrites, qmpOf } from './helpers.js';

// The CLI is tested as shipped: the built dist/cli.js (turbo builds before it tests).
const CLI = join(__dirname, '..', 'dist', 'cli.js');

interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[]): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('qmpkit-backup CLI against QEMU', () => {
  const scratch = new Scratch();
  beforeAll(() => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build the package first`);
  });
  afterEach(() => scratch.cleanup());

  it('runs full, incremental, status, verify and restore', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const socket = scratch.path('qmp.sock');
    const vm = await scratch.launch([{ file: drive0, format: 'qcow2', id: 'drive0', nodeName: 'node0' }], [
      '-qmp',
      `unix:${socket},server=on,wait=off`,
    ]);
    const dir = scratch.path('backups');

    const early = await cli(['incremental', '--socket', socket, '--dir', dir, '--node', 'drive0', '--json']);
    expect(early.code).toBe(3);
    expect(JSON.parse(early.stdout)).toMatchObject({ error: { name: 'NewFullBackupRequiredError', reason: 'no-full-backup' } });

    const full = await cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0', '--granularity', '65536', '--json']);
    expect(full.code).toBe(0);
    expect(JSON.parse(full.stdout)).toMatchObject({ kind: 'full', backups: [{ kind: 'full', bytes: 262144, jobLength: 67108864, driveSize: 67108864 }] });

    await hmpWrites(vm, 'drive0', WRITES_A);
    const inc = await cli(['incremental', '--socket', socket, '--dir', dir, '--json']);
    expect(inc.code).toBe(0);
    const incResult = JSON.parse(inc.stdout) as { backups: Array<{ file: string; bytes: number }> };
    expect(incResult.backups[0]?.bytes).toBe(458752);

    const status = await cli(['status', '--socket', socket, '--dir', dir]);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/drive0: can continue \(0 dirty bytes\)/);
    expect(status.stdout).toContain(incResult.backups[0]?.file);

    await vm.shutdown({ timeout: 10_000 });
    const verify = await cli(['verify', '--dir', dir, '--source', `drive0=${drive0}`]);
    expect(verify.code).toBe(0);
    expect(verify.stdout).toMatch(/verified$/m);

    const restored = scratch.path('restored.raw');
    const restore = await cli(['restore', '--dir', dir, '--output', restored, '--format', 'raw']);
    expect(restore.code).toBe(0);
    expect((await qemuImg.compare(restored, drive0)).identical).toBe(true);
    expect((await cli(['restore', '--dir', dir, '--output', restored])).code).toBe(1);

    const mismatch = await cli(['verify', '--dir', dir, '--source', `drive0=${scratch.path('nothing.qcow2')}`, '--json']);
    expect(mismatch.code).toBe(1);
  });

  it('says when a new full backup is needed, and takes one when asked', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const socket = scratch.path('qmp.sock');
    const vm = await scratch.launch([{ file: drive0, format: 'qcow2', id: 'drive0' }], [
      '-qmp',
      `unix:${socket},server=on,wait=off`,
    ]);
    const dir = scratch.path('backups');
    expect((await cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0'])).code).toBe(0);
    const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest;
    await removeBitmap(qmpOf(vm), 'drive0', manifest.drives[0]?.bitmap ?? '');

    const status = await cli(['status', '--socket', socket, '--dir', dir]);
    expect(status.code).toBe(3);
    expect(status.stdout).toMatch(/needs a new full backup/);
    const refused = await cli(['incremental', '--socket', socket, '--dir', dir]);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toMatch(/--full-if-broken/);
    const taken = await cli(['incremental', '--socket', socket, '--dir', dir, '--full-if-broken', '--json']);
    expect(taken.code).toBe(0);
    expect(JSON.parse(taken.stdout)).toMatchObject({ kind: 'full' });
  });

  it('rejects bad usage with exit status 2', async () => {
    expect((await cli(['frobnicate', '--dir', '/nonexistent'])).code).toBe(2);
    expect((await cli(['full', '--dir', '/nonexistent'])).code).toBe(2);
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^usage: qmpkit-backup/);
  });
});
