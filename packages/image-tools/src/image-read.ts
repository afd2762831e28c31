// Reads the guest-visible content of qcow2 (v2 and v3) and raw images, with their backing
// chains, without QEMU. It exists for `compareImages`: a conformance run compares dozens of
// small images, and each `qemu-img compare` costs a process start (about 30 ms of CPU, most of
// it loading shared libraries) for what is a few hundred kilobytes of reading.
//
// It reads only what it fully understands, the layouts qemu-img and QEMU's block jobs write by
// default. Anything else (encryption, compressed clusters, extended L2 entries, an external data
// file, a corrupt flag, a backing file without a recorded format, a protocol prefix) throws
// `UnreadableImage`, and the caller hands the whole job to qemu-img instead.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';

// Reads are synchronous: the images compared are small and in the page cache, where a read
// costs a copy, while each asynchronous read costs a thread-pool round trip that is many times
// that. The comparison yields to the event loop between batches of reads (see
// image-compare.ts), so a large image does not stall the process.

const QCOW2_MAGIC = 0x514649fb;
const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
/** Incompatible features this reader handles: only the dirty bit (refcounts may lag; data is fine). */
const READABLE_INCOMPATIBLE = 1n;
const MAX_CHAIN = 32;
/** Metadata kept in memory per image; an image with more L2 tables than this goes to qemu-img. */
const MAX_L2_BYTES = 64 * 1024 * 1024;

/** This image cannot be read here; the reason says what was met. */
export class UnreadableImage extends Error {
  constructor(file: string, reason: string) {
    super(`${file}: ${reason}`);
    this.name = 'UnreadableImage';
  }
}

/** What a range of the guest disk holds, as far as this image chain says. */
export type RangeContent = { kind: 'zero' } | { kind: 'data'; layer: ImageLayer; hostOffset: number };

const ZERO: RangeContent = { kind: 'zero' };

export interface ImageLayer {
  readonly file: string;
  /** 'qcow2' or 'raw'. */
  readonly format: 'qcow2' | 'raw';
  /** The next image of the chain, if any. */
  readonly backing: ImageLayer | undefined;
  /** Guest size in bytes. */
  readonly size: number;
  /** The smallest cluster in this layer and its backing chain: ranges this big never straddle a cluster. */
  readonly chainGranule: number;
  /**
   * The content of `[offset, offset + length)`, which must lie within one `chainGranule` and
   * within `size`; unallocated ranges are resolved through the backing chain.
   */
  content(offset: number, length: number): RangeContent;
  read(hostOffset: number, into: Buffer, at: number, length: number): void;
  /** The open files of this layer and its backing chain, top first (for the lock check). */
  openFiles(): Array<{ file: string; fd: number }>;
  close(): void;
}

function readExactly(fd: number, position: number, into: Buffer, at: number, length: number): void {
  let done = 0;
  while (done < length) {
    const bytesRead = readSync(fd, into, at + done, length - done, position + done);
    if (bytesRead === 0) {
      // Past the end of the file reads as zeros, as in QEMU's file driver.
      into.fill(0, at + done, at + length);
      return;
    }
    done += bytesRead;
  }
}

/** A 64-bit big-endian table entry as a number (host offsets stay far below 2^53). */
function entryHigh(table: Buffer, index: number): number {
  return table.readUInt32BE(index * 8);
}

function entryLow(table: Buffer, index: number): number {
  return table.readUInt32BE(index * 8 + 4);
}

/** Bits 9-55 of an L1 or L2 entry: a host offset. */
function entryOffset(high: number, low: number): number {
  return (high & 0x00ffffff) * 0x1_0000_0000 + ((low & 0xfffffe00) >>> 0);
}

class RawLayer implements ImageLayer {
  readonly chainGranule = 64 * 1024;
  readonly format = 'raw';
  readonly backing = undefined;
  constructor(readonly file: string, readonly size: number, private readonly fd: number) {}

  content(offset: number): RangeContent {
    return { kind: 'data', layer: this, hostOffset: offset };
  }

  read(hostOffset: number, into: Buffer, at: number, length: number): void {
    readExactly(this.fd, hostOffset, into, at, length);
  }

  openFiles(): Array<{ file: string; fd: number }> {
    return [{ file: this.file, fd: this.fd }];
  }

  close(): void {
    closeSync(this.fd);
  }
}

class Qcow2Layer implements ImageLayer {
  readonly chainGranule: number;
  readonly format = 'qcow2';
  readonly #entriesPerL2: number;

  constructor(
    readonly file: string,
    readonly size: number,
    private readonly clusterSize: number,
    private readonly fd: number,
    /** The L2 table of each L1 entry, undefined where the L1 entry is empty. */
    private readonly l2Tables: ReadonlyArray<Buffer | undefined>,
    private readonly zeroFlag: boolean,
    readonly backing: ImageLayer | undefined,
  ) {
    this.#entriesPerL2 = clusterSize / 8;
    this.chainGranule = Math.min(clusterSize, backing?.chainGranule ?? clusterSize);
  }

  content(offset: number, length: number): RangeContent {
    const cluster = Math.floor(offset / this.clusterSize);
    const l2 = this.l2Tables[Math.floor(cluster / this.#entriesPerL2)];
    if (l2 !== undefined) {
      const index = cluster % this.#entriesPerL2;
      const high = entryHigh(l2, index);
      const low = entryLow(l2, index);
      // Bit 62: compressed cluster.
      if ((high & 0x40000000) !== 0) throw new UnreadableImage(this.file, 'it has compressed clusters');
      // Bit 0 (version 3): the cluster reads as zeros, allocated or not.
      if (this.zeroFlag && (low & 1) !== 0) return ZERO;
      const host = entryOffset(high, low);
      if (host !== 0) return { kind: 'data', layer: this, hostOffset: host + (offset % this.clusterSize) };
    }
    // Unallocated here: the backing file shows through, and past its end the guest reads zeros.
    if (this.backing === undefined || offset >= this.backing.size) return ZERO;
    if (offset + length > this.backing.size) throw new UnreadableImage(this.file, 'its backing file ends inside a cluster');
    return this.backing.content(offset, length);
  }

  read(hostOffset: number, into: Buffer, at: number, length: number): void {
    readExactly(this.fd, hostOffset, into, at, length);
  }

  openFiles(): Array<{ file: string; fd: number }> {
    return [{ file: this.file, fd: this.fd }, ...(this.backing?.openFiles() ?? [])];
  }

  close(): void {
    try {
      closeSync(this.fd);
    } finally {
      this.backing?.close();
    }
  }
}

/**
 * Opens `file` as `format` (or, when `format` is undefined, as qcow2 if it starts with qcow2's
 * magic, else it is unreadable here: qemu-img would probe further). The backing chain is opened
 * too. Close the result when done.
 */
export function openImage(file: string, format: string | undefined, depth = 0): ImageLayer {
  if (depth > MAX_CHAIN) throw new UnreadableImage(file, `its backing chain is longer than ${MAX_CHAIN}`);
  if (format !== undefined && format !== 'qcow2' && format !== 'raw') throw new UnreadableImage(file, `format ${format} is not read in-process`);
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (error) {
    throw new UnreadableImage(file, `cannot open it (${String(error)})`);
  }
  try {
    if (format === 'raw') return new RawLayer(file, fstatSync(fd).size, fd);
    const head = Buffer.alloc(4);
    readExactly(fd, 0, head, 0, 4);
    if (head.readUInt32BE(0) !== QCOW2_MAGIC) {
      throw new UnreadableImage(file, format === undefined ? 'its format would have to be probed' : 'it is not a qcow2 image');
    }
    return openQcow2(file, fd, depth);
  } catch (error) {
    closeSync(fd);
    throw error;
  }
}

function openQcow2(file: string, fd: number, depth: number): ImageLayer {
  const header = Buffer.alloc(112);
  readExactly(fd, 0, header, 0, header.length);
  const version = header.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw new UnreadableImage(file, `qcow2 version ${version}`);
  const backingFileOffset = Number(header.readBigUInt64BE(8));
  const backingFileSize = header.readUInt32BE(16);
  const clusterBits = header.readUInt32BE(20);
  if (clusterBits < 9 || clusterBits > 21) throw new UnreadableImage(file, `cluster_bits ${clusterBits}`);
  const size = Number(header.readBigUInt64BE(24));
  if (!Number.isSafeInteger(size)) throw new UnreadableImage(file, 'its size is too large');
  if (header.readUInt32BE(32) !== 0) throw new UnreadableImage(file, 'it is encrypted');
  const l1Size = header.readUInt32BE(36);
  const l1Offset = Number(header.readBigUInt64BE(40));
  let headerLength = 72;
  if (version === 3) {
    const incompatible = header.readBigUInt64BE(72);
    if ((incompatible & ~READABLE_INCOMPATIBLE) !== 0n) {
      throw new UnreadableImage(file, `it has incompatible features 0x${incompatible.toString(16)}`);
    }
    headerLength = header.readUInt32BE(100);
    if (headerLength < 104 || headerLength > 2 ** clusterBits) throw new UnreadableImage(file, `header_length ${headerLength}`);
  }
  const clusterSize = 2 ** clusterBits;
  const entriesPerL2 = clusterSize / 8;
  const expectedL1 = Math.ceil(size / clusterSize / entriesPerL2);
  if (l1Size < expectedL1 || l1Size > (32 * 1024 * 1024) / 8) throw new UnreadableImage(file, `l1_size ${l1Size}`);

  // Header extensions (they end within the first cluster): only the backing format matters here.
  let backingFormat: string | undefined;
  const extensions = Buffer.allocUnsafe(clusterSize - headerLength);
  readExactly(fd, headerLength, extensions, 0, extensions.length);
  for (let at = 0; at + 8 <= extensions.length; ) {
    const type = extensions.readUInt32BE(at);
    const length = extensions.readUInt32BE(at + 4);
    if (type === EXT_END) break;
    if (at + 8 + length > extensions.length) throw new UnreadableImage(file, 'a header extension runs past the first cluster');
    if (type === EXT_BACKING_FORMAT) backingFormat = extensions.toString('latin1', at + 8, at + 8 + length);
    at += 8 + ((length + 7) & ~7);
  }

  const l1 = Buffer.alloc(l1Size * 8);
  readExactly(fd, l1Offset, l1, 0, l1.length);
  const l2Tables: Array<Buffer | undefined> = [];
  let l2Bytes = 0;
  for (let i = 0; i < l1Size; i++) {
    const l2Offset = entryOffset(entryHigh(l1, i), entryLow(l1, i));
    if (l2Offset === 0) {
      l2Tables.push(undefined);
      continue;
    }
    l2Bytes += clusterSize;
    if (l2Bytes > MAX_L2_BYTES) throw new UnreadableImage(file, `its L2 tables take more than ${MAX_L2_BYTES} bytes`);
    const table = Buffer.allocUnsafe(clusterSize);
    readExactly(fd, l2Offset, table, 0, clusterSize);
    l2Tables.push(table);
  }

  let backing: ImageLayer | undefined;
  if (backingFileOffset !== 0 && backingFileSize !== 0) {
    if (backingFileSize > 1023) throw new UnreadableImage(file, 'its backing file name is too long');
    const nameBytes = Buffer.alloc(backingFileSize);
    readExactly(fd, backingFileOffset, nameBytes, 0, backingFileSize);
    const name = nameBytes.toString('utf8');
    // A protocol prefix ("nbd:", "json:") or a name QEMU would parse as options is QEMU's to read.
    if (/^[A-Za-z0-9+.-]+:/.test(name)) throw new UnreadableImage(file, `its backing file ${name} names a protocol`);
    if (backingFormat === undefined) throw new UnreadableImage(file, 'its backing file has no recorded format');
    backing = openImage(isAbsolute(name) ? name : resolve(dirname(file), name), backingFormat, depth + 1);
  }
  return new Qcow2Layer(file, size, clusterSize, fd, l2Tables, version === 3, backing);
}
