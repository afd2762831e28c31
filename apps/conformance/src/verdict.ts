// Who decides that two images are identical, and which clusters a backup holds. The reference
// asks `qemu-img compare` (and `qemu-img map`). Three engines can answer here:
//
// - `sdk`: `compareImages` / `mapImageData` of @qmpkit/image-tools, in this process. Part of
//   what the suite tests: a reader bug that misreads both images alike would pass a comparison.
// - `suite`: the suite's own qcow2 reader (qcow2-reader.ts), in this process, written apart
//   from the SDK and from QEMU and sharing no code with either.
// - `qemu-img`: a `qemu-img compare` / `map` process, run here directly with none of the SDK's
//   code in between. About 35 ms of CPU per call, mostly loading qemu-img's libraries.
//
// The engines chosen must all agree (verdict and first line; for maps, the extents), or the
// case fails with every engine's answer. By default the SDK's reader and the suite's decide:
// two readers that share no code, at no process's cost.
import { execFile } from 'node:child_process';

import { compareImages, mapImageData, QemuImg, type DataExtent } from '@qmpkit/image-tools';

import { ComparisonError, EngineDisagreementError } from './errors.js';
import { compareQcow2, mapQcow2Data, Qcow2ReaderError } from './qcow2-reader.js';

/** One engine that can decide a comparison or a map. */
export type VerdictEngine = 'sdk' | 'suite' | 'qemu-img';
export const VERDICT_ENGINES: readonly VerdictEngine[] = ['sdk', 'suite', 'qemu-img'];

/**
 * Named sets of engines (`--compare-with`): `independent` (the default: the SDK's reader and
 * the suite's own), `both` (the SDK's reader and qemu-img, the default before), `all` (the
 * three), or one engine alone: `in-process` (the SDK's reader), `suite`, `qemu-img`.
 */
export type CompareEngine = 'independent' | 'both' | 'all' | 'in-process' | 'suite' | 'qemu-img';
export const COMPARE_PRESETS: Readonly<Record<CompareEngine, readonly VerdictEngine[]>> = {
  independent: ['sdk', 'suite'],
  both: ['sdk', 'qemu-img'],
  all: ['sdk', 'suite', 'qemu-img'],
  'in-process': ['sdk'],
  suite: ['suite'],
  'qemu-img': ['qemu-img'],
};
export const COMPARE_ENGINES = Object.keys(COMPARE_PRESETS) as CompareEngine[];
export const DEFAULT_COMPARE_ENGINE: CompareEngine = 'independent';

/** A preset or a list of engines, as `runConformance`'s `compareWith` takes it. */
export type CompareWith = CompareEngine | readonly VerdictEngine[];

/** The engines `compareWith` names, each once, in the order sdk, suite, qemu-img; throws on an empty or unknown one. */
export function verdictEngines(compareWith: CompareWith = DEFAULT_COMPARE_ENGINE): VerdictEngine[] {
  const named = typeof compareWith === 'string' ? COMPARE_PRESETS[compareWith] : compareWith;
  if (named === undefined || named.length === 0 || named.some((e) => !VERDICT_ENGINES.includes(e))) {
    throw new TypeError(`compareWith: expected one of ${COMPARE_ENGINES.join(', ')} or a list of ${VERDICT_ENGINES.join(', ')}, got ${JSON.stringify(compareWith)}`);
  }
  return VERDICT_ENGINES.filter((e) => named.includes(e));
}

/** What `qemu-img compare` says: its exit status as a verdict and the first line it printed. */
export interface Verdict {
  identical: boolean;
  message: string;
  /** The engines that decided (all agreed). */
  engines: VerdictEngine[];
}

export type ImageComparer = (a: string, b: string, signal: AbortSignal) => Promise<Verdict>;
/** The data extents of a qcow2 image as `qemu-img map` lists them (merged), decided like comparisons. */
export type ImageMapper = (file: string, signal: AbortSignal) => Promise<DataExtent[]>;

const FORMAT = 'qcow2';
const ENGINE_NAMES: Readonly<Record<VerdictEngine, string>> = {
  sdk: "the SDK's compareImages",
  suite: "the suite's qcow2 reader",
  'qemu-img': 'qemu-img',
};

function runQemuImg(binary: string, args: readonly string[], signal: AbortSignal): Promise<{ code: number | undefined; stdout: string; stderr: string; error: Error | null }> {
  return new Promise((resolve) => {
    execFile(binary, args, { signal, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : undefined;
      resolve({ code, stdout, stderr, error });
    });
  });
}

/**
 * `qemu-img compare -f qcow2 -F qcow2 A B` as iotests' compare_images runs it: exit 0 identical,
 * 1 different, anything else an error. It takes the image locks, so an image QEMU still holds
 * open for writing fails the comparison instead of being read while it changes.
 */
export async function qemuImgCompare(binary: string, a: string, b: string, signal: AbortSignal): Promise<Verdict> {
  const { code, stdout, stderr, error } = await runQemuImg(binary, ['compare', '-f', FORMAT, '-F', FORMAT, a, b], signal);
  const firstLine = (stdout.trim() || stderr.trim()).split('\n', 1)[0] ?? '';
  if (code === 0 || code === 1) return { identical: code === 0, message: firstLine, engines: ['qemu-img'] };
  const why = code === undefined ? String(error?.message ?? error) : `exit status ${code}: ${stderr.trim() || stdout.trim()}`;
  throw new ComparisonError('qemu-img compare', [a, b], why, { cause: error });
}

/** `qemu-img map --output=json -f qcow2 FILE`, its `data: true` entries merged where contiguous at one depth. */
export async function qemuImgMapData(binary: string, file: string, signal: AbortSignal): Promise<DataExtent[]> {
  const { code, stdout, stderr, error } = await runQemuImg(binary, ['map', '--output=json', '-f', FORMAT, file], signal);
  if (code !== 0) {
    throw new ComparisonError('qemu-img map', [file], code === undefined ? String(error?.message ?? error) : `exit status ${code}: ${stderr.trim()}`, { cause: error });
  }
  const extents: DataExtent[] = [];
  for (const e of JSON.parse(stdout) as Array<{ start: number; length: number; depth: number; data: boolean }>) {
    if (!e.data) continue;
    const last = extents[extents.length - 1];
    if (last && last.depth === e.depth && last.start + last.length === e.start) last.length += e.length;
    else extents.push({ start: e.start, length: e.length, depth: e.depth });
  }
  return extents;
}

/** The suite reader's refusals become the comparison's error, like qemu-img's failures. */
async function ownReader<T>(files: readonly string[], fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    if (Qcow2ReaderError.isInstance(error)) throw new ComparisonError(ENGINE_NAMES.suite, files, error.message, { cause: error });
    throw error;
  }
}

/**
 * Runs each engine and returns their answers in engine order. qemu-img's process is started
 * first, so it runs while the in-process engines read.
 */
async function decide<T>(engines: readonly VerdictEngine[], run: (engine: VerdictEngine) => Promise<T>): Promise<T[]> {
  const started = new Map<VerdictEngine, Promise<T>>();
  for (const engine of [...engines].sort((x, y) => Number(y === 'qemu-img') - Number(x === 'qemu-img'))) {
    const answer = run(engine);
    // Awaited below in engine order; a rejection must not go unhandled meanwhile.
    answer.catch(() => undefined);
    started.set(engine, answer);
  }
  return Promise.all(engines.map((engine) => started.get(engine) as Promise<T>));
}

/** The comparer for `engines`; `qemuImg` is the binary (path or name on PATH) under test. */
export function makeComparer(compareWith: CompareWith, qemuImg: string): ImageComparer {
  const engines = verdictEngines(compareWith);
  // The SDK's reader hands what it cannot read (or an image someone holds open for writing) to
  // qemu-img through the SDK; that is still the SDK's answer.
  const sdkQemuImg = new QemuImg({ binary: qemuImg });
  const one = async (engine: VerdictEngine, a: string, b: string, signal: AbortSignal): Promise<{ identical: boolean; message: string }> => {
    if (engine === 'qemu-img') return qemuImgCompare(qemuImg, a, b, signal);
    if (engine === 'suite') return ownReader([a, b], () => compareQcow2(a, b, { signal }));
    return compareImages(a, b, { formatA: FORMAT, formatB: FORMAT, qemuImg: sdkQemuImg, signal });
  };
  return async (a, b, signal) => {
    const answers = await decide(engines, (engine) => one(engine, a, b, signal));
    const [first] = answers;
    if (first === undefined) throw new Error('no verdict engine');
    if (answers.some((r) => r.identical !== first.identical || r.message !== first.message)) {
      throw new EngineDisagreementError(
        `comparison of ${a} with ${b}`,
        Object.fromEntries(engines.map((engine, i) => [engine, `${answers[i]?.identical ? 'identical' : 'different'}: ${answers[i]?.message}`])),
      );
    }
    return { identical: first.identical, message: first.message, engines };
  };
}

/** The mapper for `engines`, decided like the comparisons. */
export function makeMapper(compareWith: CompareWith, qemuImg: string): ImageMapper {
  const engines = verdictEngines(compareWith);
  const sdkQemuImg = new QemuImg({ binary: qemuImg });
  const one = async (engine: VerdictEngine, file: string, signal: AbortSignal): Promise<DataExtent[]> => {
    if (engine === 'qemu-img') return qemuImgMapData(qemuImg, file, signal);
    if (engine === 'suite') return ownReader([file], () => mapQcow2Data(file, { signal }));
    return (await mapImageData(file, { format: FORMAT, qemuImg: sdkQemuImg, signal })).extents;
  };
  return async (file, signal) => {
    const answers = await decide(engines, (engine) => one(engine, file, signal));
    const texts = answers.map((extents) => JSON.stringify(extents.map(({ start, length, depth }) => ({ start, length, depth }))));
    if (texts.some((t) => t !== texts[0])) {
      throw new EngineDisagreementError(`map of ${file}`, Object.fromEntries(engines.map((engine, i) => [engine, texts[i] ?? ''])));
    }
    return answers[0] ?? [];
  };
}
