import { spawn } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';

import { findAll, parseXml } from './xml.js';

// The CLI end to end against the installed QEMU: the whole suite, the reports, case selection,
// failures with and without kept artifacts, the per-case timeout and an interrupt. Every run
// gets a private TMPDIR, so "nothing left behind" is checked on a directory no one else uses.

const cli = join(__dirname, '..', 'dist', 'cli.js');
const ALL_124_IDS = [
  'TestIncrementalBackup.test_incremental_simple',
  'TestIncrementalBackup.test_small_granularity',
  'TestIncrementalBackup.test_large_granularity',
  'TestIncrementalBackup.test_larger_cluster_target',
  'TestIncrementalBackup.test_incremental_transaction',
  'TestIncrementalBackup.test_transaction_failure',
  'TestIncrementalBackup.test_transaction_failure_race',
  'TestIncrementalBackup.test_sync_dirty_bitmap_missing',
  'TestIncrementalBackup.test_sync_dirty_bitmap_not_found',
  'TestIncrementalBackup.test_sync_dirty_bitmap_bad_granularity',
  'TestIncrementalBackup.test_growing_before_backup',
  'TestIncrementalBackupBlkdebug.test_incremental_failure',
  'TestIncrementalBackupBlkdebug.test_incremental_pause',
];
// iotest 257: 21 bitmap-sync scenarios (sync bitmap x 3 bitmap modes, full and top x 2, each
// with 3 failure kinds) and the 48 rows of its API failure table.
const SCENARIOS_257 = 21;
const API_ROWS_257 = 48;

interface CliRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  lines: string[];
}

let root: string;
let reports: string;

beforeAll(async () => {
  if (!existsSync(cli)) throw new Error(`${cli} is missing: build the app first (pnpm --filter @qmpkit/conformance run build)`);
  root = await mkdtemp(join(tmpdir(), 'qmpkit-conformance-test-'));
  reports = await mkdtemp(join(tmpdir(), 'qmpkit-conformance-reports-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
  await rm(reports, { recursive: true, force: true });
});

afterEach(() => {
  // Whatever a test did, no scratch directory and no QEMU may survive it.
  const left = readdirSync(root);
  for (const name of left) {
    // Remove before failing so one test's leftovers do not fail the next.
    rmSync(join(root, name), { recursive: true, force: true });
  }
  expect(left).toEqual([]);
  expect(qemuProcessesUnder(root)).toEqual([]);
});

/** Pids of live processes whose command line mentions `dir` (QEMU's socket and images are there). */
function qemuProcessesUnder(dir: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (cmdline.includes(dir) && /qemu/.test(cmdline)) found.push(Number(entry));
  }
  return found;
}

function startCli(args: readonly string[]): { child: ReturnType<typeof spawn>; done: Promise<CliRun> } {
  const child = spawn(process.execPath, [cli, ...args], {
    env: { ...process.env, TMPDIR: root },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  child.stderr?.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const done = new Promise<CliRun>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, lines: stdout.trimEnd().split('\n') }));
  });
  return { child, done };
}

const runCli = (args: readonly string[]): Promise<CliRun> => startCli(args).done;

/** The id of each case line (`PASS id (N ms)`), in output order. */
function caseLines(run: CliRun): Array<{ status: string; id: string }> {
  return run.lines
    .map((l) => /^(PASS|FAIL|SKIP) (\S+) \(\d+ ms\)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ status: m[1] as string, id: m[2] as string }));
}

describe('qmpkit-conformance', () => {
  it('lists both suites by default and one with --suite; refuses an unknown suite', async () => {
    const all = await runCli(['--list']);
    expect(all.code).toBe(0);
    const ids = all.lines;
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.slice(0, ALL_124_IDS.length)).toEqual(ALL_124_IDS);
    const ids257 = ids.filter((id) => id.startsWith('257.'));
    expect(ids257).toHaveLength(SCENARIOS_257 + API_ROWS_257);
    expect(ids.length).toBe(ALL_124_IDS.length + SCENARIOS_257 + API_ROWS_257);
    expect(ids257).toEqual(expect.arrayContaining(['257.bitmap.on-success.intermediate', '257.top.always.no-failure', '257.api.top.bitmap404.always']));
    expect(ids257.filter((id) => id.startsWith('257.api.'))).toHaveLength(API_ROWS_257);

    expect((await runCli(['--list', '--suite', '257'])).lines).toEqual(ids257);
    expect((await runCli(['--list', '--suite', '124'])).lines).toEqual(ALL_124_IDS);
    expect((await runCli(['--list', '--suite', '124', '--suite', 'all'])).lines).toEqual(ids);

    const bad = await runCli(['--suite', '125']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--suite needs one of 124, 257, all, got "125"/);
  }, 60_000);

  it('passes every suite and writes valid JSON and JUnit reports covering both', async () => {
    const json = join(reports, 'nested', 'report.json');
    const junit = join(reports, 'report.xml');
    const run = await runCli(['--json', json, '--junit', junit]);
    expect(run.stderr).toBe('');
    const total = ALL_124_IDS.length + SCENARIOS_257 + API_ROWS_257;
    expect(run.lines.slice(-3)).toEqual([
      `suite 124: ${ALL_124_IDS.length} passed, 0 failed`,
      `suite 257: ${SCENARIOS_257 + API_ROWS_257} passed, 0 failed`,
      `${total} passed, 0 failed`,
    ]);
    expect(run.code).toBe(0);
    const lines = caseLines(run);
    expect(lines).toHaveLength(total);
    expect(lines.filter((l) => !l.id.startsWith('257.')).map((l) => l.id).sort()).toEqual([...ALL_124_IDS].sort());
    expect(lines.every((l) => l.status === 'PASS')).toBe(true);

    const report = JSON.parse(readFileSync(json, 'utf8')) as Record<string, unknown>;
    expect(Object.keys(report)).toEqual(['qemu', 'cases', 'summary', 'checks']);
    const qemu = report['qemu'] as Record<string, unknown>;
    expect(Object.keys(qemu)).toEqual(['version', 'binaries']);
    expect(qemu['version']).toMatch(/^\d+\.\d+\.\d+/);
    expect(Object.keys(qemu['binaries'] as object).sort()).toEqual(['qemu-img', 'qemu-io', 'qemu-system']);
    for (const path of Object.values(qemu['binaries'] as Record<string, string>)) expect(existsSync(path)).toBe(true);
    const cases = report['cases'] as Array<Record<string, unknown>>;
    expect(cases.slice(0, ALL_124_IDS.length).map((c) => c['id'])).toEqual(ALL_124_IDS);
    expect(cases.map((c) => c['suite'])).toEqual([
      ...ALL_124_IDS.map(() => '124'),
      ...Array.from({ length: SCENARIOS_257 + API_ROWS_257 }, () => '257'),
    ]);
    const catalogue = report['checks'] as Record<string, { origin: string }>;
    for (const c of cases) {
      expect(Object.keys(c)).toEqual(['id', 'suite', 'status', 'durationMs', 'checks']);
      expect(c['status']).toBe('passed');
      // Every 124 case ends with the suite's own accounting of job events and a read-back of the drive.
      const checks = c['checks'] as Array<{ name: string; origin: string; passed: number }>;
      if (c['suite'] === '124') {
        expect(checks.map((k) => k.name)).toEqual(expect.arrayContaining(['job-events-accounted', 'read-back-drive']));
      }
      for (const k of checks) expect(k.origin).toBe(catalogue[k.name]?.origin);
      expect(Number.isInteger(c['durationMs'])).toBe(true);
      expect(c['durationMs'] as number).toBeGreaterThan(0);
    }
    // The suite's own checks each ran somewhere, and every case that compares has a negative control.
    const ran = new Set(cases.flatMap((c) => (c['checks'] as Array<{ name: string }>).map((k) => k.name)));
    expect([...ran].sort()).toEqual(Object.keys(catalogue).sort());
    for (const c of cases) {
      const names = (c['checks'] as Array<{ name: string }>).map((k) => k.name);
      if (names.includes('image-compare')) expect(names).toContain('negative-control');
    }
    const summary = report['summary'] as Record<string, number>;
    expect(Object.keys(summary)).toEqual(['passed', 'failed', 'skipped', 'wallMs']);
    expect(summary).toMatchObject({ passed: total, failed: 0, skipped: 0 });
    expect(summary['wallMs']).toBeGreaterThan(0);

    const xml = parseXml(readFileSync(junit, 'utf8'));
    expect(xml.name).toBe('testsuites');
    expect(xml.attributes).toMatchObject({ tests: String(total), failures: '0', errors: '0', skipped: '0' });
    const testcases = findAll(xml, 'testcase');
    expect(testcases.map((t) => `${t.attributes['classname']}.${t.attributes['name']}`)).toEqual(cases.map((c) => c['id']));
    expect(findAll(xml, 'failure')).toEqual([]);
  }, 400_000);

  it('a 257 scenario fails when its backups do not hold what the references hold', async () => {
    // A qemu-img whose `rebase` does nothing: test backup #1 then lacks the clusters of the
    // full backup it should stack on, and the verification must see the difference.
    const wrapper = join(reports, 'qemu-img-no-rebase');
    writeFileSync(wrapper, `#!/bin/sh\nif [ "$1" = rebase ]; then exit 0; fi\nexec ${execOnPath('qemu-img')} "$@"\n`);
    chmodSync(wrapper, 0o755);
    // --compare-with qemu-img: rebases, maps and comparisons all go through this qemu-img.
    const run = await runCli(['--filter', '257.bitmap.on-success.no-failure', '--qemu-img', wrapper, '--compare-with', 'qemu-img']);
    expect(run.code).toBe(1);
    expect(run.lines[run.lines.length - 1]).toBe('0 passed, 1 failed');
    expect(run.stdout).toMatch(/qemu-img compare bsync1 fbackup1: expected "identical", got "mismatch"/);
  }, 60_000);

  it('--filter selects cases by substring or glob', async () => {
    const bySubstring = await runCli(['--filter', 'sync_dirty_bitmap']);
    expect(bySubstring.code).toBe(0);
    expect(caseLines(bySubstring).map((l) => l.id).sort()).toEqual(ALL_124_IDS.filter((id) => id.includes('sync_dirty_bitmap')).sort());
    expect(bySubstring.lines[bySubstring.lines.length - 1]).toBe('3 passed, 0 failed');

    const byGlob = await runCli(['--filter', 'TestIncrementalBackupBlkdebug.*', '--filter', '*_race']);
    expect(byGlob.code).toBe(0);
    expect(caseLines(byGlob).map((l) => l.id).sort()).toEqual([
      'TestIncrementalBackup.test_transaction_failure_race',
      'TestIncrementalBackupBlkdebug.test_incremental_failure',
      'TestIncrementalBackupBlkdebug.test_incremental_pause',
    ]);

    const none = await runCli(['--filter', 'no_such_case']);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/no case matches --filter "no_such_case"/);
  }, 120_000);

  it('a broken qemu-io fails the cases (exit 1) and leaves nothing without --keep-artifacts', async () => {
    // qemu-io writes the starting patterns every case needs (qemu-img is no longer on that
    // path: empty images are written and compared in-process). This one runs and fails.
    const broken = join(reports, 'qemu-io-broken');
    writeFileSync(broken, '#!/bin/sh\necho "qemu-io-broken: cannot do anything" >&2\nexit 1\n');
    chmodSync(broken, 0o755);
    const json = join(reports, 'failed.json');
    const run = await runCli(['--filter', 'test_incremental_simple', '--filter', 'bad_granularity', '--qemu-io', broken, '--json', json]);
    expect(run.code).toBe(1);
    expect(run.lines[run.lines.length - 1]).toBe('0 passed, 2 failed');
    expect(caseLines(run).map((l) => l.status)).toEqual(['FAIL', 'FAIL']);
    // The reason is the tool's failure, in its own words.
    expect(run.stdout).toContain('QemuIoError: qemu-io failed');
    expect(run.stdout).toContain('qemu-io-broken: cannot do anything');
    expect(run.stdout).not.toContain('artifacts kept');
    const report = JSON.parse(readFileSync(json, 'utf8')) as { cases: Array<Record<string, unknown>>; qemu: { binaries: Record<string, string> } };
    expect(report.qemu.binaries['qemu-io']).toBe(broken);
    for (const c of report.cases) {
      expect(c['status']).toBe('failed');
      expect(c['error']).toEqual(expect.stringContaining('qemu-io-broken: cannot do anything'));
    }
  }, 60_000);

  it.each([
    ['--qemu-system', 'qemu-system'],
    ['--qemu-img', 'qemu-img'],
    ['--qemu-io', 'qemu-io'],
  ])('a %s path that is not an executable is one usage error (exit 2), and no case runs', async (option, binary) => {
    const missing = join(root, 'no-such-dir', binary);
    const run = await runCli(['--filter', 'test_incremental_simple', option, missing]);
    expect(run.code).toBe(2);
    expect(caseLines(run)).toEqual([]);
    expect(run.stdout).toBe('');
    expect(run.stderr.trim().split('\n')).toEqual([`qmpkit-conformance: ${binary} not found or not executable: ${missing} (from ${option})`]);
  }, 60_000);

  it('--scratch-dir puts the run elsewhere; one that does not exist is a usage error (exit 2)', async () => {
    const missing = join(root, 'no-such-scratch');
    const bad = await runCli(['--filter', 'test_incremental_simple', '--scratch-dir', missing]);
    expect(bad.code).toBe(2);
    expect(caseLines(bad)).toEqual([]);
    expect(bad.stderr.trim()).toBe(`qmpkit-conformance: scratch directory ${missing}: no such directory (from --scratch-dir)`);

    // A failing case with --keep-artifacts shows where its directory was made: in the scratch
    // directory, not in TMPDIR (root), which stays empty.
    const scratch = await mkdtemp(join(reports, 'scratch-'));
    const broken = join(reports, 'qemu-io-fails');
    writeFileSync(broken, '#!/bin/sh\nexit 1\n');
    chmodSync(broken, 0o755);
    try {
      const run = await runCli(['--filter', 'test_incremental_simple', '--qemu-io', broken, '--keep-artifacts', '--scratch-dir', scratch]);
      expect(run.code).toBe(1);
      const kept = /artifacts kept in (\S+)/.exec(run.stdout)?.[1];
      expect(kept !== undefined && dirname(kept)).toBe(scratch);
      expect(readdirSync(scratch)).toEqual([basename(kept as string)]);
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  }, 60_000);

  it('--keep-artifacts keeps the images and QEMU log of a failed case and prints where', async () => {
    // qemu-img that finds every comparison different: the case fails at its final check,
    // after QEMU ran and every image was made. (--compare-with qemu-img: by default images are
    // compared in-process and this qemu-img would not be asked.)
    const wrapper = join(reports, 'qemu-img-differs');
    const realQemuImg = execOnPath('qemu-img');
    writeFileSync(
      wrapper,
      `#!/bin/sh\nif [ "$1" = compare ]; then echo "Content mismatch at offset 0!"; exit 1; fi\nexec ${realQemuImg} "$@"\n`,
    );
    chmodSync(wrapper, 0o755);
    const run = await runCli(['--filter', 'test_incremental_simple', '--qemu-img', wrapper, '--compare-with', 'qemu-img', '--keep-artifacts']);
    expect(run.code).toBe(1);
    expect(run.lines[run.lines.length - 1]).toBe('0 passed, 1 failed');
    expect(run.stdout).toMatch(/image comparison drive0\.bitmap0\.inc0\.qcow2 against drive0\.bitmap0\.ref0\.qcow2: expected "identical", got "different"/);
    const kept = /artifacts kept in (\S+)/.exec(run.stdout)?.[1];
    expect(kept).toBeDefined();
    expect(dirname(kept as string)).toBe(root);
    const files = readdirSync(kept as string).sort();
    expect(files).toEqual(
      expect.arrayContaining([
        'drive0.qcow2',
        'drive0.full.backup.qcow2',
        'drive0.bitmap0.inc0.qcow2',
        'drive0.bitmap0.ref0.qcow2',
        'drive0.bitmap0.inc2.qcow2',
        'qemu.log',
      ]),
    );
    // The QEMU process is gone even though its files are kept.
    expect(qemuProcessesUnder(root)).toEqual([]);
    await rm(kept as string, { recursive: true, force: true });
  }, 60_000);

  it('a comparer that always agrees fails the suite: by disagreement (two engines) or by the negative controls', async () => {
    // A qemu-img whose compare finds every pair identical.
    const wrapper = join(reports, 'qemu-img-agrees');
    writeFileSync(
      wrapper,
      `#!/bin/sh\nif [ "$1" = compare ]; then echo "Images are identical."; exit 0; fi\nexec ${execOnPath('qemu-img')} "$@"\n`,
    );
    chmodSync(wrapper, 0o755);
    // With the SDK's reader beside it, the first comparison that must come out different does
    // not, and the two engines disagree.
    const both = await runCli(['--filter', 'test_incremental_simple', '--qemu-img', wrapper, '--compare-with', 'both']);
    expect(both.code).toBe(1);
    expect(both.stdout).toMatch(/\[suite: negative-control\] comparison of \S+ with \S+: the comparison engines agree/);
    expect(both.stdout).toMatch(/"sdk":"different: Content mismatch at offset 0!","qemu-img":"identical: Images are identical\."/);
    // All three: the two readers agree with each other, qemu-img with neither.
    const all = await runCli(['--filter', 'test_incremental_simple', '--qemu-img', wrapper, '--compare-with', 'all']);
    expect(all.code).toBe(1);
    expect(all.stdout).toMatch(/"sdk":"different: Content mismatch at offset 0!","suite":"different: Content mismatch at offset 0!","qemu-img":"identical: Images are identical\."/);
    const alone = await runCli(['--filter', 'test_incremental_simple', '--qemu-img', wrapper, '--compare-with', 'qemu-img']);
    expect(alone.code).toBe(1);
    expect(alone.stdout).toMatch(/\[suite: negative-control\] negative control: drive0\.qcow2 against the older backup drive0\.bitmap0\.ref1\.qcow2: expected \{"identical":false,"message":"Content mismatch at offset 0!"\}/);
  }, 60_000);

  it('--timeout fails a case that runs too long and cleans up after it', async () => {
    const run = await runCli(['--filter', 'test_transaction_failure', '--timeout', '0.05', '--jobs', '1']);
    expect(run.code).toBe(1);
    const lines = caseLines(run);
    expect(lines.map((l) => l.status)).toEqual(['FAIL', 'FAIL']);
    expect(run.stdout.match(/did not finish within 50 ms/g)).toHaveLength(2);
  }, 60_000);

  /** Resolves once a QEMU of this file's runs is up, i.e. a run is really under way. */
  async function qemuStarted(): Promise<void> {
    const deadline = Date.now() + 30_000;
    while (qemuProcessesUnder(root).length === 0) {
      if (Date.now() > deadline) throw new Error('no QEMU started within 30 s');
      // Nothing announces QEMU's start to a test, so look again shortly.
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  it.each(['SIGINT', 'SIGTERM', 'SIGHUP'] as const)('on %s stops QEMU, removes every scratch directory and exits 130', async (signal) => {
    const { child, done } = startCli(['--jobs', '2']);
    await qemuStarted();
    child.kill(signal);
    const run = await done;
    expect(run.code).toBe(130);
    expect(run.stderr).toContain(`interrupted (received ${signal}); QEMU stopped and scratch directories removed`);
    expect(run.stdout).not.toMatch(/passed, \d+ failed/);
  }, 60_000);

  it('stops QEMU, removes every scratch directory and exits 130 when its standard output is closed (| head -1)', async () => {
    const { child, done } = startCli(['--jobs', '2']);
    // Read the first case line, then close the pipe as `head -1` does: the CLI's next write fails with EPIPE.
    await new Promise<void>((resolve) => {
      let seen = '';
      child.stdout?.on('data', (chunk: string) => {
        seen += chunk;
        if (seen.includes('\n')) resolve();
      });
    });
    child.stdout?.destroy();
    const run = await done;
    expect(run.signal).toBeNull();
    expect(run.code).toBe(130);
    expect(run.stderr).toContain('interrupted (standard output closed); QEMU stopped and scratch directories removed');
    expect(run.stderr).not.toMatch(/EPIPE|Unhandled/);
  }, 60_000);

  it('stops QEMU, removes every scratch directory and exits when its parent process dies', async () => {
    // The CLI as the child of a shell that is then killed outright (no signal reaches the CLI).
    // Its output goes to a file, so a closed pipe cannot be what stops it.
    const out = join(reports, 'orphan.out');
    const parent = spawn('sh', ['-c', '"$@" >"$OUT" 2>&1 & echo $!; wait', 'sh', process.execPath, cli, '--jobs', '2'], {
      env: { ...process.env, TMPDIR: root, OUT: out },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const pid = await new Promise<number>((resolve, reject) => {
      parent.on('error', reject);
      parent.stdout?.setEncoding('utf8').once('data', (text: string) => resolve(Number(text.trim())));
    });
    expect(Number.isInteger(pid) && pid > 0).toBe(true);
    await qemuStarted();
    parent.kill('SIGKILL');
    // The orphan notices within a poll, cleans up and exits (it may stay a zombie if nobody reaps it).
    const deadline = Date.now() + 20_000;
    while (alive(pid)) {
      if (Date.now() > deadline) {
        process.kill(pid, 'SIGKILL');
        throw new Error(`the CLI (pid ${pid}) outlived its parent by 20 s`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(readFileSync(out, 'utf8')).toMatch(/interrupted \(parent process \d+ exited\); QEMU stopped and scratch directories removed/);
  }, 60_000);
});

/** Whether `pid` is a live process (a zombie, which has exited and only waits to be reaped, is not). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function execOnPath(name: string): string {
  for (const dir of (process.env['PATH'] ?? '').split(':')) {
    const candidate = join(dir, name);
    if (dir && existsSync(candidate)) return candidate;
  }
  throw new Error(`${name} is not on PATH`);
}
