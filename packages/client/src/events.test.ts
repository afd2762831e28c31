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
  test('listeners see every event, per name and on "event"; data defaults to {}', () => {
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

  test('wait takes a buffered event that arrived before it, and only once', async () => {
    const hub = new QmpEventHub<Events>();
    hub[kDispatch](completed('drive0'));
    const event = await hub.wait('BLOCK_JOB_COMPLETED', { match: { data: { device: 'drive0' } } });
    expect(event.data.device).toBe('drive0');
    expect(hub.buffered).toEqual([]);
    await expect(hub.wait('BLOCK_JOB_COMPLETED', { timeout: 10 })).rejects.toBeInstanceOf(QmpTimeoutError);
  });

  test('an event one waiter does not match stays for another', async () => {
    const hub = new QmpEventHub<Events>();
    const forDrive1 = hub.wait('BLOCK_JOB_COMPLETED', { match: { data: { device: 'drive1' } } });
    hub[kDispatch](completed('drive0'));
    hub[kDispatch](completed('drive1'));
    expect((await forDrive1).data.device).toBe('drive1');
    expect(hub.buffered.map((e) => e.event === 'BLOCK_JOB_COMPLETED' && e.data.device)).toEqual(['drive0']);
    const forDrive0 = await hub.wait(['BLOCK_JOB_CANCELLED', 'BLOCK_JOB_COMPLETED'], { match: (e) => e.data.device === 'drive0' });
    expect(forDrive0.event).toBe('BLOCK_JOB_COMPLETED');
    expect(hub.buffered).toEqual([]);
  });

  test('two waiters for the same event each get their own', async () => {
    const hub = new QmpEventHub<Events>();
    const first = hub.wait('STOP');
    const second = hub.wait('STOP');
    hub[kDispatch](raw('STOP'));
    hub[kDispatch](raw('STOP'));
    const [a, b] = await Promise.all([first, second]);
    expect(a.timestamp.seconds).toBeLessThan(b.timestamp.seconds);
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

  test('wait honours timeout and AbortSignal', async () => {
    const hub = new QmpEventHub<Events>();
    const timedOut = await hub.wait('STOP', { timeout: 5 }).catch((e: unknown) => e);
    expect(timedOut).toBeInstanceOf(QmpTimeoutError);
    expect((timedOut as QmpTimeoutError).operation).toBe('wait for event STOP');
    const controller = new AbortController();
    const aborted = hub.wait('STOP', { signal: controller.signal });
    controller.abort('enough');
    await expect(aborted).rejects.toBeInstanceOf(QmpAbortError);
    await expect(hub.wait('STOP', { signal: controller.signal })).rejects.toBeInstanceOf(QmpAbortError);
    // The timed-out and aborted waiters are gone: the next STOP is buffered, not swallowed.
    hub[kDispatch](raw('STOP'));
    expect(hub.buffered).toHaveLength(1);
  });

  test('the history buffer is bounded and drops the oldest first', () => {
    const hub = new QmpEventHub<Events>({ historySize: 3 });
    for (const device of ['a', 'b', 'c', 'd', 'e']) hub[kDispatch](completed(device));
    expect(hub.buffered.map((e) => (e.data as { device: string }).device)).toEqual(['c', 'd', 'e']);
    const none = new QmpEventHub<Events>({ historySize: 0 });
    none[kDispatch](raw('STOP'));
    expect(none.buffered).toEqual([]);
  });

  test('drain takes by name, clear forgets', () => {
    const hub = new QmpEventHub<Events>();
    hub[kDispatch](raw('STOP'));
    hub[kDispatch](completed('drive0'));
    hub[kDispatch](raw('RESUME'));
    expect(hub.drain(['STOP', 'RESUME']).map((e) => e.event)).toEqual(['STOP', 'RESUME']);
    expect(hub.buffered.map((e) => e.event)).toEqual(['BLOCK_JOB_COMPLETED']);
    hub[kDispatch](raw('STOP'));
    expect(hub.drain('STOP').map((e) => e.event)).toEqual(['STOP']);
    hub.clear();
    expect(hub.drain()).toEqual([]);
  });

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
    // Later waits fail at once, but buffered events can still be taken.
    await expect(hub.wait('STOP')).rejects.toBe(error);
    await expect(hub.wait('BLOCK_JOB_COMPLETED')).resolves.toMatchObject({ data: { device: 'drive0' } });
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
