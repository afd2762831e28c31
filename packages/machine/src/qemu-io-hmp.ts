import { InvalidHmpCommandError } from './errors.js';

/**
 * HMP reads `qemu-io DRIVE "COMMAND"`: DRIVE as one word, COMMAND as a double-quoted string
 * in which a backslash starts an escape. Rather than escape (HMP's rules differ between
 * releases), values that would need it are refused.
 */
export function checkHmpQemuIoArguments(drive: string, command: string): void {
  if (drive === '') throw new InvalidHmpCommandError('drive', drive, 'the drive name is empty');
  if (!/^[A-Za-z0-9_.#-]+$/.test(drive) || drive.startsWith('-')) {
    throw new InvalidHmpCommandError('drive', drive, 'a drive or node name is one word of letters, digits, "-", ".", "_" or "#", not starting with "-"');
  }
  if (command.trim() === '') throw new InvalidHmpCommandError('command', command, 'the command is empty');
  if (command.includes('"')) throw new InvalidHmpCommandError('command', command, 'it contains a double quote, which would end HMP\'s quoted string');
  if (command.includes('\\')) throw new InvalidHmpCommandError('command', command, 'it contains a backslash, which HMP reads as an escape');
  if (/[\u0000-\u001f\u007f]/.test(command)) {
    throw new InvalidHmpCommandError('command', command, 'it contains a newline or another control character');
  }
}

/** The HMP command line for a checked drive and command. */
export function hmpQemuIoCommandLine(drive: string, command: string): string {
  return `qemu-io ${drive} "${command}"`;
}
