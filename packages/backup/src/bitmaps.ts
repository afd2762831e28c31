import { BitmapNotFoundError, InvalidGranularityError, NodeNotFoundError } from './errors.js';
import type { BlockDeviceInfo, BlockDirtyBitmapAdd, BlockDirtyBitmapOrStr, BlockDirtyInfo, BlockInfo } from './qapi.js';
import { execute } from './qmp.js';
import type { BackupQmp, CallOptions } from './qmp.js';

/** A dirty bitmap's state, normalised from `query-block` / `query-named-block-nodes`. */
export interface BitmapStatus {
  /** '' for an anonymous bitmap: one QEMU keeps for itself (a backup job's, its copy-before-write filter's). */
  name: string;
  /** Dirty bytes. */
  count: number;
  granularity: number;
  persistent: boolean;
  /** In use by an operation (a backup job): only reads are allowed. */
  busy: boolean;
  /** Enabled: new writes are recorded. */
  recording: boolean;
  /** Loaded from a persistent bitmap that was not stored cleanly (QEMU crashed): only removal is allowed. */
  inconsistent: boolean;
}

/** Smallest and largest granularity QEMU 7.2 accepts (qcow2 stores granularity bits 9..31). */
export const MIN_GRANULARITY = 512;
export const MAX_GRANULARITY = 2 ** 31;

export function isValidGranularity(granularity: number): boolean {
  // Not `g & (g - 1)`: bitwise operators work on 32-bit ints and 2^31 would overflow.
  return (
    Number.isSafeInteger(granularity) &&
    granularity >= MIN_GRANULARITY &&
    granularity <= MAX_GRANULARITY &&
    Number.isInteger(Math.log2(granularity))
  );
}

/** Throws `InvalidGranularityError` unless QEMU would accept the granularity. */
export function checkGranularity(granularity: number): void {
  if (!isValidGranularity(granularity)) throw new InvalidGranularityError(granularity);
}

export type AddBitmapOptions = BlockDirtyBitmapAdd;

export async function addBitmap(qmp: BackupQmp, args: AddBitmapOptions, options: CallOptions = {}): Promise<void> {
  if (args.granularity !== undefined) checkGranularity(args.granularity);
  await execute(qmp, 'block-dirty-bitmap-add', args, options);
}

export async function removeBitmap(qmp: BackupQmp, node: string, name: string, options: CallOptions = {}): Promise<void> {
  await execute(qmp, 'block-dirty-bitmap-remove', { node, name }, options);
}

export async function clearBitmap(qmp: BackupQmp, node: string, name: string, options: CallOptions = {}): Promise<void> {
  await execute(qmp, 'block-dirty-bitmap-clear', { node, name }, options);
}

export async function enableBitmap(qmp: BackupQmp, node: string, name: string, options: CallOptions = {}): Promise<void> {
  await execute(qmp, 'block-dirty-bitmap-enable', { node, name }, options);
}

export async function disableBitmap(qmp: BackupQmp, node: string, name: string, options: CallOptions = {}): Promise<void> {
  await execute(qmp, 'block-dirty-bitmap-disable', { node, name }, options);
}

/**
 * Merge `sources` into the bitmap `target` of `node`. A source is a bitmap name on the same
 * node, or `{ node, name }` for a bitmap on another node.
 */
export async function mergeBitmaps(
  qmp: BackupQmp,
  node: string,
  target: string,
  sources: ReadonlyArray<string | BlockDirtyBitmapOrStr>,
  options: CallOptions = {},
): Promise<void> {
  await execute(qmp, 'block-dirty-bitmap-merge', { node, target, bitmaps: [...sources] }, options);
}

/** `query-block`'s view of a bitmap, in the shape this package reports. @internal */
export function bitmapStatusOf(info: BlockDirtyInfo): BitmapStatus {
  return {
    name: info.name ?? '',
    count: info.count,
    granularity: info.granularity,
    persistent: info.persistent,
    busy: info.busy,
    recording: info.recording,
    inconsistent: info.inconsistent ?? false,
  };
}

/** What a node reference resolved to. */
export interface ResolvedNode {
  /** The device (drive id) when the node is the root of one, else undefined. */
  device: string | undefined;
  nodeName: string | undefined;
  info: BlockDeviceInfo;
}

/**
 * Filter drivers QEMU inserts above a device's node; a backup job puts 'copy-before-write'
 * there while it runs, and `query-block` then describes the filter, not the drive's node.
 */
const FILTER_DRIVERS = new Set(['copy-before-write', 'backup-top', 'throttle', 'compress', 'preallocate']);

/**
 * Find a node by device name (a drive id from -drive) or node-name. Nodes added with
 * blockdev-add and not attached to a device are not in `query-block`, hence the second query;
 * a device whose root is a filter (a backup job is running) resolves to the node under it.
 */
export async function resolveNode(qmp: BackupQmp, node: string, options: CallOptions = {}): Promise<ResolvedNode> {
  const blocks = await execute<BlockInfo[]>(qmp, 'query-block', undefined, options);
  let filtered: BlockInfo | undefined;
  for (const block of blocks) {
    const inserted = block.inserted;
    if (!inserted || (block.device !== node && inserted['node-name'] !== node)) continue;
    if (block.device === node && FILTER_DRIVERS.has(inserted.drv)) {
      filtered = block;
      break;
    }
    return { device: block.device || undefined, nodeName: inserted['node-name'], info: inserted };
  }
  const nodes = await execute<BlockDeviceInfo[]>(qmp, 'query-named-block-nodes', { flat: true }, options);
  if (filtered?.inserted) {
    const top = filtered.inserted;
    const below = top.image?.['backing-image'];
    const match = nodes.find(
      (n) =>
        !FILTER_DRIVERS.has(n.drv) &&
        n.file === top.file &&
        (below === undefined ? n.drv !== 'file' : n.drv === below.format),
    );
    if (match) return { device: filtered.device, nodeName: match['node-name'], info: match };
  }
  const found = nodes.find((n) => n['node-name'] === node);
  if (!found) throw new NodeNotFoundError(node);
  return { device: undefined, nodeName: found['node-name'], info: found };
}

/** Every bitmap of `node`; without a node, of every device and named node (keyed by node-name or device). */
export async function listBitmaps(qmp: BackupQmp, node: string, options?: CallOptions): Promise<BitmapStatus[]>;
export async function listBitmaps(qmp: BackupQmp, node?: undefined, options?: CallOptions): Promise<Map<string, BitmapStatus[]>>;
export async function listBitmaps(
  qmp: BackupQmp,
  node?: string,
  options: CallOptions = {},
): Promise<BitmapStatus[] | Map<string, BitmapStatus[]>> {
  if (node !== undefined) {
    const resolved = await resolveNode(qmp, node, options);
    return (resolved.info['dirty-bitmaps'] ?? []).map(bitmapStatusOf);
  }
  const all = new Map<string, BitmapStatus[]>();
  const nodes = await execute<BlockDeviceInfo[]>(qmp, 'query-named-block-nodes', { flat: true }, options);
  for (const n of nodes) {
    const bitmaps = n['dirty-bitmaps'];
    if (n['node-name'] && bitmaps && bitmaps.length > 0) all.set(n['node-name'], bitmaps.map(bitmapStatusOf));
  }
  // Devices whose root node has no node-name given by the user still have bitmaps worth listing.
  const blocks = await execute<BlockInfo[]>(qmp, 'query-block', undefined, options);
  for (const b of blocks) {
    const name = b.inserted?.['node-name'];
    const bitmaps = b.inserted?.['dirty-bitmaps'];
    if (bitmaps && bitmaps.length > 0 && !(name && all.has(name))) all.set(b.device, bitmaps.map(bitmapStatusOf));
  }
  return all;
}

/** One bitmap's status; `BitmapNotFoundError` if the node has no such bitmap. */
export async function getBitmap(qmp: BackupQmp, node: string, name: string, options: CallOptions = {}): Promise<BitmapStatus> {
  const found = (await listBitmaps(qmp, node, options)).find((b) => b.name === name);
  if (!found) throw new BitmapNotFoundError(node, name);
  return found;
}

/** Like `getBitmap`, but undefined when the bitmap does not exist. */
export async function findBitmap(
  qmp: BackupQmp,
  node: string,
  name: string,
  options: CallOptions = {},
): Promise<BitmapStatus | undefined> {
  return (await listBitmaps(qmp, node, options)).find((b) => b.name === name);
}
