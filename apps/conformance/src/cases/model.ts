// What the suite expects, computed from what it wrote and nothing else: the content of a drive
// (and so of each backup of it) and the chunks a dirty bitmap must have recorded. No SDK code
// is involved, so these expectations cannot share a bug with what they check.

const SECTOR = 512;

/** One pattern write in bytes: `length` bytes of `pattern` at `offset`. */
export interface ByteWrite {
  pattern: number;
  offset: number;
  length: number;
}

/** A size in qemu-io's syntax (`512`, `32k`, `1M`, `32736k`) in bytes. */
export function bytes(size: string | number): number {
  if (typeof size === 'number') return size;
  const m = /^(\d+)([kKmMgG]?)$/.exec(size);
  if (m === null) throw new Error(`not a size: ${size}`);
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? '').toLowerCase()] ?? 1;
  return Number(m[1]) * unit;
}

/** A run of bytes all equal to `value` (0: never written). */
interface Run {
  start: number;
  end: number;
  value: number;
}

/**
 * The guest-visible content of a disk as a list of runs of one byte value, built from the
 * writes made to it: the last write to a byte wins, bytes never written read as zero.
 */
export class DiskContent {
  #size: number;
  #runs: Run[];

  constructor(size: number, runs: Run[] = [{ start: 0, end: size, value: 0 }]) {
    this.#size = size;
    this.#runs = runs;
  }

  get size(): number {
    return this.#size;
  }

  clone(): DiskContent {
    return new DiskContent(
      this.#size,
      this.#runs.map((r) => ({ ...r })),
    );
  }

  /** Grow (block_resize): the new part reads as zeros. */
  resize(size: number): void {
    if (size > this.#size) this.#runs.push({ start: this.#size, end: size, value: 0 });
    else this.#runs = this.#runs.filter((r) => r.start < size).map((r) => ({ ...r, end: Math.min(r.end, size) }));
    this.#size = size;
  }

  write(w: ByteWrite): void {
    const end = Math.min(w.offset + w.length, this.#size);
    if (w.offset >= end) return;
    const next: Run[] = [];
    for (const r of this.#runs) {
      if (r.end <= w.offset || r.start >= end) {
        next.push(r);
        continue;
      }
      if (r.start < w.offset) next.push({ start: r.start, end: w.offset, value: r.value });
      if (r.end > end) next.push({ start: end, end: r.end, value: r.value });
    }
    next.push({ start: w.offset, end, value: w.pattern });
    next.sort((a, b) => a.start - b.start);
    // Merge neighbours of one value so runs stay few.
    this.#runs = [];
    for (const r of next) {
      const last = this.#runs[this.#runs.length - 1];
      if (last !== undefined && last.end === r.start && last.value === r.value) last.end = r.end;
      else this.#runs.push({ ...r });
    }
  }

  /** The written (non-zero) runs, in order: what a read-back checks. */
  written(): ByteWrite[] {
    return this.#runs.filter((r) => r.value !== 0).map((r) => ({ pattern: r.value, offset: r.start, length: r.end - r.start }));
  }

  #valueAt(offset: number): Run | undefined {
    return this.#runs.find((r) => r.start <= offset && offset < r.end);
  }

  /**
   * What `qemu-img compare` must say about two images holding this content and `other`:
   * identical, the 512-byte sector where they first differ, or the size warning (when the
   * common part is equal and the larger image has data past the smaller one's end).
   */
  comparedWith(other: DiskContent): { identical: boolean; message: string } {
    const common = Math.min(this.#size, other.#size);
    const cuts = [...new Set([0, ...this.#runs.map((r) => r.start), ...other.#runs.map((r) => r.start)])]
      .filter((c) => c < common)
      .sort((a, b) => a - b);
    for (const at of cuts) {
      if (this.#valueAt(at)?.value !== other.#valueAt(at)?.value) {
        const offset = Math.floor(at / SECTOR) * SECTOR;
        return { identical: false, message: `Content mismatch at offset ${offset}!` };
      }
    }
    if (this.#size === other.#size) return { identical: true, message: 'Images are identical.' };
    const larger = this.#size > other.#size ? this : other;
    const dataPastEnd = larger.#runs.some((r) => r.value !== 0 && r.end > common);
    return { identical: !dataPastEnd, message: 'Warning: Image size mismatch!' };
  }
}

/** The chunks of `granularity` bytes that writes touch: what a dirty bitmap records. */
export class DirtyChunks {
  readonly granularity: number;
  readonly #chunks = new Set<number>();

  constructor(granularity: number) {
    this.granularity = granularity;
  }

  mark(w: ByteWrite): void {
    if (w.length <= 0) return;
    const first = Math.floor(w.offset / this.granularity);
    const last = Math.floor((w.offset + w.length - 1) / this.granularity);
    for (let c = first; c <= last; c++) this.#chunks.add(c);
  }

  clear(): void {
    this.#chunks.clear();
  }

  /** Dirty bytes as QEMU counts them (`count` of query-block's dirty-bitmaps): whole chunks. */
  count(diskSize: number): number {
    let total = 0;
    for (const c of this.#chunks) total += Math.min(this.granularity, diskSize - c * this.granularity);
    return total;
  }

  /**
   * Bytes a backup job copies for these chunks when it works in clusters of `cluster` bytes:
   * every cluster that holds part of a dirty chunk (QEMU's backup copies whole clusters of
   * max(64 KiB, the target's cluster size)).
   */
  copied(cluster: number, diskSize: number): number {
    const clusters = new Set<number>();
    for (const c of this.#chunks) {
      const start = c * this.granularity;
      const end = Math.min(start + this.granularity, diskSize);
      for (let k = Math.floor(start / cluster); k * cluster < end; k++) clusters.add(k);
    }
    let total = 0;
    for (const k of clusters) total += Math.min(cluster, diskSize - k * cluster);
    return total;
  }
}
