// The qemu-img and qemu-io of each QEMU series supported here: 7.2 is the system's (on PATH);
// newer series are installed by the set-up under /opt/qmpkit-qemu/<series> ($QMPKIT_QEMU_PREFIX),
// described by <series>/qemu.json. For tests that hold images against every series at once,
// where that is cheap (check, info, compare, a few reads).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { QemuImg, QemuIo } from '../src/index.js';

export const SERIES = ['7.2', '10.0', '11.1'] as const;

export interface SeriesTools {
  series: string;
  qemuImg: QemuImg;
  qemuIo: QemuIo;
}

/**
 * The tools of `series`. A series that is not installed fails the test and names the set-up,
 * unless $QMPKIT_QEMU_SERIES leaves it out on purpose: then undefined, with the reason.
 */
export function seriesTools(series: string): SeriesTools | { series: string; missing: string } {
  if (series === '7.2') return { series, qemuImg: new QemuImg({ binary: '/usr/bin/qemu-img' }), qemuIo: new QemuIo({ binary: '/usr/bin/qemu-io' }) };
  const manifest = join(process.env['QMPKIT_QEMU_PREFIX'] ?? '/opt/qmpkit-qemu', series, 'qemu.json');
  if (existsSync(manifest)) {
    const parsed = JSON.parse(readFileSync(manifest, 'utf8')) as { binaries?: Record<string, string> };
    const img = parsed.binaries?.['qemu-img'];
    const io = parsed.binaries?.['qemu-io'];
    if (img !== undefined && io !== undefined) return { series, qemuImg: new QemuImg({ binary: img }), qemuIo: new QemuIo({ binary: io }) };
  }
  const wanted = process.env['QMPKIT_QEMU_SERIES']?.trim();
  if (wanted === 'none' || (wanted !== undefined && wanted !== '' && wanted !== 'all' && !wanted.split(',').map((s) => s.trim()).includes(series))) {
    return { series, missing: `QEMU ${series} is left out by QMPKIT_QEMU_SERIES=${wanted}` };
  }
  throw new Error(`QEMU ${series} is not installed under ${manifest}: run \`npm run setup\``);
}
