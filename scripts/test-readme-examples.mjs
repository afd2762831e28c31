// The README examples, as a newcomer meets them: for each README, a fresh pnpm project that
// installs the packed tarballs of exactly the packages its install line names (pnpm gives a
// project nothing it did not list, so a missing name fails here), compiles every TypeScript
// and JavaScript block under strict settings with the repository's TypeScript, and runs every
// block that claims to run, each in an empty scratch directory with its own TMPDIR, against
// the real QEMU on PATH. A run passes when it exits 0 within its time, leaves no process
// running in its directory and nothing in its TMPDIR. Called by scripts/test-packaging.mjs,
// which owns the tarballs and the results; see scripts/readme-examples.mjs for the block syntax.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { actionOf, blockLabel, findReadmes, installProblems, readReadme } from './readme-examples.mjs';

const RUN_TIMEOUT_MS = 180_000;

/** Strict settings, as a careful consumer sets them; `moduleDetection: force` makes each block a module. */
export const EXAMPLE_COMPILER_OPTIONS = {
  target: 'ES2022',
  lib: ['ES2022', 'ESNext.Disposable'],
  module: 'NodeNext',
  moduleResolution: 'NodeNext',
  moduleDetection: 'force',
  types: ['node'],
  strict: true,
  noUncheckedIndexedAccess: true,
  exactOptionalPropertyTypes: true,
  noImplicitOverride: true,
  noImplicitReturns: true,
  noFallthroughCasesInSwitch: true,
  verbatimModuleSyntax: true,
  allowJs: true,
  checkJs: true,
  skipLibCheck: false,
  rootDir: 'examples',
  outDir: 'out',
};

function fileOf(block) {
  const label = blockLabel(block);
  if (actionOf(block) === 'declarations') return `${label}.d.ts`;
  return block.kind === 'js' ? `${label}.mjs` : `${label}.ts`;
}

/** Absolute file paths a runnable block names (quoted in code; as words in shell). */
export function absolutePaths(block) {
  const pattern = block.kind === 'sh' ? /(?:^|[\s=:'"])(\/(?!dev\/null)[A-Za-z][^\s'"]*)/gm : /(['"`])(\/[A-Za-z][^'"`\s]*)\1/g;
  const found = [];
  for (const match of block.code.matchAll(pattern)) found.push(block.kind === 'sh' ? match[1] : match[2]);
  return [...new Set(found)];
}

/** Process ids whose current directory is inside `dir` (what an example left running there). */
function processesIn(dir) {
  const found = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cwd = readlinkSync(`/proc/${entry}/cwd`);
      if (cwd === dir || cwd.startsWith(`${dir}/`)) found.push(Number(entry));
    } catch {
      // gone, or not ours to read
    }
  }
  return found;
}

/** tsc's messages per example file, with line numbers turned into README lines. */
function splitDiagnostics(output, blocksByFile) {
  const perFile = new Map();
  const other = [];
  let current = other;
  for (const line of output.split('\n')) {
    if (line.trim() === '') continue;
    if (/^\s/.test(line)) {
      current.push(line); // continuation of the message above
      continue;
    }
    const match = /^examples\/([^()]+)\((\d+),(\d+)\): (.*)$/.exec(line);
    const block = match ? blocksByFile.get(match[1]) : undefined;
    if (match && block) {
      if (!perFile.has(match[1])) perFile.set(match[1], []);
      current = perFile.get(match[1]);
      current.push(`${block.file}:${block.line + Number(match[2])}:${match[3]} ${match[4]}`);
    } else {
      current = other;
      other.push(line);
    }
  }
  return { perFile, other };
}

/**
 * Check every README. `record(subject, check, ok, detail)` records a verdict; returns the
 * counts printed as the examples summary.
 */
export async function checkReadmeExamples({ root, base, tarballs, typesNode, record, run, filter }) {
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  const counts = { readmes: 0, blocks: 0, ts: 0, js: 0, compiled: 0, declarations: 0, run: 0, shellRun: 0, json: 0, installLines: 0, shell: 0, text: 0 };
  const readmes = [];
  for (const file of await findReadmes(root)) {
    try {
      readmes.push(await readReadme(root, file));
    } catch (error) {
      record(file, 'code blocks can be classified', false, String(error?.message ?? error));
    }
  }
  for (const readme of readmes.filter((r) => filter === undefined || r.name.includes(filter))) {
    counts.readmes += 1;
    counts.blocks += readme.blocks.length;
    const problems = installProblems(readme);
    counts.installLines += readme.installs.length;
    if (readme.imports.length > 0) {
      record(readme.name, `install lines name every package its examples import (${readme.imports.join(', ')})`, problems.length === 0, problems.join('\n'));
    }
    for (const block of readme.blocks) {
      const action = actionOf(block);
      if (action === 'json') {
        counts.json += 1;
        let error;
        try {
          JSON.parse(block.code);
        } catch (e) {
          error = e;
        }
        record(`${readme.name}:${block.line}`, 'JSON example parses', error === undefined, String(error?.message ?? ''));
      } else if (action === 'shell') counts.shell += 1;
      else if (action === 'text') counts.text += 1;
    }
    const code = readme.blocks.filter((b) => ['run', 'compile', 'declarations', 'shell-run'].includes(actionOf(b)));
    if (code.length === 0) continue;

    // The project: what the install line names, nothing more.
    const wanted = readme.installs[0]?.packages ?? readme.imports;
    const unknown = wanted.filter((name) => !tarballs.has(name));
    if (unknown.length > 0) {
      record(readme.name, 'install line names published packages', false, `not packages of this repository: ${unknown.join(', ')}`);
      continue;
    }
    const dir = join(base, `readme-${blockLabel({ file: readme.name, line: 0 }).replace(/-0$/, '')}`);
    await mkdir(join(dir, 'examples'), { recursive: true });
    const manifest = {
      name: 'qmpkit-readme-examples',
      version: '0.0.0',
      private: true,
      type: 'module',
      dependencies: Object.fromEntries(wanted.map((name) => [name, `file:${tarballs.get(name)}`])),
      devDependencies: { '@types/node': typesNode },
    };
    await writeFile(join(dir, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    // Dependencies between the packages resolve to these tarballs too, never to the registry.
    const overrides = [...tarballs].map(([name, tarball]) => `  "${name}": "file:${tarball}"`).join('\n');
    await writeFile(join(dir, 'pnpm-workspace.yaml'), `overrides:\n${overrides}\n`);
    const blocksByFile = new Map();
    for (const block of code.filter((b) => b.kind === 'ts' || b.kind === 'js')) {
      blocksByFile.set(fileOf(block), block);
      await writeFile(join(dir, 'examples', fileOf(block)), block.code);
    }
    const install = run('pnpm', ['install', '--prefer-offline', '--reporter=silent'], dir);
    record(readme.name, `pnpm install of ${wanted.join(' ')} (its install line)`, install.ok, install.output);
    if (!install.ok) continue;

    if (blocksByFile.size > 0) {
      // One program for all blocks; but a syntax error anywhere makes tsc skip the type checks of
      // every file, so blocks with errors are set aside and the rest compiled again until tsc
      // passes: each verdict is then tsc's own about that block.
      const verdicts = new Map();
      let remaining = [...blocksByFile.keys()];
      while (remaining.length > 0) {
        const files = remaining.map((file) => `examples/${file}`);
        await writeFile(join(dir, 'tsconfig.json'), `${JSON.stringify({ compilerOptions: EXAMPLE_COMPILER_OPTIONS, files }, null, 2)}\n`);
        const compiled = run(process.execPath, [tsc, '-p', 'tsconfig.json', '--pretty', 'false'], dir);
        if (compiled.ok) {
          for (const file of remaining) verdicts.set(file, []);
          break;
        }
        const { perFile, other } = splitDiagnostics(compiled.output, blocksByFile);
        if (perFile.size === 0) {
          for (const file of remaining) verdicts.set(file, other.length > 0 ? other : [compiled.output]);
          break;
        }
        for (const [file, messages] of perFile) verdicts.set(file, messages);
        remaining = remaining.filter((file) => !perFile.has(file));
      }
      for (const [file, block] of blocksByFile) {
        const messages = verdicts.get(file) ?? ['not compiled'];
        const what = actionOf(block) === 'declarations' ? 'declarations compile' : `${block.kind === 'js' ? 'JavaScript' : 'TypeScript'} compiles (strict)`;
        record(`${readme.name}:${block.line}`, what, messages.length === 0, messages.join('\n'));
        block.compiled = messages.length === 0;
        counts.compiled += 1;
        if (actionOf(block) === 'declarations') counts.declarations += 1;
        else if (block.kind === 'js') counts.js += 1;
        else counts.ts += 1;
      }
    }

    for (const block of code) {
      const action = actionOf(block);
      if (action !== 'run' && action !== 'shell-run') continue;
      // A runnable example makes what it needs where it runs: no fixed /tmp/..., /images/...,
      // /opt/qemu/... that a reader's machine lacks or that two runs would share.
      if (block.compiled === false) {
        record(`${readme.name}:${block.line}`, 'runs against QEMU', false, 'not run: it does not compile');
        counts.run += 1;
        continue;
      }
      const absolute = absolutePaths(block);
      if (absolute.length > 0) {
        record(`${readme.name}:${block.line}`, 'runs in its own directory (no absolute paths)', false, `uses ${absolute.join(', ')}`);
        counts.run += 1;
        continue;
      }
      const scratch = mkdtempSync(join(tmpdir(), 'qmpkit-example-'));
      const work = join(scratch, 'work');
      const temp = join(scratch, 'tmp');
      await mkdir(work);
      await mkdir(temp);
      const env = { ...process.env, TMPDIR: temp, PATH: `${join(dir, 'node_modules', '.bin')}:${process.env.PATH ?? ''}` };
      let command;
      let args;
      if (action === 'shell-run') {
        await writeFile(join(scratch, 'example.sh'), block.code);
        [command, args] = ['bash', ['-euo', 'pipefail', join(scratch, 'example.sh')]];
        counts.shellRun += 1;
      } else {
        const file = fileOf(block);
        const program = block.kind === 'js' ? join(dir, 'examples', file) : join(dir, 'out', file.replace(/\.ts$/, '.js'));
        [command, args] = [process.execPath, [program]];
      }
      const started = Date.now();
      const result = spawnSync(command, args, { cwd: work, env, encoding: 'utf8', timeout: RUN_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024 });
      const ms = Date.now() - started;
      const left = processesIn(scratch);
      for (const pid of left) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      const tempLeft = readdirSync(temp);
      const output = `${result.stdout ?? ''}${result.stderr ?? ''}`.trim();
      const failures = [];
      if (result.error) failures.push(`${result.error.code === 'ETIMEDOUT' ? `did not finish within ${RUN_TIMEOUT_MS / 1000} s` : result.error.message}`);
      else if (result.status !== 0) failures.push(`exit status ${result.status ?? result.signal}`);
      if (left.length > 0) failures.push(`left ${left.length} process(es) running in its directory (killed now): ${left.join(', ')}`);
      if (tempLeft.length > 0) failures.push(`left files in its TMPDIR: ${tempLeft.join(', ')}`);
      if (process.env.QMPKIT_EXAMPLES_VERBOSE) process.stdout.write(`--- ${readme.name}:${block.line} output ---\n${output}\n`);
      record(`${readme.name}:${block.line}`, `runs against QEMU (${ms} ms)`, failures.length === 0, `${failures.join('\n')}\n--- output ---\n${output.split('\n').slice(-40).join('\n')}`);
      counts.run += 1;
      rmSync(scratch, { recursive: true, force: true });
    }
  }
  return counts;
}

/** One line for the packaging output. */
export function describeCounts(c) {
  return (
    `${c.blocks} code blocks in ${c.readmes} READMEs: ${c.compiled} compiled under strict settings ` +
    `(${c.ts} TypeScript, ${c.js} JavaScript, ${c.declarations} declarations), ${c.run} run against QEMU ` +
    `(${c.shellRun} of them shell), ${c.json} JSON parsed, ${c.installLines} install lines checked, ` +
    `${c.shell} other shell blocks and ${c.text} text blocks not run`
  );
}
