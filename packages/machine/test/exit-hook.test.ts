import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { Scratch, waitUntilGone } from './support.js';

const FIXTURE = join(__dirname, 'fixtures', 'launch-then-end.mjs');
const BUILT = join(__dirname, '..', 'dist', 'index.js');

let scratch: Scratch;

beforeAll(async () => {
  // The child imports the built package, as an application would.
  if (!existsSync(BUILT)) throw new Error(`${BUILT} is missing: run \`pnpm --filter @qmpkit/machine run build\` first`);
  scratch = await Scratch.create();
});

afterAll(async () => {
  await scratch.cleanUp();
});

interface Ended {
  reports: Array<Record<string, unknown>>;
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

/**
 * Runs the fixture; `onReport` is called with each JSON line it prints (the first one is
 * `{ pid, dir }` of its machine) and may signal the child.
 */
function runChild(
  how: string,
  kind: 'machine' | 'daemon',
  onReport: (report: Record<string, unknown>, child: ChildProcess) => void = () => undefined,
): Promise<Ended> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FIXTURE, how, scratch.dir, kind], { stdio: ['ignore', 'pipe', 'pipe'] });
    const reports: Array<Record<string, unknown>> = [];
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
    });
    createInterface({ input: child.stdout }).on('line', (line) => {
      const report = JSON.parse(line) as Record<string, unknown>;
      reports.push(report);
      if (typeof report['pid'] === 'number') scratch.rememberPid(report['pid']);
      onReport(report, child);
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the fixture (${how}) did not end in time; stderr: ${stderr}`));
    }, 20_000);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ reports, code, signal, stderr });
    });
  });
}

async function expectCleanedUp(ended: Ended): Promise<void> {
  const first = ended.reports[0];
  expect(first).toEqual({ pid: expect.any(Number), dir: expect.stringContaining(`${scratch.dir}/qmpkit-machine-`) });
  const pid = first?.['pid'] as number;
  // SIGKILL was sent synchronously as Node exited; the kernel finishes the job just after.
  expect(await waitUntilGone(pid)).toBe(true);
  expect(existsSync(first?.['dir'] as string)).toBe(false);
}

test('process.exit() kills the machine and removes its directory, keeping the exit code', async () => {
  const ended = await runChild('exit', 'machine');
  expect({ code: ended.code, stderr: ended.stderr }).toEqual({ code: 3, stderr: '' });
  await expectCleanedUp(ended);
});

test('an uncaught exception still crashes the process (code 1, stack printed) and the machine goes with it', async () => {
  const ended = await runChild('throw', 'machine');
  expect(ended.code).toBe(1);
  expect(ended.stderr).toContain('crash on purpose');
  await expectCleanedUp(ended);
});

test('an unhandled rejection likewise', async () => {
  const ended = await runChild('reject', 'daemon');
  expect(ended.code).toBe(1);
  expect(ended.stderr).toContain('unhandled rejection on purpose');
  await expectCleanedUp(ended);
});

test.each(['SIGTERM', 'SIGINT', 'SIGHUP'] as const)('%s kills the machine, then the process still dies of the signal', async (signal) => {
  const ended = await runChild('wait-for-signal', 'machine', (report, child) => {
    if (report['pid'] !== undefined) child.kill(signal);
  });
  expect({ code: ended.code, signal: ended.signal, stderr: ended.stderr }).toEqual({ code: null, signal, stderr: '' });
  await expectCleanedUp(ended);
});

test("with the application's own SIGINT listener the hook waits for the application to exit", async () => {
  const ended = await runChild('own-sigint-handler', 'machine', (report, child) => {
    if (report['pid'] !== undefined) child.kill('SIGINT');
  });
  expect(ended.reports[1]).toEqual({ stillRunning: true });
  expect({ code: ended.code, stderr: ended.stderr }).toEqual({ code: 0, stderr: '' });
  await expectCleanedUp(ended);
});

test('no QEMU process and no temporary directory of these children remains', async () => {
  const { alive, dirs } = await scratch.leftovers();
  expect(alive).toEqual([]);
  expect(dirs).toEqual([]);
});
