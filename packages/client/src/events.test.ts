import { QmpAbortError, QmpConnectionError, QmpEventOverflowError, QmpTimeoutError } from './errors.js';
import { QmpEventHub, kDispatch, kEnd, matchesPartial } from './events.js';

interface Events {
  BLOCK_JOB_COMPLETED: { device: string; len: number; offset: number; type: string; error?: string };
  BLOCK_JOB_CANCELLED: { device: string; len: number; offset: number; type: string };
  STOP: Record<string, never>;
  RESUME: Record<string, never>;
}

let clock = 0;
function raw(event: string, data?: Record<string, unknown>): { event: string; data?: unknown; timestamp: { seconds: number; microseconds: number } } {
  clock++;
  return data === undefined
    ? { event, timestamp: { seconds: clock, microseconds: 0 } }
    : { event, data, timestamp: { seconds: clock, microseconds: 0 } };
}
const completed = (device: string, extra: Record<string, unknown> = {}): ReturnType<typeof raw> =>
  raw('BLOCK_JOB_COMPLETED', { device, len: 100, offset: 100, type: 'backup', ...extra });

describe('matchesPartial', () => {
  test('compares like iotests event_wait', () => {
    const event = { event: 'X', data: { device: 'drive0', nested: { a: 1, b: [1, 2] } } };
    expect(matchesPartial(event, { data: { device: 'drive0' } })).toBe(true);
    expect(matchesPartial(event, { data: { nested: { b: [1, 2] } } })).toBe(true);
    expect(matchesPartial(event, { data: { nested: { b: [1] } } })).toBe(false);
    expect(matchesPartial(event, { data: { device: 'drive1' } })).toBe(false);
    expect(matchesPartial(event, { data: { missing: undefined } })).toBe(false);
    expect(matchesPartial(event, { data: 'drive0' })).toBe(false);
    expect(matchesPartial(event, {})).toBe(true);
  });
});

describe('QmpEventHub', () => {
  test('callbacks see every event, per name and on "event"; data defaults to {}', () => {
    const hub = new QmpEventHub<Events>();
    const all: string[] = [];
    const stops: unknown[] = [];
    hub.on('event', (e) => all.push(e.event));
    hub.on('STOP', (e) => stops.push(e.data));
    hub[kDispatch](raw('STOP'));
    hub[kDispatch](completed('drive0'));
    expect(all).toEqual(['STOP', 'BLOCK_JOB_COMPLETED']);
    expect(stops).toEqual([{}]);
    expect(hub.listenerCount('STOP')).toBe(1);
  });

  test('wait sees only events that arrive after it, unless it asks for the history', async () => {
    const hub = new QmpEventHub<Events>();
    hub[kDispatch](completed('drive0'));
    await expect(hub.wait('BLOCK_JOB_COMPLETED', { timeout: 10 })).rejects.toBeInstanceOf(QmpTimeoutError);
    const fromHistory = await hub.wait('BLOCK_JOB_COMPLETED', { history: true, match: { data: { device: 'drive0' } } });
    expect(fromHistory.data.device).toBe('drive0');
    // Nothing is taken from the history: it is a record, not anyone's queue.
    expect(hub.buffered).toHaveLength(1);
    await expect(hub.wait('BLOCK_JOB_COMPLETED', { history: true })).resolves.toBe(fromHistory);
    expect(hub.consumerCount).toBe(0);
  });

  test('every pending wait sees every event: waits never take events from each other', async () => {
    const hub = new QmpEventHub<Events>();
    const first = hub.wait('STOP');
    const second = hub.wait(['STOP', 'RESUME']);
    const other = hub.wait('BLOCK_JOB_COMPLETED', { match: { data: { device: 'drive1' } } });
    hub[kDispatch](raw('STOP'));
    hub[kDispatch](completed('drive0'));
    hub[kDispatch](completed('drive1'));
    const [a, b, c] = await Promise.all([first, second, other]);
    expect(a).toBe(b);
    expect(c.data.device).toBe('drive1');
    expect(hub.buffered.map((e) => e.event)).toEqual(['STOP', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_COMPLETED']);
    expect(hub.consumerCount).toBe(0);
  });

  test('a throwing predicate rejects only its own waiter', async () => {
    const hub = new QmpEventHub<Events>();
    const bad = hub.wait('STOP', {
      match: () => {
        throw new Error('predicate bug');
      },
    });
    const good = hub.wait('STOP');
    hub[kDispatch](raw('STOP'));
    await expect(bad).rejects.toThrow('predicate bug');
    await expect(good).resolves.toMatchObject({ event: 'STOP' });
  });

  test('wait honours timeout and AbortSignal and leaves nothing subscribed', async () => {
    const hub = new QmpEventHub<Events>();
    const timedOut = await hub.wait('STOP', { timeout: 5 }).catch((e: unknown) => e);
    expect(timedOut).toBeInstanceOf(QmpTimeoutError);
    expect((timedOut as QmpTimeoutError).operation).toBe('wait for event STOP');
    const controller = new AbortController();
    const aborted = hub.wait('STOP', { signal: controller.signal });
    expect(hub.consumerCount).toBe(1);
    controller.abort('enough');
    await expect(aborted).rejects.toBeInstanceOf(QmpAbortError);
    await expect(hub.wait('STOP', { signal: controller.signal })).rejects.toBeInstanceOf(QmpAbortError);
    expect(hub.consumerCount).toBe(0);
  });

  test('the history buffer is bounded and drops the oldest first; clear forgets it', () => {
    const hub = new QmpEventHub<Events>({ historySize: 3 });
    for (const device of ['a', 'b', 'c', 'd', 'e']) hub[kDispatch](completed(device));
    expect(hub.buffered.map((e) => (e.data as { device: string }).device)).toEqual(['c', 'd', 'e']);
    hub.clear();
    expect(hub.buffered).toEqual([]);
    const none = new QmpEventHub<Events>({ historySize: 0 });
    none[kDispatch](raw('STOP'));
    expect(none.buffered).toEqual([]);
  });
});

describe('QmpEventListener', () => {
  const device = (e: { data: unknown }): string => (e.data as { device: string }).device;

  test('each listener queues its own copy of every event it listens to', async () => {
    const hub = new QmpEventHub<Events>();
    const tracker = hub.listen(['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'], { match: { data: { device: 'drive0' } } });
    const user = hub.listen('BLOCK_JOB_COMPLETED');
    const everything = hub.listen();
    hub[kDispatch](raw('STOP'));
    hub[kDispatch](completed('drive1'));
    hub[kDispatch](completed('drive0'));
    // The user takes drive0's event from their own listener...
    expect(device(await user.wait({ match: { data: { device: 'drive0' } } }))).toBe('drive0');
    // ...and the tracker still has its own copy.
    expect(tracker.buffered.map(device)).toEqual(['drive0']);
    expect(device(await tracker.wait())).toBe('drive0');
    expect(tracker.size).toBe(0);
    // Take semantics within one listener: each event once, unmatched ones stay.
    expect(user.buffered.map(device)).toEqual(['drive1']);
    expect(everything.drain('STOP').map((e) => e.event)).toEqual(['STOP']);
    expect(everything.drain().map(device)).toEqual(['drive1', 'drive0']);
    expect(everything.drain()).toEqual([]);
    expect(hub.consumerCount).toBe(3);
    for (const listener of [tracker, user, everything]) listener.close();
    expect(hub.consumerCount).toBe(0);
  });

  test('a wait takes the first match from the queue, else the next to arrive; pending waits come before the queue', async () => {
    const hub = new QmpEventHub<Events>();
    using listener = hub.listen(['BLOCK_JOB_COMPLETED', 'STOP']);
    hub[kDispatch](completed('a'));
    hub[kDispatch](completed('b'));
    expect(device(await listener.wait({ match: { data: { device: 'b' } } }))).toBe('b');
    const forC = listener.wait('BLOCK_JOB_COMPLETED', { match: (e) => e.data.device === 'c' });
    hub[kDispatch](completed('c'));
    expect(device(await forC)).toBe('c');
    expect(listener.buffered.map(device)).toEqual(['a']);
    await expect(listener.wait('STOP', { timeout: 5 })).rejects.toBeInstanceOf(QmpTimeoutError);
  });

  test('history: true starts with the buffered events; without it only later ones count', () => {
    const hub = new QmpEventHub<Events>();
    hub[kDispatch](completed('early'));
    using withHistory = hub.listen('BLOCK_JOB_COMPLETED', { history: true });
    using without = hub.listen('BLOCK_JOB_COMPLETED');
    hub[kDispatch](completed('late'));
    expect(withHistory.drain().map(device)).toEqual(['early', 'late']);
    expect(without.drain().map(device)).toEqual(['late']);
  });

  test('overflow: queued events can still be taken, then waits, drain and loops fail with QmpEventOverflowError', async () => {
    const hub = new QmpEventHub<Events>();
    const listener = hub.listen('BLOCK_JOB_COMPLETED', { capacity: 2 });
    for (const d of ['a', 'b', 'c', 'd']) hub[kDispatch](completed(d));
    expect(listener).toMatchObject({ overflowed: true, dropped: 2, size: 2 });
    // drain() would have to pretend it returns everything: it refuses and takes nothing.
    expect(() => listener.drain()).toThrow(QmpEventOverflowError);
    expect(listener.size).toBe(2);
    // Nothing is queued after the gap, or a later wait could skip the lost events.
    hub[kDispatch](completed('e'));
    expect(listener.dropped).toBe(3);
    expect(device(await listener.wait({ match: { data: { device: 'b' } } }))).toBe('b');
    const error = await listener.wait({ match: { data: { device: 'e' } } }).catch((e: unknown) => e);
    expect(QmpEventOverflowError.isInstance(error)).toBe(true);
    expect(error).toMatchObject({ capacity: 2, dropped: 3 });
    // clear() accepts the loss: the listener queues again.
    listener.clear();
    hub[kDispatch](completed('f'));
    expect(listener.drain().map(device)).toEqual(['f']);
    listener.close();
  });

  test('a wait pending when the queue overflows missed nothing and is still served', async () => {
    const hub = new QmpEventHub<Events>();
    using listener = hub.listen(['BLOCK_JOB_COMPLETED', 'STOP'], { capacity: 1 });
    const stop = listener.wait('STOP');
    hub[kDispatch](completed('a'));
    hub[kDispatch](completed('b'));
    expect(listener.overflowed).toBe(true);
    hub[kDispatch](raw('STOP'));
    await expect(stop).resolves.toMatchObject({ event: 'STOP' });
  });

  test('close() rejects pending waits with QmpAbortError, forgets the queue and ends loops', async () => {
    const hub = new QmpEventHub<Events>();
    const listener = hub.listen();
    hub[kDispatch](raw('STOP'));
    const waiting = listener.wait('RESUME');
    const iterator = listener[Symbol.asyncIterator]();
    expect((await iterator.next()).value?.event).toBe('STOP');
    const next = iterator.next();
    listener.close();
    await expect(waiting).rejects.toBeInstanceOf(QmpAbortError);
    await expect(next).resolves.toEqual({ value: undefined, done: true });
    expect(listener.closed).toBe(true);
    hub[kDispatch](raw('STOP'));
    expect(listener.size).toBe(0);
    await expect(listener.wait()).rejects.toBeInstanceOf(QmpAbortError);
    expect(hub.consumerCount).toBe(0);
  });

  test('leaving a for-await loop closes the listener; `using` closes it at the end of the scope', async () => {
    const hub = new QmpEventHub<Events>();
    const listener = hub.listen('STOP');
    hub[kDispatch](raw('STOP'));
    for await (const event of listener) {
      expect(event.event).toBe('STOP');
      break;
    }
    expect(listener.closed).toBe(true);
    {
      using scoped = hub.listen('STOP');
      expect(scoped.closed).toBe(false);
      expect(hub.consumerCount).toBe(1);
    }
    expect(hub.consumerCount).toBe(0);
  });

  test('its signal closes it with QmpAbortError', async () => {
    const hub = new QmpEventHub<Events>();
    const controller = new AbortController();
    const listener = hub.listen('STOP', { signal: controller.signal });
    const waiting = listener.wait();
    controller.abort(new Error('stop listening'));
    const error = await waiting.catch((e: unknown) => e);
    expect(QmpAbortError.isInstance(error)).toBe(true);
    expect(((error as QmpAbortError).cause as Error).message).toBe('stop listening');
    expect(hub.consumerCount).toBe(0);
    const late = hub.listen('STOP', { signal: controller.signal });
    expect(late.closed).toBe(true);
  });

  test('a throwing match fails that listener only', async () => {
    const hub = new QmpEventHub<Events>();
    const broken = hub.listen('STOP', {
      match: () => {
        throw new Error('match bug');
      },
    });
    using fine = hub.listen('STOP');
    const waiting = broken.wait();
    hub[kDispatch](raw('STOP'));
    await expect(waiting).rejects.toThrow('match bug');
    expect(broken.closed).toBe(true);
    expect(fine.size).toBe(1);
  });

  test('after the connection ends, queued events can be taken; then the connection error', async () => {
    const hub = new QmpEventHub<Events>();
    using listener = hub.listen();
    const pending = listener.wait('RESUME');
    hub[kDispatch](raw('STOP'));
    const error = new QmpConnectionError('gone');
    hub[kEnd](error, true);
    await expect(pending).rejects.toBe(error);
    await expect(listener.wait('STOP')).resolves.toMatchObject({ event: 'STOP' });
    await expect(listener.wait('STOP')).rejects.toBe(error);
    // A listener opened afterwards can still read the history.
    const late = hub.listen('STOP', { history: true });
    expect(late.closed).toBe(true);
    expect(late.drain().map((e) => e.event)).toEqual(['STOP']);
    await expect(hub.wait('STOP')).rejects.toBe(error);
    await expect(hub.wait('STOP', { history: true })).resolves.toMatchObject({ event: 'STOP' });
  });
});

describe('QmpEventHub streams', () => {
  test('stream delivers events that arrive after it starts, filtered by name', async () => {
    const hub = new QmpEventHub<Events>();
    hub[kDispatch](raw('STOP'));
    const stream = hub.stream(['STOP', 'RESUME']);
    hub[kDispatch](completed('drive0'));
    hub[kDispatch](raw('RESUME'));
    const pending = stream.next();
    hub[kDispatch](raw('STOP'));
    expect((await pending).value?.event).toBe('RESUME');
    expect((await stream.next()).value?.event).toBe('STOP');
    await stream.return?.();
    hub[kDispatch](raw('STOP'));
    await expect(stream.next()).resolves.toEqual({ value: undefined, done: true });
  });

  test('a stream that overflows delivers what it queued, then throws QmpEventOverflowError', async () => {
    const hub = new QmpEventHub<Events>();
    const stream = hub.stream(undefined, { capacity: 2 });
    for (let i = 0; i < 5; i++) hub[kDispatch](completed(`d${i}`));
    const seen: string[] = [];
    const error = await (async () => {
      for await (const event of stream) seen.push((event.data as { device: string }).device);
      return undefined;
    })().catch((e: unknown) => e);
    expect(seen).toEqual(['d0', 'd1']);
    expect(QmpEventOverflowError.isInstance(error)).toBe(true);
    expect(error).toMatchObject({ capacity: 2, dropped: 3 });
    // The overflow ended the stream: later events are not delivered, next() is done.
    hub[kDispatch](raw('STOP'));
    await expect(stream.next()).resolves.toEqual({ value: undefined, done: true });
  });

  test('the end of the connection rejects waits and ends streams', async () => {
    const hub = new QmpEventHub<Events>();
    const wait = hub.wait('STOP');
    const lostStream = hub.stream();
    hub[kDispatch](completed('drive0'));
    const error = new QmpConnectionError('gone');
    hub[kEnd](error, true);
    await expect(wait).rejects.toBe(error);
    // Queued events come first, then the connection error.
    expect((await lostStream.next()).value?.event).toBe('BLOCK_JOB_COMPLETED');
    await expect(lostStream.next()).rejects.toBe(error);
    await expect(lostStream.next()).resolves.toMatchObject({ done: true });
    // Later waits fail at once; the history can still be read.
    await expect(hub.wait('STOP')).rejects.toBe(error);
    await expect(hub.wait('BLOCK_JOB_COMPLETED', { history: true })).resolves.toMatchObject({ data: { device: 'drive0' } });
    await expect(hub.stream().next()).rejects.toBe(error);
  });

  test('a normal close ends streams without an error', async () => {
    const hub = new QmpEventHub<Events>();
    const stream = hub.stream();
    hub[kEnd](new QmpConnectionError('closed by the client'), false);
    await expect(stream.next()).resolves.toEqual({ value: undefined, done: true });
  });

  test('an aborted stream throws QmpAbortError', async () => {
    const hub = new QmpEventHub<Events>();
    const controller = new AbortController();
    const stream = hub.stream(['STOP'], { signal: controller.signal });
    const next = stream.next();
    controller.abort();
    await expect(next).rejects.toBeInstanceOf(QmpAbortError);
  });
});
