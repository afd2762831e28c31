// What the connected QEMU understands: which commands exist, which top-level arguments they
// take, and which are deprecated. Known from the greeting's version when @qmpkit/schema has
// that series generated, and exactly from the server's own `query-qmp-schema` on request.
// The client consults it before sending (see `schemaCheck` and `loadSchema()` in client.ts).
import {
  findQmpSchemaVersion,
  nearestQmpSchemaVersion,
  type QmpCommandInfo,
  qmpSchemaVersions,
  type QmpSchemaVersion,
} from '@qmpkit/schema/versions';

import { QmpUnsupportedArgumentError, QmpUnsupportedCommandError, type QmpSchemaSource } from './errors.js';
import type { QmpVersion } from './messages.js';

/**
 * `'off'`: no check before sending (deprecations are still reported). `'greeting'`: check
 * commands and top-level arguments against the generated schema of the greeting's series, when
 * @qmpkit/schema has it. `'introspect'`: read `query-qmp-schema` while connecting and check
 * against exactly what the server says.
 */
export type QmpSchemaCheck = 'off' | 'greeting' | 'introspect';

/** One entry of QEMU's `query-qmp-schema` (qapi/introspect.json), as far as the check needs it. */
export interface QmpSchemaInfoEntry {
  readonly name: string;
  readonly 'meta-type': string;
  readonly features?: readonly string[];
  readonly members?: readonly { readonly name?: string; readonly type?: string; readonly default?: unknown }[];
  readonly variants?: readonly { readonly case: string; readonly type: string }[];
  readonly 'arg-type'?: string;
  readonly 'allow-oob'?: boolean;
}

interface CommandFacts {
  readonly names: readonly string[];
  readonly required: readonly string[];
  readonly open: boolean;
  readonly info: QmpCommandInfo;
}

/** Commands QEMU hand-marshals (`'gen': false`, e.g. device_add) in any generated series. */
const OPEN_COMMANDS: ReadonlySet<string> = new Set(
  qmpSchemaVersions.flatMap((v) => Object.entries(v.commandArguments).filter(([, a]) => a.open).map(([name]) => name)),
);

function versionText(version: QmpVersion): string {
  return `${version.qemu.major}.${version.qemu.minor}.${version.qemu.micro}`;
}

/** An immutable view of one server's schema; `QmpClient#schema` holds the current one. */
export class QmpSchemaView {
  /** The server's version as the greeting gave it, e.g. `7.2.22`. */
  readonly qemuVersion: string;
  /** Where the facts come from; undefined when nothing is known about this QEMU's commands. */
  readonly source: QmpSchemaSource | undefined;
  readonly #commands: ReadonlyMap<string, CommandFacts> | undefined;
  /** Deprecation facts when the commands themselves are unknown (a series newer than any generated). */
  readonly #deprecations: QmpSchemaVersion | undefined;

  private constructor(
    qemuVersion: string,
    source: QmpSchemaSource | undefined,
    commands: ReadonlyMap<string, CommandFacts> | undefined,
    deprecations: QmpSchemaVersion | undefined,
  ) {
    this.qemuVersion = qemuVersion;
    this.source = source;
    this.#commands = commands;
    this.#deprecations = deprecations;
  }

  /** From the greeting: the generated schema of the server's series, if @qmpkit/schema has it. */
  static fromGreeting(version: QmpVersion): QmpSchemaView {
    const generated = findQmpSchemaVersion(version.qemu);
    if (generated === undefined) {
      return new QmpSchemaView(versionText(version), undefined, undefined, nearestQmpSchemaVersion(version.qemu));
    }
    const commands = new Map<string, CommandFacts>();
    for (const [name, info] of Object.entries(generated.commands)) {
      const args = generated.commandArguments[name];
      commands.set(name, { names: args?.names ?? [], required: args?.required ?? [], open: args?.open ?? true, info });
    }
    return new QmpSchemaView(versionText(version), { kind: 'generated', series: generated.series }, commands, generated);
  }

  /** From the server's own `query-qmp-schema` reply. */
  static fromIntrospection(version: QmpVersion, entries: readonly QmpSchemaInfoEntry[]): QmpSchemaView {
    const byName = new Map(entries.map((e) => [e.name, e]));
    const collect = (typeName: string | undefined, into: Set<string>, seen: Set<string>): void => {
      if (typeName === undefined || seen.has(typeName)) return;
      seen.add(typeName);
      const type = byName.get(typeName);
      for (const member of type?.members ?? []) if (member.name !== undefined) into.add(member.name);
      // A union's branches add members of their own (and may be unions again).
      for (const variant of type?.variants ?? []) collect(variant.type, into, seen);
    };
    const commands = new Map<string, CommandFacts>();
    for (const entry of entries) {
      if (entry['meta-type'] !== 'command') continue;
      const names = new Set<string>();
      collect(entry['arg-type'], names, new Set());
      const required = (byName.get(entry['arg-type'] ?? '')?.members ?? [])
        .filter((m) => m.name !== undefined && !('default' in m))
        .map((m) => m.name as string);
      const features = entry.features ?? [];
      commands.set(entry.name, {
        names: [...names].sort(),
        required: required.sort(),
        // Introspection cannot say a command takes extra properties; the generated schemas can.
        open: OPEN_COMMANDS.has(entry.name),
        info: { deprecated: features.includes('deprecated'), unstable: features.includes('unstable'), allowOob: entry['allow-oob'] ?? false },
      });
    }
    return new QmpSchemaView(versionText(version), { kind: 'query-qmp-schema' }, commands, undefined);
  }

  /** Whether the server has command `name`; undefined when this view cannot tell. */
  hasCommand(name: string): boolean | undefined {
    return this.#commands === undefined ? undefined : this.#commands.has(name);
  }

  /** Top-level arguments `name` takes (`open`: further ones too); undefined when unknown. */
  commandArguments(name: string): { readonly names: readonly string[]; readonly required: readonly string[]; readonly open: boolean } | undefined {
    const facts = this.#commands?.get(name);
    return facts === undefined ? undefined : { names: facts.names, required: facts.required, open: facts.open };
  }

  /** Every command name the view knows, sorted; undefined when it knows none. */
  commandNames(): string[] | undefined {
    return this.#commands === undefined ? undefined : [...this.#commands.keys()].sort();
  }

  /**
   * The command's feature flags when this QEMU (or, for a series newer than any generated one,
   * its nearest older generated series) marks it deprecated; undefined otherwise.
   */
  deprecation(name: string): QmpCommandInfo | undefined {
    const info = this.#commands?.get(name)?.info ?? this.#deprecations?.commands[name];
    return info?.deprecated ? info : undefined;
  }

  /**
   * The error sending `name` with `args` would earn from this QEMU, found without sending:
   * an unknown command, an unknown top-level argument, a missing required one. Undefined when
   * the view finds nothing wrong or cannot tell.
   */
  check(name: string, args: unknown): QmpUnsupportedCommandError | QmpUnsupportedArgumentError | undefined {
    if (this.#commands === undefined || this.source === undefined) return undefined;
    const facts = this.#commands.get(name);
    if (facts === undefined) return new QmpUnsupportedCommandError(name, this.qemuVersion, this.source);
    const given = args !== null && typeof args === 'object' ? Object.keys(args) : [];
    const unknown = facts.open ? [] : given.filter((a) => !facts.names.includes(a));
    const missing = facts.required.filter((a) => !given.includes(a));
    if (unknown.length === 0 && missing.length === 0) return undefined;
    return new QmpUnsupportedArgumentError(name, { unknown, missing, accepted: facts.names }, this.qemuVersion, this.source);
  }
}
