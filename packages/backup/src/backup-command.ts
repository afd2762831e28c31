// Which QMP command a chain starts its backup jobs with: decided here, in one place.
//
// `blockdev-backup` (QEMU 2.3+) copies into a target node that was added with `blockdev-add`;
// `drive-backup` opens the target file itself and carries QEMU's `deprecated` feature since 6.2
// (it is still there, still deprecated, in 7.2, 10.0 and 11.1). Chains use blockdev-backup
// wherever the connected QEMU has it, and drive-backup only for a QEMU the client knows lacks it.
// The target node is added and removed as steps of the run (`ChainRun.addNode`), through
// nodes.ts like every other node.
import { randomUUID } from 'node:crypto';

import type { BlockdevBackup, BlockdevOptions, DriveBackup } from './qapi.js';
import type { BackupQmp } from './qmp.js';

export type ChainBackupCommand = 'blockdev-backup' | 'drive-backup';

/** A chain target attached as a node for blockdev-backup, removed again when the run ends. */
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
 * The node name of a run's target: named after the run, so a node left behind by a killed
 * process is found from the manifest's pending record. QEMU allows 31 characters.
 */
export function targetNodeName(run: string, index: number): string {
  return `qmpkit-target-${run.slice(0, 8)}-${index}`;
}

/**
 * The blockdev-backup equivalent of a chain's `drive-backup` (qcow2 target, `mode: 'existing'`):
 * the arguments, and the node to attach first (named `nodeName`, else a random name).
 */
export function asBlockdevBackup(
  args: DriveBackup,
  nodeName = `qmpkit-target-${randomUUID().slice(0, 8)}`,
): { args: BlockdevBackup; target: TargetNode } {
  const { target: file, format: _format, mode: _mode, ...common } = args;
  return { args: { ...common, target: nodeName }, target: { nodeName, file } };
}

/**
 * How a chain target is opened as a node. `backing: null`, as drive-backup does for every sync
 * mode but `none`: an incremental target's backing file (the previous backup) is for readers of
 * the finished chain, not for the job, which only writes.
 */
export function targetNodeOptions(target: TargetNode): BlockdevOptions & { 'node-name': string } {
  return {
    driver: 'qcow2',
    'node-name': target.nodeName,
    file: { driver: 'file', filename: target.file },
    backing: null,
  };
}
