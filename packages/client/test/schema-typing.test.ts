import type { BlockInfo, QapiErrorClass, StatusInfo } from '@qmpkit/schema';
import { QmpClient, QmpCommandError } from '../src/index.js';
import { startQemu } from './support/qemu.js';

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
function assertType<T extends true>(value: T): T {
  return value;
}

// Without type arguments the client is typed by @qmpkit/schema's QmpCommands and QmpEvents.
// The function is type-checked by the package's typecheck; the test below runs it.
async function defaults(qmp: QmpClient): Promise<{ blocks: BlockInfo[]; status: StatusInfo }> {
  const blocks = await qmp.execute('query-block');
  assertType<Equal<typeof blocks, BlockInfo[]>>(true);
  const status = await qmp.execute('query-status', {}, { timeout: 5000 });
  // @ts-expect-error -- block-dirty-bitmap-add requires node and name
  void qmp.execute('block-dirty-bitmap-add').catch(() => undefined);
  // @ts-expect-error -- not a QEMU 7.2 command
  void qmp.execute('query-blocks').catch(() => undefined);
  qmp.events.on('BLOCK_JOB_COMPLETED', (event) => {
    assertType<Equal<typeof event.data.device, string>>(true);
  });
  // Only the commands QEMU's schema marks allow-oob can go out of band.
  void qmp.executeOob('migrate-pause').catch(() => undefined);
  void qmp.executeOob('yank', { instances: [] }).catch(() => undefined);
  // @ts-expect-error -- query-status is not allow-oob
  void qmp.executeOob('query-status').catch(() => undefined);
  // A command error's class is QAPI's QapiErrorClass.
  void qmp.execute('query-status').catch((error: unknown) => {
    if (QmpCommandError.isInstance(error)) assertType<Equal<typeof error.errorClass, QapiErrorClass>>(true);
  });
  // A listener's events are typed by its names.
  using jobs = qmp.events.listen(['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED']);
  const ended = await jobs.wait({ match: { data: { device: 'drive0' } }, timeout: 1 }).catch(() => undefined);
  if (ended?.event === 'BLOCK_JOB_COMPLETED') assertType<Equal<typeof ended.data.error, string | undefined>>(true);
  // @ts-expect-error -- STOP is not one of the listener's names
  void jobs.wait('STOP').catch(() => undefined);
  return { blocks, status };
}

test('schema-typed calls against a real QEMU, and the deprecation hook', async () => {
  const qemu = await startQemu();
  try {
    const deprecated: string[] = [];
    const qmp = await QmpClient.connect(qemu.socket, {
      connectTimeout: 20_000,
      onDeprecatedCommand: (name, info) => {
        if (info.deprecated) deprecated.push(name);
      },
    });
    try {
      const { blocks, status } = await defaults(qmp);
      expect(blocks).toEqual([]);
      expect(status.status).toBe('running');
      // drive-backup carries the `deprecated` feature since QEMU 6.2; the hook fires before
      // sending, whatever QEMU then answers (here: no such device).
      const error = await qmp
        .execute('drive-backup', { device: 'drive0', target: '/dev/null', sync: 'full' })
        .catch((e: unknown) => e);
      expect(error).toMatchObject({ errorClass: 'GenericError' });
      expect(deprecated).toEqual(['drive-backup']);
      await qmp.execute('query-version');
      expect(deprecated).toEqual(['drive-backup']);
    } finally {
      await qmp.close();
    }
  } finally {
    await qemu.stop();
  }
});
