// The QEMU releases qmpkit supports, each pinned to the Debian build it is typed and tested
// against. One table for the installer (scripts/qemu-install.mjs), the schema's QAPI input
// (packages/schema/scripts/fetch-qapi.mjs), the test matrix and `npm run conformance -- --qemu`.
//
// `source` is the version of Debian's `qemu` source package the schema is generated from, found
// in `sourceSuites`; `binary` the version of the binary packages installed from `suites`
// (Debian's binNMUs add `+bN` to it).
// When the archive moves on (sid changes daily, backports every few weeks) the installer takes
// a newer build of the SAME series (the QAPI schema does not change within a stable series,
// and the parity test checks it against the binary), records what it installed, and says so;
// a suite that no longer has the series at all is a clear failure naming this file. Bump a
// pin here, then `pnpm --filter @qmpkit/schema run generate`.
export const QEMU_RELEASES = {
  '7.2': {
    series: '7.2',
    // The system QEMU: Debian 12's own packages, installed with apt by scripts/run.mjs.
    install: 'system',
    suites: ['bookworm', 'bookworm-updates', 'bookworm-security'],
    sourceSuites: ['bookworm', 'bookworm-updates', 'bookworm-security'],
    source: '1:7.2+dfsg-7+deb12u18',
    binary: '1:7.2+dfsg-7+deb12u18+b3',
  },
  '10.0': {
    series: '10.0',
    // Built for Debian 12: the debs are unpacked beside the system QEMU and run with its libraries.
    install: 'unpack',
    suites: ['bookworm-backports'],
    // This machine's mirror serves the backport source package's upstream tarball but not its
    // .dsc and debian tarball, so the schema comes from the upstream tarball alone (checked
    // against the signed Sources index; `sourceParts: 'orig'`), without Debian's patches. That
    // is exactly what the installed binary reports (the parity test: zero mismatches); Debian
    // 13's 10.0.13 source, which is served, adds a blkdebug member 10.0.2 does not have.
    sourceSuites: ['bookworm-backports'],
    source: '1:10.0.2+ds-2+deb13u1~bpo12+1',
    sourceParts: 'orig',
    binary: '1:10.0.2+ds-2+deb13u1~bpo12+1',
  },
  '11.1': {
    series: '11.1',
    // Built against sid's libraries: a minbase sid tree, binaries started by the tree's loader.
    install: 'debootstrap',
    suites: ['sid'],
    sourceSuites: ['sid'],
    source: '1:11.1.3+ds-1',
    binary: '1:11.1.3+ds-1',
  },
};

/** Series in ascending order: '7.2', '10.0', '11.1'. */
export const QEMU_SERIES = Object.keys(QEMU_RELEASES).sort((a, b) => compareSeries(a, b));

/** The newest supported series. */
export const NEWEST_SERIES = QEMU_SERIES[QEMU_SERIES.length - 1];

export function compareSeries(a, b) {
  const [amaj, amin] = a.split('.').map(Number);
  const [bmaj, bmin] = b.split('.').map(Number);
  return amaj - bmaj || amin - bmin;
}

/** '10.0' for '1:10.0.2+ds-2+deb13u1~bpo12+1' (epoch and Debian revision stripped). */
export function seriesOfDebianVersion(version) {
  const upstream = version.replace(/^\d+:/, '');
  const match = /^(\d+)\.(\d+)/.exec(upstream);
  return match === null ? undefined : `${match[1]}.${match[2]}`;
}
