// Debian's archive as this machine's apt configuration reaches it, and apt run privately.
//
// The mirror is never written in the repository: it is read from the machine's own apt sources
// (deb822 files in /etc/apt/sources.list.d/*.sources, or one-line entries in
// /etc/apt/sources.list), so a machine behind its own mirror or proxy uses that one.
//
// `PrivateApt` runs apt-get/apt-cache with a sources list, list directory and cache of its own
// (in a scratch directory), so the system's apt configuration and state are neither read for
// sources nor modified. apt still verifies every index against the Release file's signature
// (Debian's archive keyring, `signed-by`) and every downloaded file against the index's hashes.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const DEBIAN_KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

/** Parses deb822 stanzas (blank-line separated `Key: value` blocks, `#` comments, continuation lines). */
export function parseDeb822(text) {
  const stanzas = [];
  let current = {};
  let lastKey;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    if (line.trim() === '') {
      if (Object.keys(current).length > 0) stanzas.push(current);
      current = {};
      lastKey = undefined;
      continue;
    }
    if (/^\s/.test(line) && lastKey !== undefined) {
      current[lastKey] += ` ${line.trim()}`;
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    lastKey = line.slice(0, colon).trim().toLowerCase();
    current[lastKey] = line.slice(colon + 1).trim();
  }
  if (Object.keys(current).length > 0) stanzas.push(current);
  return stanzas;
}

/** Every `deb`/`deb-src` source of the machine's apt configuration as { types, uris, suites, components }. */
export function systemAptSources(etc = '/etc/apt') {
  const sources = [];
  const partsDir = join(etc, 'sources.list.d');
  const files = existsSync(partsDir) ? readdirSync(partsDir).sort() : [];
  for (const file of files.filter((f) => f.endsWith('.sources'))) {
    for (const stanza of parseDeb822(readFileSync(join(partsDir, file), 'utf8'))) {
      if (stanza.enabled?.toLowerCase() === 'no') continue;
      const words = (key) => (stanza[key] ?? '').split(/\s+/).filter(Boolean);
      sources.push({ types: words('types'), uris: words('uris'), suites: words('suites'), components: words('components') });
    }
  }
  const oneLine = [join(etc, 'sources.list'), ...files.filter((f) => f.endsWith('.list')).map((f) => join(partsDir, f))];
  for (const file of oneLine) {
    if (!existsSync(file)) continue;
    for (const raw of readFileSync(file, 'utf8').split('\n')) {
      const line = raw.replace(/#.*/, '').replace(/\[[^\]]*\]/, '').trim();
      const [type, uri, suite, ...components] = line.split(/\s+/);
      if ((type === 'deb' || type === 'deb-src') && uri && suite) sources.push({ types: [type], uris: [uri], suites: [suite], components });
    }
  }
  return sources;
}

/**
 * The Debian mirrors the machine uses: `debian` serves the release suites (bookworm, its
 * backports, sid), `security` the security suites. Throws a clear error when the apt
 * configuration names no Debian mirror at all.
 */
export function debianMirrors(etc = '/etc/apt') {
  const sources = systemAptSources(etc);
  const isSecurity = (suite) => /-security$|\/updates$/.test(suite);
  const main = sources.find((s) => s.uris.length > 0 && s.suites.some((suite) => !isSecurity(suite)));
  const security = sources.find((s) => s.uris.length > 0 && s.suites.some(isSecurity));
  if (main === undefined) {
    throw new Error(
      `no Debian mirror found in the apt configuration (${join(etc, 'sources.list.d')}/*.sources or ${join(etc, 'sources.list')}); ` +
        'add the machine\'s Debian source there first',
    );
  }
  return { debian: main.uris[0].replace(/\/+$/, ''), security: security?.uris[0]?.replace(/\/+$/, '') };
}

/**
 * apt with its own sources list, lists and cache under `dir`. `lines` are one-line sources
 * (`deb`/`deb-src` <uri> <suite> <components>); each gets `signed-by` Debian's archive keyring,
 * so an index that is not signed by Debian fails apt-get update.
 */
export class PrivateApt {
  constructor(dir, lines) {
    this.dir = dir;
    mkdirSync(join(dir, 'lists', 'partial'), { recursive: true });
    mkdirSync(join(dir, 'cache', 'archives', 'partial'), { recursive: true });
    const sourceList = join(dir, 'sources.list');
    const signed = lines.map((line) => line.replace(/^(deb(?:-src)?)\s+/, `$1 [signed-by=${DEBIAN_KEYRING}] `));
    writeFileSync(sourceList, `${signed.join('\n')}\n`);
    // An empty dpkg status: apt-cache answers about the archive, not about what this machine has installed.
    const status = join(dir, 'status');
    writeFileSync(status, '');
    this.options = [
      '-o', `Dir::Etc::SourceList=${sourceList}`,
      '-o', 'Dir::Etc::SourceParts=/dev/null',
      '-o', `Dir::State::Lists=${join(dir, 'lists')}`,
      '-o', `Dir::State::status=${status}`,
      '-o', `Dir::Cache=${join(dir, 'cache')}`,
      '-o', 'Acquire::Languages=none',
      '-o', 'APT::Get::List-Cleanup=false',
      // The private directories belong to root; apt's _apt sandbox user could not write them.
      '-o', 'APT::Sandbox::User=root',
    ];
  }

  /** apt-get with the private configuration; stderr is passed through, stdout returned. */
  getQuiet(args, cwd = this.dir) {
    return execFileSync('apt-get', [...this.options, '-q', ...args], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  }

  update() {
    this.getQuiet(['update']);
  }

  /** Versions of a binary package the private sources offer, newest first. */
  binaryVersions(pkg) {
    const result = spawnSync('apt-cache', [...this.options, 'madison', pkg], { encoding: 'utf8' });
    return parseMadison(result.stdout ?? '', 'Packages');
  }

  /** Versions of a source package the private deb-src sources offer, newest first. */
  sourceVersions(pkg) {
    const result = spawnSync('apt-cache', [...this.options, 'madison', pkg], { encoding: 'utf8' });
    return parseMadison(result.stdout ?? '', 'Sources');
  }

  /** Downloads `pkg=version` .debs into `dest` (hashes checked against the signed index). */
  download(specs, dest) {
    this.getQuiet(['download', ...specs], dest);
  }

  /**
   * The record of source package `pkg` at `version` in the private Sources indices: its pool
   * directory, files with their SHA-256 (from the signed index) and the mirror it came from.
   */
  sourceRecord(pkg, version) {
    const result = spawnSync('apt-cache', [...this.options, 'showsrc', pkg], { encoding: 'utf8' });
    for (const stanza of parseDeb822(result.stdout ?? '')) {
      if (stanza.version !== version) continue;
      const files = (stanza['checksums-sha256'] ?? '')
        .split(/\s+(?=[0-9a-f]{64}\s)/)
        .map((entry) => entry.trim().split(/\s+/))
        .filter((fields) => fields.length === 3)
        .map(([sha256, size, name]) => ({ sha256, size: Number(size), name }));
      return { directory: stanza.directory, files };
    }
    return undefined;
  }

  /**
   * Downloads one file of the archive with apt's own transport (same proxy and mirror settings)
   * and checks it against `sha256`, which comes from the signed index: nothing unverified is kept.
   */
  downloadVerified(mirror, path, dest, sha256) {
    execFileSync('/usr/lib/apt/apt-helper', [...this.options, 'download-file', `${mirror}/${path}`, dest, `SHA256:${sha256}`], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  }

  /** Downloads a source package (`pkg=version`) into `dest` without unpacking it. */
  source(spec, dest) {
    this.getQuiet(['--download-only', 'source', spec], dest);
  }
}

function parseMadison(text, kind) {
  const versions = [];
  for (const line of text.split('\n')) {
    const fields = line.split('|').map((f) => f.trim());
    if (fields.length < 3 || !fields[2].includes(kind)) continue;
    if (!versions.includes(fields[1])) versions.push(fields[1]);
  }
  return versions;
}
