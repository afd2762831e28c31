// Creates an empty qcow2 (v3) image in-process, laid out as `qemu-img create -f qcow2` lays it
// out (header, refcount table, refcount block, L1 table: one 64 KiB cluster each). Backup
// targets are created before every incremental; spawning qemu-img for that costs tens of
// milliseconds, which would dominate the helper's own overhead. Anything this writer does not
// cover (other cluster sizes, images over 4 TiB) goes through qemu-img instead.
import { open } from 'node:fs/promises';

const CLUSTER_BITS = 16;
const CLUSTER = 1 << CLUSTER_BITS;
const HEADER_LENGTH = 112;
const EXT_BACKING_FORMAT = 0xe2792aca;
/** One L2 table maps CLUSTER / 8 clusters. */
const BYTES_PER_L1_ENTRY = (CLUSTER / 8) * CLUSTER;
/** The L1 table must fit one cluster for this layout. */
export const MAX_INPROCESS_QCOW2_SIZE = (CLUSTER / 8) * BYTES_PER_L1_ENTRY;

export interface Qcow2CreateOptions {
  /** Virtual size in bytes (a multiple of 512). */
  size: number;
  /** Backing file name as stored in the image (relative names resolve against the image's directory). */
  backingFile?: string;
  backingFormat?: string;
}

/** Whether `createQcow2` can write this image itself. */
export function canCreateInProcess(options: Qcow2CreateOptions): boolean {
  const nameBytes = options.backingFile === undefined ? 0 : Buffer.byteLength(options.backingFile);
  const formatBytes = options.backingFormat === undefined ? 0 : Buffer.byteLength(options.backingFormat);
  return (
    Number.isSafeInteger(options.size) &&
    options.size > 0 &&
    options.size % 512 === 0 &&
    options.size <= MAX_INPROCESS_QCOW2_SIZE &&
    nameBytes <= 1023 &&
    formatBytes <= 16
  );
}

function pad8(n: number): number {
  return (n + 7) & ~7;
}

/** The first cluster: header, header extensions, backing file name. */
function headerCluster(options: Qcow2CreateOptions, l1Size: number): Buffer {
  const buf = Buffer.alloc(CLUSTER);
  const name = options.backingFile === undefined ? undefined : Buffer.from(options.backingFile, 'utf8');
  const format = options.backingFormat === undefined ? undefined : Buffer.from(options.backingFormat, 'utf8');

  // Header extensions start right after the header; the backing file name follows them.
  let ext = HEADER_LENGTH;
  if (format) {
    buf.writeUInt32BE(EXT_BACKING_FORMAT, ext);
    buf.writeUInt32BE(format.length, ext + 4);
    format.copy(buf, ext + 8);
    ext += 8 + pad8(format.length);
  }
  ext += 8; // end-of-extensions marker: type 0, length 0 (already zero)
  const nameOffset = name ? ext : 0;
  if (name) name.copy(buf, nameOffset);

  buf.writeUInt32BE(0x514649fb, 0); // "QFI\xfb"
  buf.writeUInt32BE(3, 4); // version
  buf.writeBigUInt64BE(BigInt(nameOffset), 8);
  buf.writeUInt32BE(name ? name.length : 0, 16);
  buf.writeUInt32BE(CLUSTER_BITS, 20);
  buf.writeBigUInt64BE(BigInt(options.size), 24);
  buf.writeUInt32BE(0, 32); // no encryption
  buf.writeUInt32BE(l1Size, 36);
  buf.writeBigUInt64BE(BigInt(3 * CLUSTER), 40); // L1 table
  buf.writeBigUInt64BE(BigInt(CLUSTER), 48); // refcount table
  buf.writeUInt32BE(1, 56); // refcount table clusters
  // snapshots, incompatible / compatible / autoclear features: none (zero)
  buf.writeUInt32BE(4, 96); // refcount_order: 16-bit refcounts
  buf.writeUInt32BE(HEADER_LENGTH, 100);
  // byte 104: compression type zlib (0), then padding to 112
  return buf;
}

/**
 * Write an empty qcow2 image at `file`. The file must not exist (it is created exclusively).
 */
export async function createQcow2(file: string, options: Qcow2CreateOptions): Promise<void> {
  if (!canCreateInProcess(options)) throw new RangeError('createQcow2: image needs qemu-img (size or names out of range)');
  const l1Size = Math.max(1, Math.ceil(options.size / BYTES_PER_L1_ENTRY));
  // Cluster 1: the refcount table, whose one entry points at the refcount block in cluster 2.
  const refcountTable = Buffer.alloc(CLUSTER);
  refcountTable.writeBigUInt64BE(BigInt(2 * CLUSTER), 0);
  // Cluster 2: refcounts of clusters 0..3 (header, refcount table, refcount block, L1) are 1.
  const refcountBlock = Buffer.alloc(CLUSTER);
  for (let i = 0; i < 4; i++) refcountBlock.writeUInt16BE(1, i * 2);
  // Cluster 3: the L1 table, all zeros; the file ends right after it, as qemu-img's does.
  const l1 = Buffer.alloc(l1Size * 8);
  const handle = await open(file, 'wx');
  try {
    // One write call for the whole image: each file operation is a round trip to libuv's pool.
    await handle.writev([headerCluster(options, l1Size), refcountTable, refcountBlock, l1], 0);
  } finally {
    await handle.close();
  }
}
