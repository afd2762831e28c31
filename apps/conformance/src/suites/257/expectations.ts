import { CLUSTERS, GRANULARITY } from './model.js';

// What iotest 257's expected output shows that depends on the QEMU version under test. The
// reference's .out file is QEMU 7.2's; where a later QEMU gives another answer and QEMU's own
// expected output changed with it, the case checks that version's answer and says so.

export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
}

export function versionText(v: QemuVersion): string {
  return `${v.major}.${v.minor}.${v.micro}`;
}

export function atLeast(v: QemuVersion, major: number, minor = 0): boolean {
  return v.major > major || (v.major === major && v.minor >= minor);
}

/** A bitmap as the reference prints it (`name` only for a named bitmap). */
export interface ListedBitmap {
  name?: string;
  count: number;
  granularity: number;
  busy: boolean;
  recording: boolean;
  persistent: boolean;
}

export type BitmapListing = Record<string, ListedBitmap[]>;

export const anonymous = (count: number, recording: boolean): ListedBitmap => ({
  count,
  granularity: GRANULARITY,
  busy: false,
  recording,
  persistent: false,
});

export const bitmap0 = (count: number, busy = false): ListedBitmap => ({
  name: 'bitmap0',
  count,
  granularity: GRANULARITY,
  busy,
  recording: true,
  persistent: false,
});

/**
 * Every bitmap while a backup job waits to be finalized, after guest writes went through its
 * filter node `backup-top`: bitmap0 is busy; the job and its copy-before-write filter hold
 * anonymous bitmaps of their own, one of which (on drive0) records the writes made meanwhile.
 *
 * QEMU 7.2: the filter has two (every cluster still to copy, the writes made meanwhile), drive0
 * has two besides bitmap0 (an empty one that does not record, the recording one).
 * QEMU 10.0 and later: the filter has a third, empty one, and drive0 only the recording one;
 * QEMU's own 257.out changed to this layout. QEMU 8.x and 9.x are not among the versions this
 * project runs; they get the later layout.
 */
export function pendingListing(version: QemuVersion, bitmap0Count: number, writtenMeanwhile: number): BitmapListing {
  const all = CLUSTERS * GRANULARITY;
  const during = writtenMeanwhile * GRANULARITY;
  if (!atLeast(version, 8)) {
    return {
      'backup-top': [anonymous(all, false), anonymous(during, false)],
      drive0: [anonymous(0, false), anonymous(during, true), bitmap0(bitmap0Count, true)],
    };
  }
  return {
    'backup-top': [anonymous(all, false), anonymous(during, false), anonymous(0, false)],
    drive0: [anonymous(during, true), bitmap0(bitmap0Count, true)],
  };
}
