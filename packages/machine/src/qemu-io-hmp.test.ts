import { InvalidHmpCommandError } from './errors.js';
import { checkHmpQemuIoArguments, findQemuIoFailure, hmpQemuIoCommandLine } from './qemu-io-hmp.js';

describe('checkHmpQemuIoArguments', () => {
  test('accepts ordinary commands and builds the HMP line', () => {
    expect(() => checkHmpQemuIoArguments('drive0', 'write -P0xab 0 512')).not.toThrow();
    expect(hmpQemuIoCommandLine('drive0', 'write -P0xab 0 512')).toBe('qemu-io drive0 "write -P0xab 0 512"');
  });

  test.each([
    ['a double quote', 'write "0" 512'],
    ['a backslash', 'write 0 512\\'],
    ['a newline', 'write 0 512\ninfo block'],
    ['a carriage return', 'write 0 512\r'],
    ['a tab', 'write\t0 512'],
    ['nothing', '   '],
  ])('refuses a command containing %s', (_what, command) => {
    let caught: unknown;
    try {
      checkHmpQemuIoArguments('drive0', command);
    } catch (error) {
      caught = error;
    }
    expect(InvalidHmpCommandError.isInstance(caught)).toBe(true);
    expect((caught as InvalidHmpCommandError).argument).toBe('command');
    expect((caught as InvalidHmpCommandError).value).toBe(command);
  });

  test.each(['', 'drive 0', '-d', 'dr"ive', 'drive\n'])('refuses the drive name %j', (drive) => {
    expect(() => checkHmpQemuIoArguments(drive, 'flush')).toThrow(InvalidHmpCommandError);
  });
});

// Output of QEMU 7.2's qemu-io through HMP, as printed to QEMU's stdout/stderr or returned
// as the HMP reply.
describe('findQemuIoFailure', () => {
  test.each([
    ['write failed: Input/output error\n', 'write failed: Input/output error'],
    ['read failed: Input/output error\n', 'read failed: Input/output error'],
    ['discard failed: Input/output error\n', 'discard failed: Input/output error'],
    ['aio_write failed: Input/output error\n', 'aio_write failed: Input/output error'],
    [
      'Pattern verification failed at offset 0, 512 bytes\nread 512/512 bytes at offset 0\n512 bytes, 1 ops; 00.00 sec (3.499 MiB/sec and 7165.0689 ops/sec)\n',
      'Pattern verification failed at offset 0, 512 bytes',
    ],
    ['command "bogus" not found\n', 'command "bogus" not found'],
    ['bad argument count 1 to write, expected at least 2 arguments\n', 'bad argument count 1 to write, expected at least 2 arguments'],
    ["write: invalid option -- 'x'\nwrite [-bcCfnquz] [-P pattern | -s source_file] off len -- writes\n", "write: invalid option -- 'x'"],
    ['0x1ff is not a valid pattern byte\n', '0x1ff is not a valid pattern byte'],
    ['Only one of -z, -P, and -s can be specified at the same time\n', 'Only one of -z, -P, and -s can be specified at the same time'],
    ['length cannot exceed 2147483136 without -n, given 5000000000\n', 'length cannot exceed 2147483136 without -n, given 5000000000'],
    ['pattern verification range exceeds end of read data\n', 'pattern verification range exceeds end of read data'],
    ["Error: Cannot find device='' nor node-name='drive9'\r\n", "Error: Cannot find device='' nor node-name='drive9'"],
    ['qemu-io: extraneous characters at the end of line\r\nTry "help qemu-io" for more information\r\n', 'qemu-io: extraneous characters at the end of line'],
  ])('recognises %j', (output, failure) => {
    expect(findQemuIoFailure(output)).toBe(failure);
  });

  test('reports the earliest failing line', () => {
    expect(findQemuIoFailure('wrote 512/512 bytes at offset 0\nwrite failed: Invalid argument\ncommand "x" not found\n')).toBe(
      'write failed: Invalid argument',
    );
  });

  test.each([
    'wrote 512/512 bytes at offset 0\n512 bytes, 1 ops; 00.01 sec (98.761 KiB/sec and 197.5224 ops/sec)\n',
    'read 512/512 bytes at offset 0\n512 bytes, 1 ops; 00.00 sec (1.259 MiB/sec and 2578.5956 ops/sec)\n',
    'discard 65536/65536 bytes at offset 0\n64 KiB, 1 ops; 00.00 sec (667.030 MiB/sec and 10672.4725 ops/sec)\n',
    '64 KiB (0x10000) bytes     allocated at offset 0 bytes (0x0)\n960 KiB (0xf0000) bytes not allocated at offset 64 KiB (0x10000)\n',
    '00000000:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................\nread 16/16 bytes at offset 0\n',
    '',
  ])('finds no failure in successful output %j', (output) => {
    expect(findQemuIoFailure(output)).toBeUndefined();
  });
});
