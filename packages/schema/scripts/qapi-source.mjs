// The pinned QAPI inputs: Debian's `qemu` source package of each supported release, as listed
// (with the binaries built from them) in the repository's scripts/qemu-releases.mjs.
import { join } from 'node:path';

export { QEMU_RELEASES, QEMU_SERIES } from '../../../scripts/qemu-releases.mjs';

export const QEMU_SOURCE_PACKAGE = 'qemu';

/** packages/schema/qapi-src/<series>: where fetch-qapi.mjs puts the input of one series. */
export function qapiSourceDir(packageDir, series) {
  return join(packageDir, 'qapi-src', series);
}
