import { expectEqual, expectFields, expectRejection, expectTrue } from '../src/assert.js';
import { CaseAssertionError } from '../src/errors.js';

// A failed check must say what was checked and what differed, in one line.

function failure(fn: () => unknown): CaseAssertionError {
  try {
    fn();
  } catch (error) {
    if (CaseAssertionError.isInstance(error)) return error;
    throw error;
  }
  throw new Error('the check passed');
}

describe('case checks', () => {
  it('expectFields names the fields that differ and ignores the others', () => {
    const status = { name: 'bitmap0', count: 393216, granularity: 65536, persistent: false, busy: false };
    expect(() => expectFields('status of bitmap bitmap0 on node0', { count: 393216, granularity: 65536 }, status)).not.toThrow();
    const error = failure(() => expectFields('status of bitmap bitmap0 on node0', { count: 458752, granularity: 65536 }, status));
    expect(error.message).toBe(
      'status of bitmap bitmap0 on node0: expected {"count":458752,"granularity":65536}, got {"count":393216,"granularity":65536} (differs in count)',
    );
    expect(error.check).toBe('status of bitmap bitmap0 on node0');
  });

  it('expectEqual compares deeply and shows both sides', () => {
    expect(() => expectEqual('events', [{ device: 'drive1' }], [{ device: 'drive1' }])).not.toThrow();
    expect(failure(() => expectEqual('events left over', [], ['BLOCK_JOB_ERROR'])).message).toBe(
      'events left over: expected [], got ["BLOCK_JOB_ERROR"]',
    );
    expect(failure(() => expectTrue('anchor backup of drive0 completes', false)).message).toBe(
      'anchor backup of drive0 completes: expected true, got false',
    );
  });

  it('expectRejection requires a rejection of the right kind', async () => {
    const generic = Object.assign(new Error('bad granularity'), { errorClass: 'GenericError' });
    const isGeneric = (e: unknown): boolean => (e as { errorClass?: string }).errorClass === 'GenericError';
    await expect(expectRejection('add', 'GenericError', Promise.reject(generic), isGeneric)).resolves.toBe(generic);
    await expect(expectRejection('add', 'GenericError', Promise.resolve({}), isGeneric)).rejects.toThrow(
      'add: expected "GenericError", got "success ({})"',
    );
    await expect(expectRejection('add', 'GenericError', Promise.reject(new TypeError('x')), isGeneric)).rejects.toThrow(
      'add: expected "GenericError", got "TypeError: x"',
    );
  });
});
