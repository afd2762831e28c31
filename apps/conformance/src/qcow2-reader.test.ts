import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { compareQcow2, lockConflict, mapQcow2Data, Qcow2ReaderError, type ReaderExtent } from './qcow2-reader.js';

// The suite's own qcow2 reader against qemu-img on the same files: it must give qemu-img's
// verdicts, first lines and data maps, on random images and chains as on the layouts the
// suites make, and refuse what it does not read instead of answering.

const QEMU_IMG = process.env['QEMU_IMG'] || 'qemu-img';
const QEMU_IO = process.env['QEMU_IO'] || 'qemu-io';

let dir = '';
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'qmpkit-qcow2-reader-test-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const path = (name: string): string => join(dir, name);

function create(name: string, size: string, options: string[] = []): string {
  execFileSync(QEMU_IMG, ['create', '-q', '-f', 'qcow2', ...options, path(name), size]);
  return path(name);
}

/** qemu-io commands on an image (one process). */
function io(file: string, commands: readonly string[]): void {
  if (commands.length === 0) return;
  execFileSync(QEMU_IO, ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), file], { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** qemu-img compare's verdict (exit 0/1) and first line. */
function qemuImgCompare(a: string, b: string): { identical: boolean; message: string } {
  try {
    const out = execFileSync(QEMU_IMG, ['compare', '-f', 'qcow2', '-F', 'qcow2', a, b], { encoding: 'utf8' });
    return { identical: true, message: out.trim().split('\n')[0] ?? '' };
  } catch (error) {
    const e = error as { status?: number; stdout?: string; stderr?: string };
    if (e.status !== 1) throw new Error(`qemu-img compare failed: ${e.stderr ?? String(error)}`);
    return { identical: false, message: (e.stdout ?? '').trim().split('\n')[0] ?? '' };
  }
}

/** The data extents of qemu-img map, merged as the suite merges them. */
function qemuImgMap(file: string): ReaderExtent[] {
  const entries = JSON.parse(execFileSync(QEMU_IMG, ['map', '--output=json', '-f', 'qcow2', file], { encoding: 'utf8' })) as Array<{
    start: number;
    length: number;
    depth: number;
    data: boolean;
  }>;
  const out: ReaderExtent[] = [];
  for (const e of entries) {
    if (!e.data) continue;
    const last = out[out.length - 1];
    if (last && last.depth === e.depth && last.start + last.length === e.start) last.length += e.length;
    else out.push({ start: e.start, length: e.length, depth: e.depth });
  }
  return out;
}

async function expectSameAsQemuImg(a: string, b: string): Promise<void> {
  expect(await compareQcow2(a, b)).toEqual(qemuImgCompare(a, b));
  expect(await compareQcow2(b, a)).toEqual(qemuImgCompare(b, a));
  expect(await mapQcow2Data(a)).toEqual(qemuImgMap(a));
  expect(await mapQcow2Data(b)).toEqual(qemuImgMap(b));
}

async function failureOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a failure');
}

/** A small deterministic PRNG (mulberry32), so a failing draw can be replayed from its seed. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("the suite's qcow2 reader", () => {
  it('gives qemu-img compare\'s verdicts and first lines and qemu-img map\'s data on random images and chains', async () => {
    const MiB = 1024 * 1024;
    for (let seed = 1; seed <= 16; seed++) {
      const rnd = random(seed);
      const pick = <T>(values: readonly T[]): T => values[Math.floor(rnd() * values.length)] as T;
      const writes = (size: number): string[] =>
        Array.from({ length: Math.floor(rnd() * 5) }, () => {
          // Byte offsets and lengths, so the reported offset's rounding to a sector is tested too.
          const offset = Math.floor(rnd() * (size - 70_000));
          const length = 1 + Math.floor(rnd() * 70_000);
          const kind = rnd();
          if (kind < 0.15) return `write -z ${offset - (offset % 512)} ${512 * (1 + Math.floor(length / 512))}`;
          return `write -P ${kind < 0.3 ? 0 : 1 + Math.floor(rnd() * 255)} ${offset} ${length}`;
        });
      const cluster = (): string[] => ['-o', `cluster_size=${pick([4096, 65536, 131072])}`];
      const size = pick([4, 8]) * MiB;
      // a: a chain (base <- top), b: one image built from the same or other writes.
      const base = create(`s${seed}-base.qcow2`, `${size}`, cluster());
      const baseWrites = writes(size);
      io(base, baseWrites);
      const topSize = rnd() < 0.25 ? size + MiB : size;
      const top = create(`s${seed}-top.qcow2`, `${topSize}`, [...cluster(), '-b', base, '-F', 'qcow2']);
      const topWrites = writes(size);
      io(top, topWrites);
      const other = create(`s${seed}-other.qcow2`, `${rnd() < 0.2 ? size : topSize}`, cluster());
      // Mostly the same writes (identical or nearly), sometimes one more.
      io(other, [...baseWrites, ...topWrites, ...(rnd() < 0.5 ? writes(size).slice(0, 1) : [])]);
      await expectSameAsQemuImg(top, other);
      await expectSameAsQemuImg(base, top);
    }
  }, 120_000);

  it('finds the sector qemu-img names for a one-byte difference, in data and against unallocated space', async () => {
    const a = create('byte-a.qcow2', '64M');
    io(a, ['write -P 0x41 1M 64k']);
    const b = path('byte-b.qcow2');
    copyFileSync(a, b);
    io(b, ['write -P 0x42 1049300 1']); // 1M + 724: the sector at 1M + 512
    expect(await compareQcow2(a, b)).toEqual({ identical: false, message: 'Content mismatch at offset 1049088!' });
    const empty = create('byte-empty.qcow2', '64M');
    io(empty, ['write -P 0 0 64k']); // zeros written as data read as the empty image does
    expect(await compareQcow2(empty, create('byte-empty2.qcow2', '64M'))).toEqual({ identical: true, message: 'Images are identical.' });
    expect(await compareQcow2(a, empty)).toEqual({ identical: false, message: 'Content mismatch at offset 1048576!' });
    await expectSameAsQemuImg(a, b);
    await expectSameAsQemuImg(a, empty);
  });

  it('reads the layouts of suite 124: a 128k-cluster target over a 64k-cluster backing, a grown drive, zero clusters over data', async () => {
    const drive = create('l-drive.qcow2', '64M');
    io(drive, ['write -P 0x41 0 512', 'write -P 0xd5 1M 32k', 'write -P 0xdc 32M 124k']);
    const anchor = path('l-anchor.qcow2');
    copyFileSync(drive, anchor);
    const inc = create('l-inc.qcow2', '64M', ['-o', 'cluster_size=131072', '-b', anchor, '-F', 'qcow2']);
    io(inc, ['write -P 0xab 0 512', 'write -z 1M 64k']);
    io(drive, ['write -P 0xab 0 512', 'write -z 1M 64k']);
    expect(await compareQcow2(inc, drive)).toEqual({ identical: true, message: 'Images are identical.' });
    expect(await compareQcow2(inc, anchor)).toEqual({ identical: false, message: 'Content mismatch at offset 0!' });
    await expectSameAsQemuImg(inc, drive);
    await expectSameAsQemuImg(inc, anchor);

    const grown = create('l-grown.qcow2', '65M', ['-b', drive, '-F', 'qcow2']);
    io(grown, ['write -P 0x01 64M 64k']);
    expect((await compareQcow2(grown, drive)).message).toBe('Warning: Image size mismatch!');
    await expectSameAsQemuImg(grown, drive);
    const grownEmptyTail = create('l-grown-empty.qcow2', '65M', ['-b', drive, '-F', 'qcow2']);
    expect(await compareQcow2(grownEmptyTail, drive)).toEqual({ identical: true, message: 'Warning: Image size mismatch!' });
    await expectSameAsQemuImg(grownEmptyTail, drive);

    // A version 2 image (compat=0.10) reads the same.
    const v2 = create('l-v2.qcow2', '64M', ['-o', 'compat=0.10']);
    io(v2, ['write -P 0x41 0 512', 'write -P 0xd5 1M 32k', 'write -P 0xdc 32M 124k', 'write -P 0xab 0 512', 'write -P 0 1M 64k']);
    await expectSameAsQemuImg(v2, drive);
    expect((await compareQcow2(v2, drive)).identical).toBe(true);
  });

  it('refuses what it does not read, naming the file and why', async () => {
    const plain = create('r-plain.qcow2', '8M');
    io(plain, ['write -P 0x11 0 1M']);
    const compressed = path('r-compressed.qcow2');
    execFileSync(QEMU_IMG, ['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', plain, compressed]);
    const extendedL2 = create('r-extended-l2.qcow2', '8M', ['-o', 'extended_l2=on']);
    const dataFile = create('r-data-file.qcow2', '8M', ['-o', `data_file=${path('r-data-file.raw')}`]);
    const raw = path('r-raw.img');
    writeFileSync(raw, Buffer.alloc(8 * 1024 * 1024));
    const overRaw = create('r-over-raw.qcow2', '8M', ['-b', raw, '-F', 'raw']);
    const cases: Array<[string, RegExp]> = [
      [compressed, /compressed cluster at guest offset 0/],
      [extendedL2, /incompatible features extended L2 entries/],
      [dataFile, /incompatible features external data file/],
      [raw, /not a qcow2 image/],
      [overRaw, /backing file .*r-raw\.img in format raw, not qcow2/],
      [path('r-missing.qcow2'), /cannot open it \(ENOENT\)/],
    ];
    for (const [file, reason] of cases) {
      for (const attempt of [compareQcow2(file, plain), mapQcow2Data(file)]) {
        const error = await failureOf(attempt);
        expect(Qcow2ReaderError.isInstance(error)).toBe(true);
        expect((error as Error).message).toContain(file.split('/').pop());
        expect((error as Error).message).toMatch(reason);
      }
    }
  });

  it('refuses an image QEMU holds open for writing, as qemu-img does', async () => {
    const image = create('lock.qcow2', '8M');
    const copy = path('lock-copy.qcow2');
    copyFileSync(image, copy);
    expect(lockConflict([])).toBeUndefined();
    // qemu-io in interactive mode holds the image open read-write until its stdin closes.
    const holder = spawn(QEMU_IO, ['-f', 'qcow2', image], { stdio: ['pipe', 'pipe', 'pipe'] });
    try {
      await new Promise<void>((resolve, reject) => {
        holder.on('error', reject);
        holder.stdout.once('data', () => resolve());
        holder.stdin.write('help\n');
      });
      const error = await failureOf(compareQcow2(image, copy));
      expect(Qcow2ReaderError.isInstance(error)).toBe(true);
      expect((error as Error).message).toMatch(/lock\.qcow2: another process holds it open for writing \(QEMU's lock on byte 101\)/);
      // qemu-img refuses too, which is what the reader stands in for.
      expect(() => qemuImgCompare(image, copy)).toThrow(/lock/);
    } finally {
      holder.stdin.end();
      await new Promise((resolve) => holder.once('close', resolve));
    }
    expect(await compareQcow2(image, copy)).toEqual({ identical: true, message: 'Images are identical.' });
  });
});
