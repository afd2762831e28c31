export { QemuMachine } from './machine.js';
export type { DriveOptions, HmpQemuIoResult, QemuMachineOptions } from './machine.js';
export { QemuStorageDaemon } from './storage-daemon.js';
export type { QemuStorageDaemonOptions } from './storage-daemon.js';
export { QemuProcess } from './qemu-process.js';
export type {
  ExitStatus,
  MachineQmpClient,
  QemuProcessOptions,
  QemuProcessState,
  QemuProgram,
  QmpConnectOptions,
  ShutdownResult,
  TimeoutOptions,
} from './qemu-process.js';
export type {
  BlockdevOption,
  BlockExportOption,
  DriveFormat,
  NbdServerOption,
  ObjectOption,
  OptionValue,
  StructuredOption,
  Untyped,
} from './option-syntax.js';
export { escapeOptionValue, isUntyped, untyped } from './option-syntax.js';
export {
  InvalidHmpCommandError,
  MachineAbortError,
  MachineConfigError,
  MachineError,
  MachineStateError,
  MachineTimeoutError,
  QemuBinaryNotFoundError,
  QemuIoHmpError,
  QemuLaunchError,
  QemuShutdownError,
} from './errors.js';
export type { LaunchFailureReason } from './errors.js';
// The root of every qmpkit error (one check for any package's errors, and their kind).
export { QmpkitError, errorKind, isQmpkitError } from '@qmpkit/errors';
export type { QmpkitErrorKind } from '@qmpkit/errors';
