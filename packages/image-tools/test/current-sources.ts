// Tests that need this package in another process (one to SIGKILL, one under a file size
// limit) run the current sources, not a dist/ that may be stale: each src/*.ts is transpiled
// on its own (types dropped, nothing checked: typecheck does that) into a directory inside
// the package, where `@qmpkit/errors` resolves as it does for the sources.
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import ts from 'typescript';

const SRC = join(__dirname, '..', 'src');
const OUT = join(__dirname, '..', 'node_modules', '.cache', 'image-tools-current-sources');

/** Transpile src/ (once per test file) and return the URL of its index module. */
export function currentSourcesIndex(): string {
  mkdirSync(OUT, { recursive: true });
  writeFileSync(join(OUT, 'package.json'), '{ "type": "module" }\n');
  for (const name of readdirSync(SRC)) {
    if (!name.endsWith('.ts') || name.endsWith('.test.ts')) continue;
    const { outputText } = ts.transpileModule(readFileSync(join(SRC, name), 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
      fileName: name,
    });
    writeFileSync(join(OUT, name.replace(/\.ts$/, '.js')), outputText);
  }
  return `file://${join(OUT, 'index.js')}`;
}
