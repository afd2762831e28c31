// Reading a fleecing export: which extents to copy, and copying them to a writer (a qcow2
// target, or a caller's sink) with several reads in flight.
//
// What is copied matches what a push-mode backup job writes for the same drive, so both modes
// record the same `bytes`: the ranges to go through (the whole drive for a full, the frozen
// bitmap's dirty extents otherwise) are widened to whole target clusters, then each cluster is
// data unless `base:allocation` says all of it reads as zeroes, like the job's copy, which
// decides per cluster. Zero clusters of an incremental are written as zero clusters (they hide
// older data in the backing file); a full skips them (a new image reads zeroes anyway).
import type { Writable } from 'node:stream';

import { BASE_ALLOCATION, ExtentFlag } from '@qmpkit/nbd';
import type { NbdClient, NbdExtent } from '@qmpkit/nbd';

import { PullSinkError } from './errors.js';
import type { JobProgress } from './job.js';

/** A run of bytes to write: `[start, end)`. */
export interface ByteSpan {
  start: number;
  end: number;
}

/** One piece of the copy: data to read and write, or clusters to write as zeroes. */
export interface CopySegment {
  offset: number;
  length: number;
  zero: boolean;
}

/** Extents of data read from the export, as a sink receives them. `data.length === length`. */
export interface PullDataExtent {
  offset: number;
  length: number;
  data: Uint8Array;
  zero?: never;
}

/** Extents that read as zeroes and hide older data (only in an incremental or differential). */
export interface PullZeroExtent {
  offset: number;
  length: number;
  zero: true;
  data?: never;
}

/** What a pull-mode sink receives, in offset order, never overlapping. */
export type PullExtent = PullDataExtent | PullZeroExtent;

/** Where the copy goes. */
export interface ExtentWriter {
  write(offset: number, data: Uint8Array): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
}

function alignDown(value: number, unit: number): number {
  return value - (value % unit);
}

function alignUp(value: number, unit: number, size: number): number {
  return Math.min(size, Math.ceil(value / unit) * unit);
}

/** Widen spans to whole clusters (the last one may end at `size`), clip to `size`, merge overlapping and adjacent ones. */
export function alignSpans(spans: readonly ByteSpan[], cluster: number, size: number): ByteSpan[] {
  const out: ByteSpan[] = [];
  for (const s of spans) {
    const start = alignDown(Math.max(0, s.start), cluster);
    const end = alignUp(Math.min(size, s.end), cluster, size);
    if (end <= start) continue;
    const last = out[out.length - 1];
    if (last && start <= last.end) last.end = Math.max(last.end, end);
    else out.push({ start, end });
  }
  return out;
}

/**
 * The segments of a copy: `spans` (already aligned by `alignSpans`) split into data and zero
 * segments by the `base:allocation` extents that cover them. A cluster is zero only when every
 * byte of it has the ZERO flag. `zeroes: false` leaves zero segments out (a full).
 */
export function planSegments(
  spans: readonly ByteSpan[],
  allocation: readonly NbdExtent[],
  cluster: number,
  size: number,
  options: { zeroes: boolean },
): CopySegment[] {
  // The ranges reading as zeroes, merged across neighbouring extents of different flags.
  const zeroes: ByteSpan[] = [];
  for (const e of allocation) {
    if ((e.flags & ExtentFlag.ZERO) === 0) continue;
    const last = zeroes[zeroes.length - 1];
    if (last && e.offset <= last.end) last.end = Math.max(last.end, e.offset + e.length);
    else zeroes.push({ start: e.offset, end: e.offset + e.length });
  }
  // Shrunk to whole clusters: a cluster partly data is copied as data.
  const whole = zeroes
    .map((z) => ({ start: alignUp(z.start, cluster, size), end: z.end >= size ? size : alignDown(z.end, cluster) }))
    .filter((z) => z.end > z.start);
  const out: CopySegment[] = [];
  const push = (offset: number, end: number, zero: boolean): void => {
    if (end <= offset || (zero && !options.zeroes)) return;
    const last = out[out.length - 1];
    if (last && last.zero === zero && last.offset + last.length === offset) last.length += end - offset;
    else out.push({ offset, length: end - offset, zero });
  };
  let z = 0;
  for (const span of spans) {
    let at = span.start;
    while (z < whole.length && (whole[z] as ByteSpan).end <= at) z++;
    for (let i = z; i < whole.length && (whole[i] as ByteSpan).start < span.end; i++) {
      const piece = whole[i] as ByteSpan;
      const from = Math.max(piece.start, at);
      const to = Math.min(piece.end, span.end);
      if (to <= from) continue;
      push(at, from, false);
      push(from, to, true);
      at = to;
    }
    push(at, span.end, false);
  }
  return out;
}

/** Collect an async iterator of extents into an array. */
async function collect(extents: AsyncIterable<NbdExtent>): Promise<NbdExtent[]> {
  const out: NbdExtent[] = [];
  for await (const e of extents) out.push(e);
  return out;
}

export interface CopyPlan {
  segments: CopySegment[];
  /** Bytes the copy goes through (progress total): the whole drive for a full, the aligned dirty spans otherwise. */
  total: number;
  /** Dirty bytes of the frozen bitmap (a full: the drive's size). */
  dirty: number;
}

/**
 * Ask the export which extents to copy. `bitmapContext` (`qemu:dirty-bitmap:NAME`): only its
 * dirty extents, zero clusters kept; without: the whole export, zero clusters left out.
 */
export async function planCopy(
  nbd: NbdClient,
  options: { bitmapContext?: string | undefined; cluster: number; signal?: AbortSignal | undefined },
): Promise<CopyPlan> {
  const size = nbd.export.size;
  const call = options.signal ? { signal: options.signal } : {};
  let spans: ByteSpan[];
  let dirty: number;
  if (options.bitmapContext === undefined) {
    spans = size > 0 ? [{ start: 0, end: size }] : [];
    dirty = size;
  } else {
    const raw: ByteSpan[] = [];
    dirty = 0;
    for await (const e of nbd.extents({ context: options.bitmapContext, ...call })) {
      if ((e.flags & ExtentFlag.DIRTY) === 0) continue;
      raw.push({ start: e.offset, end: e.offset + e.length });
      dirty += e.length;
    }
    spans = alignSpans(raw, options.cluster, size);
  }
  const total = spans.reduce((sum, s) => sum + s.end - s.start, 0);
  if (spans.length === 0) return { segments: [], total, dirty };
  const first = spans[0] as ByteSpan;
  const last = spans[spans.length - 1] as ByteSpan;
  const allocation = await collect(nbd.extents({ context: BASE_ALLOCATION, offset: first.start, length: last.end - first.start, ...call }));
  const segments = planSegments(spans, allocation, options.cluster, size, { zeroes: options.bitmapContext !== undefined });
  return { segments, total, dirty };
}

/** Reports progress like a backup job's: at most every `interval` ms, and a final report with current === total. */
export class CopyProgress {
  readonly #report: ((p: JobProgress & { node: string }) => void) | undefined;
  readonly #interval: number;
  readonly #id: string;
  readonly #node: string;
  #total = 0;
  #current = 0;
  #last = 0;
  #started = false;
  #ended = false;

  constructor(report: ((p: JobProgress & { node: string }) => void) | undefined, id: string, node: string, interval = 250) {
    this.#report = report;
    this.#id = id;
    this.#node = node;
    this.#interval = interval;
  }

  get current(): number {
    return this.#current;
  }

  /** The total is known (the plan is made): a first report. */
  start(total: number): void {
    this.#total = total;
    this.#started = true;
    this.#emit(false);
  }

  advance(bytes: number): void {
    this.#current = Math.min(this.#total, this.#current + bytes);
    const now = performance.now();
    if (now - this.#last >= this.#interval) this.#emit(false);
  }

  /** The last report (none if the copy never started): on success current === total. */
  finish(completed: boolean): void {
    if (this.#ended || !this.#started) return;
    if (completed) this.#current = this.#total;
    this.#emit(true);
    this.#ended = true;
  }

  #emit(final: boolean): void {
    if (!this.#report || this.#ended) return;
    this.#last = performance.now();
    const p: JobProgress & { node: string } = {
      id: this.#id,
      status: final ? 'concluded' : 'running',
      current: this.#current,
      total: this.#total,
      node: this.#node,
    };
    if (final) p.final = true;
    // A caller's callback that throws must not end the copy.
    try {
      this.#report(p);
    } catch {
      // ignored, as a job's onProgress is
    }
  }
}

export interface CopyOptions {
  signal?: AbortSignal | undefined;
  /** Reads in flight ahead of the writes (default 8). */
  readAhead?: number;
  /** Largest read (default 1 MiB). */
  blockSize?: number;
  /** The writer is done with each buffer when its write resolves (a file), so buffers are recycled. */
  reuseBuffers?: boolean;
  progress: CopyProgress;
}

/**
 * Copy the plan's segments in order: data read with `readAhead` reads in flight (the writer
 * sets the pace: a slow writer slows the reads), zero segments written as zeroes. Returns the
 * data bytes written.
 */
export async function copySegments(nbd: NbdClient, segments: readonly CopySegment[], writer: ExtentWriter, options: CopyOptions): Promise<number> {
  const data = segments.filter((s) => !s.zero);
  const blocks = nbd.readRanges(data, {
    readAhead: options.readAhead ?? 8,
    blockSize: options.blockSize ?? 1024 * 1024,
    reuseBuffers: options.reuseBuffers === true,
    signal: options.signal,
  });
  let written = 0;
  try {
    for (const s of segments) {
      options.signal?.throwIfAborted();
      if (s.zero) {
        await writer.writeZeroes(s.offset, s.length);
        options.progress.advance(s.length);
        continue;
      }
      for (let at = s.offset; at < s.offset + s.length; ) {
        const next = await blocks.next();
        if (next.done === true) throw new Error(`the export's reads ended before offset ${at}`);
        const block = next.value;
        await writer.write(block.offset, block.data.subarray(0, block.length));
        options.progress.advance(block.length);
        written += block.length;
        at = block.offset + block.length;
      }
    }
  } finally {
    // Leaving early abandons the reads still in flight.
    await blocks.return(undefined);
  }
  return written;
}

/**
 * A Node Writable in object mode as an `ExtentWriter`: each extent is written as a
 * `PullExtent`, and when `write()` returns false the copy waits for 'drain' (backpressure).
 * The sink failing ('error', or closing before it finished) is `PullSinkError`.
 */
export class SinkWriter implements ExtentWriter {
  readonly #sink: Writable;
  readonly #node: string;
  readonly #signal: AbortSignal | undefined;
  #failure: PullSinkError | undefined;
  #finished = false;
  /** Extents written so far. */
  extents = 0;
  readonly #onError = (error: unknown): void => {
    this.#failure ??= new PullSinkError(this.#node, `failed: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  };
  readonly #onClose = (): void => {
    if (!this.#finished) this.#failure ??= new PullSinkError(this.#node, 'closed before it took every extent');
  };

  constructor(sink: Writable, node: string, signal?: AbortSignal) {
    this.#sink = sink;
    this.#node = node;
    this.#signal = signal;
    // Kept for the sink's lifetime: an 'error' it emits later (after a destroy) is ours to absorb.
    sink.on('error', this.#onError);
    sink.once('close', this.#onClose);
    this.#check();
  }

  /** Refuse a sink that cannot take objects, or is already ended, before anything is set up. */
  static check(sink: unknown, node: string): asserts sink is Writable {
    const w = sink as Partial<Writable> | null;
    if (w === null || typeof w !== 'object' || typeof w.write !== 'function' || typeof w.end !== 'function' || typeof w.on !== 'function') {
      throw new PullSinkError(node, 'is not a Node Writable');
    }
    if (w.writableObjectMode !== true) throw new PullSinkError(node, 'is not in object mode (new Writable({ objectMode: true, ... }))');
    if (w.writableEnded === true || w.destroyed === true) throw new PullSinkError(node, 'is already ended or destroyed');
  }

  #check(): void {
    // A write that failed destroys the sink at once but emits 'error' only on the next tick.
    const errored = this.#sink.errored;
    if (errored && !this.#failure) this.#onError(errored);
    if (this.#failure) throw this.#failure;
    if (this.#sink.destroyed && !this.#finished) throw (this.#failure = new PullSinkError(this.#node, 'was destroyed before it took every extent'));
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#push({ offset, length: data.length, data });
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.#push({ offset, length, zero: true });
  }

  async #push(extent: PullExtent): Promise<void> {
    this.#check();
    this.extents++;
    if (this.#sink.write(extent)) return;
    await this.#until('drain');
  }

  /** End the sink and wait until it has taken everything ('finish'). */
  async finish(): Promise<void> {
    this.#check();
    const done = this.#until('finish');
    this.#sink.end();
    await done;
  }

  /** The copy failed: destroy the sink without an error (it never sees 'finish'). */
  destroy(): void {
    if (!this.#finished && !this.#sink.destroyed) this.#sink.destroy();
  }

  #until(event: 'drain' | 'finish'): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const cleanup = (): void => {
        this.#sink.off(event, onEvent);
        this.#sink.off('error', onFail);
        this.#sink.off('close', onFail);
        this.#signal?.removeEventListener('abort', onAbort);
      };
      const onEvent = (): void => {
        cleanup();
        // Before 'close', which follows 'finish' before this promise's continuation runs.
        if (event === 'finish') this.#finished = true;
        resolve();
      };
      const onFail = (): void => {
        cleanup();
        // 'error' and 'close' run our own listeners first (added in the constructor).
        reject(this.#failure ?? new PullSinkError(this.#node, 'closed before it took every extent'));
      };
      const onAbort = (): void => {
        cleanup();
        reject(this.#signal?.reason);
      };
      this.#sink.once(event, onEvent);
      this.#sink.once('error', onFail);
      this.#sink.once('close', onFail);
      this.#signal?.addEventListener('abort', onAbort, { once: true });
      if (this.#signal?.aborted) onAbort();
    });
  }
}
