// Who decides that two images are identical. The reference asks `qemu-img compare`. The SDK's
// own reader (`compareImages` of @qmpkit/image-tools) gives the same verdict without a
// process, but it is part of what the suite tests: a reader bug that misreads both images
// alike would pass every comparison. So by default both decide and must agree; qemu-img is run
// here directly, with none of the SDK's code between the suite and its exit status.
import { execFile } from 'node:child_process';

import { compareImages, QemuImg } from '@qmpkit/image-tools';

import { ComparisonError, EngineDisagreementError } from './errors.js';

export type CompareEngine = 'in-process' | 'qemu-img' | 'both';
export const COMPARE_ENGINES: readonly CompareEngine[] = ['both', 'in-process', 'qemu-img'];
export const DEFAULT_COMPARE_ENGINE: CompareEngine = 'both';

/** What `qemu-img compare` says: its exit status as a verdict and the first line it printed. */
export interface Verdict {
  identical: boolean;
  message: string;
  /** The engines that decided (two with `both`, which agreed). */
  engines: Array<'in-process' | 'qemu-img'>;
}

export type ImageComparer = (a: string, b: string, signal: AbortSignal) => Promise<Verdict>;

const FORMAT = 'qcow2';

/**
 * `qemu-img compare -f qcow2 -F qcow2 A B` as iotests' compare_images runs it: exit 0 identical,
 * 1 different, anything else an error. It takes the image locks, so an image QEMU still holds
 * open for writing fails the comparison instead of being read while it changes.
 */
export function qemuImgCompare(binary: string, a: string, b: string, signal: AbortSignal): Promise<Verdict> {
  return new Promise((resolve, reject) => {
    execFile(binary, ['compare', '-f', FORMAT, '-F', FORMAT, a, b], { signal, encoding: 'utf8' }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : undefined;
      const firstLine = (stdout.trim() || stderr.trim()).split('\n', 1)[0] ?? '';
      if (code === 0 || code === 1) {
        resolve({ identical: code === 0, message: firstLine, engines: ['qemu-img'] });
        return;
      }
      const why = code === undefined ? String(error?.message ?? error) : `exit status ${code}: ${stderr.trim() || stdout.trim()}`;
      reject(new ComparisonError('qemu-img compare', [a, b], why, { cause: error }));
    });
  });
}

/** The comparer `engine` names; `qemuImg` is the binary (path or name on PATH) under test. */
export function makeComparer(engine: CompareEngine, qemuImg: string): ImageComparer {
  // The SDK's reader hands what it cannot read (or an image someone holds open for writing) to
  // qemu-img through the SDK; that is still the SDK's answer, so it counts as 'in-process'.
  const sdkQemuImg = new QemuImg({ binary: qemuImg });
  const inProcess: ImageComparer = async (a, b, signal) => {
    const r = await compareImages(a, b, { formatA: FORMAT, formatB: FORMAT, qemuImg: sdkQemuImg, signal });
    return { identical: r.identical, message: r.message, engines: ['in-process'] };
  };
  const external: ImageComparer = (a, b, signal) => qemuImgCompare(qemuImg, a, b, signal);
  if (engine === 'in-process') return inProcess;
  if (engine === 'qemu-img') return external;
  return async (a, b, signal) => {
    const [ours, theirs] = await Promise.all([inProcess(a, b, signal), external(a, b, signal)]);
    if (ours.identical !== theirs.identical || ours.message !== theirs.message) {
      throw new EngineDisagreementError(`comparison of ${a} with ${b}`, {
        'in-process': ours.message,
        'qemu-img': theirs.message,
      });
    }
    return { identical: ours.identical, message: ours.message, engines: ['in-process', 'qemu-img'] };
  };
}
