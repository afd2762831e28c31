import type { BlockdevDriver, BlockdevOptions, BlockExportOptions, NbdServerOptions, ObjectOptions } from '@qmpkit/schema';

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

// A global symbol, so an untyped() value made by another copy of this package is recognised too.
const UNTYPED: unique symbol = Symbol.for('qmpkit.machine.untyped');

/**
 * A value qmpkit passes to QEMU without checking it against the schema: a driver, key or
 * object type of a QEMU newer than `@qmpkit/schema` (or patched), made with {@link untyped}.
 */
export interface Untyped<T extends string | Readonly<Record<string, unknown>> = string | Readonly<Record<string, unknown>>> {
  readonly [UNTYPED]: T;
}

/**
 * The explicit escape hatch from the schema's types: `untyped({ driver: 'my-driver', ... })`
 * is passed to QEMU as it is (as JSON), `untyped('qcow3')` as a drive format. Nothing about
 * it is checked at compile time; QEMU reports what it does not accept when it starts.
 */
export function untyped<T extends string | Readonly<Record<string, unknown>>>(value: T): Untyped<T> {
  return Object.freeze({ [UNTYPED]: value });
}

/** Whether `value` was made by {@link untyped}. */
export function isUntyped(value: unknown): value is Untyped {
  return typeof value === 'object' && value !== null && UNTYPED in value;
}

/**
 * A `-blockdev`, `--export`, `--nbd-server` or `--object` value: the schema's type `T` (written
 * as JSON, which QEMU accepts for these options and which needs no escaping), a string in
 * QEMU's own `key=value,...` syntax (passed as it is, unchecked), or {@link untyped}`(object)`.
 */
export type StructuredOption<T extends object = Readonly<Record<string, unknown>>> = T | string | Untyped;

/** The text of a drive format: the driver name, or what {@link untyped} wraps. */
export function formatName(format: string | Untyped<string>): string {
  return isUntyped(format) ? format[UNTYPED] : format;
}

export function formatStructuredOption(option: string, value: StructuredOption<object>): string {
  const raw = isUntyped(value) ? value[UNTYPED] : value;
  if (typeof raw === 'string') {
    if (raw === '') throw new MachineConfigError(option, raw, 'the value is empty');
    return raw;
  }
  return JSON.stringify(raw);
}

/**
 * A `-blockdev` / `--blockdev` value: the schema's `BlockdevOptions` (a misspelt key or driver
 * does not compile), QEMU's `key=value` syntax, or {@link untyped}`(object)`.
 */
export type BlockdevOption = StructuredOption<BlockdevOptions>;
/** A storage daemon `--export` value: the schema's `BlockExportOptions`, a `key=value` string, or {@link untyped}. */
export type BlockExportOption = StructuredOption<BlockExportOptions>;
/** An `--object` / `-object` value: the schema's `ObjectOptions` (`qom-type`, `id`, ...), a `key=value` string, or {@link untyped}. */
export type ObjectOption = StructuredOption<ObjectOptions>;
/** The storage daemon's `--nbd-server` value: the schema's `NbdServerOptions`, a `key=value` string, or {@link untyped}. */
export type NbdServerOption = StructuredOption<NbdServerOptions>;
/** A drive's image format: one of the schema's block drivers (`qcow2`, `raw`, ...), or {@link untyped}`('name')`. */
export type DriveFormat = BlockdevDriver | Untyped<string>;
