// The data of iotest 257 and a model of what a dirty bitmap should hold: four groups of guest
// writes chosen so that each group dirties known 64 KiB clusters, some new, some again. The
// cases predict every bitmap count (and so every job length) from this model instead of
// copying numbers, as the reference does.

export const SIZE = 64 * 1024 * 1024;
export const GRANULARITY = 64 * 1024;
export const CLUSTERS = SIZE / GRANULARITY;

/** One qemu-io write: `write -P<pattern> <offset> <length>`. */
export interface PatternWrite {
  pattern: number;
  offset: number;
  length: number;
}

const write = (pattern: number, offset: number, length = GRANULARITY): PatternWrite => ({ pattern, offset, length });

/** The four write groups, by number (0 before the bitmap exists, 2 while a job waits to finalize). */
export const WRITE_GROUPS: ReadonlyArray<readonly PatternWrite[]> = [
  // 0: four clusters.
  [write(0x49, 0x0000000), write(0x6c, 0x0100000), write(0x6f, 0x2000000), write(0x76, 0x3ff0000)],
  // 1: six clusters, three of them new: a full overwrite, straddling writes left and right of
  // group 0's, one next to the end.
  [write(0x65, 0x0000000), write(0x77, 0x00f8000), write(0x72, 0x2008000), write(0x69, 0x3fe0000)],
  // 2: seven clusters, three new.
  [write(0x74, 0x0010000), write(0x69, 0x00e8000), write(0x6e, 0x2018000), write(0x67, 0x3fe0000, 2 * GRANULARITY)],
  // 3: eight clusters, five new; none touches the one cluster a failing job copies before its
  // error (cluster 0), so a bitmap that kept it clean still reads so afterwards.
  [write(0xaa, 0x0010000, 3 * GRANULARITY), write(0xbb, 0x00d8000), write(0xcc, 0x2028000), write(0xdd, 0x3fc0000)],
];

/** The clusters (bit numbers at `granularity`) that a write touches. */
export function clustersOf(w: PatternWrite, granularity = GRANULARITY): number[] {
  const first = Math.floor(w.offset / granularity);
  const last = Math.floor((w.offset + w.length - 1) / granularity);
  return Array.from({ length: last - first + 1 }, (_, i) => first + i);
}

export function groupClusters(group: number, granularity = GRANULARITY): Set<number> {
  const writes = WRITE_GROUPS[group];
  if (writes === undefined) throw new RangeError(`no write group ${group}`);
  return new Set(writes.flatMap((w) => clustersOf(w, granularity)));
}

/** The reference's command text for a write (`write -P0x49 0x0000000 0x10000`). */
export function writeCommand(w: PatternWrite): string {
  return `write -P0x${w.pattern.toString(16)} 0x${w.offset.toString(16).padStart(7, '0')} 0x${w.length.toString(16)}`;
}

/** What bitmap0 should hold: a set of dirty clusters, changed as the scenario goes. */
export class BitmapModel {
  #bits = new Set<number>();

  get count(): number {
    return this.#bits.size;
  }

  /** Dirty bytes, as QEMU reports `count`. */
  get bytes(): number {
    return this.#bits.size * GRANULARITY;
  }

  get bits(): number[] {
    return [...this.#bits].sort((a, b) => a - b);
  }

  dirty(bits: Iterable<number>): void {
    for (const bit of bits) this.#bits.add(bit);
  }

  dirtyGroup(group: number): void {
    this.dirty(groupClusters(group));
  }

  clear(): void {
    this.#bits.clear();
  }

  clearBit(bit: number): void {
    this.#bits.delete(bit);
  }

  /** The lowest dirty cluster; the model has none: RangeError. */
  firstBit(): number {
    const [first] = this.bits;
    if (first === undefined) throw new RangeError('the bitmap model is empty');
    return first;
  }
}
