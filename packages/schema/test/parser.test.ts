import { QapiError, QapiSyntaxError } from '../generator/errors.js';
import { parseQapiText, QDict, QList } from '../generator/parser.js';

function syntaxError(text: string): QapiSyntaxError {
  try {
    parseQapiText(text, 'snippet.json');
  } catch (error) {
    if (QapiSyntaxError.isInstance(error)) return error;
    throw error;
  }
  throw new Error('expected a QapiSyntaxError');
}

describe('parseQapiText', () => {
  it('reads strings, booleans, objects and arrays with the line of each expression', () => {
    const parsed = parseQapiText(
      "# a comment\n{ 'struct': 'Foo',\n  'data': { 'a': 'int', '*b': ['str'] } }\n{ 'enum': 'E', 'data': [ 'x', 'y' ], 'x': true, 'y': false }\n",
      'snippet.json',
    );
    expect(parsed.exprs.map((e) => e.line)).toEqual([2, 4]);
    const first = parsed.exprs[0]?.expr;
    expect(first?.entries.get('struct')).toBe('Foo');
    const data = first?.entries.get('data');
    expect(data).toBeInstanceOf(QDict);
    const members = data as QDict;
    expect([...members.entries.keys()]).toEqual(['a', '*b']);
    expect(members.entries.get('*b')).toBeInstanceOf(QList);
    expect((members.entries.get('*b') as QList).items).toEqual(['str']);
    expect(first?.keyLines.get('data')).toBe(3);
    const second = parsed.exprs[1]?.expr;
    expect(second?.entries.get('x')).toBe(true);
    expect(second?.entries.get('y')).toBe(false);
  });

  it('keeps the order of keys that look like numbers', () => {
    const parsed = parseQapiText("{ 'x': { 'b': 'str', '2': 'int', '1': 'int' } }", 'snippet.json');
    const data = parsed.exprs[0]?.expr.entries.get('x') as QDict;
    expect([...data.entries.keys()]).toEqual(['b', '2', '1']);
  });

  it('unescapes a doubled backslash and ignores # inside strings', () => {
    const parsed = parseQapiText("{ 'a': 'x\\\\y#z' } # trailing", 'snippet.json');
    expect(parsed.exprs[0]?.expr.entries.get('a')).toBe('x\\y#z');
  });

  it('attaches a definition doc block to the next expression and reads its lines', () => {
    const parsed = parseQapiText(
      '##\n# = Section\n##\n\n##\n# @Foo:\n#\n# Some words.\n\n# Since: 2.5\n##\n{ \'struct\': \'Foo\', \'data\': {} }\n',
      'snippet.json',
    );
    expect(parsed.docs).toHaveLength(2);
    expect(parsed.docs[0]?.symbol).toBeUndefined();
    const doc = parsed.exprs[0]?.doc;
    expect(doc?.symbol).toBe('Foo');
    expect(doc?.line).toBe(5);
    expect(doc?.lines).toEqual(['@Foo:', '', 'Some words.', 'Since: 2.5']);
  });

  it('does not attach a free-form doc block to the next expression', () => {
    const parsed = parseQapiText("##\n# = Heading\n##\n{ 'include': 'x.json' }\n", 'snippet.json');
    expect(parsed.exprs[0]?.doc).toBeUndefined();
  });

  it.each([
    ["{ 'a': \"b\" }", 1, /unexpected '"b"'/],
    ["{ 'a': 'b\n' }", 1, /missing closing '/],
    ["{ 'a': 'b\\n' }", 1, /unknown escape \\n/],
    ["{ 'a': 'caf\u00e9' }", 1, /only printable ASCII/],
    ["{ 'a': 1 }", 1, /unexpected '1'/],
    ["{ 'a': null }", 1, /unexpected 'null'/],
    ["{ 'a' 'b' }", 1, /expected ':' after key 'a'/],
    ["{ 'a': 'b' 'c': 'd' }", 1, /expected ',' or '}'/],
    ["{ 'a': [ 'b' 'c' ] }", 1, /expected ',' or ']'/],
    ["\n\n{ 'a': 'b', 'a': 'c' }", 3, /duplicate key 'a'/],
    ["{ a: 'b' }", 1, /unexpected 'a'/],
    ["{ 'a': { 'b': 'c' }", 1, /expected ',' or '}' in an object, found end of file/],
    ["[ 'a' ]", 1, /expected '\{' starting a top-level expression/],
    ["{ 'a': 'b' }\n'c'", 2, /expected '\{' starting a top-level expression, found string 'c'/],
    ["{ true: 'b' }", 1, /expected a string as object key, found true/],
    ["##\n# @Foo:\n{ 'struct': 'Foo' }\n", 3, /doc comment block is not closed/],
    ["##\n#@Foo:\n##\n", 2, /missing space after '#'/],
    ['##\n# @Foo:\n', 1, /not closed by a line of '##'/],
  ])('rejects %j at its line', (text, line, message) => {
    const error = syntaxError(text);
    expect(error.file).toBe('snippet.json');
    expect(error.line).toBe(line);
    expect(error.message).toMatch(new RegExp(`^snippet\\.json:${line}: `));
    expect(error.detail).toMatch(message);
    expect(QapiError.isInstance(error)).toBe(true);
  });
});
