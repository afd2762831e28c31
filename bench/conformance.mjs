#!/usr/bin/env node
// Wall time of the conformance suites (QEMU's iotests 124 and 257 on the SDK), as a user runs them.
//
// Each round runs `node apps/conformance/dist/cli.js --suite 124`, then `--suite 257`, then both
// (`--suite all`, what `npm run conformance` runs), each with its defaults (jobs = number of
// cores, the default verdict: the SDK's reader and the suite's own qcow2 reader, which must
// agree) and a JSON report, then both again with `--compare-with in-process` (the SDK's reader
// alone) as the baseline of what the independent second engine costs; every run must pass
// every case of its suites (a fast wrong answer is worth nothing). With `--before DIR` (another
// built checkout of the repository, e.g. of main) each round also runs that checkout's
// `--suite 124` and `--suite 257`, so a change is measured against what it changes under the
// same load. When QEMU's own Python iotests are at hand (`--iotests DIR`, or the tree
// `bench/fetch-iotests.mjs` unpacks into .cache/), the same round also times `check -qcow2 124`
// and `check -qcow2 257` against the same QEMU binaries, so the ratios compare runs made under
// the same load. Per run it prints the wall time and the CPU time of the whole process tree;
// the CPU time barely moves when other work competes for the machine, so it tells a slow machine
// from a slow suite. Target: each suite within 0.5 x the wall time of the iotest of its number.
//
// Debian's QEMU has no qtest accelerator, which the iotests ask for: they get a qemu-system
// wrapper that runs the same command line with `-accel tcg -S` (no guest code runs, as with qtest).
//
// The last line is `conformance median_s=TOTAL suite124_s=X suite257_s=Y` followed, with the
// iotests, by ` iotest124_s=A iotest257_s=B ratio124=X/A ratio257=Y/B`, and with `--before`, by
// ` before124_s=P before257_s=Q` (and ` before_ratio124=P/A before_ratio257=Q/B`).
//
// Usage: node bench/conformance.mjs [--runs 5] [--iotests DIR | --no-iotests] [--before DIR] [-- extra CLI options]
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { iotestsDir } from './fetch-iotests.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'apps/conformance/dist/cli.js');
const EXPECTED = { 124: 13, 257: 69 };

const argv = process.argv.slice(2);
const dashdash = argv.indexOf('--');
const ownArgs = dashdash < 0 ? argv : argv.slice(0, dashdash);
const extra = dashdash < 0 ? [] : argv.slice(dashdash + 1);
const option = (name) => {
  const i = ownArgs.indexOf(name);
  return i < 0 ? undefined : ownArgs[i + 1];
};
const RUNS = Number(option('--runs') ?? 5);
if (!Number.isSafeInteger(RUNS) || RUNS <= 0) throw new Error('--runs needs a positive integer');
const beforeRoot = option('--before');
const beforeCli = beforeRoot === undefined ? undefined : join(beforeRoot, 'apps/conformance/dist/cli.js');
if (beforeCli !== undefined && !existsSync(beforeCli)) throw new Error(`--before ${beforeRoot}: no built CLI at ${beforeCli}`);

function findIotests() {
  if (ownArgs.includes('--no-iotests')) return undefined;
  const given = option('--iotests') ?? process.env.QMPKIT_IOTESTS_DIR;
  if (given) {
    if (!existsSync(join(given, 'check'))) throw new Error(`--iotests ${given}: no check script there`);
    return given;
  }
  try {
    const cached = iotestsDir();
    return existsSync(join(cached, 'check')) ? cached : undefined;
  } catch {
    return undefined;
  }
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

/** CPU seconds of the children this process has waited for (utime+stime of reaped descendants). */
async function childrenCpuSeconds() {
  const stat = await readFile('/proc/self/stat', 'utf8').catch(() => undefined);
  if (stat === undefined) return Number.NaN;
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 16 and 17 of stat(5) (cutime, cstime), counted after the command name.
  return (Number(fields[13]) + Number(fields[14])) / 100;
}

async function timed(command, args, options = {}) {
  const cpuBefore = await childrenCpuSeconds();
  const started = performance.now();
  const result = await new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  const wall = (performance.now() - started) / 1000;
  const cpu = (await childrenCpuSeconds()) - cpuBefore;
  return { ...result, wall, cpu };
}

const BASELINE = ['--compare-with', 'in-process'];

async function runSuite(suite, jsonFile, baseline = false, which = cli) {
  const run = await timed(process.execPath, [which, '--suite', suite, '--json', jsonFile, ...(baseline ? BASELINE : []), ...extra]);
  const lines = run.stdout.trimEnd().split('\n');
  const last = lines[lines.length - 1];
  const cases = suite === 'all' ? EXPECTED[124] + EXPECTED[257] : EXPECTED[suite];
  if (run.code !== 0 || last !== `${cases} passed, 0 failed`) {
    process.stderr.write(run.stdout + run.stderr);
    throw new Error(`--suite ${suite} did not pass every case (exit ${run.code ?? run.signal}, last line "${last}")`);
  }
  return { ...run, report: JSON.parse(await readFile(jsonFile, 'utf8')) };
}

function qemuWrapper(dir) {
  const wrapper = join(dir, 'qemu-system-x86_64');
  // Same arguments, except `-accel qtest` (not built by Debian) becomes `-accel tcg -S`.
  writeFileSync(
    wrapper,
    [
      '#!/bin/sh',
      'n=$#',
      'while [ "$n" -gt 0 ]; do',
      '  a=$1; shift; n=$((n - 1))',
      '  if [ "$a" = -accel ] && [ "$1" = qtest ]; then shift; n=$((n - 1)); set -- "$@" -accel tcg -S',
      '  else set -- "$@" "$a"; fi',
      'done',
      `exec "\${QMPKIT_REAL_QEMU:-qemu-system-x86_64}" "$@"`,
      '',
    ].join('\n'),
  );
  chmodSync(wrapper, 0o755);
  return wrapper;
}

async function runIotest(iotests, number, scratch, wrapper) {
  const testDir = await mkdtemp(join(scratch, `iotest-${number}-`));
  const onPath = (name) => process.env.PATH.split(':').map((d) => join(d, name)).find((p) => existsSync(p)) ?? name;
  const env = {
    ...process.env,
    QEMU_PROG: wrapper,
    QMPKIT_REAL_QEMU: process.env.QEMU_SYSTEM || onPath('qemu-system-x86_64'),
    QEMU_IMG_PROG: process.env.QEMU_IMG || onPath('qemu-img'),
    QEMU_IO_PROG: process.env.QEMU_IO || onPath('qemu-io'),
    QEMU_NBD_PROG: onPath('qemu-nbd'),
    QSD_PROG: onPath('qemu-storage-daemon'),
    TEST_DIR: testDir,
  };
  const run = await timed(join(iotests, 'check'), ['-qcow2', String(number)], { cwd: iotests, env });
  await rm(testDir, { recursive: true, force: true });
  if (run.code !== 0 || !/Passed all 1 iotests/.test(run.stdout)) {
    process.stderr.write(run.stdout.slice(-4000) + run.stderr.slice(-2000));
    throw new Error(`QEMU's iotest ${number} did not pass (exit ${run.code ?? run.signal})`);
  }
  return run;
}

const iotests = findIotests();
const scratch = await mkdtemp(join(tmpdir(), 'qmpkit-conformance-bench-'));
try {
  const wrapper = iotests ? qemuWrapper(scratch) : undefined;
  console.log(
    `conformance suites, ${RUNS} rounds, ${availableParallelism()} cores, load average ${loadavg()[0].toFixed(2)}; ` +
      (iotests ? `QEMU's iotests from ${iotests}` : 'no QEMU iotests tree (node bench/fetch-iotests.mjs fetches one): no ratios'),
  );
  const samples = { 124: [], 257: [], all: [], baseline: [], before124: [], before257: [], iotest124: [], iotest257: [] };
  const perCase = new Map();
  const fmt = (r) => `wall ${r.wall.toFixed(2)} s cpu ${r.cpu.toFixed(2)} s`;
  for (let i = 1; i <= RUNS; i++) {
    const parts = [];
    for (const suite of ['124', '257', 'all']) {
      const run = await runSuite(suite, join(scratch, `run-${i}-${suite}.json`));
      samples[suite].push(run);
      if (suite !== 'all') for (const c of run.report.cases) perCase.set(c.id, [...(perCase.get(c.id) ?? []), c.durationMs]);
      parts.push(`${suite}: ${fmt(run)}`);
    }
    const baseline = await runSuite('all', join(scratch, `run-${i}-baseline.json`), true);
    samples.baseline.push(baseline);
    parts.push(`all ${BASELINE.join(' ')}: ${fmt(baseline)}`);
    if (beforeCli !== undefined) {
      for (const suite of ['124', '257']) {
        const run = await runSuite(suite, join(scratch, `run-${i}-before-${suite}.json`), false, beforeCli);
        samples[`before${suite}`].push(run);
        parts.push(`before ${suite}: ${fmt(run)}`);
      }
    }
    if (iotests) {
      for (const number of [124, 257]) {
        const run = await runIotest(iotests, number, scratch, wrapper);
        samples[`iotest${number}`].push(run);
        parts.push(`iotest ${number}: ${fmt(run)}`);
      }
    }
    console.log(`round ${i}: ${parts.join(' | ')}`);
  }
  console.log('median per case (ms):');
  for (const [id, times] of perCase) console.log(`  ${id} ${Math.round(median(times))}`);
  const med = (key, field = 'wall') => median(samples[key].map((r) => r[field]));
  for (const key of Object.keys(samples)) {
    if (samples[key].length > 0) console.log(`median ${key}: wall ${med(key).toFixed(3)} s, cpu ${med(key, 'cpu').toFixed(2)} s`);
  }
  console.log(
    `default verdict (two readers) against the baseline (${BASELINE.join(' ')}): wall ${(med('all') / med('baseline')).toFixed(2)}, cpu ${(med('all', 'cpu') / med('baseline', 'cpu')).toFixed(2)}`,
  );
  let last = `conformance median_s=${med('all').toFixed(3)} suite124_s=${med('124').toFixed(3)} suite257_s=${med('257').toFixed(3)}`;
  if (iotests) {
    last +=
      ` iotest124_s=${med('iotest124').toFixed(3)} iotest257_s=${med('iotest257').toFixed(3)}` +
      ` ratio124=${(med('124') / med('iotest124')).toFixed(2)} ratio257=${(med('257') / med('iotest257')).toFixed(2)}`;
  }
  if (beforeCli !== undefined) {
    last += ` before124_s=${med('before124').toFixed(3)} before257_s=${med('before257').toFixed(3)}`;
    if (iotests) {
      last += ` before_ratio124=${(med('before124') / med('iotest124')).toFixed(2)} before_ratio257=${(med('before257') / med('iotest257')).toFixed(2)}`;
    }
  }
  console.log(last);
} finally {
  await rm(scratch, { recursive: true, force: true });
}
