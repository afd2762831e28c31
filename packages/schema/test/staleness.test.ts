// The committed src/generated/ must be exactly what the generator makes from the pinned QAPI
// input. The package's `test` script fetches the input first (scripts/fetch-qapi.mjs); fix a
// failure here with `pnpm --filter @qmpkit/schema run generate` and commit the result.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { generateFromDirectory } from '../generator/generate.js';

const packageDir = join(__dirname, '..');
const qapiDir = join(packageDir, 'qapi-src');
const outDir = join(packageDir, 'src', 'generated');

describe('src/generated', () => {
  it('has the pinned QAPI input to compare against', () => {
    // Missing input means scripts/fetch-qapi.mjs did not run; the package's test script runs it.
    expect(existsSync(join(qapiDir, 'qapi', 'qapi-schema.json'))).toBe(true);
    expect(readFileSync(join(qapiDir, 'SOURCE'), 'utf8')).toBe('qemu 1:7.2+dfsg-7+deb12u18\n');
  });

  it('is reproduced byte for byte by regenerating from the pinned input', () => {
    const generated = generateFromDirectory(qapiDir).files;
    const committed = readdirSync(outDir).filter((f) => f.endsWith('.ts')).sort();
    expect(committed).toEqual(generated.map((f) => f.path));
    for (const file of generated) {
      const text = readFileSync(join(outDir, file.path), 'utf8');
      // Compare per file so a failure names the stale file.
      expect({ file: file.path, same: text === file.content }).toEqual({ file: file.path, same: true });
    }
  });
});
