/**
 * The parts of a read request that reply chunks have covered so far, to enforce two rules of
 * structured reads: content chunks never overlap, and a successful reply covers the whole
 * request. Servers send chunks in order almost always, so the common case appends to the
 * last range in O(1); out-of-order chunks fall back to a binary search.
 */
export class Coverage {
  /** Sorted, disjoint, non-adjacent [start, end) pairs, flattened. */
  readonly #ranges: number[] = [];
  #covered = 0;

  /** Bytes covered so far. */
  get covered(): number {
    return this.#covered;
  }

  /** Adds [start, end); returns false (and changes nothing) if it overlaps what is covered. */
  add(start: number, end: number): boolean {
    const ranges = this.#ranges;
    const n = ranges.length;
    if (n === 0 || start >= ranges[n - 1]!) {
      if (n > 0 && start === ranges[n - 1]) ranges[n - 1] = end;
      else ranges.push(start, end);
      this.#covered += end - start;
      return true;
    }
    // First range whose end is after `start`.
    let lo = 0;
    let hi = n / 2;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (ranges[2 * mid + 1]! <= start) lo = mid + 1;
      else hi = mid;
    }
    const i = 2 * lo;
    if (ranges[i]! < end) return false; // overlaps range lo
    // Insert before range lo, joining neighbours that touch.
    const joinsPrevious = i > 0 && ranges[i - 1] === start;
    const joinsNext = ranges[i] === end;
    if (joinsPrevious && joinsNext) {
      ranges[i - 1] = ranges[i + 1]!;
      ranges.splice(i, 2);
    } else if (joinsPrevious) {
      ranges[i - 1] = end;
    } else if (joinsNext) {
      ranges[i] = start;
    } else {
      ranges.splice(i, 0, start, end);
    }
    this.#covered += end - start;
    return true;
  }
}
