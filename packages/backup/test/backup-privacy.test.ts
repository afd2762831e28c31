// Issue 9: a backup of a 0600 drive landed world-readable (0644 files in a 0755 directory
// under the default umask). Backups, manifests, run logs, restored images and the
// directories the tool creates are owner-only by default, whatever the umask.
import { spawnSync } from 'node:child_process';
import { chmod, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DRIVE0_PATTERN, Scratch, hmpWrites, launchWithSocket } from './helpers.js';

async function modeOf(path: string): Promise<number> {
  return (await stat(path)).mode & 0o777;
}

/** Whether the unprivileged user `nobody` can read the file (via runuser; the tests run as root). */
function nobodyCanRead(path: string): boolean {
  return spawnSync('runuser', ['-u', 'nobody', '--', 'cat', path], { stdio: 'ignore' }).status === 0;
}

// Reading as another user needs root (runuser); the modes alone would say less.
const asRoot = process.getuid?.() === 0;

describe('backup privacy', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  (asRoot ? it : it.skip)('a backup of a 0600 drive under umask 022 is readable by its owner only, and a wider mode is given when asked', async () => {
    await scratch.init();
    // The scratch directory is opened up so that only the backups' own modes protect them.
    await chmod(scratch.dir, 0o755);
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    await chmod(drive0, 0o600);
    const control = scratch.path('control.txt');
    await writeFile(control, 'readable');
    await chmod(control, 0o644);
    // The negative control: nobody can reach and read a 0644 file here, not the 0600 drive.
    expect(nobodyCanRead(control)).toBe(true);
    expect(nobodyCanRead(drive0)).toBe(false);

    const { vm, socket } = await launchWithSocket(scratch, drive0);
    const dir = scratch.path('backups/nested');
    const full = await scratch.cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0'], { umask: 0o022 }).done;
    expect(full.code).toBe(0);
    await hmpWrites(vm, 'drive0', [[0x31, '1M', '64k']]);
    expect((await scratch.cli(['incremental', '--socket', socket, '--dir', dir], { umask: 0o022 }).done).code).toBe(0);
    const restored = scratch.path('restored.qcow2');
    expect((await scratch.cli(['restore', '--dir', dir, '--output', restored], { umask: 0o022 }).done).code).toBe(0);

    expect(await modeOf(scratch.path('backups'))).toBe(0o700);
    expect(await modeOf(dir)).toBe(0o700);
    const files = (await readdir(dir)).sort();
    expect(files.filter((f) => f.endsWith('.qcow2'))).toHaveLength(2);
    expect(files).toContain('manifest.json');
    expect(files).toContain('manifest.runs.jsonl');
    for (const f of [...files.map((x) => join(dir, x)), restored]) {
      expect({ f, mode: await modeOf(f) }).toEqual({ f, mode: 0o600 });
      expect({ f, nobody: nobodyCanRead(f) }).toEqual({ f, nobody: false });
    }

    // Wider when asked: group-readable files in a directory the group can search.
    const shared = scratch.path('shared');
    expect((await scratch.cli(['full', '--socket', socket, '--dir', shared, '--node', 'drive0', '--file-mode', '0640'], { umask: 0o077 }).done).code).toBe(0);
    expect(await modeOf(shared)).toBe(0o750);
    for (const f of await readdir(shared)) expect({ f, mode: await modeOf(join(shared, f)) }).toEqual({ f, mode: 0o640 });
    // A mode that locks the owner out is a usage error, before anything is done.
    const refused = await scratch.cli(['full', '--socket', socket, '--dir', scratch.path('x'), '--node', 'drive0', '--file-mode', '0400']).done;
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/owner read and write/);
  });
});
