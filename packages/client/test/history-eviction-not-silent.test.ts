// Regression: when the bounded event history was full, its oldest event was dropped with
// no trace, so a wait that missed it could not tell "never sent" from "pushed out".
import { QmpEventHub, type QmpEventMessage, type QmpTranscriptEntry } from '../src/index.js';
import { kDispatch } from '../src/events.js';
import { FakeQmpServer, type LooseClient } from './support/fake-server.js';

interface Events {
  BLOCK_JOB_READY: { device: string };
  STOP: Record<string, never>;
}

function ready(device: string, seconds: number): { event: string; data: { device: string }; timestamp: { seconds: number; microseconds: number } } {
  return { event: 'BLOCK_JOB_READY', data: { device }, timestamp: { seconds, microseconds: 0 } };
}

describe('QmpEventHub', () => {
  test('counts each event the full history evicts and reports which one', () => {
    const reported: [string, number][] = [];
    const hub = new QmpEventHub<Events>({
      historySize: 2,
      onEvict: (event: QmpEventMessage<Events>, evicted) => reported.push([(event.data as { device: string }).device, evicted]),
    });
    hub[kDispatch](ready('a', 1));
    hub[kDispatch](ready('b', 2));
    expect(hub.evicted).toBe(0);
    hub[kDispatch](ready('c', 3));
    hub[kDispatch](ready('d', 4));
    expect(hub.evicted).toBe(2);
    expect(reported).toEqual([['a', 1], ['b', 2]]);
    expect(hub.buffered.map((e) => e.data)).toEqual([{ device: 'c' }, { device: 'd' }]);
  });

  test('clearing is not eviction, nor is taking from a listener; neither is a history of size 0', async () => {
    const hub = new QmpEventHub<Events>({ historySize: 2 });
    using listener = hub.listen();
    hub[kDispatch](ready('a', 1));
    await listener.wait('BLOCK_JOB_READY', { match: { data: { device: 'a' } } });
    hub.clear();
    hub[kDispatch](ready('b', 2));
    hub[kDispatch](ready('c', 3));
    expect(hub.evicted).toBe(0);
    hub.clear();
    expect(hub.evicted).toBe(0);
    const none = new QmpEventHub<Events>({ historySize: 0 });
    none[kDispatch](ready('a', 1));
    expect(none.evicted).toBe(0);
  });
});

describe('QmpClient', () => {
  let server: FakeQmpServer;
  let client: LooseClient | undefined;

  beforeEach(async () => {
    server = await FakeQmpServer.start();
  });

  afterEach(async () => {
    await client?.close({ timeout: 100 });
    client = undefined;
    await server.close();
  });

  test('an event evicted from a full history is counted and written to the transcript', async () => {
    const transcript: QmpTranscriptEntry[] = [];
    const pair = await server.connect({ eventHistorySize: 2, transcript: (entry) => transcript.push(entry) });
    client = pair.client;
    const { connection } = pair;
    for (const [index, device] of ['drive0', 'drive1', 'drive2'].entries()) {
      await connection.sendEvent('BLOCK_JOB_READY', { device }, index + 1);
    }
    // The reply to a later command proves the client has read the three events.
    const call = client.execute('query-block-jobs');
    await connection.reply([]);
    await call;
    expect(client.events.evicted).toBe(1);
    const evictions = transcript.filter((e) => e.direction === 'evicted');
    expect(evictions).toEqual([
      {
        direction: 'evicted',
        time: expect.any(Number) as number,
        message: { event: 'BLOCK_JOB_READY', data: { device: 'drive0' }, timestamp: { seconds: 1, microseconds: 0 } },
        evicted: 1,
      },
    ]);
    // The eviction is reported right after the event that pushed drive0 out.
    const order = transcript
      .filter((e) => e.direction !== 'out')
      .map((e) => (e.direction === 'evicted' ? 'evicted' : JSON.stringify(e.message)));
    expect(order.slice(-5)).toEqual([
      expect.stringContaining('drive0'),
      expect.stringContaining('drive1'),
      expect.stringContaining('drive2'),
      'evicted',
      expect.stringContaining('"return":[]'),
    ]);
    expect(client.events.buffered.map((e) => e.data)).toEqual([{ device: 'drive1' }, { device: 'drive2' }]);
  });
});
