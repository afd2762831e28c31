import { QmpMessageParser } from './parser.js';

// Guards against decoding each chunk to text on its own, which turns a multi-byte
// character cut by a chunk boundary into U+FFFD replacement characters.
test('a multi-byte character split between chunks survives', () => {
  const text = 'ü € 𝄞 日本';
  const bytes = Buffer.from(`{"return": ${JSON.stringify(text)}, "id": 1}\n`);
  for (let offset = 1; offset < bytes.length; offset++) {
    const parser = new QmpMessageParser();
    const out = [...parser.push(bytes.subarray(0, offset)), ...parser.push(bytes.subarray(offset))];
    expect(out).toEqual([{ return: text, id: 1 }]);
  }
});
