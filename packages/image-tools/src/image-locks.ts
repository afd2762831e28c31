// QEMU's image locks, read from the kernel's lock table, so that an in-process read of an image
// refuses what `qemu-img compare` would refuse: an image another process holds open for writing.
//
// QEMU's file driver (block/file-posix.c) takes one open-file-description lock per permission:
// byte 100 + bit for each permission a user of the image holds, byte 200 + bit for each one it
// does not let others hold. qemu-img opens an image to compare it wanting "consistent read" and
// sharing neither "write" nor "resize", so it fails when someone holds byte 101 (write) or 103
// (resize), or has locked byte 200 (does not share consistent read). This reader cannot take
// those locks (Node has no fcntl), so it looks before and after reading and hands the image to
// qemu-img when it sees one, or when the table cannot be read.
import { fstatSync, readFileSync } from 'node:fs';

const PERM_BASE = 100;
const SHARED_BASE = 200;
/** Permission bits (include/block/block-common.h). */
const PERMISSION_BITS = { 'consistent read': 0, write: 1, resize: 3 } as const;

/** The bytes whose lock conflicts with a reader like qemu-img compare, and what each means. */
const CONFLICTS: ReadonlyArray<{ byte: number; meaning: string }> = [
  { byte: PERM_BASE + PERMISSION_BITS.write, meaning: 'holds it open for writing (QEMU\'s "write" lock)' },
  { byte: PERM_BASE + PERMISSION_BITS.resize, meaning: 'may resize it (QEMU\'s "resize" lock)' },
  { byte: SHARED_BASE + PERMISSION_BITS['consistent read'], meaning: 'does not share consistent reads of it' },
];

const LOCK_TABLE = '/proc/locks';

/** `maj:min:inode` as /proc/locks prints a lock's file: hex device numbers, decimal inode. */
function fileKey(fd: number): string {
  const { dev, ino } = fstatSync(fd, { bigint: true });
  // glibc's encoding of dev_t (gnu_dev_major / gnu_dev_minor).
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${ino}`;
}

/**
 * Which file a reader like qemu-img compare may not read now, and why; undefined when
 * nothing conflicts. Only byte-range locks count (QEMU uses OFD locks, or POSIX locks where the
 * kernel has no OFD locks); this process takes none, so every lock found is another user's.
 */
export function conflictingLock(files: ReadonlyArray<{ file: string; fd: number }>): { file: string; reason: string } | undefined {
  let table: string;
  try {
    table = readFileSync(LOCK_TABLE, 'latin1');
  } catch {
    return { file: files[0]?.file ?? '', reason: `its image locks cannot be checked here (no ${LOCK_TABLE})` };
  }
  const wanted = new Map(files.map((f) => [fileKey(f.fd), f.file]));
  for (const line of table.split('\n')) {
    // "1: OFDLCK ADVISORY  READ -1 fe:00:2150223 100 101"; "1: -> ..." lines are blocked waiters.
    const fields = line.trim().split(/\s+/);
    if (fields.length < 8 || fields[1] === '->') continue;
    const [, type, , , , key, start, end] = fields as [string, string, string, string, string, string, string, string];
    if (type !== 'OFDLCK' && type !== 'POSIX') continue;
    const file = wanted.get(key);
    if (file === undefined) continue;
    const from = Number(start);
    const to = end === 'EOF' ? Number.POSITIVE_INFINITY : Number(end);
    for (const conflict of CONFLICTS) {
      if (from <= conflict.byte && conflict.byte <= to) return { file, reason: `another process ${conflict.meaning}` };
    }
  }
  return undefined;
}
