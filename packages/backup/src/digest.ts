// Digests of backup images: one streaming pass over the file, so a chain can be checked
// without the drive it came from.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { CallOptions } from './qmp.js';

export const DIGEST_ALGORITHM = 'sha256';

export interface FileDigest {
  /** `sha256:<hex>` */
  digest: string;
  /** Bytes read (the file's size). */
  size: number;
}

/**
 * Hash a whole file in one sequential read (1 MiB chunks). The abort signal stops the read;
 * it then rejects with the signal's reason.
 */
export async function digestFile(file: string, options: CallOptions = {}): Promise<FileDigest> {
  const hash = createHash(DIGEST_ALGORITHM);
  let size = 0;
  const streamOptions: { highWaterMark: number; signal?: AbortSignal } = { highWaterMark: 1 << 20 };
  if (options.signal) streamOptions.signal = options.signal;
  for await (const chunk of createReadStream(file, streamOptions)) {
    const buffer = chunk as Buffer;
    hash.update(buffer);
    size += buffer.length;
  }
  return { digest: `${DIGEST_ALGORITHM}:${hash.digest('hex')}`, size };
}

/** What is wrong with a recorded file on disk, cheaply (no read): missing, or not the recorded size. */
export async function fileProblem(file: string, expectedSize: number | undefined): Promise<'missing' | 'size' | undefined> {
  try {
    const s = await stat(file);
    if (expectedSize !== undefined && s.size !== expectedSize) return 'size';
    return undefined;
  } catch {
    return 'missing';
  }
}
