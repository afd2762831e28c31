#!/usr/bin/env node
// Installs the QEMU releases of scripts/qemu-releases.mjs that are not the system's own, under
// one machine-wide prefix (default /opt/qmpkit-qemu, or $QMPKIT_QEMU_PREFIX):
//
//   <prefix>/<series>/bin/{qemu-system-x86_64,qemu-img,qemu-io,qemu-nbd,qemu-storage-daemon}
//                                  wrapper scripts: point QEMU_SYSTEM, QEMU_IMG, ... at them
//   <prefix>/<series>/root/        the unpacked debs (10.0) or a minbase sid tree (11.1)
//   <prefix>/<series>/qemu.json    what is installed: versions, packages, the pin it was made for
//   <prefix>/installed.json        every installed series' qemu.json, keyed by series
//
// 10.0 comes from bookworm-backports, built for this Debian: its qemu-system-x86,
// qemu-system-common, qemu-utils and qemu-block-extra debs are unpacked with `dpkg-deb -x`
// and run with the system's libraries (missing ones are installed with apt) and
// QEMU_MODULE_DIR. 11.1 comes from sid, built against sid's libraries: debootstrap makes a
// minbase sid tree with the QEMU packages, and the wrappers start each binary through the
// tree's own dynamic loader with --library-path, so nothing of the system is replaced.
//
// Idempotent and cheap when done: a series whose qemu.json names the current pin is left
// alone without touching the network. Installs run under an flock on <prefix>/.install.lock
// (several worktrees' set-ups may start at once), build in a staging directory and move it into
// place; qemu.json is written last, so an interrupted install is redone next time.
//
// CLI: node scripts/qemu-install.mjs [--force] [--status] [series...]
//      (default: every non-system series, or $QMPKIT_QEMU_SERIES, comma-separated; 'none' skips)
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, closeSync, existsSync, openSync, statSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { DEBIAN_KEYRING, PrivateApt, debianMirrors } from './debian-archive.mjs';
import { QEMU_RELEASES, QEMU_SERIES, seriesOfDebianVersion } from './qemu-releases.mjs';

export const QEMU_PREFIX = process.env.QMPKIT_QEMU_PREFIX ?? '/opt/qmpkit-qemu';
/** The tools every installed series provides, as wrapper scripts in <prefix>/<series>/bin. */
export const QEMU_TOOLS = ['qemu-system-x86_64', 'qemu-img', 'qemu-io', 'qemu-nbd', 'qemu-storage-daemon'];
/** The binary packages installed for each series (qemu-storage-daemon is in qemu-utils). */
const PACKAGES = ['qemu-system-x86', 'qemu-system-common', 'qemu-utils', 'qemu-block-extra'];
const MANIFEST_FORMAT = 1;
const MULTIARCH = 'x86_64-linux-gnu';

const self = fileURLToPath(import.meta.url);

function log(message) {
  process.stderr.write(`[qmpkit] ${message}\n`);
}

export class QemuInstallError extends Error {
  constructor(message) {
    super(message);
    this.name = 'QemuInstallError';
  }
}

/** The series that are installed here rather than by the system's apt: '10.0', '11.1'. */
export const EXTRA_SERIES = QEMU_SERIES.filter((s) => QEMU_RELEASES[s].install !== 'system');

/**
 * The series the set-up installs: $QMPKIT_QEMU_SERIES (comma-separated, 'none' for none,
 * 'all' for all), default all. Unknown names are an error rather than silently ignored.
 */
export function wantedSeries(value = process.env.QMPKIT_QEMU_SERIES) {
  if (value === undefined || value.trim() === '' || value.trim() === 'all') return EXTRA_SERIES;
  if (value.trim() === 'none') return [];
  const names = value.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = names.filter((s) => !QEMU_RELEASES[s]);
  if (unknown.length > 0) throw new QemuInstallError(`QMPKIT_QEMU_SERIES names unknown series ${unknown.join(', ')}; known: ${QEMU_SERIES.join(', ')}`);
  return names.filter((s) => QEMU_RELEASES[s].install !== 'system');
}

export function seriesDir(series, prefix = QEMU_PREFIX) {
  return join(prefix, series);
}

/** The parsed <prefix>/<series>/qemu.json, or undefined when the series is not installed. */
export function readManifest(series, prefix = QEMU_PREFIX) {
  const file = join(seriesDir(series, prefix), 'qemu.json');
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
}

/** Why a series needs (re)installing, or undefined when it is installed for the current pin. */
export function installProblem(series, prefix = QEMU_PREFIX) {
  const release = QEMU_RELEASES[series];
  const manifest = readManifest(series, prefix);
  if (manifest === undefined) return 'not installed';
  if (manifest.format !== MANIFEST_FORMAT) return `installed by an older installer (format ${manifest.format})`;
  if (manifest.pin !== release.binary) return `installed for pin ${manifest.pin}, now pinned ${release.binary}`;
  const missing = QEMU_TOOLS.filter((t) => !existsSync(join(seriesDir(series, prefix), 'bin', t)));
  if (missing.length > 0) return `missing ${missing.join(', ')}`;
  return undefined;
}

/**
 * Makes sure every series in `series` is installed; cheap (no process, no network) when they
 * are. Otherwise runs this script under the install lock. Throws QemuInstallError on failure.
 */
export function ensureQemuSeries(series = wantedSeries(), { prefix = QEMU_PREFIX } = {}) {
  const todo = series.filter((s) => installProblem(s, prefix) !== undefined);
  if (todo.length === 0) return;
  if (process.getuid?.() !== 0) {
    throw new QemuInstallError(
      `QEMU ${todo.join(', ')} not installed under ${prefix} (${todo.map((s) => installProblem(s, prefix)).join('; ')}); ` +
        `run \`node scripts/qemu-install.mjs ${todo.join(' ')}\` as root, or set QMPKIT_QEMU_SERIES=none to skip them`,
    );
  }
  const result = spawnSync(process.execPath, [self, ...todo], { stdio: 'inherit', env: { ...process.env, QMPKIT_QEMU_PREFIX: prefix } });
  if (result.status !== 0) throw new QemuInstallError(`installing QEMU ${todo.join(', ')} failed (see above)`);
}

/** The binaries tests and the conformance app are pointed at, by environment variable. */
export const QEMU_ENVIRONMENT = {
  QEMU_SYSTEM: 'qemu-system-x86_64',
  QEMU_IMG: 'qemu-img',
  QEMU_IO: 'qemu-io',
  QEMU_NBD: 'qemu-nbd',
  QEMU_STORAGE_DAEMON: 'qemu-storage-daemon',
};

function systemBinary(tool) {
  const result = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', tool], { encoding: 'utf8' });
  return result.status === 0 ? result.stdout.trim() : undefined;
}

/**
 * The QEMU binaries `spec` names: a series or version ('7.2' or 'system' for the system's QEMU,
 * '10.0', '11.1', '10.0.2', ...), or a path (a directory holding the tools, or one of them).
 * Returns { label, binDir, binaries: { tool: path } }; throws QemuInstallError naming what was
 * not found.
 */
export function resolveQemu(spec, prefix = QEMU_PREFIX) {
  const series = /^\d+\.\d+/.exec(spec)?.[0];
  if (spec === 'system' || series === QEMU_SERIES.find((s) => QEMU_RELEASES[s].install === 'system')) {
    const binaries = Object.fromEntries(QEMU_TOOLS.map((t) => [t, systemBinary(t)]));
    const missing = QEMU_TOOLS.filter((t) => binaries[t] === undefined);
    if (missing.length > 0) throw new QemuInstallError(`the system QEMU lacks ${missing.join(', ')} (npm run setup installs it)`);
    return { label: 'system QEMU', binDir: dirname(binaries['qemu-system-x86_64']), binaries };
  }
  if (series !== undefined && !spec.includes('/')) {
    if (QEMU_RELEASES[series] === undefined) throw new QemuInstallError(`QEMU ${spec} is not a supported release (${QEMU_SERIES.join(', ')}); pass a path instead`);
    const manifest = readManifest(series, prefix);
    if (manifest === undefined) throw new QemuInstallError(`QEMU ${series} is not installed under ${prefix}: run \`node scripts/qemu-install.mjs ${series}\``);
    if (spec !== series && manifest.version !== spec) throw new QemuInstallError(`QEMU ${series} here is ${manifest.version}, not ${spec}`);
    return { label: `QEMU ${manifest.version} (${manifest.debianVersion})`, binDir: manifest.bin, binaries: manifest.binaries };
  }
  const path = resolve(spec);
  if (!existsSync(path)) throw new QemuInstallError(`${spec}: no such file or directory`);
  let dir = path;
  if (!statSync(path).isDirectory()) dir = dirname(path);
  else if (!existsSync(join(dir, 'qemu-system-x86_64')) && existsSync(join(dir, 'bin', 'qemu-system-x86_64'))) dir = join(dir, 'bin');
  const binaries = Object.fromEntries(QEMU_TOOLS.map((t) => [t, join(dir, t)]));
  if (!existsSync(binaries['qemu-system-x86_64'])) throw new QemuInstallError(`${dir} holds no qemu-system-x86_64`);
  return { label: dir, binDir: dir, binaries };
}

/** Environment variables (QEMU_SYSTEM, ..., and PATH with the tools first) for running against `resolved`. */
export function qemuEnvironment(resolved, base = process.env) {
  const env = { ...base, PATH: `${resolved.binDir}:${base.PATH ?? ''}` };
  for (const [variable, tool] of Object.entries(QEMU_ENVIRONMENT)) {
    if (existsSync(resolved.binaries[tool] ?? '')) env[variable] = resolved.binaries[tool];
  }
  return env;
}

// ---------------------------------------------------------------------------------------------
// Installing (runs in the child process, under the lock)

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { stdio: ['ignore', 'inherit', 'inherit'], ...options });
  if (result.error) throw new QemuInstallError(`${command}: ${result.error.message}`);
  if (result.status !== 0) throw new QemuInstallError(`\`${command} ${args.join(' ')}\` failed with exit code ${result.status}`);
}

function output(command, args, options = {}) {
  return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...options });
}

function hasCommand(command) {
  return spawnSync('sh', ['-c', 'command -v "$1"', 'sh', command], { stdio: 'ignore' }).status === 0;
}

function versionCompare(a, op, b) {
  return spawnSync('dpkg', ['--compare-versions', a, op, b]).status === 0;
}

function newestFirst(versions) {
  return [...versions].sort((a, b) => (a === b ? 0 : versionCompare(a, 'gt', b) ? -1 : 1));
}

/** Installs packages from the SYSTEM's apt sources (libraries, debootstrap): the system's own set-up. */
function systemAptInstall(packages) {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...packages], { stdio: 'inherit', env }).status === 0;
  log(`apt-get install ${packages.join(' ')}`);
  if (install()) return;
  // A machine whose package lists were never fetched (or are old) needs an update first.
  run('apt-get', ['update', '-qq'], { env });
  if (!install()) throw new QemuInstallError(`apt-get install ${packages.join(' ')} failed`);
}

/**
 * The version to install from what the archive offers: the pin, else the newest build of the
 * same series (the archive keeps only the current build of each suite), else a clear error.
 */
export function chooseVersion(release, available) {
  if (available.includes(release.binary)) return { version: release.binary, moved: false };
  const sameSeries = newestFirst(available.filter((v) => seriesOfDebianVersion(v) === release.series));
  if (sameSeries.length > 0) return { version: sameSeries[0], moved: true };
  throw new QemuInstallError(
    `Debian's ${release.suites.join('/')} no longer has QEMU ${release.series}: pinned ${release.binary}, ` +
      `the archive offers ${available.length > 0 ? available.join(', ') : 'no qemu-system-x86 at all'}. ` +
      `Move the ${release.series} pin in scripts/qemu-releases.mjs (then regenerate @qmpkit/schema), ` +
      `or leave this series out with QMPKIT_QEMU_SERIES=${EXTRA_SERIES.filter((s) => s !== release.series).join(',') || 'none'}`,
  );
}

function noteMoved(release, version) {
  log(
    `QEMU ${release.series}: the archive no longer has the pinned ${release.binary}; installing ${version} of the same series ` +
      `(its QAPI schema is checked by the schema's parity test; move the pin in scripts/qemu-releases.mjs when convenient)`,
  );
}

function archiveFor(release, work, kind = 'deb') {
  const { debian } = debianMirrors();
  const apt = new PrivateApt(work, release.suites.map((suite) => `${kind} ${debian} ${suite} main`));
  log(`QEMU ${release.series}: apt-get update (${release.suites.join(', ')}; private lists)`);
  apt.update();
  return { apt, mirror: debian };
}

/**
 * Dependencies of the debs that the system lacks (or has too old), as the first alternative of
 * each unsatisfied group. QEMU's own packages and its firmware are left out: the wrappers bring
 * the former, and `-machine none` needs none of the latter.
 */
function missingSystemDependencies(debs) {
  const missing = new Set();
  for (const deb of debs) {
    const depends = output('dpkg-deb', ['-f', deb, 'Depends']).trim();
    for (const group of depends.split(',').map((g) => g.trim()).filter(Boolean)) {
      const alternatives = group.split('|').map((alt) => {
        const match = /^([^\s(]+)(?:\s*\(\s*(<<|<=|=|>=|>>)\s*([^)\s]+)\s*\))?/.exec(alt.trim());
        return { name: match[1].replace(/:any$/, ''), op: match[2], version: match[3] };
      });
      if (alternatives.some((a) => /^(qemu-|seabios$|ipxe-qemu$)/.test(a.name))) continue;
      const satisfied = alternatives.some((a) => {
        const status = spawnSync('dpkg-query', ['-W', '-f', '${Status}|${Version}', a.name], { encoding: 'utf8' });
        const [state, installed] = (status.stdout ?? '').split('|');
        if (status.status !== 0 || state !== 'install ok installed') return false;
        return a.op === undefined || versionCompare(installed, { '<<': 'lt', '<=': 'le', '=': 'eq', '>=': 'ge', '>>': 'gt' }[a.op], a.version);
      });
      if (!satisfied) missing.add(alternatives[0].name);
    }
  }
  return [...missing].sort();
}

function installUnpacked(release, staging, work) {
  const { apt } = archiveFor(release, work);
  const { version, moved } = chooseVersion(release, apt.binaryVersions('qemu-system-x86'));
  if (moved) noteMoved(release, version);
  const debDir = join(work, 'debs');
  mkdirSync(debDir);
  log(`QEMU ${release.series}: downloading ${PACKAGES.join(', ')} ${version}`);
  apt.download(PACKAGES.map((p) => `${p}=${version}`), debDir);
  const debs = readdirSync(debDir).filter((f) => f.endsWith('.deb')).map((f) => join(debDir, f));
  if (debs.length !== PACKAGES.length) throw new QemuInstallError(`expected ${PACKAGES.length} debs, apt downloaded ${debs.length}`);
  const missing = missingSystemDependencies(debs);
  if (missing.length > 0) systemAptInstall(missing);
  const root = join(staging, 'root');
  mkdirSync(root, { recursive: true });
  for (const deb of debs) run('dpkg-deb', ['-x', deb, root]);
  return { version, moved, packages: Object.fromEntries(PACKAGES.map((p) => [p, version])) };
}

/** Mount points at or below `dir` (debootstrap mounts /proc and /sys in the tree while it works). */
function mountsBelow(dir) {
  const mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((line) => line.split(' ')[1]).filter(Boolean);
  const decoded = mounts.map((m) => m.replace(/\\(\d{3})/g, (_, oct) => String.fromCharCode(parseInt(oct, 8))));
  return decoded.filter((m) => m === dir || m.startsWith(`${dir}/`)).sort((a, b) => b.length - a.length);
}

/** Removes a directory tree that may hold a chroot: unmount what is mounted in it, never cross filesystems. */
function removeTree(dir) {
  if (!existsSync(dir)) return;
  for (const mount of mountsBelow(dir)) spawnSync('umount', ['-l', mount], { stdio: 'ignore' });
  const left = mountsBelow(dir);
  if (left.length > 0) throw new QemuInstallError(`cannot remove ${dir}: ${left.join(', ')} still mounted`);
  run('rm', ['-rf', '--one-file-system', dir]);
}

function runDebootstrap(suite, root, mirror, work) {
  // debootstrap reports on stdout and keeps its own log in <root>/debootstrap/ while it works;
  // both are shown when it fails, since the tree is removed afterwards.
  const transcript = join(work, 'debootstrap.out');
  try {
    const fd = openSync(transcript, 'w');
    let result;
    try {
      result = spawnSync('debootstrap', [
        '--variant=minbase',
        `--include=${PACKAGES.join(',')}`,
        `--keyring=${DEBIAN_KEYRING}`,
        suite,
        root,
        mirror,
      ], { stdio: ['ignore', fd, fd] });
    } finally {
      closeSync(fd);
    }
    if (result.error || result.status !== 0) {
      const tail = (file) => (existsSync(file) ? readFileSync(file, 'utf8').trimEnd().split('\n').slice(-25).join('\n') : '');
      throw new QemuInstallError(
        `debootstrap ${suite} failed (${result.error?.message ?? `exit code ${result.status}`}):\n` +
          `${tail(transcript)}\n${tail(join(root, 'debootstrap', 'debootstrap.log'))}`,
      );
    }
  } finally {
    for (const mount of mountsBelow(root)) spawnSync('umount', ['-l', mount], { stdio: 'ignore' });
  }
}

function installDebootstrap(release, staging, work) {
  if (!hasCommand('debootstrap')) systemAptInstall(['debootstrap']);
  // Asking the archive first costs seconds and fails before the minutes debootstrap takes when
  // the suite has left the series behind.
  const { apt, mirror } = archiveFor(release, work);
  const { version, moved } = chooseVersion(release, apt.binaryVersions('qemu-system-x86'));
  if (moved) noteMoved(release, version);
  const root = join(staging, 'root');
  const suite = release.suites[0];
  log(`QEMU ${release.series}: debootstrap --variant=minbase ${suite} with ${PACKAGES.join(', ')} (a few minutes)`);
  // One retry: a download cut short by the network fails the whole debootstrap run (seen once
  // here), and a second run from scratch costs less than a failed CI run.
  for (let attempt = 1; ; attempt += 1) {
    try {
      runDebootstrap(suite, root, mirror, work);
      break;
    } catch (error) {
      if (attempt >= 2 || !(error instanceof QemuInstallError)) throw error;
      log(`${error.message}\nQEMU ${release.series}: trying debootstrap once more`);
      removeTree(root);
    }
  }
  const packages = {};
  for (const pkg of PACKAGES) {
    packages[pkg] = output('dpkg-query', [`--admindir=${join(root, 'var', 'lib', 'dpkg')}`, '-W', '-f', '${Version}', pkg]).trim();
  }
  const installed = packages['qemu-system-x86'];
  if (seriesOfDebianVersion(installed) !== release.series) {
    throw new QemuInstallError(`debootstrap installed qemu-system-x86 ${installed}, not QEMU ${release.series} (the archive moved during the install?)`);
  }
  // The downloaded debs stay in the tree's apt cache otherwise; nothing runs apt in it again.
  rmSync(join(root, 'var', 'cache', 'apt', 'archives'), { recursive: true, force: true });
  return { version: installed, moved: installed !== release.binary, packages };
}

function shellQuote(text) {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

/** The wrapper script for one tool; paths are the FINAL location (<prefix>/<series>/root). */
function wrapperScript(release, finalRoot, tool, comment) {
  const moduleDir = `${finalRoot}/usr/lib/${MULTIARCH}/qemu`;
  const binary = `${finalRoot}/usr/bin/${tool}`;
  const lines = ['#!/bin/sh', `# ${comment}`, '# Generated by qmpkit scripts/qemu-install.mjs; do not edit.', `export QEMU_MODULE_DIR=${shellQuote(moduleDir)}`];
  if (release.install === 'debootstrap') {
    // The tree's own loader and libraries (sid's glibc is newer than the system's). Started
    // this way, QEMU cannot find its data directory from its own path, hence -L for the emulator.
    const loader = `${finalRoot}/lib64/ld-linux-x86-64.so.2`;
    const libraryPath = `${finalRoot}/usr/lib/${MULTIARCH}:${finalRoot}/lib/${MULTIARCH}`;
    const dataDir = tool === 'qemu-system-x86_64' ? ` -L ${shellQuote(`${finalRoot}/usr/share/qemu`)}` : '';
    lines.push(`exec ${shellQuote(loader)} --argv0 "$0" --library-path ${shellQuote(libraryPath)} ${shellQuote(binary)}${dataDir} "$@"`);
  } else {
    lines.push(`exec ${shellQuote(binary)} "$@"`);
  }
  return `${lines.join('\n')}\n`;
}

function versionStrings(binDir) {
  const strings = {};
  for (const tool of QEMU_TOOLS) {
    const result = spawnSync(join(binDir, tool), ['--version'], { encoding: 'utf8', timeout: 60_000 });
    const first = (result.stdout ?? '').split('\n')[0].trim();
    if (result.status !== 0 || first === '') {
      throw new QemuInstallError(`${join(binDir, tool)} --version failed (exit ${result.status}): ${(result.stderr ?? '').trim().slice(0, 500)}`);
    }
    strings[tool] = first;
  }
  return strings;
}

function writeJsonAtomic(file, value) {
  const temp = `${file}.tmp-${process.pid}`;
  writeFileSync(temp, `${JSON.stringify(value, null, 2)}\n`);
  renameSync(temp, file);
}

/** Rewrites <prefix>/installed.json from the per-series manifests. */
function writeIndex(prefix) {
  const series = {};
  for (const name of QEMU_SERIES) {
    const manifest = readManifest(name, prefix);
    if (manifest !== undefined) series[name] = manifest;
  }
  writeJsonAtomic(join(prefix, 'installed.json'), { format: MANIFEST_FORMAT, prefix, series });
}

function installSeries(series, prefix, force) {
  const release = QEMU_RELEASES[series];
  const problem = installProblem(series, prefix);
  if (!force && problem === undefined) {
    log(`QEMU ${series}: already installed (${readManifest(series, prefix).debianVersion})`);
    return;
  }
  const started = Date.now();
  log(`QEMU ${series}: installing (${force ? 'forced' : problem})`);
  // Leftovers of an interrupted install (we hold the lock, so nobody else is using them).
  for (const entry of readdirSync(prefix)) {
    if (entry.startsWith(`.staging-${series}-`) || entry.startsWith(`.old-${series}-`)) removeTree(join(prefix, entry));
  }
  const staging = join(prefix, `.staging-${series}-${process.pid}`);
  const work = mkdtempSync(join(prefix, `.work-${series}-`));
  const final = seriesDir(series, prefix);
  try {
    mkdirSync(staging);
    const result = release.install === 'debootstrap' ? installDebootstrap(release, staging, work) : installUnpacked(release, staging, work);
    const binDir = join(staging, 'bin');
    mkdirSync(binDir);
    const comment = `QEMU ${series}: Debian ${result.version} from ${release.suites.join('/')} (${release.install === 'debootstrap' ? 'minbase tree, its own loader' : 'unpacked debs, system libraries'})`;
    for (const tool of QEMU_TOOLS) {
      const file = join(binDir, tool);
      writeFileSync(file, wrapperScript(release, join(final, 'root'), tool, comment));
      chmodSync(file, 0o755);
    }
    if (existsSync(final)) renameSync(final, join(prefix, `.old-${series}-${process.pid}`));
    renameSync(staging, final);
    removeTree(join(prefix, `.old-${series}-${process.pid}`));
    const strings = versionStrings(join(final, 'bin'));
    const upstream = /version (\d+\.\d+\.\d+)/.exec(strings['qemu-system-x86_64'])?.[1];
    if (upstream === undefined || !upstream.startsWith(`${series}.`)) {
      throw new QemuInstallError(`${join(final, 'bin', 'qemu-system-x86_64')} reports "${strings['qemu-system-x86_64']}", not QEMU ${series}`);
    }
    // Written last: a series without qemu.json is not installed.
    writeJsonAtomic(join(final, 'qemu.json'), {
      format: MANIFEST_FORMAT,
      series,
      version: upstream,
      debianVersion: result.version,
      pin: release.binary,
      matchesPin: !result.moved,
      suites: release.suites,
      method: release.install,
      packages: result.packages,
      bin: join(final, 'bin'),
      binaries: Object.fromEntries(QEMU_TOOLS.map((t) => [t, join(final, 'bin', t)])),
      moduleDir: join(final, 'root', 'usr', 'lib', MULTIARCH, 'qemu'),
      versionStrings: strings,
      installedAt: new Date().toISOString(),
      installSeconds: Math.round((Date.now() - started) / 1000),
    });
    log(`QEMU ${series}: installed ${result.version} in ${Math.round((Date.now() - started) / 1000)} s (${join(final, 'bin')})`);
  } finally {
    removeTree(work);
    removeTree(staging);
  }
}

function main(argv) {
  const force = argv.includes('--force');
  const prefix = resolve(QEMU_PREFIX);
  if (argv.includes('--status')) {
    const index = join(prefix, 'installed.json');
    process.stdout.write(existsSync(index) ? readFileSync(index, 'utf8') : `${JSON.stringify({ format: MANIFEST_FORMAT, prefix, series: {} }, null, 2)}\n`);
    return;
  }
  const named = argv.filter((a) => !a.startsWith('--'));
  const series = named.length > 0 ? wantedSeries(named.join(',')) : wantedSeries();
  if (series.length === 0) return;
  if (!argv.includes('--locked')) {
    // Take the machine-wide lock and run again inside it.
    mkdirSync(prefix, { recursive: true });
    const lock = join(prefix, '.install.lock');
    const result = spawnSync('flock', [lock, process.execPath, self, '--locked', ...argv], { stdio: 'inherit' });
    process.exit(result.status ?? 1);
  }
  if (process.getuid?.() !== 0) throw new QemuInstallError('installing QEMU needs root (apt, dpkg-deb into the prefix, debootstrap)');
  for (const name of series) installSeries(name, prefix, force);
  writeIndex(prefix);
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === self) {
  try {
    main(process.argv.slice(2));
  } catch (error) {
    log(error instanceof QemuInstallError ? error.message : error.stack ?? String(error));
    process.exit(1);
  }
}
