import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';

import { QemuLaunchError, QemuStorageDaemon, type QemuStorageDaemonOptions } from '../src/index.js';
import { Scratch, createImage, isAlive } from './support.js';

const run = promisify(execFile);

let scratch: Scratch;
let image: string;

beforeAll(async () => {
  scratch = await Scratch.create();
  image = scratch.path('disk0.qcow2');
  await createImage(image, 'qcow2', '1M');
  await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P0xab 0 512', image]);
});

afterAll(async () => {
  await scratch.cleanUp();
});

function daemon(options: QemuStorageDaemonOptions = {}): QemuStorageDaemon {
  return scratch.track(new QemuStorageDaemon({ tmpDir: scratch.dir, ...options }));
}

test('serves a blockdev over QMP and exports it over NBD', async () => {
  const nbdSocket = scratch.path('nbd.sock');
  const qsd = daemon({
    blockdevs: [
      { driver: 'file', filename: image, 'node-name': 'file0' },
      { driver: 'qcow2', file: 'file0', 'node-name': 'node0' },
    ],
    nbdServer: { addr: { type: 'unix', path: nbdSocket } },
    exports: [{ type: 'nbd', id: 'exp0', 'node-name': 'node0', name: 'exp0' }],
  });
  await qsd.launch({ timeout: 20_000 });
  try {
    expect(qsd.state).toBe('running');
    expect(qsd.argv).toEqual(expect.arrayContaining(['--blockdev', '--nbd-server', '--export', '--monitor']));
    const nodes = await qsd.qmp.execute('query-named-block-nodes');
    expect(nodes.map((node) => [node['node-name'], node.drv]).sort()).toEqual([
      ['file0', 'file'],
      ['node0', 'qcow2'],
    ]);
    // Reading through the export with the real qemu-io shows the daemon serves the image.
    const { stdout } = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P0xab 0 512', `nbd+unix:///exp0?socket=${nbdSocket}`]);
    expect(stdout).toContain('read 512/512 bytes at offset 0');
  } finally {
    const result = await qsd.shutdown({ timeout: 10_000 });
    expect(result).toEqual({ exitCode: 0, signal: null, method: 'quit' });
  }
});

test('nodes can also be given in key=value syntax and added after construction', async () => {
  const qsd = daemon().addBlockdev(`driver=file,filename=${image.replaceAll(',', ',,')},node-name=file0,read-only=on`);
  await using launched = await qsd.launch();
  const nodes = await launched.qmp.execute('query-named-block-nodes');
  expect(nodes).toEqual([expect.objectContaining({ 'node-name': 'file0', ro: true })]);
});

test('a daemon that fails to start (missing image) reports the log tail', async () => {
  const missing = scratch.path('missing.qcow2');
  const qsd = daemon({ blockdevs: [{ driver: 'file', filename: missing, 'node-name': 'file0' }] });
  let caught: unknown;
  try {
    await qsd.launch();
  } catch (error) {
    caught = error;
  }
  expect(QemuLaunchError.isInstance(caught)).toBe(true);
  expect((caught as QemuLaunchError).reason).toBe('exited');
  expect((caught as QemuLaunchError).exitCode).toBe(1);
  expect((caught as QemuLaunchError).logTail).toContain(`Could not open '${missing}': No such file or directory`);
  expect(qsd.tempDir).toBeUndefined();
});

test('shutdown escalates for the daemon too (shared process code)', async () => {
  const qsd = await daemon().launch();
  const dir = qsd.tempDir ?? '';
  const pid = qsd.pid ?? -1;
  process.kill(pid, 'SIGSTOP');
  const result = await qsd.shutdown({ timeout: 1_000 });
  expect(result.method).toBe('SIGKILL');
  expect(await isAlive(pid)).toBe(false);
  expect(existsSync(dir)).toBe(false);
});

test('await using disposes the daemon', async () => {
  let pid = -1;
  {
    await using qsd = await QemuStorageDaemon.launch({ tmpDir: scratch.dir });
    pid = qsd.pid ?? -1;
    scratch.rememberPid(pid);
    expect(await qsd.qmp.execute('query-block-exports')).toEqual([]);
  }
  expect(await isAlive(pid)).toBe(false);
});

test('leaves no daemon process and no temporary directory behind', async () => {
  const { alive, dirs } = await scratch.leftovers();
  expect(alive).toEqual([]);
  expect(dirs).toEqual([]);
});
