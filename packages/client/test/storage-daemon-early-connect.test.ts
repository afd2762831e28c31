// Real-QEMU side of repeated-greeting-during-negotiation.test.ts: qemu-storage-daemon 7.2,
// connected to as soon as its socket appears, greets twice in a few percent of starts. Every
// one of these connects must negotiate and then run a command.
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient, type QmpTranscriptEntry } from '../src/index.js';
import { killAndWait } from './support/qemu.js';

const DAEMON = process.env['QEMU_STORAGE_DAEMON'] ?? 'qemu-storage-daemon';
const STARTS = 30;

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qmpkit-client-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

test(`${STARTS} storage daemons connected to at once all negotiate`, async () => {
  let greetings = 0;
  for (let start = 0; start < STARTS; start++) {
    const path = join(dir, `qsd-${start}.sock`);
    const child = spawn(DAEMON, ['--chardev', `socket,id=m0,path=${path},server=on,wait=off`, '--monitor', 'chardev=m0'], { stdio: 'ignore' });
    try {
      const client = await QmpClient.connect(path, {
        connectTimeout: 10_000,
        transcript: (entry: QmpTranscriptEntry) => {
          if (entry.direction === 'in' && typeof entry.message === 'object' && entry.message !== null && 'QMP' in entry.message) greetings++;
        },
      });
      const version = await client.execute('query-version', undefined, { timeout: 5000 });
      expect(version.qemu.major).toBeGreaterThanOrEqual(7);
      await client.close();
    } finally {
      await killAndWait(child);
    }
  }
  // At least one greeting per start; more means the race happened and was survived.
  expect(greetings).toBeGreaterThanOrEqual(STARTS);
}, 120_000);
