/**
 * The signal a pull-mode copy runs under: aborted by the caller's signal, by `timeout`, or by
 * the copy itself (`abort(reason)`: the first drive whose copy fails, or a fleecing job that
 * ended under it). `timedOut` tells the timeout apart, so the error can say which it was.
 */
export class RunDeadline {
  readonly #stop = new AbortController();
  readonly #timer: ReturnType<typeof setTimeout> | undefined;
  #timedOut = false;
  readonly signal: AbortSignal;

  constructor(options: { signal?: AbortSignal; timeout?: number }) {
    const { timeout } = options;
    this.#timer =
      timeout === undefined
        ? undefined
        : setTimeout(() => {
            this.#timedOut = true;
            this.#stop.abort(new Error(`timed out after ${String(timeout)} ms`));
          }, timeout);
    this.signal = options.signal ? AbortSignal.any([options.signal, this.#stop.signal]) : this.#stop.signal;
  }

  get timedOut(): boolean {
    return this.#timedOut;
  }

  /** Why the run itself stopped (not the caller's signal), if it did. */
  get reason(): unknown {
    return this.#stop.signal.aborted ? this.#stop.signal.reason : undefined;
  }

  abort(reason: unknown): void {
    this.#stop.abort(reason);
  }

  dispose(): void {
    if (this.#timer) clearTimeout(this.#timer);
  }
}
