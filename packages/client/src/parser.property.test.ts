import fc from 'fast-check';
import { QmpProtocolError } from './errors.js';
import { QmpMessageParser } from './parser.js';

// Messages shaped like QMP's: objects at the top level, anything JSON inside, including
// strings full of structural characters, escapes and non-ASCII text.
const jsonValue = fc.jsonValue({ maxDepth: 4 });
const message = fc.oneof(
  fc.record({ return: jsonValue, id: fc.nat() }),
  fc.record({ error: fc.record({ class: fc.string(), desc: fc.string({ unit: 'binary' }) }), id: fc.nat() }),
  fc.record({
    event: fc.string({ unit: 'grapheme' }),
    data: fc.dictionary(fc.string({ unit: 'binary' }), jsonValue),
    timestamp: fc.record({ seconds: fc.nat(), microseconds: fc.nat() }),
  }),
  fc.dictionary(fc.string({ unit: 'binary' }), jsonValue),
);
const separator = fc.constantFrom('', '\n', '\r\n', ' ', '\n\n\t');

test('any split of any valid message sequence parses to the same messages', () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(message, separator), { maxLength: 8 }),
      fc.array(fc.nat(), { maxLength: 12 }),
      (sequence, cuts) => {
        const bytes = Buffer.from(sequence.map(([m, sep]) => JSON.stringify(m) + sep).join(''));
        const offsets = [...new Set(cuts.map((c) => (bytes.length === 0 ? 0 : c % (bytes.length + 1))))].sort((a, b) => a - b);
        const parser = new QmpMessageParser();
        const out: unknown[] = [];
        let previous = 0;
        for (const offset of [...offsets, bytes.length]) {
          out.push(...parser.push(bytes.subarray(previous, offset)));
          previous = offset;
        }
        parser.end();
        // Compare as JSON text: -0 and 0 are the same message on the wire.
        expect(JSON.stringify(out)).toBe(JSON.stringify(sequence.map(([m]) => m)));
      },
    ),
    { numRuns: 500 },
  );
});

test('pretty-printed messages (newlines inside a message) parse the same', () => {
  fc.assert(
    fc.property(fc.array(message, { maxLength: 5 }), fc.nat(), (messages, cut) => {
      const bytes = Buffer.from(messages.map((m) => JSON.stringify(m, null, 2)).join('\n'));
      const offset = bytes.length === 0 ? 0 : cut % (bytes.length + 1);
      const parser = new QmpMessageParser();
      const out = [...parser.push(bytes.subarray(0, offset)), ...parser.push(bytes.subarray(offset))];
      expect(JSON.stringify(out)).toBe(JSON.stringify(messages));
    }),
    { numRuns: 200 },
  );
});

// Near-JSON text from tokens that are often valid in place and often not: the parser must
// agree with a reference built on JSON.parse alone about which messages the stream holds
// and whether it is malformed, however the bytes are cut.
const token = fc.constantFrom(
  '{', '}', '[', ']', '"a"', '"', ':', ',', '1', '-', '0', '.5', 'e3', 'true', 'tru', 'null',
  ' ', '\n', '\\', '"\\u00e9"', '"\\x"', 'é', '{"return": 1}', '{"a": [1, {"b": null}]}',
);

// Mostly message-shaped: an opening, a few tokens, a likely closing.
const nearMessage = fc
  .tuple(
    fc.constantFrom('{', '{"return": ', '{"a": [', '{"s": "', ' {"x": {'),
    fc.array(token, { maxLength: 8 }),
    fc.constantFrom('}', '}\n', ']}', '"}', '}}\r\n', ''),
  )
  .map(([open, middle, close]) => open + middle.join('') + close);

/** The messages in `text` by JSON.parse alone: each is the shortest parsable object from a '{'. */
function reference(text: string): { messages: unknown[]; malformed: boolean } {
  const messages: unknown[] = [];
  let at = 0;
  for (;;) {
    while (at < text.length && ' \t\r\n'.includes(text[at]!)) at++;
    if (at >= text.length) return { messages, malformed: false };
    if (text[at] !== '{') return { messages, malformed: true };
    let end = -1;
    for (let q = at + 2; q <= text.length; q++) {
      if (text[q - 1] !== '}') continue;
      try {
        messages.push(JSON.parse(text.slice(at, q)));
        end = q;
        break;
      } catch {
        // not yet a whole object
      }
    }
    if (end < 0) return { messages, malformed: true };
    at = end;
  }
}

test('agrees with a JSON.parse reference on which messages a stream holds and whether it is malformed', () => {
  fc.assert(
    fc.property(fc.array(nearMessage, { maxLength: 4 }), fc.array(fc.nat(), { maxLength: 6 }), (parts, cuts) => {
      const text = parts.join('');
      const bytes = Buffer.from(text);
      const expected = reference(text);
      const offsets = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
      const parser = new QmpMessageParser();
      const out: unknown[] = [];
      let threw = false;
      let previous = 0;
      try {
        for (const offset of [...offsets, bytes.length]) {
          out.push(...parser.push(bytes.subarray(previous, offset)));
          previous = offset;
        }
        parser.end();
      } catch (error) {
        expect(error).toBeInstanceOf(QmpProtocolError);
        threw = true;
      }
      expect(threw).toBe(expected.malformed);
      expect(JSON.stringify(out)).toBe(JSON.stringify(expected.messages));
    }),
    { numRuns: 3000 },
  );
});
