import { QmpProtocolError } from './errors.js';
import { classifyServerMessage } from './messages.js';

describe('classifyServerMessage', () => {
  test('sorts greeting, replies and events', () => {
    expect(classifyServerMessage({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: '' }, capabilities: [] } }).kind).toBe('greeting');
    expect(classifyServerMessage({ return: {}, id: 1 }).kind).toBe('reply');
    expect(classifyServerMessage({ return: null }).kind).toBe('reply');
    expect(classifyServerMessage({ error: { class: 'GenericError', desc: 'x' } }).kind).toBe('reply');
    expect(classifyServerMessage({ event: 'STOP', timestamp: { seconds: 0, microseconds: 0 } }).kind).toBe('event');
  });

  test('anything else is a protocol error', () => {
    for (const value of [[], 'text', null, {}, { error: 'text' }, { event: 5 }, { QMP: {} }, { hello: 1 }]) {
      expect(() => classifyServerMessage(value)).toThrow(QmpProtocolError);
    }
    expect(() => classifyServerMessage({ QMP: {} })).toThrow(/malformed QMP greeting/);
  });
});
