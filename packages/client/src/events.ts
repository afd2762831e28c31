import { EventEmitter } from 'node:events';
import type { QmpEvents } from '@qmpkit/schema';
import { QmpAbortError, QmpConnectionError, QmpEventOverflowError, QmpTimeoutError } from './errors.js';
import type { QmpRawEvent, QmpTimestamp } from './messages.js';

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
 * events, so checking `ev.event` narrows `ev.data`. Every consumer of a connection receives
 * the same object: treat it as read-only.
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

/**
 * Which events qualify: a partial nested object (each value in it must equal the event's
 * value at the same path, as QEMU's iotests `event_wait` compares) or a predicate.
 */
export type EventMatch<T> = DeepPartial<T> | ((event: T) => boolean);

export interface WaitOptions<T> {
  /** Which event to wait for (see `EventMatch`). Any event of the names when omitted. */
  match?: EventMatch<T>;
  /** Milliseconds; rejects with `QmpTimeoutError`. No timeout when omitted. */
  timeout?: number;
  /** Rejects with `QmpAbortError` when aborted. */
  signal?: AbortSignal;
}

export interface HubWaitOptions<T> extends WaitOptions<T> {
  /**
   * Also look at the connection's history buffer, oldest first, before waiting for new
   * events. Default false: only events that arrive after the call count. Nothing is taken
   * from the history either way, so two waits with `history: true` can return the same
   * event; for an event caused by a command, prefer a listener opened before sending it.
   */
  history?: boolean;
}

export interface ListenOptions<T> {
  /** Only events that match are queued (see `EventMatch`); others pass the listener by. */
  match?: EventMatch<T>;
  /**
   * Start with the (matching) events of the connection's history buffer, oldest first, as
   * if the listener had been there when they arrived. Default false.
   */
  history?: boolean;
  /**
   * Most events queued at once. Default 1000. An event that arrives when the queue is full
   * and no pending wait takes it is dropped and the listener has overflowed: what it queued
   * can still be taken, then `wait()`, `drain()` and iteration fail with `QmpEventOverflowError`.
   */
  capacity?: number;
  /** Closes the listener when aborted; its pending waits and iteration reject with `QmpAbortError`. */
  signal?: AbortSignal;
}

/** Options of `stream()`: a stream is a listener being iterated. */
export type StreamOptions<T = never> = ListenOptions<T>;

export interface EventHubOptions<E> {
  /** Events kept in the history buffer. Default 1000; 0 keeps none. */
  historySize?: number;
  /**
   * Called when the full history buffer evicts its oldest event to make room, with that
   * event and the eviction count so far (this one included).
   */
  onEvict?: (event: QmpEventMessage<E>, evicted: number) => void;
}

/** @internal Connection-side handle; not exported from the package. */
export const kDispatch: unique symbol = Symbol('qmpkit.client.dispatch');
/** @internal */
export const kEnd: unique symbol = Symbol('qmpkit.client.end');
const kCreate: unique symbol = Symbol('qmpkit.client.createListener');
const kAttach: unique symbol = Symbol('qmpkit.client.attachListener');

/** What the hub hands events to: a listener, or one pending `hub.wait()`. */
interface Consumer<E> {
  readonly names: ReadonlySet<string> | undefined;
  offer(event: QmpEventMessage<E>): void;
  end(error: QmpConnectionError, lost: boolean): void;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The comparison of QEMU's iotests `event_wait`: every member of `pattern` must be present
 * in `value` and match recursively; arrays match element by element with equal length;
 * anything else must be strictly equal. The recursion follows `pattern`, so a deep `value`
 * costs nothing beyond what the pattern names.
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

/** One test from a name filter and a `match`: the names first, so `match` only sees its events. */
function matcher(names: ReadonlySet<string> | undefined, match: unknown): (event: { event: string }) => boolean {
  if (match === undefined) return names === undefined ? () => true : (event) => names.has(event.event);
  const test = typeof match === 'function'
    ? (match as (event: { event: string }) => boolean)
    : (event: { event: string }) => matchesPartial(event, match);
  return names === undefined ? test : (event) => names.has(event.event) && test(event);
}

function checkCapacity(capacity: number): void {
  if (!Number.isSafeInteger(capacity) || capacity < 1) throw new RangeError(`capacity must be a positive integer, got ${String(capacity)}`);
}

interface ListenerWait<E> {
  test: (event: QmpEventMessage<E>) => boolean;
  resolve: (event: QmpEventMessage<E>) => void;
  reject: (error: unknown) => void;
  /** Set for the iterator's `next()`: ends with `done` rather than an error where a loop should just stop. */
  iterator: boolean;
  finish: (outcome: IteratorResult<QmpEventMessage<E>> | { error: unknown }) => void;
}

/** Why a listener receives no more events. */
type ListenerEnd =
  | { kind: 'closed'; reason: unknown }
  | { kind: 'aborted'; reason: unknown }
  | { kind: 'connection'; error: QmpConnectionError; lost: boolean }
  | { kind: 'failed'; error: unknown };

/**
 * One consumer's own queue of events (`qmp.events.listen()`): every event of its names
 * (and `match`) that arrives while it is open is queued for it, whatever other listeners,
 * streams and waits do. Within the listener, `wait()` and `drain()` take events out of its
 * queue (the iotests way: each event is taken once), and iterating it takes them in order.
 * Close it (`close()`, `using`, or leaving a `for await` loop) when done; until then it
 * holds at most `capacity` events.
 *
 * ```ts
 * using stops = qmp.events.listen('STOP');    // before the command that causes the event
 * await qmp.execute('stop');
 * const stop = await stops.wait({ timeout: 5000 });
 * ```
 */
export class QmpEventListener<E extends EventSpecs<E> = QmpEvents, K extends keyof E & string = keyof E & string>
implements AsyncIterable<QmpEventMessage<E, K>> {
  /** The names listened to; undefined for every event. */
  readonly names: readonly K[] | undefined;
  /** Most events queued at once. */
  readonly capacity: number;

  readonly #nameSet: ReadonlySet<string> | undefined;
  readonly #accept: (event: QmpEventMessage<E>) => boolean;
  #queue: QmpEventMessage<E>[] = [];
  readonly #waits: ListenerWait<E>[] = [];
  #dropped = 0;
  // Set when an event was dropped since the last clear(): nothing is queued after a gap, and
  // a wait the queue cannot satisfy fails, because the event it wants may be the lost one.
  #gap = false;
  #gapReported = false;
  #end: ListenerEnd | undefined;
  #detach: (() => void) | undefined;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort: (() => void) | undefined;

  /** @internal Created by `QmpEventHub.listen()`. */
  constructor(
    token: typeof kCreate,
    names: ReadonlySet<string> | undefined,
    options: ListenOptions<QmpEventMessage<E, K>>,
  ) {
    if (token !== kCreate) throw new TypeError('create listeners with qmp.events.listen()');
    const capacity = options.capacity ?? 1000;
    checkCapacity(capacity);
    this.capacity = capacity;
    this.#nameSet = names;
    this.names = names === undefined ? undefined : ([...names] as K[]);
    this.#accept = matcher(names, options.match);
    this.#signal = options.signal;
    if (this.#signal) {
      this.#onAbort = () => this.#finish({ kind: 'aborted', reason: this.#signal?.reason });
    }
  }

  /** @internal Fills the listener from the history and subscribes it to its hub. */
  [kAttach](
    history: readonly QmpEventMessage<E>[] | undefined,
    ended: { error: QmpConnectionError; lost: boolean } | undefined,
    attach: (consumer: Consumer<E>) => () => void,
  ): void {
    if (history) {
      for (const event of history) {
        if (this.#end !== undefined) break;
        this.#offer(event);
      }
    }
    if (this.#end !== undefined) return;
    if (this.#signal?.aborted) {
      this.#finish({ kind: 'aborted', reason: this.#signal.reason });
      return;
    }
    if (ended) {
      this.#end = { kind: 'connection', error: ended.error, lost: ended.lost };
      return;
    }
    this.#detach = attach({
      names: this.#nameSet,
      offer: (event) => this.#offer(event),
      end: (error, lost) => this.#finish({ kind: 'connection', error, lost }),
    });
    if (this.#onAbort) this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** Events queued and not yet taken. */
  get size(): number {
    return this.#queue.length;
  }

  /** Events dropped because the queue was full, over the listener's life. */
  get dropped(): number {
    return this.#dropped;
  }

  /** True after an event was dropped (until `clear()`): the queue no longer has every event. */
  get overflowed(): boolean {
    return this.#gap;
  }

  /** True once the listener receives no more events: closed, aborted, or its connection ended. */
  get closed(): boolean {
    return this.#end !== undefined;
  }

  /** The queued events, oldest first (a copy; nothing is taken). */
  get buffered(): readonly QmpEventMessage<E, K>[] {
    return [...this.#queue] as QmpEventMessage<E, K>[];
  }

  /**
   * Takes the first queued event of `names` (any of the listener's when omitted) that
   * satisfies `match`, or else the next such event to arrive. Rejects with `QmpTimeoutError`,
   * `QmpAbortError` (its signal, or the listener closed), `QmpEventOverflowError` when the
   * queue cannot answer because events were dropped, or the `QmpConnectionError` once the
   * connection has ended and nothing queued matches.
   */
  wait<N extends K = K>(options?: WaitOptions<QmpEventMessage<E, N>>): Promise<QmpEventMessage<E, N>>;
  wait<N extends K>(names: N | readonly N[] | undefined, options?: WaitOptions<QmpEventMessage<E, N>>): Promise<QmpEventMessage<E, N>>;
  wait(first?: unknown, second?: unknown): Promise<unknown> {
    const byName = typeof first === 'string' || Array.isArray(first) || (first === undefined && second !== undefined);
    const names = byName ? toNameSet(first as string | readonly string[] | undefined) : undefined;
    const options = ((byName ? second : first) ?? {}) as WaitOptions<QmpEventMessage<E>>;
    const operation = `wait for event ${describeNames(names ?? this.#nameSet)}`;
    let test: (event: QmpEventMessage<E>) => boolean;
    try {
      test = matcher(names, options.match);
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise((resolve, reject) => {
      this.#register(test, operation, options, false, (outcome) => {
        if ('error' in outcome) reject(outcome.error);
        else resolve(outcome.value);
      });
    });
  }

  /**
   * Takes (removes and returns) the queued events of `names` (all when omitted) that satisfy
   * `match`, oldest first. Throws `QmpEventOverflowError` (taking nothing) after the listener
   * overflowed, since the result could not be complete; `clear()` accepts the loss.
   */
  drain<N extends K = K>(names?: N | readonly N[], options: { match?: EventMatch<QmpEventMessage<E, N>> } = {}): QmpEventMessage<E, N>[] {
    if (this.#gap) throw new QmpEventOverflowError(this.capacity, this.#dropped);
    const test = matcher(toNameSet(names), options.match);
    const taken: QmpEventMessage<E>[] = [];
    const kept: QmpEventMessage<E>[] = [];
    for (const event of this.#queue) (test(event) ? taken : kept).push(event);
    this.#queue = kept;
    return taken as QmpEventMessage<E, N>[];
  }

  /** Forgets every queued event; also accepts a past overflow, so the listener queues again. */
  clear(): void {
    this.#queue = [];
    this.#gap = false;
    this.#gapReported = false;
  }

  /**
   * Stops listening: nothing more is queued, queued events are forgotten, pending waits
   * reject with `QmpAbortError` and a loop over the listener ends. Idempotent.
   */
  close(): void {
    this.#finish({ kind: 'closed', reason: new Error('the event listener was closed') });
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * Takes events in order as they come. The loop ends when the listener is closed or the
   * connection closed normally; it throws the `QmpConnectionError` when the connection was
   * lost, `QmpAbortError` when the listener's signal fired, and `QmpEventOverflowError` after
   * the events queued before an overflow. Leaving the loop early closes the listener.
   */
  [Symbol.asyncIterator](): AsyncIterableIterator<QmpEventMessage<E, K>> {
    let active = false;
    let finished = false;
    const iterator: AsyncIterableIterator<QmpEventMessage<E, K>> = {
      next: () => {
        if (active) return Promise.reject(new Error('event listener: next() called before the previous call settled'));
        if (finished) return Promise.resolve({ value: undefined, done: true });
        active = true;
        return new Promise<IteratorResult<QmpEventMessage<E, K>>>((resolve, reject) => {
          this.#register(() => true, `event stream of ${describeNames(this.#nameSet)}`, {}, true, (outcome) => {
            active = false;
            if ('error' in outcome) {
              finished = true;
              reject(outcome.error);
            } else {
              if (outcome.done === true) finished = true;
              resolve(outcome as IteratorResult<QmpEventMessage<E, K>>);
            }
          });
        });
      },
      return: () => {
        finished = true;
        this.close();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  #register(
    test: (event: QmpEventMessage<E>) => boolean,
    operation: string,
    options: WaitOptions<QmpEventMessage<E>>,
    iterator: boolean,
    settle: (outcome: IteratorResult<QmpEventMessage<E>> | { error: unknown }) => void,
  ): void {
    const { timeout, signal } = options;
    if (signal?.aborted) {
      settle({ error: new QmpAbortError(operation, signal.reason) });
      return;
    }
    let index: number;
    try {
      index = this.#queue.findIndex(test);
    } catch (error) {
      settle({ error });
      return;
    }
    if (index >= 0) {
      const [event] = this.#queue.splice(index, 1);
      settle({ value: event!, done: false });
      return;
    }
    const refusal = this.#refusal(operation, iterator);
    if (refusal !== undefined) {
      settle(refusal);
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    const onAbort = (): void => wait.finish({ error: new QmpAbortError(operation, signal?.reason) });
    const wait: ListenerWait<E> = {
      test,
      iterator,
      resolve: (event) => wait.finish({ value: event, done: false }),
      reject: (error) => wait.finish({ error }),
      finish: (outcome) => {
        const at = this.#waits.indexOf(wait);
        if (at < 0) return;
        this.#waits.splice(at, 1);
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        settle(outcome);
      },
    };
    this.#waits.push(wait);
    if (timeout !== undefined) timer = setTimeout(() => wait.finish({ error: new QmpTimeoutError(operation, timeout) }), timeout);
    signal?.addEventListener('abort', onAbort, { once: true });
  }

  /** Why a wait the queue could not satisfy cannot be left pending; undefined if it can. */
  #refusal(operation: string, iterator: boolean, queueConsulted = true): IteratorResult<never> | { error: unknown } | undefined {
    // Only a wait that had to look in the queue can have missed a dropped event.
    if (this.#gap && queueConsulted) {
      // A loop reports the overflow once and then ends, like the end of the connection.
      if (iterator && this.#gapReported) return { value: undefined, done: true };
      this.#gapReported = true;
      return { error: new QmpEventOverflowError(this.capacity, this.#dropped) };
    }
    const end = this.#end;
    if (end === undefined) return undefined;
    switch (end.kind) {
      case 'connection':
        return iterator && !end.lost ? { value: undefined, done: true } : { error: end.error };
      case 'closed':
        return iterator ? { value: undefined, done: true } : { error: new QmpAbortError(operation, end.reason) };
      case 'aborted':
        return { error: new QmpAbortError(operation, end.reason) };
      case 'failed':
        return { error: end.error };
    }
  }

  #offer(event: QmpEventMessage<E>): void {
    if (this.#end !== undefined && this.#end.kind !== 'connection') return;
    let accepted: boolean;
    try {
      accepted = this.#accept(event);
    } catch (error) {
      // The listener's own `match` threw: it can no longer tell which events are its.
      this.#finish({ kind: 'failed', error });
      return;
    }
    if (!accepted) return;
    if (this.#waits.length > 0) {
      // A snapshot: a wait whose `match` throws is removed while the others are tried.
      for (const wait of [...this.#waits]) {
        let taken: boolean;
        try {
          taken = wait.test(event);
        } catch (error) {
          wait.reject(error);
          continue;
        }
        if (taken) {
          wait.resolve(event);
          return;
        }
      }
    }
    if (this.#gap || this.#queue.length >= this.capacity) {
      this.#gap = true;
      this.#dropped++;
      return;
    }
    this.#queue.push(event);
  }

  #finish(end: ListenerEnd): void {
    if (this.#end !== undefined && !(this.#end.kind === 'connection' && end.kind !== 'connection')) return;
    this.#end = end;
    this.#detach?.();
    this.#detach = undefined;
    if (this.#onAbort) this.#signal?.removeEventListener('abort', this.#onAbort);
    if (end.kind !== 'connection') this.#queue = [];
    for (const wait of [...this.#waits]) {
      // A pending wait was offered every event since it began: an overflow took nothing of its.
      const refusal = this.#refusal('wait for an event', wait.iterator, false);
      if (refusal !== undefined) wait.finish(refusal);
    }
  }
}

/**
 * Receives every event of one connection and hands it to each consumer independently:
 * - callbacks (`on('event')`, `on(name)`) see every event as it arrives;
 * - listeners (`listen()`) each queue their own copy of every event they listen to, and
 *   streams (`stream()`) are listeners being iterated;
 * - `wait()` resolves with the next matching event (every pending wait sees every event).
 * No consumer can take an event away from another. The hub also keeps a bounded history of
 * recent events (`buffered`) that a new listener or wait may ask to see; nothing takes from
 * it, and when it is full the oldest event is evicted, counted in `evicted` and reported to
 * `onEvict`, never lost unseen.
 */
export class QmpEventHub<E extends EventSpecs<E> = QmpEvents> {
  readonly historySize: number;

  // Keyed by event name plus 'event'; the public overloads below give each name its type.
  readonly #emitter = new EventEmitter();
  #history: QmpEventMessage<E>[] = [];
  readonly #consumers = new Set<Consumer<E>>();
  readonly #onEvict: ((event: QmpEventMessage<E>, evicted: number) => void) | undefined;
  #evicted = 0;
  #ended: { error: QmpConnectionError; lost: boolean } | undefined;

  constructor(options: EventHubOptions<E> = {}) {
    const size = options.historySize ?? 1000;
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`historySize must be a non-negative integer, got ${String(size)}`);
    this.historySize = size;
    this.#onEvict = options.onEvict;
    // Many callbacks on one name are normal here; leave the leak warning to real leaks.
    this.#emitter.setMaxListeners(0);
  }

  // Overloads rather than one signature indexed by name: a callback with an annotated
  // parameter would otherwise steer the inference of the name away from 'event'.
  /** Calls `listener` with every event. */
  on(name: 'event', listener: (event: QmpEventMessage<E>) => void): this;
  /** Calls `listener` with each event named `name`. */
  on<K extends keyof E & string>(name: K, listener: (event: QmpEventMessage<E, K>) => void): this;
  on(name: string, listener: (event: never) => void): this {
    this.#emitter.on(name, listener as (event: unknown) => void);
    return this;
  }

  once(name: 'event', listener: (event: QmpEventMessage<E>) => void): this;
  once<K extends keyof E & string>(name: K, listener: (event: QmpEventMessage<E, K>) => void): this;
  once(name: string, listener: (event: never) => void): this {
    this.#emitter.once(name, listener as (event: unknown) => void);
    return this;
  }

  off(name: 'event', listener: (event: QmpEventMessage<E>) => void): this;
  off<K extends keyof E & string>(name: K, listener: (event: QmpEventMessage<E, K>) => void): this;
  off(name: string, listener: (event: never) => void): this {
    this.#emitter.off(name, listener as (event: unknown) => void);
    return this;
  }

  /** Callbacks registered with `on`/`once` for `name`. */
  listenerCount(name: 'event' | (keyof E & string)): number {
    return this.#emitter.listenerCount(name);
  }

  removeAllListeners(name?: 'event' | (keyof E & string)): this {
    if (name === undefined) this.#emitter.removeAllListeners();
    else this.#emitter.removeAllListeners(name);
    return this;
  }

  /** Open listeners and streams plus pending waits: what holds events for someone. */
  get consumerCount(): number {
    return this.#consumers.size;
  }

  /**
   * How many events the full history buffer has evicted (oldest first) to make room for
   * newer ones, over the hub's life. Events forgotten by `clear()` are not counted, nor
   * events never kept because `historySize` is 0. Evicted events did reach every consumer
   * open at the time; only later `history` lookups miss them.
   */
  get evicted(): number {
    return this.#evicted;
  }

  /** The history buffer: the most recent events, oldest first (a copy). */
  get buffered(): readonly QmpEventMessage<E>[] {
    return [...this.#history];
  }

  /** Forgets the history buffer (listeners keep their own queues). */
  clear(): void {
    this.#history = [];
  }

  /**
   * Opens a listener with its own queue of the events named (all when `names` is omitted)
   * that arrive from now on, or with `history: true` also those still in the history buffer.
   * See `QmpEventListener`; its memory is bounded by `capacity`.
   */
  listen<K extends keyof E & string = keyof E & string>(
    names?: K | readonly K[],
    options: ListenOptions<QmpEventMessage<E, K>> = {},
  ): QmpEventListener<E, K> {
    const nameSet = toNameSet(names);
    const listener = new QmpEventListener<E, K>(kCreate, nameSet, options);
    listener[kAttach](options.history === true ? this.#history : undefined, this.#ended, (consumer) => {
      this.#consumers.add(consumer);
      return () => this.#consumers.delete(consumer);
    });
    return listener;
  }

  /**
   * An async iterator over the events named (all when omitted) that arrive from now on:
   * `listen(names, options)` iterated. Each stream has its own queue of at most `capacity`
   * events; a consumer that falls further behind gets the queued events and then a
   * `QmpEventOverflowError`. When the connection closes, the stream ends after its queued
   * events; when the connection is lost, it throws the `QmpConnectionError` instead. Leaving
   * a `for await` loop early closes it.
   */
  stream<K extends keyof E & string>(
    names?: K | readonly K[],
    options: ListenOptions<QmpEventMessage<E, K>> = {},
  ): AsyncIterableIterator<QmpEventMessage<E, K>> {
    return this.listen(names, options)[Symbol.asyncIterator]();
  }

  /**
   * Resolves with the next event named `name` (or any of `names`) that satisfies `match`.
   * Every pending wait sees every event, so waits never take events from each other (or
   * from listeners). Only events arriving after the call count, unless `history: true`.
   * Rejects with `QmpTimeoutError`, `QmpAbortError`, or the `QmpConnectionError` when the
   * connection ends first.
   */
  wait<K extends keyof E & string>(
    name: K | readonly K[],
    options: HubWaitOptions<QmpEventMessage<E, K>> = {},
  ): Promise<QmpEventMessage<E, K>> {
    const names = toNameSet(name) ?? new Set<string>();
    const operation = `wait for event ${describeNames(names)}`;
    const { timeout, signal } = options;
    if (signal?.aborted) return Promise.reject(new QmpAbortError(operation, signal.reason));
    let test: (event: QmpEventMessage<E>) => boolean;
    try {
      test = matcher(names, options.match);
      if (options.history === true) {
        const found = this.#history.find(test);
        if (found !== undefined) return Promise.resolve(found as QmpEventMessage<E, K>);
      }
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.#ended) return Promise.reject(this.#ended.error);

    return new Promise<QmpEventMessage<E, K>>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const settle = (action: () => void): void => {
        if (!this.#consumers.delete(consumer)) return;
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        action();
      };
      const onAbort = (): void => settle(() => reject(new QmpAbortError(operation, signal?.reason)));
      const consumer: Consumer<E> = {
        names,
        offer: (event) => {
          let matched: boolean;
          try {
            matched = test(event);
          } catch (error) {
            settle(() => reject(error));
            return;
          }
          if (matched) settle(() => resolve(event as QmpEventMessage<E, K>));
        },
        end: (error) => settle(() => reject(error)),
      };
      this.#consumers.add(consumer);
      if (timeout !== undefined) {
        timer = setTimeout(() => settle(() => reject(new QmpTimeoutError(operation, timeout))), timeout);
      }
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** @internal Called by the connection for each event received. */
  [kDispatch](raw: QmpRawEvent): void {
    const event = {
      event: raw.event,
      data: raw.data === undefined ? {} : raw.data,
      timestamp: raw.timestamp,
    } as QmpEventMessage<E>;
    // The history first, so a listener opened from within a callback with `history: true`
    // finds this event there (and only there: it was not subscribed when it arrived).
    if (this.historySize > 0) {
      const oldest = this.#history.length >= this.historySize ? this.#history.shift() : undefined;
      this.#history.push(event);
      if (oldest !== undefined) {
        this.#evicted++;
        this.#report(this.#onEvict, oldest);
      }
    }
    if (this.#consumers.size > 0) {
      // A snapshot: consumers added while this event is handed out did not exist when it arrived.
      for (const consumer of [...this.#consumers]) {
        if (consumer.names === undefined || consumer.names.has(event.event)) consumer.offer(event);
      }
    }
    const emitter = this.#emitter;
    // A throwing callback must not tear down the connection's read loop; it surfaces the
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
  }

  #report(callback: ((event: QmpEventMessage<E>, evicted: number) => void) | undefined, event: QmpEventMessage<E>): void {
    if (callback === undefined) return;
    // Like a callback on an event, a throwing one must not break the connection's read loop.
    try {
      callback(event, this.#evicted);
    } catch (error) {
      process.nextTick(() => {
        throw error;
      });
    }
  }

  /**
   * @internal Called once when the connection ends: pending and future waits reject with
   * `error`; listeners stop receiving (a loop over one throws `error` when `lost`, else ends)
   * but keep what they queued.
   */
  [kEnd](error: QmpConnectionError, lost: boolean): void {
    if (this.#ended) return;
    this.#ended = { error, lost };
    for (const consumer of [...this.#consumers]) consumer.end(error, lost);
    this.#consumers.clear();
  }
}

