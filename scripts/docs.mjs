#!/usr/bin/env node
// `npm run docs`: the API reference of every published package (packages/* and apps/* without
// "private": true), one TypeDoc site each, into docs/api/<folder>/ (git-ignored). Each site is
// the package's public entry points (src/index.ts and the sources of its other "exports"
// subpaths) with its README as the front page. Any
// TypeDoc warning fails the run: an exported type that points at something unexported, a
// broken {@link}, a README link TypeDoc cannot follow.
//
// Options: `--check` builds into a scratch directory that is removed afterwards (what `npm
// test` runs); `--only NAME[,NAME]` limits it to some packages (folder or package name).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const typedoc = join(root, 'node_modules', 'typedoc', 'bin', 'typedoc');
const { values: options } = parseArgs({ options: { check: { type: 'boolean', default: false }, only: { type: 'string' } } });

function publishedPackages() {
  const found = [];
  for (const parent of ['packages', 'apps']) {
    const base = join(root, parent);
    if (!existsSync(base)) continue;
    for (const folder of readdirSync(base).sort()) {
      const manifestPath = join(base, folder, 'package.json');
      if (!existsSync(manifestPath)) continue;
      const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
      if (manifest.private === true || !existsSync(join(base, folder, 'src', 'index.ts'))) continue;
      found.push({ name: manifest.name, folder, dir: join(base, folder), entryPoints: entryPoints(join(base, folder), manifest) });
    }
  }
  return found;
}

/**
 * The README as TypeDoc should read it. Relative links that GitHub follows but TypeDoc cannot
 * copy (a package folder, the API reference itself, which exists only once built) become plain
 * text; any other relative link must name an existing file (TypeDoc copies it), else the README
 * has a broken link and the build fails.
 */
function readmeForTypedoc(pkg, published, copyDir) {
  const text = readFileSync(join(pkg.dir, 'README.md'), 'utf8');
  const broken = [];
  const apiFolders = new Set(published.map((p) => p.folder));
  const rewritten = text.replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (whole, label, target) => {
    if (/^[a-z]+:|^#/.test(target)) return whole;
    const path = join(pkg.dir, target.split('#')[0]);
    const api = /(?:^|\/)docs\/api\/([^/]+)\/index\.html$/.exec(target);
    if (api && apiFolders.has(api[1])) return label;
    if (existsSync(path) && statSync(path).isDirectory()) return label;
    // The copy is read from elsewhere: point the link at the same file from there.
    if (existsSync(path)) return `[${label}](${relative(copyDir, path)}${target.includes('#') ? `#${target.split('#')[1]}` : ''})`;
    broken.push(target);
    return whole;
  });
  return { text: rewritten, broken };
}

/**
 * The source of each public entry point: every subpath of package.json's "exports" whose types
 * are dist/NAME.d.ts, found as src/NAME.ts, src/NAME/index.ts or src/generated/NAME/index.ts
 * (e.g. @qmpkit/schema's ./versions and ./qemu-10.0); src/index.ts for ".".
 */
function entryPoints(dir, manifest) {
  const names = new Set();
  for (const [subpath, target] of Object.entries(manifest.exports ?? {})) {
    if (subpath === './package.json') continue;
    const types = JSON.stringify(target).match(/\.\/dist\/([^"]+)\.d\.ts/);
    if (types) names.add(types[1]);
  }
  if (names.size === 0) names.add('index');
  const files = [];
  for (const name of [...names].sort((a, b) => (a === 'index' ? -1 : b === 'index' ? 1 : a.localeCompare(b)))) {
    const candidates = [join(dir, 'src', `${name}.ts`), join(dir, 'src', name, 'index.ts'), join(dir, 'src', 'generated', name, 'index.ts')];
    const found = candidates.find((c) => existsSync(c));
    if (found === undefined) throw new Error(`${manifest.name}: no source for the entry point dist/${name}.d.ts (looked for ${candidates.join(', ')})`);
    files.push(found);
  }
  return files;
}

const only = options.only?.split(',').map((s) => s.trim()).filter(Boolean);
const packages = publishedPackages().filter((p) => !only || only.includes(p.folder) || only.includes(p.name));
const scratch = mkdtempSync(join(tmpdir(), 'qmpkit-docs-'));
const outRoot = options.check ? join(scratch, 'api') : join(root, 'docs', 'api');
const results = [];
try {
  for (const pkg of packages) {
    // A tsconfig of the package's sources only (its own tsconfig also takes in the tests), beside
    // the package's node_modules so that @types/node resolves as for the package itself.
    const cache = join(pkg.dir, 'node_modules', '.cache');
    mkdirSync(cache, { recursive: true });
    const tsconfig = join(cache, 'typedoc.tsconfig.json');
    writeFileSync(
      tsconfig,
      JSON.stringify({
        extends: join(pkg.dir, 'tsconfig.json'),
        compilerOptions: { types: ['node'], noEmit: true },
        include: [join(pkg.dir, 'src')],
        exclude: [join(pkg.dir, 'src', '**', '*.test.ts')],
      }),
    );
    const readme = readmeForTypedoc(pkg, publishedPackages(), cache);
    const readmeCopy = join(cache, 'typedoc.README.md');
    writeFileSync(readmeCopy, readme.text);
    const out = join(outRoot, pkg.folder);
    rmSync(out, { recursive: true, force: true });
    mkdirSync(dirname(out), { recursive: true });
    const started = Date.now();
    const run = spawnSync(
      process.execPath,
      [
        typedoc,
        ...pkg.entryPoints.flatMap((file) => ['--entryPoints', file]),
        '--tsconfig', tsconfig,
        '--readme', readmeCopy,
        '--name', pkg.name,
        '--out', out,
        '--treatWarningsAsErrors',
        '--excludePrivate',
        '--excludeInternal',
        '--disableSources',
        '--logLevel', 'Warn',
      ],
      { cwd: pkg.dir, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' } },
    );
    rmSync(tsconfig, { force: true });
    rmSync(readmeCopy, { force: true });
    const brokenLinks = readme.broken.map((target) => `[error] README.md links to ${target}, which does not exist`);
    const output = [...brokenLinks, `${run.stdout ?? ''}${run.stderr ?? ''}`.trim()].join('\n').trim();
    const ok = brokenLinks.length === 0 && run.status === 0 && !/\[warning\]|\[error\]/.test(output) && existsSync(join(out, 'index.html'));
    results.push({ pkg, ok, output, seconds: ((Date.now() - started) / 1000).toFixed(1) });
    process.stdout.write(`[docs] ${ok ? 'ok  ' : 'FAIL'} ${pkg.name} (${results.at(-1).seconds} s)${ok ? ` -> ${options.check ? 'checked' : join('docs', 'api', pkg.folder, 'index.html')}` : `\n${output}`}\n`);
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
const failed = results.filter((r) => !r.ok);
if (process.env.QMPKIT_TEST_RESULTS_DIR && options.check) {
  // Picked up by scripts/run.mjs for the closing line of `npm test`.
  mkdirSync(process.env.QMPKIT_TEST_RESULTS_DIR, { recursive: true });
  writeFileSync(
    join(process.env.QMPKIT_TEST_RESULTS_DIR, 'docs.json'),
    `${JSON.stringify({ name: 'docs (TypeDoc, no warnings)', passed: results.length - failed.length, failed: failed.length, skipped: 0 })}\n`,
  );
}
process.stdout.write(`[docs] ${results.length - failed.length} of ${results.length} API references built without warnings\n`);
process.exitCode = failed.length > 0 || results.length === 0 ? 1 : 0;
