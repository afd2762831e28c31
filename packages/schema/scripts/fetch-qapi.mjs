#!/usr/bin/env node
// Fetches the QAPI schema sources of every supported QEMU release from Debian's `qemu` source
// package at its pinned version (scripts/qemu-releases.mjs at the repository root) into
// packages/schema/qapi-src/<series>/ (git-ignored): 7.2 from bookworm, 10.0 from
// bookworm-backports, 11.1 from sid.
//
// The mirror is the one the machine's apt configuration names (no archive host is written
// here). apt runs with a private sources list, list directory and cache, so the system's apt
// configuration is neither read for sources nor modified; apt verifies the Sources index against
// Debian's archive keyring and the downloaded files against the index. dpkg-source applies
// Debian's patches (Debian's builds carry upstream stable fixes as patches, some touching
// qapi/*.json).
//
// Idempotent: a series whose qapi-src/<series>/SOURCE names the pinned version is left alone.
// A machine-wide copy under <QEMU prefix>/qapi-src/<series>/ (default /opt/qmpkit-qemu, where the
// QEMU installs live) serves fresh clones on the same machine without downloading again, and
// keeps working after the archive has dropped a pinned version.
//
// Usage: node scripts/fetch-qapi.mjs [--force] [--all] [--without-dpkg-source] [series...]
// (default: the series whose types are committed; --all: every pinned series, those without
// committed types on a best-effort basis)
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { PrivateApt, debianMirrors } from '../../../scripts/debian-archive.mjs';
import { QEMU_RELEASES, QEMU_SERIES } from '../../../scripts/qemu-releases.mjs';
import { QEMU_SOURCE_PACKAGE, qapiSourceDir } from './qapi-source.mjs';

const packageDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const machineCache = join(process.env.QMPKIT_QEMU_PREFIX ?? '/opt/qmpkit-qemu', 'qapi-src');

function log(message) {
  process.stderr.write(`fetch-qapi: ${message}\n`);
}

const markerText = (release) => `${QEMU_SOURCE_PACKAGE} ${release.source}${release.sourceParts === 'orig' ? ' upstream-tarball-only' : ''}\n`;

function holds(dir, release) {
  const marker = join(dir, 'SOURCE');
  return existsSync(marker) && readFileSync(marker, 'utf8') === markerText(release) && existsSync(join(dir, 'qapi', 'qapi-schema.json'));
}

function run(cmd, args, cwd) {
  execFileSync(cmd, args, { cwd, stdio: ['ignore', 'ignore', 'inherit'] });
}

function hasCommand(cmd) {
  try {
    execFileSync('sh', ['-c', 'command -v "$1"', 'sh', cmd], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * What dpkg-source -x does for a "3.0 (quilt)" package, for machines without dpkg-dev: unpack
 * the upstream tarball, lay the debian/ tarball over it, apply debian/patches/series in order.
 */
function unpackWithTar(work, dsc, dest) {
  const text = readFileSync(join(work, dsc), 'utf8');
  if (!/^Format: 3\.0 \(quilt\)$/m.test(text)) throw new Error(`${dsc} is not a "3.0 (quilt)" source package`);
  const files = readdirSync(work);
  const orig = files.find((f) => /\.orig\.tar\.\w+$/.test(f));
  const debian = files.find((f) => /\.debian\.tar\.\w+$/.test(f));
  if (orig === undefined || debian === undefined) throw new Error('the .orig and .debian tarballs were not downloaded');
  mkdirSync(dest);
  run('tar', ['-xf', join(work, orig), '-C', dest, '--strip-components=1'], work);
  run('tar', ['-xf', join(work, debian), '-C', dest], work);
  const seriesFile = join(dest, 'debian', 'patches', 'series');
  const series = existsSync(seriesFile) ? readFileSync(seriesFile, 'utf8').split('\n') : [];
  for (const line of series) {
    const entry = line.replace(/#.*/, '').trim();
    if (entry === '') continue;
    const [patch, ...options] = entry.split(/\s+/);
    run('patch', [...(options.length > 0 ? options : ['-p1']), '-s', '-f', '-i', join(dest, 'debian', 'patches', patch)], dest);
  }
}

/** deb-src lines for the release's suites, on the machine's own mirrors. */
function sourceLines(release) {
  const mirrors = debianMirrors();
  const lines = [];
  for (const suite of release.sourceSuites) {
    const security = /-security$/.test(suite);
    const mirror = security ? mirrors.security : mirrors.debian;
    if (mirror === undefined) {
      log(`no security mirror in the apt configuration; ${suite} left out`);
      continue;
    }
    lines.push(`deb-src ${mirror} ${suite} main`);
  }
  return lines;
}

/** Copies the QAPI input out of an unpacked source tree into `dest` (replaced whole). */
function keepQapi(src, dest, release) {
  const staging = `${dest}.tmp-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(join(staging, 'qapi'), { recursive: true });
  mkdirSync(join(staging, 'docs', 'devel'), { recursive: true });
  for (const file of readdirSync(join(src, 'qapi'))) {
    if (file.endsWith('.json')) cpSync(join(src, 'qapi', file), join(staging, 'qapi', file));
  }
  cpSync(join(src, 'docs', 'devel', 'qapi-code-gen.rst'), join(staging, 'docs', 'devel', 'qapi-code-gen.rst'));
  // Written last: an interrupted copy has no marker and is redone next time.
  writeFileSync(join(staging, 'SOURCE'), markerText(release));
  rmSync(dest, { recursive: true, force: true });
  mkdirSync(dirname(dest), { recursive: true });
  renameSync(staging, dest);
}

/**
 * Only the upstream tarball of the source package (`sourceParts: 'orig'`): downloaded with apt's
 * transport and checked against the SHA-256 of the signed Sources index, then only the QAPI
 * files are extracted from it.
 */
function downloadOrig(release, apt, work) {
  const record = apt.sourceRecord(QEMU_SOURCE_PACKAGE, release.source);
  if (record === undefined) {
    throw new Error(
      `Debian's ${release.sourceSuites.join('/')} does not offer source package ${QEMU_SOURCE_PACKAGE}=${release.source} ` +
        `(it offers ${apt.sourceVersions(QEMU_SOURCE_PACKAGE).join(', ') || 'none'}), and no copy of it is kept on this machine. ` +
        `Move the ${release.series} pin in scripts/qemu-releases.mjs and run \`pnpm --filter @qmpkit/schema run generate\``,
    );
  }
  const orig = record.files.find((f) => /\.orig\.tar\.\w+$/.test(f.name));
  if (orig === undefined) throw new Error(`${QEMU_SOURCE_PACKAGE} ${release.source} has no upstream tarball`);
  const { debian } = debianMirrors();
  log(`${release.series}: downloading ${orig.name} (${Math.round(orig.size / 1e6)} MB; upstream part of ${QEMU_SOURCE_PACKAGE} ${release.source})`);
  apt.downloadVerified(debian, `${record.directory}/${orig.name}`, join(work, orig.name), orig.sha256);
  const src = join(work, 'src');
  mkdirSync(src);
  run('tar', ['-xf', join(work, orig.name), '-C', src, '--strip-components=1', '--wildcards', '*/qapi/*.json', '*/docs/devel/qapi-code-gen.rst'], work);
  return src;
}

function download(release, work) {
  const lines = sourceLines(release);
  const apt = new PrivateApt(join(work, 'apt'), lines);
  log(`${release.series}: apt-get update (${release.sourceSuites.join(', ')} sources; private lists)`);
  apt.update();
  if (release.sourceParts === 'orig') return downloadOrig(release, apt, work);
  const spec = `${QEMU_SOURCE_PACKAGE}=${release.source}`;
  const offered = apt.sourceVersions(QEMU_SOURCE_PACKAGE);
  if (!offered.includes(release.source)) {
    throw new Error(
      `Debian's ${release.sourceSuites.join('/')} does not offer source package ${spec} (it offers ${offered.join(', ') || 'none'}), ` +
        `and no copy of it is kept on this machine (${join(machineCache, release.series)}). Move the ${release.series} pin in ` +
        'scripts/qemu-releases.mjs and run `pnpm --filter @qmpkit/schema run generate`',
    );
  }
  log(`${release.series}: apt-get source ${spec}`);
  apt.source(spec, work);
  const dsc = readdirSync(work).find((f) => f.endsWith('.dsc'));
  if (dsc === undefined) throw new Error('apt-get source did not download a .dsc file');
  // apt-get has already checked the files against the signed Sources index.
  const src = join(work, 'src');
  if (!process.argv.includes('--without-dpkg-source') && hasCommand('dpkg-source')) {
    log(`${release.series}: unpacking ${dsc} with dpkg-source`);
    run('dpkg-source', ['--no-check', '-x', dsc, 'src'], work);
  } else {
    log(`${release.series}: unpacking ${dsc} with tar and patch (dpkg-dev is not installed)`);
    unpackWithTar(work, dsc, src);
  }
  return src;
}

function fetchSeries(release, force) {
  const outDir = qapiSourceDir(packageDir, release.series);
  if (!force && holds(outDir, release)) {
    log(`${release.series}: qapi-src/${release.series} already holds ${QEMU_SOURCE_PACKAGE} ${release.source}`);
    return;
  }
  const cached = join(machineCache, release.series);
  if (!force && holds(cached, release)) {
    keepQapi(cached, outDir, release);
    log(`${release.series}: copied ${QEMU_SOURCE_PACKAGE} ${release.source} from ${cached}`);
    return;
  }
  const work = mkdtempSync(join(tmpdir(), 'qmpkit-schema-fetch-'));
  try {
    const src = download(release, work);
    keepQapi(src, outDir, release);
    try {
      keepQapi(src, cached, release);
    } catch (error) {
      // Only a shortcut for the next clone; a machine where the prefix is not writable still works.
      log(`${release.series}: not kept in ${cached} (${error.message})`);
    }
    log(`${release.series}: wrote ${outDir}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Series whose types are committed (src/generated/qemu-<series>/): their input is required. */
function generatedSeries() {
  const dir = join(packageDir, 'src', 'generated');
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((d) => d.startsWith('qemu-')).map((d) => d.slice('qemu-'.length));
}

function main() {
  const force = process.argv.includes('--force');
  const all = process.argv.includes('--all');
  const named = process.argv.slice(2).filter((a) => !a.startsWith('--'));
  const unknown = named.filter((s) => QEMU_RELEASES[s] === undefined);
  if (unknown.length > 0) throw new Error(`unknown series ${unknown.join(', ')}; known: ${QEMU_SERIES.join(', ')}`);
  const required = named.length > 0 ? named : generatedSeries().filter((s) => QEMU_RELEASES[s] !== undefined);
  // --all (the generate script) also tries the pinned series without committed types; one whose
  // source the archive does not serve stays without types, and says so, rather than failing.
  const optional = all ? QEMU_SERIES.filter((s) => !required.includes(s)) : [];
  for (const series of QEMU_SERIES.filter((s) => required.includes(s) || optional.includes(s))) {
    try {
      fetchSeries(QEMU_RELEASES[series], force);
    } catch (error) {
      if (required.includes(series)) throw error;
      log(`${series}: no QAPI input, so no types for QEMU ${series}: ${error instanceof Error ? error.message : String(error)}`);
      rmSync(qapiSourceDir(packageDir, series), { recursive: true, force: true });
    }
  }
}

try {
  main();
} catch (error) {
  log(error instanceof Error ? error.message : String(error));
  process.exit(1);
}
