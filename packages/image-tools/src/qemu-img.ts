import {
  booleanArgument,
  cacheArgument,
  checkCallOptions,
  checkOptionsObject,
  fileArgument,
  imageArguments,
  optionString,
  sizeArgument,
  stringArgument,
  wordArgument,
} from './arguments.js';
import type { CacheMode, ImageRef, OptionMap } from './arguments.js';
import { ImageToolsArgumentError, QemuImgError } from './errors.js';
import type { ToolFailureReason } from './errors.js';
import type {
  CheckResult,
  CompareResult,
  ImageCheck,
  ImageInfo,
  MapEntry,
  QemuImgVersion,
} from './qemu-img-types.js';
import { runProcess } from './run-process.js';
import type { CallOptions, ProcessResult } from './run-process.js';
import type { Size } from './size.js';

export interface QemuImgOptions {
  /** Path of qemu-img. Default: `$QEMU_IMG` at the time of each call, else `qemu-img` on PATH. */
  binary?: string;
}

export interface CreateOptions extends CallOptions {
  /** Image format (`-f`), e.g. 'qcow2' or 'raw'. */
  format: string;
  /** Virtual size; may be omitted when a backing file gives it. */
  size?: Size;
  /** Backing file (`-b`), stored in the image as given (relative names resolve against the image). */
  backingFile?: string;
  /** Format of the backing file (`-F`); QEMU 7.2 wants it whenever a backing file is given. */
  backingFormat?: string;
  /** Format options (`-o`), e.g. `{ cluster_size: '128k', lazy_refcounts: true }`. */
  options?: OptionMap;
  /** `-u`: do not open the backing file (it may not exist yet). */
  unsafe?: boolean;
}

export interface InfoOptions extends CallOptions {
  format?: string;
  /** `--backing-chain`: return one entry per image of the chain, top first. */
  backingChain?: boolean;
  /** `-U`: open without taking locks (the image may be in use by a running QEMU). */
  forceShare?: boolean;
}

export interface CheckOptions extends CallOptions {
  format?: string;
  /** `-r leaks` or `-r all`. */
  repair?: 'leaks' | 'all';
  forceShare?: boolean;
}

export interface CompareOptions extends CallOptions {
  /** Format of the first image (`-f`). */
  formatA?: string;
  /** Format of the second image (`-F`). */
  formatB?: string;
  /** `-s`: also fail on different size or allocation. */
  strict?: boolean;
  forceShare?: boolean;
}

export interface RebaseOptions extends CallOptions {
  /** New backing file; `null` or '' removes the backing file (the image becomes standalone). */
  backingFile: string | null;
  backingFormat?: string;
  /** Format of the image being rebased (`-f`). */
  format?: string;
  /** `-u`: only rewrite the backing file name, do not compare or copy data. */
  unsafe?: boolean;
  cache?: CacheMode;
}

export interface CommitOptions extends CallOptions {
  format?: string;
  /** `-b`: commit down to this image instead of the direct backing file. */
  base?: string;
  /** `-d`: leave the top image's content as it is (do not empty it). */
  drop?: boolean;
  cache?: CacheMode;
  /** `-r`: bytes per second. */
  rateLimit?: Size;
}

export interface ConvertOptions extends CallOptions {
  /** Source format (`-f`). */
  format?: string;
  /** Target format (`-O`). */
  outputFormat?: string;
  /** Target format options (`-o`). */
  options?: OptionMap;
  /** `-c`: compress the target. */
  compress?: boolean;
  /** `-B`: backing file of the target. */
  backingFile?: string;
  /** `-F`: format of that backing file. */
  backingFormat?: string;
  /** `-S`: zero run length that makes the target sparse (0: fully allocate). */
  sparseSize?: Size;
  /** `-n`: the target exists; do not create it. */
  skipCreate?: boolean;
  /** `--target-is-zero` (needs `skipCreate`). */
  targetIsZero?: boolean;
  /** `--bitmaps`: copy persistent bitmaps. */
  bitmaps?: boolean;
  /** `-t`: target cache mode. */
  cache?: CacheMode;
  /** `-T`: source cache mode. */
  sourceCache?: CacheMode;
  forceShare?: boolean;
}

export interface ResizeOptions extends CallOptions {
  format?: string;
  /** `--shrink`: needed to make an image smaller. */
  shrink?: boolean;
  /** `--preallocation=` for the new part: off, metadata, falloc, full. */
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
}

export interface MapOptions extends CallOptions {
  format?: string;
  /** `--start-offset` */
  start?: Size;
  /** `--max-length` */
  maxLength?: Size;
  forceShare?: boolean;
}

/** One `qemu-img bitmap` action; several run in order on the same bitmap. */
export type BitmapAction =
  | { action: 'add'; granularity?: Size; disabled?: boolean }
  | { action: 'remove' }
  | { action: 'clear' }
  | { action: 'enable' }
  | { action: 'disable' }
  /** Merge bitmap `source` into this one; from `sourceFile` (with `sourceFormat`) instead of the same image. */
  | { action: 'merge'; source: string; sourceFile?: string; sourceFormat?: string };

export interface BitmapOptions extends CallOptions {
  format?: string;
}

/**
 * Typed wrapper of qemu-img. Every method spawns qemu-img once, directly (no shell), and checks
 * its arguments before spawning.
 */
export class QemuImg {
  readonly #binary: string | undefined;

  constructor(options: QemuImgOptions = {}) {
    if (options.binary !== undefined) stringArgument(options.binary, 'binary');
    this.#binary = options.binary;
  }

  /** The binary a call would run now. */
  get binary(): string {
    return this.#binary ?? (process.env['QEMU_IMG'] || 'qemu-img');
  }

  /**
   * Run qemu-img with arbitrary arguments and return its output; throws QemuImgError on a
   * non-zero exit. Arguments are passed as they are: prefer the typed methods.
   */
  async run(argv: readonly string[], options?: CallOptions): Promise<{ stdout: string; stderr: string }> {
    checkOptionsObject(options);
    if (!Array.isArray(argv) || argv.length === 0) {
      throw new ImageToolsArgumentError('argv', argv, 'must be a non-empty array of strings');
    }
    argv.forEach((arg, i) => {
      if (typeof arg !== 'string' || arg.includes('\0')) {
        throw new ImageToolsArgumentError(`argv[${i}]`, arg, 'must be a string without NUL');
      }
    });
    const result = await this.#exec(argv, checkCallOptions(options));
    return { stdout: result.stdout, stderr: result.stderr };
  }

  async create(file: string, options: CreateOptions): Promise<void> {
    if (typeof options !== 'object' || options === null) {
      throw new ImageToolsArgumentError('options', options, 'must be an object with at least a format');
    }
    const argv = ['create', '-q', '-f', wordArgument(options.format, 'format')];
    if (options.backingFile !== undefined) argv.push('-b', stringArgument(options.backingFile, 'backingFile'));
    if (options.backingFormat !== undefined) {
      if (options.backingFile === undefined) {
        throw new ImageToolsArgumentError('backingFormat', options.backingFormat, 'needs backingFile');
      }
      argv.push('-F', wordArgument(options.backingFormat, 'backingFormat'));
    }
    if (booleanArgument(options.unsafe, 'unsafe')) argv.push('-u');
    if (options.options !== undefined) argv.push('-o', optionString(options.options, 'options'));
    argv.push(fileArgument(file));
    if (options.size !== undefined) argv.push(sizeArgument(options.size, 'size'));
    else if (options.backingFile === undefined) {
      throw new ImageToolsArgumentError('size', undefined, 'is required without a backing file');
    }
    await this.#exec(argv, checkCallOptions(options));
  }

  info(file: ImageRef, options: InfoOptions & { backingChain: true }): Promise<ImageInfo[]>;
  info(file: ImageRef, options?: InfoOptions & { backingChain?: false }): Promise<ImageInfo>;
  info(file: ImageRef, options?: InfoOptions): Promise<ImageInfo | ImageInfo[]>;
  async info(file: ImageRef, options: InfoOptions = {}): Promise<ImageInfo | ImageInfo[]> {
    checkOptionsObject(options);
    const image = imageArguments(file, options.format);
    const argv = ['info', '--output=json', ...image.flags];
    const chain = booleanArgument(options.backingChain, 'backingChain');
    if (chain) argv.push('--backing-chain');
    if (booleanArgument(options.forceShare, 'forceShare')) argv.push('-U');
    argv.push(image.positional);
    const result = await this.#exec(argv, checkCallOptions(options));
    const parsed = parseJson(result);
    if (chain !== Array.isArray(parsed) || typeof parsed !== 'object' || parsed === null) {
      throw toolError(result, 'output', 'qemu-img info printed JSON of an unexpected shape');
    }
    return parsed as ImageInfo | ImageInfo[];
  }

  /**
   * `qemu-img check`. Corruptions (exit 2) and leaks (exit 3) are results, not errors: the
   * report says what was found. An incomplete check (exit 1) or a format without checks (63) throws.
   */
  async check(file: ImageRef, options: CheckOptions = {}): Promise<CheckResult> {
    checkOptionsObject(options);
    const image = imageArguments(file, options.format);
    const argv = ['check', '--output=json', ...image.flags];
    if (options.repair !== undefined) {
      if (options.repair !== 'leaks' && options.repair !== 'all') {
        throw new ImageToolsArgumentError('repair', options.repair, "must be 'leaks' or 'all'");
      }
      argv.push('-r', options.repair);
    }
    if (booleanArgument(options.forceShare, 'forceShare')) argv.push('-U');
    argv.push(image.positional);
    const result = await this.#spawn(argv, checkCallOptions(options));
    const code = result.exitCode;
    if (result.failure !== undefined || (code !== 0 && code !== 2 && code !== 3)) {
      const what =
        code === 63 ? 'the image format does not support checks' : code === 1 ? 'the check could not complete' : undefined;
      throw toolError(result, result.failure?.reason ?? 'exit', what);
    }
    const report = parseJson(result);
    if (typeof report !== 'object' || report === null || Array.isArray(report)) {
      throw toolError(result, 'output', 'qemu-img check printed JSON of an unexpected shape');
    }
    return {
      status: code === 0 ? 'clean' : code === 2 ? 'corrupted' : 'leaked',
      exitCode: code,
      report: report as ImageCheck,
    };
  }

  /**
   * `qemu-img compare`: exit 0 gives `{ identical: true }`, exit 1 `{ identical: false }` with
   * qemu-img's description of the first difference; any other outcome (missing image, read
   * error, ...) throws QemuImgError.
   */
  async compare(fileA: string, fileB: string, options: CompareOptions = {}): Promise<CompareResult> {
    checkOptionsObject(options);
    const argv = ['compare'];
    if (options.formatA !== undefined) argv.push('-f', wordArgument(options.formatA, 'formatA'));
    if (options.formatB !== undefined) argv.push('-F', wordArgument(options.formatB, 'formatB'));
    if (booleanArgument(options.strict, 'strict')) argv.push('-s');
    if (booleanArgument(options.forceShare, 'forceShare')) argv.push('-U');
    argv.push(fileArgument(fileA, 'fileA'), fileArgument(fileB, 'fileB'));
    const result = await this.#spawn(argv, checkCallOptions(options));
    if (result.failure === undefined && (result.exitCode === 0 || result.exitCode === 1)) {
      const message = (result.stdout.trim() || result.stderr.trim()).split('\n')[0] ?? '';
      return { identical: result.exitCode === 0, message };
    }
    throw toolError(result, result.failure?.reason ?? 'exit', 'the images could not be compared');
  }

  async rebase(file: ImageRef, options: RebaseOptions): Promise<void> {
    if (typeof options !== 'object' || options === null) {
      throw new ImageToolsArgumentError('options', options, 'must be an object with backingFile');
    }
    const image = imageArguments(file, options.format);
    const argv = ['rebase', '-q', ...image.flags];
    if (booleanArgument(options.unsafe, 'unsafe')) argv.push('-u');
    if (options.cache !== undefined) argv.push('-t', cacheArgument(options.cache, 'cache'));
    const backing = options.backingFile;
    if (backing === null || backing === '') argv.push('-b', '');
    else if (backing === undefined) {
      throw new ImageToolsArgumentError('backingFile', backing, "is required (null or '' removes the backing file)");
    } else argv.push('-b', stringArgument(backing, 'backingFile'));
    if (options.backingFormat !== undefined) argv.push('-F', wordArgument(options.backingFormat, 'backingFormat'));
    argv.push(image.positional);
    await this.#exec(argv, checkCallOptions(options));
  }

  async commit(file: ImageRef, options: CommitOptions = {}): Promise<void> {
    checkOptionsObject(options);
    const image = imageArguments(file, options.format);
    const argv = ['commit', '-q', ...image.flags];
    if (options.cache !== undefined) argv.push('-t', cacheArgument(options.cache, 'cache'));
    if (options.base !== undefined) argv.push('-b', stringArgument(options.base, 'base'));
    if (options.rateLimit !== undefined) argv.push('-r', sizeArgument(options.rateLimit, 'rateLimit'));
    if (booleanArgument(options.drop, 'drop')) argv.push('-d');
    argv.push(image.positional);
    await this.#exec(argv, checkCallOptions(options));
  }

  /** Copy one image, or several concatenated, into `target`. */
  async convert(source: string | readonly string[], target: string, options: ConvertOptions = {}): Promise<void> {
    checkOptionsObject(options);
    const sources = typeof source === 'string' ? [source] : source;
    if (!Array.isArray(sources) || sources.length === 0) {
      throw new ImageToolsArgumentError('source', source, 'must be a file name or a non-empty array of them');
    }
    const argv = ['convert', '-q'];
    if (options.format !== undefined) argv.push('-f', wordArgument(options.format, 'format'));
    if (options.outputFormat !== undefined) argv.push('-O', wordArgument(options.outputFormat, 'outputFormat'));
    if (options.options !== undefined) argv.push('-o', optionString(options.options, 'options'));
    if (booleanArgument(options.compress, 'compress')) argv.push('-c');
    if (options.backingFile !== undefined) argv.push('-B', stringArgument(options.backingFile, 'backingFile'));
    if (options.backingFormat !== undefined) {
      if (options.backingFile === undefined) {
        throw new ImageToolsArgumentError('backingFormat', options.backingFormat, 'needs backingFile');
      }
      argv.push('-F', wordArgument(options.backingFormat, 'backingFormat'));
    }
    if (options.sparseSize !== undefined) argv.push('-S', sizeArgument(options.sparseSize, 'sparseSize'));
    const skipCreate = booleanArgument(options.skipCreate, 'skipCreate');
    if (skipCreate) argv.push('-n');
    if (booleanArgument(options.targetIsZero, 'targetIsZero')) {
      if (!skipCreate) throw new ImageToolsArgumentError('targetIsZero', true, 'needs skipCreate');
      argv.push('--target-is-zero');
    }
    if (booleanArgument(options.bitmaps, 'bitmaps')) argv.push('--bitmaps');
    if (options.cache !== undefined) argv.push('-t', cacheArgument(options.cache, 'cache'));
    if (options.sourceCache !== undefined) argv.push('-T', cacheArgument(options.sourceCache, 'sourceCache'));
    if (booleanArgument(options.forceShare, 'forceShare')) argv.push('-U');
    sources.forEach((s, i) => argv.push(fileArgument(s, `source[${i}]`)));
    argv.push(fileArgument(target, 'target'));
    await this.#exec(argv, checkCallOptions(options));
  }

  /**
   * Set the virtual size. `size` is absolute, or relative as a string starting with '+' or '-'
   * (e.g. '+1M'); shrinking needs `shrink: true`, as qemu-img requires.
   */
  async resize(file: ImageRef, size: Size, options: ResizeOptions = {}): Promise<void> {
    checkOptionsObject(options);
    let sizeText: string;
    if (typeof size === 'string' && (size.startsWith('+') || size.startsWith('-'))) {
      sizeText = size[0] + sizeArgument(size.slice(1), 'size');
    } else {
      sizeText = sizeArgument(size, 'size');
    }
    const image = imageArguments(file, options.format);
    const argv = ['resize', '-q', ...image.flags];
    if (options.preallocation !== undefined) {
      if (!['off', 'metadata', 'falloc', 'full'].includes(options.preallocation)) {
        throw new ImageToolsArgumentError('preallocation', options.preallocation, 'must be off, metadata, falloc or full');
      }
      argv.push(`--preallocation=${options.preallocation}`);
    }
    if (booleanArgument(options.shrink, 'shrink')) argv.push('--shrink');
    // qemu-img takes the size off the end of argv before option parsing, so '-1M' is safe here.
    argv.push(image.positional, sizeText);
    await this.#exec(argv, checkCallOptions(options));
  }

  /** `qemu-img map --output=json`: the image's extents and where their data comes from. */
  async map(file: ImageRef, options: MapOptions = {}): Promise<MapEntry[]> {
    checkOptionsObject(options);
    const image = imageArguments(file, options.format);
    const argv = ['map', '--output=json', ...image.flags];
    if (options.start !== undefined) argv.push(`--start-offset=${sizeArgument(options.start, 'start')}`);
    if (options.maxLength !== undefined) argv.push(`--max-length=${sizeArgument(options.maxLength, 'maxLength')}`);
    if (booleanArgument(options.forceShare, 'forceShare')) argv.push('-U');
    argv.push(image.positional);
    const result = await this.#exec(argv, checkCallOptions(options));
    const parsed = parseJson(result);
    if (!Array.isArray(parsed)) throw toolError(result, 'output', 'qemu-img map did not print a JSON array');
    return parsed as MapEntry[];
  }

  /**
   * `qemu-img bitmap`: run one or more actions, in order, on persistent bitmap `name` of a qcow2
   * image that no QEMU has open. Example: `bitmap(f, 'b0', [{ action: 'add', granularity: '64k' }])`.
   */
  async bitmap(
    file: ImageRef,
    name: string,
    actions: BitmapAction | readonly BitmapAction[],
    options: BitmapOptions = {},
  ): Promise<void> {
    const list: readonly BitmapAction[] = Array.isArray(actions) ? actions : [actions as BitmapAction];
    if (list.length === 0) throw new ImageToolsArgumentError('actions', actions, 'must hold at least one action');
    const image = imageArguments(file, options.format);
    const argv = ['bitmap', ...image.flags];
    let granularity: string | undefined;
    let sourceFile: string | undefined;
    let sourceFormat: string | undefined;
    list.forEach((entry, i) => {
      const where = `actions[${i}]`;
      if (typeof entry !== 'object' || entry === null) {
        throw new ImageToolsArgumentError(where, entry, 'must be an action object');
      }
      switch (entry.action) {
        case 'add':
          argv.push('--add');
          if (entry.granularity !== undefined) {
            // qemu-img takes one -g for the whole call.
            const g = sizeArgument(entry.granularity, `${where}.granularity`);
            if (granularity !== undefined && granularity !== g) {
              throw new ImageToolsArgumentError(`${where}.granularity`, entry.granularity, 'differs from an earlier add');
            }
            granularity = g;
          }
          if (booleanArgument(entry.disabled, `${where}.disabled`)) argv.push('--disable');
          break;
        case 'remove':
        case 'clear':
        case 'enable':
        case 'disable':
          argv.push(`--${entry.action}`);
          break;
        case 'merge': {
          argv.push('--merge', stringArgument(entry.source, `${where}.source`));
          // qemu-img takes one -b/-F for the whole call.
          if (entry.sourceFile !== undefined) {
            const f = stringArgument(entry.sourceFile, `${where}.sourceFile`);
            if (sourceFile !== undefined && sourceFile !== f) {
              throw new ImageToolsArgumentError(`${where}.sourceFile`, f, 'differs from an earlier merge');
            }
            sourceFile = f;
          }
          if (entry.sourceFormat !== undefined) {
            if (entry.sourceFile === undefined) {
              throw new ImageToolsArgumentError(`${where}.sourceFormat`, entry.sourceFormat, 'needs sourceFile');
            }
            sourceFormat = wordArgument(entry.sourceFormat, `${where}.sourceFormat`);
          }
          break;
        }
        default:
          throw new ImageToolsArgumentError(
            `${where}.action`,
            (entry as { action?: unknown }).action,
            'must be add, remove, clear, enable, disable or merge',
          );
      }
    });
    if (granularity !== undefined) argv.push('-g', granularity);
    if (sourceFile !== undefined) argv.push('-b', sourceFile);
    if (sourceFormat !== undefined) argv.push('-F', sourceFormat);
    // Both the file and the bitmap name are positional; a name starting with '-' cannot be escaped.
    const bitmapName = stringArgument(name, 'name');
    if (bitmapName.startsWith('-')) {
      throw new ImageToolsArgumentError('name', name, "a bitmap name starting with '-' would be read as an option");
    }
    argv.push(image.positional, bitmapName);
    await this.#exec(argv, checkCallOptions(options));
  }

  /** The version of the qemu-img binary. */
  async version(options?: CallOptions): Promise<QemuImgVersion> {
    checkOptionsObject(options);
    const result = await this.#exec(['--version'], checkCallOptions(options));
    const text = result.stdout.split('\n')[0]?.trim() ?? '';
    const m = /version (\d+)\.(\d+)\.(\d+)\S*(?: \(([^)]*)\))?/.exec(text);
    if (!m) throw toolError(result, 'output', 'qemu-img --version printed no version');
    const parsed: QemuImgVersion = {
      major: Number(m[1]),
      minor: Number(m[2]),
      micro: Number(m[3]),
      version: `${m[1]}.${m[2]}.${m[3]}`,
      text,
    };
    if (m[4] !== undefined) parsed.package = m[4];
    return parsed;
  }

  #spawn(argv: readonly string[], options: CallOptions): Promise<ProcessResult> {
    return runProcess(this.binary, argv, options);
  }

  /** Spawn and require exit status 0. */
  async #exec(argv: readonly string[], options: CallOptions): Promise<ProcessResult> {
    const result = await this.#spawn(argv, options);
    if (result.failure !== undefined) throw toolError(result, result.failure.reason);
    if (result.exitCode !== 0) throw toolError(result, 'exit');
    return result;
  }
}

function parseJson(result: ProcessResult): unknown {
  try {
    return JSON.parse(result.stdout) as unknown;
  } catch (cause) {
    throw toolError(result, 'output', 'qemu-img printed invalid JSON', cause);
  }
}

function toolError(result: ProcessResult, reason: ToolFailureReason, what?: string, cause?: unknown): QemuImgError {
  const command = result.argv[0] ?? '';
  const detail =
    result.failure?.message ??
    (reason === 'exit' ? `exit status ${result.exitCode}` : undefined) ??
    'unexpected output';
  const stderr = result.stderr.trim();
  const parts = [`qemu-img ${command} failed`, what, detail].filter((p): p is string => p !== undefined);
  let message = parts.join(': ');
  if (stderr !== '') message += `\n${stderr}`;
  return new QemuImgError(message, {
    binary: result.binary,
    argv: result.argv,
    exitCode: result.exitCode,
    signal: result.signal,
    stdout: result.stdout,
    stderr: result.stderr,
    reason,
    cause: cause ?? result.failure?.cause,
  });
}

/** The shared instance: `$QEMU_IMG` or `qemu-img` on PATH. */
export const qemuImg = new QemuImg();
