import { ImageToolsArgumentError } from './errors.js';
import type { CallOptions } from './run-process.js';
import { parseSizeBigInt } from './size.js';
import type { Size } from './size.js';

/** Values of a QEMU option string (`-o key=value,...` or `--image-opts`). */
export type OptionValue = string | number | boolean | bigint;
export type OptionMap = Readonly<Record<string, OptionValue | undefined>>;

/**
 * An image given as `--image-opts` instead of a file name, e.g.
 * `{ imageOpts: { driver: 'qcow2', 'file.driver': 'file', 'file.filename': '/x.qcow2' } }`.
 */
export interface ImageOptsRef {
  imageOpts: OptionMap;
}

/** A file name, or an image described by block driver options. */
export type ImageRef = string | ImageOptsRef;

/**
 * A positional file name argument. Names starting with '-' would be read as options by the
 * tools' getopt, so they are made explicitly relative ('./-x'), which names the same file.
 */
export function fileArgument(value: unknown, argument = 'file'): string {
  const file = stringArgument(value, argument);
  return file.startsWith('-') ? `./${file}` : file;
}

/** A non-empty string without NUL (which cannot pass through argv). */
export function stringArgument(value: unknown, argument: string): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new ImageToolsArgumentError(argument, value, 'must be a non-empty string');
  }
  if (value.includes('\0')) {
    throw new ImageToolsArgumentError(argument, value, 'must not contain a NUL character');
  }
  return value;
}

/** A string given as the value of an option (`-f qcow2`): no leading '-', which could be mistaken for a flag. */
export function wordArgument(value: unknown, argument: string): string {
  const word = stringArgument(value, argument);
  if (!/^[A-Za-z0-9][A-Za-z0-9_.+:-]*$/.test(word)) {
    throw new ImageToolsArgumentError(argument, value, 'must be a plain name (letters, digits, _ . + : -)');
  }
  return word;
}

/** A byte count rendered exactly as decimal bytes for the command line. */
export function sizeArgument(value: unknown, argument: string): string {
  if (typeof value !== 'number' && typeof value !== 'string' && typeof value !== 'bigint') {
    throw new ImageToolsArgumentError(argument, value, 'must be a number or a size string');
  }
  return parseSizeBigInt(value as Size | bigint, argument).toString();
}

/** QEMU cache modes for `-t` / `-T`. */
export type CacheMode = 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';

const CACHE_MODES: ReadonlySet<string> = new Set(['none', 'writeback', 'writethrough', 'directsync', 'unsafe']);

export function cacheArgument(value: unknown, argument: string): CacheMode {
  if (typeof value !== 'string' || !CACHE_MODES.has(value)) {
    throw new ImageToolsArgumentError(argument, value, `must be one of ${[...CACHE_MODES].join(', ')}`);
  }
  return value as CacheMode;
}

/** A pattern byte for `-P`: an integer 0..255. */
export function patternArgument(value: unknown, argument = 'pattern'): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 255) {
    throw new ImageToolsArgumentError(argument, value, 'must be one byte, an integer from 0 to 255');
  }
  return value;
}

export function booleanArgument(value: unknown, argument: string): boolean {
  if (value !== undefined && typeof value !== 'boolean') {
    throw new ImageToolsArgumentError(argument, value, 'must be a boolean');
  }
  return value === true;
}

/** An options parameter must be an object (or omitted); anything else is a caller bug worth naming. */
export function checkOptionsObject(value: unknown, argument = 'options'): void {
  if (value !== undefined && (typeof value !== 'object' || value === null || Array.isArray(value))) {
    throw new ImageToolsArgumentError(argument, value, 'must be an object');
  }
}

/** Check `{ timeout, signal }` so that a bad value fails before anything is spawned. */
export function checkCallOptions(options: CallOptions | undefined): CallOptions {
  if (options === undefined) return {};
  if (typeof options !== 'object' || options === null) {
    throw new ImageToolsArgumentError('options', options, 'must be an object');
  }
  const { timeout, signal } = options;
  if (timeout !== undefined && (typeof timeout !== 'number' || !Number.isFinite(timeout) || timeout < 0)) {
    throw new ImageToolsArgumentError('timeout', timeout, 'must be a non-negative number of milliseconds');
  }
  // Duck-typed: an AbortSignal from another realm (vm context, test environment) fails instanceof.
  if (
    signal !== undefined &&
    (typeof signal !== 'object' ||
      signal === null ||
      typeof (signal as Partial<AbortSignal>).aborted !== 'boolean' ||
      typeof (signal as Partial<AbortSignal>).addEventListener !== 'function')
  ) {
    throw new ImageToolsArgumentError('signal', signal, 'must be an AbortSignal');
  }
  const checked: CallOptions = {};
  if (timeout !== undefined) checked.timeout = timeout;
  if (signal !== undefined) checked.signal = signal;
  return checked;
}

const OPTION_KEY = /^[A-Za-z][A-Za-z0-9_.-]*$/;

/**
 * Render an option map as QEMU's `key=value,key=value` syntax. Commas inside values are doubled,
 * which is QEMU's escape; keys are restricted so they cannot smuggle in another option.
 */
export function optionString(options: unknown, argument: string): string {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new ImageToolsArgumentError(argument, options, 'must be an object of option values');
  }
  const parts: string[] = [];
  for (const [key, raw] of Object.entries(options as Record<string, unknown>)) {
    if (raw === undefined) continue;
    if (!OPTION_KEY.test(key)) {
      throw new ImageToolsArgumentError(`${argument}.${key}`, key, 'option names use letters, digits, _ . -');
    }
    let text: string;
    if (typeof raw === 'string') text = raw;
    else if (typeof raw === 'boolean') text = raw ? 'on' : 'off';
    else if (typeof raw === 'bigint') text = raw.toString();
    else if (typeof raw === 'number' && Number.isFinite(raw)) text = String(raw);
    else throw new ImageToolsArgumentError(`${argument}.${key}`, raw, 'must be a string, number, bigint or boolean');
    if (text.includes('\0')) {
      throw new ImageToolsArgumentError(`${argument}.${key}`, raw, 'must not contain a NUL character');
    }
    parts.push(`${key}=${text.replaceAll(',', ',,')}`);
  }
  if (parts.length === 0) throw new ImageToolsArgumentError(argument, options, 'must hold at least one option');
  return parts.join(',');
}

/** The argv pieces that name one image: `[-f fmt] file` or `--image-opts opts`. */
export function imageArguments(
  image: unknown,
  format: unknown,
  argument = 'file',
): { flags: string[]; positional: string } {
  if (typeof image === 'object' && image !== null && 'imageOpts' in image) {
    if (format !== undefined) {
      throw new ImageToolsArgumentError('format', format, 'cannot be combined with imageOpts (set driver= instead)');
    }
    return { flags: ['--image-opts'], positional: optionString((image as ImageOptsRef).imageOpts, 'imageOpts') };
  }
  const positional = fileArgument(image, argument);
  return { flags: format === undefined ? [] : ['-f', wordArgument(format, 'format')], positional };
}
