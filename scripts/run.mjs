#!/usr/bin/env node
// The one entry point behind the root npm scripts: make sure the machine has what the
// repository needs (QEMU, pnpm at the pinned version, dependencies), then run a task.
// Every step is idempotent, so `npm test` and `npm run conformance` work on a fresh
// machine and cost a few seconds on a prepared one.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { QemuInstallError, ensureQemuSeries, qemuEnvironment, readManifest, resolveQemu, wantedSeries } from './qemu-install.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const PNPM_VERSION = '12.4.2';
const QEMU_BINARIES = ['qemu-system-x86_64', 'qemu-img', 'qemu-io', 'qemu-storage-daemon'];
const QEMU_PACKAGES = ['qemu-system-x86', 'qemu-utils'];

const env = { ...process.env, TURBO_TELEMETRY_DISABLED: '1', DO_NOT_TRACK: '1' };

function log(message) {
  process.stderr.write(`[qmpkit] ${message}\n`);
}

function onPath(command) {
  return spawnSync('sh', ['-c', `command -v "$1"`, 'sh', command], { stdio: 'ignore' }).status === 0;
}

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { stdio: 'inherit', cwd: root, env, ...options });
  if (result.error) throw result.error;
  return result.status ?? 1;
}

function mustRun(command, args, options) {
  const status = run(command, args, options);
  if (status !== 0) {
    log(`\`${command} ${args.join(' ')}\` failed with exit code ${status}`);
    process.exit(status);
  }
}

function ensureQemu() {
  const missing = QEMU_BINARIES.filter((b) => !onPath(b));
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) {
    log(`missing ${missing.join(', ')}; install Debian's ${QEMU_PACKAGES.join(' and ')} (as root) and run again`);
    process.exit(1);
  }
  log(`installing ${QEMU_PACKAGES.join(' ')} (missing: ${missing.join(', ')})`);
  const aptEnv = { ...env, DEBIAN_FRONTEND: 'noninteractive' };
  mustRun('apt-get', ['update', '-qq'], { env: aptEnv });
  mustRun('apt-get', ['install', '-y', '-qq', ...QEMU_PACKAGES], { env: aptEnv });
}

function pnpmVersion() {
  try {
    return execFileSync('pnpm', ['--version'], { encoding: 'utf8', env, cwd: '/' }).trim();
  } catch {
    return undefined;
  }
}

function ensurePnpm() {
  const found = pnpmVersion();
  if (found === PNPM_VERSION) return;
  log(`installing pnpm@${PNPM_VERSION} (found: ${found ?? 'none'})`);
  mustRun('npm', ['install', '--global', '--no-fund', '--no-audit', `pnpm@${PNPM_VERSION}`]);
}

function ensureDependencies() {
  mustRun('pnpm', ['install', '--frozen-lockfile', '--prefer-offline']);
}

// The other supported QEMU releases (10.0 from bookworm-backports, 11.1 from sid) under
// /opt/qmpkit-qemu, for the test matrix and `npm run conformance -- --qemu <version>`.
// A no-op without network when they are installed; QMPKIT_QEMU_SERIES=none skips them.
function ensureQemuReleases() {
  try {
    ensureQemuSeries();
  } catch (error) {
    if (!(error instanceof QemuInstallError)) throw error;
    log(error.message);
    process.exit(1);
  }
}

export function setup() {
  ensureQemu();
  ensureQemuReleases();
  ensurePnpm();
  ensureDependencies();
}

const turbo = (...args) => mustRun('pnpm', ['exec', 'turbo', 'run', ...args, '--output-logs=errors-only']);

// Each package's jest run (and the packaging test) leaves its counts in `dir`; one closing line
// over all of them is what CI reads. A package whose jest crashed before reporting counts as a failure.
function summarizeTests(dir, allExitedCleanly) {
  const totals = { passed: 0, failed: 0, skipped: 0 };
  for (const file of readdirSync(dir).sort()) {
    const record = JSON.parse(readFileSync(join(dir, file), 'utf8'));
    totals.passed += record.passed;
    totals.failed += record.failed;
    totals.skipped += record.skipped;
    log(`${record.name}: ${record.passed} passed, ${record.failed} failed${record.skipped ? `, ${record.skipped} skipped` : ''}`);
  }
  if (!allExitedCleanly && totals.failed === 0) totals.failed = 1;
  const skipped = totals.skipped > 0 ? `, ${totals.skipped} skipped` : '';
  process.stdout.write(`${totals.passed} passed, ${totals.failed} failed${skipped}\n`);
  return totals.failed === 0 && allExitedCleanly ? 0 : 1;
}

/**
 * The QEMU releases `npm test` runs the real-QEMU tests on besides the system's:
 * $QMPKIT_TEST_MATRIX (comma-separated series, or 'none'), default every series the set-up
 * installs. The schema package is not re-run: its parity test already checks every series.
 */
function matrixSeries() {
  const value = process.env.QMPKIT_TEST_MATRIX?.trim();
  if (value === 'none') return [];
  const series = value ? value.split(',').map((s) => s.trim()).filter(Boolean) : wantedSeries();
  for (const name of series) {
    if (readManifest(name) === undefined) {
      log(`QMPKIT_TEST_MATRIX names QEMU ${name}, which is not installed (see QMPKIT_QEMU_SERIES)`);
      process.exit(2);
    }
  }
  return series;
}

/** Replaces `--qemu <series|version|path>` in `args` by the conformance CLI's per-binary options. */
function conformanceArgs(args) {
  const at = args.findIndex((a) => a === '--qemu' || a.startsWith('--qemu='));
  if (at === -1) return { args, env };
  const spec = args[at].startsWith('--qemu=') ? args[at].slice('--qemu='.length) : args[at + 1];
  if (spec === undefined || spec === '') {
    log('--qemu needs a value: a release (7.2, 10.0, 11.1, or an installed version such as 11.1.3) or a path');
    process.exit(2);
  }
  let resolved;
  try {
    resolved = resolveQemu(spec);
  } catch (error) {
    if (!(error instanceof QemuInstallError)) throw error;
    log(error.message);
    process.exit(2);
  }
  log(`conformance on ${resolved.label}`);
  const rest = [...args.slice(0, at), ...args.slice(at + (args[at].includes('=') ? 1 : 2))];
  const b = resolved.binaries;
  return {
    args: ['--qemu-system', b['qemu-system-x86_64'], '--qemu-img', b['qemu-img'], '--qemu-io', b['qemu-io'], ...rest],
    env: qemuEnvironment(resolved, env),
  };
}

/** The repository scripts' own unit tests (node:test), counted with the packages'. */
function testScripts(resultsDir) {
  const result = spawnSync('node', ['--test', '--test-reporter=tap', 'scripts/qemu-install.test.mjs'], { cwd: root, env, encoding: 'utf8' });
  process.stdout.write(result.stdout ?? '');
  process.stderr.write(result.stderr ?? '');
  const count = (name) => Number(new RegExp(`^# ${name} (\\d+)$`, 'm').exec(result.stdout ?? '')?.[1] ?? 0);
  const record = { name: 'scripts', passed: count('pass'), failed: count('fail') + count('cancelled'), skipped: count('skipped') + count('todo') };
  writeFileSync(join(resultsDir, 'scripts.json'), `${JSON.stringify(record)}\n`);
  return result.status ?? 1;
}

const tasks = {
  setup: () => {},
  build: () => turbo('build'),
  typecheck: () => turbo('typecheck'),
  // Tests of different packages start QEMU and spawn qemu-img; on two cores they are run one
  // package at a time so timeouts measure QEMU, not contention between suites. After the whole
  // run on the system QEMU, the packages that start QEMU run again on each release of the matrix.
  test: (extra) => {
    const resultsDir = join(root, 'node_modules', '.cache', 'qmpkit-test-results');
    rmSync(resultsDir, { recursive: true, force: true });
    mkdirSync(resultsDir, { recursive: true });
    env.QMPKIT_TEST_RESULTS_DIR = resultsDir;
    turbo('build', 'typecheck');
    const timings = [];
    let started = Date.now();
    const turboTest = ['exec', 'turbo', 'run', 'test', '--concurrency=1', '--continue', '--output-logs=new-only'];
    let testStatus = run('pnpm', [...turboTest, ...extra]);
    timings.push(`system QEMU ${Math.round((Date.now() - started) / 1000)} s`);
    for (const series of matrixSeries()) {
      started = Date.now();
      const resolved = resolveQemu(series);
      log(`test matrix: the packages that run QEMU, on ${resolved.label}`);
      const matrixEnv = { ...qemuEnvironment(resolved, env), QMPKIT_TEST_SERIES: series };
      const status = run('pnpm', [...turboTest, '--filter=!@qmpkit/schema', ...extra], { env: matrixEnv });
      if (status !== 0) testStatus = status;
      timings.push(`QEMU ${series} ${Math.round((Date.now() - started) / 1000)} s`);
    }
    log(`test matrix: ${timings.join(', ')}`);
    const scriptsStatus = testScripts(resultsDir);
    const packagingStatus = run('node', ['scripts/test-packaging.mjs']);
    const docsStatus = run('node', ['scripts/docs.mjs', '--check']);
    process.exit(summarizeTests(resultsDir, testStatus === 0 && packagingStatus === 0 && scriptsStatus === 0 && docsStatus === 0));
  },
  conformance: (extra) => {
    const cli = join(root, 'apps/conformance/src/cli.ts');
    if (!existsSync(cli)) {
      log('the conformance app (apps/conformance) does not exist yet: nothing to run');
      process.exit(2);
    }
    turbo('build', '--filter=@qmpkit/conformance...');
    // `--qemu 11.1` (or 10.0, 7.2, an installed version, a path) picks the binaries.
    const picked = conformanceArgs(extra);
    process.exit(run('node', ['apps/conformance/dist/cli.js', ...picked.args], { env: picked.env }));
  },
  // The API reference of every published package, into docs/api/ (no TypeDoc warning allowed).
  docs: (extra) => {
    turbo('build');
    process.exit(run('node', ['scripts/docs.mjs', ...extra]));
  },
  'bench:qmp': () => {
    turbo('build', '--filter=@qmpkit/client...');
    process.exit(run('node', ['bench/qmp.mjs']));
  },
  'bench:backup': () => {
    turbo('build', '--filter=@qmpkit/backup...');
    process.exit(run('node', ['bench/backup.mjs']));
  },
  // Not part of `test`: each mutant costs a whole conformance run (see scripts/mutants.mjs).
  mutants: (extra) => {
    turbo('build', '--filter=@qmpkit/conformance...');
    process.exit(run('node', ['scripts/mutants.mjs', ...extra]));
  },
  'bench:nbd': () => {
    turbo('build', '--filter=@qmpkit/nbd...');
    process.exit(run('node', ['bench/nbd.mjs']));
  },
  'bench:qcow2-write': () => {
    turbo('build', '--filter=@qmpkit/image-tools...');
    process.exit(run('node', ['bench/qcow2-write.mjs']));
  },
  'bench:conformance': () => {
    turbo('build', '--filter=@qmpkit/conformance...');
    process.exit(run('node', ['bench/conformance.mjs']));
  },
};

const [task = 'setup', ...extra] = process.argv.slice(2);
const action = tasks[task];
if (!action) {
  log(`unknown task "${task}"; one of: ${Object.keys(tasks).join(', ')}`);
  process.exit(2);
}
setup();
action(extra);
