// Runtime schema facts of every generated QEMU series, for clients that check what the QEMU
// they are connected to understands (see @qmpkit/client's QmpSchemaChecker).
import { type QemuSeries, type QmpSchemaMaps, type QmpSchemaVersion, qmpSchemaVersions } from './generated/versions.js';

export type { QmpCommandArguments, QmpCommandInfo, QmpEventInfo } from './generated/qemu-7.2/index.js';
export { type QemuSeries, type QmpSchemaMaps, type QmpSchemaVersion, qmpSchemaVersions };

/** Every series with generated types, oldest first: `['7.2', '10.0', ...]`. */
export const qemuSeries: readonly QemuSeries[] = qmpSchemaVersions.map((v) => v.series);

/**
 * The generated schema of the series `version` belongs to (same major.minor), e.g. from the
 * QMP greeting's `version.qemu`; undefined for a release without generated types.
 */
export function findQmpSchemaVersion(version: { readonly major: number; readonly minor: number }): QmpSchemaVersion | undefined {
  return qmpSchemaVersions.find((v) => v.series === `${version.major}.${version.minor}`);
}

/**
 * The generated schema to judge a QEMU of `version` by when its own series has none: the newest
 * older series (what a newer QEMU deprecated is at least what its predecessor did), or undefined
 * for a QEMU older than every generated series.
 */
export function nearestQmpSchemaVersion(version: { readonly major: number; readonly minor: number }): QmpSchemaVersion | undefined {
  const exact = findQmpSchemaVersion(version);
  if (exact !== undefined) return exact;
  const older = qmpSchemaVersions.filter((v) => {
    const [major = 0, minor = 0] = v.series.split('.').map(Number);
    return major < version.major || (major === version.major && minor < version.minor);
  });
  return older[older.length - 1];
}
