// Loads the pinned QAPI schema of each series from qapi-src/<series>/ and renders the generated files.
// Shared by the command line and the staleness and parity tests.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';

import { emitTypeScript, type GeneratedFile, type SourceDescription } from './emitter.js';
import { loadSchema, type Schema } from './schema.js';

/** `10.0` for Debian's `1:10.0.13+ds-0+deb13u1` (epoch, packaging suffixes and revision dropped). */
export function seriesOfVersion(version: string): string {
  const match = /^(?:\d+:)?(\d+)\.(\d+)/.exec(version);
  if (match === null) throw new Error(`cannot tell the QEMU series of version '${version}'`);
  return `${match[1]}.${match[2]}`;
}

/** Reads the `SOURCE` marker that scripts/fetch-qapi.mjs writes: `<package> <version>`. */
export function describeSource(qapiDir: string): SourceDescription {
  const [name, version, parts] = readFileSync(join(qapiDir, 'SOURCE'), 'utf8').trim().split(/\s+/);
  const series = seriesOfVersion(version ?? '');
  const what = parts === 'upstream-tarball-only' ? 'the upstream tarball of Debian source package' : 'Debian source package';
  return {
    generator: '@qmpkit/schema generator (packages/schema/generator)',
    input: `${what} ${name ?? '?'} ${version ?? '?'}`,
    referenceUrl: `https://qemu.readthedocs.io/en/v${series}.0/interop/qemu-qmp-ref.html`,
    series,
    // QEMU 10.0 moved its QMP reference to a Sphinx QAPI domain with stable ids per definition.
    linkStyle: Number(series.split('.')[0]) >= 10 ? 'qapi-domain' : 'text-fragment',
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

export interface GeneratedVersion {
  readonly series: string;
  readonly qapiDir: string;
  readonly source: SourceDescription;
  readonly schema: Schema;
  readonly files: GeneratedFile[];
}

/**
 * The series whose input is in `srcRoot` (`qapi-src/<series>/SOURCE`), oldest first. A
 * directory without its SOURCE marker is an interrupted fetch and an error.
 */
export function fetchedSeries(srcRoot: string): string[] {
  if (!existsSync(srcRoot)) throw new Error(`${srcRoot} is missing`);
  const dirs = readdirSync(srcRoot, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
  for (const dir of dirs) {
    if (!existsSync(join(srcRoot, dir, 'SOURCE'))) throw new Error(`${join(srcRoot, dir)} is missing its SOURCE marker (an interrupted fetch)`);
  }
  if (dirs.length === 0) throw new Error(`${srcRoot} holds no QAPI input (missing)`);
  return dirs.sort(compareSeries);
}

export function compareSeries(a: string, b: string): number {
  const [amaj = 0, amin = 0] = a.split('.').map(Number);
  const [bmaj = 0, bmin = 0] = b.split('.').map(Number);
  return amaj - bmaj || amin - bmin;
}

/** Loads and renders every fetched series. */
export function generateAll(srcRoot: string): GeneratedVersion[] {
  return fetchedSeries(srcRoot).map((series) => {
    const qapiDir = join(srcRoot, series);
    const source = describeSource(qapiDir);
    if (source.series !== series) throw new Error(`${qapiDir} holds ${source.input}, not QEMU ${series}`);
    const { schema, files } = generateFromDirectory(qapiDir);
    return { series, qapiDir, source, schema, files };
  });
}
