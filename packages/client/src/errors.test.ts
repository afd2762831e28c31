import { QmpkitError, errorClassKinds, isQmpkitError } from '@qmpkit/errors';
import * as api from './index.js';
import {
  QmpAbortError,
  QmpCommandError,
  QmpConnectionError,
  QmpError,
  QmpEventOverflowError,
  QmpNegotiationError,
  QmpProtocolError,
  QmpTimeoutError,
} from './errors.js';

describe('errors', () => {
  const command = { execute: 'device_del', arguments: { id: 'x' }, id: 3 };
  const reply = { error: { class: 'DeviceNotFound', desc: "Device 'x' not found" }, id: 3 };

  test('QmpCommandError carries class, desc, command and reply', () => {
    const error = new QmpCommandError(command, reply);
    expect(error).toMatchObject({ name: 'QmpCommandError', errorClass: 'DeviceNotFound', desc: "Device 'x' not found", command, reply });
    expect(error.message).toBe("device_del: DeviceNotFound: Device 'x' not found");
  });

  test('an error class the schema does not list (a newer QEMU) is reported as GenericError, without throwing', () => {
    const newer = { error: { class: 'SomeFutureClass', desc: 'from QEMU 12' }, id: 3 };
    const error = new QmpCommandError(command, newer);
    expect(error.errorClass).toBe('GenericError');
    expect(error.reply.error.class).toBe('SomeFutureClass');
    expect(error.message).toBe('device_del: SomeFutureClass: from QEMU 12');
    for (const known of ['GenericError', 'CommandNotFound', 'DeviceNotActive', 'DeviceNotFound', 'KVMMissingCap']) {
      expect(new QmpCommandError(command, { error: { class: known, desc: '' } }).errorClass).toBe(known);
    }
  });

  test('isInstance follows the class hierarchy', () => {
    const errors = [
      new QmpCommandError(command, reply),
      new QmpConnectionError('gone', { cause: new Error('EPIPE') }),
      new QmpTimeoutError('execute x', 5),
      new QmpAbortError('execute x', 'why'),
      new QmpProtocolError('bad'),
      new QmpNegotiationError('no oob', { offered: [] }),
      new QmpEventOverflowError(10, 3),
    ];
    for (const error of errors) {
      expect(QmpError.isInstance(error)).toBe(true);
      expect(error).toBeInstanceOf(Error);
    }
    expect(QmpCommandError.isInstance(errors[0])).toBe(true);
    expect(QmpConnectionError.isInstance(errors[0])).toBe(false);
    expect(QmpTimeoutError.isInstance(errors[2])).toBe(true);
    expect(QmpTimeoutError.isInstance(errors[3])).toBe(false);
    expect(QmpError.isInstance(new Error('plain'))).toBe(false);
    expect(QmpError.isInstance(null)).toBe(false);
    expect((errors[1] as Error).cause).toEqual(new Error('EPIPE'));
    expect(errors.map((e) => e.name)).toEqual([
      'QmpCommandError',
      'QmpConnectionError',
      'QmpTimeoutError',
      'QmpAbortError',
      'QmpProtocolError',
      'QmpNegotiationError',
      'QmpEventOverflowError',
    ]);
  });

  test('the brand is a global symbol, so a copy of the package recognises it', () => {
    const foreign = Object.assign(new Error('from another copy'), {
      [Symbol.for('qmpkit.client.QmpError')]: true,
      [Symbol.for('qmpkit.client.QmpTimeoutError')]: true,
    });
    expect(QmpError.isInstance(foreign)).toBe(true);
    expect(QmpTimeoutError.isInstance(foreign)).toBe(true);
    expect(QmpCommandError.isInstance(foreign)).toBe(false);
  });
});

describe('the qmpkit error family', () => {
  test('every exported error class declares its kind', () => {
    // A new class must say what kind of failure it is: add it here with its kind.
    expect(errorClassKinds(api)).toEqual({
      QmpAbortError: 'abort',
      QmpCommandError: 'qemu',
      QmpConnectionError: 'connection',
      QmpError: 'other',
      QmpEventOverflowError: 'overflow',
      QmpNegotiationError: 'protocol',
      QmpProtocolError: 'protocol',
      QmpTimeoutError: 'timeout',
      QmpUnsupportedArgumentError: 'unsupported',
      QmpUnsupportedCommandError: 'unsupported',
    });
  });

  test('one check recognises a timeout of this package among any qmpkit errors', () => {
    const timeout = new api.QmpTimeoutError('execute x', 5);
    const other = new api.QmpCommandError({ execute: 'stop', id: 1 }, { error: { class: 'GenericError', desc: 'no' }, id: 1 });
    expect(isQmpkitError(timeout, 'timeout')).toBe(true);
    expect(QmpkitError.isInstance(other)).toBe(true);
    expect(isQmpkitError(other, 'timeout')).toBe(false);
    expect(timeout.kind).toBe('timeout');
  });
});
