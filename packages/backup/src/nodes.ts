import { open } from 'node:fs/promises';

import { createQcow2Image, UnsupportedQcow2LayoutError } from '@qmpkit/image-tools';

import { BlockdevCreateError, BlockDriverUnavailableError } from './errors.js';
import type { BlockdevCreateOptions, BlockdevOptions, JobInfo } from './qapi.js';
import { execute, listenEvents, record } from './qmp.js';
import type { BackupQmp, CallOptions } from './qmp.js';

// Block nodes added at run time: backup targets for `blockdev-backup`, and any node a caller
// describes with QAPI's BlockdevOptions (a qcow2 image over a blkdebug filter, ...).

/** What QEMU 7.2 .. 11 say when blockdev-add names a driver the build lacks. */
const UNKNOWN_DRIVER = /Unknown driver '([^']+)'|'driver' does not accept value '([^']+)'/;

/**
 * `blockdev-add`. A driver the QEMU build lacks (distributions drop `blkdebug`, `nbd`, ...)
 * is reported as `BlockDriverUnavailableError` naming it; other refusals are the client's
 * `QmpCommandError` as QEMU sent them.
 */
export async function addNode(qmp: BackupQmp, options: BlockdevOptions, call: CallOptions = {}): Promise<void> {
  try {
    await execute(qmp, 'blockdev-add', options, call);
  } catch (error) {
    const match = UNKNOWN_DRIVER.exec(error instanceof Error ? error.message : '');
    const driver = match?.[1] ?? match?.[2];
    if (driver !== undefined) throw new BlockDriverUnavailableError(driver, { cause: error });
    throw error;
  }
}

/** `blockdev-del` of a node added with `addNode` (it must not be in use, e.g. by a job). */
export async function removeNode(qmp: BackupQmp, nodeName: string, call: CallOptions = {}): Promise<void> {
  await execute(qmp, 'blockdev-del', { 'node-name': nodeName }, call);
}

function withDeadline(call: CallOptions): { signal?: AbortSignal } {
  const signals: AbortSignal[] = [];
  if (call.signal) signals.push(call.signal);
  if (call.timeout !== undefined) signals.push(AbortSignal.timeout(call.timeout));
  if (signals.length === 0) return {};
  return { signal: signals.length === 1 ? (signals[0] as AbortSignal) : AbortSignal.any(signals) };
}

/**
 * Run a `blockdev-create` job to its end: QEMU creates the image, the job concludes, its error
 * (if any) is read from `query-jobs`, and the job is dismissed (blockdev-create jobs wait for
 * `job-dismiss`). Resolves once QEMU has forgotten the job; a failed job throws
 * `BlockdevCreateError` with QEMU's reason. `timeout` covers the whole job.
 */
export async function runBlockdevCreate(
  qmp: BackupQmp,
  jobId: string,
  options: BlockdevCreateOptions,
  call: CallOptions = {},
): Promise<void> {
  const limit = withDeadline(call);
  // Our own listener, opened before the command: the job's JOB_STATUS_CHANGE events reach it
  // whatever else reads the connection's events.
  const listener = listenEvents(qmp, ['JOB_STATUS_CHANGE'], (e) => record(e.data)['id'] === jobId);
  let qemuError: string | undefined;
  try {
    await execute(qmp, 'blockdev-create', { 'job-id': jobId, options }, limit);
    let concluded = false;
    for (;;) {
      const event = await listener.wait(limit);
      const status = record(event.data)['status'];
      if (status === 'concluded' && !concluded) {
        concluded = true;
        const jobs = await execute<JobInfo[]>(qmp, 'query-jobs', undefined, limit);
        qemuError = jobs.find((j) => j.id === jobId)?.error;
        await execute(qmp, 'job-dismiss', { id: jobId }, limit);
      }
      if (status === 'null') break;
    }
  } finally {
    listener.close();
  }
  if (qemuError !== undefined) throw new BlockdevCreateError(jobId, qemuError);
}

export interface TargetNodeOptions {
  /** node-name of the format node that `blockdev-backup` will name as `target`. */
  nodeName: string;
  /** Image file; QEMU must be able to open it under this path. */
  filename: string;
  /** Virtual size in bytes (a backup target has the source's size). */
  size: number;
  /** Image format (default qcow2). */
  format?: 'qcow2' | 'raw';
  /** qcow2 cluster size in bytes (default 64 KiB). */
  clusterSize?: number;
  /**
   * Who writes the empty image. 'in-process' (default): this process writes the bytes
   * `qemu-img create` would, refusing an existing file, then QEMU opens it with one
   * `blockdev-add`. 'blockdev-create': QEMU creates the file and the format with two
   * blockdev-create jobs (file node `<nodeName>-file`), as QEMU's iotests do; for a QEMU whose
   * files this process cannot reach. Like QEMU, it truncates an existing file.
   */
  create?: 'in-process' | 'blockdev-create';
}

/**
 * A new, empty image added as a block node, ready to be a `blockdev-backup` target. On a
 * failure after the image was written, the file is left for the caller to remove.
 */
export async function createTargetNode(qmp: BackupQmp, options: TargetNodeOptions, call: CallOptions = {}): Promise<void> {
  const format = options.format ?? 'qcow2';
  if (!Number.isSafeInteger(options.size) || options.size < 0) {
    throw new RangeError(`target size must be a non-negative integer number of bytes, got ${options.size}`);
  }
  if (options.create === 'blockdev-create') {
    await createThroughQemu(qmp, options, format, call);
    return;
  }
  if (format === 'qcow2') {
    try {
      await createQcow2Image(
        options.filename,
        { size: options.size, ...(options.clusterSize === undefined ? {} : { clusterSize: options.clusterSize }) },
        call,
      );
    } catch (error) {
      // A layout the in-process writer leaves to QEMU (nothing was written): let QEMU create it.
      if (!UnsupportedQcow2LayoutError.isInstance(error)) throw error;
      await createThroughQemu(qmp, options, format, call);
      return;
    }
  } else {
    // A sparse raw file: 'wx' refuses an existing file like createQcow2Image does.
    const handle = await open(options.filename, 'wx');
    try {
      await handle.truncate(options.size);
    } finally {
      await handle.close();
    }
  }
  await addNode(qmp, { driver: format, 'node-name': options.nodeName, file: { driver: 'file', filename: options.filename } }, call);
}

/** The image made by QEMU: a file (blockdev-create), its node, the format on it (blockdev-create), its node. */
async function createThroughQemu(
  qmp: BackupQmp,
  options: TargetNodeOptions,
  format: 'qcow2' | 'raw',
  call: CallOptions,
): Promise<void> {
  const fileNode = `${options.nodeName}-file`;
  // raw has no blockdev-create of its own: the file is created with the full size instead.
  const fileSize = format === 'raw' ? options.size : 0;
  await runBlockdevCreate(qmp, `${options.nodeName}-create-file`, { driver: 'file', filename: options.filename, size: fileSize }, call);
  await addNode(qmp, { driver: 'file', 'node-name': fileNode, filename: options.filename }, call);
  if (format === 'qcow2') {
    await runBlockdevCreate(
      qmp,
      `${options.nodeName}-create-format`,
      {
        driver: 'qcow2',
        file: fileNode,
        size: options.size,
        ...(options.clusterSize === undefined ? {} : { 'cluster-size': options.clusterSize }),
      },
      call,
    );
  }
  await addNode(qmp, { driver: format, 'node-name': options.nodeName, file: fileNode }, call);
}
