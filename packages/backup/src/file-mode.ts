// Backups hold everything the drive holds: they get no more access than the drive itself, by
// default owner-only, whatever the process umask says. Modes are set with chmod after
// creation, because open/mkdir only ever take bits away (the umask) and never add them.
import { chmod, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';

/** Backup images, manifests and restored images: read and write for the owner only. */
export const DEFAULT_FILE_MODE = 0o600;

/** A file mode must be permission bits only (no setuid/setgid/sticky, no type bits). */
export function checkFileMode(mode: number): number {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) {
    throw new RangeError(`file mode ${String(mode)} is not a permission mode (0 .. 0o777)`);
  }
  if ((mode & 0o600) !== 0o600) {
    throw new RangeError(`file mode 0${mode.toString(8)} must give its owner read and write access (QEMU writes backups as their owner)`);
  }
  return mode;
}

/** The mode of a directory holding files of `fileMode`: search (x) where the file is readable. */
export function directoryMode(fileMode: number): number {
  return fileMode | ((fileMode & 0o444) >> 2);
}

/**
 * `mkdir -p` whose newly created directories get `directoryMode(fileMode)`; directories that
 * already exist keep their mode (they are the user's). Returns the first directory it created
 * (undefined: `dir` existed).
 */
export async function makeDirectory(dir: string, fileMode: number): Promise<string | undefined> {
  const first = await mkdir(dir, { recursive: true, mode: 0o700 });
  if (first === undefined) return undefined;
  const mode = directoryMode(fileMode);
  // mkdir reports the first directory it created; every one below it on the way to `dir` is new too.
  for (let d = dir; ; d = dirname(d)) {
    await chmod(d, mode);
    if (d === first || dirname(d) === d) break;
  }
  return first;
}

/** Give a file the exact mode (after it was created, under whatever umask). */
export async function restrictFile(file: string, fileMode: number): Promise<void> {
  await chmod(file, fileMode);
}
