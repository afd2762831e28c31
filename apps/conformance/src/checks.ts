// Named checks. Every verdict a case gives belongs to one named check, and each check says
// whose it is: the reference's (what QEMU's iotest asserts) or the suite's own (what this port
// asserts beyond it). Reports count the checks each case passed, and a failure names its check,
// so a reader sees which kind of check held or broke.

export type CheckOrigin = 'reference' | 'suite';

export interface CheckDefinition {
  origin: CheckOrigin;
  /** One sentence: what a pass means. */
  description: string;
}

/** How many times a case passed one check. */
export interface CheckCount {
  name: string;
  origin: CheckOrigin;
  passed: number;
}

/** The check a failure belongs to. */
export interface FailedCheck {
  name: string;
  origin: CheckOrigin;
}

/** Counts passed checks in the order they first passed. */
export class CheckTally {
  readonly #counts = new Map<string, CheckCount>();

  record(name: string, origin: CheckOrigin, times = 1): void {
    const entry = this.#counts.get(name);
    if (entry === undefined) this.#counts.set(name, { name, origin, passed: times });
    else entry.passed += times;
  }

  counts(): CheckCount[] {
    return [...this.#counts.values()].map((c) => ({ ...c }));
  }
}

/** `[reference: image-compare]`: how a failure message names its check. */
export function checkLabel(check: FailedCheck): string {
  return `[${check.origin}: ${check.name}]`;
}
