import { QmpClient, type ExecuteParameters, type QmpClientFor, type QmpEventMessage } from '../src/index.js';
import { FakeQmpServer } from './support/fake-server.js';

// Compile-time checks (the package's typecheck covers test/): each @ts-expect-error line
// fails the build if the misuse below it starts to compile.
interface Commands {
  'query-block': { args: Record<string, never>; returns: { device: string; locked: boolean }[] };
  'block-dirty-bitmap-add': { args: { node: string; name: string; granularity?: number }; returns: Record<string, never> };
  'block-job-cancel': { args: { device: string; force?: boolean }; returns: Record<string, never> };
  'query-jobs': { args: { optional?: boolean }; returns: { id: string }[] };
}
interface Events {
  BLOCK_JOB_COMPLETED: { device: string; len: number };
  STOP: Record<string, never>;
}

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
function assertType<T extends true>(value: T): T {
  return value;
}

async function typedCalls(qmp: QmpClient<Commands, Events>): Promise<void> {
  const blocks = await qmp.execute('query-block');
  assertType<Equal<typeof blocks, { device: string; locked: boolean }[]>>(true);
  await qmp.execute('query-jobs');
  await qmp.execute('block-dirty-bitmap-add', { node: 'node0', name: 'bitmap0' }, { timeout: 1000 });
  // @ts-expect-error -- required arguments cannot be left out
  await qmp.execute('block-dirty-bitmap-add');
  // @ts-expect-error -- a misspelt member is refused
  await qmp.execute('block-job-cancel', { devcie: 'drive0' });
  // @ts-expect-error -- unknown command names are refused
  await qmp.execute('query-blocks');
  const event = await qmp.events.wait('BLOCK_JOB_COMPLETED', { match: { data: { device: 'drive0' } } });
  assertType<Equal<typeof event.data.len, number>>(true);
  // @ts-expect-error -- match is checked against the event's shape
  await qmp.events.wait('BLOCK_JOB_COMPLETED', { match: { data: { device: 0 } } });
  qmp.events.on('STOP', (stop) => assertType<Equal<typeof stop.event, 'STOP'>>(true));
  qmp.events.on('event', (ev: QmpEventMessage<Events>) => {
    if (ev.event === 'BLOCK_JOB_COMPLETED') assertType<Equal<typeof ev.data.device, string>>(true);
  });
  // With a map of its own the client cannot know which commands allow out-of-band use: any.
  await qmp.executeOob('query-jobs');
  using all = qmp.events.listen();
  const any = await all.wait({ timeout: 1 });
  assertType<Equal<typeof any.event, 'BLOCK_JOB_COMPLETED' | 'STOP'>>(true);
  using stops = qmp.events.listen('STOP', { history: true, capacity: 10 });
  const drained = stops.drain();
  assertType<Equal<(typeof drained)[number]['event'], 'STOP'>>(true);
}

async function restrictedOob(qmp: QmpClient<Commands, Events, 'block-job-cancel'>): Promise<void> {
  await qmp.executeOob('block-job-cancel', { device: 'drive0' });
  // @ts-expect-error -- the third type parameter names the out-of-band commands
  await qmp.executeOob('query-jobs');
}

test('ExecuteParameters makes args optional exactly when nothing is required', async () => {
  assertType<Equal<ExecuteParameters<{ a?: number }>[0], { a?: number } | undefined>>(true);
  assertType<Equal<ExecuteParameters<{ a: number }>['length'], 1 | 2>>(true);
  // The typed client at run time, against the scripted server.
  const server = await FakeQmpServer.start();
  try {
    const accepted = server.accept();
    const connecting = QmpClient.connect<Commands, Events>(server.path, { connectTimeout: 5000 });
    const connection = await accepted;
    await connection.handshake();
    const qmp = await connecting;
    const call = qmp.execute('query-block');
    await connection.reply([{ device: 'drive0', locked: false }]);
    const blocks = await call;
    expect(blocks[0]?.device).toBe('drive0');
    expect(typeof typedCalls).toBe('function');
    expect(typeof restrictedOob).toBe('function');
    await qmp.close({ timeout: 100 });
  } finally {
    await server.close();
  }
});

// QmpClientFor<series>: the maps of that release; members a release added compile only there.
function typedPerRelease(q72: QmpClientFor<'7.2'>, q100: QmpClientFor<'10.0'>): void {
  void q100.execute('blockdev-backup', { device: 'd', target: 't', sync: 'full', 'discard-source': true });
  // @ts-expect-error discard-source is new in 9.1: QEMU 7.2's blockdev-backup has no such member
  void q72.execute('blockdev-backup', { device: 'd', target: 't', sync: 'full', 'discard-source': true });
  void q100.execute('blockdev-set-active', { active: true });
  // @ts-expect-error blockdev-set-active is new in 10.0
  void q72.execute('blockdev-set-active', { active: true });
}
void typedPerRelease;
