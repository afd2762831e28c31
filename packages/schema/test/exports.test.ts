// package.json's exports, tsup's entries and the generated series must agree: a series whose
// types are generated but not exported (or exported but not built) is a packaging bug.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { qemuSeries } from '../src/versions.js';

const packageDir = join(__dirname, '..');
const manifest = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8')) as { exports: Record<string, unknown>; files: string[] };

describe('package exports', () => {
  it('have one subpath per generated series, plus the default, versions and package.json', () => {
    const generated = readdirSync(join(packageDir, 'src', 'generated'), { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => d.name.replace(/^qemu-/, ''));
    expect([...qemuSeries].sort()).toEqual(generated.sort());
    expect(Object.keys(manifest.exports).sort()).toEqual(['.', './package.json', './versions', ...qemuSeries.map((s) => `./qemu-${s}`)].sort());
  });

  it('ship the schema changelog', () => {
    expect(manifest.files).toContain('SCHEMA-CHANGES.md');
  });
});
