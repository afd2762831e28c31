import {
  booleanArgument,
  cacheArgument,
  checkCallOptions,
  checkOptionsObject,
  imageArguments,
  patternArgument,
  sizeArgument,
  stringArgument,
} from './arguments.js';
import type { CacheMode, ImageRef } from './arguments.js';
import { ImageToolsArgumentError, QemuIoError } from './errors.js';
import type { ToolFailureReason } from './errors.js';
import { runProcess } from './run-process.js';
import type { CallOptions, ProcessResult } from './run-process.js';
import { formatSize } from './size.js';
import type { Size } from './size.js';

export interface QemuIoOptions {
  /** Path of qemu-io. Default: `$QEMU_IO` at the time of each call, else `qemu-io` on PATH. */
  binary?: string;
}

export interface QemuIoRunOptions extends CallOptions {
  /** Image format (`-f`). Without it qemu-io probes, and refuses writes to sector 0 of raw images. */
  format?: string;
  /**
   * `--image-opts`: `file` is a block driver option string such as
   * `'driver=qcow2,file.filename=/x.qcow2'`, passed as it is. (An image given as
   * `{ imageOpts: {...} }` sets this by itself.)
   */
  imageOpts?: boolean;
  /** Cache mode (`-t`). */
  cache?: CacheMode;
  /** `-r`: open read-only. */
  readOnly?: boolean;
  /** `-U`: open without taking locks (the image may be in use by a running QEMU). */
  forceShare?: boolean;
}

export interface QemuIoResult {
  /** Arguments passed to qemu-io. */
  argv: readonly string[];
  stdout: string;
  stderr: string;
}

/** A byte range; sizes are numbers or QEMU size strings ('512', '32k', '1M'). */
export interface IoRange {
  offset: Size;
  length: Size;
}

export interface PatternRange extends IoRange {
  /** The byte written (`write -P`) or expected (`read -P`), 0..255. */
  pattern: number;
}

export interface WriteRequest extends IoRange {
  /** Byte to fill with; qemu-io's default is 0xcd. Not allowed with `zero`. */
  pattern?: number;
  /** `write -z`: write zeroes without a data buffer. */
  zero?: boolean;
  /** `write -u` (with `zero`): allow the range to be unmapped. */
  unmap?: boolean;
  /** `write -c`: compressed write (cluster-aligned ranges only). */
  compressed?: boolean;
  /** `write -f`: Force Unit Access. */
  fua?: boolean;
}

export interface ReadRequest extends IoRange {
  /** `read -P`: fail unless every byte equals this. */
  pattern?: number;
}

/*
 * Lines by which qemu-io reports that a command failed. Since QEMU 4.2 it also exits 1, but
 * older builds (and `-c` sequences where a later command succeeds) exit 0, so the text decides;
 * through HMP (`qemu-io DRIVE "CMD"`) the text is all there is, partly in the HMP reply and
 * partly on QEMU's stdout/stderr. Hex dumps of `read -v` are skipped: their ASCII column can
 * say anything. Warnings (`qemu-io: warning: ...`) are not failures.
 */
const FAILURE_LINES: readonly RegExp[] = [
  /\bfailed\b/i, // "write failed: ...", "read failed", "Pattern verification failed", "discard failed"
  /^Parsing error\b/,
  /is not a valid pattern byte/,
  /: invalid option -- /,
  /^bad argument count\b/,
  /: option requires an argument -- /,
  /\bcan be specified at the same time\b/, // "Only one of -z, -P, and -s can be specified at the same time"
  /^pattern verification range exceeds\b/,
  /^too large\b/,
  /^no file open\b/,
  /\bis not a sector-aligned value\b/, // "1 is not a sector-aligned value for 'offset'" (write -b)
  /^Argument '.*' exceeds maximum size\b/, // aio_write 0 1E
  /\brequires -\w+ to be specified\b/, // "-u requires -z to be specified"
  /^command "[^"]*" not found/,
  /\bnot sector aligned\b/,
  /\bout of range\b/i,
  /\bcannot\b|\bcan't\b|\bcould not\b/i,
  /^qemu-io: (?!warning:)/,
  /\bnon-numeric\b/,
  /^Error:/,
];
const HEXDUMP_LINE = /^[0-9a-f]{8}: {2}/;

/** The lines of qemu-io output that report a failure (exported for tools that run qemu-io via HMP). */
export function findQemuIoFailures(output: string): string[] {
  const failures: string[] = [];
  for (const raw of output.split('\n')) {
    const line = raw.trimEnd();
    if (line === '' || HEXDUMP_LINE.test(line)) continue;
    if (FAILURE_LINES.some((re) => re.test(line))) failures.push(line);
  }
  return failures;
}

function imageOptsString(file: unknown, format: unknown): { flags: string[]; positional: string } {
  if (typeof file !== 'string') {
    throw new ImageToolsArgumentError('file', file, 'must be an option string when imageOpts is set');
  }
  if (format !== undefined) {
    throw new ImageToolsArgumentError('format', format, 'cannot be combined with imageOpts (set driver= instead)');
  }
  const text = stringArgument(file, 'file');
  if (!/^[A-Za-z]/.test(text) || !text.includes('=')) {
    throw new ImageToolsArgumentError('file', file, "must look like 'driver=qcow2,file.filename=...' with imageOpts");
  }
  return { flags: ['--image-opts'], positional: text };
}

function hexByte(value: number): string {
  return `0x${value.toString(16).padStart(2, '0')}`;
}

function rangeArguments(request: unknown, what: string): [string, string] {
  if (typeof request !== 'object' || request === null) {
    throw new ImageToolsArgumentError(what, request, 'must be an object with offset and length');
  }
  const { offset, length } = request as Partial<IoRange>;
  // Re-rendered canonically, so a size string with a fraction or hex never reaches qemu-io as typed.
  return [formatSize(BigInt(sizeArgument(offset, 'offset'))), formatSize(BigInt(sizeArgument(length, 'length')))];
}

/**
 * Typed wrapper of qemu-io. Each call spawns qemu-io once with one `-c` per command.
 */
export class QemuIo {
  readonly #binary: string | undefined;

  constructor(options: QemuIoOptions = {}) {
    if (options.binary !== undefined) stringArgument(options.binary, 'binary');
    this.#binary = options.binary;
  }

  /** The binary a call would run now. */
  get binary(): string {
    return this.#binary ?? (process.env['QEMU_IO'] || 'qemu-io');
  }

  /**
   * Run qemu-io commands (`['write -P 0x41 0 512', 'read -P 0x41 0 512']`) on one image, in
   * order, in one process. Throws QemuIoError when qemu-io exits non-zero or any command
   * reports a failure.
   */
  async run(file: ImageRef, commands: string | readonly string[], options: QemuIoRunOptions = {}): Promise<QemuIoResult> {
    checkOptionsObject(options);
    const list: readonly unknown[] = typeof commands === 'string' ? [commands] : commands;
    if (!Array.isArray(list) || list.length === 0) {
      throw new ImageToolsArgumentError('commands', commands, 'must be a command string or a non-empty array of them');
    }
    const image = booleanArgument(options.imageOpts, 'imageOpts')
      ? imageOptsString(file, options.format)
      : imageArguments(file, options.format);
    const argv = [...image.flags];
    if (options.cache !== undefined) {
      argv.push('-t', cacheArgument(options.cache, 'cache'));
    }
    if (booleanArgument(options.readOnly, 'readOnly')) argv.push('-r');
    if (booleanArgument(options.forceShare, 'forceShare')) argv.push('-U');
    list.forEach((command, i) => {
      const text = stringArgument(command, `commands[${i}]`);
      if (/[\r\n]/.test(text)) {
        throw new ImageToolsArgumentError(`commands[${i}]`, command, 'must be a single line');
      }
      argv.push('-c', text);
    });
    argv.push(image.positional);

    const result = await runProcess(this.binary, argv, checkCallOptions(options));
    if (result.failure !== undefined) throw ioError(result, result.failure.reason, []);
    const failures = findQemuIoFailures(`${result.stdout}\n${result.stderr}`);
    if (result.exitCode !== 0 || failures.length > 0) {
      throw ioError(result, result.exitCode !== 0 ? 'exit' : 'output', failures);
    }
    return { argv: result.argv, stdout: result.stdout, stderr: result.stderr };
  }

  /** `write [-P pattern | -z] offset length`. */
  async write(file: ImageRef, request: WriteRequest, options?: QemuIoRunOptions): Promise<QemuIoResult> {
    return this.run(file, [QemuIo.writeCommand(request)], options);
  }

  /** `read offset length` (with `pattern`: fails unless the data matches). */
  async read(file: ImageRef, request: ReadRequest, options?: QemuIoRunOptions): Promise<QemuIoResult> {
    return this.run(file, [QemuIo.readCommand(request)], options);
  }

  /** `read -P pattern offset length`: fails unless every byte of the range is `pattern`. */
  async verify(file: ImageRef, request: PatternRange, options?: QemuIoRunOptions): Promise<QemuIoResult> {
    patternArgument(request?.pattern);
    return this.run(file, [QemuIo.readCommand(request)], options);
  }

  /** `discard offset length`. */
  async discard(file: ImageRef, request: IoRange, options?: QemuIoRunOptions): Promise<QemuIoResult> {
    return this.run(file, [QemuIo.discardCommand(request)], options);
  }

  /** `flush`. */
  async flush(file: ImageRef, options?: QemuIoRunOptions): Promise<QemuIoResult> {
    return this.run(file, ['flush'], options);
  }

  /** Build a validated `write` command string (also usable with HMP's qemu-io). */
  static writeCommand(request: WriteRequest): string {
    const [offset, length] = rangeArguments(request, 'write');
    const flags: string[] = [];
    const zero = booleanArgument(request.zero, 'zero');
    if (zero) {
      if (request.pattern !== undefined) {
        throw new ImageToolsArgumentError('pattern', request.pattern, 'cannot be combined with zero');
      }
      if (booleanArgument(request.compressed, 'compressed')) {
        throw new ImageToolsArgumentError('compressed', true, 'cannot be combined with zero');
      }
      flags.push('-z');
      if (booleanArgument(request.unmap, 'unmap')) flags.push('-u');
    } else {
      if (booleanArgument(request.unmap, 'unmap')) throw new ImageToolsArgumentError('unmap', true, 'needs zero');
      if (booleanArgument(request.compressed, 'compressed')) flags.push('-c');
      if (request.pattern !== undefined) flags.push('-P', hexByte(patternArgument(request.pattern)));
    }
    if (booleanArgument(request.fua, 'fua')) flags.push('-f');
    return ['write', ...flags, offset, length].join(' ');
  }

  /** Build a validated `read` command string. */
  static readCommand(request: ReadRequest): string {
    const [offset, length] = rangeArguments(request, 'read');
    const flags = request.pattern === undefined ? [] : ['-P', hexByte(patternArgument(request.pattern))];
    return ['read', ...flags, offset, length].join(' ');
  }

  /** Build a validated `discard` command string. */
  static discardCommand(request: IoRange): string {
    const [offset, length] = rangeArguments(request, 'discard');
    return `discard ${offset} ${length}`;
  }
}

function ioError(result: ProcessResult, reason: ToolFailureReason, failures: string[]): QemuIoError {
  const commands = result.argv.filter((_, i) => result.argv[i - 1] === '-c');
  const detail =
    result.failure?.message ??
    (failures.length > 0 ? failures.join('; ') : undefined) ??
    (result.stderr.trim() || `exit status ${result.exitCode}`);
  return new QemuIoError(`qemu-io failed (${commands.join(' | ')}): ${detail}`, {
    binary: result.binary,
    argv: result.argv,
    exitCode: result.exitCode,
    signal: result.signal,
    stdout: result.stdout,
    stderr: result.stderr,
    reason,
    failures,
    cause: result.failure?.cause,
  });
}

/** The shared instance: `$QEMU_IO` or `qemu-io` on PATH. */
export const qemuIo = new QemuIo();
