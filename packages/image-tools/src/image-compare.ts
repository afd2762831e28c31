// `qemu-img compare` without the process, for the images it is mostly used on: qcow2 and raw
// images and their backing chains. The verdict follows qemu-img's rules (guest-visible
// content; a size difference is allowed when the larger image's extra part reads as zeros) and
// so does the message, down to the offset: the start of the first 512-byte sector that
// differs. Whatever the reader does not handle goes to qemu-img itself, so the answer never
// depends on which of the two produced it.
import { checkCallOptions, checkOptionsObject, fileArgument, wordArgument } from './arguments.js';
import { ImageToolsAbortError, ImageToolsArgumentError } from './errors.js';
import { conflictingLock } from './image-locks.js';
import { openImage, UnreadableImage, type ImageLayer, type RangeContent } from './image-read.js';
import { qemuImg as defaultQemuImg, type QemuImg } from './qemu-img.js';
import type { CompareResult } from './qemu-img-types.js';
import type { CallOptions } from './run-process.js';

const SECTOR = 512;

export interface CompareImagesOptions extends CallOptions {
  /** Format of the first image; without it a qcow2 image is recognised by its magic, anything else goes to qemu-img. */
  formatA?: string;
  /** Format of the second image. */
  formatB?: string;
  /** The qemu-img to hand over to when an image cannot be read in-process. Default: the shared `qemuImg`. */
  qemuImg?: QemuImg;
}

export interface ImageComparison extends CompareResult {
  /** Who compared: this process, or qemu-img for images this reader does not handle. */
  engine: 'in-process' | 'qemu-img';
  /** Why qemu-img compared instead (`engine: 'qemu-img'`), e.g. "a.qcow2: it has compressed clusters". */
  fallbackReason?: string;
}

/**
 * Compares the guest-visible content of two images as `qemu-img compare` (without `-s`) does,
 * with the same verdict and first line of output, but in this process for qcow2 (v2, v3) and
 * raw images and their backing chains. Images with encryption, compressed clusters, extended
 * L2 entries, an external data file, the corrupt flag, a backing file without a recorded format
 * or behind a protocol, or an unknown format are handed to qemu-img (`engine` says which ran).
 *
 * Like qemu-img it refuses an image another process holds open for writing: it reads QEMU's
 * image locks from the kernel's lock table before and after reading (it cannot take them), and
 * when one conflicts, or the table cannot be read, the comparison goes to qemu-img, which then
 * fails with its own lock error (`QemuImgError`) or, once the image is free, compares it.
 *
 * ```ts
 * const { identical, message } = await compareImages('inc0.qcow2', 'ref0.qcow2', { formatA: 'qcow2', formatB: 'qcow2' });
 * ```
 */
export async function compareImages(fileA: string, fileB: string, options: CompareImagesOptions = {}): Promise<ImageComparison> {
  checkOptionsObject(options);
  const a = fileArgument(fileA, 'fileA');
  const b = fileArgument(fileB, 'fileB');
  const formatA = options.formatA === undefined ? undefined : wordArgument(options.formatA, 'formatA');
  const formatB = options.formatB === undefined ? undefined : wordArgument(options.formatB, 'formatB');
  const call = checkCallOptions(options);
  const tool = options.qemuImg ?? defaultQemuImg;
  if (options.qemuImg !== undefined && (typeof tool !== 'object' || typeof tool.compare !== 'function')) {
    throw new ImageToolsArgumentError('qemuImg', options.qemuImg, 'expected a QemuImg');
  }
  const deadline = call.timeout === undefined ? undefined : Date.now() + call.timeout;
  const checkStopped = (): void => {
    if (call.signal?.aborted === true) throw new ImageToolsAbortError('compareImages', 'abort', { cause: call.signal.reason });
    if (deadline !== undefined && Date.now() > deadline) throw new ImageToolsAbortError('compareImages', 'timeout');
  };
  checkStopped();
  try {
    return { ...(await compareInProcess(a, formatA, b, formatB, checkStopped)), engine: 'in-process' };
  } catch (error) {
    if (!(error instanceof UnreadableImage)) throw error;
    const remaining = deadline === undefined ? undefined : Math.max(1, deadline - Date.now());
    const result = await tool.compare(a, b, {
      ...(formatA === undefined ? {} : { formatA }),
      ...(formatB === undefined ? {} : { formatB }),
      ...(remaining === undefined ? {} : { timeout: remaining }),
      ...(call.signal === undefined ? {} : { signal: call.signal }),
    });
    return { ...result, engine: 'qemu-img', fallbackReason: error.message };
  }
}

/** Bytes read between two yields to the event loop. */
const BYTES_PER_SLICE = 8 * 1024 * 1024;
/** Steps (mostly metadata lookups) between two yields. */
const STEPS_PER_SLICE = 16 * 1024;

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

async function compareInProcess(
  fileA: string,
  formatA: string | undefined,
  fileB: string,
  formatB: string | undefined,
  checkStopped: () => void,
): Promise<CompareResult> {
  const a = openImage(fileA, formatA);
  let b: ImageLayer;
  try {
    b = openImage(fileB, formatB);
  } catch (error) {
    a.close();
    throw error;
  }
  try {
    const files = [...a.openFiles(), ...b.openFiles()];
    const locked = conflictingLock(files);
    if (locked !== undefined) throw new UnreadableImage(locked.file, locked.reason);
    const result = await compareLayers(a, b, checkStopped);
    // A writer that came while the images were read may have torn what was read.
    const lockedSince = conflictingLock(files);
    if (lockedSince !== undefined) throw new UnreadableImage(lockedSince.file, `${lockedSince.reason}, since it was read`);
    return result;
  } finally {
    try {
      a.close();
    } finally {
      b.close();
    }
  }
}

async function compareLayers(a: ImageLayer, b: ImageLayer, checkStopped: () => void): Promise<CompareResult> {
  // A step never straddles a cluster of any layer of either chain, so each side of a step is
  // wholly zero or wholly one run of data.
  const step = Math.min(a.chainGranule, b.chainGranule);
  const bufferA = Buffer.allocUnsafe(step);
  const bufferB = Buffer.allocUnsafe(step);
  let budgetBytes = BYTES_PER_SLICE;
  let budgetSteps = STEPS_PER_SLICE;
  const pace = async (bytes: number): Promise<void> => {
    budgetBytes -= bytes;
    if (--budgetSteps > 0 && budgetBytes > 0) return;
    budgetBytes = BYTES_PER_SLICE;
    budgetSteps = STEPS_PER_SLICE;
    await nextTurn();
    checkStopped();
  };
  const common = Math.min(a.size, b.size);
  for (let offset = 0; offset < common; offset += step) {
    const length = Math.min(step, common - offset);
    const contentA = a.content(offset, length);
    const contentB = b.content(offset, length);
    if (contentA.kind === 'zero' && contentB.kind === 'zero') {
      await pace(0);
      continue;
    }
    fill(contentA, bufferA, length);
    fill(contentB, bufferB, length);
    const sector = firstDifferentSector(bufferA, bufferB, length);
    if (sector >= 0) return mismatch(offset + sector);
    await pace(length);
  }
  if (a.size === b.size) return { identical: true, message: 'Images are identical.' };
  // qemu-img warns first, then requires the larger image's extra part to read as zeros.
  const over = a.size > b.size ? a : b;
  for (let offset = common; offset < over.size; offset += step) {
    const length = Math.min(step, over.size - offset);
    const content = over.content(offset, length);
    if (content.kind === 'data') {
      fill(content, bufferA, length);
      if (firstNonZeroSector(bufferA, length) >= 0) return { identical: false, message: 'Warning: Image size mismatch!' };
    }
    await pace(content.kind === 'data' ? length : 0);
  }
  return { identical: true, message: 'Warning: Image size mismatch!' };
}

function mismatch(offset: number): CompareResult {
  return { identical: false, message: `Content mismatch at offset ${offset}!` };
}

function fill(content: RangeContent, buffer: Buffer, length: number): void {
  if (content.kind === 'zero') buffer.fill(0, 0, length);
  else content.layer.read(content.hostOffset, buffer, 0, length);
}

/** Offset (a multiple of 512) of the first sector in which the buffers differ, or -1. */
function firstDifferentSector(a: Buffer, b: Buffer, length: number): number {
  if (a.compare(b, 0, length, 0, length) === 0) return -1;
  for (let at = 0; at < length; at += SECTOR) {
    const end = Math.min(at + SECTOR, length);
    if (a.compare(b, at, end, at, end) !== 0) return at;
  }
  return -1;
}

const ZEROS = Buffer.alloc(SECTOR);

function firstNonZeroSector(buffer: Buffer, length: number): number {
  for (let at = 0; at < length; at += SECTOR) {
    const end = Math.min(at + SECTOR, length);
    if (buffer.compare(ZEROS, 0, end - at, at, end) !== 0) return at;
  }
  return -1;
}
