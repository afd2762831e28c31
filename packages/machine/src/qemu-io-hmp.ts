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

/**
 * Lines by which QEMU 7.2's qemu-io (and HMP around it) reports that a command failed. It
 * prints these with printf/fprintf to QEMU's own stdout and stderr, not into the HMP reply,
 * and the QMP command still succeeds; so the log is read too. Checked against real output:
 * `write failed: Input/output error` (past the end), `Pattern verification failed at
 * offset 0, 512 bytes`, `command "x" not found`, `bad argument count 1 to write, ...`,
 * `write: invalid option -- 'x'`, `0x1ff is not a valid pattern byte`, `Only one of -z, -P,
 * and -s can be specified at the same time`, `length cannot exceed ...`, `pattern
 * verification range exceeds end of read data`, and in the HMP reply `Error: Cannot find
 * device=...` or `qemu-io: extraneous characters at the end of line`.
 */
const FAILURE_PATTERNS: readonly RegExp[] = [
  /^\S+ failed: .*/m, // read failed: / write failed: / aio_write failed: / discard failed: / flush failed:
  /^Pattern verification failed.*/m,
  /^pattern verification range exceeds.*/m,
  /^command ".*" not found.*/m,
  /^bad argument count.*/m,
  /^.*: invalid option -- .*/m,
  /^.*: option requires an argument -- .*/m,
  /^.* is not a valid pattern byte.*/m,
  /^.*can be specified at the same time.*/m,
  /^.*cannot be specified.*/m,
  /^.*cannot exceed.*/m,
  /^Parsing error: .*/m,
  /^non-numeric .*/m,
  /^too large .*/m,
  /^.* is not sector aligned.*/m,
  /^no file open.*/m,
  /^Error: .*/m,
  /^qemu-io: .*/m,
];

/** The first line of `output` that reports a failure, or `undefined` when there is none. */
export function findQemuIoFailure(output: string): string | undefined {
  const text = output.replaceAll('\r\n', '\n');
  let first: { index: number; line: string } | undefined;
  for (const pattern of FAILURE_PATTERNS) {
    const match = pattern.exec(text);
    if (match !== null && (first === undefined || match.index < first.index)) first = { index: match.index, line: match[0].trim() };
  }
  return first?.line;
}
