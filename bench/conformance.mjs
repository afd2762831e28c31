#!/usr/bin/env node
// Wall time of the whole conformance suite (QEMU's iotest 124 on the SDK), as a user runs it.
//
// Runs `node apps/conformance/dist/cli.js` RUNS times (default 5) with its defaults (jobs = number
// of cores, both comparison engines) and a JSON report, and as many times, interleaved, with
// `--compare-with in-process` as the baseline measured in the same run: the difference is what
// the independent verdict (a `qemu-img compare` process beside every in-process comparison)
// costs. Every run must pass all 13 cases (a failing run fails the benchmark: a fast wrong
// answer is worth nothing). Prints per run the wall time and the CPU time of the whole process
// tree, then the median of each case's duration, then the medians and their ratio. The CPU time
// barely moves when other work competes for the machine, so it tells a slow machine from a slow
// suite. The target is half the wall time of QEMU's own Python iotest 124 on the same machine
// (which needs QEMU's source tree and a qtest-enabled build, neither of which is here): pass its
// time as `--iotest-seconds S` to print the ratio against it.
//
// The last line is `conformance median_s=X`.
//
// Usage: node bench/conformance.mjs [--runs 5] [--iotest-seconds S] [-- extra CLI options]
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
const iotestIndex = ownArgs.indexOf('--iotest-seconds');
const IOTEST_S = iotestIndex < 0 ? undefined : Number(ownArgs[iotestIndex + 1]);
if (IOTEST_S !== undefined && !(IOTEST_S > 0)) throw new Error('--iotest-seconds needs a positive number');
const BASELINE = ['--compare-with', 'in-process'];

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

function runOnce(jsonFile, args) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, [cli, '--json', jsonFile, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, wallMs: performance.now() - started }));
  });
}

const scratch = await mkdtemp(join(tmpdir(), 'qmpkit-conformance-bench-'));
try {
  console.log(`conformance suite, ${RUNS} runs each (default, and baseline ${BASELINE.join(' ')}), ${availableParallelism()} cores, load average ${loadavg()[0].toFixed(2)}`);
  const walls = { default: [], baseline: [] };
  const cpus = { default: [], baseline: [] };
  const perCase = new Map();
  for (let i = 1; i <= RUNS; i++) {
    // Interleaved, so a change in the machine's load hits both alike.
    for (const kind of ['default', 'baseline']) {
      const jsonFile = join(scratch, `run-${kind}-${i}.json`);
      const cpuBefore = await childrenCpuSeconds();
      const run = await runOnce(jsonFile, kind === 'default' ? extra : [...BASELINE, ...extra]);
      const cpu = (await childrenCpuSeconds()) - cpuBefore;
      const lines = run.stdout.trimEnd().split('\n');
      const summary = lines[lines.length - 1];
      if (run.code !== 0 || summary !== `${EXPECTED_CASES} passed, 0 failed`) {
        process.stderr.write(run.stdout);
        throw new Error(`${kind} run ${i} did not pass every case (exit ${run.code ?? run.signal}, last line "${summary}")`);
      }
      const report = JSON.parse(await readFile(jsonFile, 'utf8'));
      if (kind === 'default') for (const c of report.cases) perCase.set(c.id, [...(perCase.get(c.id) ?? []), c.durationMs]);
      walls[kind].push(run.wallMs / 1000);
      cpus[kind].push(cpu);
      console.log(`run ${i} ${kind.padEnd(8)}: wall ${(run.wallMs / 1000).toFixed(3)} s, cpu ${cpu.toFixed(2)} s (suite's own wall ${report.summary.wallMs} ms, load ${loadavg()[0].toFixed(2)})`);
    }
  }
  console.log('median per case, default (ms):');
  for (const [id, times] of perCase) console.log(`  ${id} ${Math.round(median(times))}`);
  const [w, wb, c, cb] = [median(walls.default), median(walls.baseline), median(cpus.default), median(cpus.baseline)];
  console.log(`baseline (${BASELINE.join(' ')}) median_s=${wb.toFixed(3)} cpu_median_s=${cb.toFixed(2)}`);
  console.log(`default (both engines) cpu_median_s=${c.toFixed(2)}; ratio to baseline: wall ${(w / wb).toFixed(2)}, cpu ${(c / cb).toFixed(2)}`);
  if (IOTEST_S !== undefined) console.log(`ratio to QEMU's Python iotest 124 (${IOTEST_S} s): ${(w / IOTEST_S).toFixed(2)} (target <= 0.5)`);
  console.log(`conformance median_s=${w.toFixed(3)}`);
} finally {
  await rm(scratch, { recursive: true, force: true });
}
