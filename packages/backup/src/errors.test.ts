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
