// A streaming qcow2 writer: clusters go to the file as they arrive, and the metadata that maps
// them (L2 tables, L1 table, refcounts) is written once, by close(). Pull-mode backups read a
// drive's extents over NBD and must leave the same images push mode leaves (QEMU's
// drive-backup targets: qcow2 v3 files whose backing file is the previous backup), so that
// `qemu-img check`, `compare`, `commit` and the chain's own verification treat both alike.
//
// File layout, in the order it is written:
//   cluster 0            header, header extensions, backing file name (at create)
//   clusters 1 .. D-1    data, each guest cluster's host cluster allocated when first written
//   then                 L2 tables, L1 table, refcount blocks, refcount table (at close)
// and last the first 112 bytes of the header again, with the tables' offsets (at close).
//
// Crash safety: until close() has written and flushed everything else, the header carries an
// incompatible feature bit QEMU does not know (bit 63, named in the feature name table as
// "qmpkit: unfinished image"). Every QEMU refuses to open such an image, read-only or not,
// probed or with -f qcow2 ("Unsupported qcow2 feature(s): ..."), so an image whose writer was
// killed or never closed cannot pass `qemu-img check`, cannot be read as a backup, and cannot
// serve as the backing file of the next one. That beats the alternatives: the dirty bit makes
// QEMU repair the refcounts and open the image, torn or not, and a zeroed header makes the
// file probe as a raw image whose data QEMU would happily read. The final header write only
// touches bytes 0..111, within the first 512-byte sector, so it cannot be torn on any device.
import { open, rm } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';

import { stringArgument } from './arguments.js';
import {
  ImageFileError,
  ImageFileExistsError,
  ImageToolsAbortError,
  ImageToolsArgumentError,
  Qcow2WriteRangeError,
  Qcow2WriterStateError,
  UnsupportedQcow2LayoutError,
} from './errors.js';
import type { ImageFileOperation } from './errors.js';

export interface Qcow2WriterOptions {
  /** Virtual size in bytes, a multiple of 512 (as qcow2 requires). */
  size: number;
  /** Cluster size: a power of two from 512 bytes to 2 MiB. Default 64 KiB. */
  clusterSize?: number;
  /**
   * Backing file name, written into the header as given (a relative name resolves against the
   * image's directory when QEMU opens it). It is not opened here. Clusters never written read
   * from it.
   */
  backingFile?: string;
  /** Format of the backing file, recorded in a header extension. Default `'qcow2'` with a backing file. */
  backingFormat?: 'qcow2' | 'raw';
  /** Permission bits of the new file, set exactly (whatever the umask). Default 0o600. */
  fileMode?: number;
  /**
   * Aborts the writer: the call in progress ends, later and queued calls reject with
   * `ImageToolsAbortError`, and the file is removed, as by `abort()`.
   */
  signal?: AbortSignal;
}

/** What `close()` wrote. */
export interface Qcow2WriteSummary {
  path: string;
  /** Virtual size. */
  size: number;
  clusterSize: number;
  /** Guest clusters mapped to data in this image. */
  dataClusters: number;
  /** Guest clusters with the zero flag (they read as zeros, whatever the backing file holds). */
  zeroClusters: number;
  /** Guest bytes the data clusters hold (a final partial cluster counts its part). */
  dataBytes: number;
  /** Length of the image file. */
  fileSize: number;
}

const QCOW2_MAGIC = 0x514649fb;
const HEADER_LENGTH = 112;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_TABLE = 0x6803f857;
const FEATURE_ENTRY_BYTES = 48;
/** 16-bit refcounts, qemu-img's default. */
const REFCOUNT_ORDER = 4;
/** A refcount of 1, big-endian, 16 bits. */
const REFCOUNT_ONE = Buffer.from([0, 1]);
const MIN_CLUSTER_SIZE = 512;
const MAX_CLUSTER_SIZE = 2 * 1024 * 1024;
const DEFAULT_CLUSTER_SIZE = 65536;
/** QEMU refuses L1 tables over 32 MiB. */
const MAX_L1_ENTRIES = (32 * 1024 * 1024) / 8;
/** QEMU reads at most this many bytes of backing file name. */
const MAX_BACKING_FILE_BYTES = 1023;
/** Incompatible feature bit 63: unknown to QEMU, so it refuses the image (see the top of the file). */
const UNFINISHED_FEATURE_BIT = 63;
const UNFINISHED_FEATURE_NAME = 'qmpkit: unfinished image';
/** L1 and L2 entries: bit 63 says the refcount is exactly 1 (QEMU's check insists on it in v3). */
const OFLAG_COPIED_HIGH = 0x80000000;
/** L2 entries, version 3: bit 0, the cluster reads as zeros. */
const OFLAG_ZERO_LOW = 1;
const TWO_32 = 0x1_0000_0000;
/** Buffers per writev call, well under any system's IOV_MAX. */
const WRITEV_BATCH = 64;

type WriterState = 'open' | 'closing' | 'closed' | 'failed' | 'aborted';

interface Qcow2Layout {
  size: number;
  clusterSize: number;
  clusterBits: number;
  l1Entries: number;
  backingFile: Buffer | undefined;
  backingFormat: Buffer | undefined;
  featureTable: boolean;
}

function pad8(n: number): number {
  return (n + 7) & ~7;
}

function checkLayout(path: string, options: Qcow2WriterOptions): Qcow2Layout {
  const { size } = options;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new ImageToolsArgumentError('size', size, 'must be a non-negative integer number of bytes');
  }
  if (size % 512 !== 0) throw new ImageToolsArgumentError('size', size, 'a qcow2 image size must be a multiple of 512 bytes');
  const clusterSize = options.clusterSize ?? DEFAULT_CLUSTER_SIZE;
  if (
    typeof clusterSize !== 'number' ||
    !Number.isInteger(clusterSize) ||
    clusterSize < MIN_CLUSTER_SIZE ||
    clusterSize > MAX_CLUSTER_SIZE ||
    (clusterSize & (clusterSize - 1)) !== 0
  ) {
    throw new ImageToolsArgumentError('clusterSize', clusterSize, 'must be a power of two from 512 bytes to 2 MiB');
  }
  const clusterBits = Math.log2(clusterSize);
  const backingFile = options.backingFile === undefined ? undefined : Buffer.from(stringArgument(options.backingFile, 'backingFile'));
  if (options.backingFormat !== undefined) {
    if (backingFile === undefined) throw new ImageToolsArgumentError('backingFormat', options.backingFormat, 'given without a backing file');
    if (options.backingFormat !== 'qcow2' && options.backingFormat !== 'raw') {
      throw new ImageToolsArgumentError('backingFormat', options.backingFormat, "must be 'qcow2' or 'raw'");
    }
  }
  const backingFormat = backingFile === undefined ? undefined : Buffer.from(options.backingFormat ?? 'qcow2');
  if (backingFile !== undefined && backingFile.length > MAX_BACKING_FILE_BYTES) {
    throw new UnsupportedQcow2LayoutError(path, 'backing-file-name-too-long', `${backingFile.length} bytes, QEMU reads at most ${MAX_BACKING_FILE_BYTES}`);
  }
  const fileMode = options.fileMode;
  if (fileMode !== undefined && (typeof fileMode !== 'number' || !Number.isInteger(fileMode) || fileMode < 0 || fileMode > 0o777)) {
    throw new ImageToolsArgumentError('fileMode', fileMode, 'must be permission bits, 0 to 0o777');
  }
  const signal = options.signal;
  // Duck-typed: an AbortSignal from another realm fails instanceof.
  if (signal !== undefined && (typeof signal !== 'object' || signal === null || typeof signal.aborted !== 'boolean' || typeof signal.addEventListener !== 'function')) {
    throw new ImageToolsArgumentError('signal', signal, 'must be an AbortSignal');
  }

  const entriesPerL2 = clusterSize / 8;
  const l1Entries = Math.ceil(size / clusterSize / entriesPerL2);
  if (l1Entries > MAX_L1_ENTRIES) {
    throw new UnsupportedQcow2LayoutError(path, 'l1-table-too-large', `${l1Entries} L1 entries, QEMU allows ${MAX_L1_ENTRIES}`);
  }
  const fixedBytes = HEADER_LENGTH + (backingFormat === undefined ? 0 : 8 + pad8(backingFormat.length)) + 8 + (backingFile?.length ?? 0);
  if (fixedBytes > clusterSize) {
    throw new UnsupportedQcow2LayoutError(path, 'header-overflow', `the header needs ${fixedBytes} bytes of a ${clusterSize}-byte cluster`);
  }
  // The feature name table only makes QEMU's refusal readable; where it does not fit (512-byte
  // clusters with a long backing file name) the bit alone still makes QEMU refuse the image.
  const featureTable = fixedBytes + 8 + FEATURE_ENTRY_BYTES <= clusterSize;
  return { size, clusterSize, clusterBits, l1Entries, backingFile, backingFormat, featureTable };
}

interface HeaderTables {
  l1Offset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
}

/** Bytes 0..111 of the header; without `tables`, the unfinished state (bit 63 set, no tables). */
function headerFields(layout: Qcow2Layout, backingFileOffset: number, tables: HeaderTables | undefined): Buffer {
  const buf = Buffer.alloc(HEADER_LENGTH);
  buf.writeUInt32BE(QCOW2_MAGIC, 0);
  buf.writeUInt32BE(3, 4);
  if (layout.backingFile !== undefined) {
    buf.writeBigUInt64BE(BigInt(backingFileOffset), 8);
    buf.writeUInt32BE(layout.backingFile.length, 16);
  }
  buf.writeUInt32BE(layout.clusterBits, 20);
  buf.writeBigUInt64BE(BigInt(layout.size), 24);
  // 32: no encryption
  buf.writeUInt32BE(layout.l1Entries, 36);
  buf.writeBigUInt64BE(BigInt(tables?.l1Offset ?? 0), 40);
  buf.writeBigUInt64BE(BigInt(tables?.refcountTableOffset ?? 0), 48);
  buf.writeUInt32BE(tables?.refcountTableClusters ?? 0, 56);
  // 60..71: no snapshots
  buf.writeBigUInt64BE(tables === undefined ? 1n << BigInt(UNFINISHED_FEATURE_BIT) : 0n, 72);
  // 80..95: no compatible or autoclear features
  buf.writeUInt32BE(REFCOUNT_ORDER, 96);
  buf.writeUInt32BE(HEADER_LENGTH, 100);
  // 104: compression type zlib (0), then padding
  return buf;
}

/** Cluster 0 as written at create: unfinished header, extensions, backing file name. */
function initialHeaderCluster(layout: Qcow2Layout): Buffer {
  const buf = Buffer.alloc(layout.clusterSize);
  let at = HEADER_LENGTH;
  if (layout.backingFormat !== undefined) {
    buf.writeUInt32BE(EXT_BACKING_FORMAT, at);
    buf.writeUInt32BE(layout.backingFormat.length, at + 4);
    layout.backingFormat.copy(buf, at + 8);
    at += 8 + pad8(layout.backingFormat.length);
  }
  if (layout.featureTable) {
    buf.writeUInt32BE(EXT_FEATURE_TABLE, at);
    buf.writeUInt32BE(FEATURE_ENTRY_BYTES, at + 4);
    buf.writeUInt8(0, at + 8); // type: incompatible
    buf.writeUInt8(UNFINISHED_FEATURE_BIT, at + 9);
    buf.write(UNFINISHED_FEATURE_NAME, at + 10, 'latin1');
    at += 8 + FEATURE_ENTRY_BYTES;
  }
  at += 8; // end of extensions (zeros)
  const backingFileOffset = at;
  layout.backingFile?.copy(buf, at);
  headerFields(layout, backingFileOffset, undefined).copy(buf, 0);
  return buf;
}

function backingFileOffsetOf(header: Buffer): number {
  return Number(header.readBigUInt64BE(8));
}

/** Host offset of an L2 entry (bits 9..55), 0 when unallocated. */
function entryHost(table: Buffer, index: number): number {
  const high = table.readUInt32BE(index * 8);
  const low = table.readUInt32BE(index * 8 + 4);
  return (high & 0x00ffffff) * TWO_32 + ((low & 0xfffffe00) >>> 0);
}

function setEntry(table: Buffer, index: number, host: number, zero: boolean): void {
  const high = host === 0 ? 0 : OFLAG_COPIED_HIGH | Math.floor(host / TWO_32);
  const low = (host % TWO_32) | (zero ? OFLAG_ZERO_LOW : 0);
  table.writeUInt32BE(high >>> 0, index * 8);
  table.writeUInt32BE(low >>> 0, index * 8 + 4);
}

function isZeroEntry(table: Buffer, index: number): boolean {
  return (table.readUInt32BE(index * 8 + 4) & OFLAG_ZERO_LOW) !== 0;
}

function entryUsed(table: Buffer, index: number): boolean {
  return table.readUInt32BE(index * 8) !== 0 || table.readUInt32BE(index * 8 + 4) !== 0;
}

async function writeFully(handle: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, position + done);
    if (bytesWritten <= 0) throw Object.assign(new Error('the file system accepted no bytes'), { code: 'EIO' });
    done += bytesWritten;
  }
}

async function writevFully(handle: FileHandle, buffers: readonly Buffer[], position: number): Promise<void> {
  for (let first = 0; first < buffers.length; first += WRITEV_BATCH) {
    const batch = buffers.slice(first, first + WRITEV_BATCH);
    const total = batch.reduce((sum, b) => sum + b.length, 0);
    const { bytesWritten } = await handle.writev(batch, position);
    if (bytesWritten < total) {
      // A short write: finish it buffer by buffer.
      let skip = bytesWritten;
      let at = position + bytesWritten;
      for (const b of batch) {
        if (skip >= b.length) {
          skip -= b.length;
          continue;
        }
        await writeFully(handle, b.subarray(skip), at);
        at += b.length - skip;
        skip = 0;
      }
    }
    position += total;
  }
}

/**
 * Writes a qcow2 (version 3, compat 1.1, 16-bit refcounts) image from clusters given in any
 * order, without QEMU: what a pull-mode backup reads over NBD goes straight into an image that
 * QEMU, `qemu-img` and a backup chain take exactly like the target of a push-mode backup job.
 *
 * - `write(offset, data)` puts whole clusters into the file as they come (one system call for a
 *   contiguous run, so a 2 MiB write is one `pwrite`); a cluster written again is overwritten in
 *   place. `writeZeroes(offset, length)` marks clusters with qcow2's zero flag: they read as
 *   zeros even over a backing file, and no data is written. A cluster holding data keeps its
 *   space when zeroed (qcow2's "preallocated zero cluster") and gets it back if written again.
 * - Offsets are multiples of the cluster size; lengths are too, except a range ending exactly
 *   at the image's size (its last cluster may be partial).
 * - Calls may overlap: they run one at a time, in the order they were made, and settle in that
 *   order. The data of a `write` must not change until its promise settles.
 * - `close()` writes the L2 tables, L1 table and refcounts, flushes, and only then makes the
 *   header valid; before that QEMU refuses to open the file (see the top of this file).
 * - Failures reject with named errors and never leave a file QEMU takes for a good image:
 *   `Qcow2WriteRangeError` / `ImageToolsArgumentError` (the call is refused, the writer stays
 *   usable), `ImageFileError` (the file system failed: the writer is failed), `Qcow2WriterStateError`
 *   (a call after close, abort or a failure), `ImageToolsAbortError` (the signal fired).
 *   `abort()` removes the file on any of those paths.
 *
 * Memory: one L2 table (one cluster) per `clusterSize²/8` bytes of guest space touched, e.g.
 * 128 KiB for a fully written 1 GiB image of 64 KiB clusters; refcounts are built at close.
 */
export class Qcow2ImageWriter {
  readonly path: string;
  readonly size: number;
  readonly clusterSize: number;

  readonly #layout: Qcow2Layout;
  readonly #entriesPerL2: number;
  readonly #backingFileOffset: number;
  #handle: FileHandle | undefined;
  /** One L2 table per L1 entry, allocated when a cluster it maps is first written or zeroed. */
  readonly #l2: Array<Buffer | undefined>;
  /** The next free host cluster: data clusters are appended after the header cluster. */
  #nextHostCluster = 1;
  #state: WriterState = 'open';
  #failure: unknown;
  /** Set when the signal fired: refusals are then `ImageToolsAbortError`. */
  #signalled = false;
  #signalReason: unknown;
  #signal: AbortSignal | undefined;
  readonly #onAbort = (): void => {
    this.#signalled = true;
    this.#signalReason = this.#signal?.reason;
    // A failure to remove the file is kept by abort()'s promise, for a caller who asks.
    this.abort().catch(() => undefined);
  };
  /** Every call is chained here, so calls run and settle in the order they were made. */
  #tail: Promise<unknown> = Promise.resolve();
  #closing: Promise<Qcow2WriteSummary> | undefined;
  #aborting: Promise<void> | undefined;

  private constructor(path: string, layout: Qcow2Layout, handle: FileHandle, backingFileOffset: number) {
    this.path = path;
    this.size = layout.size;
    this.clusterSize = layout.clusterSize;
    this.#layout = layout;
    this.#entriesPerL2 = layout.clusterSize / 8;
    this.#handle = handle;
    this.#backingFileOffset = backingFileOffset;
    this.#l2 = new Array<Buffer | undefined>(layout.l1Entries).fill(undefined);
  }

  /**
   * Create the image file at `path` (exclusively: an existing file rejects with
   * `ImageFileExistsError` and is left alone) with the mode `fileMode`, and write its header in
   * the unfinished state. Bad options reject with `ImageToolsArgumentError`; layouts QEMU
   * would not read (an L1 table over 32 MiB, a backing file name that does not fit the first
   * cluster) with `UnsupportedQcow2LayoutError`, before anything is created.
   */
  static async create(path: string, options: Qcow2WriterOptions): Promise<Qcow2ImageWriter> {
    const file = stringArgument(path, 'path');
    if (typeof options !== 'object' || options === null) throw new ImageToolsArgumentError('options', options, 'must be an object');
    const layout = checkLayout(file, options);
    const signal = options.signal;
    if (signal?.aborted === true) throw new ImageToolsAbortError('Qcow2ImageWriter.create', 'abort', { cause: signal.reason });

    let handle: FileHandle;
    try {
      handle = await open(file, 'wx', 0o600);
    } catch (error) {
      if ((error as { code?: unknown }).code === 'EEXIST') throw new ImageFileExistsError(file, error);
      throw new ImageFileError(file, 'open', error);
    }
    let step: ImageFileOperation = 'chmod';
    try {
      // open() only takes bits away (the umask); chmod sets exactly the mode asked for.
      await handle.chmod(options.fileMode ?? 0o600);
      step = 'write';
      const header = initialHeaderCluster(layout);
      await writeFully(handle, header, 0);
      // The signal may have fired while the file was being written.
      if (aborted(signal)) throw new ImageToolsAbortError('Qcow2ImageWriter.create', 'abort', { cause: signal?.reason });
      const writer = new Qcow2ImageWriter(file, layout, handle, backingFileOffsetOf(header));
      if (signal !== undefined) {
        writer.#signal = signal;
        signal.addEventListener('abort', writer.#onAbort, { once: true });
      }
      return writer;
    } catch (error) {
      await handle.close().catch(() => undefined);
      await rm(file, { force: true }).catch(() => undefined);
      if (ImageToolsAbortError.isInstance(error)) throw error;
      throw new ImageFileError(file, step, error);
    }
  }

  /**
   * Write `data` at guest `offset`: whole clusters (a final partial cluster only where the
   * range ends at the image's size). Resolves when the data is in the file (not yet flushed:
   * `close()` flushes).
   */
  write(offset: number, data: Uint8Array): Promise<void> {
    let refused: unknown;
    if (!(data instanceof Uint8Array)) refused = new ImageToolsArgumentError('data', data, 'must be a Uint8Array (or Buffer)');
    else refused = this.#checkRange(offset, data.length);
    return this.#enqueue('write', refused, () => this.#writeData(offset, data));
  }

  /** Give the clusters of `[offset, offset + length)` the zero flag; same range rules as `write`. */
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.#enqueue('writeZeroes', this.#checkRange(offset, length), async () => this.#markZero(offset, length));
  }

  /**
   * Write the L2 tables, L1 table and refcounts after the data, flush, then write the final
   * header and flush again: from then on the file is a valid image. Calling it again returns
   * the same promise. A failure leaves the file refused by QEMU; `abort()` removes it.
   */
  close(): Promise<Qcow2WriteSummary> {
    this.#closing ??= this.#enqueue('close', undefined, () => this.#finish());
    return this.#closing;
  }

  /**
   * Stop: calls still queued reject, the file is closed and removed. Idempotent (every call
   * returns the same promise), and safe after any failure. After a successful `close()` it
   * removes the finished image too, for a caller rolling back a backup that failed later.
   * Rejects with `ImageFileError` only when the file cannot be removed.
   */
  abort(): Promise<void> {
    this.#aborting ??= this.#abort();
    return this.#aborting;
  }

  async #abort(): Promise<void> {
    this.#state = 'aborted';
    this.#detachSignal();
    // The call in progress finishes its system call (which cannot be cancelled); every queued
    // call then sees the state and refuses, and only then is the file removed.
    await this.#tail;
    await this.#closeHandle();
    try {
      await rm(this.path, { force: true });
    } catch (error) {
      throw new ImageFileError(this.path, 'remove', error);
    }
  }

  #enqueue<T>(operation: string, refused: unknown, run: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(() => {
      const state = this.#refusal(operation);
      if (state !== undefined) throw state;
      if (refused !== undefined) throw refused;
      return run();
    });
    this.#tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /** The refusal of close() if abort() or the signal came while it was running. */
  #abortedRefusal(): Error | undefined {
    return this.#state === 'aborted' || this.#signalled ? this.#refusal('close') : undefined;
  }

  #refusal(operation: string): Error | undefined {
    if (this.#signalled) return new ImageToolsAbortError(`Qcow2ImageWriter.${operation}`, 'abort', { cause: this.#signalReason });
    switch (this.#state) {
      case 'open':
        return undefined;
      case 'closing':
      case 'closed':
        return new Qcow2WriterStateError(this.path, operation, 'closed');
      case 'aborted':
        return new Qcow2WriterStateError(this.path, operation, 'aborted');
      case 'failed':
        return new Qcow2WriterStateError(this.path, operation, 'failed', { cause: this.#failure });
    }
  }

  #checkRange(offset: unknown, length: unknown): Error | undefined {
    if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) {
      return new ImageToolsArgumentError('offset', offset, 'must be a non-negative integer');
    }
    if (typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0) {
      return new ImageToolsArgumentError('length', length, 'must be a non-negative integer');
    }
    const range = { offset, length, clusterSize: this.clusterSize, size: this.size };
    if (offset % this.clusterSize !== 0) return new Qcow2WriteRangeError('misaligned-offset', range);
    if (offset + length > this.size) return new Qcow2WriteRangeError('out-of-range', range);
    if (length % this.clusterSize !== 0 && offset + length !== this.size) return new Qcow2WriteRangeError('misaligned-length', range);
    return undefined;
  }

  #table(l1Index: number): Buffer {
    let table = this.#l2[l1Index];
    if (table === undefined) {
      table = Buffer.alloc(this.clusterSize);
      this.#l2[l1Index] = table;
    }
    return table;
  }

  async #writeData(offset: number, data: Uint8Array): Promise<void> {
    const handle = this.#openHandle();
    const cs = this.clusterSize;
    const first = offset / cs;
    const count = Math.ceil(data.length / cs);
    const hosts: number[] = new Array<number>(count);
    let allocated = this.#nextHostCluster;
    for (let i = 0; i < count; i++) {
      const cluster = first + i;
      const existing = entryHost(this.#table(Math.floor(cluster / this.#entriesPerL2)), cluster % this.#entriesPerL2);
      hosts[i] = existing !== 0 ? existing : allocated++ * cs;
    }
    try {
      // One write per run of clusters that are contiguous in the file too: a fresh 2 MiB write
      // is one pwrite, an overwrite of scattered clusters one per piece.
      for (let start = 0; start < count; ) {
        let end = start + 1;
        while (end < count && hosts[end] === (hosts[end - 1] as number) + cs) end++;
        await writeFully(handle, data.subarray(start * cs, Math.min(end * cs, data.length)), hosts[start] as number);
        start = end;
      }
    } catch (error) {
      throw await this.#fail('write', error);
    }
    // Mapped only once the data is in the file.
    this.#nextHostCluster = allocated;
    for (let i = 0; i < count; i++) {
      const cluster = first + i;
      setEntry(this.#table(Math.floor(cluster / this.#entriesPerL2)), cluster % this.#entriesPerL2, hosts[i] as number, false);
    }
  }

  #markZero(offset: number, length: number): void {
    const first = offset / this.clusterSize;
    const count = Math.ceil(length / this.clusterSize);
    for (let cluster = first; cluster < first + count; cluster++) {
      const table = this.#table(Math.floor(cluster / this.#entriesPerL2));
      const index = cluster % this.#entriesPerL2;
      // Keep a host cluster the guest cluster already has: it stays referenced (refcount 1),
      // and a later write of data reuses it.
      setEntry(table, index, entryHost(table, index), true);
    }
  }

  async #finish(): Promise<Qcow2WriteSummary> {
    const handle = this.#openHandle();
    this.#state = 'closing';
    const cs = this.clusterSize;
    const layout = this.#layout;
    let step: ImageFileOperation = 'write';
    try {
      // Metadata after the last data cluster: L2 tables, L1 table, refcount blocks, refcount table.
      let next = this.#nextHostCluster;
      const l1 = Buffer.alloc(Math.ceil((layout.l1Entries * 8) / cs) * cs);
      const buffers: Buffer[] = [];
      let dataClusters = 0;
      let zeroClusters = 0;
      let dataBytes = 0;
      const lastCluster = Math.ceil(this.size / cs) - 1;
      for (let i = 0; i < this.#l2.length; i++) {
        const table = this.#l2[i];
        if (table === undefined) continue;
        let used = false;
        for (let e = 0; e < this.#entriesPerL2; e++) {
          if (!entryUsed(table, e)) continue;
          used = true;
          if (isZeroEntry(table, e)) {
            zeroClusters++;
          } else {
            dataClusters++;
            const cluster = i * this.#entriesPerL2 + e;
            dataBytes += cluster === lastCluster ? this.size - cluster * cs : cs;
          }
        }
        if (!used) continue;
        setEntry(l1, i, next * cs, false);
        buffers.push(table);
        next++;
      }
      const l1Offset = layout.l1Entries === 0 ? 0 : next * cs;
      if (layout.l1Entries > 0) buffers.push(l1);
      next += l1.length / cs;
      // Refcount blocks and table must count themselves: grow both until they do.
      const perBlock = (cs * 8) >> REFCOUNT_ORDER;
      const perTableCluster = cs / 8;
      let blocks = 0;
      let tableClusters = 0;
      for (;;) {
        const total = next + blocks + tableClusters;
        const needBlocks = Math.ceil(total / perBlock);
        const needTable = Math.ceil(needBlocks / perTableCluster);
        if (needBlocks === blocks && needTable === tableClusters) break;
        blocks = Math.max(blocks, needBlocks);
        tableClusters = Math.max(tableClusters, needTable);
      }
      const total = next + blocks + tableClusters;
      // Every cluster of the file is referenced exactly once: header, data (zeroed ones keep
      // theirs), L2, L1 and the refcount structures themselves.
      const refcounts = Buffer.alloc(blocks * cs);
      refcounts.fill(REFCOUNT_ONE, 0, total * 2);
      const refcountTable = Buffer.alloc(tableClusters * cs);
      for (let b = 0; b < blocks; b++) refcountTable.writeBigUInt64BE(BigInt((next + b) * cs), b * 8);
      const refcountTableOffset = (next + blocks) * cs;
      buffers.push(refcounts, refcountTable);
      await writevFully(handle, buffers, this.#nextHostCluster * cs);

      step = 'sync';
      await handle.sync();
      const stopped = this.#abortedRefusal();
      if (stopped !== undefined) throw stopped;
      // Only now, with everything it points to on disk, does the header become valid.
      step = 'write';
      const header = headerFields(layout, this.#backingFileOffset, { l1Offset, refcountTableOffset, refcountTableClusters: tableClusters });
      await writeFully(handle, header, 0);
      step = 'sync';
      await handle.sync();
      step = 'close';
      this.#handle = undefined;
      await handle.close();
      await syncDirectory(this.path);
      this.#setState('closed');
      this.#detachSignal();
      return { path: this.path, size: this.size, clusterSize: cs, dataClusters, zeroClusters, dataBytes, fileSize: total * cs };
    } catch (error) {
      if (Qcow2WriterStateError.isInstance(error) || ImageToolsAbortError.isInstance(error)) throw error;
      throw await this.#fail(step, error);
    }
  }

  #openHandle(): FileHandle {
    if (this.#handle === undefined) throw new Qcow2WriterStateError(this.path, 'write', 'failed', { cause: this.#failure });
    return this.#handle;
  }

  /** The file system failed: the writer is done (the file stays unfinished until abort()). */
  async #fail(operation: ImageFileOperation, cause: unknown): Promise<ImageFileError> {
    const error = new ImageFileError(this.path, operation, cause);
    this.#failure = error;
    this.#setState('failed');
    this.#detachSignal();
    await this.#closeHandle();
    return error;
  }

  #setState(state: WriterState): void {
    // abort() wins: a call that was running when it came does not revive the writer.
    if (this.#state !== 'aborted') this.#state = state;
  }

  async #closeHandle(): Promise<void> {
    const handle = this.#handle;
    this.#handle = undefined;
    // Closing can only fail for an fd already gone; nothing more can be lost here.
    await handle?.close().catch(() => undefined);
  }

  #detachSignal(): void {
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#signal = undefined;
  }
}

function aborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true;
}

/**
 * Flush the directory entry of a new file, so that a finished image is there after a crash.
 * Best effort: some file systems refuse fsync on a directory (EINVAL), and the image itself is
 * already on disk by then.
 */
async function syncDirectory(path: string): Promise<void> {
  let dir: FileHandle | undefined;
  try {
    dir = await open(dirname(path), 'r');
    await dir.sync();
  } catch {
    // See above.
  } finally {
    await dir?.close().catch(() => undefined);
  }
}
