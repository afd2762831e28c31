// The CLI's progress views, fed as the chain feeds them: the meter's sums, rate and ETA on a
// controlled clock, the bar as cli-progress draws it on a terminal, and the JSON lines.
import { Writable } from 'node:stream';

import { BarView, JsonLinesView, ProgressMeter, formatBytes } from './progress-view.js';
import type { ProgressReport } from './progress-view.js';

const MiB = 1048576;

function report(node: string, current: number, total: number, final = false): ProgressReport {
  return { id: `job-${node}`, node, status: final ? 'concluded' : 'running', current, total, ...(final ? { final } : {}) };
}

/** A stream that says it is a terminal and keeps what is written to it. */
function terminal(): Writable & { text: () => string; isTTY: boolean; columns: number } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _encoding, done) {
      chunks.push(chunk.toString());
      done();
    },
  }) as Writable & { text: () => string; isTTY: boolean; columns: number; cursorTo: () => boolean; clearLine: () => boolean };
  stream.isTTY = true;
  stream.columns = 200;
  stream.cursorTo = () => true;
  stream.clearLine = () => true;
  stream.text = () => chunks.join('');
  return stream;
}

describe('ProgressMeter', () => {
  it('sums the drives, and takes rate and ETA from the last reports', () => {
    let now = 0;
    const meter = new ProgressMeter({ now: () => now });
    expect(meter.update(report('drive0', 0, 64 * MiB))).toMatchObject({ current: 0, total: 64 * MiB, bytesPerSecond: 0, etaSeconds: undefined });
    now = 1000;
    const t = meter.update(report('drive1', 16 * MiB, 64 * MiB));
    expect(t).toMatchObject({ current: 16 * MiB, total: 128 * MiB, percent: 12.5, bytesPerSecond: 16 * MiB, done: false, nodes: ['drive0', 'drive1'] });
    expect(t.etaSeconds).toBeCloseTo(7, 5);
    now = 2000;
    meter.update(report('drive0', 64 * MiB, 64 * MiB, true));
    now = 2500;
    const end = meter.update(report('drive1', 64 * MiB, 64 * MiB, true));
    expect(end).toMatchObject({ current: 128 * MiB, total: 128 * MiB, percent: 100, etaSeconds: 0, done: true });
  });

  it('forgets samples older than its window', () => {
    let now = 0;
    const meter = new ProgressMeter({ now: () => now, windowMs: 1000 });
    meter.update(report('d', 0, 100 * MiB));
    now = 10_000;
    meter.update(report('d', 10 * MiB, 100 * MiB));
    now = 10_500;
    meter.update(report('d', 20 * MiB, 100 * MiB));
    now = 11_000;
    // 10 MiB/s since t=10 s, not 2 MiB/s since t=0.
    expect(meter.update(report('d', 30 * MiB, 100 * MiB)).bytesPerSecond).toBeCloseTo(20 * MiB, -3);
  });
});

describe('BarView', () => {
  it('draws percent, bytes, rate and ETA on a terminal, ending at 100 %', async () => {
    const stream = terminal();
    const bar = new BarView(stream);
    bar.update(report('drive0', 0, 256 * MiB));
    await new Promise((r) => setTimeout(r, 150));
    bar.update(report('drive0', 64 * MiB, 256 * MiB));
    await new Promise((r) => setTimeout(r, 150));
    bar.update(report('drive0', 256 * MiB, 256 * MiB, true));
    bar.stop();
    const text = stream.text();
    expect(text).toMatch(/ 25% \| 64\.0 MiB \/ 256\.0 MiB \| [\d.]+ (MiB|GiB)\/s \| ETA \d\d:\d\d \| drive0/);
    expect(text).toMatch(/100% \| 256\.0 MiB \/ 256\.0 MiB \| .* \| ETA 00:00 \| drive0/);
  });

  it('writes whole lines where the stream is not a terminal', () => {
    const stream = terminal();
    stream.isTTY = false;
    const bar = new BarView(stream);
    bar.update(report('drive0', MiB, 2 * MiB));
    bar.update(report('drive0', 2 * MiB, 2 * MiB, true));
    bar.stop();
    const lines = stream.text().split('\n').filter(Boolean);
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.at(-1)).toMatch(/100% \| 2\.0 MiB \/ 2\.0 MiB/);
    expect(stream.text()).not.toMatch(/[{}]|\r|\x1b/);
  });
});

describe('JsonLinesView', () => {
  it('writes one JSON object per report, with the run totals', () => {
    const stream = terminal();
    const view = new JsonLinesView(stream);
    view.update(report('drive0', MiB, 4 * MiB));
    view.update(report('drive0', 4 * MiB, 4 * MiB, true));
    const lines = stream.text().trimEnd().split('\n').map((l) => JSON.parse(l) as { progress: Record<string, unknown> });
    expect(lines).toHaveLength(2);
    expect(lines[0]?.progress).toMatchObject({ node: 'drive0', job: 'job-drive0', current: MiB, total: 4 * MiB, final: false, run: { percent: 25, done: false } });
    expect(lines[1]?.progress).toMatchObject({ final: true, run: { current: 4 * MiB, total: 4 * MiB, percent: 100, etaSeconds: 0, done: true } });
  });
});

describe('formatBytes', () => {
  it('uses binary units', () => {
    expect([formatBytes(512), formatBytes(65536), formatBytes(3 * MiB + MiB / 2), formatBytes(5 * 1024 * MiB)]).toEqual(['512 B', '64.0 KiB', '3.5 MiB', '5.0 GiB']);
  });
});
