// Where the qemu-system-x86_64 of each supported series is on this machine: 7.2 is the system's
// (on PATH); newer series are the wrappers scripts/qemu-install.mjs puts under
// /opt/qmpkit-qemu/<series>/bin ($QMPKIT_QEMU_PREFIX), described by <series>/qemu.json.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface SeriesBinary {
  readonly series: string;
  /** The emulator to start, or undefined when the series is not installed here. */
  readonly binary: string | undefined;
  /** Why the series is not checked on this machine (only when it was left out on purpose). */
  readonly skipReason?: string;
}

const SYSTEM_SERIES = '7.2';

/** Series the set-up was told to leave out ($QMPKIT_QEMU_SERIES, as scripts/qemu-install.mjs reads it). */
function excludedByEnvironment(series: string): boolean {
  const value = process.env.QMPKIT_QEMU_SERIES?.trim();
  if (value === undefined || value === '' || value === 'all') return false;
  if (value === 'none') return true;
  return !value.split(',').map((s) => s.trim()).includes(series);
}

export function seriesBinary(series: string): SeriesBinary {
  if (series === SYSTEM_SERIES) return { series, binary: 'qemu-system-x86_64' };
  const manifest = join(process.env.QMPKIT_QEMU_PREFIX ?? '/opt/qmpkit-qemu', series, 'qemu.json');
  if (existsSync(manifest)) {
    const parsed = JSON.parse(readFileSync(manifest, 'utf8')) as { binaries?: Record<string, string> };
    return { series, binary: parsed.binaries?.['qemu-system-x86_64'] };
  }
  if (excludedByEnvironment(series)) {
    return { series, binary: undefined, skipReason: `QEMU ${series} is left out by QMPKIT_QEMU_SERIES=${process.env.QMPKIT_QEMU_SERIES ?? ''}` };
  }
  // Not installed and not left out on purpose: the test fails and names the installer.
  return { series, binary: undefined };
}
