import { QmpMessageParser } from './parser.js';

// Guards the string scanner: an escaped quote or a trailing escaped backslash must not end
// the string early, or braces inside the string would be counted as structure.
test('escaped quotes and backslashes inside strings, split at every offset', () => {
  const value = { return: { desc: 'say \\"}{\\" and end with a backslash \\', other: '\\\\"' }, id: 9 };
  const bytes = Buffer.from(JSON.stringify(value));
  for (let offset = 0; offset <= bytes.length; offset++) {
    const parser = new QmpMessageParser();
    const out = [...parser.push(bytes.subarray(0, offset)), ...parser.push(bytes.subarray(offset))];
    expect(out).toEqual([value]);
  }
});
