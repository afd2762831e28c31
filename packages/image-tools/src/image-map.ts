// Where an image chain holds data, and setting an image's backing file, without a qemu-img
// process for the qcow2 images QEMU and qemu-img write by default. Like `compareImages`, each
// hands whatever it does not fully understand to qemu-img, so the answer never depends on which
// of the two produced it.
import { closeSync, openSync, readSync, writeSync, fdatasyncSync } from 'node:fs';

import { checkCallOptions, checkOptionsObject, fileArgument, stringArgument, wordArgument } from './arguments.js';
import { ImageToolsAbortError, ImageToolsArgumentError } from './errors.js';
import { openImage, UnreadableImage, type ImageLayer } from './image-read.js';
import { qemuImg as defaultQemuImg, type QemuImg } from './qemu-img.js';
import type { CallOptions } from './run-process.js';

export interface DataExtent {
  /** Guest offset, bytes. */
  start: number;
  length: number;
  /** The image of the chain the data is in: 0 the image itself, 1 its backing file, ... */
  depth: number;
}

export interface MapImageOptions extends CallOptions {
  format?: string;
  /** The qemu-img to hand over to. Default: the shared `qemuImg`. */
  qemuImg?: QemuImg;
}

export interface ImageDataMap {
  /** Extents whose content is data stored in some image of the chain, in guest order, merged. */
  extents: DataExtent[];
  engine: 'in-process' | 'qemu-img';
  /** Why qemu-img mapped instead. */
  fallbackReason?: string;
}

function checkQemuImg(value: QemuImg | undefined): QemuImg {
  const tool = value ?? defaultQemuImg;
  if (value !== undefined && (typeof tool !== 'object' || typeof tool.map !== 'function')) {
    throw new ImageToolsArgumentError('qemuImg', value, 'expected a QemuImg');
  }
  return tool;
}

function stopper(operation: string, call: CallOptions): { check: () => void; remaining: () => number | undefined } {
  const deadline = call.timeout === undefined ? undefined : Date.now() + call.timeout;
  return {
    check: () => {
      if (call.signal?.aborted === true) throw new ImageToolsAbortError(operation, 'abort', { cause: call.signal.reason });
      if (deadline !== undefined && Date.now() > deadline) throw new ImageToolsAbortError(operation, 'timeout');
    },
    remaining: () => (deadline === undefined ? undefined : Math.max(1, deadline - Date.now())),
  };
}

function depthOf(top: ImageLayer, layer: ImageLayer): number {
  let depth = 0;
  for (let at: ImageLayer | undefined = top; at !== undefined; at = at.backing, depth++) if (at === layer) return depth;
  return -1;
}

function pushExtent(extents: DataExtent[], start: number, length: number, depth: number): void {
  const last = extents[extents.length - 1];
  if (last !== undefined && last.depth === depth && last.start + last.length === start) last.length += length;
  else extents.push({ start, length, depth });
}

/**
 * The `data: true` extents of `qemu-img map --output=json` (guest ranges whose content is data
 * stored in an image of the chain, with the depth of that image), read in this process for
 * chains of qcow2 images. Raw images (whose holes qemu-img finds through the file system),
 * and everything the reader does not handle, are mapped by qemu-img. Zero clusters and
 * unallocated ranges are not data. Map images that nothing is writing.
 */
export async function mapImageData(file: string, options: MapImageOptions = {}): Promise<ImageDataMap> {
  checkOptionsObject(options);
  const path = fileArgument(file, 'file');
  const format = options.format === undefined ? undefined : wordArgument(options.format, 'format');
  const call = checkCallOptions(options);
  const tool = checkQemuImg(options.qemuImg);
  const stop = stopper('mapImageData', call);
  stop.check();
  let fallbackReason: string;
  try {
    const top = openImage(path, format);
    try {
      for (let at: ImageLayer | undefined = top; at !== undefined; at = at.backing) {
        if (at.format !== 'qcow2') throw new UnreadableImage(at.file, 'raw images are mapped by qemu-img (holes)');
      }
      const extents: DataExtent[] = [];
      const step = top.chainGranule;
      for (let offset = 0; offset < top.size; offset += step) {
        const length = Math.min(step, top.size - offset);
        const content = top.content(offset, length);
        if (content.kind === 'data') pushExtent(extents, offset, length, depthOf(top, content.layer));
        if ((offset / step) % 65536 === 0) {
          stop.check();
          await new Promise<void>((resolve) => setImmediate(resolve));
        }
      }
      return { extents, engine: 'in-process' };
    } finally {
      top.close();
    }
  } catch (error) {
    if (!(error instanceof UnreadableImage)) throw error;
    fallbackReason = error.message;
  }
  const remaining = stop.remaining();
  const entries = await tool.map(path, {
    ...(format === undefined ? {} : { format }),
    ...(remaining === undefined ? {} : { timeout: remaining }),
    ...(call.signal === undefined ? {} : { signal: call.signal }),
  });
  const extents: DataExtent[] = [];
  for (const e of entries) if (e.data) pushExtent(extents, e.start, e.length, e.depth);
  return { extents, engine: 'qemu-img', fallbackReason };
}

const QCOW2_MAGIC = 0x514649fb;
const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
/** Extensions QEMU writes back as they are: feature name table, bitmaps. Others go to qemu-img. */
const KEPT_EXTENSIONS = new Set([0x6803f857, 0x23852875]);

export interface SetBackingFileOptions extends CallOptions {
  /** The qemu-img to hand over to. Default: the shared `qemuImg`. */
  qemuImg?: QemuImg;
}

/**
 * What `qemu-img rebase -u -f qcow2 -b BACKING -F FORMAT file` does (the backing file name and
 * format in the header change, no data is read or written), in this process for qcow2 version 3
 * images whose header holds only the extensions QEMU writes by default; anything else is
 * handed to qemu-img. Returns who did it. Only for images nothing has open.
 */
export async function setBackingFile(
  file: string,
  backing: { file: string; format: string },
  options: SetBackingFileOptions = {},
): Promise<'in-process' | 'qemu-img'> {
  checkOptionsObject(options);
  const path = fileArgument(file, 'file');
  const backingFile = Buffer.from(stringArgument(backing.file, 'backing.file'));
  const backingFormat = Buffer.from(wordArgument(backing.format, 'backing.format'));
  const call = checkCallOptions(options);
  const tool = checkQemuImg(options.qemuImg);
  const stop = stopper('setBackingFile', call);
  stop.check();
  if (rewriteHeader(path, backingFile, backingFormat)) return 'in-process';
  const remaining = stop.remaining();
  await tool.rebase(path, {
    format: 'qcow2',
    unsafe: true,
    backingFile: backing.file,
    backingFormat: backing.format,
    ...(remaining === undefined ? {} : { timeout: remaining }),
    ...(call.signal === undefined ? {} : { signal: call.signal }),
  });
  return 'qemu-img';
}

/** The header rewritten in place; false (nothing written) for a layout left to qemu-img. */
function rewriteHeader(path: string, backingFile: Buffer, backingFormat: Buffer): boolean {
  const fd = openSync(path, 'r+');
  try {
    const head = Buffer.alloc(112);
    if (readSync(fd, head, 0, head.length, 0) !== head.length) return false;
    if (head.readUInt32BE(0) !== QCOW2_MAGIC || head.readUInt32BE(4) !== 3) return false;
    const clusterBits = head.readUInt32BE(20);
    if (clusterBits < 9 || clusterBits > 21) return false;
    const clusterSize = 2 ** clusterBits;
    const headerLength = head.readUInt32BE(100);
    if (headerLength < 104 || headerLength > clusterSize) return false;
    const cluster = Buffer.alloc(clusterSize);
    if (readSync(fd, cluster, 0, clusterSize, 0) !== clusterSize) return false;

    // The extensions to keep, in their order (QEMU writes the backing format first, then these).
    const kept: Buffer[] = [];
    let at = headerLength;
    for (;;) {
      if (at + 8 > clusterSize) return false;
      const type = cluster.readUInt32BE(at);
      const length = cluster.readUInt32BE(at + 4);
      if (type === EXT_END) break;
      const padded = (length + 7) & ~7;
      if (at + 8 + padded > clusterSize) return false;
      if (type !== EXT_BACKING_FORMAT) {
        if (!KEPT_EXTENSIONS.has(type)) return false;
        kept.push(cluster.subarray(at, at + 8 + padded));
      }
      at += 8 + padded;
    }

    const formatExtension = Buffer.alloc(8 + ((backingFormat.length + 7) & ~7));
    formatExtension.writeUInt32BE(EXT_BACKING_FORMAT, 0);
    formatExtension.writeUInt32BE(backingFormat.length, 4);
    backingFormat.copy(formatExtension, 8);
    const extensions = Buffer.concat([formatExtension, ...kept, Buffer.alloc(8)]);
    const nameOffset = headerLength + extensions.length;
    if (nameOffset + backingFile.length > clusterSize || backingFile.length > 1023 || backingFormat.length > 15) return false;

    const rewritten = Buffer.alloc(clusterSize);
    cluster.copy(rewritten, 0, 0, headerLength);
    extensions.copy(rewritten, headerLength);
    backingFile.copy(rewritten, nameOffset);
    rewritten.writeBigUInt64BE(BigInt(nameOffset), 8);
    rewritten.writeUInt32BE(backingFile.length, 16);
    if (writeSync(fd, rewritten, 0, clusterSize, 0) !== clusterSize) throw new Error(`short write of ${path}'s header`);
    fdatasyncSync(fd);
    return true;
  } finally {
    closeSync(fd);
  }
}
