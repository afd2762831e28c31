// The run-time schema check against the QEMU under test ($QEMU_SYSTEM: the system's 7.2, or a
// release of the test matrix): unknown commands and arguments fail fast with named errors and
// nothing reaches QEMU; with the check off, QEMU's own generic errors come back instead.
import { findQmpSchemaVersion } from '@qmpkit/schema/versions';

import {
  type LooseCommands,
  type LooseEvents,
  QmpClient,
  QmpCommandError,
  QmpUnsupportedArgumentError,
  QmpUnsupportedCommandError,
  type QmpTranscriptEntry,
} from '../src/index.js';
import { rejectionOf } from './support/fake-server.js';
import { startQemu, type TestQemu } from './support/qemu.js';

type Loose = QmpClient<LooseCommands, LooseEvents>;
const rejection = rejectionOf;

describe('schema check against a real QEMU', () => {
  let qemu: TestQemu;
  const clients: Loose[] = [];
  const sent: string[] = [];
  const transcript = (entry: QmpTranscriptEntry) => {
    if (entry.direction === 'out') sent.push(String((entry.message as { execute?: string }).execute));
  };

  beforeAll(async () => {
    qemu = await startQemu();
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
    sent.length = 0;
  });
  afterAll(async () => {
    await qemu.stop();
  });

  async function connect(options: Parameters<typeof QmpClient.connect>[1]): Promise<Loose> {
    // One client at a time: the monitor serves one connection.
    const client = await QmpClient.connect<LooseCommands, LooseEvents>(qemu.socket, { connectTimeout: 30_000, transcript, ...options });
    clients.push(client);
    return client;
  }

  it('with the check off, QEMU answers an unknown command and argument with its generic errors', async () => {
    const qmp = await connect({});
    const notFound = await rejection(qmp.execute('x-no-such-command'));
    expect(QmpCommandError.isInstance(notFound) && notFound.errorClass).toBe('CommandNotFound');
    const badArg = await rejection(qmp.execute('query-status', { verbose: true }));
    expect(QmpCommandError.isInstance(badArg) && badArg.errorClass).toBe('GenericError');
    expect(sent).toContain('x-no-such-command');
  });

  it("'introspect' reads query-qmp-schema while connecting and refuses before sending", async () => {
    const qmp = await connect({ schemaCheck: 'introspect' });
    expect(qmp.schema.source).toEqual({ kind: 'query-qmp-schema' });
    expect(qmp.schema.hasCommand('query-status')).toBe(true);
    const notFound = await rejection(qmp.execute('x-no-such-command'));
    expect(QmpUnsupportedCommandError.isInstance(notFound)).toBe(true);
    expect(notFound).toMatchObject({ command: 'x-no-such-command', qemuVersion: `${qmp.version.qemu.major}.${qmp.version.qemu.minor}.${qmp.version.qemu.micro}` });
    const badArg = await rejection(qmp.execute('block-dirty-bitmap-add', { node: 'node0', nmae: 'bitmap0' }));
    expect(QmpUnsupportedArgumentError.isInstance(badArg)).toBe(true);
    expect(badArg).toMatchObject({ unknown: ['nmae'], missing: ['name'] });
    expect(sent.filter((c) => c !== 'qmp_capabilities' && c !== 'query-qmp-schema')).toEqual([]);
    // What the check lets through still reaches QEMU and works.
    await expect(qmp.execute('query-status')).resolves.toMatchObject({ status: expect.any(String) });
  });

  it('loadSchema() on request turns the check on for a connection opened without it', async () => {
    const qmp = await connect({});
    await qmp.loadSchema({ timeout: 30_000 });
    expect(QmpUnsupportedCommandError.isInstance(await rejection(qmp.execute('x-no-such-command')))).toBe(true);
  });

  it("'greeting' uses the generated schema of this QEMU's series, when there is one", async () => {
    const qmp = await connect({ schemaCheck: 'greeting' });
    const generated = findQmpSchemaVersion(qmp.version.qemu);
    if (generated === undefined) {
      // A release without generated types (11.1 today): the greeting cannot tell, QEMU answers.
      expect(qmp.schema.source).toBeUndefined();
      expect(QmpCommandError.isInstance(await rejection(qmp.execute('x-no-such-command')))).toBe(true);
      return;
    }
    expect(qmp.schema.source).toEqual({ kind: 'generated', series: generated.series });
    expect(QmpUnsupportedCommandError.isInstance(await rejection(qmp.execute('x-no-such-command')))).toBe(true);
    expect(sent).not.toContain('x-no-such-command');
  });

  it('reports deprecated commands as this QEMU marks them', async () => {
    const reported: string[] = [];
    const qmp = await connect({ schemaCheck: 'introspect', onDeprecatedCommand: (name) => reported.push(name) });
    const live = (await qmp.execute('query-qmp-schema')) as { name: string; 'meta-type': string; features?: string[] }[];
    const deprecated = live.filter((e) => e['meta-type'] === 'command' && e.features?.includes('deprecated')).map((e) => e.name);
    // drive-backup is deprecated from 6.2 on in favour of blockdev-backup.
    expect(deprecated).toContain('drive-backup');
    expect(qmp.schema.deprecation('drive-backup')?.deprecated).toBe(true);
    expect(qmp.schema.deprecation('blockdev-backup')).toBeUndefined();
    await rejection(qmp.execute('drive-backup', { device: 'no-such-drive', target: '/nonexistent/x', sync: 'full' }));
    await qmp.execute('query-status');
    expect(reported).toEqual(['drive-backup']);
  });
});
