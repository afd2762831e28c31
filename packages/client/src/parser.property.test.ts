import fc from 'fast-check';
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
