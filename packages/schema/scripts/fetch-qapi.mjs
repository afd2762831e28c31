#!/usr/bin/env node
// Fetches the QAPI schema sources of the QEMU that Debian 12 ships, from Debian's `qemu` source
// package at a pinned version, into packages/schema/qapi-src/ (git-ignored).
//
// apt runs with a private sources list, list directory and cache, so the machine's apt configuration
// is neither read for sources nor modified. apt verifies the downloaded files against the signed
// Sources index, and dpkg-source applies Debian's patches (Debian's 7.2 builds carry the upstream
// 7.2.x stable fixes as patches, some of which touch qapi/*.json).
//
// Idempotent: when qapi-src/SOURCE names the pinned version, nothing is done.
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { QEMU_SOURCE_PACKAGE, QEMU_SOURCE_VERSION } from './qapi-source.mjs';

const packageDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = join(packageDir, 'qapi-src');
const marker = join(outDir, 'SOURCE');
const markerText = `${QEMU_SOURCE_PACKAGE} ${QEMU_SOURCE_VERSION}\n`;

const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
const SOURCES = [
  `deb-src [signed-by=${KEYRING}] http://deb.debian.org/debian bookworm main`,
  `deb-src [signed-by=${KEYRING}] http://deb.debian.org/debian bookworm-updates main`,
  `deb-src [signed-by=${KEYRING}] http://deb.debian.org/debian-security bookworm-security main`,
];

function log(message) {
  process.stderr.write(`fetch-qapi: ${message}\n`);
}

function isFresh() {
  return (
    existsSync(marker) &&
    readFileSync(marker, 'utf8') === markerText &&
    existsSync(join(outDir, 'qapi', 'qapi-schema.json'))
  );
}

function run(cmd, args, cwd) {
  execFileSync(cmd, args, { cwd, stdio: ['ignore', 'ignore', 'inherit'] });
}

function hasCommand(cmd) {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
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

function main() {
  const force = process.argv.includes('--force');
  if (!force && isFresh()) {
    log(`qapi-src already holds ${QEMU_SOURCE_PACKAGE} ${QEMU_SOURCE_VERSION}`);
    return;
  }
  const work = mkdtempSync(join(tmpdir(), 'qmpkit-schema-fetch-'));
  try {
    const lists = join(work, 'lists');
    const cache = join(work, 'cache');
    mkdirSync(join(lists, 'partial'), { recursive: true });
    mkdirSync(join(cache, 'archives', 'partial'), { recursive: true });
    const sourceList = join(work, 'sources.list');
    writeFileSync(sourceList, `${SOURCES.join('\n')}\n`);
    const aptOptions = [
      '-o', `Dir::Etc::SourceList=${sourceList}`,
      '-o', 'Dir::Etc::SourceParts=/dev/null',
      '-o', `Dir::State::Lists=${lists}`,
      '-o', `Dir::Cache=${cache}`,
      '-o', 'Acquire::Languages=none',
      '-o', 'APT::Get::List-Cleanup=false',
      // The private directories belong to root; apt's _apt sandbox user could not write them.
      '-o', 'APT::Sandbox::User=root',
    ];
    log('apt-get update (private lists)');
    run('apt-get', [...aptOptions, '-q', 'update'], work);
    log(`apt-get source ${QEMU_SOURCE_PACKAGE}=${QEMU_SOURCE_VERSION}`);
    run('apt-get', [...aptOptions, '-q', '--download-only', 'source', `${QEMU_SOURCE_PACKAGE}=${QEMU_SOURCE_VERSION}`], work);
    const dsc = readdirSync(work).find((f) => f.endsWith('.dsc'));
    if (dsc === undefined) throw new Error('apt-get source did not download a .dsc file');
    // apt-get has already checked the files against the signed Sources index.
    if (!process.argv.includes('--without-dpkg-source') && hasCommand('dpkg-source')) {
      log(`unpacking ${dsc} with dpkg-source`);
      run('dpkg-source', ['--no-check', '-x', dsc, 'src'], work);
    } else {
      log(`unpacking ${dsc} with tar and patch (dpkg-dev is not installed)`);
      unpackWithTar(work, dsc, join(work, 'src'));
    }
    const src = join(work, 'src');

    rmSync(outDir, { recursive: true, force: true });
    mkdirSync(join(outDir, 'qapi'), { recursive: true });
    mkdirSync(join(outDir, 'docs', 'devel'), { recursive: true });
    for (const file of readdirSync(join(src, 'qapi'))) {
      if (file.endsWith('.json')) cpSync(join(src, 'qapi', file), join(outDir, 'qapi', file));
    }
    cpSync(join(src, 'docs', 'devel', 'qapi-code-gen.rst'), join(outDir, 'docs', 'devel', 'qapi-code-gen.rst'));
    // Written last: an interrupted run leaves no marker and is redone next time.
    writeFileSync(marker, markerText);
    log(`wrote ${outDir}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

main();
