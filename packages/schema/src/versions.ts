// Runtime schema facts of every generated QEMU series, for clients that check what the QEMU
// they are connected to understands (see @qmpkit/client's QmpSchemaChecker).
import { type QemuSeries, type QmpSchemaVersion, qmpSchemaVersions } from './generated/versions.js';

export type { QmpCommandArguments, QmpCommandInfo, QmpEventInfo } from './generated/qemu-7.2/index.js';
export { type QemuSeries, type QmpSchemaVersion, qmpSchemaVersions };

/** Every series with generated types, oldest first: `['7.2', '10.0', ...]`. */
export const qemuSeries: readonly QemuSeries[] = qmpSchemaVersions.map((v) => v.series);

/**
 * The generated schema of the series `version` belongs to (same major.minor), e.g. from the
 * QMP greeting's `version.qemu`; undefined for a release without generated types.
 */
export function findQmpSchemaVersion(version: { readonly major: number; readonly minor: number }): QmpSchemaVersion | undefined {
  return qmpSchemaVersions.find((v) => v.series === `${version.major}.${version.minor}`);
}
