import { spawn } from 'node:child_process';
import { Duplex } from 'node:stream';
import {
  QmpClient,
  QmpCommandError,
  QmpConnectionError,
  QmpError,
  QmpNegotiationError,
  type QmpTranscriptEntry,
} from '../src/index.js';
import { BASE_ARGS, QEMU_BINARY, binaryVersion, killAndWait, startQemu, type TestQemu } from './support/qemu.js';

// A slice of QEMU 7.2's command and event maps, written out so these tests check the
// client's typing without depending on @qmpkit/schema.
interface StatusInfo {
  running: boolean;
  singlestep: boolean;
  status: string;
}
interface TestCommands {
  'query-status': { args: Record<string, never>; returns: StatusInfo };
  'query-version': { args: Record<string, never>; returns: { qemu: { major: number; minor: number; micro: number }; package: string } };
  'query-qmp-schema': { args: Record<string, never>; returns: { name: string; 'meta-type': string }[] };
  stop: { args: Record<string, never>; returns: Record<string, never> };
  cont: { args: Record<string, never>; returns: Record<string, never> };
  block_resize: { args: { device?: string; 'node-name'?: string; size: number }; returns: Record<string, never> };
  device_del: { args: { id: string }; returns: Record<string, never> };
  'x-no-such-command': { args: Record<string, never>; returns: Record<string, never> };
  'query-name': { args: Record<string, never>; returns: { name?: string } };
  'migrate-pause': { args: Record<string, never>; returns: Record<string, never> };
}
interface TestEvents {
  STOP: Record<string, never>;
  RESUME: Record<string, never>;
  SHUTDOWN: { guest: boolean; reason: string };
}

describe('against a real QEMU', () => {
  let qemu: TestQemu;
  let qmp: QmpClient<TestCommands, TestEvents>;
  const transcript: QmpTranscriptEntry[] = [];

  beforeAll(async () => {
    qemu = await startQemu(['-name', 'qmpkit-test']);
    try {
      qmp = await QmpClient.connect<TestCommands, TestEvents>(qemu.socket, {
        connectTimeout: 20_000,
        commandTimeout: 20_000,
        transcript: (entry) => transcript.push(entry),
      });
    } catch (error) {
      await qemu.stop();
      throw new Error(`could not connect to QEMU: ${String(error)}\n${qemu.stderr()}`, { cause: error });
    }
  });

  afterAll(async () => {
    await qmp?.close();
    await qemu?.stop();
  });

  test('reads the greeting and negotiates capabilities', () => {
    expect(qmp.state).toBe('ready');
    // The matrix runs this on every supported release: the greeting names the binary's own.
    expect(qmp.version.qemu).toEqual(binaryVersion());
    expect(qmp.capabilities).toContain('oob');
    expect(qmp.oob).toBe(false);
    expect(transcript[0]).toMatchObject({ direction: 'in', message: { QMP: { capabilities: ['oob'] } } });
    expect(transcript[1]).toMatchObject({ direction: 'out', message: { execute: 'qmp_capabilities' } });
  });

  test('typed execute resolves with the return value', async () => {
    const status = await qmp.execute('query-status');
    expect(typeof status.running).toBe('boolean');
    expect(status.status).toBe('running');
    const version = await qmp.execute('query-version', {}, { timeout: 5000 });
    expect(version.qemu).toEqual(qmp.version.qemu);
    const name = await qmp.execute('query-name');
    expect(name.name).toBe('qmpkit-test');
  });

  test('GenericError carries class, desc, the command sent and the reply', async () => {
    const error = await qmp.execute('block_resize', { device: 'nope', size: 1024 }).catch((e: unknown) => e);
    expect(QmpCommandError.isInstance(error)).toBe(true);
    expect(QmpError.isInstance(error)).toBe(true);
    const commandError = error as QmpCommandError;
    expect(commandError.errorClass).toBe('GenericError');
    expect(commandError.desc).toContain('nope');
    expect(commandError.command).toMatchObject({ execute: 'block_resize', arguments: { device: 'nope', size: 1024 } });
    expect(commandError.reply.id).toBe(commandError.command.id);
  });

  test('DeviceNotFound and CommandNotFound are reported with their classes', async () => {
    await expect(qmp.execute('device_del', { id: 'no-such-device' })).rejects.toMatchObject({
      name: 'QmpCommandError',
      errorClass: 'DeviceNotFound',
    });
    await expect(qmp.execute('x-no-such-command')).rejects.toMatchObject({ errorClass: 'CommandNotFound' });
    // The connection is still usable after error replies.
    await expect(qmp.execute('query-status')).resolves.toMatchObject({ status: 'running' });
  });

  test('stop and cont give STOP and RESUME events', async () => {
    const seen: string[] = [];
    const listener = (event: { event: string }): void => {
      seen.push(event.event);
    };
    qmp.events.on('event', listener);
    try {
      // STOP arrives before the reply to stop: a listener opened before the command has it.
      {
        using stops = qmp.events.listen('STOP');
        await qmp.execute('stop');
        expect(stops.size).toBe(1);
        const stop = await stops.wait({ timeout: 5000 });
        expect(stop.event).toBe('STOP');
        expect(stop.data).toEqual({});
        expect(stop.timestamp.seconds).toBeGreaterThan(0);
      }
      expect((await qmp.execute('query-status')).status).toBe('paused');

      // A hub wait started before the command sees the event too.
      const resume = qmp.events.wait(['RESUME'], { timeout: 5000 });
      await qmp.execute('cont');
      expect((await resume).event).toBe('RESUME');
      expect(seen).toEqual(['STOP', 'RESUME']);
      expect(qmp.events.consumerCount).toBe(0);
    } finally {
      qmp.events.off('event', listener);
    }
  });

  test('query-qmp-schema: a reply of several hundred KiB', async () => {
    const schema = await qmp.execute('query-qmp-schema');
    expect(schema.length).toBeGreaterThan(1000);
    expect(schema.some((entry) => entry.name === 'query-status' && entry['meta-type'] === 'command')).toBe(true);
    expect(JSON.stringify(schema).length).toBeGreaterThan(100_000);
  });

  test('1,000 commands in flight at once each get their own reply', async () => {
    const before = qmp.pendingCount;
    const calls = Array.from({ length: 1000 }, (_, i) => (i % 2 === 0 ? qmp.execute('query-status') : qmp.execute('query-name')));
    expect(qmp.pendingCount).toBe(before + 1000);
    const results = await Promise.all(calls);
    results.forEach((result, i) => {
      if (i % 2 === 0) expect(result).toMatchObject({ status: 'running' });
      else expect(result).toEqual({ name: 'qmpkit-test' });
    });
    expect(qmp.pendingCount).toBe(before);
  });

  test('hmp runs a human monitor command line', async () => {
    const text = await qmp.hmp('info status');
    expect(text).toMatch(/VM status: running/);
    const version = await qmp.hmp('info version');
    expect(version).toContain(`${qmp.version.qemu.major}.${qmp.version.qemu.minor}.${qmp.version.qemu.micro}`);
  });
});

describe('negotiation against a real QEMU', () => {
  test('oob is enabled when asked for, and exec-oob works', async () => {
    const qemu = await startQemu();
    try {
      const qmp = await QmpClient.connect<TestCommands, TestEvents>(qemu.socket, { oob: true, connectTimeout: 20_000 });
      try {
        expect(qmp.oob).toBe(true);
        // migrate-pause is one of the few allow-oob commands of a stock build; without a
        // postcopy migration it fails, but with its own error, which shows it ran out of band.
        const paused = await qmp.executeOob('migrate-pause').catch((e: unknown) => e);
        expect(QmpCommandError.isInstance(paused)).toBe(true);
        expect((paused as QmpCommandError).desc).toMatch(/postcopy/);
        expect((paused as QmpCommandError).command['exec-oob']).toBe('migrate-pause');
        // A command without allow-oob is refused as such.
        const refused = await qmp.executeOob('query-status').catch((e: unknown) => e);
        expect((refused as QmpCommandError).desc).toMatch(/does not support OOB/);
        // The in-band path still works on an oob connection.
        await expect(qmp.execute('query-status')).resolves.toMatchObject({ running: true });
      } finally {
        await qmp.close();
      }
    } finally {
      await qemu.stop();
    }
  });

  test('executeOob without oob negotiated fails with QmpNegotiationError', async () => {
    const qemu = await startQemu();
    try {
      const qmp = await QmpClient.connect<TestCommands>(qemu.socket, { connectTimeout: 20_000 });
      try {
        const error = await qmp.executeOob('query-status').catch((e: unknown) => e);
        expect(QmpNegotiationError.isInstance(error)).toBe(true);
        expect((error as QmpNegotiationError).offered).toEqual(['oob']);
      } finally {
        await qmp.close();
      }
      expect(qmp.state).toBe('closed');
      await expect(qmp.execute('query-status')).rejects.toBeInstanceOf(QmpConnectionError);
    } finally {
      await qemu.stop();
    }
  });

  test('quit: the server closing fails pending waits with QmpConnectionError', async () => {
    const qemu = await startQemu();
    try {
      const qmp = await QmpClient.connect<TestCommands & { quit: { args: Record<string, never>; returns: Record<string, never> } }, TestEvents>(
        qemu.socket,
        { connectTimeout: 20_000 },
      );
      const never = qmp.events.wait('RESUME');
      const shutdown = qmp.events.wait('SHUTDOWN', { match: { data: { guest: false } }, timeout: 10_000 });
      await qmp.execute('quit').catch(() => undefined);
      expect((await shutdown).data.reason).toBe('host-qmp-quit');
      const error = await never.catch((e: unknown) => e);
      expect(QmpConnectionError.isInstance(error)).toBe(true);
      expect(await qmp.closed).toBe(error);
      expect(qmp.state).toBe('closed');
    } finally {
      await qemu.stop();
    }
  });

  test('-qmp stdio through a Duplex made of the child\'s stdio', async () => {
    const child = spawn(QEMU_BINARY, [...BASE_ARGS, '-qmp', 'stdio'], { stdio: ['pipe', 'pipe', 'ignore'] });
    try {
      const stream = Duplex.from({ readable: child.stdout, writable: child.stdin });
      const qmp = await QmpClient.connect<TestCommands>(stream, { connectTimeout: 20_000 });
      try {
        expect(qmp.target).toBe('stream');
        expect(qmp.version.qemu.major).toBe(binaryVersion().major);
        await expect(qmp.execute('query-status')).resolves.toMatchObject({ status: 'running' });
      } finally {
        // QEMU keeps stdout open after stdin ends, so the close timeout decides.
        await qmp.close({ timeout: 200 });
      }
    } finally {
      await killAndWait(child);
    }
  });
});
