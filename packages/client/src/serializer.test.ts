import { serializeCommand } from './serializer.js';

describe('serializeCommand', () => {
  test('a command without arguments', () => {
    expect(serializeCommand('query-status', undefined, 1)).toBe('{"execute":"query-status","id":1}\n');
  });

  test('a command with arguments is the JSON of { execute, arguments, id }', () => {
    const args = { node: 'node0', name: 'bitmap0', granularity: 65536, persistent: true, 'x-n': 'é"\\' };
    const line = serializeCommand('block-dirty-bitmap-add', args, 42);
    expect(line.endsWith('\n')).toBe(true);
    expect(line.indexOf('\n')).toBe(line.length - 1);
    expect(JSON.parse(line)).toEqual({ execute: 'block-dirty-bitmap-add', arguments: args, id: 42 });
  });

  test('out-of-band commands use exec-oob', () => {
    expect(JSON.parse(serializeCommand('migrate-pause', {}, 7, true))).toEqual({ 'exec-oob': 'migrate-pause', arguments: {}, id: 7 });
  });

  test('arguments that are not a JSON object are refused', () => {
    expect(() => serializeCommand('x', [1, 2], 1)).toThrow(/must be a JSON object/);
    expect(() => serializeCommand('x', 'text', 1)).toThrow(TypeError);
    expect(() => serializeCommand('x', () => 1, 1)).toThrow(TypeError);
  });

  test('a name that needs escaping is escaped', () => {
    expect(JSON.parse(serializeCommand('we"ird', undefined, 1))).toEqual({ execute: 'we"ird', id: 1 });
  });
});
