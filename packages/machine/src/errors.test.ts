import { QmpkitError, errorClassKinds, isQmpkitError } from '@qmpkit/errors';
import * as api from './index.js';
import {
  InvalidHmpCommandError,
  MachineConfigError,
  MachineError,
  QemuIoHmpError,
  QemuLaunchError,
} from './errors.js';

describe('error brands', () => {
  const launch = new QemuLaunchError({
    reason: 'exited',
    argv: ['qemu-system-x86_64', '-machine', 'none'],
    exitCode: 1,
    signal: null,
    logTail: "qemu-system-x86_64: -drive ...: Could not open '/nonexist'\n",
  });

  test('isInstance recognises the class and its base, not siblings', () => {
    expect(QemuLaunchError.isInstance(launch)).toBe(true);
    expect(MachineError.isInstance(launch)).toBe(true);
    expect(QemuIoHmpError.isInstance(launch)).toBe(false);
    expect(MachineConfigError.isInstance(new Error('x'))).toBe(false);
    expect(MachineError.isInstance(null)).toBe(false);
  });

  test('a brand survives a copy of the class (a duplicate install)', () => {
    const foreign = Object.assign(Object.create(null) as object, { [Symbol.for('qmpkit.machine.QemuIoHmpError')]: true });
    expect(QemuIoHmpError.isInstance(foreign)).toBe(true);
  });

  test('errors carry their data and a useful message', () => {
    expect(launch.name).toBe('QemuLaunchError');
    expect(launch.message).toContain('exited with code 1');
    expect(launch.message).toContain("Could not open '/nonexist'");
    expect(launch.argv[0]).toBe('qemu-system-x86_64');
    const refused = new InvalidHmpCommandError('command', 'write "x"', 'quote');
    expect(refused).toBeInstanceOf(MachineError);
    expect(refused.name).toBe('InvalidHmpCommandError');
  });

  test('cause is kept', () => {
    const cause = new Error('spawn EACCES');
    const error = new QemuLaunchError({ reason: 'spawn-failed', argv: ['x'], exitCode: null, signal: null, logTail: '', cause });
    expect(error.cause).toBe(cause);
  });
});

describe('the qmpkit error family', () => {
  test('every exported error class declares its kind', () => {
    // A new class must say what kind of failure it is: add it here with its kind.
    expect(errorClassKinds(api)).toEqual({
      InvalidHmpCommandError: 'usage',
      MachineAbortError: 'abort',
      MachineConfigError: 'usage',
      MachineError: 'other',
      MachineStateError: 'state',
      MachineTimeoutError: 'timeout',
      QemuBinaryNotFoundError: 'not-found',
      QemuIoHmpError: 'qemu',
      QemuLaunchError: 'qemu',
      QemuShutdownError: 'qemu',
    });
  });

  test('one check recognises a timeout of this package among any qmpkit errors', () => {
    const timeout = new api.MachineTimeoutError('waitForExit', 10);
    const other = new api.MachineStateError('hmp', 'idle');
    expect(isQmpkitError(timeout, 'timeout')).toBe(true);
    expect(QmpkitError.isInstance(other)).toBe(true);
    expect(isQmpkitError(other, 'timeout')).toBe(false);
    expect(timeout.kind).toBe('timeout');
  });
});
