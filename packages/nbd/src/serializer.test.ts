import { serializeClientFlags, serializeDisconnect, serializeGo, serializeMetaContext, serializeRequest, serializeStructuredReply } from './serializer.js';

test('requests: magic, flags, type, 64-bit handle and offset, 32-bit length', () => {
  expect(serializeRequest(0, 0, 7, 2 ** 40 + 3, 65536).toString('hex')).toBe(
    '25609513' + '0000' + '0000' + '0000000000000007' + '0000010000000003' + '00010000',
  );
  expect(serializeRequest(7, 8, 0xffff_ffff, 0, 1).toString('hex')).toBe('25609513' + '0008' + '0007' + '00000000ffffffff' + '0000000000000000' + '00000001');
  expect(serializeDisconnect(2).toString('hex')).toBe('25609513' + '0000' + '0002' + '0000000000000002' + '0000000000000000' + '00000000');
});

test('options: IHAVEOPT, option number, length, data', () => {
  expect(serializeClientFlags(3).toString('hex')).toBe('00000003');
  expect(serializeStructuredReply().toString('hex')).toBe(Buffer.from('IHAVEOPT').toString('hex') + '00000008' + '00000000');
  expect(serializeGo('ab', [3]).toString('hex')).toBe(
    Buffer.from('IHAVEOPT').toString('hex') + '00000007' + '0000000a' + '00000002' + '6162' + '0001' + '0003',
  );
  const meta = serializeMetaContext('e', ['base:allocation']);
  expect(meta.readUInt32BE(8)).toBe(10);
  expect(meta.subarray(16).toString('hex')).toBe('00000001' + '65' + '00000001' + '0000000f' + Buffer.from('base:allocation').toString('hex'));
});
