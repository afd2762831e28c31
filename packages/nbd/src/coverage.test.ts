import fc from 'fast-check';
import { Coverage } from './coverage.js';

test('in-order ranges join; overlaps are refused and change nothing', () => {
  const c = new Coverage();
  expect(c.add(0, 10)).toBe(true);
  expect(c.add(10, 20)).toBe(true);
  expect(c.add(15, 16)).toBe(false);
  expect(c.add(30, 40)).toBe(true);
  expect(c.add(19, 31)).toBe(false);
  expect(c.add(20, 30)).toBe(true);
  expect(c.covered).toBe(40);
  expect(c.add(0, 1)).toBe(false);
});

test('matches a byte map for any order of ranges (property)', () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 60 }), fc.integer({ min: 1, max: 12 })), { maxLength: 30 }), (ranges) => {
      const c = new Coverage();
      const map = new Uint8Array(80);
      for (const [start, length] of ranges) {
        const overlaps = map.subarray(start, start + length).some((b) => b === 1);
        expect(c.add(start, start + length)).toBe(!overlaps);
        if (!overlaps) map.fill(1, start, start + length);
        expect(c.covered).toBe(map.reduce((n, b) => n + b, 0));
      }
    }),
  );
});
