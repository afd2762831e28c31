import { QmpMessageParser } from './parser.js';

// Guards against treating each socket chunk as whole messages: a chunk that ends in the
// middle of a line must keep the tail until the next chunk completes it.
test('a chunk ending inside a message keeps the tail for the next chunk', () => {
  const parser = new QmpMessageParser();
  expect(parser.push('{"return": {}, "id": 1}\n{"return": {"sta')).toEqual([{ return: {}, id: 1 }]);
  expect(parser.inMessage).toBe(true);
  expect(parser.push('tus": "running"}, "id": 2}\n{"ev')).toEqual([{ return: { status: 'running' }, id: 2 }]);
  expect(parser.push('ent": "STOP", "timestamp": {"seconds": 0, "microseconds": 0}}\n')).toEqual([
    { event: 'STOP', timestamp: { seconds: 0, microseconds: 0 } },
  ]);
  expect(parser.inMessage).toBe(false);
});
