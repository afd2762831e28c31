// The committed src/generated/ and SCHEMA-CHANGES.md must be exactly what the generator makes
// from the pinned QAPI inputs of every series. The package's `test` script fetches the inputs
// first (scripts/fetch-qapi.mjs); fix a failure here with `pnpm --filter @qmpkit/schema run
// generate` and commit the result.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { schemaChangelog } from '../generator/changelog.js';
import { emitVersionsTable } from '../generator/emitter.js';
import { generateAll } from '../generator/generate.js';
import { qmpSchemaVersions } from '../src/versions.js';

const packageDir = join(__dirname, '..');
const srcRoot = join(packageDir, 'qapi-src');
const generatedDir = join(packageDir, 'src', 'generated');
// The pins, read from the repository's table the fetch script uses.
const releases = readFileSync(join(packageDir, '..', '..', 'scripts', 'qemu-releases.mjs'), 'utf8');

describe('generated files', () => {
  const all = generateAll(srcRoot);

  it('have the pinned QAPI input of every generated series to compare against', () => {
    // Missing input means scripts/fetch-qapi.mjs did not run; the package's test script runs it.
    expect(all.map((v) => v.series)).toEqual(qmpSchemaVersions.map((v) => v.series));
    for (const version of all) {
      const [, debianVersion] = readFileSync(join(version.qapiDir, 'SOURCE'), 'utf8').trim().split(' ');
      expect(releases).toContain(`source: '${debianVersion ?? ''}'`);
      expect(existsSync(join(version.qapiDir, 'qapi', 'qapi-schema.json'))).toBe(true);
    }
  });

  it.each(all.map((v) => [v.series, v] as const))('of QEMU %s are reproduced byte for byte', (series, version) => {
    const dir = join(generatedDir, `qemu-${series}`);
    const committed = readdirSync(dir).filter((f) => f.endsWith('.ts')).sort();
    expect(committed).toEqual(version.files.map((f) => f.path));
    for (const file of version.files) {
      const text = readFileSync(join(dir, file.path), 'utf8');
      // Compare per file so a failure names the stale file.
      expect({ file: file.path, same: text === file.content }).toEqual({ file: file.path, same: true });
    }
  });

  it('include no directory of a series without input', () => {
    const dirs = readdirSync(generatedDir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort();
    expect(dirs).toEqual(all.map((v) => `qemu-${v.series}`).sort());
  });

  it('include the versions table and SCHEMA-CHANGES.md as regenerated', () => {
    expect(readFileSync(join(generatedDir, 'versions.ts'), 'utf8')).toBe(emitVersionsTable(all.map((v) => ({ series: v.series, input: v.source.input }))));
    const changelog = schemaChangelog(all.map((v) => ({ series: v.series, input: v.source.input, schema: v.schema })));
    expect(readFileSync(join(packageDir, 'SCHEMA-CHANGES.md'), 'utf8') === changelog).toBe(true);
  });
});
