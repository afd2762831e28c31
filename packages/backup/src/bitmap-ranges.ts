// Setting bits of a dirty bitmap without writing to the drive. QMP has commands that add,
// clear, merge and remove bitmaps but none that sets bits; only a write does. A throwaway
// `null-co` node of the drive's size gets a bitmap of the same granularity, qemu-io (run
// through HMP) writes zeroes to the wanted ranges of that node (null-co drops the data, the
// bitmap records the write), and the bitmap is merged into the drive's. The drive's data is
// never touched.
import { randomUUID } from 'node:crypto';
import { BitmapRangeError } from './errors.js';
import type { BlockDeviceInfo } from './qapi.js';
import { addNode, removeNode } from './nodes.js';
import { execute } from './qmp.js';
import type { BackupQmp, CallOptions } from './qmp.js';

/** qemu-io refuses requests over 2 GiB; 1 GiB keeps every command well inside. */
const CHUNK = 1 << 30;

export interface BitmapRangeTarget {
  /** Device or node-name of the drive and the bitmap to set bits in. */
  node: string;
  bitmap: string;
  /** The drive's current virtual size (the throwaway node must match it for the merge). */
  size: number;
  granularity: number;
}

/** A byte range [start, end). */
export interface ByteRange {
  start: number;
  end: number;
}

/** The ranges widened to whole granules and cut at `size`, sorted and merged. */
export function granuleRanges(ranges: readonly ByteRange[], granularity: number, size: number): ByteRange[] {
  const widened = ranges
    .map((r) => ({
      start: Math.floor(r.start / granularity) * granularity,
      end: Math.min(size, Math.ceil(r.end / granularity) * granularity),
    }))
    .filter((r) => r.end > r.start)
    .sort((a, b) => a.start - b.start);
  const merged: ByteRange[] = [];
  for (const r of widened) {
    const last = merged[merged.length - 1];
    if (last && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else merged.push({ ...r });
  }
  return merged;
}

/** The bitmap count QEMU reports for these ranges: set granules times the granularity. */
export function expectedCount(ranges: readonly ByteRange[], granularity: number, size: number): number {
  return granuleRanges(ranges, granularity, size).reduce(
    (sum, r) => sum + Math.ceil((r.end - r.start) / granularity) * granularity,
    0,
  );
}

async function bitmapCount(qmp: BackupQmp, nodeName: string, name: string, options: CallOptions): Promise<number | undefined> {
  const nodes = await execute<BlockDeviceInfo[]>(qmp, 'query-named-block-nodes', { flat: true }, options);
  return nodes.find((n) => n['node-name'] === nodeName)?.['dirty-bitmaps']?.find((b) => b.name === name)?.count;
}

/**
 * Set the bits of `ranges` (widened to whole granules) in `target.bitmap`. Throws
 * `BitmapRangeError` (reason 'unsupported' when the QEMU has no HMP, e.g. qemu-storage-daemon)
 * and leaves nothing behind; the target bitmap is changed only by the final merge.
 */
export async function setBitmapRanges(
  qmp: BackupQmp,
  target: BitmapRangeTarget,
  ranges: readonly ByteRange[],
  options: CallOptions = {},
): Promise<void> {
  const wanted = granuleRanges(ranges, target.granularity, target.size);
  if (wanted.length === 0) return;
  const nodeName = `qmpkit-fill-${randomUUID().slice(0, 8)}`;
  const name = 'fill';
  try {
    await addNode(qmp, { driver: 'null-co', 'node-name': nodeName, size: target.size }, options);
  } catch (error) {
    throw new BitmapRangeError(target.node, target.bitmap, 'failed', 'a null-co node could not be added', { cause: error });
  }
  try {
    await execute(qmp, 'block-dirty-bitmap-add', { node: nodeName, name, granularity: target.granularity }, options);
    for (const r of wanted) {
      for (let offset = r.start; offset < r.end; offset += CHUNK) {
        const length = Math.min(CHUNK, r.end - offset);
        let output: string;
        try {
          output = await execute<string>(
            qmp,
            'human-monitor-command',
            { 'command-line': `qemu-io ${nodeName} "write -z ${offset} ${length}"` },
            options,
          );
        } catch (error) {
          const unsupported = (error as { errorClass?: unknown }).errorClass === 'CommandNotFound';
          throw new BitmapRangeError(
            target.node,
            target.bitmap,
            unsupported ? 'unsupported' : 'failed',
            unsupported ? 'this QEMU has no human monitor (HMP) to run qemu-io' : 'qemu-io through HMP failed',
            { cause: error },
          );
        }
        if (/error|fail/i.test(output)) {
          throw new BitmapRangeError(target.node, target.bitmap, 'failed', `qemu-io said: ${output.trim()}`);
        }
      }
    }
    // qemu-io prints some failures on QEMU's stdout, not in the HMP reply: the count tells.
    const count = await bitmapCount(qmp, nodeName, name, options);
    const expected = expectedCount(wanted, target.granularity, target.size);
    if (count !== expected) {
      throw new BitmapRangeError(
        target.node,
        target.bitmap,
        'failed',
        `the throwaway bitmap has ${String(count)} dirty bytes, ${expected} were written`,
      );
    }
    try {
      await execute(
        qmp,
        'block-dirty-bitmap-merge',
        { node: target.node, target: target.bitmap, bitmaps: [{ node: nodeName, name }] },
        options,
      );
    } catch (error) {
      // Bitmaps of different sizes do not merge: the drive was resized meanwhile.
      throw new BitmapRangeError(target.node, target.bitmap, 'failed', 'the merge into the drive\'s bitmap failed', {
        cause: error,
      });
    }
  } finally {
    await removeNode(qmp, nodeName).catch(() => undefined);
  }
}
