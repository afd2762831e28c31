// Unit tests of the installer's decisions (no network, no root): reading the machine's apt
// sources, choosing a version when the archive moved past a pin, the series to install, and
// resolving `--qemu` specs. Run by `npm test` (node --test scripts/).
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { debianMirrors, parseDeb822, systemAptSources } from './debian-archive.mjs';
import { QemuInstallError, chooseVersion, resolveQemu, wantedSeries } from './qemu-install.mjs';
import { QEMU_RELEASES, seriesOfDebianVersion } from './qemu-releases.mjs';

const scratch = mkdtempSync(join(tmpdir(), 'qmpkit-scripts-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

function etc(files) {
  const dir = mkdtempSync(join(scratch, 'etc-'));
  mkdirSync(join(dir, 'sources.list.d'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

describe('apt sources', () => {
  it('parses deb822 stanzas with comments and continuation lines', () => {
    const stanzas = parseDeb822('# c\nTypes: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\n  bookworm-updates\n\nTypes: deb\nEnabled: no\n');
    assert.deepEqual(stanzas[0], { types: 'deb', uris: 'http://mirror.invalid/debian', suites: 'bookworm bookworm-updates' });
    assert.equal(stanzas.length, 2);
  });

  it('takes the release and security mirrors from the deb822 files, skipping disabled ones', () => {
    const dir = etc({
      'sources.list.d/a.sources': 'Types: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\nEnabled: no\n\n' +
        'Types: deb\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\n' +
        'Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n',
    });
    assert.deepEqual(debianMirrors(dir), { debian: 'http://mirror.invalid/debian', security: 'http://mirror.invalid/debian-security' });
  });

  it('reads one-line sources too', () => {
    const dir = etc({ 'sources.list': '# x\ndeb [arch=amd64] http://one.invalid/debian bookworm main\n' });
    assert.equal(systemAptSources(dir).length, 1);
    assert.equal(debianMirrors(dir).debian, 'http://one.invalid/debian');
    assert.equal(debianMirrors(dir).security, undefined);
  });

  it('fails clearly when the apt configuration names no mirror', () => {
    assert.throws(() => debianMirrors(etc({})), /no Debian mirror found in the apt configuration/);
  });
});

describe('choosing the version to install', () => {
  const release = QEMU_RELEASES['11.1'];

  it('takes the pin when the archive has it', () => {
    assert.deepEqual(chooseVersion(release, ['1:11.1.4+ds-1', release.binary]), { version: release.binary, moved: false });
  });

  it('takes the newest build of the same series when the archive moved past the pin', () => {
    assert.deepEqual(chooseVersion(release, ['1:11.1.4+ds-1', '1:11.1.10+ds-2', '1:11.2.0+ds-1']), { version: '1:11.1.10+ds-2', moved: true });
  });

  it('fails naming the pin and what the suite has when the series is gone', () => {
    assert.throws(
      () => chooseVersion(release, ['1:11.2.0+ds-1']),
      (error) => error instanceof QemuInstallError && /no longer has QEMU 11\.1: pinned 1:11\.1\.3\+ds-1, the archive offers 1:11\.2\.0\+ds-1/.test(error.message) && /QMPKIT_QEMU_SERIES=10\.0/.test(error.message),
    );
  });

  it('reads the series of Debian versions', () => {
    assert.equal(seriesOfDebianVersion('1:10.0.2+ds-2+deb13u1~bpo12+1'), '10.0');
    assert.equal(seriesOfDebianVersion('1:7.2+dfsg-7+deb12u18+b3'), '7.2');
  });
});

describe('series and binaries', () => {
  it('installs every non-system series by default, what QMPKIT_QEMU_SERIES names, or none', () => {
    assert.deepEqual(wantedSeries(undefined), ['10.0', '11.1']);
    assert.deepEqual(wantedSeries('11.1, 7.2'), ['11.1']);
    assert.deepEqual(wantedSeries('none'), []);
    assert.throws(() => wantedSeries('9.9'), /unknown series 9\.9/);
  });

  it('resolves a directory of tools, a tool, and refuses a directory without qemu-system-x86_64', () => {
    const bin = join(scratch, 'bin');
    mkdirSync(join(bin), { recursive: true });
    for (const tool of ['qemu-system-x86_64', 'qemu-img']) {
      writeFileSync(join(bin, tool), '#!/bin/sh\n');
      chmodSync(join(bin, tool), 0o755);
    }
    assert.equal(resolveQemu(bin).binaries['qemu-img'], join(bin, 'qemu-img'));
    assert.equal(resolveQemu(join(bin, 'qemu-img')).binDir, bin);
    assert.equal(resolveQemu(scratch).binDir, bin);
    assert.throws(() => resolveQemu(join(scratch, 'nope')), /no such file or directory/);
    assert.throws(() => resolveQemu('9.9'), /not a supported release/);
    const empty = mkdtempSync(join(scratch, 'empty-'));
    assert.throws(() => resolveQemu(empty), /holds no qemu-system-x86_64/);
  });

  it('names the installer when a release is not installed under the prefix', () => {
    assert.throws(() => resolveQemu('10.0', join(scratch, 'no-prefix')), /QEMU 10\.0 is not installed under .*qemu-install\.mjs 10\.0/);
  });
});
