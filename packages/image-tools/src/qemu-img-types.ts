/*
 * Shapes of qemu-img's JSON output (QAPI types ImageInfo, ImageCheck and qemu-img map's entries),
 * as printed by QEMU 7.2. Keys keep QEMU's spelling so they match QMP and QEMU's documentation.
 */

export interface SnapshotInfo {
  id: string;
  name: string;
  'vm-state-size': number;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': number;
  'vm-clock-nsec': number;
  icount?: number;
}

/** A persistent dirty bitmap stored in a qcow2 image. */
export interface Qcow2BitmapInfo {
  name: string;
  granularity: number;
  /** 'in-use': not saved cleanly (inconsistent); 'auto': enabled (recording). */
  flags: Array<'in-use' | 'auto'>;
}

export interface ImageInfoSpecificQcow2 {
  compat: string;
  'data-file'?: string;
  'data-file-raw'?: boolean;
  'extended-l2'?: boolean;
  'lazy-refcounts'?: boolean;
  corrupt?: boolean;
  'refcount-bits': number;
  encrypt?: Record<string, unknown>;
  bitmaps?: Qcow2BitmapInfo[];
  'compression-type': 'zlib' | 'zstd';
}

export type ImageInfoSpecific =
  | { type: 'qcow2'; data: ImageInfoSpecificQcow2 }
  | { type: 'vmdk' | 'luks' | 'rbd' | 'file'; data: Record<string, unknown> };

/** `qemu-img info --output=json`. */
export interface ImageInfo {
  filename: string;
  format: string;
  'dirty-flag'?: boolean;
  'actual-size'?: number;
  'virtual-size': number;
  'cluster-size'?: number;
  encrypted?: boolean;
  compressed?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: SnapshotInfo[];
  'backing-image'?: ImageInfo;
  'format-specific'?: ImageInfoSpecific;
}

/** `qemu-img check --output=json`. */
export interface ImageCheck {
  filename: string;
  format: string;
  'check-errors': number;
  'image-end-offset'?: number;
  corruptions?: number;
  leaks?: number;
  'corruptions-fixed'?: number;
  'leaks-fixed'?: number;
  'total-clusters'?: number;
  'allocated-clusters'?: number;
  'fragmented-clusters'?: number;
  'compressed-clusters'?: number;
}

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

/** One extent of `qemu-img map --output=json`. */
export interface MapEntry {
  start: number;
  length: number;
  /** How many backing levels down the data comes from (0: the image itself). */
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  compressed?: boolean;
  /** Host offset of the data, when it has one. */
  offset?: number;
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
