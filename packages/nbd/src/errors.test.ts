import { QmpkitError, errorClassKinds, isQmpkitError } from '@qmpkit/errors';
import * as api from './index.js';
import * as errors from './errors.js';

test('every error class is branded for isInstance across copies of the package, and names itself', () => {
  const command = new errors.NbdCommandError({ command: 'read', offset: 512, length: 4096, errno: 5, serverMessage: 'bad sector', errorOffset: 1024 });
  expect(command.message).toBe('read of 4096 byte(s) at offset 512 failed with EIO at offset 1024: bad sector');
  expect(command.code).toBe('EIO');
  expect(command.name).toBe('NbdCommandError');
  expect(errors.NbdCommandError.isInstance(command)).toBe(true);
  expect(errors.NbdError.isInstance(command)).toBe(true);
  expect(errors.NbdConnectionError.isInstance(command)).toBe(false);
  // A plain object with the brand passes, as an instance from another copy of the package would.
  const foreign = { [Symbol.for('qmpkit.nbd.NbdTimeoutError')]: true };
  expect(errors.NbdTimeoutError.isInstance(foreign)).toBe(true);
  expect(errors.NbdError.isInstance(new Error('x'))).toBe(false);
  const unknown = new errors.NbdCommandError({ command: 'block-status', offset: 0, length: 1, errno: 99 });
  expect(unknown.code).toBe('errno 99');
  const handshake = new errors.NbdHandshakeError('no', { option: 7, replyType: 0x80000006, serverMessage: 'gone' });
  expect([handshake.option, handshake.reply, handshake.serverMessage]).toEqual(['NBD_OPT_GO', 'NBD_REP_ERR_UNKNOWN', 'gone']);
  expect(new errors.NbdProtocolError('x', { excerpt: Buffer.from('ab') }).excerpt).toBe('6162');
  expect(new errors.NbdArgumentError('offset', -1, 'must be >= 0').message).toBe('invalid offset (-1): must be >= 0');
  for (const Class of [errors.NbdAbortError, errors.NbdTimeoutError]) expect(Class.isInstance(new Class('op', 5))).toBe(true);
});

describe('the qmpkit error family', () => {
  test('every exported error class declares its kind', () => {
    // A new class must say what kind of failure it is: add it here with its kind.
    expect(errorClassKinds(api)).toEqual({
      NbdAbortError: 'abort',
      NbdArgumentError: 'usage',
      NbdCommandError: 'qemu',
      NbdConnectionError: 'connection',
      NbdError: 'other',
      NbdHandshakeError: 'protocol',
      NbdProtocolError: 'protocol',
      NbdTimeoutError: 'timeout',
    });
  });

  test('one check recognises a timeout of this package among any qmpkit errors', () => {
    const timeout = new api.NbdTimeoutError('read', 5);
    const other = new api.NbdArgumentError('offset', -1, 'negative');
    expect(isQmpkitError(timeout, 'timeout')).toBe(true);
    expect(QmpkitError.isInstance(other)).toBe(true);
    expect(isQmpkitError(other, 'timeout')).toBe(false);
    expect(timeout.kind).toBe('timeout');
  });
});
