export { QemuImg, qemuImg } from './qemu-img.js';
export type {
  BitmapAction,
  BitmapOptions,
  CheckOptions,
  CommitOptions,
  CompareOptions,
  ConvertOptions,
  CreateOptions,
  InfoOptions,
  MapOptions,
  QemuImgOptions,
  RebaseOptions,
  ResizeOptions,
} from './qemu-img.js';
export type {
  CheckResult,
  CheckStatus,
  CompareResult,
  ImageCheck,
  ImageInfo,
  ImageInfoSpecific,
  ImageInfoSpecificQcow2,
  MapEntry,
  Qcow2BitmapInfo,
  QemuImgVersion,
  SnapshotInfo,
} from './qemu-img-types.js';
export { QemuIo, qemuIo, findQemuIoFailures } from './qemu-io.js';
export type {
  IoRange,
  PatternRange,
  QemuIoOptions,
  QemuIoResult,
  QemuIoRunOptions,
  ReadRequest,
  WriteRequest,
} from './qemu-io.js';
export { compareImages } from './image-compare.js';
export { mapImageData, setBackingFile } from './image-map.js';
export type { DataExtent, ImageDataMap, MapImageOptions, SetBackingFileOptions } from './image-map.js';
export type { CompareImagesOptions, ImageComparison } from './image-compare.js';
export { createQcow2Image } from './qcow2-create.js';
export type { Qcow2ImageOptions } from './qcow2-create.js';
export { Qcow2ImageWriter } from './qcow2-write.js';
export type { Qcow2WriteSummary, Qcow2WriterOptions } from './qcow2-write.js';
export { formatSize, parseSize, parseSizeBigInt } from './size.js';
export type { Size } from './size.js';
export type { CacheMode, ImageOptsRef, ImageRef, OptionMap, OptionValue } from './arguments.js';
export type { CallOptions } from './run-process.js';
export {
  ImageFileError,
  ImageFileExistsError,
  ImageToolsAbortError,
  ImageToolsArgumentError,
  ImageToolsError,
  Qcow2WriteRangeError,
  Qcow2WriterStateError,
  QemuImgError,
  QemuIoError,
  ToolError,
  UnsupportedQcow2LayoutError,
} from './errors.js';
export type {
  ImageFileOperation,
  ImageToolsErrorOptions,
  Qcow2WriteRangeProblem,
  Qcow2WriterState,
  ToolErrorDetails,
  ToolFailureReason,
  UnsupportedQcow2LayoutReason,
} from './errors.js';
// The root of every qmpkit error (one check for any package's errors, and their kind).
export { QmpkitError, errorKind, isQmpkitError } from '@qmpkit/errors';
export type { QmpkitErrorKind } from '@qmpkit/errors';
