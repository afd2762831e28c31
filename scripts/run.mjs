#!/usr/bin/env node
// The one entry point behind the root npm scripts: make sure the machine has what the
// repository needs (QEMU, pnpm at the pinned version, dependencies), then run a task.
// Every step is idempotent, so `npm test` and `npm run conformance` work on a fresh
// machine and cost a few seconds on a prepared one.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { QemuInstallError, ensureQemuSeries } from './qemu-install.mjs';

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

const tasks = {
  setup: () => {},
  build: () => turbo('build'),
  typecheck: () => turbo('typecheck'),
  // Tests of different packages start QEMU and spawn qemu-img; on two cores they are run one
  // package at a time so timeouts measure QEMU, not contention between suites.
  test: (extra) => {
    const resultsDir = join(root, 'node_modules', '.cache', 'qmpkit-test-results');
    rmSync(resultsDir, { recursive: true, force: true });
    mkdirSync(resultsDir, { recursive: true });
    env.QMPKIT_TEST_RESULTS_DIR = resultsDir;
    turbo('build', 'typecheck');
    const testStatus = run('pnpm', ['exec', 'turbo', 'run', 'test', '--concurrency=1', '--continue', '--output-logs=new-only', ...extra]);
    const packagingStatus = run('node', ['scripts/test-packaging.mjs']);
    process.exit(summarizeTests(resultsDir, testStatus === 0 && packagingStatus === 0));
  },
  conformance: (extra) => {
    const cli = join(root, 'apps/conformance/src/cli.ts');
    if (!existsSync(cli)) {
      log('the conformance app (apps/conformance) does not exist yet: nothing to run');
      process.exit(2);
    }
    turbo('build', '--filter=@qmpkit/conformance...');
    process.exit(run('node', ['apps/conformance/dist/cli.js', ...extra]));
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
