import { API_ROWS, apiCaseId, expectedRefusal } from './api.js';
import { caseId, scenarioParams } from './bitmap-sync.js';
import { pendingListing } from './expectations.js';
import { BitmapModel, GRANULARITY, groupClusters, writeCommand, WRITE_GROUPS } from './model.js';

// The data and predictions of the 257 suite, without QEMU, against what the reference states:
// the cluster counts its comments give for each write group, the counts its expected output
// shows, and its API table's size and messages.

const v72 = { major: 7, minor: 2, micro: 22 };

describe('write groups', () => {
  it('dirty the clusters the reference describes', () => {
    const sizes = [0, 1, 2, 3].map((g) => groupClusters(g).size);
    expect(sizes).toEqual([4, 6, 7, 8]);
    const seen = new Set<number>();
    const fresh = [0, 1, 2, 3].map((g) => {
      const newOnes = [...groupClusters(g)].filter((c) => !seen.has(c));
      newOnes.forEach((c) => seen.add(c));
      return newOnes.length;
    });
    expect(fresh).toEqual([4, 3, 3, 5]);
    // Group 3 does not touch cluster 0, which a failing job copies before its error.
    expect(groupClusters(3).has(0)).toBe(false);
  });

  it('are written with the reference\'s qemu-io commands', () => {
    expect(WRITE_GROUPS[0]?.map(writeCommand)).toEqual([
      'write -P0x49 0x0000000 0x10000',
      'write -P0x6c 0x0100000 0x10000',
      'write -P0x6f 0x2000000 0x10000',
      'write -P0x76 0x3ff0000 0x10000',
    ]);
    expect(writeCommand({ pattern: 0x67, offset: 0x3fe0000, length: 2 * GRANULARITY })).toBe('write -P0x67 0x3fe0000 0x20000');
  });
});

describe('bitmap model', () => {
  it('predicts the counts of the expected output for bitmap mode "never" with a cancel', () => {
    const m = new BitmapModel();
    m.dirtyGroup(1);
    expect(m.count).toBe(6);
    m.dirtyGroup(2); // cancelled: nothing cleared, the writes meanwhile merged
    expect(m.count).toBe(10);
    m.dirtyGroup(3);
    expect(m.count).toBe(15);
    expect(m.bytes).toBe(983040);
  });

  it('predicts 1009 dirty clusters after a failed full backup with bitmap mode "always"', () => {
    const m = new BitmapModel();
    m.dirtyGroup(1);
    m.clearBit(m.firstBit());
    const fail = m.firstBit();
    expect(fail).toBe(15);
    m.clear();
    m.dirty(Array.from({ length: 1024 - fail }, (_, i) => fail + i));
    expect(m.count).toBe(1009);
    m.dirtyGroup(3);
    expect(m.count).toBe(1014);
  });

  it('refuses the first bit of an empty model', () => {
    expect(() => new BitmapModel().firstBit()).toThrow(RangeError);
  });
});

describe('cases', () => {
  it('cover the 21 scenarios in the reference\'s order, with unique ids', () => {
    const ids = scenarioParams().map(caseId);
    expect(ids).toHaveLength(21);
    expect(new Set(ids).size).toBe(21);
    expect(ids.slice(0, 3)).toEqual(['257.bitmap.never.simulated', '257.bitmap.never.intermediate', '257.bitmap.never.no-failure']);
    expect(ids[ids.length - 1]).toBe('257.top.always.no-failure');
    expect(ids.filter((id) => id.includes('.never.'))).toHaveLength(3);
  });

  it('cover the 48 rows of the API table', () => {
    const bySync = new Map<string, number>();
    for (const row of API_ROWS) bySync.set(row.sync, (bySync.get(row.sync) ?? 0) + 1);
    expect(Object.fromEntries(bySync)).toEqual({ incremental: 10, bitmap: 9, full: 9, top: 9, none: 11 });
    expect(new Set(API_ROWS.map(apiCaseId)).size).toBe(48);
  });

  it('expect QEMU\'s messages of the reference for rows where the order of its checks matters', () => {
    const refusal = (sync: string, bitmap: string | undefined, mode: string | undefined): string => {
      const row = API_ROWS.find((r) => r.sync === sync && r.bitmap === bitmap && r.mode === mode);
      if (row === undefined) throw new Error(`no row ${sync} ${bitmap} ${mode}`);
      return expectedRefusal(row, v72);
    };
    expect(refusal('incremental', 'bitmap404', 'always')).toBe("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'");
    expect(refusal('incremental', 'bitmap404', undefined)).toBe("Bitmap 'bitmap404' could not be found");
    expect(refusal('bitmap', undefined, 'never')).toBe("must provide a valid bitmap name for 'bitmap' sync mode");
    expect(refusal('none', 'bitmap0', undefined)).toBe('Bitmap sync mode must be given when providing a bitmap');
    expect(refusal('none', 'bitmap0', 'always')).toBe("sync mode 'none' does not produce meaningful bitmap outputs");
    expect(refusal('top', 'bitmap0', 'never')).toBe("Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'top'");
    expect(refusal('full', undefined, 'on-success')).toBe('Cannot specify bitmap sync mode without a bitmap');
    // A call QEMU accepts is not a row.
    expect(() => expectedRefusal({ sync: 'bitmap', bitmap: 'bitmap0', mode: 'never' }, v72)).toThrow(/not refused/);
  });
});

describe('bitmaps while a job waits to be finalized', () => {
  it('has QEMU 7.2\'s layout on 7.2 and the later one from 10.0 on', () => {
    expect(pendingListing(v72, 393216, 7)).toEqual({
      'backup-top': [
        { count: 67108864, granularity: GRANULARITY, busy: false, recording: false, persistent: false },
        { count: 458752, granularity: GRANULARITY, busy: false, recording: false, persistent: false },
      ],
      drive0: [
        { count: 0, granularity: GRANULARITY, busy: false, recording: false, persistent: false },
        { count: 458752, granularity: GRANULARITY, busy: false, recording: true, persistent: false },
        { name: 'bitmap0', count: 393216, granularity: GRANULARITY, busy: true, recording: true, persistent: false },
      ],
    });
    const later = pendingListing({ major: 10, minor: 0, micro: 7 }, 393216, 7);
    expect(later['backup-top']).toHaveLength(3);
    expect(later['drive0']?.map((b) => b.count)).toEqual([458752, 393216]);
  });
});
