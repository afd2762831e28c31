import { InvalidHmpCommandError } from './errors.js';
import { checkHmpQemuIoArguments, hmpQemuIoCommandLine } from './qemu-io-hmp.js';

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
