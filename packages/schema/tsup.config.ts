import { readdirSync } from 'node:fs';

import { defineConfig } from 'tsup';

// One entry per generated QEMU series (`@qmpkit/schema/qemu-10.0` -> dist/qemu-10.0.js), found
// on disk so a new series needs no edit here; test/exports.test.ts checks package.json's
// exports list the same ones.
const seriesEntries = Object.fromEntries(
  readdirSync('src/generated', { withFileTypes: true })
    .filter((d) => d.isDirectory() && d.name.startsWith('qemu-'))
    .map((d) => [d.name, `src/generated/${d.name}/index.ts`]),
);

export default defineConfig({
  entry: { index: 'src/index.ts', versions: 'src/versions.ts', ...seriesEntries },
  format: ['esm', 'cjs'],
  dts: true,
  // Source maps of generated tables would double the package for nobody's benefit.
  sourcemap: false,
  clean: true,
  target: 'node20',
});
