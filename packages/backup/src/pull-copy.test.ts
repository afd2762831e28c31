import fc from 'fast-check';
import { ExtentFlag } from '@qmpkit/nbd';
import type { NbdExtent } from '@qmpkit/nbd';
import { alignSpans, planSegments } from './pull-copy.js';
import type { ByteSpan, CopySegment } from './pull-copy.js';

const K = 1024;
const C = 64 * K;

describe('alignSpans', () => {
  it('widens to whole clusters, clips to the size, merges what touches', () => {
    expect(alignSpans([{ start: 100, end: 200 }], C, 10 * C)).toEqual([{ start: 0, end: C }]);
    expect(alignSpans([{ start: C - 1, end: C + 1 }], C, 10 * C)).toEqual([{ start: 0, end: 2 * C }]);
    // Neighbours after widening become one.
    expect(alignSpans([{ start: 0, end: 512 }, { start: C + 512, end: C + 1024 }], C, 10 * C)).toEqual([{ start: 0, end: 2 * C }]);
    // The last cluster of a drive whose size is not a multiple of the cluster size.
    expect(alignSpans([{ start: 10 * C + 512, end: 10 * C + 1024 }], C, 10 * C + 4096)).toEqual([{ start: 10 * C, end: 10 * C + 4096 }]);
    expect(alignSpans([{ start: 20 * C, end: 21 * C }], C, 10 * C)).toEqual([]);
  });
});

describe('planSegments', () => {
  const data = (offset: number, length: number): NbdExtent => ({ offset, length, flags: 0 });
  const zero = (offset: number, length: number): NbdExtent => ({ offset, length, flags: ExtentFlag.ZERO | ExtentFlag.HOLE });

  it('makes a cluster zero only when all of it reads as zeroes, as a backup job decides', () => {
    const allocation = [data(0, C + 4 * K), zero(C + 4 * K, 3 * C - 4 * K), data(4 * C, C)];
    expect(planSegments([{ start: 0, end: 5 * C }], allocation, C, 5 * C, { zeroes: true })).toEqual([
      { offset: 0, length: 2 * C, zero: false },
      { offset: 2 * C, length: 2 * C, zero: true },
      { offset: 4 * C, length: C, zero: false },
    ]);
    // A full leaves the zero clusters out.
    expect(planSegments([{ start: 0, end: 5 * C }], allocation, C, 5 * C, { zeroes: false })).toEqual([
      { offset: 0, length: 2 * C, zero: false },
      { offset: 4 * C, length: C, zero: false },
    ]);
  });

  it('joins zero extents of different flags before deciding', () => {
    const allocation = [{ offset: 0, length: C / 2, flags: ExtentFlag.ZERO }, { offset: C / 2, length: C / 2, flags: ExtentFlag.ZERO | ExtentFlag.HOLE }];
    expect(planSegments([{ start: 0, end: C }], allocation, C, C, { zeroes: true })).toEqual([{ offset: 0, length: C, zero: true }]);
  });

  it('keeps only what the spans cover', () => {
    const allocation = [zero(0, 10 * C)];
    expect(planSegments([{ start: C, end: 2 * C }, { start: 5 * C, end: 7 * C }], allocation, C, 10 * C, { zeroes: true })).toEqual([
      { offset: C, length: C, zero: true },
      { offset: 5 * C, length: 2 * C, zero: true },
    ]);
  });

  // Any spans, any allocation map: the segments tile the aligned spans exactly, in order, on
  // cluster boundaries, and a cluster is zero exactly when the map says all of it reads as zeroes.
  it('tiles the spans and decides every cluster as the map says (property)', () => {
    const clusters = 24;
    const unit = 512;
    const arb = fc.record({
      spans: fc.array(fc.tuple(fc.nat(clusters * 8), fc.integer({ min: 1, max: 40 })), { maxLength: 6 }),
      flags: fc.array(fc.constantFrom(0, ExtentFlag.ZERO, ExtentFlag.ZERO | ExtentFlag.HOLE, ExtentFlag.HOLE), { minLength: clusters * 8, maxLength: clusters * 8 }),
      tail: fc.constantFrom(0, 512, 3 * 512),
    });
    const cluster = 8 * unit;
    fc.assert(
      fc.property(arb, ({ spans, flags, tail }) => {
        const size = clusters * cluster - (tail === 0 ? 0 : cluster - tail);
        const allocation: NbdExtent[] = [];
        flags.forEach((f, i) => {
          if (i * unit < size) allocation.push({ offset: i * unit, length: Math.min(unit, size - i * unit), flags: f });
        });
        const raw: ByteSpan[] = spans.map(([s, n]) => ({ start: s * unit, end: (s + n) * unit })).sort((a, b) => a.start - b.start);
        const aligned = alignSpans(raw, cluster, size);
        const segments: CopySegment[] = planSegments(aligned, allocation, cluster, size, { zeroes: true });
        // Tiled exactly, in order.
        const covered: ByteSpan[] = [];
        for (const s of segments) {
          const last = covered[covered.length - 1];
          if (last && last.end === s.offset) last.end += s.length;
          else covered.push({ start: s.offset, end: s.offset + s.length });
        }
        expect(covered).toEqual(aligned);
        for (const s of segments) {
          expect(s.offset % cluster).toBe(0);
          expect((s.offset + s.length) % cluster === 0 || s.offset + s.length === size).toBe(true);
          for (let c = s.offset; c < s.offset + s.length; c += cluster) {
            const units = flags.slice(c / unit, Math.min(size, c + cluster) / unit);
            expect(units.every((f) => (f & ExtentFlag.ZERO) !== 0)).toBe(s.zero);
          }
        }
      }),
    );
  });
});
