#!/usr/bin/env node
// Fetches QEMU's own Python iotests (tests/qemu-iotests and the in-tree python/qemu package) from
// Debian's `qemu` source package of the installed QEMU, into .cache/qemu-source/<version>/
// (git-ignored), so `bench/conformance.mjs` can time the reference tests beside the suites.
//
// The mirror is the one the machine's apt configuration names (/etc/apt/sources.list.d/*.sources);
// apt runs with a private sources list, list directory and cache, so the system's apt state is
// neither read for sources nor changed. Idempotent: an unpacked tree is reused.
//
// Usage: node bench/fetch-iotests.mjs        prints the tests/qemu-iotests directory
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

function log(message) {
  process.stderr.write(`fetch-iotests: ${message}\n`);
}

/** The installed QEMU's Debian source version (e.g. 1:7.2+dfsg-7+deb12u18). */
function installedSourceVersion() {
  const out = execFileSync('dpkg-query', ['-W', '-f', '${source:Version}', 'qemu-system-x86'], { encoding: 'utf8' });
  if (!out.trim()) throw new Error('qemu-system-x86 is not installed as a Debian package');
  return out.trim();
}

/** deb-src lines for the suites the machine's deb822 sources name, with their mirrors. */
function debSrcLines() {
  const dir = '/etc/apt/sources.list.d';
  const lines = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.sources'))) {
    for (const stanza of readFileSync(join(dir, file), 'utf8').split(/\n\s*\n/)) {
      const field = (name) => new RegExp(`^${name}:\\s*(.+)$`, 'mi').exec(stanza)?.[1]?.trim();
      const uris = field('URIs');
      const suites = field('Suites');
      if (!uris || !suites || !/\bdeb\b/.test(field('Types') ?? '')) continue;
      const components = field('Components') ?? 'main';
      const keyring = field('Signed-By') ?? KEYRING;
      for (const uri of uris.split(/\s+/)) {
        for (const suite of suites.split(/\s+/)) lines.push(`deb-src [signed-by=${keyring}] ${uri} ${suite} ${components}`);
      }
    }
  }
  if (lines.length === 0) throw new Error(`no deb822 sources in ${dir} to take a mirror from`);
  return lines;
}

export function iotestsDir(version = installedSourceVersion()) {
  return join(root, '.cache', 'qemu-source', version.replace(/[^A-Za-z0-9.+~-]/g, '_'), 'tests', 'qemu-iotests');
}

export function fetchIotests() {
  const version = installedSourceVersion();
  const target = dirname(dirname(iotestsDir(version)));
  if (existsSync(join(target, 'tests', 'qemu-iotests', 'check'))) return iotestsDir(version);
  // Beside the target (same file system), so the unpacked tree can be renamed into place.
  mkdirSync(join(root, '.cache'), { recursive: true });
  const work = mkdtempSync(join(root, '.cache', 'fetch-iotests-'));
  try {
    mkdirSync(join(work, 'lists', 'partial'), { recursive: true });
    mkdirSync(join(work, 'cache', 'archives', 'partial'), { recursive: true });
    writeFileSync(join(work, 'sources.list'), `${debSrcLines().join('\n')}\n`);
    const apt = [
      '-o', `Dir::Etc::SourceList=${join(work, 'sources.list')}`,
      '-o', 'Dir::Etc::SourceParts=/dev/null',
      '-o', `Dir::State::Lists=${join(work, 'lists')}`,
      '-o', `Dir::Cache=${join(work, 'cache')}`,
      '-o', 'Acquire::Languages=none',
      '-o', 'APT::Sandbox::User=root',
    ];
    const run = (cmd, args) => execFileSync(cmd, args, { cwd: work, stdio: ['ignore', 'ignore', 'inherit'] });
    log('apt-get update (private lists)');
    run('apt-get', [...apt, '-q', 'update']);
    log(`apt-get source qemu=${version}`);
    run('apt-get', [...apt, '-q', '--download-only', 'source', `qemu=${version}`]);
    const dsc = readdirSync(work).find((f) => f.endsWith('.dsc'));
    if (dsc === undefined) throw new Error('apt-get source did not download a .dsc file');
    log(`unpacking ${dsc}`);
    run('dpkg-source', ['--no-check', '-x', dsc, 'src']);
    mkdirSync(dirname(target), { recursive: true });
    rmSync(target, { recursive: true, force: true });
    renameSync(join(work, 'src'), target);
    return iotestsDir(version);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.stdout.write(`${fetchIotests()}\n`);
}
