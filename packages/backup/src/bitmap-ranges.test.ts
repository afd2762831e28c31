import { expectedCount, granuleRanges } from './bitmap-ranges.js';

describe('bitmap ranges', () => {
  const g = 65536;

  it('widens ranges to whole granules, cuts them at the end and merges neighbours', () => {
    expect(granuleRanges([{ start: 70000, end: 70001 }], g, 10 * g)).toEqual([{ start: g, end: 2 * g }]);
    expect(granuleRanges([{ start: 9 * g + 1, end: 11 * g }], g, 10 * g - 512)).toEqual([{ start: 9 * g, end: 10 * g - 512 }]);
    expect(
      granuleRanges(
        [
          { start: 3 * g, end: 4 * g },
          { start: 0, end: g + 1 },
          { start: 2 * g, end: 3 * g },
        ],
        g,
        10 * g,
      ),
    ).toEqual([{ start: 0, end: 4 * g }]);
    expect(granuleRanges([{ start: 5 * g, end: 5 * g }], g, 10 * g)).toEqual([]);
  });

  it('counts dirty bytes as QEMU does: whole granules, a partial last one included', () => {
    expect(expectedCount([{ start: 0, end: 1 }], g, 10 * g)).toBe(g);
    // QEMU counts the partial granule at the end of a drive as a whole one.
    expect(expectedCount([{ start: 9 * g, end: 10 * g - 512 }], g, 10 * g - 512)).toBe(g);
    expect(expectedCount([{ start: 0, end: 10 * g }], g, 10 * g)).toBe(10 * g);
  });
});
