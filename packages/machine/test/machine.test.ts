import { existsSync, statSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';

import {
  InvalidHmpCommandError,
  MachineAbortError,
  MachineConfigError,
  MachineStateError,
  QemuBinaryNotFoundError,
  QemuIoHmpError,
  QemuLaunchError,
  QemuMachine,
  untyped,
  type QemuMachineOptions,
} from '../src/index.js';
import { Scratch, createImage, isAlive } from './support.js';

let scratch: Scratch;
let image: string;

beforeAll(async () => {
  scratch = await Scratch.create();
  image = scratch.path('disk0.qcow2');
  await createImage(image, 'qcow2', '1M');
});

afterAll(async () => {
  await scratch.cleanUp();
});

function machine(options: QemuMachineOptions = {}): QemuMachine {
  return scratch.track(new QemuMachine({ tmpDir: scratch.dir, ...options }));
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection');
}

describe('a running machine', () => {
  let vm: QemuMachine;
  const sent: string[] = [];

  beforeAll(async () => {
    vm = machine({
      drives: [{ file: image, format: 'qcow2', id: 'drive0', nodeName: 'node0' }],
      qmp: {
        transcript: (entry) => {
          if (entry.direction === 'out') sent.push(JSON.stringify(entry.message));
        },
      },
    });
    await vm.launch({ timeout: 20_000 });
  });

  afterAll(async () => {
    await vm.shutdown({ timeout: 10_000 });
  });

  test('is launched with the default command line and a private directory', () => {
    expect(vm.state).toBe('running');
    expect(vm.pid).toEqual(expect.any(Number));
    expect(vm.argv).toEqual(
      expect.arrayContaining(['-machine', 'none', '-nodefaults', '-display', 'none', '-drive', `if=none,id=drive0,file=${image},format=qcow2,node-name=node0`]),
    );
    const dir = vm.tempDir;
    expect(dir).toMatch(/\/qmpkit-machine-[^/]+$/);
    expect(statSync(dir ?? '').mode & 0o777).toBe(0o700);
    expect(vm.logPath).toBe(`${dir ?? ''}/qemu.log`);
    expect(vm.qmpSocketPath).toBe(`${dir ?? ''}/qmp.sock`);
    expect(statSync(vm.qmpSocketPath ?? '').isSocket()).toBe(true);
  });

  test('answers query-status over QMP', async () => {
    const status = await vm.qmp.execute('query-status');
    expect(status).toMatchObject({ running: true, status: 'running' });
  });

  test('machine.qmp gives typed commands and event listeners', async () => {
    // QEMU sends STOP before its reply to stop: listen first, then send the command.
    using stops = vm.qmp.events.listen('STOP');
    await vm.qmp.execute('stop');
    const stop = await stops.wait({ timeout: 5_000 });
    expect(stop.event).toBe('STOP');
    expect(await vm.qmp.execute('query-status')).toMatchObject({ running: false, status: 'paused' });
    const resumed = vm.qmp.events.wait('RESUME', { timeout: 5_000 });
    await vm.qmp.execute('cont');
    await resumed;
  });

  test("hmp('info block') shows the drive and its node", async () => {
    const text = await vm.hmp('info block');
    expect(text).toContain(`drive0 (node0): ${image} (qcow2)`);
  });

  test('hmpQemuIo writes, and a read with -P verifies the pattern', async () => {
    const write = await vm.hmpQemuIo('drive0', 'write -P0xab 0 512');
    expect(write.output).toContain('wrote 512/512 bytes at offset 0');
    const read = await vm.hmpQemuIo('drive0', 'read -P0xab 0 512');
    expect(read.output).toContain('read 512/512 bytes at offset 0');
    await vm.hmpQemuIo('drive0', 'flush');
  });

  test('a read with the wrong pattern throws QemuIoHmpError', async () => {
    const error = await rejection(vm.hmpQemuIo('drive0', 'read -P0xcd 0 512'));
    expect(QemuIoHmpError.isInstance(error)).toBe(true);
    expect((error as QemuIoHmpError).failure).toBe('Pattern verification failed at offset 0, 512 bytes');
  });

  test('a write past the end of the image throws QemuIoHmpError', async () => {
    const error = await rejection(vm.hmpQemuIo('drive0', 'write -P0x11 2M 512'));
    expect(QemuIoHmpError.isInstance(error)).toBe(true);
    expect((error as QemuIoHmpError).failure).toBe('write failed: Input/output error');
    expect((error as QemuIoHmpError).drive).toBe('drive0');
    expect((error as QemuIoHmpError).command).toBe('write -P0x11 2M 512');
  });

  test('an unknown drive throws with the HMP reply', async () => {
    const error = await rejection(vm.hmpQemuIo('drive9', 'read 0 512'));
    expect((error as QemuIoHmpError).failure).toMatch(/^Error: Cannot find device=/);
  });

  // One detector (image-tools' findQemuIoFailures) for both ways of running qemu-io: lines
  // the machine's own list used to know, and lines only image-tools' list knew.
  test.each([
    ['write -z -P0x1 0 512', 'Only one of -z, -P, and -s can be specified at the same time'],
    ['write -u 0 512', '-u requires -z to be specified'],
    ['write -b 1 512', "1 is not a sector-aligned value for 'offset'"],
    ['aio_write 0 1E', "Argument '1E' exceeds maximum size 2147483136"],
  ])('%j throws QemuIoHmpError with the line qemu-io printed', async (command, line) => {
    const error = await rejection(vm.hmpQemuIo('drive0', command));
    expect(QemuIoHmpError.isInstance(error)).toBe(true);
    expect((error as QemuIoHmpError).failure).toBe(line);
    expect((error as QemuIoHmpError).failures).toEqual([line]);
  });

  test("each call's output is only what QEMU printed during it", async () => {
    await rejection(vm.hmpQemuIo('drive0', 'read -P0xee 0 512'));
    const read = await vm.hmpQemuIo('drive0', 'read 0 512');
    expect(read.output).toMatch(/^read 512\/512 bytes at offset 0$/m);
    expect(read.output).not.toMatch(/Pattern verification failed/);
    const log = await vm.log();
    expect(log.endsWith(read.output.slice(read.output.indexOf('read 512/512')))).toBe(true);
  });

  test('concurrent hmpQemuIo calls each see their own output', async () => {
    const results = await Promise.allSettled([
      vm.hmpQemuIo('drive0', 'write -P0x22 64k 512'),
      vm.hmpQemuIo('drive0', 'write -P0x33 4M 512'),
      vm.hmpQemuIo('drive0', 'read -P0x22 64k 512'),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
  });

  test('a queued hmpQemuIo whose signal is aborted meanwhile is not run', async () => {
    await vm.hmpQemuIo('drive0', 'write -P0x66 8k 512');
    const controller = new AbortController();
    const first = vm.hmpQemuIo('drive0', 'read -P0x66 8k 512');
    const second = vm.hmpQemuIo('drive0', 'write -P0x77 8k 512', { signal: controller.signal });
    controller.abort();
    await first;
    expect(MachineAbortError.isInstance(await rejection(second))).toBe(true);
    await vm.hmpQemuIo('drive0', 'read -P0x66 8k 512');
  });

  test.each([
    ['a double quote', 'write -P0xab 0 512" "info'],
    ['a newline', 'write 0 512\nquit'],
    ['a backslash', 'write 0 512\\'],
  ])('refuses a command with %s before sending anything', async (_what, command) => {
    const before = sent.length;
    const error = await rejection(vm.hmpQemuIo('drive0', command));
    expect(InvalidHmpCommandError.isInstance(error)).toBe(true);
    expect(sent.length).toBe(before);
    expect(vm.state).toBe('running');
  });
});

test('a machine that fails to start (missing image) reports the log tail, exit code and argv', async () => {
  const missing = scratch.path('missing.qcow2');
  const vm = machine({ drives: [{ file: missing, format: 'qcow2', id: 'drive0' }] });
  const error = await rejection(vm.launch({ timeout: 20_000 }));
  expect(QemuLaunchError.isInstance(error)).toBe(true);
  const launchError = error as QemuLaunchError;
  expect(launchError.reason).toBe('exited');
  expect(launchError.exitCode).toBe(1);
  expect(launchError.logTail).toContain(`Could not open '${missing}': No such file or directory`);
  expect(launchError.message).toContain('Could not open');
  expect(launchError.argv).toContain(`if=none,id=drive0,file=${missing},format=qcow2`);
  expect(vm.state).toBe('exited');
  expect(vm.tempDir).toBeUndefined();
  expect(await vm.log()).toContain('Could not open');
});

test('a bad -drive format (only through untyped(): a typed one does not compile) is reported the same way', async () => {
  const vm = machine({ drives: [{ file: image, format: untyped('no-such-format'), id: 'drive0' }] });
  const error = (await rejection(vm.launch())) as QemuLaunchError;
  expect(error.reason).toBe('exited');
  expect(error.logTail).toContain("Unknown driver 'no-such-format'");
});

test('a file name with commas is escaped for -drive', async () => {
  const commaImage = scratch.path('a,b,c.qcow2');
  await createImage(commaImage, 'qcow2', '1M');
  await using vm = await machine({ drives: [{ file: commaImage, format: 'qcow2', id: 'drive0', opts: { cache: 'none', 'read-only': true } }] }).launch();
  expect(vm.argv).toContain(`if=none,id=drive0,file=${scratch.path('a,,b,,c.qcow2')},format=qcow2,cache=none,read-only=on`);
  const blocks = await vm.qmp.execute('query-block');
  expect(blocks[0]?.inserted).toMatchObject({ file: commaImage, ro: true });
});

test('-blockdev nodes are added as JSON and qemu-io reaches them by node name', async () => {
  const vm = machine({
    blockdevs: [{ driver: 'qcow2', 'node-name': 'node1', file: { driver: 'file', filename: image } }],
  });
  await vm.launch();
  try {
    expect(vm.argv).toContain(JSON.stringify({ driver: 'qcow2', 'node-name': 'node1', file: { driver: 'file', filename: image } }));
    const nodes = await vm.qmp.execute('query-named-block-nodes');
    expect(nodes.map((node) => node['node-name'])).toContain('node1');
    await vm.hmpQemuIo('node1', 'write -P0x44 256k 512');
    await vm.hmpQemuIo('node1', 'read -P0x44 256k 512');
  } finally {
    await vm.shutdown();
  }
});

test('-object values come before the drives that use them; untyped() objects are passed as JSON', async () => {
  const vm = machine({
    objects: [{ 'qom-type': 'iothread', id: 'iothread0' }],
    blockdevs: [untyped({ driver: 'qcow2', 'node-name': 'node2', file: { driver: 'file', filename: image }, 'read-only': true })],
  });
  await vm.launch();
  try {
    const argv = vm.argv ?? [];
    const objectAt = argv.indexOf('-object');
    expect(objectAt).toBeGreaterThan(-1);
    expect(objectAt).toBeLessThan(argv.indexOf('-blockdev'));
    expect(argv[objectAt + 1]).toBe('{"qom-type":"iothread","id":"iothread0"}');
    const threads = await vm.qmp.execute('query-iothreads');
    expect(threads.map((t) => t.id)).toEqual(['iothread0']);
    const nodes = await vm.qmp.execute('query-named-block-nodes');
    expect(nodes.find((n) => n['node-name'] === 'node2')).toMatchObject({ ro: true, drv: 'qcow2' });
  } finally {
    await vm.shutdown();
  }
});

test('an untyped() -blockdev QEMU does not know fails at launch with QEMU\'s own words', async () => {
  const vm = machine({ blockdevs: [untyped({ driver: 'no-such-driver', 'node-name': 'x' })] });
  const error = (await rejection(vm.launch())) as QemuLaunchError;
  expect(error.reason).toBe('exited');
  expect(error.logTail).toMatch(/no-such-driver/);
});

test('addDrive refuses what QEMU would reject before anything starts', () => {
  const vm = machine();
  expect(() => vm.addDrive({ file: image, format: 'qcow2', id: '0bad' })).toThrow(MachineConfigError);
  expect(() => vm.addDrive({ file: image, format: 'qcow2', id: 'ok', opts: { 'bad,key': 'x' } })).toThrow(MachineConfigError);
  expect(() => vm.addDrive({ file: image, format: 'qcow2', id: 'ok', opts: { file: 'x' } })).toThrow(/DriveOptions/);
  vm.addDrive({ file: image, format: 'qcow2', id: 'ok' });
  expect(() => vm.addDrive({ file: image, format: 'qcow2', id: 'ok' })).toThrow(/already added/);
  expect(vm.state).toBe('idle');
});

test('using a machine before launch is a state error', async () => {
  const vm = machine();
  expect(() => vm.qmp).toThrow(MachineStateError);
  expect(MachineStateError.isInstance(await rejection(vm.hmp('info block')))).toBe(true);
  // Shutting down something never launched is a no-op, so disposal after a failed launch is safe.
  await expect(vm.shutdown()).resolves.toEqual({ exitCode: null, signal: null, method: 'exited' });
});

test('a missing binary is reported before anything is created', async () => {
  const vm = machine({ binary: scratch.path('no-qemu-here') });
  const error = await rejection(vm.launch());
  expect(QemuBinaryNotFoundError.isInstance(error)).toBe(true);
  expect(vm.state).toBe('idle');
});

test('a tmpDir that cannot hold the QMP socket is refused and nothing is left in it', async () => {
  const deep = scratch.path('d'.repeat(90));
  await mkdir(deep);
  const vm = machine({ tmpDir: deep });
  const error = await rejection(vm.launch());
  expect(MachineConfigError.isInstance(error)).toBe(true);
  expect((error as MachineConfigError).option).toBe('tmpDir');
  expect(await readdir(deep)).toEqual([]);
  expect(vm.state).toBe('idle');
  const missing = machine({ tmpDir: scratch.path('does-not-exist') });
  expect((await rejection(missing.launch())) as MachineConfigError).toMatchObject({ option: 'tmpDir' });
});

test('$QEMU_SYSTEM names the binary when no option does', async () => {
  await using vm = await machine({ env: { ...process.env, QEMU_SYSTEM: '/usr/bin/qemu-system-x86_64', PATH: '/nonexistent' } }).launch();
  expect(vm.argv?.[0]).toBe('/usr/bin/qemu-system-x86_64');
});

test('shutdown sends quit, waits for the exit and removes the directory; it is idempotent', async () => {
  const vm = await machine().launch();
  const dir = vm.tempDir ?? '';
  const pid = vm.pid ?? -1;
  expect(existsSync(`${dir}/qmp.sock`)).toBe(true);
  const [first, second] = await Promise.all([vm.shutdown(), vm.shutdown()]);
  expect(first).toEqual({ exitCode: 0, signal: null, method: 'quit' });
  expect(second).toBe(first);
  expect(await vm.shutdown()).toEqual(first);
  expect(vm.state).toBe('exited');
  expect(vm.exitCode).toBe(0);
  expect(existsSync(dir)).toBe(false);
  expect(await isAlive(pid)).toBe(false);
  expect(vm.qmp.state).toBe('closed');
});

test('shutdown of a machine that ignores quit (SIGSTOP) escalates to SIGKILL within its timeout', async () => {
  const vm = await machine().launch();
  process.kill(vm.pid ?? -1, 'SIGSTOP');
  const started = Date.now();
  const result = await vm.shutdown({ timeout: 2_000 });
  const elapsed = Date.now() - started;
  expect(result).toEqual({ exitCode: null, signal: 'SIGKILL', method: 'SIGKILL' });
  // quit gets 60 % of the budget and SIGTERM the rest: SIGKILL follows at about 2 s.
  expect(elapsed).toBeGreaterThanOrEqual(1_900);
  expect(elapsed).toBeLessThan(3_500);
  expect(vm.signal).toBe('SIGKILL');
  expect(vm.tempDir).toBeUndefined();
  expect(vm.qmpSocketPath).toBeUndefined();
});

test('shutdown works when the QMP connection is already gone (SIGTERM)', async () => {
  const vm = await machine().launch();
  await vm.qmp.close();
  const result = await vm.shutdown({ timeout: 10_000 });
  expect(result.method).toBe('SIGTERM');
  expect(result.exitCode).toBe(0);
  expect(await vm.log()).toMatch(/terminating on signal 15/);
});

test('kill() ends the machine; exitCode, signal and the kept log tell what happened', async () => {
  const vm = await machine().launch();
  expect(vm.kill()).toBe(true);
  const status = await vm.waitForExit({ timeout: 5_000 });
  expect(status).toEqual({ exitCode: null, signal: 'SIGKILL' });
  expect(vm.exitCode).toBeNull();
  expect(vm.signal).toBe('SIGKILL');
  expect(vm.kill()).toBe(false);
  expect(await vm.shutdown()).toEqual({ exitCode: null, signal: 'SIGKILL', method: 'exited' });
});

test('an exit QEMU decides on its own is noticed and cleaned up', async () => {
  const vm = await machine().launch();
  const dir = vm.tempDir ?? '';
  await vm.qmp.execute('quit');
  expect(await vm.waitForExit({ timeout: 5_000 })).toEqual({ exitCode: 0, signal: null });
  expect(vm.state).toBe('exited');
  expect(existsSync(dir)).toBe(false);
  expect(MachineStateError.isInstance(await rejection(vm.hmp('info status')))).toBe(true);
});

test('await using shuts the machine down at the end of the block', async () => {
  let pid = -1;
  let dir = '';
  {
    await using vm = await QemuMachine.launch({ tmpDir: scratch.dir });
    pid = vm.pid ?? -1;
    dir = vm.tempDir ?? '';
    scratch.rememberPid(pid);
    expect(await isAlive(pid)).toBe(true);
  }
  expect(await isAlive(pid)).toBe(false);
  expect(existsSync(dir)).toBe(false);
});

test('a machine can be launched again after it exited', async () => {
  const vm = machine({ drives: [{ file: image, format: 'qcow2', id: 'drive0' }] });
  await vm.launch();
  const firstPid = vm.pid;
  scratch.rememberPid(firstPid);
  await vm.hmpQemuIo('drive0', 'write -P0x5a 128k 512');
  await vm.shutdown();
  await vm.launch();
  expect(vm.pid).not.toBe(firstPid);
  // The data written by the first run was flushed at quit and is read back by the second.
  await vm.hmpQemuIo('drive0', 'read -P0x5a 128k 512');
  await vm.shutdown();
});

test('launch gives up at its timeout, kills QEMU and says so', async () => {
  // Real QEMU is always quick to open QMP, so it is made to miss the deadline: the wrapper
  // stops itself before it execs QEMU (same pid), and nothing continues it.
  const wrapper = scratch.path('stopped-qemu.sh');
  await writeFile(wrapper, '#!/bin/sh\nkill -STOP $$\nexec qemu-system-x86_64 "$@"\n', { mode: 0o755 });
  const vm = machine({ binary: wrapper });
  const started = Date.now();
  const error = (await rejection(vm.launch({ timeout: 1_000 }))) as QemuLaunchError;
  expect(Date.now() - started).toBeLessThan(3_000);
  expect(QemuLaunchError.isInstance(error)).toBe(true);
  expect(error.reason).toBe('timeout');
  expect(error.argv[0]).toBe(wrapper);
  expect(vm.state).toBe('exited');
  expect(vm.signal).toBe('SIGKILL');
  expect(vm.tempDir).toBeUndefined();
});

test('an aborted launch kills QEMU and reports the abort', async () => {
  const vm = machine();
  const controller = new AbortController();
  const launching = vm.launch({ signal: controller.signal });
  controller.abort(new Error('test gave up'));
  const error = (await rejection(launching)) as QemuLaunchError;
  expect(QemuLaunchError.isInstance(error)).toBe(true);
  expect(error.reason).toBe('aborted');
  expect(vm.state).not.toBe('running');
  expect(vm.tempDir).toBeUndefined();
});

test('shutdown during launch stops QEMU and makes the launch fail', async () => {
  const vm = machine();
  const launching = vm.launch();
  const stopping = vm.shutdown({ timeout: 5_000 });
  const error = await rejection(launching);
  expect(QemuLaunchError.isInstance(error)).toBe(true);
  const result = await stopping;
  expect(result.method).toBe('SIGTERM');
  expect(vm.state).toBe('exited');
  expect(vm.tempDir).toBeUndefined();
});

test('logFile keeps the log where the caller wants it', async () => {
  const logFile = scratch.path('kept.log');
  const vm = await machine({ logFile, drives: [{ file: image, format: 'qcow2', id: 'drive0' }] }).launch();
  await vm.hmpQemuIo('drive0', 'read 0 512');
  await vm.shutdown();
  expect(vm.logPath).toBe(logFile);
  expect(await readFile(logFile, 'utf8')).toContain('read 512/512 bytes at offset 0');
});

test('leaves no QEMU process and no temporary directory behind', async () => {
  const { alive, dirs } = await scratch.leftovers();
  expect(alive).toEqual([]);
  expect(dirs).toEqual([]);
});
