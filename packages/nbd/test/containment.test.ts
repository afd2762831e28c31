import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const script = join(__dirname, 'support', 'containment-scenarios.mjs');

interface Report {
  scenarios: { name: string; outcome: string }[];
  escaped: string[];
}

async function scenarios(...args: string[]): Promise<Report> {
  const { stdout } = await run(process.execPath, [script, ...args], { timeout: 60_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as Report;
}

// Real process-level uncaughtException/unhandledRejection handlers, in a plain Node process.
test('hostile servers give named errors and nothing escapes to the process', async () => {
  const report = await scenarios();
  expect(report.escaped).toEqual([]);
  const byName = Object.fromEntries(report.scenarios.map((s) => [s.name, s.outcome]));
  expect(byName).toMatchObject({
    'bad magic': 'NbdConnectionError/NbdProtocolError',
    'wrong handle': 'NbdConnectionError/NbdProtocolError',
    'truncated structured reply': 'NbdConnectionError/NbdProtocolError',
    'oversized chunk': 'NbdConnectionError/NbdProtocolError',
    'closing mid-reply': 'NbdConnectionError/NbdProtocolError',
    silence: 'NbdTimeoutError',
  });
  for (const { name, outcome } of report.scenarios) {
    expect([name, outcome]).toEqual([name, expect.stringMatching(/^Nbd\w+Error/)]);
  }
});

test('negative control: a deliberately unhandled rejection is seen by the handlers', async () => {
  const report = await scenarios('--control');
  expect(report.escaped).toEqual([expect.stringContaining('deliberately unhandled (control)')]);
});
