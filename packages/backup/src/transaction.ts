import { checkGranularity } from './bitmaps.js';
import { InvalidTransactionError } from './errors.js';
import { BackupJob } from './job.js';
import type { BackupJobOptions, JobResult } from './job.js';
import type {
  BlockDirtyBitmapAdd,
  BlockDirtyBitmapOrStr,
  BlockdevBackup,
  DriveBackup,
  TransactionAction,
} from './qapi.js';
import { execute } from './qmp.js';
import type { BackupQmp, CallOptions } from './qmp.js';

export type CompletionMode = 'individual' | 'grouped';

export interface TransactionRun {
  /** One job per drive-backup / blockdev-backup action, in the order they were added. */
  jobs: BackupJob[];
  /** Every job's result, in the same order, once all of them have ended. */
  results(): Promise<JobResult[]>;
}

/**
 * A typed `transaction`: the actions run atomically (all or none start). With completion-mode
 * 'grouped', one failing job cancels the others and every bitmap keeps its state.
 */
export class Transaction {
  readonly actions: TransactionAction[] = [];
  #completionMode: CompletionMode | undefined;
  #jobOptions = new Map<number, BackupJobOptions>();

  bitmapAdd(args: BlockDirtyBitmapAdd): this {
    if (args.granularity !== undefined) checkGranularity(args.granularity);
    this.actions.push({ type: 'block-dirty-bitmap-add', data: args });
    return this;
  }

  bitmapClear(node: string, name: string): this {
    this.actions.push({ type: 'block-dirty-bitmap-clear', data: { node, name } });
    return this;
  }

  bitmapEnable(node: string, name: string): this {
    this.actions.push({ type: 'block-dirty-bitmap-enable', data: { node, name } });
    return this;
  }

  bitmapDisable(node: string, name: string): this {
    this.actions.push({ type: 'block-dirty-bitmap-disable', data: { node, name } });
    return this;
  }

  bitmapRemove(node: string, name: string): this {
    this.actions.push({ type: 'block-dirty-bitmap-remove', data: { node, name } });
    return this;
  }

  bitmapMerge(node: string, target: string, sources: ReadonlyArray<string | BlockDirtyBitmapOrStr>): this {
    this.actions.push({ type: 'block-dirty-bitmap-merge', data: { node, target, bitmaps: [...sources] } });
    return this;
  }

  /** `options` (callbacks, dismissConcluded) apply to this action's job. */
  driveBackup(args: DriveBackup, options: BackupJobOptions = {}): this {
    this.#jobOptions.set(this.actions.length, options);
    this.actions.push({ type: 'drive-backup', data: { ...args, 'job-id': args['job-id'] ?? args.device } });
    return this;
  }

  blockdevBackup(args: BlockdevBackup, options: BackupJobOptions = {}): this {
    this.#jobOptions.set(this.actions.length, options);
    this.actions.push({ type: 'blockdev-backup', data: { ...args, 'job-id': args['job-id'] ?? args.device } });
    return this;
  }

  completionMode(mode: CompletionMode): this {
    this.#completionMode = mode;
    return this;
  }

  /** The `transaction` command's arguments. */
  toCommand(): { actions: TransactionAction[]; properties?: { 'completion-mode': CompletionMode } } {
    return this.#completionMode === undefined
      ? { actions: [...this.actions] }
      : { actions: [...this.actions], properties: { 'completion-mode': this.#completionMode } };
  }

  /**
   * Send the transaction. `timeout` / `signal` bound the command and the tracking of every
   * job. Throws the client's command error when QEMU refuses the transaction (no job started).
   */
  async run(qmp: BackupQmp, options: CallOptions = {}): Promise<TransactionRun> {
    if (this.actions.length === 0) throw new InvalidTransactionError('a transaction needs at least one action');
    if (this.#completionMode === 'grouped') {
      const bitmapAction = this.actions.find((a) => a.type !== 'drive-backup' && a.type !== 'blockdev-backup');
      // QEMU refuses it too ("does not support Transaction property completion-mode = grouped"),
      // but only after the caller has created targets; say so before anything is sent.
      if (bitmapAction) {
        throw new InvalidTransactionError(
          `completion-mode 'grouped' applies to backup jobs only; QEMU refuses it with a ${bitmapAction.type} action`,
        );
      }
    }
    const ids = new Set<string>();
    const backups: Array<{ index: number; type: 'drive-backup' | 'blockdev-backup'; data: DriveBackup | BlockdevBackup }> =
      [];
    this.actions.forEach((action, index) => {
      if (action.type !== 'drive-backup' && action.type !== 'blockdev-backup') return;
      const id = action.data['job-id'] ?? action.data.device;
      if (ids.has(id)) throw new InvalidTransactionError(`job id "${id}" is used by two actions`);
      ids.add(id);
      backups.push({ index, type: action.type, data: action.data });
    });
    // Every job listens to its events before the command that starts it is sent.
    const jobs = backups.map(
      (b) => new BackupJob(qmp, b.type, b.data, { ...options, ...this.#jobOptions.get(b.index) }),
    );
    try {
      await execute(qmp, 'transaction', this.toCommand(), options);
    } catch (error) {
      await Promise.all(jobs.map((j) => j._startFailed()));
      throw error;
    }
    return { jobs, results: () => Promise.all(jobs.map((j) => j.result)) };
  }
}
