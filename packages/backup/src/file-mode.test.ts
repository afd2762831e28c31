import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkFileMode, directoryMode, makeDirectory } from './file-mode.js';

describe('file modes', () => {
  it('gives directories search where their files are readable', () => {
    expect(directoryMode(0o600)).toBe(0o700);
    expect(directoryMode(0o640)).toBe(0o750);
    expect(directoryMode(0o644)).toBe(0o755);
  });

  it('refuses modes that are not permissions, or that lock the owner out', () => {
    expect(checkFileMode(0o640)).toBe(0o640);
    expect(() => checkFileMode(0o4600)).toThrow(RangeError);
    expect(() => checkFileMode(0o400)).toThrow(/owner read and write/);
    expect(() => checkFileMode(1.5)).toThrow(RangeError);
  });

  it('creates missing directories with the mode whatever the umask, and leaves existing ones alone', async () => {
    const root = await mkdtemp(join(tmpdir(), 'qmpkit-backup-'));
    const old = process.umask(0o000);
    try {
      await makeDirectory(join(root, 'a', 'b'), 0o600);
      expect((await stat(join(root, 'a'))).mode & 0o777).toBe(0o700);
      expect((await stat(join(root, 'a', 'b'))).mode & 0o777).toBe(0o700);
      // The root existed: its mode is the user's.
      expect((await stat(root)).mode & 0o777).toBe(0o700);
      await makeDirectory(join(root, 'c'), 0o640);
      expect((await stat(join(root, 'c'))).mode & 0o777).toBe(0o750);
    } finally {
      process.umask(old);
      await rm(root, { recursive: true, force: true });
    }
  });
});
