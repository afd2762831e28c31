// Writes an empty qcow2 (v3) image without spawning qemu-img. Programs that create many small
// images (a backup target before every incremental, a conformance case's targets) would
// otherwise pay a process start per image (tens of milliseconds, most of it CPU), which
// dominates their own work. The bytes written are the ones `qemu-img create -f qcow2` of QEMU
// 7.2 writes for the same options, so an image made here cannot behave differently from one
// made by the tool; what this writer does not lay out is refused before anything is written.
import { open, rm } from 'node:fs/promises';

import { booleanArgument, checkCallOptions, checkOptionsObject, stringArgument } from './arguments.js';
import { ImageToolsAbortError, ImageToolsArgumentError, UnsupportedQcow2LayoutError } from './errors.js';
import type { CallOptions } from './run-process.js';
import { parseSizeBigInt } from './size.js';
import type { Size } from './size.js';

export interface Qcow2ImageOptions {
  /** Virtual size: bytes or a QEMU size string ('64M'); a multiple of 512, as qcow2 requires. */
  size: Size | bigint;
  /** Cluster size, a power of two from 512 bytes to 2 MiB (qemu-img's `cluster_size`). Default 64 KiB. */
  clusterSize?: Size;
  /**
   * Backing file name, stored as given (a relative name resolves against the image's
   * directory). It is not opened, as with `qemu-img create -u`: it may not exist yet.
   */
  backingFile?: string;
  /** Format of the backing file (`-F`); required with `backingFile`, as QEMU 7.2 requires it. */
  backingFormat?: string;
  /**
   * Replace an existing file (as qemu-img does). Default false: the file is created
   * exclusively and an existing one makes the call reject with the file system's EEXIST error.
   */
  overwrite?: boolean;
}

const QCOW2_MAGIC = 0x514649fb;
const HEADER_LENGTH = 112;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_TABLE = 0x6803f857;
const DEFAULT_CLUSTER_BITS = 16;
const MIN_CLUSTER_BITS = 9;
const MAX_CLUSTER_BITS = 21;
/** 16-bit refcounts, qemu-img's default. */
const REFCOUNT_ORDER = 4;
/** QEMU refuses L1 tables over 32 MiB. */
const MAX_L1_ENTRIES = (32 * 1024 * 1024) / 8;
/** QEMU reads at most this many bytes of backing file name ... */
const MAX_BACKING_FILE_BYTES = 1023;
/** ... and of backing format name (its buffer holds 16 with the terminating NUL). */
const MAX_BACKING_FORMAT_BYTES = 15;
/** qemu-img writes the feature name table only into header clusters larger than this. */
const FEATURE_TABLE_MIN_CLUSTER = 8192;

/** The feature names qemu-img 7.2 records: (type: 0 incompatible, 1 compatible, 2 autoclear; bit; name). */
const FEATURE_NAMES: ReadonlyArray<readonly [type: number, bit: number, name: string]> = [
  [0, 0, 'dirty bit'],
  [0, 1, 'corrupt bit'],
  [0, 2, 'external data file'],
  [0, 3, 'compression type'],
  [0, 4, 'extended L2 entries'],
  [1, 0, 'lazy refcounts'],
  [2, 0, 'bitmaps'],
  [2, 1, 'raw external data'],
];
const FEATURE_ENTRY_BYTES = 48;

interface Qcow2Plan {
  clusterBits: number;
  clusterSize: number;
  size: bigint;
  l1Entries: number;
  /** Clusters of the L1 table (it starts in cluster 3). */
  l1Clusters: number;
  backingFile: Buffer | undefined;
  backingFormat: Buffer | undefined;
  featureTable: boolean;
}

function pad8(n: number): number {
  return (n + 7) & ~7;
}

function clusterBitsOf(value: Size | undefined): number {
  if (value === undefined) return DEFAULT_CLUSTER_BITS;
  const size = parseSizeBigInt(value, 'clusterSize');
  for (let bits = MIN_CLUSTER_BITS; bits <= MAX_CLUSTER_BITS; bits++) {
    if (size === 1n << BigInt(bits)) return bits;
  }
  throw new ImageToolsArgumentError('clusterSize', value, 'must be a power of two from 512 bytes to 2 MiB');
}

/** Check the options and work out the layout; throws before any file is touched. */
function planQcow2Image(file: string, options: Qcow2ImageOptions): Qcow2Plan {
  const size = parseSizeBigInt(options.size, 'size');
  if (size % 512n !== 0n) throw new ImageToolsArgumentError('size', options.size, 'a qcow2 image size must be a multiple of 512 bytes');
  const clusterBits = clusterBitsOf(options.clusterSize);
  const clusterSize = 2 ** clusterBits;

  const backingFile = options.backingFile === undefined ? undefined : Buffer.from(stringArgument(options.backingFile, 'backingFile'));
  const backingFormat =
    options.backingFormat === undefined ? undefined : Buffer.from(stringArgument(options.backingFormat, 'backingFormat'));
  if (backingFile !== undefined && backingFormat === undefined) {
    throw new ImageToolsArgumentError('backingFormat', undefined, 'QEMU 7.2 requires the backing format with a backing file');
  }
  if (backingFile === undefined && backingFormat !== undefined) {
    throw new ImageToolsArgumentError('backingFormat', options.backingFormat, 'given without a backing file');
  }
  if (backingFile !== undefined && backingFile.length > MAX_BACKING_FILE_BYTES) {
    throw new UnsupportedQcow2LayoutError(file, 'backing-file-name-too-long', `${backingFile.length} bytes, QEMU reads at most ${MAX_BACKING_FILE_BYTES}`);
  }
  if (backingFormat !== undefined && backingFormat.length > MAX_BACKING_FORMAT_BYTES) {
    throw new UnsupportedQcow2LayoutError(file, 'backing-format-too-long', `${backingFormat.length} bytes, QEMU reads at most ${MAX_BACKING_FORMAT_BYTES}`);
  }

  // One L1 entry points to an L2 table of clusterSize / 8 entries, each mapping one cluster.
  const bytesPerL1Entry = BigInt(clusterSize / 8) * BigInt(clusterSize);
  const l1EntriesBig = (size + bytesPerL1Entry - 1n) / bytesPerL1Entry;
  if (l1EntriesBig > BigInt(MAX_L1_ENTRIES)) {
    throw new UnsupportedQcow2LayoutError(file, 'l1-table-too-large', `${l1EntriesBig} L1 entries, QEMU allows ${MAX_L1_ENTRIES}`);
  }
  const l1Entries = Number(l1EntriesBig);
  const l1Clusters = Math.ceil((l1Entries * 8) / clusterSize);
  // Header, refcount table, refcount block and L1 table all counted by the one refcount
  // block at cluster 2; beyond that qemu-img places further refcount blocks, which this does not.
  const refcountsPerBlock = (clusterSize * 8) >> REFCOUNT_ORDER;
  if (3 + l1Clusters > refcountsPerBlock) {
    throw new UnsupportedQcow2LayoutError(
      file,
      'refcount-block-overflow',
      `${3 + l1Clusters} metadata clusters, one refcount block of ${clusterSize}-byte clusters counts ${refcountsPerBlock}`,
    );
  }

  const featureTable = clusterSize >= FEATURE_TABLE_MIN_CLUSTER;
  const headerBytes =
    HEADER_LENGTH +
    (backingFormat === undefined ? 0 : 8 + pad8(backingFormat.length)) +
    (featureTable ? 8 + FEATURE_NAMES.length * FEATURE_ENTRY_BYTES : 0) +
    8 +
    (backingFile?.length ?? 0);
  if (headerBytes > clusterSize) {
    throw new UnsupportedQcow2LayoutError(file, 'header-overflow', `the header needs ${headerBytes} bytes of a ${clusterSize}-byte cluster`);
  }
  return { clusterBits, clusterSize, size, l1Entries, l1Clusters, backingFile, backingFormat, featureTable };
}

/** Cluster 0: the header, its extensions, then the backing file name. */
function headerCluster(plan: Qcow2Plan): Buffer {
  const buf = Buffer.alloc(plan.clusterSize);
  let at = HEADER_LENGTH;
  if (plan.backingFormat !== undefined) {
    buf.writeUInt32BE(EXT_BACKING_FORMAT, at);
    buf.writeUInt32BE(plan.backingFormat.length, at + 4);
    plan.backingFormat.copy(buf, at + 8);
    at += 8 + pad8(plan.backingFormat.length);
  }
  if (plan.featureTable) {
    buf.writeUInt32BE(EXT_FEATURE_TABLE, at);
    buf.writeUInt32BE(FEATURE_NAMES.length * FEATURE_ENTRY_BYTES, at + 4);
    at += 8;
    for (const [type, bit, name] of FEATURE_NAMES) {
      buf.writeUInt8(type, at);
      buf.writeUInt8(bit, at + 1);
      buf.write(name, at + 2, 'latin1');
      at += FEATURE_ENTRY_BYTES;
    }
  }
  at += 8; // end of the extensions: type 0, length 0
  const nameOffset = plan.backingFile === undefined ? 0 : at;
  plan.backingFile?.copy(buf, nameOffset);

  buf.writeUInt32BE(QCOW2_MAGIC, 0);
  buf.writeUInt32BE(3, 4); // version
  buf.writeBigUInt64BE(BigInt(nameOffset), 8);
  buf.writeUInt32BE(plan.backingFile?.length ?? 0, 16);
  buf.writeUInt32BE(plan.clusterBits, 20);
  buf.writeBigUInt64BE(plan.size, 24);
  // 32: no encryption
  buf.writeUInt32BE(plan.l1Entries, 36);
  buf.writeBigUInt64BE(plan.l1Entries === 0 ? 0n : BigInt(3 * plan.clusterSize), 40);
  buf.writeBigUInt64BE(BigInt(plan.clusterSize), 48); // refcount table
  buf.writeUInt32BE(1, 56); // its length in clusters
  // 60..95: no snapshots; no incompatible, compatible or autoclear features
  buf.writeUInt32BE(REFCOUNT_ORDER, 96);
  buf.writeUInt32BE(HEADER_LENGTH, 100);
  // 104: compression type zlib (0), then padding up to HEADER_LENGTH
  return buf;
}

/** The whole image: header, refcount table, refcount block, L1 table (the file ends with it). */
function imageBuffers(plan: Qcow2Plan): Buffer[] {
  const refcountTable = Buffer.alloc(plan.clusterSize);
  refcountTable.writeBigUInt64BE(BigInt(2 * plan.clusterSize), 0);
  const refcountBlock = Buffer.alloc(plan.clusterSize);
  for (let cluster = 0; cluster < 3 + plan.l1Clusters; cluster++) refcountBlock.writeUInt16BE(1, cluster * 2);
  const buffers = [headerCluster(plan), refcountTable, refcountBlock];
  if (plan.l1Entries > 0) buffers.push(Buffer.alloc(plan.l1Entries * 8));
  return buffers;
}

/**
 * Create an empty qcow2 image at `file` without running qemu-img: the same bytes `qemu-img
 * create -f qcow2 [-o cluster_size=C] [-b B -F F -u] file size` writes (compat 1.1, 16-bit
 * refcounts, zlib, no extended L2; header, refcount table, refcount block and L1 table).
 *
 * Rejects with `ImageToolsArgumentError` for options qemu-img would refuse too, and with
 * `UnsupportedQcow2LayoutError` (nothing written) for images it does not lay out itself:
 * metadata beyond one refcount block (512 B clusters over about 500 MiB, 4 KiB clusters over
 * about 500 GiB, ...), or names that do not fit the header; create those with `qemuImg.create`.
 * `signal` and `timeout` are checked before the file is opened and after it is written (the
 * write is one system call); if either fired, a file created by the call is removed and the
 * call rejects with `ImageToolsAbortError`.
 */
export async function createQcow2Image(file: string, options: Qcow2ImageOptions, call: CallOptions = {}): Promise<void> {
  const path = stringArgument(file, 'file');
  checkOptionsObject(options);
  const { timeout, signal } = checkCallOptions(call);
  const overwrite = booleanArgument(options.overwrite, 'overwrite');
  const plan = planQcow2Image(path, options);
  const deadline = timeout === undefined ? undefined : Date.now() + timeout;
  const stopped = (): ImageToolsAbortError | undefined => {
    if (signal?.aborted === true) return new ImageToolsAbortError('createQcow2Image', 'abort', { cause: signal.reason });
    if (deadline !== undefined && Date.now() > deadline) return new ImageToolsAbortError('createQcow2Image', 'timeout');
    return undefined;
  };
  const before = stopped();
  if (before !== undefined) throw before;

  const handle = await open(path, overwrite ? 'w' : 'wx');
  let written = false;
  try {
    // One write call for the whole image: each file operation is a round trip to libuv's pool.
    await handle.writev(imageBuffers(plan), 0);
    written = true;
  } finally {
    await handle.close();
    const after = written ? stopped() : undefined;
    if (!written || after !== undefined) await rm(path, { force: true });
    if (after !== undefined) throw after;
  }
}
