#!/usr/bin/env node
// `npm run mutants`: how many plausible bugs in the SDK the conformance suite catches.
//
// Each mutant of scripts/mutants/catalogue.mjs (one exact text replacement in the source of
// @qmpkit/backup, @qmpkit/image-tools or @qmpkit/client) is put, alone, into a scratch copy of
// the built workspace; the mutated package is rebuilt there (tsup without declarations) and the
// conformance suite runs against the installed QEMU: every suite, or those the options after
// `--` select (e.g. `-- --suite 124`). The unmutated copy runs first and must pass every case;
// a mutant is killed when the suite does not end "N passed, 0 failed" for the N cases selected,
// and survives otherwise. The source tree is never touched.
//
// Why not StrykerJS: with the real-QEMU suite as its test, Stryker's command runner cannot use
// per-test coverage, so every mutant it generates costs a whole suite run (about 3 s on two
// cores, more under load); the three packages give it thousands of mutants, i.e. hours. The
// curated list instead holds the bugs worth catching, each one run in a few seconds.
//
// Usage: node scripts/mutants.mjs [--only ID[,ID...]] [--json FILE] [--list] [-- extra CLI options]
// Ends with `mutants: K killed, S survived of N (score P%)`; exits 1 when a mutant survives that
// the catalogue does not expect to (marked `equivalent` or a known `gap`, each with its reason),
// 2 when a mutant no longer applies (its code moved) or the suite could not run at all.
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { mutants } from './mutants/catalogue.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// Every workspace package (pnpm-workspace.yaml: packages/*, apps/*): the copy must hold each one
// a package links to (e.g. @qmpkit/backup's @qmpkit/nbd), or the suite cannot even load.
const PACKAGES = ['packages', 'apps'].flatMap((group) =>
  readdirSync(join(root, group), { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(root, group, d.name, 'package.json')))
    .map((d) => `${group}/${d.name}`),
);
/** Per case: a mutant that hangs a job is killed by the case timeout, not by waiting forever. */
const CASE_TIMEOUT_S = '20';

const argv = process.argv.slice(2);
const dashdash = argv.indexOf('--');
const own = dashdash < 0 ? argv : argv.slice(0, dashdash);
const extra = dashdash < 0 ? [] : argv.slice(dashdash + 1);
const option = (name) => {
  const i = own.indexOf(name);
  return i < 0 ? undefined : own[i + 1];
};
const only = option('--only')?.split(',');
const jsonOut = option('--json');

if (own.includes('--list')) {
  for (const m of mutants) console.log(`${m.id}\t${m.file}\t${m.bug}${m.equivalent ? ' (equivalent)' : m.gap ? ' (known gap)' : ''}`);
  process.exit(0);
}
const selected = only === undefined ? mutants : mutants.filter((m) => only.includes(m.id));
if (only !== undefined && selected.length !== only.length) {
  const known = new Set(mutants.map((m) => m.id));
  console.error(`unknown mutant(s): ${only.filter((id) => !known.has(id)).join(', ')}`);
  process.exit(2);
}

function log(line) {
  process.stdout.write(`${line}\n`);
}

/** A copy of the built workspace: sources, dist and the packages' node_modules links. */
function makeScratch() {
  const dir = mkdtempSync(join(tmpdir(), 'qmpkit-mutants-'));
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
  cpSync(join(root, 'tsconfig.base.json'), join(dir, 'tsconfig.base.json'));
  for (const pkg of PACKAGES) {
    const from = join(root, pkg);
    if (!existsSync(join(from, 'dist'))) throw new Error(`${pkg} is not built: run the build first`);
    cpSync(from, join(dir, pkg), {
      recursive: true,
      verbatimSymlinks: true,
      filter: (src) => !/\/(\.turbo|qapi-src|coverage)(\/|$)/.test(relative(root, src)) && !src.includes('/node_modules/.cache'),
    });
    // What the mutated package goes back to after each mutant.
    cpSync(join(dir, pkg, 'dist'), join(dir, pkg, 'dist.pristine'), { recursive: true });
    writeFileSync(
      join(dir, pkg, 'tsup.mutant.config.ts'),
      "import base from './tsup.config';\n" +
        'const configs = Array.isArray(base) ? base : [base];\n' +
        '// Declarations do not change what runs; leaving them out makes a rebuild take about a second.\n' +
        'export default configs.map((c) => ({ ...c, dts: false, clean: false }));\n',
    );
  }
  return dir;
}

function packageOf(file) {
  const pkg = PACKAGES.find((p) => file.startsWith(`${p}/`));
  if (pkg === undefined) throw new Error(`${file} is in no package this script builds`);
  return pkg;
}

function apply(scratch, mutant) {
  const path = join(scratch, mutant.file);
  const source = readFileSync(path, 'utf8');
  const count = source.split(mutant.find).length - 1;
  if (count !== 1) return { source, error: `its text occurs ${count} times in ${mutant.file} (expected once): update the catalogue` };
  writeFileSync(path, source.replace(mutant.find, () => mutant.replace));
  return { source };
}

function build(scratch, pkg) {
  const dir = join(scratch, pkg);
  const tsup = join(dir, 'node_modules', 'tsup', 'dist', 'cli-default.js');
  const r = spawnSync(process.execPath, [tsup, '--config', 'tsup.mutant.config.ts', '--silent'], { cwd: dir, encoding: 'utf8' });
  return r.status === 0 ? undefined : `build failed: ${(r.stderr || r.stdout).trim().split('\n').slice(-5).join(' | ')}`;
}

function restore(scratch, mutant, source) {
  const pkg = packageOf(mutant.file);
  writeFileSync(join(scratch, mutant.file), source);
  rmSync(join(scratch, pkg, 'dist'), { recursive: true, force: true });
  cpSync(join(scratch, pkg, 'dist.pristine'), join(scratch, pkg, 'dist'), { recursive: true });
}

function runSuite(scratch, jsonFile, args = ['--timeout', CASE_TIMEOUT_S, '--json', jsonFile]) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const cli = join(scratch, 'apps/conformance/dist/cli.js');
    const child = spawn(process.execPath, [cli, ...args, ...extra], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: performance.now() - started }));
  });
}

/** Which cases failed and by which check (from the JSON report), e.g. `test_small_granularity [suite: bitmap-dirty-count]`. */
function failures(jsonFile) {
  try {
    const report = JSON.parse(readFileSync(jsonFile, 'utf8'));
    return report.cases
      .filter((c) => c.status !== 'passed')
      .map((c) => {
        const name = c.id.slice(c.id.indexOf('.') + 1);
        const check = c.failedCheck ? ` [${c.failedCheck.origin}: ${c.failedCheck.name}]` : ` (${(c.error ?? '').split('\n', 1)[0].slice(0, 100)})`;
        return `${name}${check}`;
      });
  } catch {
    return [];
  }
}

const scratch = makeScratch();
const cleanup = () => rmSync(scratch, { recursive: true, force: true });
process.on('SIGINT', () => {
  cleanup();
  process.exit(130);
});

const results = [];
let stale = false;
let EXPECTED;
try {
  // The cases the options select, and the unmutated suite passing all of them: a suite that
  // fails on its own would "kill" every mutant.
  const listed = await runSuite(scratch, undefined, ['--list']);
  const cases = listed.stdout.trim().split('\n').filter(Boolean).length;
  if (listed.code !== 0 || cases === 0) {
    log(`the suite lists no case: exit ${listed.code ?? listed.signal}: ${listed.stderr.trim()}`);
    cleanup();
    process.exit(2);
  }
  EXPECTED = `${cases} passed, 0 failed`;
  const pristine = await runSuite(scratch, join(scratch, 'pristine.json'));
  const pristineLast = pristine.stdout.trimEnd().split('\n').pop();
  if (pristine.code !== 0 || pristineLast !== EXPECTED) {
    log(`the unmutated suite does not pass: exit ${pristine.code ?? pristine.signal}, "${pristineLast}" (expected "${EXPECTED}")`);
    cleanup();
    process.exit(2);
  }
  log(`${selected.length} mutant(s), the conformance suite (${cases} cases${extra.length ? `, ${extra.join(' ')}` : ''}) against the installed QEMU for each; unmutated: ${pristineLast} in ${(pristine.ms / 1000).toFixed(1)} s`);
  for (const mutant of selected) {
    const pkg = packageOf(mutant.file);
    const { source, error } = apply(scratch, mutant);
    if (error !== undefined) {
      stale = true;
      log(`STALE    ${mutant.id}: ${error}`);
      results.push({ id: mutant.id, status: 'stale', error });
      continue;
    }
    try {
      const buildError = build(scratch, pkg);
      if (buildError !== undefined) {
        stale = true;
        log(`STALE    ${mutant.id}: ${buildError}`);
        results.push({ id: mutant.id, status: 'stale', error: buildError });
        continue;
      }
      const jsonFile = join(scratch, `${mutant.id}.json`);
      const run = await runSuite(scratch, jsonFile);
      if (!existsSync(jsonFile)) {
        // The suite did not even run (a module it needs is missing from the scratch copy, ...):
        // that says nothing about the mutant, so it is no kill.
        stale = true;
        const output = (run.stderr || run.stdout).trim().split('\n');
        const named = output.find((l) => /^\w*Error\b|^Error \[/.test(l));
        const error = `the suite did not run: exit ${run.code ?? run.signal}: ${named ?? output.slice(0, 3).join(' | ')}`;
        log(`BROKEN   ${mutant.id}: ${error}`);
        results.push({ id: mutant.id, status: 'broken', error });
        continue;
      }
      const lines = run.stdout.trimEnd().split('\n');
      const last = lines[lines.length - 1];
      const killed = run.code !== 0 || last !== EXPECTED;
      const failed = killed ? failures(jsonFile) : [];
      const status = killed ? 'killed' : 'survived';
      const how = killed ? (failed.length > 0 ? `${last}: ${failed.join(', ')}` : `exit ${run.code ?? run.signal}: ${(run.stderr || last).trim().split('\n', 1)[0]}`) : last;
      log(`${status.toUpperCase().padEnd(8)} ${mutant.id} (${(run.ms / 1000).toFixed(1)} s): ${how}`);
      results.push({ id: mutant.id, file: mutant.file, bug: mutant.bug, status, summary: last, failedCases: failed, equivalent: mutant.equivalent, gap: mutant.gap });
    } finally {
      restore(scratch, mutant, source);
    }
  }
} finally {
  cleanup();
}

const killed = results.filter((r) => r.status === 'killed').length;
const survived = results.filter((r) => r.status === 'survived');
const total = killed + survived.length;
for (const s of survived) {
  const why = s.equivalent ? ` (equivalent: ${s.equivalent})` : s.gap ? ` (known gap: ${s.gap})` : ' (UNEXPECTED)';
  log(`survivor: ${s.id}: ${s.bug}${why}`);
}
if (jsonOut !== undefined) writeFileSync(jsonOut, `${JSON.stringify({ results, killed, survived: survived.length, total }, null, 2)}\n`);
log(`mutants: ${killed} killed, ${survived.length} survived of ${total} (score ${total === 0 ? 0 : Math.round((1000 * killed) / total) / 10}%)`);
process.exit(stale ? 2 : survived.some((s) => !s.equivalent && !s.gap) ? 1 : 0);
