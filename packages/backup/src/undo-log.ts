// The steps a run took, each with how to take it back, in one list: undone newest first.
//
// Two kinds of step. An *undo* step is taken back only when the run fails (a target file, a
// bitmap the run added). A *teardown* step is taken back however the run ends (an NBD export,
// a fleecing node): `tearDown()` takes back just those, `undoAll()` everything, and in both
// the order is the reverse of the order they were registered, so a step never outlives what
// it depends on (an export goes before the node it exports, a node before the file under it).

export interface UndoStepOptions {
  /**
   * The run's bitmap coverage depends on it (a frozen copy of the chain's bitmap merged back):
   * if it fails, the run must stay pending in the manifest for a later run to finish it,
   * rather than be forgotten with a bitmap that misses writes.
   */
  critical?: boolean;
}

/** Where a run registers what it did; implemented by `UndoLog` (and `ChainRun`, which owns one). */
export interface RunSteps {
  /** Taken back only when the run fails. */
  undoWith(what: string, step: () => Promise<void>, options?: UndoStepOptions): void;
  /** Taken back when the run ends, whatever its end. */
  teardownWith(what: string, step: () => Promise<void>): void;
}

interface Step {
  what: string;
  step: () => Promise<void>;
  teardown: boolean;
  critical: boolean;
}

export interface UndoOutcome {
  /** `what: reason` of every step that failed. */
  failures: string[];
  /** A critical step failed (see `UndoStepOptions.critical`). */
  criticalFailed: boolean;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class UndoLog implements RunSteps {
  readonly #steps: Step[] = [];

  undoWith(what: string, step: () => Promise<void>, options: UndoStepOptions = {}): void {
    this.#steps.push({ what, step, teardown: false, critical: options.critical === true });
  }

  teardownWith(what: string, step: () => Promise<void>): void {
    this.#steps.push({ what, step, teardown: true, critical: false });
  }

  /** Steps still registered. */
  get size(): number {
    return this.#steps.length;
  }

  /** Take back the teardown steps, newest first, and forget them; every one is tried. */
  async tearDown(): Promise<UndoOutcome> {
    const outcome: UndoOutcome = { failures: [], criticalFailed: false };
    for (let i = this.#steps.length - 1; i >= 0; i--) {
      const s = this.#steps[i] as Step;
      if (!s.teardown) continue;
      this.#steps.splice(i, 1);
      await this.#take(s, outcome);
    }
    return outcome;
  }

  /** Take back every step, newest first, and forget them; every one is tried. Never throws. */
  async undoAll(): Promise<UndoOutcome> {
    const outcome: UndoOutcome = { failures: [], criticalFailed: false };
    for (const s of this.#steps.splice(0).reverse()) await this.#take(s, outcome);
    return outcome;
  }

  /** Forget every step (the run is recorded: nothing is to be taken back). */
  clear(): void {
    this.#steps.length = 0;
  }

  async #take(s: Step, outcome: UndoOutcome): Promise<void> {
    try {
      await s.step();
    } catch (error) {
      outcome.failures.push(`${s.what}: ${errorMessage(error)}`);
      if (s.critical) outcome.criticalFailed = true;
    }
  }
}
