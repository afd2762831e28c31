import { MachineConfigError } from './errors.js';

/** A value in a QEMU `key=value,...` option string. Booleans become `on` / `off`. */
export type OptionValue = string | number | boolean;

/**
 * QEMU's option parser (QemuOpts) ends a value at the first single comma and reads `,,` as
 * one literal comma, so a file name like `a,b.qcow2` must be written `a,,b.qcow2`.
 */
export function escapeOptionValue(value: string): string {
  return value.replaceAll(',', ',,');
}

const OPTION_KEY = /^[A-Za-z0-9_.-]+$/;

/** QEMU's rule for ids and node names (`id_wellformed()`): a letter, then letters, digits, `-`, `.`, `_`. */
const QEMU_ID = /^[A-Za-z][A-Za-z0-9_.-]*$/;

export function checkQemuId(option: string, value: string): void {
  if (!QEMU_ID.test(value)) {
    throw new MachineConfigError(option, value, 'QEMU ids start with a letter and contain only letters, digits, "-", "." and "_"');
  }
  // QEMU reserves names starting with '#' for generated ids; the pattern above already excludes
  // them. Node names are additionally limited to 31 characters (BlockDriverState.node_name).
  if (option.endsWith('nodeName') && value.length > 31) {
    throw new MachineConfigError(option, value, 'node names are at most 31 characters long');
  }
}

function formatValue(option: string, value: OptionValue): string {
  if (typeof value === 'boolean') return value ? 'on' : 'off';
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new MachineConfigError(option, value, 'numbers must be finite');
    return String(value);
  }
  return escapeOptionValue(value);
}

/**
 * Joins `key=value` pairs into one QEMU option string, escaping commas in values.
 * Keys are checked rather than escaped: QEMU has no escape for `=` or `,` in a key.
 *
 * @param option name used in error messages, e.g. `drive.opts`
 */
export function formatOptionList(option: string, entries: ReadonlyArray<readonly [string, OptionValue]>): string {
  return entries
    .map(([key, value]) => {
      if (!OPTION_KEY.test(key)) {
        throw new MachineConfigError(`${option}.${key}`, key, 'option keys contain only letters, digits, "-", "." and "_"');
      }
      return `${key}=${formatValue(`${option}.${key}`, value)}`;
    })
    .join(',');
}

/**
 * A `-blockdev`, `--export`, `--nbd-server` or `--object` value: an object (written as JSON,
 * which QEMU accepts for these options and which needs no escaping) or a string in QEMU's
 * `key=value,...` syntax, passed as it is.
 */
export type StructuredOption = string | Readonly<Record<string, unknown>>;

export function formatStructuredOption(option: string, value: StructuredOption): string {
  if (typeof value === 'string') {
    if (value === '') throw new MachineConfigError(option, value, 'the value is empty');
    return value;
  }
  return JSON.stringify(value);
}
