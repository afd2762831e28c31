#!/usr/bin/env node
// Wall time of the whole conformance suite (QEMU's iotest 124 on the SDK), as a user runs it.
//
// Runs `node apps/conformance/dist/cli.js` RUNS times (default 5) with its defaults (jobs = number
// of cores) and a JSON report, checks that every run passed all 13 cases (a failing run fails
// the benchmark: a fast wrong answer is worth nothing), and prints per run the wall time and
// the CPU time of the whole process tree, then the median of each case's duration, then the
// median wall time. The CPU time barely moves when other work competes for the machine, so it
// tells a slow machine from a slow suite. QEMU's own Python iotest 124 takes about 3.1 s for
// these cases on a 2-core machine; the target is about half of that.
//
// The last line is `conformance median_s=X`.
//
// Usage: node bench/conformance.mjs [--runs 5] [-- extra CLI options]
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'apps/conformance/dist/cli.js');
const EXPECTED_CASES = 13;

const argv = process.argv.slice(2);
const dashdash = argv.indexOf('--');
const ownArgs = dashdash < 0 ? argv : argv.slice(0, dashdash);
const extra = dashdash < 0 ? [] : argv.slice(dashdash + 1);
const runsIndex = ownArgs.indexOf('--runs');
const RUNS = runsIndex < 0 ? 5 : Number(ownArgs[runsIndex + 1]);
if (!Number.isSafeInteger(RUNS) || RUNS <= 0) throw new Error('--runs needs a positive integer');

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

function runOnce(jsonFile) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, [cli, '--json', jsonFile, ...extra], { stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, wallMs: performance.now() - started }));
  });
}

const scratch = await mkdtemp(join(tmpdir(), 'qmpkit-conformance-bench-'));
try {
  console.log(`conformance suite, ${RUNS} runs, ${availableParallelism()} cores, load average ${loadavg()[0].toFixed(2)}`);
  const walls = [];
  const perCase = new Map();
  for (let i = 1; i <= RUNS; i++) {
    const jsonFile = join(scratch, `run-${i}.json`);
    const cpuBefore = await childrenCpuSeconds();
    const run = await runOnce(jsonFile);
    const cpu = (await childrenCpuSeconds()) - cpuBefore;
    const lines = run.stdout.trimEnd().split('\n');
    const summary = lines[lines.length - 1];
    if (run.code !== 0 || summary !== `${EXPECTED_CASES} passed, 0 failed`) {
      process.stderr.write(run.stdout);
      throw new Error(`run ${i} did not pass every case (exit ${run.code ?? run.signal}, last line "${summary}")`);
    }
    const report = JSON.parse(await readFile(jsonFile, 'utf8'));
    for (const c of report.cases) perCase.set(c.id, [...(perCase.get(c.id) ?? []), c.durationMs]);
    walls.push(run.wallMs / 1000);
    console.log(`run ${i}: wall ${(run.wallMs / 1000).toFixed(3)} s, cpu ${cpu.toFixed(2)} s (suite's own wall ${report.summary.wallMs} ms)`);
  }
  console.log('median per case (ms):');
  for (const [id, times] of perCase) console.log(`  ${id} ${Math.round(median(times))}`);
  console.log(`conformance median_s=${median(walls).toFixed(3)}`);
} finally {
  await rm(scratch, { recursive: true, force: true });
}
