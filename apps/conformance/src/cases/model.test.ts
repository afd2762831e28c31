import { bytes, DirtyChunks, DiskContent } from './model.js';

// The model the suite's own checks are computed from. Its numbers are checked here against
// what QEMU 7.2 reports for the reference's writes (the reference itself states 458752).

const M = 1024 * 1024;
const K = 1024;
const WRITES_1 = [
  { pattern: 0xab, offset: 0, length: 512 },
  { pattern: 0xfe, offset: 16 * M, length: 256 * K },
  { pattern: 0x64, offset: bytes('32736k'), length: 64 * K },
];

describe('DirtyChunks', () => {
  it('counts the chunks the writes touch, as query-block reports them', () => {
    const at = (granularity: number) => {
      const d = new DirtyChunks(granularity);
      for (const w of WRITES_1) d.mark(w);
      return d;
    };
    // The reference's own figure for 64 KiB: seven chunks.
    expect(at(65536).count(64 * M)).toBe(458752);
    expect(at(32768).count(64 * M)).toBe(11 * 32 * K);
    expect(at(131072).count(64 * M)).toBe(5 * 128 * K);
  });

  it('copies whole clusters of the job: max(64 KiB, target cluster), whatever the bitmap granularity', () => {
    const small = new DirtyChunks(32768);
    for (const w of WRITES_1) small.mark(w);
    // 32 KiB chunks rounded out to 64 KiB clusters: the 64 KiB figure again.
    expect(small.copied(65536, 64 * M)).toBe(458752);
    const plain = new DirtyChunks(65536);
    for (const w of WRITES_1) plain.mark(w);
    // test_larger_cluster_target: 128 KiB target clusters.
    expect(plain.copied(131072, 64 * M)).toBe(5 * 128 * K);
    plain.clear();
    expect(plain.count(64 * M)).toBe(0);
    expect(plain.copied(65536, 64 * M)).toBe(0);
  });
});

describe('DiskContent', () => {
  const base = (): DiskContent => {
    const c = new DiskContent(64 * M);
    c.write({ pattern: 0x41, offset: 0, length: 512 });
    c.write({ pattern: 0xd5, offset: M, length: 32 * K });
    return c;
  };

  it('keeps the last write of each byte and lists the written runs', () => {
    const c = base();
    c.write({ pattern: 0xab, offset: 0, length: 512 });
    c.write({ pattern: 0x55, offset: M + 16 * K, length: 32 * K });
    expect(c.written()).toEqual([
      { pattern: 0xab, offset: 0, length: 512 },
      { pattern: 0xd5, offset: M, length: 16 * K },
      { pattern: 0x55, offset: M + 16 * K, length: 32 * K },
    ]);
  });

  it("predicts qemu-img compare's message: identical, the first different sector, the size warning", () => {
    const a = base();
    const b = a.clone();
    expect(a.comparedWith(b)).toEqual({ identical: true, message: 'Images are identical.' });
    b.write({ pattern: 0x99, offset: M + 1000, length: 10 });
    expect(a.comparedWith(b)).toEqual({ identical: false, message: `Content mismatch at offset ${M + 512}!` });
    const grown = a.clone();
    grown.resize(65 * M);
    expect(a.comparedWith(grown)).toEqual({ identical: true, message: 'Warning: Image size mismatch!' });
    grown.write({ pattern: 0xcd, offset: 64 * M, length: 64 * K });
    expect(grown.comparedWith(a)).toEqual({ identical: false, message: 'Warning: Image size mismatch!' });
  });
});
