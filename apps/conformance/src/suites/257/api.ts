import { join } from 'node:path';

import { addBitmap, addNode, createTargetNode, startBlockdevBackup, type BitmapSyncMode, type BlockdevBackup } from '@qmpkit/backup';
import { QmpCommandError } from '@qmpkit/client';
import { createQcow2Image } from '@qmpkit/image-tools';
import { QemuMachine } from '@qmpkit/machine';

import type { CaseContext, FixtureScope, SharedFixture } from '../../context.js';
import { CaseAssertionError } from '../../errors.js';
import type { CaseDefinition } from '../../runner.js';
import { versionText, type QemuVersion } from './expectations.js';
import { GRANULARITY, SIZE } from './model.js';

// iotest 257's table of blockdev-backup calls QEMU must refuse: every sync mode with no bitmap,
// a bitmap that does not exist and bitmap0, each with the bitmap sync modes (or none) that make
// the call invalid. All rows run against one QEMU, as in the reference: drive0, a target node
// and bitmap0 are set up once per run, and every call must be refused before a job exists.

type ApiSync = 'incremental' | 'bitmap' | 'full' | 'top' | 'none';
type ApiBitmap = 'bitmap404' | 'bitmap0' | undefined;

export interface ApiRow {
  sync: ApiSync;
  bitmap: ApiBitmap;
  mode: BitmapSyncMode | undefined;
}

const MODES: ReadonlyArray<BitmapSyncMode | undefined> = ['on-success', 'always', 'never', undefined];
const EXPLICIT_MODES: readonly BitmapSyncMode[] = ['on-success', 'always', 'never'];

/** The rows in the reference's order: sync mode, then no bitmap / bitmap404 / bitmap0, then mode. */
export const API_ROWS: readonly ApiRow[] = (() => {
  const table: Record<ApiSync, Array<[ApiBitmap, ReadonlyArray<BitmapSyncMode | undefined>]>> = {
    // 'incremental' implies on-success; with bitmap0 and on-success (or no mode) it would run.
    incremental: [[undefined, MODES], ['bitmap404', MODES], ['bitmap0', ['always', 'never']]],
    bitmap: [[undefined, MODES], ['bitmap404', MODES], ['bitmap0', [undefined]]],
    full: [[undefined, EXPLICIT_MODES], ['bitmap404', MODES], ['bitmap0', ['never', undefined]]],
    top: [[undefined, EXPLICIT_MODES], ['bitmap404', MODES], ['bitmap0', ['never', undefined]]],
    none: [[undefined, EXPLICIT_MODES], ['bitmap404', MODES], ['bitmap0', MODES]],
  };
  return (Object.keys(table) as ApiSync[]).flatMap((sync) =>
    table[sync].flatMap(([bitmap, modes]) => modes.map((mode) => ({ sync, bitmap, mode }))),
  );
})();

export function apiCaseId(row: ApiRow): string {
  return `257.api.${row.sync}.${row.bitmap ?? 'no-bitmap'}.${row.mode ?? 'no-mode'}`;
}

/**
 * QEMU's reason for refusing a row (QMP error class GenericError for all of them), in the
 * order QEMU checks: a bitmap for the bitmap sync modes, 'incremental' only with 'on-success',
 * the bitmap exists, a bitmap needs a bitmap mode, 'none' makes no bitmap, 'never' is pointless
 * for a full copy ('full', 'top'), a bitmap mode needs a bitmap. Unchanged in QEMU 7.2 .. 11.
 */
export function expectedRefusal(row: ApiRow, _version: QemuVersion): string {
  const { sync, bitmap, mode } = row;
  if ((sync === 'incremental' || sync === 'bitmap') && bitmap === undefined) {
    return `must provide a valid bitmap name for '${sync}' sync mode`;
  }
  if (sync === 'incremental' && mode !== undefined && mode !== 'on-success') {
    return "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'";
  }
  if (bitmap === 'bitmap404') return "Bitmap 'bitmap404' could not be found";
  if (bitmap !== undefined && mode === undefined && sync !== 'incremental') {
    return 'Bitmap sync mode must be given when providing a bitmap';
  }
  if (bitmap !== undefined && sync === 'none') return "sync mode 'none' does not produce meaningful bitmap outputs";
  if (bitmap !== undefined && mode === 'never' && (sync === 'full' || sync === 'top')) {
    return `Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '${sync}'`;
  }
  if (bitmap === undefined && mode !== undefined) return 'Cannot specify bitmap sync mode without a bitmap';
  throw new Error(`row ${apiCaseId(row)} is not refused by QEMU`);
}

/** Key of the run-wide API machine (see `RunFixtures`). */
export const API_MACHINE = '257.api.machine';

export interface ApiMachine {
  vm: QemuMachine;
  version: QemuVersion;
}

/** One QEMU for every row: drive0 (empty 64 MiB qcow2), target node backup_target, bitmap0. */
export async function launchApiMachine(scope: FixtureScope): Promise<SharedFixture<ApiMachine>> {
  const vm = new QemuMachine({
    ...(scope.tools.qemuSystem === undefined ? {} : { binary: scope.tools.qemuSystem }),
    tmpDir: scope.runDir,
    logFile: join(scope.runDir, '257-api-qemu.log'),
  });
  const kill = (): void => {
    vm.kill('SIGKILL');
  };
  scope.signal.addEventListener('abort', kill, { once: true });
  const call = { signal: scope.signal };
  try {
    const img = join(scope.runDir, '257-api-img');
    await Promise.all([createQcow2Image(img, { size: SIZE }, call), vm.launch({ ...call, timeout: 30_000 })]);
    const version = vm.qmp.version.qemu;
    const pkg = vm.qmp.version.package.trim();
    scope.observer.onVersion(`${versionText(version)}${pkg ? ` (${pkg})` : ''}`);
    await addNode(vm.qmp, { driver: 'qcow2', 'node-name': 'drive0', file: { driver: 'file', filename: img } }, call);
    await createTargetNode(vm.qmp, { nodeName: 'backup_target', filename: join(scope.runDir, '257-api-bsync1'), size: SIZE }, call);
    await addBitmap(vm.qmp, { node: 'drive0', name: 'bitmap0', granularity: GRANULARITY }, call);
    return {
      value: { vm, version },
      dispose: async () => {
        scope.signal.removeEventListener('abort', kill);
        await vm.shutdown({ timeout: 5_000 }).catch(kill);
      },
    };
  } catch (error) {
    kill();
    await vm.waitForExit({ timeout: 5_000 }).catch(() => undefined);
    throw error;
  }
}

async function refusedCall(ctx: CaseContext, row: ApiRow): Promise<void> {
  const { vm, version } = await ctx.shared(API_MACHINE, launchApiMachine);
  const expected = expectedRefusal(row, version);
  const args: BlockdevBackup = {
    'job-id': 'api_job',
    device: 'drive0',
    target: 'backup_target',
    sync: row.sync,
    'filter-node-name': 'backup-top',
    'x-perf': { 'max-workers': 1 },
    ...(row.bitmap === undefined ? {} : { bitmap: row.bitmap }),
    ...(row.mode === undefined ? {} : { 'bitmap-mode': row.mode }),
  };
  const check = `blockdev-backup ${JSON.stringify({ sync: row.sync, bitmap: row.bitmap ?? null, 'bitmap-mode': row.mode ?? null })} (QEMU ${versionText(version)})`;
  await ctx.checking('qmp-refusal', async () => {
    let job;
    try {
      job = await startBlockdevBackup(vm.qmp, args, { signal: ctx.signal });
    } catch (error) {
      if (QmpCommandError.isInstance(error)) {
        const got = { class: error.errorClass, desc: error.desc };
        if (got.class !== 'GenericError' || got.desc !== expected) {
          throw new CaseAssertionError(`${check}: QEMU's error`, { class: 'GenericError', desc: expected }, got, { cause: error });
        }
        return;
      }
      throw error;
    }
    // QEMU accepted it: stop the job so the rows after this one see the machine as it was.
    await job.cancel({ force: true, signal: ctx.signal }).catch(() => undefined);
    await job.result.catch(() => undefined);
    throw new CaseAssertionError(`${check} is refused`, { class: 'GenericError', desc: expected }, 'a job was started');
  });
}

export const apiCases: ReadonlyArray<CaseDefinition<CaseContext>> = API_ROWS.map((row) => ({
  id: apiCaseId(row),
  weight: 0.2,
  run: (ctx: CaseContext) => refusedCall(ctx, row),
}));
