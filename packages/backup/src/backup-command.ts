// Which QMP command a chain starts its backup jobs with: decided here, in one place.
//
// `blockdev-backup` (QEMU 2.3+) copies into a target node that was added with `blockdev-add`;
// `drive-backup` opens the target file itself and carries QEMU's `deprecated` feature since 6.2
// (it is still there, still deprecated, in 7.2, 10.0 and 11.1). Chains use blockdev-backup
// wherever the connected QEMU has it, and drive-backup only for a QEMU the client knows lacks it.
import { randomUUID } from 'node:crypto';

import type { BlockdevBackup, DriveBackup } from './qapi.js';
import { execute } from './qmp.js';
import type { BackupQmp, CallOptions } from './qmp.js';

export type ChainBackupCommand = 'blockdev-backup' | 'drive-backup';

/** A chain target attached as a node for blockdev-backup, detached again when the run ends. */
export interface TargetNode {
  readonly nodeName: string;
  readonly file: string;
}

/**
 * blockdev-backup unless the client's schema view (a `QmpClient`'s `schema`) says the
 * connected QEMU has no such command.
 */
export function chainBackupCommand(qmp: BackupQmp): ChainBackupCommand {
  const schema = (qmp as { schema?: { hasCommand?: (name: string) => boolean | undefined } }).schema;
  return schema?.hasCommand?.('blockdev-backup') === false ? 'drive-backup' : 'blockdev-backup';
}

/**
 * The blockdev-backup equivalent of a chain's `drive-backup` (qcow2 target, `mode: 'existing'`):
 * the arguments, and the node to attach first. Node names are at most 31 characters.
 */
export function asBlockdevBackup(args: DriveBackup): { args: BlockdevBackup; target: TargetNode } {
  const nodeName = `qmpkit-target-${randomUUID().slice(0, 8)}`;
  const { target: file, format: _format, mode: _mode, ...common } = args;
  return { args: { ...common, target: nodeName }, target: { nodeName, file } };
}

/**
 * Opens a chain target as a node. `backing: null`, as drive-backup does for every sync mode but
 * `none`: an incremental target's backing file (the previous backup) is for readers of the
 * finished chain, not for the job, which only writes.
 */
export async function attachTarget(qmp: BackupQmp, target: TargetNode, options: CallOptions): Promise<void> {
  await execute(qmp, 'blockdev-add', {
    driver: 'qcow2',
    'node-name': target.nodeName,
    file: { driver: 'file', filename: target.file },
    backing: null,
  }, options);
}

/**
 * Closes target nodes (QEMU holds their image lock until then). With `strict`, the first failure
 * is thrown after trying them all; otherwise failures are ignored (the run has failed already and
 * a node left behind goes with QEMU).
 */
export async function detachTargets(qmp: BackupQmp, targets: readonly TargetNode[], options: CallOptions, strict: boolean): Promise<void> {
  let first: unknown;
  for (const target of targets) {
    try {
      await execute(qmp, 'blockdev-del', { 'node-name': target.nodeName }, options);
    } catch (error) {
      first ??= error;
    }
  }
  if (strict && first !== undefined) throw first;
}
