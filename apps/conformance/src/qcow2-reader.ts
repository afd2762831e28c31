// The suite's own qcow2 reader: a second verdict engine that shares no code with what the
// suite tests. It is written here from the qcow2 specification (QEMU's docs/interop/qcow2.txt)
// and imports none of the SDK's image code (`@qmpkit/image-tools` has a reader of its own,
// which is under test; only the error base class every qmpkit error shares comes from the SDK)
// and, unlike qemu-img, nothing of QEMU either, so a bug in QEMU's block layer cannot both
// write an image wrongly and read it back the same wrong way.
//
// It reads only what the suite's images are: qcow2 (v2 or v3) chains with qcow2 backing files,
// without encryption, compressed clusters, extended L2 entries or an external data file; any
// of those is refused with `Qcow2ReaderError` (the case then fails: an engine that cannot
// decide does not count as agreeing). Like qemu-img it refuses an image another process holds
// open for writing, by looking at QEMU's image locks in the kernel's lock table.
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';

import { hasBrand, type QmpkitErrorKind } from '@qmpkit/errors';

import { ConformanceError } from './errors.js';

const MAGIC = 0x514649fb; // "QFI\xfb"
const SECTOR = 512;
/** Header extension types (qcow2.txt, "Header extensions"). */
const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
/** Incompatible feature bits this reader can read past: dirty (0), compression type (3; only compressed clusters use it). */
const INCOMPATIBLE_READABLE = (1 << 0) | (1 << 3);
const INCOMPATIBLE_NAMES: Readonly<Record<number, string>> = { 1: 'corrupt', 2: 'external data file', 4: 'extended L2 entries' };
/** A chain deeper than this is taken for a loop (QEMU's own limit is of this order). */
const MAX_CHAIN = 64;
/** Bytes read between two turns of the event loop (and abort checks). */
const BYTES_PER_TURN = 4 * 1024 * 1024;

/** The suite's reader cannot read an image: its reason names the file and what is unsupported or broken. */
export class Qcow2ReaderError extends ConformanceError {
  protected static override readonly brand: string = 'Qcow2ReaderError';
  static override readonly kind: QmpkitErrorKind = 'unsupported';

  static override isInstance(value: unknown): value is Qcow2ReaderError {
    return hasBrand(value, Symbol.for('qmpkit.conformance.Qcow2ReaderError'));
  }

  readonly file: string;

  constructor(file: string, reason: string) {
    super(`the suite's qcow2 reader cannot read ${file}: ${reason}`);
    this.file = file;
  }
}

/** What a guest range of an image chain reads as. */
type Content = { kind: 'zero' } | { kind: 'data'; layer: Layer; host: number };

/** One image of a chain: its header and an L2 table cache. */
class Layer {
  readonly file: string;
  readonly fd: number;
  readonly depth: number;
  readonly size: number;
  readonly clusterSize: number;
  readonly version: number;
  readonly backing: Layer | undefined;
  readonly #l1: Array<number>;
  readonly #l2 = new Map<number, Buffer>();

  constructor(file: string, depth: number, opened: Set<string>) {
    this.file = file;
    this.depth = depth;
    if (depth >= MAX_CHAIN) throw new Qcow2ReaderError(file, `backing chain deeper than ${MAX_CHAIN}`);
    try {
      this.fd = openSync(file, 'r');
    } catch (error) {
      throw new Qcow2ReaderError(file, `cannot open it (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
    }
    try {
      const stat = fstatSync(this.fd);
      const key = `${stat.dev}:${stat.ino}`;
      if (opened.has(key)) throw new Qcow2ReaderError(file, 'its backing chain loops back to it');
      opened.add(key);
      const header = this.#read(0, 112);
      if (header.length < 72 || header.readUInt32BE(0) !== MAGIC) throw new Qcow2ReaderError(file, 'not a qcow2 image');
      this.version = header.readUInt32BE(4);
      if (this.version !== 2 && this.version !== 3) throw new Qcow2ReaderError(file, `qcow2 version ${this.version}`);
      const clusterBits = header.readUInt32BE(20);
      if (clusterBits < 9 || clusterBits > 21) throw new Qcow2ReaderError(file, `cluster_bits ${clusterBits}`);
      this.clusterSize = 2 ** clusterBits;
      this.size = safeNumber(file, 'size', header.readBigUInt64BE(24));
      const crypt = header.readUInt32BE(32);
      if (crypt !== 0) throw new Qcow2ReaderError(file, `encrypted (crypt_method ${crypt})`);
      const l1Size = header.readUInt32BE(36);
      const l1Offset = safeNumber(file, 'l1_table_offset', header.readBigUInt64BE(40));
      let headerLength = 72;
      if (this.version === 3) {
        if (header.length < 104) throw new Qcow2ReaderError(file, 'truncated v3 header');
        const incompatible = header.readBigUInt64BE(72);
        const unreadable = incompatible & ~BigInt(INCOMPATIBLE_READABLE);
        if (unreadable !== 0n) {
          const bits = [...Array(64).keys()].filter((b) => (unreadable >> BigInt(b)) & 1n);
          throw new Qcow2ReaderError(file, `incompatible features ${bits.map((b) => INCOMPATIBLE_NAMES[b] ?? `bit ${b}`).join(', ')}`);
        }
        headerLength = header.readUInt32BE(100);
        if (headerLength < 104 || headerLength % 8 !== 0) throw new Qcow2ReaderError(file, `header_length ${headerLength}`);
      }
      // Guest clusters an L1 table of l1Size entries can map must cover the image.
      const l2Entries = this.clusterSize / 8;
      if (l1Size * l2Entries * this.clusterSize < this.size) throw new Qcow2ReaderError(file, `L1 table of ${l1Size} entries too small for size ${this.size}`);
      const l1 = this.#read(l1Offset, l1Size * 8);
      if (l1.length < l1Size * 8) throw new Qcow2ReaderError(file, 'L1 table beyond the end of the file');
      this.#l1 = Array.from({ length: l1Size }, (_, i) => this.#tableOffset(l1, i * 8, 'L1'));

      const backingOffset = safeNumber(file, 'backing_file_offset', header.readBigUInt64BE(8));
      let backingFormat: string | undefined;
      for (let at = headerLength; at + 8 <= this.clusterSize; ) {
        const ext = this.#read(at, 8);
        if (ext.length < 8) break;
        const type = ext.readUInt32BE(0);
        const length = ext.readUInt32BE(4);
        if (type === EXT_END) break;
        if (type === EXT_BACKING_FORMAT) backingFormat = this.#read(at + 8, length).toString('utf8');
        at += 8 + Math.ceil(length / 8) * 8;
      }
      if (backingOffset === 0) {
        this.backing = undefined;
      } else {
        const nameLength = header.readUInt32BE(16);
        if (nameLength === 0 || nameLength > 1023) throw new Qcow2ReaderError(file, `backing file name of ${nameLength} bytes`);
        const name = this.#read(backingOffset, nameLength).toString('utf8');
        if (/^[a-z0-9+.-]+:/i.test(name)) throw new Qcow2ReaderError(file, `backing file ${name} behind a protocol`);
        // QEMU resolves a relative backing file name against the directory of the image naming it.
        const path = isAbsolute(name) ? name : resolve(dirname(file), name);
        if (backingFormat !== undefined && backingFormat !== 'qcow2') {
          throw new Qcow2ReaderError(file, `backing file ${name} in format ${backingFormat}, not qcow2`);
        }
        this.backing = new Layer(path, depth + 1, opened);
      }
    } catch (error) {
      this.close();
      throw error;
    }
  }

  /** Bytes of the file at `offset`; shorter at the end of the file, never longer. */
  #read(offset: number, length: number): Buffer {
    const buffer = Buffer.allocUnsafe(length);
    const done = this.#readInto(buffer, offset, length);
    return done === length ? buffer : buffer.subarray(0, done);
  }

  /** Reads up to `length` bytes at `offset` into the start of `buffer`; returns how many there were. */
  #readInto(buffer: Buffer, offset: number, length: number): number {
    let done = 0;
    while (done < length) {
      const n = readSync(this.fd, buffer, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  /** The host offset an L1 entry (or a standard L2 entry) at `at` of `table` points to; 0 when none. */
  #tableOffset(table: Buffer, at: number, what: string): number {
    const high = table.readUInt32BE(at);
    const low = table.readUInt32BE(at + 4);
    // Bits 9..55: low bits 9..31 and high bits 0..23. Offsets past 2^53 do not fit a number.
    if ((high & 0x00e00000) !== 0) throw new Qcow2ReaderError(this.file, `${what} entry with an offset past 2^53`);
    return (high & 0x00ffffff) * 2 ** 32 + ((low & 0xfffffe00) >>> 0);
  }

  /**
   * What guest cluster `index` holds in this image alone: 'unallocated' (go to the backing
   * file), 'zero' (the zero flag), or data at a host offset.
   */
  cluster(index: number): 'unallocated' | 'zero' | number {
    const l2Entries = this.clusterSize / 8;
    const l1Index = Math.floor(index / l2Entries);
    const l2Offset = l1Index < this.#l1.length ? (this.#l1[l1Index] ?? 0) : 0;
    if (l2Offset === 0) return 'unallocated';
    let table = this.#l2.get(l2Offset);
    if (table === undefined) {
      table = this.#read(l2Offset, this.clusterSize);
      if (table.length < this.clusterSize) throw new Qcow2ReaderError(this.file, `L2 table at ${l2Offset} beyond the end of the file`);
      this.#l2.set(l2Offset, table);
    }
    const at = (index % l2Entries) * 8;
    const high = table.readUInt32BE(at);
    const low = table.readUInt32BE(at + 4);
    if ((high & 0x40000000) !== 0) throw new Qcow2ReaderError(this.file, `compressed cluster at guest offset ${index * this.clusterSize}`);
    const host = this.#tableOffset(table, at, 'L2');
    if ((low & 1) !== 0) {
      if (this.version === 2) throw new Qcow2ReaderError(this.file, 'zero flag in a version 2 image');
      return 'zero';
    }
    if (host % this.clusterSize !== 0) throw new Qcow2ReaderError(this.file, `data cluster at unaligned host offset ${host}`);
    return host === 0 ? 'unallocated' : host;
  }

  /** `length` bytes at host offset `host` into the start of `into`; what lies past the end of the file reads as zeros. */
  readHost(host: number, length: number, into: Buffer): void {
    const done = this.#readInto(into, host, length);
    if (done < length) into.fill(0, done, length);
  }

  /** Every file of the chain, top first. */
  files(): Array<{ file: string; fd: number }> {
    const out: Array<{ file: string; fd: number }> = [];
    for (let at: Layer | undefined = this; at !== undefined; at = at.backing) out.push({ file: at.file, fd: at.fd });
    return out;
  }

  close(): void {
    try {
      closeSync(this.fd);
    } catch {
      // Already closed, or never opened.
    }
    this.backing?.close();
  }
}

function safeNumber(file: string, field: string, value: bigint): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new Qcow2ReaderError(file, `${field} ${value} too large`);
  return Number(value);
}

/**
 * A step at which every layer of the chains maps guest ranges whole: the smallest cluster,
 * halved until it divides every layer's size (QEMU keeps qcow2 sizes multiples of 512).
 */
function granule(...chains: Layer[]): number {
  let step = Infinity;
  for (const chain of chains) for (let at: Layer | undefined = chain; at !== undefined; at = at.backing) step = Math.min(step, at.clusterSize);
  for (const chain of chains) {
    for (let at: Layer | undefined = chain; at !== undefined; at = at.backing) {
      if (at.size % SECTOR !== 0) throw new Qcow2ReaderError(at.file, `size ${at.size} is not a multiple of ${SECTOR}`);
      while (at.size % step !== 0) step /= 2;
    }
  }
  return step;
}

/**
 * What guest range [offset, offset + length) of the chain reads as; the range lies within one
 * cluster of every layer. Past a layer's size a range reads zeros, without asking deeper layers
 * (qcow2.txt: a backing file smaller than the image reads as zeros beyond its end).
 */
function contentAt(top: Layer, offset: number): Content {
  for (let layer: Layer | undefined = top; layer !== undefined; layer = layer.backing) {
    if (offset >= layer.size) return { kind: 'zero' };
    const cluster = layer.cluster(Math.floor(offset / layer.clusterSize));
    if (cluster === 'zero') return { kind: 'zero' };
    if (cluster !== 'unallocated') return { kind: 'data', layer, host: cluster + (offset % layer.clusterSize) };
  }
  return { kind: 'zero' };
}

/**
 * The first `length` bytes of `scratch` set to what `content` reads as. Zero content is the
 * shared `zeros`, read-only. Comparisons read granule by granule into two scratch buffers
 * instead of allocating (and zero-filling) one per read.
 */
function readContent(content: Content, length: number, scratch: Buffer, zeros: Buffer): Buffer {
  if (content.kind === 'zero') return zeros;
  content.layer.readHost(content.host, length, scratch);
  return scratch;
}

/** Offset of the first 512-byte sector of [0, length) in which `a` and `b` differ; -1 if none. */
function firstDifferentSector(a: Buffer, b: Buffer, length: number): number {
  if (a === b || a.compare(b, 0, length, 0, length) === 0) return -1;
  for (let at = 0; at < length; at += SECTOR) {
    const end = Math.min(at + SECTOR, length);
    if (a.compare(b, at, end, at, end) !== 0) return at;
  }
  return -1;
}

// QEMU's image locks (block/file-posix.c): a user of an image locks byte 100 + bit for each
// permission it holds and byte 200 + bit for each one it does not share. A reader like
// `qemu-img compare` wants consistent reads (bit 0) and shares neither writes (bit 1) nor
// resizes (bit 3), so someone holding byte 101 or 103, or refusing to share byte 200, stops it.
const BLOCKING_LOCK_BYTES: ReadonlyArray<[number, string]> = [
  [101, 'holds it open for writing'],
  [103, 'may resize it'],
  [200, 'does not share reading it'],
];

/** Why `files` may not be read now (another process's QEMU lock), or undefined. */
export function lockConflict(files: ReadonlyArray<{ file: string; fd: number }>, table?: string): string | undefined {
  let locks: string;
  try {
    locks = table ?? readFileSync('/proc/locks', 'latin1');
  } catch (error) {
    return `the kernel's lock table cannot be read (${String(error)})`;
  }
  const byKey = new Map<string, string>();
  for (const { file, fd } of files) {
    const { dev, ino } = fstatSync(fd, { bigint: true });
    // /proc/locks names a file major:minor:inode, the device numbers in hex (Linux's dev_t split).
    const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & 0xfffff000n);
    const minor = (dev & 0xffn) | ((dev >> 12n) & 0xffffff00n);
    byKey.set(`${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${ino}`, file);
  }
  const held: Array<{ file: string; from: number; to: number }> = [];
  for (const line of locks.split('\n')) {
    // "3: OFDLCK ADVISORY READ -1 fd:01:1234 100 101"; lines with "->" are waiters, not holders.
    const f = line.trim().split(/\s+/);
    if (f.length < 8 || f[1] === '->' || (f[1] !== 'OFDLCK' && f[1] !== 'POSIX')) continue;
    const file = byKey.get(f[5] ?? '');
    // This process takes no locks, so every lock on these files is another process's.
    if (file !== undefined) held.push({ file, from: Number(f[6]), to: f[7] === 'EOF' ? Infinity : Number(f[7]) });
  }
  for (const [byte, meaning] of BLOCKING_LOCK_BYTES) {
    const lock = held.find((l) => l.from <= byte && byte <= l.to);
    if (lock !== undefined) return `${lock.file}: another process ${meaning} (QEMU's lock on byte ${byte})`;
  }
  return undefined;
}

export interface ReaderCall {
  signal?: AbortSignal;
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

async function withChains<T>(files: readonly string[], call: ReaderCall, fn: (chains: Layer[]) => Promise<T>): Promise<T> {
  const chains: Layer[] = [];
  try {
    for (const file of files) chains.push(new Layer(resolve(file), 0, new Set()));
    const open = chains.flatMap((c) => c.files());
    const before = lockConflict(open);
    if (before !== undefined) throw new Qcow2ReaderError(files.join(' and '), before);
    const result = await fn(chains);
    // A writer that came meanwhile may have changed what was read.
    const after = lockConflict(open);
    if (after !== undefined) throw new Qcow2ReaderError(files.join(' and '), `${after}, since it was read`);
    call.signal?.throwIfAborted();
    return result;
  } finally {
    for (const chain of chains) chain.close();
  }
}

/** The verdict and first line of `qemu-img compare -f qcow2 -F qcow2 a b` (without `-s`). */
export interface ReaderVerdict {
  identical: boolean;
  message: string;
}

/**
 * Compares the guest-visible content of two qcow2 chains with `qemu-img compare`'s verdict
 * and first line: the first 512-byte sector that differs (`Content mismatch at offset N!`);
 * images of different sizes compare over the common part, then the larger one's tail must read
 * as zeros, after qemu-img's `Warning: Image size mismatch!`.
 */
export async function compareQcow2(a: string, b: string, call: ReaderCall = {}): Promise<ReaderVerdict> {
  return withChains([a, b], call, async ([x, y]) => {
    const first = x as Layer;
    const second = y as Layer;
    const step = granule(first, second);
    const common = Math.min(first.size, second.size);
    const larger = first.size >= second.size ? first : second;
    const largest = Math.max(step, granule(larger));
    const zeros = Buffer.alloc(largest);
    const scratchA = Buffer.allocUnsafe(largest);
    const scratchB = Buffer.allocUnsafe(largest);
    let sinceTurn = 0;
    const turn = async (bytes: number): Promise<void> => {
      sinceTurn += bytes;
      if (sinceTurn >= BYTES_PER_TURN) {
        sinceTurn = 0;
        await nextTurn();
        call.signal?.throwIfAborted();
      }
    };
    for (let offset = 0; offset < common; offset += step) {
      const length = Math.min(step, common - offset);
      const ca = contentAt(first, offset);
      const cb = contentAt(second, offset);
      if (ca.kind === 'zero' && cb.kind === 'zero') continue;
      const at = firstDifferentSector(readContent(ca, length, scratchA, zeros), readContent(cb, length, scratchB, zeros), length);
      if (at >= 0) return { identical: false, message: `Content mismatch at offset ${offset + at}!` };
      await turn(length);
    }
    if (first.size === second.size) return { identical: true, message: 'Images are identical.' };
    const largerStep = granule(larger);
    for (let offset = common; offset < larger.size; ) {
      // Up to the next boundary of the larger chain's granule, then granule by granule.
      const length = Math.min(largerStep - (offset % largerStep), larger.size - offset);
      const content = contentAt(larger, offset);
      const at = firstDifferentSector(readContent(content, length, scratchA, zeros), zeros, length);
      if (at >= 0) return { identical: false, message: 'Warning: Image size mismatch!' };
      offset += length;
      await turn(length);
    }
    return { identical: true, message: 'Warning: Image size mismatch!' };
  });
}

/** A guest range whose content is data stored in the image at `depth` of the chain (0: the image itself). */
export interface ReaderExtent {
  start: number;
  length: number;
  depth: number;
}

/**
 * The `data: true` extents of `qemu-img map --output=json` for a qcow2 chain, merged where
 * contiguous at the same depth: the guest ranges read from a data cluster, and the depth of the
 * image holding it. Zero clusters and ranges unallocated in the whole chain are not data.
 */
export async function mapQcow2Data(file: string, call: ReaderCall = {}): Promise<ReaderExtent[]> {
  return withChains([file], call, async ([chain]) => {
    const top = chain as Layer;
    const step = granule(top);
    const extents: ReaderExtent[] = [];
    for (let offset = 0, n = 0; offset < top.size; offset += step, n++) {
      const length = Math.min(step, top.size - offset);
      const content = contentAt(top, offset);
      if (content.kind === 'data') {
        const last = extents[extents.length - 1];
        if (last !== undefined && last.depth === content.layer.depth && last.start + last.length === offset) last.length += length;
        else extents.push({ start: offset, length, depth: content.layer.depth });
      }
      if (n % 65536 === 65535) {
        await nextTurn();
        call.signal?.throwIfAborted();
      }
    }
    return extents;
  });
}
