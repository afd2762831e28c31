// Command line of the generator: reads qapi-src/<series>/ for every series fetched there (see
// scripts/fetch-qapi.mjs) and writes src/generated/qemu-<series>/ plus SCHEMA-CHANGES.md. With
// --check it writes nothing and fails when the committed files differ from what the pinned
// inputs produce.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

import { schemaChangelog } from './changelog.js';
import { emitVersionsTable } from './emitter.js';
import { QapiError } from './errors.js';
import { generateAll } from './generate.js';

function main(argv: readonly string[]): number {
  const check = argv.includes('--check');
  const packageDir = resolve(argv.find((a) => a.startsWith('--package-dir='))?.slice('--package-dir='.length) ?? process.cwd());
  const generatedDir = join(packageDir, 'src', 'generated');
  const srcRoot = join(packageDir, 'qapi-src');
  let all;
  try {
    all = generateAll(srcRoot);
  } catch (error) {
    if (QapiError.isInstance(error)) {
      process.stderr.write(`generate: ${error.message}\n`);
      return 1;
    }
    if (error instanceof Error && /missing/.test(error.message)) {
      process.stderr.write(`generate: ${error.message}; run \`pnpm --filter @qmpkit/schema run fetch-qapi\`\n`);
      return 2;
    }
    throw error;
  }
  // Every output file, by path relative to the package.
  const wanted = new Map<string, string>();
  for (const version of all) {
    for (const file of version.files) wanted.set(join('src', 'generated', `qemu-${version.series}`, file.path), file.content);
  }
  wanted.set(join('src', 'generated', 'versions.ts'), emitVersionsTable(all.map((v) => ({ series: v.series, input: v.source.input }))));
  wanted.set('SCHEMA-CHANGES.md', schemaChangelog(all.map((v) => ({ series: v.series, input: v.source.input, schema: v.schema }))));
  const existing = existsSync(generatedDir)
    ? readdirSync(generatedDir, { recursive: true, encoding: 'utf8' })
        .filter((f) => f.endsWith('.ts'))
        .map((f) => join('src', 'generated', f))
    : [];
  if (check) {
    const problems: string[] = [];
    for (const [path, content] of wanted) {
      const file = join(packageDir, path);
      if (!existsSync(file)) problems.push(`missing ${path}`);
      else if (readFileSync(file, 'utf8') !== content) problems.push(`differs ${path}`);
    }
    for (const path of existing) if (!wanted.has(path)) problems.push(`not generated ${path}`);
    if (problems.length > 0) {
      process.stderr.write(`check-stale: generated files are stale (${problems.length}):\n  ${problems.join('\n  ')}\n`);
      return 1;
    }
    process.stderr.write(`check-stale: generated files match the pinned QAPI inputs (${all.map((v) => v.series).join(', ')}; ${wanted.size} files)\n`);
    return 0;
  }
  for (const path of existing) if (!wanted.has(path)) rmSync(join(packageDir, path));
  let written = 0;
  for (const [path, content] of wanted) {
    const file = join(packageDir, path);
    mkdirSync(dirname(file), { recursive: true });
    if (!existsSync(file) || readFileSync(file, 'utf8') !== content) {
      writeFileSync(file, content);
      written += 1;
    }
  }
  process.stderr.write(`generate: ${all.map((v) => `QEMU ${v.series}`).join(', ')}: ${wanted.size} files (${written} changed) under ${relative(process.cwd(), packageDir) || '.'}\n`);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
