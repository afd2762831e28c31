import { QmpkitError, errorClassKinds, isQmpkitError } from '@qmpkit/errors';
import * as api from '../src/index.js';

describe('the qmpkit error family', () => {
  test('every exported error class declares its kind', () => {
    // A new class must say what kind of failure it is: add it here with its kind.
    expect(errorClassKinds(api)).toEqual({
      BinaryNotFoundError: 'not-found',
      CaseAssertionError: 'check',
      CaseSkip: 'unsupported',
      CaseTimeoutError: 'timeout',
      CliUsageError: 'usage',
      ConformanceError: 'other',
      RunAbortedError: 'abort',
      ScratchDirError: 'not-found',
    });
  });

  test('one check recognises a timeout of this package among any qmpkit errors', () => {
    const timeout = new api.CaseTimeoutError('case', 10);
    const other = new api.CliUsageError('bad');
    expect(isQmpkitError(timeout, 'timeout')).toBe(true);
    expect(QmpkitError.isInstance(other)).toBe(true);
    expect(isQmpkitError(other, 'timeout')).toBe(false);
    expect(timeout.kind).toBe('timeout');
  });
});
