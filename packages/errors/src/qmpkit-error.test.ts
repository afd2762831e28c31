import { join } from 'node:path';

import { QmpkitError, errorClassKinds, errorKind, hasBrand, isQmpkitError, setBrand, type QmpkitErrorKind } from './index.js';

// A package's errors as the packages write them: a scoped base, classes with brand and kind.
class ToyError extends QmpkitError {
  protected static override readonly scope: string = 'toy';
  protected static override readonly brand: string = 'ToyError';
  static override isInstance(value: unknown): value is ToyError {
    return hasBrand(value, 'toy', 'ToyError');
  }
}

class ToyTimeoutError extends ToyError {
  protected static override readonly brand: string = 'ToyTimeoutError';
  static override readonly kind: QmpkitErrorKind = 'timeout';
  readonly timeout: number;
  constructor(timeout: number) {
    super(`timed out after ${timeout} ms`);
    this.timeout = timeout;
  }
  static override isInstance(value: unknown): value is ToyTimeoutError {
    return hasBrand(value, 'toy', 'ToyTimeoutError');
  }
}

// Kind from the instance: a tool run ends for several reasons.
class ToyToolError extends ToyError {
  protected static override readonly brand: string = 'ToyToolError';
  static override readonly kind: QmpkitErrorKind = 'tool';
  constructor(readonly reason: 'exit' | 'timeout') {
    super(`tool failed: ${reason}`);
  }
  override get kind(): QmpkitErrorKind {
    return this.reason === 'timeout' ? 'timeout' : 'tool';
  }
}

// The older authoring pattern (no static brand; the constructor brands and names itself).
class HandBrandedError extends ToyError {
  constructor() {
    super('by hand');
    this.name = 'HandBrandedError';
    setBrand(this, 'toy', 'HandBrandedError');
  }
  static override isInstance(value: unknown): value is HandBrandedError {
    return hasBrand(value, 'toy', 'HandBrandedError');
  }
}

describe('QmpkitError', () => {
  test('brands an instance for its class and every base, and names it after its brand', () => {
    const error = new ToyTimeoutError(5);
    expect(error.name).toBe('ToyTimeoutError');
    expect(error).toBeInstanceOf(Error);
    expect(QmpkitError.isInstance(error)).toBe(true);
    expect(ToyError.isInstance(error)).toBe(true);
    expect(ToyTimeoutError.isInstance(error)).toBe(true);
    expect(ToyTimeoutError.isInstance(new ToyError('other'))).toBe(false);
    expect(new ToyError('x').name).toBe('ToyError');
  });

  test('brands stay out of enumeration, logs and JSON', () => {
    const error = new ToyTimeoutError(5);
    // `name` is an own property, as `this.name = ...` made it before this package existed.
    expect(Object.keys(error)).toEqual(['name', 'timeout']);
    expect(JSON.stringify(error)).toBe('{"name":"ToyTimeoutError","timeout":5}');
    expect(Object.getOwnPropertySymbols(error)).toHaveLength(3);
  });

  test('cause is passed to Error', () => {
    const cause = new Error('root');
    expect(new ToyError('x', { cause }).cause).toBe(cause);
    expect('cause' in new ToyError('x')).toBe(false);
  });

  test('kind comes from the class, or from the instance where the class says so', () => {
    expect(new ToyError('x').kind).toBe('other');
    expect(new ToyTimeoutError(1).kind).toBe('timeout');
    expect(new ToyToolError('exit').kind).toBe('tool');
    expect(new ToyToolError('timeout').kind).toBe('timeout');
    expect(ToyTimeoutError.kind).toBe('timeout');
  });

  test('isQmpkitError answers one kind or a list, and no for anything else', () => {
    const errors = [new ToyTimeoutError(1), new ToyToolError('timeout'), new ToyToolError('exit'), new Error('plain')];
    expect(errors.filter((e) => isQmpkitError(e, 'timeout'))).toEqual([errors[0], errors[1]]);
    expect(errors.filter((e) => isQmpkitError(e, ['tool', 'timeout']))).toHaveLength(3);
    expect(errors.filter((e) => isQmpkitError(e))).toHaveLength(3);
    for (const value of [null, undefined, 'timeout', 42, { kind: 'timeout' }]) expect(isQmpkitError(value)).toBe(false);
  });

  test('the hand-branded pattern keeps working beside the static one', () => {
    const error = new HandBrandedError();
    expect(hasBrand(error, Symbol.for('qmpkit.toy.HandBrandedError'))).toBe(true);
    expect(hasBrand(error, Symbol.for('qmpkit.toy.ToyTimeoutError'))).toBe(false);
    expect(error.name).toBe('HandBrandedError');
    expect(HandBrandedError.isInstance(error)).toBe(true);
    expect(ToyError.isInstance(error)).toBe(true);
    expect(QmpkitError.isInstance(error)).toBe(true);
  });

  test('errorKind reads qmpkit errors and the DOMExceptions of AbortSignal', async () => {
    expect(errorKind(new ToyTimeoutError(1))).toBe('timeout');
    const aborted = new AbortController();
    aborted.abort();
    expect(errorKind(aborted.signal.reason)).toBe('abort');
    const timedOut = AbortSignal.timeout(1);
    await new Promise((resolve) => timedOut.addEventListener('abort', resolve));
    expect(errorKind(timedOut.reason)).toBe('timeout');
    expect(errorKind(new Error('plain'))).toBeUndefined();
    expect(errorKind('text')).toBeUndefined();
  });
});

describe('errorClassKinds', () => {
  test('lists the error classes of a namespace with their kinds, and nothing else', () => {
    const namespace = { ToyError, ToyTimeoutError, ToyToolError, HandBrandedError, QmpkitError, Error, helper: () => 1, value: 3 };
    expect(errorClassKinds(namespace)).toEqual({ HandBrandedError: 'other', ToyError: 'other', ToyTimeoutError: 'timeout', ToyToolError: 'tool' });
  });
});

describe('two copies of the package', () => {
  // The CommonJS build is a second copy of the module (jest runs the TypeScript source): what a
  // program gets with two installed versions, or with both an ESM and a CJS consumer.
  const copy = require(join(__dirname, '..', 'dist', 'index.cjs')) as typeof import('./index.js');

  test('an error made by one copy is recognised by the other, with its kind', () => {
    class OtherCopyTimeout extends copy.QmpkitError {
      protected static override readonly scope: string = 'toy';
      protected static override readonly brand: string = 'ToyTimeoutError';
      static override readonly kind: QmpkitErrorKind = 'timeout';
    }
    const foreign = new OtherCopyTimeout('from the other copy');
    expect(copy.QmpkitError).not.toBe(QmpkitError);
    expect(foreign instanceof QmpkitError).toBe(false);
    expect(QmpkitError.isInstance(foreign)).toBe(true);
    expect(ToyTimeoutError.isInstance(foreign)).toBe(true);
    expect(isQmpkitError(foreign, 'timeout')).toBe(true);
    expect(copy.isQmpkitError(new ToyTimeoutError(1), 'timeout')).toBe(true);
    expect(errorClassKinds({ OtherCopyTimeout })).toEqual({ OtherCopyTimeout: 'timeout' });
  });
});
