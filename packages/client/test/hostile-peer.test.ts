/**
 * @jest-environment ./test/support/host-process-environment.cjs
 */
// Property-based fuzzing of what a QMP peer sends, at every phase of a connection: before
// and as its greeting, while negotiating, and as replies and events afterwards, cut into
// random pieces. Every run must end in correct replies or named qmpkit errors within the
// timeouts, with no uncaught exception, no unhandled rejection and no handle left open.
//
// Each script item is valid, poison (breaks the protocol by itself: POISON) or garbage
// (arbitrary bytes, whose effect depends on what follows). That gives an exact oracle until
// the first non-valid item: before it everything must work; after a poison everything
// pending must fail at once with a QmpConnectionError caused by a QmpProtocolError (a
// timeout instead means the client went deaf); after garbage only "correct or a named
// error" can be asked. Timeouts are short only where the script makes one the expected
// outcome, so a slow machine cannot turn a correct run into a failure.
//
// Runs per property are below; QMPKIT_FUZZ_RUNS=<factor> multiplies them for a longer search.
import fc from 'fast-check';
import {
  QmpClient,
  QmpCommandError,
  QmpConnectionError,
  QmpError,
  QmpNegotiationError,
  QmpProtocolError,
  QmpTimeoutError,
  type LooseCommands,
  type LooseEvents,
} from '../src/index.js';
import { FakeQmpServer, POISON, playPeerScript, type FakeConnection, type PeerItem, type PeerScript } from './support/fake-server.js';

const FACTOR = Math.max(1, Number(process.env['QMPKIT_FUZZ_RUNS'] ?? 1) || 1);
export const RUNS = {
  beforeGreeting: 60 * FACTOR,
  negotiation: 80 * FACTOR,
  afterNegotiation: 150 * FACTOR,
  anywhere: 40 * FACTOR,
};

/** A timeout that should never fire in a run that goes as it should, even on a loaded machine. */
const LONG = 10_000;
/** The timeout of an operation the script leaves unanswered on purpose. */
const SHORT = 150;
/** After garbage any named error is a correct outcome, a timeout too; this just bounds the run. */
const MEDIUM = 500;

const KNOWN_CLASSES = ['GenericError', 'CommandNotFound', 'DeviceNotActive', 'DeviceNotFound', 'KVMMissingCap'];

// --- the process-level watch ----------------------------------------------------------------

interface HostProcess {
  prependListener(event: string, listener: (...args: unknown[]) => void): void;
  off(event: string, listener: (...args: unknown[]) => void): void;
  getActiveResourcesInfo(): string[];
}
const host = (globalThis as unknown as { qmpkitHostProcess?: HostProcess }).qmpkitHostProcess;
const escaped: string[] = [];
const onUncaught = (error: unknown): void => {
  escaped.push(`uncaught exception: ${String((error as Error)?.stack ?? error)}`);
};
const onUnhandled = (reason: unknown): void => {
  escaped.push(`unhandled rejection: ${String((reason as Error)?.stack ?? reason)}`);
};

beforeAll(() => {
  if (host === undefined) throw new Error('run with the host-process test environment (see the docblock)');
  host.prependListener('uncaughtException', onUncaught);
  host.prependListener('unhandledRejection', onUnhandled);
});
afterAll(() => {
  host?.off('uncaughtException', onUncaught);
  host?.off('unhandledRejection', onUnhandled);
});

function resourceCounts(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const kind of host?.getActiveResourcesInfo() ?? []) counts.set(kind, (counts.get(kind) ?? 0) + 1);
  return counts;
}

/** Waits until no more sockets, timers or watchers are open than at `baseline`; fails with the surplus. */
async function expectNoLeftoverHandles(baseline: Map<string, number>): Promise<void> {
  const deadline = Date.now() + 3000;
  for (;;) {
    const surplus = [...resourceCounts()].filter(([kind, n]) => n > (baseline.get(kind) ?? 0));
    if (surplus.length === 0) return;
    if (Date.now() > deadline) throw new Error(`handles left open: ${JSON.stringify(surplus)}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

// --- arbitraries ----------------------------------------------------------------------------

const json = fc.jsonValue({ maxDepth: 3 });
const eventItem: fc.Arbitrary<PeerItem> = fc.record({
  kind: fc.constant('event' as const),
  name: fc.constantFrom('STOP', 'RESUME', 'BLOCK_JOB_COMPLETED', 'X_FROM_A_NEWER_QEMU'),
  data: fc.option(fc.dictionary(fc.string({ maxLength: 6 }), json, { maxKeys: 3 }), { nil: undefined }),
  pretty: fc.boolean(),
});
const spaceItem: fc.Arbitrary<PeerItem> = fc.record({
  kind: fc.constant('space' as const),
  text: fc.constantFrom('\n', '\r\n', ' ', '\t\n  '),
});
const strayItem: fc.Arbitrary<PeerItem> = fc.record({
  kind: fc.constant('stray' as const),
  id: fc.integer({ min: 1000, max: 2 ** 40 }),
  value: json,
});
const poisonItem: fc.Arbitrary<PeerItem> = fc.record({ kind: fc.constant('poison' as const), text: fc.constantFrom(...POISON) });
const nearMessages = ['{"return": {}, "id": 1}\n', '{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}\n', '{"error": {"class": "GenericError", "desc": "x"}}\n'];
const garbageItem: fc.Arbitrary<PeerItem> = fc.oneof(
  fc.uint8Array({ maxLength: 24 }),
  fc.string({ maxLength: 24 }).map((text) => new Uint8Array(Buffer.from(text))),
  fc.constantFrom('{', '}', '[', ']', '"', '\\', ':', ',', '{"', '\n', '\xff').map((text) => new Uint8Array(Buffer.from(text, 'latin1'))),
  // A valid message with one byte changed, inserted or removed: mostly near misses.
  fc.tuple(fc.constantFrom(...nearMessages), fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom('set', 'insert', 'delete')).map(
    ([text, at, byte, how]) => {
      const bytes = [...Buffer.from(text)];
      const i = at % bytes.length;
      if (how === 'set') bytes[i] = byte;
      else if (how === 'insert') bytes.splice(i, 0, byte);
      else bytes.splice(i, 1);
      return new Uint8Array(bytes);
    },
  ),
).map((bytes) => ({ kind: 'garbage' as const, bytes }));

const cuts = fc.array(fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }), { maxLength: 6 });

function replyItems(commands: number): fc.Arbitrary<PeerItem> {
  const command = fc.nat({ max: commands - 1 });
  return fc.oneof(
    fc.record({ kind: fc.constant('reply' as const), command, value: json, pretty: fc.boolean() }),
    fc.record({
      kind: fc.constant('error' as const),
      command,
      errorClass: fc.constantFrom(...KNOWN_CLASSES, 'ClassFromANewerQemu'),
      desc: fc.string({ maxLength: 20 }),
      pretty: fc.boolean(),
    }),
  );
}

/** Valid items, with poison and garbage at the given weights (out of 20). */
function items(valid: fc.Arbitrary<PeerItem>, poison: number, garbage: number, maxLength = 6): fc.Arbitrary<PeerItem[]> {
  return fc.array(
    fc.oneof({ arbitrary: valid, weight: 20 - poison - garbage }, { arbitrary: poisonItem, weight: poison }, { arbitrary: garbageItem, weight: garbage }),
    { maxLength },
  );
}

const cleanEnd = fc.constantFrom<PeerScript['end']>('close', 'destroy');

// --- one run and its oracle -----------------------------------------------------------------

type Status = 'valid' | 'poisoned' | 'unknown';

function after(status: Status, item: PeerItem | 'poison' | 'garbage'): Status {
  if (status !== 'valid') return status;
  const kind = typeof item === 'string' ? item : item.kind;
  return kind === 'poison' ? 'poisoned' : kind === 'garbage' ? 'unknown' : 'valid';
}

/** The stream state after `list`, starting from `status`. */
function through(status: Status, list: readonly PeerItem[]): Status {
  return list.reduce(after, status);
}

interface Expectation {
  connect: 'ok' | 'negotiation-error' | 'timeout' | 'fails-at-once' | 'any';
  /** Per command: its reply item (when there is one) and the stream state just before it. */
  commands: Array<{ reply: PeerItem | undefined; status: Status }>;
  /** Events that must arrive (in order) when the run stays definite; undefined when unknown. */
  events: PeerItem[] | undefined;
}

function expectationOf(script: PeerScript): Expectation {
  let status: Status = through('valid', script.preGreeting);
  const events: PeerItem[] = [];
  const collect = (list: readonly PeerItem[], from: Status): Status => {
    let s = from;
    for (const item of list) {
      s = after(s, item);
      if (s === 'valid' && item.kind === 'event') events.push(item);
    }
    return s;
  };
  collect(script.preGreeting, 'valid');
  if (script.greeting !== 'valid' && script.greeting !== 'none') status = after(status, script.greeting.kind);
  const greeted = script.greeting !== 'none';
  status = collect(script.negotiation.items, status);
  let connect: Expectation['connect'];
  if (status === 'poisoned') connect = 'fails-at-once';
  else if (status === 'unknown') connect = 'any';
  else if (!greeted) connect = 'timeout';
  else {
    const answer = script.negotiation.answer;
    connect = answer === 'refuse' ? 'negotiation-error' : answer === 'silence' ? 'timeout' : 'ok';
  }
  const commands: Expectation['commands'] = [];
  for (let i = 0; i < script.commands; i++) {
    let s = status;
    let reply: PeerItem | undefined;
    for (const item of script.items) {
      if ((item.kind === 'reply' || item.kind === 'error') && item.command === i) {
        reply = item;
        break;
      }
      s = after(s, item);
    }
    commands.push({ reply, status: reply === undefined ? through(status, script.items) : s });
  }
  const final = collect(script.items, status);
  return { connect, commands, events: final === 'unknown' || status === 'unknown' ? undefined : events };
}

function describe(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/** Settles `promise` or fails the run when it does not settle within `ms` (a hang). */
async function settled<T>(promise: Promise<T>, ms: number, what: string): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise.then((value) => ({ ok: true as const, value }), (error: unknown) => ({ ok: false as const, error })), guard]);
  } finally {
    clearTimeout(timer);
  }
}

async function runScript(server: FakeQmpServer, script: PeerScript, transcript: boolean): Promise<void> {
  escaped.length = 0;
  try {
    await runScriptOnce(server, script, transcript);
  } catch (error) {
    // What escaped to the process explains the rest: report it first.
    if (escaped.length > 0) throw new Error(`${escaped.join('\n')}\n(and then: ${describe(error)})`);
    throw error;
  }
  // Give a stray rejection the turn it needs to be reported.
  await new Promise((resolve) => setImmediate(resolve));
  if (escaped.length > 0) throw new Error(escaped.join('\n'));
}

async function runScriptOnce(server: FakeQmpServer, script: PeerScript, transcript: boolean): Promise<void> {
  const expected = expectationOf(script);
  const baseline = resourceCounts();
  const accepted = server.accept();
  let connection: FakeConnection | undefined;
  const played = accepted.then((c) => {
    connection = c;
    return playPeerScript(c, script);
  });
  const connectTimeout = expected.connect === 'timeout' ? SHORT : expected.connect === 'any' ? MEDIUM : LONG;
  const connecting = QmpClient.connect<LooseCommands, LooseEvents>(server.path, {
    connectTimeout,
    ...(transcript ? { transcript: () => undefined } : {}),
  });
  const connected = await settled(connecting, LONG + 5000, 'connect');
  let client: QmpClient<LooseCommands, LooseEvents> | undefined;
  try {
    if (connected.ok) {
      client = connected.value;
      if (expected.connect !== 'ok' && expected.connect !== 'any') throw new Error(`connect succeeded, expected ${expected.connect}`);
    } else {
      const error = connected.error;
      if (!QmpError.isInstance(error)) throw new Error(`connect failed with a foreign error: ${describe(error)}`);
      switch (expected.connect) {
        case 'ok':
          throw new Error(`connect failed: ${describe(error)}`);
        case 'negotiation-error':
          if (!QmpNegotiationError.isInstance(error)) throw new Error(`expected QmpNegotiationError, got ${describe(error)}`);
          break;
        case 'timeout':
          if (!QmpTimeoutError.isInstance(error)) throw new Error(`expected QmpTimeoutError, got ${describe(error)}`);
          break;
        case 'fails-at-once':
          if (QmpTimeoutError.isInstance(error)) throw new Error(`a protocol error went unnoticed until the timeout: ${describe(error)}`);
          break;
        case 'any':
          break;
      }
    }

    if (client) {
      const events = client.events.listen(undefined, { history: true });
      const calls = expected.commands.map((c, i) => {
        const timeout = c.status === 'unknown' ? MEDIUM : c.reply === undefined && script.end === 'hang' ? SHORT : LONG;
        return settled(client!.execute(`command-${i}`, undefined, { timeout }), LONG + 5000, `command ${i}`);
      });
      const outcomes = await Promise.all(calls);
      outcomes.forEach((outcome, i) => checkCommand(outcome, expected.commands[i]!, script.end, i));
      if (expected.events !== undefined) {
        const received = events.drain().map((e) => JSON.stringify([e.event, e.data]));
        const sent = expected.events.map((e) => (e.kind === 'event' ? JSON.stringify([e.name, e.data ?? {}]) : ''));
        // After a poison nothing more arrives, so the events are exactly those before it.
        if (JSON.stringify(received) !== JSON.stringify(sent)) {
          throw new Error(`events ${JSON.stringify(received)} differ from those sent ${JSON.stringify(sent)}`);
        }
      }
      events.close();
      await client.close({ timeout: 200 });
      if (client.state !== 'closed' || client.pendingCount !== 0 || client.events.consumerCount !== 0) {
        throw new Error(`client not cleaned up: state ${client.state}, ${client.pendingCount} pending, ${client.events.consumerCount} consumers`);
      }
    }
  } finally {
    await client?.close({ timeout: 200 });
    connection?.destroy();
    await accepted.then((c) => c.ended);
    await played;
  }
  await expectNoLeftoverHandles(baseline);
}

function checkCommand(
  outcome: { ok: true; value: unknown } | { ok: false; error: unknown },
  expected: { reply: PeerItem | undefined; status: Status },
  end: PeerScript['end'],
  index: number,
): void {
  const what = `command ${index}`;
  if (!outcome.ok && !QmpError.isInstance(outcome.error)) throw new Error(`${what} failed with a foreign error: ${describe(outcome.error)}`);
  const reply = expected.reply;
  const correct = (): boolean => {
    if (reply?.kind === 'reply') return outcome.ok && JSON.stringify(outcome.value) === JSON.stringify(reply.value);
    if (reply?.kind === 'error') {
      if (outcome.ok || !QmpCommandError.isInstance(outcome.error)) return false;
      const error = outcome.error;
      const errorClass = KNOWN_CLASSES.includes(reply.errorClass) ? reply.errorClass : 'GenericError';
      return error.errorClass === errorClass && error.desc === reply.desc && error.reply.error.class === reply.errorClass;
    }
    return false;
  };
  switch (expected.status) {
    case 'valid':
      if (reply !== undefined) {
        if (!correct()) throw new Error(`${what}: expected its reply ${JSON.stringify(reply)}, got ${outcome.ok ? JSON.stringify(outcome.value) : describe(outcome.error)}`);
      } else if (outcome.ok) {
        throw new Error(`${what} resolved without a reply`);
      } else if (end === 'hang' ? !QmpTimeoutError.isInstance(outcome.error) : !QmpConnectionError.isInstance(outcome.error)) {
        throw new Error(`${what} (no reply, end ${end}) failed with ${describe(outcome.error)}`);
      }
      return;
    case 'poisoned':
      if (outcome.ok || !QmpConnectionError.isInstance(outcome.error) || !QmpProtocolError.isInstance(outcome.error.cause)) {
        throw new Error(`${what} after a poison: expected a QmpConnectionError caused by a QmpProtocolError, got ${outcome.ok ? 'a value' : describe(outcome.error)}`);
      }
      return;
    case 'unknown':
      if (outcome.ok && !correct()) throw new Error(`${what} resolved with a value that was never sent for it: ${JSON.stringify(outcome.value)}`);
      return;
  }
}

// --- the properties -------------------------------------------------------------------------

let server: FakeQmpServer;
beforeAll(async () => {
  server = await FakeQmpServer.start();
});
afterAll(async () => {
  await server.close();
});

function property(arbitrary: fc.Arbitrary<[PeerScript, boolean]>, numRuns: number): Promise<void> {
  return fc.assert(
    fc.asyncProperty(arbitrary, async ([script, transcript]) => {
      await runScript(server, script, transcript);
    }),
    { numRuns },
  );
}

const commandsAndItems = (poison: number, garbage: number) =>
  fc.integer({ min: 1, max: 4 }).chain((commands) =>
    fc.tuple(fc.constant(commands), items(fc.oneof(replyItems(commands), replyItems(commands), eventItem, strayItem, spaceItem), poison, garbage, 8)),
  );

test('before and as the greeting', async () => {
  const script = fc.record({
    preGreeting: items(fc.oneof(eventItem, spaceItem), 3, 3),
    greeting: fc.oneof(
      { arbitrary: fc.constant<PeerScript['greeting']>('valid'), weight: 16 },
      { arbitrary: fc.constant<PeerScript['greeting']>('none'), weight: 1 },
      { arbitrary: poisonItem as fc.Arbitrary<{ kind: 'poison'; text: string }>, weight: 2 },
      { arbitrary: garbageItem as fc.Arbitrary<{ kind: 'garbage'; bytes: Uint8Array }>, weight: 1 },
    ),
    cuts,
  }).map(({ preGreeting, greeting, cuts: c }): PeerScript => ({
    preGreeting,
    greeting,
    negotiation: { items: [], answer: 'ok' },
    commands: 1,
    items: [{ kind: 'reply', command: 0, value: 'fine' }],
    end: 'close',
    cuts: c,
  }));
  await property(fc.tuple(script, fc.boolean()), RUNS.beforeGreeting);
}, 180_000);

test('while negotiating', async () => {
  const script = fc.record({
    preGreeting: items(eventItem, 0, 0, 2),
    negotiationItems: items(fc.oneof(eventItem, spaceItem, strayItem), 3, 3),
    answer: fc.oneof(
      { arbitrary: fc.constantFrom<PeerScript['negotiation']['answer']>('ok', 'id-less-error', 'greet-again'), weight: 16 },
      { arbitrary: fc.constant<PeerScript['negotiation']['answer']>('refuse'), weight: 3 },
      { arbitrary: fc.constant<PeerScript['negotiation']['answer']>('silence'), weight: 1 },
    ),
    cuts,
  }).map(({ preGreeting, negotiationItems, answer, cuts: c }): PeerScript => ({
    preGreeting,
    greeting: 'valid',
    negotiation: { items: negotiationItems, answer },
    commands: 1,
    items: [{ kind: 'reply', command: 0, value: { after: 'negotiation' } }],
    end: 'close',
    cuts: c,
  }));
  await property(fc.tuple(script, fc.boolean()), RUNS.negotiation);
}, 180_000);

test('as replies and events after negotiation', async () => {
  const script = fc.record({
    body: commandsAndItems(3, 3),
    end: fc.oneof({ arbitrary: cleanEnd, weight: 8 }, { arbitrary: fc.constantFrom<PeerScript['end']>('cut-mid-message', 'hang'), weight: 1 }),
    cuts,
  }).map(({ body: [commands, list], end, cuts: c }): PeerScript => ({
    preGreeting: [],
    greeting: 'valid',
    negotiation: { items: [], answer: 'ok' },
    commands,
    items: list,
    end,
    cuts: c,
  }));
  await property(fc.tuple(script, fc.boolean()), RUNS.afterNegotiation);
}, 180_000);

test('anywhere at once', async () => {
  const script = fc.record({
    preGreeting: items(fc.oneof(eventItem, spaceItem), 2, 2, 3),
    negotiationItems: items(fc.oneof(eventItem, spaceItem, strayItem), 2, 2, 3),
    answer: fc.constantFrom<PeerScript['negotiation']['answer']>('ok', 'id-less-error', 'greet-again', 'refuse'),
    body: commandsAndItems(2, 2),
    end: fc.oneof({ arbitrary: cleanEnd, weight: 8 }, { arbitrary: fc.constantFrom<PeerScript['end']>('cut-mid-message', 'hang'), weight: 1 }),
    cuts,
  }).map(({ preGreeting, negotiationItems, answer, body: [commands, list], end, cuts: c }): PeerScript => ({
    preGreeting,
    greeting: 'valid',
    negotiation: { items: negotiationItems, answer },
    commands,
    items: list,
    end,
    cuts: c,
  }));
  await property(fc.tuple(script, fc.boolean()), RUNS.anywhere);
}, 180_000);
