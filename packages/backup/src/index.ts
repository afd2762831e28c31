export {
  BackupError,
  BackupJobError,
  BitmapNotFoundError,
  BlockDriverUnavailableError,
  BlockdevCreateError,
  ChainBrokenError,
  InvalidGranularityError,
  InvalidTransactionError,
  JobTrackingError,
  ManifestError,
  NewFullBackupRequiredError,
  NodeNotFoundError,
  TargetExistsError,
  VerifyError,
} from './errors.js';
export type { ChainBrokenReason } from './errors.js';
export type { BackupQmp, CallOptions, QmpEventLike, QmpTimestamp } from './qmp.js';
export type {
  BackupCommon,
  BitmapSyncMode,
  BlockDirtyBitmapAdd,
  BlockDirtyBitmapOrStr,
  BlockdevBackup,
  BlockdevCreateOptions,
  BlockdevOnError,
  BlockdevOptions,
  DriveBackup,
  JobStatus,
  MirrorSyncMode,
  NewImageMode,
  TransactionAction,
} from './qapi.js';
export {
  MAX_GRANULARITY,
  MIN_GRANULARITY,
  addBitmap,
  checkGranularity,
  clearBitmap,
  disableBitmap,
  enableBitmap,
  findBitmap,
  getBitmap,
  isValidGranularity,
  listBitmaps,
  mergeBitmaps,
  removeBitmap,
  resolveNode,
} from './bitmaps.js';
export type { AddBitmapOptions, BitmapStatus, ResolvedNode } from './bitmaps.js';
export { BackupJob, isJobEvent, startBlockdevBackup, startDriveBackup } from './job.js';
export type { BackupJobOptions, BlockJobErrorInfo, JobCancelOptions, JobEndStatus, JobProgress, JobResult } from './job.js';
export { addNode, createTargetNode, removeNode, runBlockdevCreate } from './nodes.js';
export type { TargetNodeOptions } from './nodes.js';
export { Transaction } from './transaction.js';
export type { CompletionMode, TransactionRun } from './transaction.js';
export { BackupChain, BackupChainGroup, DEFAULT_BITMAP } from './chain.js';
export type {
  BackupChainGroupOptions,
  BackupChainOptions,
  ChainBackupOptions,
  ChainDriveOptions,
  ChainIncrementalOptions,
  ChainRunResult,
  DriveCheck,
} from './chain.js';
export { MANIFEST_FILE, readManifest, writeManifest } from './manifest.js';
export type { BackupKind, Manifest, ManifestBackup, ManifestDrive } from './manifest.js';
export { restoreChain, verifyChain } from './verify.js';
export type { ImageVerdict, RestoreOptions, VerifyOptions, VerifyReport } from './verify.js';
