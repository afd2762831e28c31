// `pullBackup()`: one pull-mode backup of one drive, streamed to a caller's Writable instead of
// a chain's files, for callers who store backups elsewhere. The same fleecing point, export and
// copy as a chain's pull-mode run (fleecing.ts, pull-copy.ts), with the bitmap given by the
// caller; everything it sets up is taken down again whatever the end.
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { resolve } from 'node:path';
import type { Writable } from 'node:stream';

import { NbdClient, qemuDirtyBitmapContext, BASE_ALLOCATION } from '@qmpkit/nbd';

import { getBitmap, resolveNode } from './bitmaps.js';
import { BackupAbortedError, BackupJobError } from './errors.js';
import { chooseFleecing, fleecingNames, makeScratch, pullCapabilities, qomPathOf, setUpFleecing, watchFleecing } from './fleecing.js';
import type { FleecingChoice, FleecingDrive, FleecingMethod } from './fleecing.js';
import type { JobProgress } from './job.js';
import { CopyProgress, SinkWriter, copySegments, planCopy } from './pull-copy.js';
import type { BlockInfo } from './qapi.js';
import { execute } from './qmp.js';
import type { BackupQmp, CallOptions } from './qmp.js';
import { RunDeadline } from './run-deadline.js';
import { UndoLog } from './undo-log.js';

/** Target cluster size extents are widened to by default: a qcow2 image's default, what a push job copies per cluster. */
export const DEFAULT_PULL_CLUSTER = 65536;

export interface PullBackupOptions extends CallOptions {
  qmp: BackupQmp;
  /** Device (drive id) or node-name to back up. */
  node: string;
  /**
   * Receives the extents: a Node `Writable` in object mode taking `PullExtent`s in offset order.
   * Its `write()` returning false pauses the reads until 'drain'. It is ended when every extent
   * was written ('finish' means the backup is complete); on a failure it is destroyed without
   * 'finish'.
   */
  sink: Writable;
  /**
   * 'full': everything allocated (no zero extents: what is not sent reads as zeroes).
   * 'incremental': what `bitmap` marks, the bitmap cleared at the point (restored if the backup
   * fails). 'bitmap': what `bitmap` marks, with `bitmapMode`. Default: 'incremental' with a
   * bitmap, else 'full'.
   */
  sync?: 'full' | 'incremental' | 'bitmap';
  /** A dirty bitmap of the drive (for 'full': cleared at the point with bitmapMode 'on-success'). */
  bitmap?: string;
  /** 'on-success' (default): cleared at the point, restored if the backup fails; 'never': left as it is. */
  bitmapMode?: 'on-success' | 'never';
  /** How the point-in-time view is made (default 'auto'; see `FleecingMethod`). */
  fleecing?: FleecingChoice;
  /** Where the run's private directory (temporary image, NBD socket) is made. Default: the system's temporary directory. */
  scratchDir?: string;
  /** Extents are widened to whole clusters of this size, like a push job's copy (default 64 KiB). */
  clusterSize?: number;
  /** Progress as a push job reports it (`current`/`total` bytes; a last report with `final: true`). */
  onProgress?: (progress: JobProgress & { node: string }) => void;
  progressInterval?: number;
}

export interface PullBackupResult {
  node: string;
  sync: 'full' | 'incremental' | 'bitmap';
  fleecing: FleecingMethod;
  /** The drive's size. */
  size: number;
  /** Bytes of data written to the sink. */
  bytes: number;
  /** Bytes sent as zero extents. */
  zeroBytes: number;
  /** What the run went through: the drive's size for a full, the dirty extents widened to clusters otherwise. */
  total: number;
  /** Dirty bytes of the bitmap at the point (a full: the drive's size). */
  dirty: number;
  /** Extents written to the sink. */
  extents: number;
  elapsedMs: number;
  /** Teardown steps that failed after the data was complete (e.g. QEMU went away): what may be left in QEMU. */
  leftovers: string[];
}

function usage(message: string): never {
  throw new RangeError(`pullBackup: ${message}`);
}

/**
 * A pull-mode backup of one drive into `sink`: QEMU exports a point-in-time view of the drive
 * over NBD (its bitmap frozen at the same point), and the dirty extents (everything allocated
 * for a full) are read with several requests in flight and written to the sink. Export,
 * fleecing nodes and temporary image are removed on every path; on failure the bitmap is as
 * if the backup had not run. An `AbortSignal` or `timeout` ends it with `BackupAbortedError`.
 */
export async function pullBackup(options: PullBackupOptions): Promise<PullBackupResult> {
  const started = performance.now();
  const { qmp, node, sink } = options;
  if (typeof node !== 'string' || node === '') usage('node must be a device or node name');
  SinkWriter.check(sink, node);
  const sync = options.sync ?? (options.bitmap !== undefined ? 'incremental' : 'full');
  if (sync !== 'full' && sync !== 'incremental' && sync !== 'bitmap') usage(`sync must be 'full', 'incremental' or 'bitmap', got ${String(sync)}`);
  if (options.bitmapMode !== undefined && options.bitmapMode !== 'on-success' && options.bitmapMode !== 'never') {
    usage(`bitmapMode must be 'on-success' or 'never', got ${String(options.bitmapMode)}`);
  }
  if (options.bitmap !== undefined && (typeof options.bitmap !== 'string' || options.bitmap === '')) usage('bitmap must be a bitmap name');
  if (sync !== 'full' && options.bitmap === undefined) usage(`sync '${sync}' needs a bitmap`);
  if (sync === 'incremental' && options.bitmapMode === 'never') usage("sync 'incremental' clears the bitmap; use sync 'bitmap' with bitmapMode 'never'");
  const cluster = options.clusterSize ?? DEFAULT_PULL_CLUSTER;
  if (!Number.isSafeInteger(cluster) || cluster < 512 || (cluster & (cluster - 1)) !== 0) usage(`clusterSize ${cluster} is not a power of two of at least 512`);
  const reset = options.bitmap !== undefined && options.bitmapMode !== 'never';

  const run = randomUUID();
  const steps = new UndoLog();
  const stop = new RunDeadline(options);
  const signal = stop.signal;
  const call: CallOptions = { signal };
  const writer = new SinkWriter(sink, node, signal);
  const progress = new CopyProgress(options.onProgress, `qmpkit-pull-${run.slice(0, 8)}`, node, options.progressInterval);
  let nbd: NbdClient | undefined;
  try {
    const resolved = await resolveNode(qmp, node, call);
    const nodeName = resolved.nodeName ?? node;
    const size = resolved.info.image?.['virtual-size'];
    if (size === undefined) usage(`drive ${node} reports no size`);
    const caps = await pullCapabilities(qmp, call);
    const blocks = await execute<BlockInfo[]>(qmp, 'query-block', undefined, call);
    const chosen = chooseFleecing(node, nodeName, blocks, caps, options.fleecing ?? 'auto');
    const bitmapInfo = options.bitmap === undefined ? undefined : await getBitmap(qmp, node, options.bitmap, call);
    const scratch = await makeScratch(steps, resolve(options.scratchDir ?? tmpdir()), run);
    const names = fleecingNames(run, 0);
    const d: FleecingDrive = {
      node,
      nodeName,
      size,
      method: chosen.method,
      image: `${scratch.dir}/fleece.${chosen.method === 'snapshot-access' ? 'raw' : 'qcow2'}`,
      tempNode: names.tempNode,
      jobId: `qmpkit-fleece-${run.slice(0, 8)}`,
      exportId: names.exportId,
      exportNode: chosen.method === 'snapshot-access' ? names.accessNode : names.tempNode,
    };
    if (chosen.method === 'snapshot-access') {
      d.qdev = chosen.qdev as string;
      d.qomPath = qomPathOf(d.qdev);
      d.cbwNode = names.cbwNode;
      d.accessNode = names.accessNode;
    }
    if (bitmapInfo && options.bitmap !== undefined) {
      // A frozen copy at the point: the extents to read (not for a full), and what the
      // bitmap gets back if the backup fails (when the point clears it).
      const frozen = sync !== 'full' || reset ? `${options.bitmap.slice(0, 200)}-pull-${run.slice(0, 8)}` : undefined;
      d.bitmap = { name: options.bitmap, reset, granularity: bitmapInfo.granularity, persistent: false };
      if (frozen !== undefined) d.bitmap.frozen = frozen;
    }
    await setUpFleecing(qmp, steps, [d], caps, scratch.socket, call);
    const watch = watchFleecing([d], (error) => stop.abort(error));
    steps.teardownWith('stop watching the fleecing job', async () => watch.disarm());

    const context = sync === 'full' ? undefined : qemuDirtyBitmapContext(d.bitmap?.frozen as string);
    nbd = await NbdClient.connect(scratch.socket, { exportName: d.exportId, metaContexts: [BASE_ALLOCATION, ...(context ? [context] : [])], signal });
    const client = nbd;
    steps.teardownWith('disconnect from the export', () => client.close());
    const plan = await planCopy(client, { bitmapContext: context, cluster, signal });
    progress.start(plan.total);
    const bytes = await copySegments(client, plan.segments, writer, { signal, progress });
    // Every read happened while the view was the point in time.
    watch.check();
    await writer.finish();
    progress.finish(true);
    const leftovers = (await steps.tearDown()).failures;
    // The backup is complete: the frozen copy has done its work.
    if (d.bitmap?.frozen !== undefined) {
      await execute(qmp, 'block-dirty-bitmap-remove', { node: nodeName, name: d.bitmap.frozen }).catch((error: unknown) => {
        leftovers.push(`remove bitmap ${String(d.bitmap?.frozen)}: ${error instanceof Error ? error.message : String(error)}`);
      });
    }
    steps.clear();
    const zeroBytes = plan.segments.filter((s) => s.zero).reduce((sum, s) => sum + s.length, 0);
    return {
      node,
      sync,
      fleecing: d.method,
      size,
      bytes,
      zeroBytes,
      total: plan.total,
      dirty: plan.dirty,
      extents: writer.extents,
      elapsedMs: performance.now() - started,
      leftovers,
    };
  } catch (error) {
    progress.finish(false);
    writer.destroy();
    if (nbd) await nbd.close().catch(() => undefined);
    await steps.undoAll();
    if (options.signal?.aborted === true) throw new BackupAbortedError(run, 'abort', { cause: options.signal.reason });
    if (stop.timedOut) throw new BackupAbortedError(run, 'timeout', { cause: error });
    // The fleecing job ended under the copy: its error says why, not the reads it broke.
    if (BackupJobError.isInstance(stop.reason)) throw stop.reason;
    throw error;
  } finally {
    stop.dispose();
  }
}
