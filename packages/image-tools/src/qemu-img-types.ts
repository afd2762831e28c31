/*
 * Shapes of qemu-img's results. Its JSON output (info, check, map) uses QAPI's types and
 * QEMU's key spelling, so they match QMP and QEMU's documentation.
 */

// `info` and `check` print QAPI's ImageInfo and ImageCheck through QEMU's own visitors, and `map`
// prints MapEntry's members; the generated schema types are the source of truth, re-exported
// rather than written again so they cannot drift.
export type {
  ImageCheck,
  ImageInfo,
  ImageInfoSpecific,
  ImageInfoSpecificQCow2 as ImageInfoSpecificQcow2,
  MapEntry,
  Qcow2BitmapInfo,
  SnapshotInfo,
} from '@qmpkit/schema';
import type { ImageCheck } from '@qmpkit/schema';

/**
 * What `qemu-img check` found. Its exit status says it: 0 clean, 2 corruptions, 3 leaked clusters
 * only. (1 "check not completed" and 63 "format cannot be checked" are thrown as QemuImgError.)
 */
export type CheckStatus = 'clean' | 'corrupted' | 'leaked';

export interface CheckResult {
  status: CheckStatus;
  exitCode: 0 | 2 | 3;
  report: ImageCheck;
}

export interface CompareResult {
  identical: boolean;
  /** qemu-img's own words: "Images are identical." or e.g. "Content mismatch at offset 0!" */
  message: string;
}

export interface QemuImgVersion {
  major: number;
  minor: number;
  micro: number;
  /** The version as printed, e.g. '7.2.22'. */
  version: string;
  /** The distribution's package version in parentheses, e.g. 'Debian 1:7.2+dfsg-7+deb12u18+b3'. */
  package?: string;
  /** The full first line of `--version`. */
  text: string;
}
