export {
  BackupAbortedError,
  BackupError,
  BackupJobError,
  BitmapNotFoundError,
  BitmapRangeError,
  BlockDriverUnavailableError,
  BlockdevCreateError,
  ChainBrokenError,
  DriveBusyError,
  InvalidGranularityError,
  InvalidTransactionError,
  JobTrackingError,
  ManifestError,
  NewFullBackupRequiredError,
  NodeNotFoundError,
  PendingRunError,
  PullSinkError,
  PullUnavailableError,
  TargetExistsError,
  VerifyError,
} from './errors.js';
export type { ChainBrokenReason, PendingJobInfo, PullUnavailableReason } from './errors.js';
export type { BackupEventListener, BackupQmp, CallOptions, QmpEventLike, QmpTimestamp } from './qmp.js';
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
export { BackupChain, BackupChainGroup, DEFAULT_BITMAP, DEFAULT_BITMAP_PREFIX } from './chain.js';
export type {
  BackupChainGroupOptions,
  BackupChainOptions,
  ChainBackupOptions,
  ChainDriveOptions,
  ChainIncrementalOptions,
  ChainResizeOptions,
  ChainResizeResult,
  ChainRunResult,
} from './chain.js';
export { inspectChain } from './chain-check.js';
export type { ChainFileStatus, ChainStatus, ChainSummary, DriveCheck, DriveCheckReason } from './chain-check.js';
export { setBitmapRanges } from './bitmap-ranges.js';
export type { BitmapRangeTarget, ByteRange } from './bitmap-ranges.js';
export { DIGEST_ALGORITHM, digestFile } from './digest.js';
export type { FileDigest } from './digest.js';
export { DEFAULT_FILE_MODE, checkFileMode } from './file-mode.js';
export { MANIFEST_FILE, MANIFEST_VERSION, chainsOf, findChain, readManifest, readRunLog, runLogPath, writeManifest } from './manifest.js';
export type {
  BackupKind,
  BackupMode,
  Manifest,
  ManifestBackup,
  ManifestChain,
  ManifestDrive,
  ManifestMark,
  ManifestResize,
  PendingDrive,
  PendingPrune,
  PendingPull,
  PendingPullDrive,
  PendingRun,
  RunLogEntry,
} from './manifest.js';
export { restoreChain, restoredName, verifyChain } from './verify.js';
export type { ImageVerdict, RestoreOptions, VerifyOptions, VerifyReport } from './verify.js';
export { completePrune, pruneChain } from './prune.js';
export { DEFAULT_PULL_CLUSTER, pullBackup } from './pull.js';
export type { PullBackupOptions, PullBackupResult } from './pull.js';
export type { PullDataExtent, PullExtent, PullZeroExtent } from './pull-copy.js';
export { pullCapabilities } from './fleecing.js';
export type { FleecingChoice, FleecingMethod, PullCapabilities } from './fleecing.js';
export type { PruneOptions, PruneResult } from './prune.js';
// The root of every qmpkit error (one check for any package's errors, and their kind).
export { QmpkitError, errorKind, isQmpkitError } from '@qmpkit/errors';
export type { QmpkitErrorKind } from '@qmpkit/errors';
