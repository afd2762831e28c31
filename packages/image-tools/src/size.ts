import { ImageToolsArgumentError } from './errors.js';

/** A byte count: a non-negative safe integer, or a QEMU size string such as `'512'`, `'32k'`, `'1M'`. */
export type Size = number | string;

// Binary multiples, as qemu_strtosz() uses for qemu-img and qemu-io (unit 1024).
const SHIFT: Readonly<Record<string, bigint>> = {
  B: 0n,
  K: 10n,
  M: 20n,
  G: 30n,
  T: 40n,
  P: 50n,
  E: 60n,
};

// QEMU parses the sizes it is given into a uint64_t and then rejects anything above INT64_MAX.
const INT64_MAX = (1n << 63n) - 1n;

/*
 * The grammar of QEMU 7.2's do_strtosz(): decimal digits, optionally a '.' and fraction digits,
 * optionally one suffix letter (case-insensitive: b k m g t p e); or '0x' hex digits with an
 * optional suffix but no fraction (QEMU warns that a suffix on hex is deprecated). A non-zero
 * fraction needs a suffix other than B. Leading blanks and '+', which strtoull() would let
 * through, are refused here to keep sizes unambiguous.
 */
const DECIMAL = /^(\d+)(?:\.(\d*))?([bkmgtpe])?$/i;
const HEX = /^0x([0-9a-f]+)([bkmgtpe])?$/i;

function parseSizeExact(text: string, argument: string): bigint {
  const hex = HEX.exec(text);
  let value: bigint;
  if (hex) {
    const digits = hex[1] ?? '';
    const suffix = (hex[2] ?? 'B').toUpperCase();
    value = BigInt(`0x${digits}`) << (SHIFT[suffix] ?? 0n);
  } else {
    const m = DECIMAL.exec(text);
    if (!m) {
      throw new ImageToolsArgumentError(
        argument,
        text,
        'expected a byte count with an optional k/M/G/T/P/E suffix, like 512, 32k or 1M',
      );
    }
    const whole = BigInt(m[1] ?? '0');
    const fractionDigits = m[2] ?? '';
    const suffix = (m[3] ?? 'B').toUpperCase();
    const shift = SHIFT[suffix] ?? 0n;
    value = whole << shift;
    if (fractionDigits !== '') {
      // QEMU turns the strtod() fraction into a 64-bit fixed-point number (a truncating
      // double -> uint64 cast, where 2^64 itself wraps to 0 on x86-64), multiplies it by the unit
      // and rounds half up. Number() parses like strtod and scaling by 2^64 is exact, so this
      // reproduces qemu-img 7.2's results bit for bit (checked against the binary: 1.0005k is
      // 1025, 1.00048828125k is 1025, 0.99999999999999999999k is 0).
      const scaled = Number(`0.${fractionDigits}`) * 2 ** 64;
      const fixed = scaled >= 2 ** 64 ? 0n : BigInt(Math.trunc(scaled));
      if (shift === 0n) {
        if (fixed !== 0n) {
          throw new ImageToolsArgumentError(argument, text, 'a fractional size needs a unit suffix (k, M, G, ...)');
        }
      } else {
        const product = fixed << shift;
        value += (product >> 64n) + ((product >> 63n) & 1n);
      }
    }
  }
  if (value > INT64_MAX) {
    throw new ImageToolsArgumentError(argument, text, 'larger than the 63-bit limit QEMU accepts');
  }
  return value;
}

/**
 * Parse a QEMU size string (or pass through a byte count) as qemu-img and qemu-io would.
 * Returns a JavaScript number; sizes above `Number.MAX_SAFE_INTEGER` throw — use
 * `parseSizeBigInt` for those.
 */
export function parseSize(size: Size | bigint, argument = 'size'): number {
  const value = parseSizeBigInt(size, argument);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ImageToolsArgumentError(argument, size, 'too large for a JavaScript number; use parseSizeBigInt()');
  }
  return Number(value);
}

/** Like `parseSize`, but exact for every size up to 2^63 - 1. */
export function parseSizeBigInt(size: Size | bigint, argument = 'size'): bigint {
  if (typeof size === 'string') return parseSizeExact(size, argument);
  if (typeof size === 'bigint') {
    if (size < 0n || size > INT64_MAX) {
      throw new ImageToolsArgumentError(argument, size, 'must be between 0 and 2^63 - 1');
    }
    return size;
  }
  if (typeof size === 'number') {
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new ImageToolsArgumentError(argument, size, 'must be a non-negative safe integer');
    }
    return BigInt(size);
  }
  throw new ImageToolsArgumentError(argument, size, 'must be a number or a size string');
}

const UNITS: ReadonlyArray<readonly [string, bigint]> = [
  ['E', 60n],
  ['P', 50n],
  ['T', 40n],
  ['G', 30n],
  ['M', 20n],
  ['k', 10n],
];

/**
 * Format a byte count in the largest unit that divides it exactly: 512 -> '512',
 * 32768 -> '32k', 33521664 -> '32736k', 1048576 -> '1M', 0 -> '0'. The result is what
 * `parseSize` maps back to the same number, and what qemu-img and qemu-io accept.
 */
export function formatSize(size: number | bigint): string {
  const value = parseSizeBigInt(size, 'size');
  if (value === 0n) return '0';
  for (const [suffix, shift] of UNITS) {
    const unit = 1n << shift;
    if (value % unit === 0n) return `${value / unit}${suffix}`;
  }
  return value.toString();
}
