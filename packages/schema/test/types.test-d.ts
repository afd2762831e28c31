// Compile-time tests, checked by the package's `typecheck` task (tsc over src and test); jest
// does not run this file. Each @ts-expect-error line must fail to compile, or tsc reports the
// directive as unused.
import type {
  BlockDirtyBitmapAdd,
  BlockInfo,
  DriveBackup,
  MirrorSyncMode,
  QmpCommandArgs,
  QmpCommandName,
  QmpCommandReturns,
  QmpCommands,
  QmpEventData,
  QmpEventName,
  QmpEvents,
  QmpOobCommandName,
  TransactionAction,
} from '../src/index.js';

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
function assertType<T extends true>(): T | undefined {
  return undefined;
}

// query-block returns BlockInfo[].
assertType<Equal<QmpCommands['query-block']['returns'], BlockInfo[]>>();
assertType<Equal<QmpCommandReturns<'query-block'>, BlockInfo[]>>();
// Commands without arguments or return value.
assertType<Equal<QmpCommandArgs<'query-block'>, Record<string, never>>>();
assertType<Equal<QmpCommandReturns<'block-dirty-bitmap-add'>, Record<string, never>>>();
// Named argument types are QAPI's.
assertType<Equal<QmpCommandArgs<'block-dirty-bitmap-add'>, BlockDirtyBitmapAdd>>();
assertType<Equal<QmpCommandArgs<'drive-backup'>, DriveBackup>>();
assertType<Equal<DriveBackup['sync'], MirrorSyncMode>>();
// Events.
assertType<Equal<QmpEventData<'STOP'>, Record<string, never>>>();
assertType<Equal<QmpEvents['BLOCK_JOB_COMPLETED']['device'], string>>();
assertType<Equal<'BLOCK_JOB_COMPLETED' extends QmpEventName ? true : false, true>>();
assertType<Equal<'drive-backup' extends QmpCommandName ? true : false, true>>();
assertType<Equal<'no-such-command' extends QmpCommandName ? true : false, false>>();

export const bitmapAdd: QmpCommands['block-dirty-bitmap-add']['args'] = { node: 'node0', name: 'bitmap0', granularity: 65536 };
export const backup: QmpCommandArgs<'drive-backup'> = { device: 'drive0', target: '/tmp/t.qcow2', sync: 'incremental', bitmap: 'bitmap0', format: 'qcow2' };

export const wrongArgumentName: QmpCommands['block-dirty-bitmap-add']['args'] = {
  node: 'node0',
  name: 'bitmap0',
  // @ts-expect-error a wrong argument name does not compile
  granularty: 65536,
};

export const wrongEnumValue: QmpCommands['drive-backup']['args'] = {
  device: 'drive0',
  target: '/tmp/t.qcow2',
  // @ts-expect-error a wrong enum value does not compile
  sync: 'everything',
};

// @ts-expect-error a missing required member ('name') does not compile
export const missingRequired: QmpCommands['block-dirty-bitmap-add']['args'] = { node: 'node0' };

// @ts-expect-error exactOptionalPropertyTypes: an optional member is not `undefined`
export const undefinedOptional: QmpCommands['block-dirty-bitmap-add']['args'] = { node: 'node0', name: 'b', persistent: undefined };

// Transaction actions are the wire format: { type, data }.
export const actions: TransactionAction[] = [
  { type: 'block-dirty-bitmap-add', data: { node: 'node0', name: 'bitmap0' } },
  { type: 'drive-backup', data: { device: 'drive0', target: '/tmp/full.qcow2', sync: 'full' } },
];
export const transaction: QmpCommandArgs<'transaction'> = { actions, properties: { 'completion-mode': 'grouped' } };

// @ts-expect-error the data of a transaction action must match its type
export const mismatchedAction: TransactionAction = { type: 'block-dirty-bitmap-add', data: { device: 'drive0', target: 'x', sync: 'full' } };

// Discriminated unions narrow on their discriminator.
export function actionNode(action: TransactionAction): string | undefined {
  if (action.type === 'block-dirty-bitmap-add') return action.data.node;
  if (action.type === 'drive-backup') return action.data.device;
  return undefined;
}

// The `inserted.dirty-bitmaps` of QEMU 7.2's query-block; a bitmap's `name` is optional in QAPI.
export function bitmapNames(blocks: QmpCommandReturns<'query-block'>): string[] {
  return blocks.flatMap((b) => b.inserted?.['dirty-bitmaps']?.flatMap((d) => (d.name === undefined ? [] : [d.name])) ?? []);
}

// blockdev-add takes the boxed union BlockdevOptions: the common members plus the driver's.
export const qcow2: QmpCommandArgs<'blockdev-add'> = {
  driver: 'qcow2',
  'node-name': 'node0',
  file: { driver: 'file', filename: '/tmp/a.qcow2' },
};
// @ts-expect-error a qcow2 node needs its `file`
export const qcow2WithoutFile: QmpCommandArgs<'blockdev-add'> = { driver: 'qcow2', 'node-name': 'node0' };
// The commands QEMU 7.2 lets run out of band.
assertType<Equal<QmpOobCommandName, 'migrate-pause' | 'migrate-recover' | 'query-yank' | 'yank'>>();
