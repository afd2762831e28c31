import { isDeepStrictEqual } from 'node:util';

import { CaseAssertionError, show } from './errors.js';

// Checks used by the cases. Each names what it checks, so a failure reads like the reference's
// assertion ("bitmap0 status on node0: expected ..., got ...").

export function expectEqual<T>(check: string, expected: T, actual: unknown): asserts actual is T {
  if (!isDeepStrictEqual(actual, expected)) throw new CaseAssertionError(check, expected, actual);
}

export function expectTrue(check: string, value: boolean, detail?: string): asserts value {
  if (!value) throw new CaseAssertionError(check, true, false, detail === undefined ? {} : { detail });
}

/**
 * Every field of `expected` equals the same field of `actual` (extra fields in `actual` are
 * fine): how iotests compare a bitmap's status with the fields a test cares about.
 */
export function expectFields(check: string, expected: Record<string, unknown>, actual: object): void {
  const picked: Record<string, unknown> = {};
  const actualRecord = actual as Record<string, unknown>;
  for (const key of Object.keys(expected)) picked[key] = actualRecord[key];
  if (!isDeepStrictEqual(picked, expected)) {
    const differing = Object.keys(expected).filter((k) => !isDeepStrictEqual(picked[k], expected[k]));
    throw new CaseAssertionError(check, expected, picked, { detail: `differs in ${differing.join(', ')}` });
  }
}

/** `promise` rejects, and the rejection satisfies `accept` (which names what it expected). */
export async function expectRejection(
  check: string,
  expected: string,
  promise: Promise<unknown>,
  accept: (error: unknown) => boolean,
): Promise<unknown> {
  let value: unknown;
  try {
    value = await promise;
  } catch (error) {
    if (accept(error)) return error;
    const described = error instanceof Error ? `${error.name}: ${error.message}` : show(error);
    throw new CaseAssertionError(check, expected, described, { cause: error });
  }
  throw new CaseAssertionError(check, expected, `success (${show(value)})`);
}
