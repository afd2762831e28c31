// The fleecing point of a pull-mode backup: a point-in-time view of a drive that QEMU exports
// over NBD while the guest goes on writing, set up as QEMU's image-fleecing iotest does.
//
// Two methods, chosen per drive from what the connected QEMU reports:
// - 'snapshot-access': a `copy-before-write` filter over the drive's node, with a temporary
//   raw file as its target, put in the device's path with `qom-set <device>.drive`; a
//   `snapshot-access` node over the filter is what is exported. Needs both drivers (QEMU 7.0+)
//   and a device attached to the drive, since only a device's `drive` property can move a
//   BlockBackend onto the filter: a drive without a device (`-drive if=none`) would go on
//   writing past it.
// - 'backup-sync-none': a `blockdev-backup` job with sync `none` into a temporary qcow2 image
//   whose backing is the drive's node; the job puts its own copy-before-write filter above the
//   node (every parent of it, with or without a device), and the temporary image is exported.
//
// The bitmap is handled at the point itself: in the transaction that takes it, a frozen copy
// of the chain's bitmap (exported with the view, `qemu:dirty-bitmap:NAME`) takes the bits
// recorded so far, and the chain's bitmap is cleared, so it records exactly the writes after
// the point. If the run fails, the frozen copy is merged back: the chain's bitmap then covers
// the whole interval again. For 'backup-sync-none' everything is one transaction. For
// 'snapshot-access' the point is the `qom-set`, which is no transaction action: the frozen copy
// is taken *enabled* in the transaction before it and disabled after it, so it holds every
// write up to the point (and a few after: copied from the view, at their old content, which
// is right), while the chain's bitmap records from before the point (a few writes twice:
// copied again next time). Supersets on both sides; nothing is missed.
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { createQcow2Image } from '@qmpkit/image-tools';

import { BackupJobError, PullUnavailableError } from './errors.js';
import { restrictFile } from './file-mode.js';
import type { BackupJob } from './job.js';
import type { PendingPull, PendingPullDrive } from './manifest.js';
import { addNode, removeNode } from './nodes.js';
import type { BlockInfo, JobInfo } from './qapi.js';
import { execute, listenEvents, record } from './qmp.js';
import type { BackupQmp, CallOptions } from './qmp.js';
import { Transaction } from './transaction.js';
import type { RunSteps } from './undo-log.js';

/** How a pull-mode backup makes its point-in-time view of a drive (see the module comment). */
export type FleecingMethod = 'snapshot-access' | 'backup-sync-none';

/** A method, or 'auto': 'snapshot-access' where the QEMU and the drive allow it, else 'backup-sync-none'. */
export type FleecingChoice = FleecingMethod | 'auto';

/** What the connected QEMU offers for pull-mode backups, from its `query-qmp-schema`. */
export interface PullCapabilities {
  copyBeforeWrite: boolean;
  snapshotAccess: boolean;
  /** copy-before-write's `on-cbw-error` (7.1+): 'break-snapshot' fails the backup, not the guest's write. */
  onCbwError: boolean;
  blockExportAdd: boolean;
  /** block-export-add's `bitmaps` takes `{ node, name }` (7.1+), not only names found below the export. */
  exportBitmapByNode: boolean;
}

interface SchemaEntry {
  name: string;
  'meta-type': string;
  members?: Array<{ name: string; type?: string }>;
  values?: string[];
  variants?: Array<{ case: string; type: string }>;
  'arg-type'?: string;
  'element-type'?: string;
}

const capabilityCache = new WeakMap<object, Promise<PullCapabilities>>();

/** Read what QEMU offers (once per connection: the answer cannot change while it runs). */
export function pullCapabilities(qmp: BackupQmp, call: CallOptions = {}): Promise<PullCapabilities> {
  let found = capabilityCache.get(qmp);
  if (!found) {
    found = probe(qmp, call);
    capabilityCache.set(qmp, found);
    found.catch(() => capabilityCache.delete(qmp));
  }
  return found;
}

async function probe(qmp: BackupQmp, call: CallOptions): Promise<PullCapabilities> {
  const entries = await execute<SchemaEntry[]>(qmp, 'query-qmp-schema', undefined, call);
  const byName = new Map(entries.map((e) => [e.name, e]));
  const enumValues = (e: SchemaEntry): string[] => e.values ?? (e.members ?? []).map((m) => m.name);
  const drivers = entries.find((e) => e['meta-type'] === 'enum' && enumValues(e).includes('qcow2') && enumValues(e).includes('file'));
  const driverNames = new Set(drivers ? enumValues(drivers) : []);
  const objects = entries.filter((e) => e['meta-type'] === 'object');
  const memberNames = (e: SchemaEntry): string[] => (e.members ?? []).map((m) => m.name);
  const onCbwError = objects.some((o) => memberNames(o).includes('on-cbw-error'));
  const blockExportAdd = entries.some((e) => e['meta-type'] === 'command' && e.name === 'block-export-add');
  // The NBD export options: the object with `bitmaps` and `allocation-depth`; its `bitmaps` is an
  // array of 'str' before 7.1 and of an alternate (BlockDirtyBitmapOrStr) since.
  let exportBitmapByNode = false;
  for (const o of objects) {
    const names = memberNames(o);
    if (!names.includes('bitmaps') || !names.includes('allocation-depth')) continue;
    const array = byName.get(o.members?.find((m) => m.name === 'bitmaps')?.type ?? '');
    const element = byName.get(array?.['element-type'] ?? '');
    exportBitmapByNode = element?.['meta-type'] === 'alternate';
  }
  return {
    copyBeforeWrite: driverNames.has('copy-before-write'),
    snapshotAccess: driverNames.has('snapshot-access'),
    onCbwError,
    blockExportAdd,
    exportBitmapByNode,
  };
}

/** One drive's fleecing in a run: names of everything set up for it. */
export interface FleecingDrive {
  /** The drive as the caller names it (device or node-name). */
  node: string;
  /** Its format node: the fleecing image's backing, the filter's child. */
  nodeName: string;
  size: number;
  method: FleecingMethod;
  /** The device whose drive is switched to the filter ('snapshot-access'). */
  qdev?: string;
  /** QOM path of that device. */
  qomPath?: string;
  image: string;
  tempNode: string;
  cbwNode?: string;
  accessNode?: string;
  /** The fleecing job ('backup-sync-none'). */
  jobId: string;
  job?: BackupJob;
  exportId: string;
  /** The node the export reads. */
  exportNode: string;
  /** The chain's (or caller's) bitmap, and what the point does with it; on `nodeName`, always named by it (a device's name may lead to a filter). */
  bitmap?: { name: string; frozen?: string; reset: boolean; granularity?: number; persistent: boolean };
}

/** A device's QOM path from `query-block`'s `qdev` (its id, or its path when it has none). */
function qomPathOf(qdev: string): string {
  return qdev.startsWith('/') ? qdev : `/machine/peripheral/${qdev}`;
}

/**
 * The method for one drive. 'auto' takes 'snapshot-access' when QEMU has both drivers and the
 * drive's node is the root of a device's BlockBackend (so `qom-set` can put the filter in the
 * guest's path), else 'backup-sync-none'. A method asked for by name that cannot work here is
 * `PullUnavailableError` ('fleecing-method').
 */
export function chooseFleecing(
  node: string,
  nodeName: string,
  blocks: readonly BlockInfo[],
  caps: PullCapabilities,
  choice: FleecingChoice,
): { method: FleecingMethod; qdev?: string } {
  const block = blocks.find((b) => b.inserted?.['node-name'] === nodeName);
  const qdev = block?.qdev;
  const drivers = caps.copyBeforeWrite && caps.snapshotAccess;
  if (choice === 'backup-sync-none') return { method: 'backup-sync-none' };
  if (drivers && qdev !== undefined && qdev !== '') return { method: 'snapshot-access', qdev };
  if (choice === 'auto') return { method: 'backup-sync-none' };
  const detail = !drivers
    ? `fleecing 'snapshot-access' needs the copy-before-write and snapshot-access block drivers, which this QEMU lacks`
    : `fleecing 'snapshot-access' needs a device attached to the drive's node ${nodeName} (its drive is switched to the filter with qom-set); use 'backup-sync-none'`;
  throw new PullUnavailableError(node, 'fleecing-method', detail);
}

/** Names of a run's fleecing objects: after the run (found again by a later run), short for QEMU's 31-character node names. */
export function fleecingNames(run: string, index: number): { tempNode: string; cbwNode: string; accessNode: string; exportId: string } {
  const r = run.slice(0, 8);
  return { tempNode: `qmpkit-fl-${r}-${index}`, cbwNode: `qmpkit-cbw-${r}-${index}`, accessNode: `qmpkit-sa-${r}-${index}`, exportId: `qmpkit-${r}-${index}` };
}

/** The pending record of a drive's fleecing. */
export function pendingPullDrive(d: FleecingDrive): PendingPullDrive {
  const p: PendingPullDrive = { fleecing: d.method, nodeName: d.nodeName, image: d.image, tempNode: d.tempNode, exportId: d.exportId };
  if (d.bitmap?.frozen !== undefined) p.frozenBitmap = d.bitmap.frozen;
  if (d.cbwNode !== undefined) p.cbwNode = d.cbwNode;
  if (d.accessNode !== undefined) p.accessNode = d.accessNode;
  if (d.qdev !== undefined) p.qdev = d.qdev;
  return p;
}

/**
 * Options for a command that changes QEMU: its timeout, not the signal. A command abandoned on
 * abort would still be carried out by QEMU, after its undo step could be registered; the
 * signal is checked between the steps instead.
 */
function changing(call: CallOptions): CallOptions {
  call.signal?.throwIfAborted();
  return call.timeout === undefined ? {} : { timeout: call.timeout };
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A unix socket path must fit sun_path (108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;

/** The run's private directory (0700) and where its NBD socket goes. */
export interface PullScratch {
  dir: string;
  socket: string;
  /** Set when the socket is in a directory of its own (the first one's path was too long). */
  socketDir?: string;
}

/**
 * Make the run's private directory under `base` (a backup chain's directory, or the system's
 * temporary directory), and one under the system's temporary directory for the socket when a
 * path in the first is too long for a unix socket. Both are removed as teardown steps.
 */
export async function makeScratch(steps: RunSteps, base: string, run: string): Promise<PullScratch> {
  const dir = await mkdtemp(join(base, `.qmpkit-pull-${run.slice(0, 8)}-`));
  steps.teardownWith(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }));
  const socket = join(dir, 'nbd.sock');
  if (Buffer.byteLength(socket) <= MAX_SOCKET_PATH) return { dir, socket };
  const socketDir = await mkdtemp(join(tmpdir(), `qmpkit-pull-${run.slice(0, 8)}-`));
  steps.teardownWith(`remove ${socketDir}`, () => rm(socketDir, { recursive: true, force: true }));
  return { dir, socket: join(socketDir, 'nbd.sock'), socketDir };
}

/**
 * Before the point: the temporary image (0600 whatever the mode of the backups: it holds the
 * guest's old data) and its node; for 'snapshot-access' the copy-before-write filter over the
 * drive's node (not yet in the guest's path). Each is a teardown step.
 */
export async function prepareFleecing(
  qmp: BackupQmp,
  steps: RunSteps,
  d: FleecingDrive,
  caps: PullCapabilities,
  call: CallOptions,
): Promise<void> {
  if (d.method === 'snapshot-access') {
    // A sparse raw file: the filter writes only the clusters the guest overwrites.
    const handle = await open(d.image, 'wx', 0o600);
    steps.teardownWith(`remove ${d.image}`, () => rm(d.image, { force: true }));
    try {
      await handle.truncate(d.size);
    } finally {
      await handle.close();
    }
    await addNode(qmp, { driver: 'file', 'node-name': d.tempNode, filename: d.image }, changing(call));
    steps.teardownWith(`remove node ${d.tempNode}`, () => removeNode(qmp, d.tempNode));
    const cbw: Record<string, unknown> = { driver: 'copy-before-write', 'node-name': d.cbwNode, file: d.nodeName, target: d.tempNode };
    // A failed copy (the temporary image's file system full) breaks the backup, not the guest's write.
    if (caps.onCbwError) cbw['on-cbw-error'] = 'break-snapshot';
    await addNode(qmp, cbw as never, changing(call));
    steps.teardownWith(`remove node ${d.cbwNode}`, () => removeNode(qmp, d.cbwNode as string));
    return;
  }
  await createQcow2Image(d.image, { size: d.size }, changing(call));
  steps.teardownWith(`remove ${d.image}`, () => rm(d.image, { force: true }));
  await restrictFile(d.image, 0o600);
  await addNode(
    qmp,
    { driver: 'qcow2', 'node-name': d.tempNode, file: { driver: 'file', filename: d.image }, backing: d.nodeName } as never,
    changing(call),
  );
  steps.teardownWith(`remove node ${d.tempNode}`, () => removeNode(qmp, d.tempNode));
}

/**
 * The point's actions for one drive, added to `tx`: the frozen copy of the bitmap (disabled,
 * except for 'snapshot-access', see the module comment), the bitmap's clear, and the fleecing
 * job for 'backup-sync-none'.
 */
export function addPointActions(tx: Transaction, d: FleecingDrive): void {
  const b = d.bitmap;
  if (b?.frozen !== undefined) {
    const add: Record<string, unknown> = { node: d.nodeName, name: b.frozen, persistent: b.persistent, disabled: d.method === 'backup-sync-none' };
    if (b.granularity !== undefined) add['granularity'] = b.granularity;
    tx.actions.push({ type: 'block-dirty-bitmap-add', data: add as never });
    tx.bitmapMerge(d.nodeName, b.frozen, [b.name]);
  }
  if (b?.reset === true) tx.bitmapClear(d.nodeName, b.name);
  if (d.method === 'backup-sync-none') {
    tx.blockdevBackup({ 'job-id': d.jobId, device: d.nodeName, target: d.tempNode, sync: 'none' });
  }
}

/**
 * After the transaction: undo steps that give the bitmap its bits back (the frozen copy merged
 * into it, then removed; critical when the point cleared it), and teardown steps that end the
 * fleecing jobs. `jobs` are the transaction's jobs, in drive order of the 'backup-sync-none' drives.
 */
export function registerPoint(qmp: BackupQmp, steps: RunSteps, drives: readonly FleecingDrive[], jobs: readonly BackupJob[]): void {
  let j = 0;
  for (const d of drives) {
    const b = d.bitmap;
    if (b?.frozen !== undefined) {
      const frozen = b.frozen;
      steps.undoWith(
        `merge bitmap ${frozen} back into ${b.name} of ${d.node}`,
        async () => {
          await execute(qmp, 'transaction', {
            actions: [
              { type: 'block-dirty-bitmap-merge', data: { node: d.nodeName, target: b.name, bitmaps: [frozen] } },
              { type: 'block-dirty-bitmap-remove', data: { node: d.nodeName, name: frozen } },
            ],
          });
        },
        { critical: b.reset },
      );
    }
    if (d.method === 'backup-sync-none') {
      const job = jobs[j++];
      if (job) {
        d.job = job;
        steps.teardownWith(`cancel fleecing job ${d.jobId}`, () => endFleecingJob(job));
      }
    }
  }
}

/**
 * Watch the fleecing jobs while the views are read: a sync-none job that ends (it failed, or
 * someone cancelled it) takes its copy-before-write filter with it, and the view would show
 * the guest's new writes from then on. `onEnd` is told at once; `check()` throws if any ended
 * (call it after the last read, before the teardown ends them); `disarm()` before the teardown.
 */
export function watchFleecing(drives: readonly FleecingDrive[], onEnd: (error: Error) => void): { check(): void; disarm(): void } {
  let armed = true;
  let ended: Error | undefined;
  for (const d of drives) {
    const job = d.job;
    if (!job) continue;
    void job.result.then(
      (r) => {
        if (!armed) return;
        ended ??= new BackupJobError(job.id, r.status, r.error ?? 'the fleecing job ended while its view was being read', {
          cause: new Error(`fleecing of ${d.node} lost: the view is no longer the point in time`),
        });
        onEnd(ended);
      },
      () => undefined,
    );
  }
  return {
    check: () => {
      if (ended) throw ended;
      const gone = drives.find((d) => d.job?.done === true);
      if (gone?.job) throw new BackupJobError(gone.job.id, 'cancelled', 'the fleecing job ended while its view was being read');
    },
    disarm: () => {
      armed = false;
    },
  };
}

/** Cancel a sync-none fleecing job (it never ends by itself) and follow it until QEMU has forgotten it. */
async function endFleecingJob(job: BackupJob): Promise<void> {
  if (!job.done) await job.cancel({ timeout: 10_000 }).catch(() => undefined);
  const result = await job.result;
  if (result.status === 'failed') throw new Error(`fleecing job ${job.id} failed: ${result.error ?? 'no reason given'}`);
}

/**
 * 'snapshot-access' after the transaction: the device's drive switched to the filter (the
 * point), the snapshot-access node over it, and the frozen copy disabled. Teardown steps put
 * the device back on the drive's node before the filter is removed.
 */
export async function switchToFilter(qmp: BackupQmp, steps: RunSteps, d: FleecingDrive, call: CallOptions): Promise<void> {
  if (d.method !== 'snapshot-access') return;
  const path = d.qomPath as string;
  await execute(qmp, 'qom-set', { path, property: 'drive', value: d.cbwNode }, changing(call));
  steps.teardownWith(`put device ${path} back on ${d.nodeName}`, async () => {
    await execute(qmp, 'qom-set', { path, property: 'drive', value: d.nodeName });
  });
  await addNode(qmp, { driver: 'snapshot-access', 'node-name': d.accessNode, file: d.cbwNode } as never, changing(call));
  steps.teardownWith(`remove node ${d.accessNode}`, () => removeNode(qmp, d.accessNode as string));
}

/** Disable the frozen copies that were taken enabled ('snapshot-access'), once every device is on its filter. */
export async function freezeCopies(qmp: BackupQmp, drives: readonly FleecingDrive[], call: CallOptions): Promise<void> {
  for (const d of drives) {
    if (d.method === 'snapshot-access' && d.bitmap?.frozen !== undefined) {
      // By node name: the device's name now leads to the filter above the drive's node.
      await execute(qmp, 'block-dirty-bitmap-disable', { node: d.nodeName, name: d.bitmap.frozen }, changing(call));
    }
  }
}

/**
 * Everything up to the export, for every drive of a run: the temporary images and nodes, the
 * point (one transaction: frozen bitmaps, cleared bitmaps, fleecing jobs), the devices switched
 * to their filters, the NBD server and one export per drive. `beforePoint` runs just before
 * the transaction (a chain records its run as pending there).
 */
export async function setUpFleecing(
  qmp: BackupQmp,
  steps: RunSteps,
  drives: readonly FleecingDrive[],
  caps: PullCapabilities,
  socket: string,
  call: CallOptions,
  hooks: { beforePoint?: () => Promise<void>; pointTaken?: () => void; afterPoint?: () => Promise<void> } = {},
): Promise<void> {
  for (const d of drives) await prepareFleecing(qmp, steps, d, caps, call);
  await hooks.beforePoint?.();
  call.signal?.throwIfAborted();
  const tx = new Transaction();
  for (const d of drives) addPointActions(tx, d);
  let jobs: BackupJob[] = [];
  // Not under the caller's signal: a transaction QEMU applied must be known to be undone.
  if (tx.actions.length > 0) jobs = (await tx.run(qmp, {})).jobs;
  registerPoint(qmp, steps, drives, jobs);
  hooks.pointTaken?.();
  for (const d of drives) await switchToFilter(qmp, steps, d, call);
  await freezeCopies(qmp, drives, call);
  await hooks.afterPoint?.();
  await startNbdServer(qmp, steps, drives[0]?.node ?? '', socket, call);
  for (const d of drives) await addExport(qmp, steps, d, caps, call);
}

const NBD_SERVER_RUNNING = /already running/i;

/**
 * Start QEMU's NBD server on the run's socket (a teardown step stops it). QEMU has one NBD
 * server; one started by someone else is `PullUnavailableError` ('nbd-server-running'), since
 * QMP does not tell where it listens.
 */
export async function startNbdServer(qmp: BackupQmp, steps: RunSteps, node: string, socket: string, call: CallOptions): Promise<void> {
  try {
    await execute(qmp, 'nbd-server-start', { addr: { type: 'unix', data: { path: socket } } }, changing(call));
  } catch (error) {
    if (NBD_SERVER_RUNNING.test(messageOf(error))) {
      throw new PullUnavailableError(
        node,
        'nbd-server-running',
        'QEMU\'s NBD server is already running (QEMU has one, and QMP does not say where it listens): stop it with nbd-server-stop, or use push mode',
        { cause: error },
      );
    }
    throw error;
  }
  steps.teardownWith('stop the NBD server', async () => {
    await execute(qmp, 'nbd-server-stop');
  });
}

/** Export a drive's view read-only, with its frozen bitmap; a teardown step removes the export. */
export async function addExport(qmp: BackupQmp, steps: RunSteps, d: FleecingDrive, caps: PullCapabilities, call: CallOptions): Promise<void> {
  if (!caps.blockExportAdd) {
    throw new PullUnavailableError(d.node, 'block-export', 'this QEMU has no block-export-add (QEMU 5.2 and later have it)');
  }
  const args: Record<string, unknown> = { type: 'nbd', id: d.exportId, 'node-name': d.exportNode, name: d.exportId, writable: false };
  const frozen = d.bitmap?.frozen;
  // By node and name where QEMU takes it; before 7.1 by name, found below the export (the
  // 'backup-sync-none' image's backing is the drive's node).
  if (frozen !== undefined) args['bitmaps'] = [caps.exportBitmapByNode ? { node: d.nodeName, name: frozen } : frozen];
  await execute(qmp, 'block-export-add', args, changing(call));
  steps.teardownWith(`remove export ${d.exportId}`, () => removeExport(qmp, d.exportId));
}

/**
 * Remove an export at once (mode 'hard': its connections are dropped) and wait until QEMU has
 * deleted it (BLOCK_EXPORT_DELETED), so the node under it can go. An export QEMU no longer
 * knows is taken as removed.
 */
export async function removeExport(qmp: BackupQmp, id: string, timeout = 10_000): Promise<void> {
  const listener = listenEvents(qmp, ['BLOCK_EXPORT_DELETED'], (e) => record(e.data)['id'] === id);
  try {
    try {
      await execute(qmp, 'block-export-del', { id, mode: 'hard' }, { timeout });
    } catch (error) {
      if (/not found|no such|does not exist/i.test(messageOf(error))) return;
      throw error;
    }
    await listener.wait({ timeout });
  } finally {
    listener.close();
  }
}

/** The pull-mode leftovers of a run whose process is gone, as its pending record names them. */
export interface PullLeftovers {
  pull: PendingPull;
  drives: Array<{ node: string; jobId: string; pull: PendingPullDrive }>;
}

/**
 * Take down what a pull-mode run left in QEMU and on disk (its process died): its exports, the
 * NBD server it started (unless other exports still use it), its snapshot-access and filter
 * nodes (each device put back on its drive first), its fleecing jobs, its temporary images and
 * directories. Each step tolerates what is already gone; returns the failures.
 */
export async function removeLeftovers(qmp: BackupQmp, left: PullLeftovers, call: CallOptions = {}): Promise<string[]> {
  const failures: string[] = [];
  const attempt = async (what: string, step: () => Promise<unknown>): Promise<void> => {
    try {
      await step();
    } catch (error) {
      failures.push(`${what}: ${messageOf(error)}`);
    }
  };
  const gone = (error: unknown): boolean => /not found|no such|cannot find|does not exist/i.test(messageOf(error));
  const tolerant = async (command: string, args: object): Promise<void> => {
    try {
      await execute(qmp, command, args, call);
    } catch (error) {
      if (!gone(error)) throw error;
    }
  };
  for (const d of left.drives) await attempt(`remove export ${d.pull.exportId}`, () => removeExport(qmp, d.pull.exportId));
  if (left.pull.nbdServer) {
    await attempt('stop the NBD server', async () => {
      const exports = await execute<Array<{ id: string }>>(qmp, 'query-block-exports', undefined, call);
      if (exports.length > 0) return;
      await execute(qmp, 'nbd-server-stop', undefined, call).catch((error: unknown) => {
        if (!/not running/i.test(messageOf(error))) throw error;
      });
    });
  }
  const blocks = await execute<BlockInfo[]>(qmp, 'query-block', undefined, call).catch(() => [] as BlockInfo[]);
  for (const d of left.drives) {
    const p = d.pull;
    if (p.accessNode !== undefined) await attempt(`remove node ${p.accessNode}`, () => tolerant('blockdev-del', { 'node-name': p.accessNode }));
    if (p.qdev !== undefined && p.cbwNode !== undefined) {
      const onFilter = blocks.some((b) => b.qdev === p.qdev && b.inserted?.['node-name'] === p.cbwNode);
      if (onFilter) {
        await attempt(`put device ${p.qdev} back on ${p.nodeName}`, () =>
          execute(qmp, 'qom-set', { path: qomPathOf(p.qdev as string), property: 'drive', value: p.nodeName }, call),
        );
      }
    }
    if (p.cbwNode !== undefined) await attempt(`remove node ${p.cbwNode}`, () => tolerant('blockdev-del', { 'node-name': p.cbwNode }));
    if (p.fleecing === 'backup-sync-none') await attempt(`end fleecing job ${d.jobId}`, () => endJobById(qmp, d.jobId, call));
    await attempt(`remove node ${p.tempNode}`, () => tolerant('blockdev-del', { 'node-name': p.tempNode }));
  }
  await attempt(`remove ${left.pull.scratch}`, () => rm(left.pull.scratch, { recursive: true, force: true }));
  if (left.pull.socketDir !== undefined) {
    const dir = left.pull.socketDir;
    await attempt(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }));
  }
  return failures;
}

/** Cancel a job found by id and wait (polling `query-jobs`) until QEMU has forgotten it. */
async function endJobById(qmp: BackupQmp, id: string, call: CallOptions): Promise<void> {
  const deadline = Date.now() + (call.timeout ?? 30_000);
  let cancelled = false;
  for (;;) {
    const job = (await execute<JobInfo[]>(qmp, 'query-jobs', undefined, call)).find((j) => j.id === id);
    if (!job) return;
    if (job.status === 'concluded') await execute(qmp, 'job-dismiss', { id }, call).catch(() => undefined);
    else if (!cancelled) {
      cancelled = true;
      await execute(qmp, 'job-cancel', { id }, call).catch(() => undefined);
    }
    if (Date.now() > deadline) throw new Error(`job ${id} did not end within ${call.timeout ?? 30_000} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export { qomPathOf };
