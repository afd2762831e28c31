// Issue 10: several drives from the command line. `--node drive0 --node drive1` makes one
// group chain: every backup of it is one transaction over both drives (one run id), and each
// drive verifies and restores on its own.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { qemuImg } from '@qmpkit/image-tools';
import type { Manifest } from '../src/index.js';
import { DRIVE0_PATTERN, DRIVE1_PATTERN, Scratch, WRITES_A, WRITES_B, hmpWrites } from './helpers.js';

describe('qmpkit-backup with two drives', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  it('runs one group chain: one transaction per backup, each drive verifies and restores', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const drive1 = await scratch.image('drive1.qcow2', '32M', DRIVE1_PATTERN.slice(0, 2));
    const socket = scratch.path('qmp.sock');
    const vm = await scratch.launch(
      [
        { file: drive0, format: 'qcow2', id: 'drive0', nodeName: 'node0' },
        { file: drive1, format: 'qcow2', id: 'drive1', nodeName: 'node1' },
      ],
      ['-qmp', `unix:${socket},server=on,wait=off`],
    );
    const dir = scratch.path('backups');
    const full = await scratch.cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0', '--node', 'drive1', '--json']).done;
    expect(full.code).toBe(0);
    const fullResult = JSON.parse(full.stdout) as { backups: Array<{ run: string; driveSize: number; kind: string }> };
    expect(fullResult.backups.map((b) => [b.kind, b.driveSize])).toEqual([
      ['full', 64 * 1048576],
      ['full', 32 * 1048576],
    ]);
    expect(new Set(fullResult.backups.map((b) => b.run)).size).toBe(1);

    await hmpWrites(vm, 'drive0', WRITES_A);
    await hmpWrites(vm, 'drive1', WRITES_B.slice(0, 2));
    // The drives come from the manifest.
    const inc = await scratch.cli(['incremental', '--socket', socket, '--dir', dir]).done;
    expect(inc.code).toBe(0);
    expect(inc.stdout).toMatch(/^drive0: incremental .*\ndrive1: incremental /m);
    const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest;
    expect(manifest.drives.map((d) => d.node)).toEqual(['drive0', 'drive1']);
    const [b0, b1] = manifest.drives.map((d) => d.backups[1]);
    expect(b0?.run).toBe(b1?.run);
    expect([b0?.bytes, b1?.bytes]).toEqual([458752, 65536 + 393216]);
    // Asking for only one of the chain's drives is refused rather than splitting the group.
    const one = await scratch.cli(['incremental', '--socket', socket, '--dir', dir, '--node', 'drive0']).done;
    expect(one.code).toBe(1);
    expect(one.stderr).toMatch(/records drives drive0, drive1, not drive0/);

    await vm.shutdown({ timeout: 10_000 });
    const verify = await scratch.cli(['verify', '--dir', dir, '--source', `drive0=${drive0}`, '--source', `drive1=${drive1}`]).done;
    expect(verify.code).toBe(0);
    expect(verify.stdout).toMatch(/against .*drive0\.qcow2: Images are identical/);
    expect(verify.stdout).toMatch(/against .*drive1\.qcow2: Images are identical/);
    // restore needs to know which drive; each restores to its own drive's content.
    const which = await scratch.cli(['restore', '--dir', dir, '--output', scratch.path('x.qcow2')]).done;
    expect(which.code).toBe(1);
    expect(which.stderr).toMatch(/2 drives \(drive0, drive1\): say which node/);
    for (const [node, source] of [['drive0', drive0], ['drive1', drive1]] as const) {
      const out = scratch.path(`${node}.restored.raw`);
      expect((await scratch.cli(['restore', '--dir', dir, '--node', node, '--output', out, '--format', 'raw']).done).code).toBe(0);
      expect((await qemuImg.compare(out, source)).identical).toBe(true);
    }
  });
});
