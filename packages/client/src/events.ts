import { EventEmitter } from 'node:events';
import type { QmpEvents } from '@qmpkit/schema';
import type * as TE from 'typed-emitter';
import { QmpAbortError, QmpConnectionError, QmpError, QmpEventOverflowError, QmpTimeoutError } from './errors.js';
import type { QmpRawEvent, QmpTimestamp } from './messages.js';

type TypedEmitter<L extends TE.EventMap> = TE.default<L>;

/** Any map from event name to its `data` type, e.g. `QmpEvents` from `@qmpkit/schema`. */
export type EventSpecs<E> = { [K in keyof E]: unknown };

/**
 * An event map for untyped use: any name, data as a loosely typed object. (The default is
 * `QmpEvents` from `@qmpkit/schema`; events without data get `{}`, see `QmpEventMessage`.)
 */
export interface LooseEvents {
  [name: string]: Record<string, unknown>;
}

/**
 * An event as delivered: `data` is always present (`{}` for events QEMU sends without
 * data), so `ev.data.device` needs no guard. For a union of names it is a union of
 * events, so checking `ev.event` narrows `ev.data`.
 */
export type QmpEventMessage<E, K extends keyof E & string = keyof E & string> = K extends keyof E & string
  ? { event: K; data: E[K]; timestamp: QmpTimestamp }
  : never;

/** A partial, nested copy of a value: every present member must equal the value's. */
export type DeepPartial<T> = T extends readonly (infer U)[]
  ? readonly DeepPartial<U>[]
  : T extends object
    ? { [P in keyof T]?: DeepPartial<T[P]> }
    : T;

export type EventMatch<T> = DeepPartial<T> | ((event: T) => boolean);

export interface WaitOptions<T> {
  /**
   * Which event to take: a partial nested object (each value in it must equal the event's
   * value at the same path, as QEMU's iotests `event_wait` compares) or a predicate.
   */
  match?: EventMatch<T>;
  /** Milliseconds; rejects with `QmpTimeoutError`. No timeout when omitted. */
  timeout?: number;
  /** Rejects with `QmpAbortError` when aborted. */
  signal?: AbortSignal;
}

export interface EventHubOptions<E> {
  /** Events kept for late waiters and `drain()`. Default 1000; 0 keeps none. */
  historySize?: number;
  /**
   * Called when the full history buffer evicts its oldest event to make room, with that
   * event and the eviction count so far (this one included).
   */
  onEvict?: (event: QmpEventMessage<E>, evicted: number) => void;
}

export interface StreamOptions {
  /** Events queued for a slow consumer before the stream overflows. Default 1000. */
  capacity?: number;
  /** Ends the stream with `QmpAbortError`. */
  signal?: AbortSignal;
}

/** @internal Connection-side handle; not exported from the package. */
export const kDispatch: unique symbol = Symbol('qmpkit.client.dispatch');
/** @internal */
export const kEnd: unique symbol = Symbol('qmpkit.client.end');

interface Waiter<E> {
  names: ReadonlySet<string>;
  test: (event: QmpEventMessage<E>) => boolean;
  resolve: (event: QmpEventMessage<E>) => void;
  reject: (error: unknown) => void;
}

interface StreamSubscriber<E> {
  names: ReadonlySet<string> | undefined;
  offer: (event: QmpEventMessage<E>) => void;
  end: (error: QmpError | undefined) => void;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The comparison of QEMU's iotests `event_wait`: every member of `pattern` must be present
 * in `value` and match recursively; arrays match element by element with equal length;
 * anything else must be strictly equal.
 */
export function matchesPartial(value: unknown, pattern: unknown): boolean {
  if (isPlainObject(pattern)) {
    if (!isPlainObject(value)) return false;
    for (const key of Object.keys(pattern)) {
      if (!(key in value) || !matchesPartial(value[key], pattern[key])) return false;
    }
    return true;
  }
  if (Array.isArray(pattern)) {
    if (!Array.isArray(value) || value.length !== pattern.length) return false;
    return pattern.every((item, index) => matchesPartial(value[index], item));
  }
  return Object.is(value, pattern);
}

function toNameSet(names: string | readonly string[] | undefined): ReadonlySet<string> | undefined {
  if (names === undefined) return undefined;
  return new Set(typeof names === 'string' ? [names] : names);
}

function describeNames(names: ReadonlySet<string> | undefined): string {
  return names === undefined ? 'any event' : [...names].join(' | ');
}

/**
 * Receives every event of one connection and hands it out four ways:
 * - listeners (`on('event')`, `on(name)`) see every event as it arrives;
 * - `stream()` gives each consumer its own bounded queue;
 * - `wait()` takes one matching event: first from the history buffer (events that
 *   arrived before the wait began), else the next one to arrive;
 * - `drain()` takes, and `clear()` forgets, what is buffered.
 * An event taken by a waiter is not buffered; one that no waiter matches is buffered
 * so a later waiter or `drain()` still sees it. The buffer is bounded: when it is full the
 * oldest event is evicted, counted in `evicted` and reported to `onEvict`, never lost unseen.
 */
export class QmpEventHub<E extends EventSpecs<E> = QmpEvents> {
  readonly historySize: number;

  // Keyed by event name plus 'event'; the public overloads above give each name its type.
  readonly #emitter = new EventEmitter() as unknown as TypedEmitter<Record<string, (event: QmpEventMessage<E>) => void>>;
  #history: QmpEventMessage<E>[] = [];
  readonly #waiters = new Set<Waiter<E>>();
  readonly #streams = new Set<StreamSubscriber<E>>();
  readonly #onEvict: ((event: QmpEventMessage<E>, evicted: number) => void) | undefined;
  #evicted = 0;
  #ended: { error: QmpConnectionError } | undefined;

  constructor(options: EventHubOptions<E> = {}) {
    const size = options.historySize ?? 1000;
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`historySize must be a non-negative integer, got ${String(size)}`);
    this.historySize = size;
    this.#onEvict = options.onEvict;
    // One listener per waiter is normal; leave the leak warning to real leaks.
    (this.#emitter as unknown as EventEmitter).setMaxListeners(0);
  }

  // Overloads rather than one signature indexed by name: a listener with an annotated
  // parameter would otherwise steer the inference of the name away from 'event'.
  /** Calls `listener` with every event. */
  on(name: 'event', listener: (event: QmpEventMessage<E>) => void): this;
  /** Calls `listener` with each event named `name`. */
  on<K extends keyof E & string>(name: K, listener: (event: QmpEventMessage<E, K>) => void): this;
  on(name: string, listener: (event: never) => void): this {
    this.#emitter.on(name, listener as (event: QmpEventMessage<E>) => void);
    return this;
  }

  once(name: 'event', listener: (event: QmpEventMessage<E>) => void): this;
  once<K extends keyof E & string>(name: K, listener: (event: QmpEventMessage<E, K>) => void): this;
  once(name: string, listener: (event: never) => void): this {
    this.#emitter.once(name, listener as (event: QmpEventMessage<E>) => void);
    return this;
  }

  off(name: 'event', listener: (event: QmpEventMessage<E>) => void): this;
  off<K extends keyof E & string>(name: K, listener: (event: QmpEventMessage<E, K>) => void): this;
  off(name: string, listener: (event: never) => void): this {
    this.#emitter.off(name, listener as (event: QmpEventMessage<E>) => void);
    return this;
  }

  listenerCount(name: 'event' | (keyof E & string)): number {
    return this.#emitter.listenerCount(name);
  }

  removeAllListeners(name?: 'event' | (keyof E & string)): this {
    if (name === undefined) this.#emitter.removeAllListeners();
    else this.#emitter.removeAllListeners(name);
    return this;
  }

  /**
   * How many buffered events the full history buffer has evicted (oldest first) to make
   * room for newer ones, over the hub's life. Events taken by `wait()`, `drain()` or
   * `clear()` are not counted, nor events never buffered because `historySize` is 0.
   * Evicted events did reach listeners and streams; only later waits and `drain()` miss them.
   */
  get evicted(): number {
    return this.#evicted;
  }

  /** Events currently buffered, oldest first (a copy; nothing is taken). */
  get buffered(): readonly QmpEventMessage<E>[] {
    return [...this.#history];
  }

  /**
   * Takes the first event named `name` (or any of `names`) that satisfies `match`:
   * from the buffer if one is there, else the next to arrive. The event is removed
   * from the buffer, so two waiters never receive the same event.
   * Rejects with `QmpTimeoutError`, `QmpAbortError`, or `QmpConnectionError` when the
   * connection ends first.
   */
  wait<K extends keyof E & string>(
    name: K | readonly K[],
    options: WaitOptions<QmpEventMessage<E, K>> = {},
  ): Promise<QmpEventMessage<E, K>> {
    const names = toNameSet(name) ?? new Set<string>();
    const operation = `wait for event ${describeNames(names)}`;
    const { match, timeout, signal } = options;
    const test = (event: QmpEventMessage<E>): boolean => {
      if (!names.has(event.event)) return false;
      if (match === undefined) return true;
      if (typeof match === 'function') return match(event as QmpEventMessage<E, K>);
      return matchesPartial(event, match);
    };

    if (signal?.aborted) return Promise.reject(new QmpAbortError(operation, signal.reason));
    try {
      const index = this.#history.findIndex(test);
      if (index >= 0) {
        const [event] = this.#history.splice(index, 1);
        return Promise.resolve(event as QmpEventMessage<E, K>);
      }
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.#ended) return Promise.reject(this.#ended.error);

    return new Promise<QmpEventMessage<E, K>>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = (): void => settle(() => reject(new QmpAbortError(operation, signal?.reason)));
      const settle = (action: () => void): void => {
        if (!this.#waiters.delete(waiter)) return;
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        action();
      };
      const waiter: Waiter<E> = {
        names,
        test,
        resolve: (event) => settle(() => resolve(event as QmpEventMessage<E, K>)),
        reject: (error) => settle(() => reject(error)),
      };
      this.#waiters.add(waiter);
      if (timeout !== undefined) {
        timer = setTimeout(() => settle(() => reject(new QmpTimeoutError(operation, timeout))), timeout);
      }
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Takes (removes and returns) every buffered event, or those with one of `names`.
   */
  drain<K extends keyof E & string>(names?: K | readonly K[]): QmpEventMessage<E, K>[] {
    const wanted = toNameSet(names);
    if (wanted === undefined) {
      const all = this.#history;
      this.#history = [];
      return all as QmpEventMessage<E, K>[];
    }
    const taken: QmpEventMessage<E, K>[] = [];
    const kept: QmpEventMessage<E>[] = [];
    for (const event of this.#history) {
      if (wanted.has(event.event)) taken.push(event as QmpEventMessage<E, K>);
      else kept.push(event);
    }
    this.#history = kept;
    return taken;
  }

  /** Forgets every buffered event. */
  clear(): void {
    this.#history = [];
  }

  /**
   * An async iterator over events that arrive from now on (all, or those with one of
   * `names`). Each stream has its own queue of at most `capacity` events; a consumer that
   * falls further behind gets the queued events and then a `QmpEventOverflowError`, rather
   * than the queue growing without bound. When the connection closes, the stream ends after
   * its queued events; when the connection is lost, it throws the `QmpConnectionError` instead.
   * Leaving a `for await` loop early unsubscribes.
   */
  stream<K extends keyof E & string>(
    names?: K | readonly K[],
    options: StreamOptions = {},
  ): AsyncIterableIterator<QmpEventMessage<E, K>> {
    const capacity = options.capacity ?? 1000;
    if (!Number.isSafeInteger(capacity) || capacity < 1) throw new RangeError(`capacity must be a positive integer, got ${String(capacity)}`);
    const signal = options.signal;
    const wanted = toNameSet(names);
    const queue: QmpEventMessage<E, K>[] = [];
    let dropped = 0;
    let finished = false;
    let failure: QmpError | undefined;
    let waiting: { resolve: (r: IteratorResult<QmpEventMessage<E, K>>) => void; reject: (e: unknown) => void } | undefined;

    const unsubscribe = (): void => {
      this.#streams.delete(subscriber);
      signal?.removeEventListener('abort', onAbort);
    };
    const flush = (): void => {
      if (!waiting) return;
      const pending = waiting;
      const next = queue.shift();
      if (next !== undefined) {
        waiting = undefined;
        pending.resolve({ value: next, done: false });
      } else if (dropped > 0) {
        const lost = dropped;
        waiting = undefined;
        dropped = 0;
        finished = true;
        failure = undefined;
        unsubscribe();
        pending.reject(new QmpEventOverflowError(capacity, lost));
      } else if (finished) {
        waiting = undefined;
        if (failure) {
          const error = failure;
          failure = undefined;
          pending.reject(error);
        } else {
          pending.resolve({ value: undefined, done: true });
        }
      }
    };
    const subscriber: StreamSubscriber<E> = {
      names: wanted,
      offer: (event) => {
        if (dropped > 0 || queue.length >= capacity) {
          dropped++;
        } else {
          queue.push(event as QmpEventMessage<E, K>);
        }
        flush();
      },
      end: (error) => {
        if (finished) return;
        finished = true;
        failure = error;
        unsubscribe();
        flush();
      },
    };
    const onAbort = (): void => subscriber.end(new QmpAbortError(`event stream of ${describeNames(wanted)}`, signal?.reason));

    if (signal?.aborted) onAbort();
    else if (this.#ended) {
      finished = true;
      failure = this.#ended.error;
    } else {
      this.#streams.add(subscriber);
      signal?.addEventListener('abort', onAbort, { once: true });
    }

    const iterator: AsyncIterableIterator<QmpEventMessage<E, K>> = {
      next: () => {
        if (waiting) return Promise.reject(new Error('stream: next() called before the previous call settled'));
        if (finished && queue.length === 0 && dropped === 0 && failure === undefined) {
          return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => {
          waiting = { resolve, reject };
          flush();
        });
      },
      return: () => {
        finished = true;
        queue.length = 0;
        dropped = 0;
        failure = undefined;
        unsubscribe();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  /** @internal Called by the connection for each event received. */
  [kDispatch](raw: QmpRawEvent): void {
    const event = {
      event: raw.event,
      data: raw.data === undefined ? {} : raw.data,
      timestamp: raw.timestamp,
    } as QmpEventMessage<E>;
    const emitter = this.#emitter as unknown as EventEmitter;
    // A throwing listener must not tear down the connection's read loop; it surfaces the
    // way an EventEmitter listener error normally does, just outside the socket handler.
    try {
      emitter.emit('event', event);
      // 'error' would throw without a listener; QEMU has no event by that name anyway.
      if (event.event !== 'event' && (event.event !== 'error' || emitter.listenerCount('error') > 0)) {
        emitter.emit(event.event, event);
      }
    } catch (error) {
      process.nextTick(() => {
        throw error;
      });
    }
    for (const stream of this.#streams) {
      if (stream.names === undefined || stream.names.has(event.event)) stream.offer(event);
    }
    for (const waiter of this.#waiters) {
      let taken: boolean;
      try {
        taken = waiter.test(event);
      } catch (error) {
        waiter.reject(error);
        continue;
      }
      if (taken) {
        waiter.resolve(event);
        return;
      }
    }
    if (this.historySize === 0) return;
    const oldest = this.#history.length >= this.historySize ? this.#history.shift() : undefined;
    this.#history.push(event);
    if (oldest !== undefined) {
      this.#evicted++;
      if (this.#onEvict) {
        // Like a listener, a throwing callback must not break the connection's read loop.
        try {
          this.#onEvict(oldest, this.#evicted);
        } catch (error) {
          process.nextTick(() => {
            throw error;
          });
        }
      }
    }
  }

  /**
   * @internal Called once when the connection ends: pending and future waits reject with
   * `error`; streams end (throwing `error` when `lost`, else finishing normally).
   */
  [kEnd](error: QmpConnectionError, lost: boolean): void {
    if (this.#ended) return;
    this.#ended = { error };
    for (const waiter of [...this.#waiters]) waiter.reject(error);
    for (const stream of [...this.#streams]) stream.end(lost ? error : undefined);
  }
}
