// Command line of the generator: reads qapi-src/ (see scripts/fetch-qapi.mjs) and writes
// src/generated/. With --check it writes nothing and fails when the committed files differ from
// what the pinned input produces.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

import { QapiError } from './errors.js';
import { generateFromDirectory } from './generate.js';

function main(argv: readonly string[]): number {
  const check = argv.includes('--check');
  const packageDir = resolve(argv.find((a) => a.startsWith('--package-dir='))?.slice('--package-dir='.length) ?? process.cwd());
  const outDir = join(packageDir, 'src', 'generated');
  const qapiDir = join(packageDir, 'qapi-src');
  if (!existsSync(join(qapiDir, 'qapi', 'qapi-schema.json'))) {
    process.stderr.write(`generate: ${relative(process.cwd(), qapiDir)} is missing; run \`pnpm --filter @qmpkit/schema run fetch-qapi\`\n`);
    return 2;
  }
  let files;
  try {
    files = generateFromDirectory(qapiDir).files;
  } catch (error) {
    if (QapiError.isInstance(error)) {
      process.stderr.write(`generate: ${error.message}\n`);
      return 1;
    }
    throw error;
  }
  const wanted = new Map(files.map((f) => [f.path, f.content]));
  const existing = existsSync(outDir) ? readdirSync(outDir).filter((f) => f.endsWith('.ts')) : [];
  if (check) {
    const problems: string[] = [];
    for (const [path, content] of wanted) {
      const file = join(outDir, path);
      if (!existsSync(file)) problems.push(`missing ${path}`);
      else if (readFileSync(file, 'utf8') !== content) problems.push(`differs ${path}`);
    }
    for (const path of existing) if (!wanted.has(path)) problems.push(`not generated ${path}`);
    if (problems.length > 0) {
      process.stderr.write(`check-stale: src/generated is stale (${problems.length}):\n  ${problems.join('\n  ')}\n`);
      return 1;
    }
    process.stderr.write(`check-stale: src/generated matches the pinned QAPI input (${wanted.size} files)\n`);
    return 0;
  }
  mkdirSync(outDir, { recursive: true });
  for (const path of existing) if (!wanted.has(path)) rmSync(join(outDir, path));
  let written = 0;
  for (const [path, content] of wanted) {
    const file = join(outDir, path);
    mkdirSync(dirname(file), { recursive: true });
    if (!existsSync(file) || readFileSync(file, 'utf8') !== content) {
      writeFileSync(file, content);
      written += 1;
    }
  }
  process.stderr.write(`generate: ${wanted.size} files in ${relative(process.cwd(), outDir) || '.'} (${written} changed)\n`);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
