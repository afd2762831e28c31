// Regression: `events.wait()` removed the matched event from the one shared history buffer.
// A user waiting for BLOCK_JOB_COMPLETED (as the README showed) while @qmpkit/backup tracked
// a job took the event the tracker needed: the backup succeeded in QEMU, yet the tracker
// reported "the job ended without BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED". Now every
// consumer has its own copy: a listener opened before the command (as the tracker does) gets
// every event of the job whatever anyone else waits for, drains or clears.
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { LooseClient } from './support/fake-server.js';
import { useFakeQmpServer, type FakeConnection } from './support/fake-server.js';

const fx = useFakeQmpServer();

const JOB_EVENTS = ['JOB_STATUS_CHANGE', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'] as const;

/** What QEMU sends for a backup job that runs to completion, before and after its reply. */
async function runJob(connection: FakeConnection, id: string): Promise<void> {
  const command = await connection.receive();
  await connection.sendEvent('JOB_STATUS_CHANGE', { id, status: 'created' }, 1);
  await connection.sendEvent('JOB_STATUS_CHANGE', { id, status: 'running' }, 2);
  await connection.send(`{"return": {}, "id": ${JSON.stringify(command['id'])}}\n`);
  await connection.sendEvent('JOB_STATUS_CHANGE', { id, status: 'waiting' }, 3);
  await connection.sendEvent('JOB_STATUS_CHANGE', { id, status: 'pending' }, 4);
  await connection.sendEvent('BLOCK_JOB_COMPLETED', { device: id, len: 65536, offset: 65536, speed: 0, type: 'backup' }, 5);
  await connection.sendEvent('JOB_STATUS_CHANGE', { id, status: 'concluded' }, 6);
  await connection.sendEvent('JOB_STATUS_CHANGE', { id, status: 'null' }, 7);
}

/** A job tracker the way @qmpkit/backup now writes one: its own listener, opened before the command. */
async function trackJob(client: LooseClient, id: string): Promise<string[]> {
  using listener = client.events.listen(JOB_EVENTS, {
    match: (e) => (e.event === 'JOB_STATUS_CHANGE' ? e.data['id'] === id : e.data['device'] === id),
  });
  await client.execute('drive-backup', { device: id, 'job-id': id, sync: 'full', target: '/dev/null' });
  const seen: string[] = [];
  for (;;) {
    const event = await listener.wait({ timeout: 5000 });
    seen.push(event.event === 'JOB_STATUS_CHANGE' ? String(event.data['status']) : event.event);
    if (event.event === 'JOB_STATUS_CHANGE' && event.data['status'] === 'null') return seen;
  }
}

const EXPECTED = ['created', 'running', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null'];

test("a user's wait for BLOCK_JOB_COMPLETED and the job tracker both get it", async () => {
  const { client, connection } = await fx.connect();
  const userWait = client.events.wait('BLOCK_JOB_COMPLETED', { match: { data: { device: 'drive0' } }, timeout: 5000 });
  const tracked = trackJob(client, 'drive0');
  await runJob(connection, 'drive0');
  const [completed, seen] = await Promise.all([userWait, tracked]);
  expect(completed.data['device']).toBe('drive0');
  expect(seen).toEqual(EXPECTED);
  expect(client.events.consumerCount).toBe(0);
});

test('nothing a user does with the hub or their own listeners takes the tracker\'s events', async () => {
  const { client, connection } = await fx.connect();
  using mine = client.events.listen();
  const stream = client.events.stream(['BLOCK_JOB_COMPLETED']);
  const tracked = trackJob(client, 'drive0');
  // The user eagerly takes and forgets everything they can reach, as each event arrives.
  client.events.on('event', () => {
    mine.drain();
    client.events.clear();
  });
  const waits = [
    client.events.wait('BLOCK_JOB_COMPLETED', { timeout: 5000 }),
    client.events.wait(['JOB_STATUS_CHANGE'], { match: { data: { status: 'null' } }, timeout: 5000 }),
  ];
  await runJob(connection, 'drive0');
  expect(await tracked).toEqual(EXPECTED);
  await Promise.all(waits);
  expect((await stream.next()).value?.event).toBe('BLOCK_JOB_COMPLETED');
  await stream.return?.();
  await nextTurn();
  expect(mine.size).toBe(0);
});

test('two trackers of different jobs, and a late wait with history, each see their own', async () => {
  const { client, connection } = await fx.connect();
  const first = trackJob(client, 'drive0');
  await runJob(connection, 'drive0');
  const second = trackJob(client, 'drive1');
  await runJob(connection, 'drive1');
  expect(await first).toEqual(EXPECTED);
  expect(await second).toEqual(EXPECTED);
  // The history still has drive0's completion for a wait that asks for it.
  const late = await client.events.wait('BLOCK_JOB_COMPLETED', { history: true, match: { data: { device: 'drive0' } } });
  expect(late.timestamp.seconds).toBe(5);
});
