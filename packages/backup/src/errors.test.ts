import { QmpkitError, errorClassKinds, isQmpkitError } from '@qmpkit/errors';
import * as api from './index.js';
import {
  BackupError,
  BackupJobError,
  BitmapNotFoundError,
  ChainBrokenError,
  InvalidGranularityError,
  InvalidTransactionError,
  JobTrackingError,
  ManifestError,
  NewFullBackupRequiredError,
  NodeNotFoundError,
  TargetExistsError,
  VerifyError,
} from './errors.js';
import { checkGranularity, isValidGranularity } from './bitmaps.js';

describe('errors', () => {
  const samples = [
    new InvalidGranularityError(1000),
    new NodeNotFoundError('n'),
    new BitmapNotFoundError('n', 'b'),
    new BackupJobError('j', 'failed', 'Input/output error'),
    new JobTrackingError('j', 'timed out'),
    new InvalidTransactionError('empty'),
    new NewFullBackupRequiredError('n', 'b', 'bitmap-missing', 'gone'),
    new TargetExistsError('/t'),
    new ManifestError('/m', 'bad'),
    new VerifyError(['x differs']),
  ];

  it('brands every class, so isInstance tells them apart without instanceof', () => {
    for (const error of samples) {
      expect(BackupError.isInstance(error)).toBe(true);
      expect(error).toBeInstanceOf(Error);
      const others = samples.filter((e) => e.constructor !== error.constructor);
      const Class = error.constructor as unknown as { isInstance(v: unknown): boolean };
      expect(Class.isInstance(error)).toBe(true);
      for (const other of others) expect(Class.isInstance(other)).toBe(false);
    }
    expect(BackupError.isInstance(new Error('plain'))).toBe(false);
    expect(BackupError.isInstance(undefined)).toBe(false);
  });

  it('recognises an error from another copy of the package by its brand', () => {
    const foreign = Object.assign(new Error('other copy'), {
      [Symbol.for('qmpkit.backup.BackupError')]: true,
      [Symbol.for('qmpkit.backup.NewFullBackupRequiredError')]: true,
    });
    expect(NewFullBackupRequiredError.isInstance(foreign)).toBe(true);
    expect(ChainBrokenError.isInstance(foreign)).toBe(true);
  });

  it('carries what a caller needs', () => {
    const broken = new NewFullBackupRequiredError('drive0', 'b0', 'granularity-mismatch', 'bitmap has 128k');
    expect(broken).toMatchObject({ node: 'drive0', bitmap: 'b0', reason: 'granularity-mismatch' });
    expect(broken.message).toMatch(/new full backup is required/);
    const cause = new Error('socket closed');
    expect(new JobTrackingError('j', 'lost', { cause }).cause).toBe(cause);
    expect(new InvalidGranularityError(3000).granularity).toBe(3000);
  });
});

describe('granularity', () => {
  it('accepts exactly the powers of two from 512 B to 2 GiB', () => {
    for (let bits = 9; bits <= 31; bits++) expect(isValidGranularity(2 ** bits)).toBe(true);
    for (const g of [0, 1, 256, 511, 513, 64000, 3 * 65536, 2 ** 32, 2 ** 31 + 512, -512, 1.5, Number.NaN, Infinity]) {
      expect(isValidGranularity(g)).toBe(false);
    }
    expect(() => checkGranularity(64000)).toThrow(InvalidGranularityError);
    expect(() => checkGranularity(65536)).not.toThrow();
  });
});

describe('the qmpkit error family', () => {
  test('every exported error class declares its kind', () => {
    // A new class must say what kind of failure it is: add it here with its kind.
    expect(errorClassKinds(api)).toEqual({
      BackupAbortedError: 'abort',
      BackupError: 'other',
      BackupJobError: 'qemu',
      BitmapNotFoundError: 'not-found',
      BitmapRangeError: 'qemu',
      BlockDriverUnavailableError: 'unsupported',
      BlockdevCreateError: 'qemu',
      ChainBrokenError: 'state',
      DriveBusyError: 'state',
      InvalidGranularityError: 'usage',
      InvalidTransactionError: 'usage',
      JobTrackingError: 'state',
      ManifestError: 'integrity',
      NewFullBackupRequiredError: 'state',
      NodeNotFoundError: 'not-found',
      PendingRunError: 'state',
      PullSinkError: 'state',
      PullUnavailableError: 'unsupported',
      TargetExistsError: 'state',
      VerifyError: 'integrity',
    });
  });

  test('one check recognises a timeout of this package among any qmpkit errors', () => {
    const timeout = new api.JobTrackingError('j', 'timed out waiting for the job to end', { cause: new DOMException('The operation timed out.', 'TimeoutError') });
    const other = new api.JobTrackingError('j', 'the job ended before reaching status "pending"');
    expect(isQmpkitError(timeout, 'timeout')).toBe(true);
    expect(QmpkitError.isInstance(other)).toBe(true);
    expect(isQmpkitError(other, 'timeout')).toBe(false);
    expect(timeout.kind).toBe('timeout');
  });

  test('kinds that follow the instance: an aborted run, a bitmap range QEMU cannot set', () => {
    expect(new api.BackupAbortedError('r', 'timeout').kind).toBe('timeout');
    expect(new api.BackupAbortedError('r', 'abort').kind).toBe('abort');
    expect(new api.BitmapRangeError('n', 'b', 'unsupported', 'no HMP').kind).toBe('unsupported');
    expect(new api.BitmapRangeError('n', 'b', 'failed', 'refused').kind).toBe('qemu');
    expect(new api.PullUnavailableError('n', 'nbd-server-running', 'running').kind).toBe('state');
    expect(new api.PullUnavailableError('n', 'fleecing-method', 'no driver').kind).toBe('unsupported');
    const aborted = new AbortController();
    aborted.abort();
    expect(new api.JobTrackingError('j', 'tracking aborted', { cause: aborted.signal.reason }).kind).toBe('abort');
  });
});
