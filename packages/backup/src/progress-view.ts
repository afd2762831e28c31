// How the CLI shows the progress of a run's jobs: a bar on a terminal (cli-progress), JSON
// lines for programs, or nothing. Every view is fed the chain's onProgress reports (one per
// job, with its drive) and sums them over the drives of the run.
import cliProgress from 'cli-progress';

import type { JobProgress } from './job.js';

export type ProgressReport = JobProgress & { node: string };

/** The run's progress over all its drives, with the rate and time left from recent reports. */
export interface ProgressTotals {
  current: number;
  total: number;
  /** 0..100 */
  percent: number;
  /** Bytes per second over the last few seconds (0 until two reports are apart in time). */
  bytesPerSecond: number;
  /** Seconds left at that rate (undefined while the rate is unknown). */
  etaSeconds: number | undefined;
  /** Every job has sent its final report. */
  done: boolean;
  nodes: string[];
}

/** A sliding window of (time, bytes done) samples: the rate is taken over the last `windowMs`. */
export class ProgressMeter {
  readonly #latest = new Map<string, ProgressReport>();
  readonly #samples: Array<{ at: number; current: number }> = [];
  readonly #windowMs: number;
  readonly #now: () => number;

  constructor(options: { windowMs?: number; now?: () => number } = {}) {
    this.#windowMs = options.windowMs ?? 5000;
    this.#now = options.now ?? (() => performance.now());
  }

  update(report: ProgressReport): ProgressTotals {
    this.#latest.set(report.node, report);
    let current = 0;
    let total = 0;
    for (const r of this.#latest.values()) {
      current += r.current;
      total += r.total;
    }
    const at = this.#now();
    this.#samples.push({ at, current });
    while (this.#samples.length > 2 && at - (this.#samples[0]?.at ?? at) > this.#windowMs) this.#samples.shift();
    const first = this.#samples[0] as { at: number; current: number };
    const seconds = (at - first.at) / 1000;
    const bytesPerSecond = seconds > 0 ? Math.max(0, (current - first.current) / seconds) : 0;
    const left = Math.max(0, total - current);
    const done = [...this.#latest.values()].every((r) => r.final === true);
    return {
      current,
      total,
      percent: total > 0 ? Math.min(100, (100 * current) / total) : done ? 100 : 0,
      bytesPerSecond,
      etaSeconds: done || left === 0 ? 0 : bytesPerSecond > 0 ? left / bytesPerSecond : undefined,
      done,
      nodes: [...this.#latest.keys()],
    };
  }
}

export interface ProgressView {
  update(report: ProgressReport): void;
  /** The run is over: leave the terminal clean (the bar is kept with its last state). */
  stop(): void;
}

/** Bytes as the bar shows them: B, KiB, MiB, GiB with one decimal. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit] as string}`;
}

function formatEta(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds)) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (x: number): string => String(x).padStart(2, '0');
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${pad(m)}:${pad(s % 60)}`;
}

/**
 * A one-line bar on a terminal: percent, bytes done of total, rate, time left, the drives. On
 * a stream that is not a terminal (`--progress bar` into a pipe) it writes a line a second.
 */
export class BarView implements ProgressView {
  readonly #meter = new ProgressMeter();
  readonly #bar: cliProgress.SingleBar;
  #started = false;

  constructor(stream: NodeJS.WritableStream = process.stderr) {
    const tty = (stream as { isTTY?: boolean }).isTTY === true;
    this.#bar = new cliProgress.SingleBar(
      {
        stream,
        noTTYOutput: !tty,
        notTTYSchedule: 1000,
        // The CLI handles SIGINT/SIGTERM itself (cancel the job, undo the run).
        gracefulExit: false,
        format: '[{bar}] {percentage}% | {done} / {size} | {rate} | ETA {etaText} | {nodes}',
        barsize: 30,
        hideCursor: false,
        clearOnComplete: false,
        // Rate and ETA are the meter's (over the last seconds), not cli-progress' own estimate.
        etaBuffer: 1,
        fps: 10,
      },
      cliProgress.Presets.shades_classic,
    );
  }

  update(report: ProgressReport): void {
    const t = this.#meter.update(report);
    const payload = {
      done: formatBytes(t.current),
      size: formatBytes(t.total),
      rate: `${formatBytes(Math.round(t.bytesPerSecond))}/s`,
      etaText: formatEta(t.etaSeconds),
      nodes: t.nodes.join(', '),
    };
    const total = Math.max(1, t.total);
    if (!this.#started) {
      this.#bar.start(total, Math.min(t.current, total), payload);
      this.#started = true;
    } else {
      this.#bar.setTotal(total);
      this.#bar.update(Math.min(t.current, total), payload);
    }
    // The last report is drawn at once (cli-progress otherwise draws at its frame rate).
    if (t.done) this.#bar.render();
  }

  stop(): void {
    if (this.#started) this.#bar.stop();
    this.#started = false;
  }
}

/** One JSON object per line: `{"progress": {...}}` with the run's totals and the report that changed them. */
export class JsonLinesView implements ProgressView {
  readonly #meter = new ProgressMeter();
  readonly #stream: NodeJS.WritableStream;

  constructor(stream: NodeJS.WritableStream = process.stderr) {
    this.#stream = stream;
  }

  update(report: ProgressReport): void {
    const t = this.#meter.update(report);
    const line = {
      progress: {
        node: report.node,
        job: report.id,
        status: report.status,
        current: report.current,
        total: report.total,
        final: report.final === true,
        run: {
          current: t.current,
          total: t.total,
          percent: Math.round(t.percent * 10) / 10,
          bytesPerSecond: Math.round(t.bytesPerSecond),
          etaSeconds: t.etaSeconds === undefined ? null : Math.round(t.etaSeconds * 10) / 10,
          done: t.done,
        },
      },
    };
    this.#stream.write(`${JSON.stringify(line)}\n`);
  }

  stop(): void {}
}

export class NoProgressView implements ProgressView {
  update(): void {}
  stop(): void {}
}
