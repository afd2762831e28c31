import fc from 'fast-check';

import { ImageToolsArgumentError } from './errors.js';
import { formatSize, parseSize, parseSizeBigInt } from './size.js';

const SUFFIXES = ['', 'k', 'M', 'G', 'T', 'P', 'E'] as const;
const INT64_MAX = (1n << 63n) - 1n;

/** The canonical form: no leading zeros, and the number before a suffix is not a multiple of 1024 (except for E). */
function isCanonical(text: string): boolean {
  const m = /^(0|[1-9]\d*)([kMGTPE]?)$/.exec(text);
  if (!m) return false;
  const digits = BigInt(m[1] ?? '');
  const suffix = m[2] ?? '';
  if (digits === 0n) return suffix === '';
  return suffix === 'E' || digits % 1024n !== 0n;
}

describe('parseSize / formatSize properties', () => {
  it('round-trips every safe integer and formats it canonically', () => {
    fc.assert(
      fc.property(fc.maxSafeNat(), (n) => {
        const text = formatSize(n);
        expect(isCanonical(text)).toBe(true);
        expect(parseSize(text)).toBe(n);
      }),
      { numRuns: 2000 },
    );
  });

  it('round-trips multiples of every unit (where the suffix forms appear)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 6 }), fc.bigInt({ min: 0n, max: (1n << 23n) - 1n }), (unit, k) => {
        const n = k << BigInt(unit * 10);
        if (n > INT64_MAX) return;
        const text = formatSize(n);
        expect(isCanonical(text)).toBe(true);
        expect(parseSizeBigInt(text)).toBe(n);
      }),
      { numRuns: 2000 },
    );
  });

  it('round-trips the whole 63-bit range with bigints', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: INT64_MAX }), (n) => {
        const text = formatSize(n);
        expect(isCanonical(text)).toBe(true);
        expect(parseSizeBigInt(text)).toBe(n);
      }),
      { numRuns: 1000 },
    );
  });

  it('reads every suffix in either case as a binary multiple, up to the int64 limit', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 8191 }),
        fc.integer({ min: 0, max: SUFFIXES.length - 1 }),
        fc.boolean(),
        (k, unit, upper) => {
          const suffix = SUFFIXES[unit] ?? '';
          const text = `${k}${upper ? suffix.toUpperCase() : suffix.toLowerCase()}`;
          const bytes = BigInt(k) << BigInt(unit * 10);
          if (bytes > INT64_MAX) {
            // 8E and up do not fit QEMU's int64 sizes.
            expect(() => parseSizeBigInt(text)).toThrow(ImageToolsArgumentError);
          } else {
            expect(parseSizeBigInt(text)).toBe(bytes);
          }
        },
      ),
    );
  });
});

describe('parseSize examples', () => {
  it.each([
    ['512', 512],
    ['32k', 32 * 1024],
    ['32K', 32 * 1024],
    ['1M', 1024 * 1024],
    ['1m', 1024 * 1024],
    ['32736k', 32736 * 1024],
    ['1G', 2 ** 30],
    ['1b', 1],
    ['1B', 1],
    ['0x10', 16],
    ['0X200', 512],
    ['1.5k', 1536],
    ['1.k', 1024],
    ['1.', 1],
    ['1.0', 1],
    ['1.0005k', 1025],
    ['1.00048828125k', 1025],
    ['1.999999999999k', 2048],
    ['0.99999999999999999999k', 0],
    ['1.5e', undefined],
  ])('%s -> %s', (text, bytes) => {
    if (bytes === undefined) {
      expect(parseSizeBigInt(text)).toBe(3n << 59n);
    } else {
      expect(parseSize(text)).toBe(bytes);
    }
  });

  it.each(['', ' 1k', '+1k', '-1', '1.5', '.5k', '1e3', '0x', '0x1.5k', '1kb', '1 k', 'k', '8E', '1Z'])(
    'rejects %j',
    (text) => {
      expect(() => parseSizeBigInt(text)).toThrow(ImageToolsArgumentError);
    },
  );

  it('rejects numbers that are not non-negative safe integers', () => {
    for (const bad of [-1, 1.5, Number.NaN, Infinity, 2 ** 53]) {
      expect(() => parseSize(bad)).toThrow(ImageToolsArgumentError);
    }
  });

  it('points large values to the bigint variant', () => {
    expect(() => parseSize('1E')).toThrow(/parseSizeBigInt/);
    expect(parseSizeBigInt('1E')).toBe(1n << 60n);
    expect(parseSizeBigInt('7E')).toBe(7n << 60n);
  });

  it('names the argument in the error', () => {
    try {
      parseSize('lots', 'length');
      throw new Error('parseSize accepted "lots"');
    } catch (error) {
      expect(ImageToolsArgumentError.isInstance(error)).toBe(true);
      expect((error as ImageToolsArgumentError).argument).toBe('length');
      expect((error as ImageToolsArgumentError).value).toBe('lots');
    }
  });
});

describe('formatSize examples', () => {
  it.each([
    [0, '0'],
    [1, '1'],
    [512, '512'],
    [1024, '1k'],
    [32768, '32k'],
    [33521664, '32736k'],
    [1048576, '1M'],
    [1536, '1536'],
    [2 ** 30 * 3, '3G'],
  ])('%d -> %s', (n, text) => {
    expect(formatSize(n)).toBe(text);
  });

  it('uses E for the largest sizes', () => {
    expect(formatSize(INT64_MAX - ((1n << 60n) - 1n))).toBe('7E');
    expect(formatSize(INT64_MAX)).toBe(INT64_MAX.toString());
  });
});
