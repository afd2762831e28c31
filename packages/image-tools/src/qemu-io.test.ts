import { ImageToolsArgumentError } from './errors.js';
import { QemuIo, findQemuIoFailures } from './qemu-io.js';

describe('qemu-io command building', () => {
  it('writes patterns as hex bytes and sizes in canonical QEMU units', () => {
    expect(QemuIo.writeCommand({ pattern: 0x41, offset: 0, length: 512 })).toBe('write -P 0x41 0 512');
    expect(QemuIo.writeCommand({ pattern: 0, offset: '1M', length: 33521664 })).toBe('write -P 0x00 1M 32736k');
    expect(QemuIo.writeCommand({ zero: true, unmap: true, offset: '64k', length: '64k' })).toBe('write -z -u 64k 64k');
    expect(QemuIo.writeCommand({ compressed: true, fua: true, offset: 0, length: '64k' })).toBe('write -c -f 0 64k');
    expect(QemuIo.readCommand({ pattern: 0xff, offset: '0x200', length: '1.5k' })).toBe('read -P 0xff 512 1536');
    expect(QemuIo.readCommand({ offset: 0, length: 1 })).toBe('read 0 1');
    expect(QemuIo.discardCommand({ offset: 0, length: '1M' })).toBe('discard 0 1M');
  });

  it.each([
    [{ pattern: 256, offset: 0, length: 512 }],
    [{ pattern: -1, offset: 0, length: 512 }],
    [{ pattern: 0x41, offset: -512, length: 512 }],
    [{ pattern: 0x41, offset: 0, length: 0.5 }],
    [{ pattern: 0x41, offset: '1x', length: 512 }],
    [{ pattern: 0x41, offset: 0 }],
    [{ pattern: 0x41, zero: true, offset: 0, length: 512 }],
    [{ unmap: true, offset: 0, length: 512 }],
  ])('rejects %j', (request) => {
    expect(() => QemuIo.writeCommand(request as never)).toThrow(ImageToolsArgumentError);
  });
});

describe('findQemuIoFailures', () => {
  it('finds the failure lines qemu-io prints', () => {
    const output = [
      'wrote 512/512 bytes at offset 0',
      '512 bytes, 1 ops; 00.04 sec (14.043 KiB/sec and 28.0865 ops/sec)',
      'Pattern verification failed at offset 0, 512 bytes',
      'read 512/512 bytes at offset 0',
      'write failed: Input/output error',
      'Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- abc',
      '300 is not a valid pattern byte',
      'command "bogus" not found',
      'length cannot exceed 2147483136, given 1.5E',
      "qemu-io: can't open device x.qcow2: Could not open 'x.qcow2': No such file or directory",
    ].join('\n');
    expect(findQemuIoFailures(output)).toEqual([
      'Pattern verification failed at offset 0, 512 bytes',
      'write failed: Input/output error',
      'Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- abc',
      '300 is not a valid pattern byte',
      'command "bogus" not found',
      'length cannot exceed 2147483136, given 1.5E',
      "qemu-io: can't open device x.qcow2: Could not open 'x.qcow2': No such file or directory",
    ]);
  });

  // Output of QEMU 7.2's qemu-io through HMP, as printed to QEMU's stdout/stderr or returned
  // as the HMP reply (CRLF line ends), including lines only that path was seen to print.
  it.each([
    ['write failed: Input/output error\n', 'write failed: Input/output error'],
    ['read failed: Input/output error\n', 'read failed: Input/output error'],
    ['discard failed: Input/output error\n', 'discard failed: Input/output error'],
    ['aio_write failed: Input/output error\n', 'aio_write failed: Input/output error'],
    ['bad argument count 1 to write, expected at least 2 arguments\n', 'bad argument count 1 to write, expected at least 2 arguments'],
    ["write: invalid option -- 'x'\nwrite [-bcCfnquz] [-P pattern | -s source_file] off len -- writes\n", "write: invalid option -- 'x'"],
    ["read: option requires an argument -- 'P'\nread [-abCqv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes\n", "read: option requires an argument -- 'P'"],
    ['0x1ff is not a valid pattern byte\n', '0x1ff is not a valid pattern byte'],
    ['Only one of -z, -P, and -s can be specified at the same time\n', 'Only one of -z, -P, and -s can be specified at the same time'],
    ['length cannot exceed 2147483136 without -n, given 5000000000\n', 'length cannot exceed 2147483136 without -n, given 5000000000'],
    ['pattern verification range exceeds end of read data\n', 'pattern verification range exceeds end of read data'],
    ['Parsing error: argument too large -- 99E\n', 'Parsing error: argument too large -- 99E'],
    ["1 is not a sector-aligned value for 'offset'\n", "1 is not a sector-aligned value for 'offset'"],
    ["Argument '1E' exceeds maximum size 2147483136\n", "Argument '1E' exceeds maximum size 2147483136"],
    ['-u requires -z to be specified\n', '-u requires -z to be specified'],
    ['no file open, try \'help open\'\n', "no file open, try 'help open'"],
    ["Error: Cannot find device='' nor node-name='drive9'\r\n", "Error: Cannot find device='' nor node-name='drive9'"],
    ['qemu-io: extraneous characters at the end of line\r\nTry "help qemu-io" for more information\r\n', 'qemu-io: extraneous characters at the end of line'],
  ])('recognises %j', (output, failure) => {
    expect(findQemuIoFailures(output)).toEqual([failure]);
  });

  it('lists the failures in the order printed', () => {
    expect(findQemuIoFailures('wrote 512/512 bytes at offset 0\nwrite failed: Invalid argument\ncommand "x" not found\n')).toEqual([
      'write failed: Invalid argument',
      'command "x" not found',
    ]);
  });

  it('ignores successful output, warnings and hex dumps whatever their text', () => {
    const output = [
      '00000000:  66 61 69 6c 65 64 20 63 61 6e 6e 6f 74 00 00 00  failed.cannot...',
      'read 16/16 bytes at offset 0',
      'discard 65536/65536 bytes at offset 0',
      'qemu-io: warning: Using a multiplier suffix on hex numbers is deprecated: 0x10k',
      "WARNING: Image format was not specified for 'a.img' and probing guessed raw.",
      '65536/65536 bytes allocated at offset 0 bytes',
      'wrote 512/512 bytes at offset 0',
      '512 bytes, 1 ops; 00.01 sec (98.761 KiB/sec and 197.5224 ops/sec)',
      '64 KiB (0x10000) bytes     allocated at offset 0 bytes (0x0)',
      '960 KiB (0xf0000) bytes not allocated at offset 64 KiB (0x10000)',
      '00000000:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................',
    ].join('\n');
    expect(findQemuIoFailures(output)).toEqual([]);
  });
});
