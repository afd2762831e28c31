import { MachineConfigError } from './errors.js';
import { checkQemuId, escapeOptionValue, formatName, formatOptionList, formatStructuredOption, isUntyped, untyped } from './option-syntax.js';

describe('escapeOptionValue', () => {
  test('doubles every comma, as QemuOpts reads ",," as a literal comma', () => {
    expect(escapeOptionValue('a,b,,c')).toBe('a,,b,,,,c');
    expect(escapeOptionValue('/tmp/plain.qcow2')).toBe('/tmp/plain.qcow2');
  });
});

describe('formatOptionList', () => {
  test('joins pairs and escapes values, not keys', () => {
    expect(
      formatOptionList('drive', [
        ['if', 'none'],
        ['file', '/x/a,b.qcow2'],
        ['read-only', true],
        ['auto-read-only', false],
        ['throttling.iops-total', 100],
      ]),
    ).toBe('if=none,file=/x/a,,b.qcow2,read-only=on,auto-read-only=off,throttling.iops-total=100');
  });

  test.each(['a=b', 'a,b', '', 'sp ace'])('refuses the key %j', (key) => {
    expect(() => formatOptionList('drive.opts', [[key, 'x']])).toThrow(MachineConfigError);
  });

  test('refuses a non-finite number', () => {
    const attempt = (): string => formatOptionList('drive.opts', [['size', Number.NaN]]);
    expect(attempt).toThrow(/numbers must be finite/);
  });
});

describe('checkQemuId', () => {
  test.each(['drive0', 'a', 'node-0.x_y'])('accepts %j', (id) => {
    expect(() => checkQemuId('drive.id', id)).not.toThrow();
  });

  test.each(['0drive', '', '#block1', 'a b', 'a,b', '-x'])('refuses %j', (id) => {
    let caught: unknown;
    try {
      checkQemuId('drive.id', id);
    } catch (error) {
      caught = error;
    }
    expect(MachineConfigError.isInstance(caught)).toBe(true);
    expect((caught as MachineConfigError).option).toBe('drive.id');
    expect((caught as MachineConfigError).value).toBe(id);
  });

  test('limits node names to 31 characters', () => {
    expect(() => checkQemuId('drive.nodeName', 'n'.repeat(31))).not.toThrow();
    expect(() => checkQemuId('drive.nodeName', 'n'.repeat(32))).toThrow(/at most 31/);
  });
});

describe('structured options', () => {
  test('typed objects and untyped() objects are written as JSON; strings pass as they are', () => {
    expect(formatStructuredOption('blockdev', { driver: 'file', filename: 'a,b' })).toBe('{"driver":"file","filename":"a,b"}');
    expect(formatStructuredOption('blockdev', untyped({ driver: 'new-driver', x: 1 }))).toBe('{"driver":"new-driver","x":1}');
    expect(formatStructuredOption('blockdev', 'driver=file,filename=a,,b')).toBe('driver=file,filename=a,,b');
    expect(formatStructuredOption('blockdev', untyped('driver=file'))).toBe('driver=file');
    expect(() => formatStructuredOption('blockdev', '')).toThrow(MachineConfigError);
    expect(() => formatStructuredOption('blockdev', untyped(''))).toThrow(MachineConfigError);
  });

  test('untyped() is recognised by its global symbol, not by its shape', () => {
    const wrapped = untyped('qcow3');
    expect(isUntyped(wrapped)).toBe(true);
    expect(isUntyped({ untyped: 'qcow3' })).toBe(false);
    expect(isUntyped({ [Symbol.for('qmpkit.machine.untyped')]: 'x' })).toBe(true);
    expect(Object.isFrozen(wrapped)).toBe(true);
    expect(formatName(wrapped)).toBe('qcow3');
    expect(formatName('qcow2')).toBe('qcow2');
  });
});
