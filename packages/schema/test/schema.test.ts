import { QapiSchemaError, QapiSyntaxError } from '../generator/errors.js';
import { formatCond } from '../generator/emitter.js';
import { loadSchemaFromTexts, type Schema } from '../generator/schema.js';

function load(text: string, extra: Record<string, string> = {}): Schema {
  return loadSchemaFromTexts('main.json', { 'main.json': text, ...extra });
}

function schemaError(text: string, extra: Record<string, string> = {}): QapiSchemaError {
  try {
    load(text, extra);
  } catch (error) {
    if (QapiSchemaError.isInstance(error)) return error;
    throw error;
  }
  throw new Error('expected a QapiSchemaError');
}

const ENUM = "{ 'enum': 'Kind', 'data': [ 'a', 'b', 'c' ] }\n";

describe('loadSchema', () => {
  it('reads an enum with values, value conditions and features, and a prefix', () => {
    const schema = load(
      "##\n# @Mode:\n#\n# @fast: quick (since 3.1)\n#\n# Since: 2.0\n##\n" +
        "{ 'enum': 'Mode', 'prefix': 'MODE', 'if': 'CONFIG_MODE', 'features': [ 'unstable' ],\n" +
        "  'data': [ 'slow', { 'name': 'fast', 'if': { 'not': 'CONFIG_SLOW' }, 'features': [ 'deprecated' ] } ] }",
    );
    const mode = schema.types.get('Mode');
    expect(mode).toMatchObject({
      meta: 'enum',
      prefix: 'MODE',
      if: 'CONFIG_MODE',
      since: '2.0',
      features: [{ name: 'unstable', if: undefined }],
      values: [
        { name: 'slow', if: undefined, features: [] },
        { name: 'fast', if: { not: 'CONFIG_SLOW' }, features: [{ name: 'deprecated', if: undefined }], since: '3.1' },
      ],
    });
  });

  it('reads a struct with a base, optional and array members, member conditions and features', () => {
    const schema = load(
      "{ 'struct': 'Base', 'data': { 'id': 'str' } }\n" +
        "{ 'struct': 'Child', 'base': 'Base', 'features': [ { 'name': 'deprecated', 'if': 'CONFIG_OLD' } ],\n" +
        "  'data': { '*size': 'size', 'list': ['Base'], 'cond': { 'type': 'int', 'if': { 'all': [ 'A', { 'any': [ 'B', 'C' ] } ] }, 'features': [ 'unstable' ] } } }",
    );
    expect(schema.types.get('Child')).toMatchObject({
      meta: 'struct',
      base: 'Base',
      features: [{ name: 'deprecated', if: 'CONFIG_OLD' }],
      members: [
        { name: 'size', optional: true, type: { name: 'size', array: false } },
        { name: 'list', optional: false, type: { name: 'Base', array: true } },
        { name: 'cond', optional: false, type: { name: 'int', array: false }, if: { all: ['A', { any: ['B', 'C'] }] }, features: [{ name: 'unstable' }] },
      ],
    });
  });

  it('reads unions with a named or inline base and conditional branches', () => {
    const schema = load(
      ENUM +
        "{ 'struct': 'A', 'data': { 'x': 'int' } }\n{ 'struct': 'UBase', 'data': { 'kind': 'Kind', '*tag': 'str' } }\n" +
        "{ 'union': 'Named', 'base': 'UBase', 'discriminator': 'kind', 'data': { 'a': 'A', 'b': { 'type': 'A', 'if': 'CONFIG_B' } } }\n" +
        "{ 'union': 'Inline', 'base': { 'type': 'Kind' }, 'discriminator': 'type', 'data': { 'c': 'A' } }",
    );
    expect(schema.types.get('Named')).toMatchObject({
      meta: 'union',
      base: 'UBase',
      discriminator: 'kind',
      branches: [
        { name: 'a', type: { name: 'A', array: false }, if: undefined },
        { name: 'b', type: { name: 'A', array: false }, if: 'CONFIG_B' },
      ],
    });
    expect(schema.types.get('Inline')).toMatchObject({ base: [{ name: 'type', type: { name: 'Kind' } }], discriminator: 'type' });
  });

  it('reads alternates, including an array branch', () => {
    const schema = load("{ 'alternate': 'Alt', 'data': { 's': 'str', 'n': 'null', 'l': [ 'uint64' ], 'c': { 'type': 'bool', 'if': 'X' } } }");
    expect(schema.types.get('Alt')).toMatchObject({
      meta: 'alternate',
      branches: [
        { name: 's', type: { name: 'str', array: false } },
        { name: 'n', type: { name: 'null', array: false } },
        { name: 'l', type: { name: 'uint64', array: true } },
        { name: 'c', type: { name: 'bool', array: false }, if: 'X' },
      ],
    });
  });

  it('reads commands with every key', () => {
    const schema = load(
      "{ 'struct': 'Args', 'data': { 'a': 'int' } }\n" +
        "{ 'command': 'plain' }\n" +
        "{ 'command': 'inline', 'data': { '*x': 'str' }, 'returns': ['Args'], 'allow-oob': true, 'allow-preconfig': true, 'features': [ 'deprecated' ], 'if': 'CONFIG_X' }\n" +
        "{ 'command': 'named', 'data': 'Args', 'boxed': true, 'coroutine': true, 'gen': false, 'success-response': false, 'returns': 'any' }",
    );
    expect(schema.commands.get('plain')).toMatchObject({ data: undefined, returns: undefined, boxed: false, allowOob: false, gen: true, successResponse: true, coroutine: false, allowPreconfig: false });
    expect(schema.commands.get('inline')).toMatchObject({
      data: [{ name: 'x', optional: true }],
      returns: { name: 'Args', array: true },
      allowOob: true,
      allowPreconfig: true,
      if: 'CONFIG_X',
      features: [{ name: 'deprecated' }],
    });
    expect(schema.commands.get('named')).toMatchObject({ data: 'Args', boxed: true, coroutine: true, gen: false, successResponse: false, returns: { name: 'any', array: false } });
  });

  it('reads events with inline, named and boxed union data', () => {
    const schema = load(
      ENUM +
        "{ 'struct': 'A', 'data': { 'k': 'Kind' } }\n{ 'union': 'U', 'base': 'A', 'discriminator': 'k', 'data': { 'a': 'A' } }\n" +
        "{ 'event': 'NONE' }\n{ 'event': 'INLINE', 'data': { 'x': 'int' } }\n{ 'event': 'BOXED', 'data': 'U', 'boxed': true, 'if': 'Y' }",
    );
    expect(schema.events.get('NONE')?.data).toBeUndefined();
    expect(schema.events.get('INLINE')?.data).toMatchObject([{ name: 'x' }]);
    expect(schema.events.get('BOXED')).toMatchObject({ data: 'U', boxed: true, if: 'Y' });
  });

  it('follows includes relative to the including file, once each, and names modules after files', () => {
    const schema = load("{ 'include': 'sub/a.json' }\n{ 'include': 'sub/a.json' }\n{ 'pragma': { 'doc-required': false, 'command-name-exceptions': [ 'x_y' ] } }", {
      'sub/a.json': "{ 'include': 'b.json' }\n{ 'struct': 'A', 'data': {} }",
      'sub/b.json': "{ 'struct': 'B', 'data': {} }",
    });
    expect(schema.modules).toEqual(['main', 'a', 'b']);
    expect(schema.types.get('A')?.info).toEqual({ file: 'sub/a.json', line: 2, module: 'a' });
    expect(schema.types.get('B')?.info.module).toBe('b');
    expect(schema.pragma.commandNameExceptions).toEqual(['x_y']);
  });

  it('requires a definition doc when pragma doc-required is on', () => {
    expect(schemaError("{ 'pragma': { 'doc-required': true } }\n{ 'struct': 'A', 'data': {} }").detail).toMatch(/has no doc comment/);
  });

  it.each([
    ["{ 'struct': 'A', 'data': {}, 'bogus': 'x' }", 1, /unknown key 'bogus'/],
    ["\n{ 'struct': 'A',\n  'data': {},\n  'boxed': true }", 4, /unknown key 'boxed'/],
    ["{ 'struct': 'A' }", 1, /missing key 'data'/],
    ["{ 'thing': 'A' }", 1, /exactly one of the keys/],
    ["{ 'struct': 'A', 'enum': 'B', 'data': {} }", 1, /more than one of the keys/],
    ["{ 'pragma': { 'unknown-pragma': true } }", 1, /unknown pragma/],
    ["{ 'enum': 'E', 'data': [ 'a', 'a' ] }", 1, /duplicate enum value 'a'/],
    ["{ 'enum': 'E', 'data': 'a' }", 1, /must be an array of values/],
    ["{ 'struct': 'A', 'data': { 'x': 'Nope' } }", 1, /unknown type 'Nope'/],
    ["{ 'struct': 'A', 'data': { 'x': ['int', 'str'] } }", 1, /exactly one type name/],
    ["{ 'struct': 'A', 'data': { 'x': { 'type': 'int', 'default': 'x' } } }", 1, /unknown key 'default'/],
    ["{ 'struct': 'A', 'data': { 'x': { 'type': 'int', 'if': { 'maybe': 'X' } } } }", 1, /unknown 'if' operator 'maybe'/],
    ["{ 'struct': 'A', 'data': {}, 'if': { 'all': [] } }", 1, /non-empty array/],
    ["{ 'struct': 'A', 'data': {}, 'features': [ 'f', 'f' ] }", 1, /duplicate feature 'f'/],
    ["{ 'struct': 'A', 'data': {} }\n{ 'enum': 'A', 'data': [] }", 2, /'A' is already defined/],
    ["{ 'struct': 'str', 'data': {} }", 1, /already defined \(a built-in type\)/],
    ["{ 'struct': 'A', 'base': 'A', 'data': {} }", 1, /its own base/],
    [ENUM + "{ 'union': 'U', 'base': { 'kind': 'Kind' }, 'discriminator': 'nope', 'data': { 'a': 'Kind' } }", 2, /discriminator 'nope' is not a member/],
    [ENUM + "{ 'union': 'U', 'base': { '*kind': 'Kind' }, 'discriminator': 'kind', 'data': {} }", 2, /at least one branch/],
    [ENUM + "{ 'struct': 'S', 'data': {} }\n{ 'union': 'U', 'base': { '*kind': 'Kind' }, 'discriminator': 'kind', 'data': { 'a': 'S' } }", 3, /required member of an enum type/],
    [ENUM + "{ 'struct': 'S', 'data': {} }\n{ 'union': 'U', 'base': { 'kind': 'Kind' }, 'discriminator': 'kind', 'data': { 'z': 'S' } }", 3, /'z' is not a value of enum 'Kind'/],
    [ENUM + "{ 'union': 'U', 'base': { 'kind': 'Kind' }, 'discriminator': 'kind', 'data': { 'a': 'Kind' } }", 2, /must be a struct or union type, 'Kind' is a enum/],
    [ENUM + "{ 'struct': 'S', 'data': {} }\n{ 'union': 'U', 'base': { 'kind': 'Kind' }, 'discriminator': 'kind', 'data': { 'a': ['S'] } }", 3, /cannot be an array/],
    ["{ 'alternate': 'A', 'data': { 'x': 'B' } }\n{ 'alternate': 'B', 'data': { 's': 'str' } }", 1, /cannot be another alternate/],
    ["{ 'command': 'c', 'data': 'int' }", 1, /'data' must name a struct type, 'int' is not a defined type/],
    ["{ 'command': 'c', 'boxed': true }", 1, /needs 'data' naming a type/],
    ["{ 'command': 'c', 'allow-oob': false }", 1, /'allow-oob' must be true/],
    ["{ 'command': 'c', 'gen': true }", 1, /'gen' must be false/],
    ["{ 'command': 'c', 'allow-oob': true, 'coroutine': true }", 1, /cannot be combined/],
    ["{ 'command': 'c', 'returns': 'Nope' }", 1, /unknown type 'Nope'/],
    ["{ 'command': 'c' }\n{ 'struct': 'A', 'data': { 'x': 'c' } }", 2, /command 'c', which is not a type/],
    ["{ 'event': 'E', 'data': 'int', 'boxed': true }", 1, /'data' must name a struct or union type/],
    ["{ 'event': 'E', 'returns': 'int' }", 1, /unknown key 'returns'/],
    ["{ 'include': 'missing.json' }", 1, /cannot read schema file 'missing.json'/],
  ])('rejects %j naming file and line', (text, line, message) => {
    const error = schemaError(text);
    expect(error.file).toBe('main.json');
    expect(error.line).toBe(line);
    expect(error.message.startsWith(`main.json:${line}: `)).toBe(true);
    expect(error.detail).toMatch(message);
  });

  it('reports syntax errors of an included file with that file name', () => {
    expect(() => load("{ 'include': 'bad.json' }", { 'bad.json': "\n{ 'struct': 'A', 'data': {} } }" })).toThrow(
      expect.objectContaining({ file: 'bad.json', line: 2, name: 'QapiSyntaxError' }) as QapiSyntaxError,
    );
  });

  it('formats conditions the way C preprocessor conditions read', () => {
    expect(formatCond({ all: ['A', { any: ['B', { not: 'C' }] }] })).toBe('A && (B || !C)');
    expect(formatCond({ not: { all: ['A', 'B'] } })).toBe('!(A && B)');
  });
});
