// Loads the pinned QAPI schema from a qapi-src/ directory and renders the generated files.
// Shared by the command line and the staleness and parity tests.
import { readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';

import { emitTypeScript, type GeneratedFile, type SourceDescription } from './emitter.js';
import { loadSchema, type Schema } from './schema.js';

/** Reads the `SOURCE` marker that scripts/fetch-qapi.mjs writes: `<package> <version>`. */
export function describeSource(qapiDir: string): SourceDescription {
  const [name, version] = readFileSync(join(qapiDir, 'SOURCE'), 'utf8').trim().split(/\s+/);
  return {
    generator: '@qmpkit/schema generator (packages/schema/generator)',
    input: `Debian source package ${name ?? '?'} ${version ?? '?'}`,
    referenceUrl: 'https://qemu.readthedocs.io/en/v7.2.0/interop/qemu-qmp-ref.html',
  };
}

/** Loads `<qapiDir>/qapi/qapi-schema.json` and everything it includes. */
export function loadQapiDirectory(qapiDir: string): Schema {
  return loadSchema(join(qapiDir, 'qapi', 'qapi-schema.json'), {
    readFile: (path) => readFileSync(path, 'utf8'),
    resolve: (fromFile, include) => join(dirname(fromFile), include),
    displayName: (path) => relative(qapiDir, path),
  });
}

export function generateFromDirectory(qapiDir: string): { schema: Schema; files: GeneratedFile[] } {
  const schema = loadQapiDirectory(qapiDir);
  return { schema, files: emitTypeScript(schema, describeSource(qapiDir)) };
}
