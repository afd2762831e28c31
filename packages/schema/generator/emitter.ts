// Writes TypeScript for a checked QAPI schema: one file per QAPI module plus an index with the
// command and event maps and the runtime feature table. Pure: returns file contents, sorted and
// deterministic, so regenerating from the same input reproduces the same bytes.
import { QapiSchemaError } from './errors.js';
import type {
  AlternateDef,
  CommandDef,
  Cond,
  Definition,
  EnumDef,
  EventDef,
  Feature,
  Member,
  Schema,
  StructDef,
  TypeDef,
  TypeRef,
  UnionDef,
} from './schema.js';
import { BUILTIN_JSON_TYPES, QTYPE_VALUES } from './schema.js';

export interface SourceDescription {
  /** Who wrote the files, e.g. `@qmpkit/schema generator (packages/schema/generator)`. */
  readonly generator: string;
  /** e.g. `Debian source package qemu 1:7.2+dfsg-7+deb12u18`. */
  readonly input: string;
  /** Base URL of QEMU's QMP reference for this version. */
  readonly referenceUrl: string;
  /** The QEMU release series, e.g. `7.2`, `10.0`. */
  readonly series: string;
  /**
   * How the reference locates a definition: 7.2's pages give sections serial numbers, so a text
   * fragment on the title; from 10.0 on, QEMU's QAPI Sphinx domain gives stable ids.
   */
  readonly linkStyle: 'text-fragment' | 'qapi-domain';
}

export interface GeneratedFile {
  /** Path relative to the output directory, e.g. `block-core.ts`. */
  readonly path: string;
  readonly content: string;
}

const BUILTIN_MODULE = 'builtin';

const TS_BUILTINS: ReadonlyMap<string, string> = new Map(
  [...BUILTIN_JSON_TYPES].map(([name, json]) => {
    switch (json) {
      case 'string':
        return [name, 'string'];
      case 'int':
      case 'number':
        return [name, 'number'];
      case 'boolean':
        return [name, 'boolean'];
      case 'null':
        return [name, 'null'];
      case 'value':
        return [name, 'unknown'];
    }
  }),
);

/** Names the index itself declares; a QAPI type of the same name would clash. */
const RESERVED_NAMES = new Set([
  'QmpCommands',
  'QmpEvents',
  'QmpOobCommandName',
  'QmpCommandInfo',
  'QmpEventInfo',
  'QmpCommandArguments',
  'QmpCommandName',
  'QmpEventName',
  'QmpCommandArgs',
  'QmpCommandReturns',
  'QmpEventData',
  'qmpCommandInfo',
  'qmpEventInfo',
  'qmpCommandArguments',
  'qapiSource',
  'qapiSeries',
]);

const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

function propertyKey(name: string): string {
  return IDENTIFIER.test(name) ? name : quote(name);
}

function quote(text: string): string {
  return `'${text.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

function pascal(module: string): string {
  return module
    .split(/[^A-Za-z0-9]+/)
    .filter((part) => part.length > 0)
    .map((part) => part[0]?.toUpperCase() + part.slice(1))
    .join('');
}

/** Interface names of the per-module command and event maps. */
export function moduleMapNames(module: string): { commands: string; events: string } {
  const base = pascal(module);
  return { commands: `${base}Commands`, events: `${base}Events` };
}

/** `CONFIG_A && (CONFIG_B || !CONFIG_C)`: the C preprocessor reading of a QAPI condition. */
export function formatCond(cond: Cond, nested = false): string {
  if (typeof cond === 'string') return cond;
  if ('not' in cond) return `!${formatCond(cond.not, true)}`;
  const [op, operands] = 'all' in cond ? [' && ', cond.all] : [' || ', cond.any];
  const text = operands.map((c) => formatCond(c, true)).join(op);
  return nested && operands.length > 1 ? `(${text})` : text;
}

function hasFeature(features: readonly Feature[], name: string): boolean {
  return features.some((f) => f.name === name);
}

interface DocFacts {
  readonly heading?: string;
  readonly since: string | undefined;
  readonly features: readonly Feature[];
  readonly if: Cond | undefined;
  readonly link?: string;
  readonly notes?: readonly string[];
}

/** A TSDoc block from facts only (never prose from QEMU's doc comments). */
function tsdoc(facts: DocFacts, indent: string): string {
  const lines: string[] = [];
  if (facts.heading !== undefined) lines.push(facts.heading);
  for (const note of facts.notes ?? []) lines.push(note);
  if (facts.if !== undefined) lines.push(`Only in QEMU builds where \`${formatCond(facts.if)}\` holds.`);
  const other = facts.features.filter((f) => f.name !== 'deprecated' && f.name !== 'unstable');
  if (other.length > 0) {
    lines.push(`QAPI features: ${other.map((f) => `\`${f.name}\`${f.if === undefined ? '' : ` (if \`${formatCond(f.if)}\`)`}`).join(', ')}.`);
  }
  const tags: string[] = [];
  if (facts.since !== undefined) tags.push(`@since ${facts.since}`);
  const deprecated = facts.features.find((f) => f.name === 'deprecated');
  if (deprecated !== undefined) {
    tags.push(`@deprecated QAPI feature \`deprecated\`${deprecated.if === undefined ? '' : ` (if \`${formatCond(deprecated.if)}\`)`}.`);
  }
  const unstable = facts.features.find((f) => f.name === 'unstable');
  if (unstable !== undefined) {
    tags.push(`@experimental QAPI feature \`unstable\`: the interface may change without notice${unstable.if === undefined ? '' : ` (if \`${formatCond(unstable.if)}\`)`}.`);
  }
  if (facts.link !== undefined) tags.push(`@see {@link ${facts.link} | QEMU QMP reference}`);
  if (lines.length === 0 && tags.length === 0) return '';
  const body = lines.length > 0 && tags.length > 0 ? [...lines, '', ...tags] : [...lines, ...tags];
  if (body.length === 1) return `${indent}/** ${body[0]} */\n`;
  return `${indent}/**\n${body.map((l) => (l === '' ? `${indent} *` : `${indent} * ${l}`)).join('\n')}\n${indent} */\n`;
}

class ModuleWriter {
  /** Imported names per module. */
  private readonly imports = new Map<string, Set<string>>();

  constructor(
    private readonly schema: Schema,
    readonly module: string,
    private readonly source: SourceDescription,
  ) {}

  link(def: Definition): string {
    const fragment = this.source.linkStyle === 'qapi-domain' ? qapiDomainId(def) : referenceFragment(def);
    return `${this.source.referenceUrl}#${fragment}`;
  }

  typeName(name: string): string {
    const builtin = TS_BUILTINS.get(name);
    if (builtin !== undefined) return builtin;
    const target = name === 'QType' ? BUILTIN_MODULE : this.schema.types.get(name)?.info.module;
    if (target === undefined) throw new Error(`unresolved type ${name}`);
    if (target !== this.module) {
      let names = this.imports.get(target);
      if (names === undefined) this.imports.set(target, (names = new Set()));
      names.add(name);
    }
    return name;
  }

  typeRef(ref: TypeRef): string {
    const name = this.typeName(ref.name);
    return ref.array ? `${name}[]` : name;
  }

  importLines(): string {
    return [...this.imports.keys()]
      .sort()
      .map((module) => `import type { ${[...(this.imports.get(module) ?? [])].sort().join(', ')} } from './${module}.js';\n`)
      .join('');
  }

  members(members: readonly Member[], indent: string): string {
    return members
      .map(
        (m) =>
          tsdoc({ since: m.since, features: m.features, if: m.if }, indent) +
          `${indent}${propertyKey(m.name)}${m.optional ? '?' : ''}: ${this.typeRef(m.type)};\n`,
      )
      .join('');
  }

  /** `{ ... }` for inline members; `extraKeys` adds an index signature for hand-written marshallers. */
  objectLiteral(members: readonly Member[], indent: string, extraKeys = false): string {
    if (members.length === 0 && !extraKeys) return 'Record<string, never>';
    const extra = extraKeys ? `${indent}  [property: string]: unknown;\n` : '';
    return `{\n${this.members(members, `${indent}  `)}${extra}${indent}}`;
  }

  enumDef(def: EnumDef): string {
    const notes = def.values
      .filter((v) => v.if !== undefined || v.features.length > 0 || v.since !== undefined)
      .map((v) => {
        const parts: string[] = [];
        if (v.since !== undefined) parts.push(`since ${v.since}`);
        if (v.if !== undefined) parts.push(`only if \`${formatCond(v.if)}\``);
        if (hasFeature(v.features, 'deprecated')) parts.push('deprecated');
        if (hasFeature(v.features, 'unstable')) parts.push('unstable');
        const other = v.features.filter((f) => f.name !== 'deprecated' && f.name !== 'unstable');
        if (other.length > 0) parts.push(`features ${other.map((f) => `\`${f.name}\``).join(', ')}`);
        return `- \`${v.name}\`: ${parts.join(', ')}`;
      });
    const doc = tsdoc(
      {
        heading: `QAPI enum \`${def.name}\`.`,
        notes: notes.length > 0 ? ['', 'Values:', ...notes] : [],
        since: def.since,
        features: def.features,
        if: def.if,
        link: this.link(def),
      },
      '',
    );
    const values = def.values.map((v) => `\n  | ${quote(v.name)}`).join('');
    return `${doc}export type ${def.name} =${values};\n`;
  }

  structDef(def: StructDef): string {
    const doc = tsdoc({ heading: `QAPI struct \`${def.name}\`.`, since: def.since, features: def.features, if: def.if, link: this.link(def) }, '');
    // An empty struct is the JSON object `{}`; TypeScript's `{}` would accept any non-null value.
    if (def.base === undefined && def.members.length === 0 && !this.isBase(def.name)) {
      return `${doc}export type ${def.name} = Record<string, never>;\n`;
    }
    const base = def.base === undefined ? '' : ` extends ${this.typeName(def.base)}`;
    return `${doc}export interface ${def.name}${base} {\n${this.members(def.members, '  ')}}\n`;
  }

  unionDef(def: UnionDef): string {
    const doc = tsdoc(
      {
        heading: `QAPI union \`${def.name}\`, discriminated by \`${def.discriminator}\`.`,
        notes: def.branches
          .filter((b) => b.if !== undefined)
          .map((b) => `Branch \`${b.name}\` only in QEMU builds where \`${formatCond(b.if ?? '')}\` holds.`),
        since: def.since,
        features: def.features,
        if: def.if,
        link: this.link(def),
      },
      '',
    );
    const tagKey = propertyKey(def.discriminator);
    // The base members are written once and intersected with the union of the branches; TypeScript
    // distributes the intersection, so each arm narrows on the discriminator's literal.
    let common: string | undefined;
    let tagEnum: string;
    if (typeof def.base === 'string') {
      common = this.typeName(def.base);
      tagEnum = this.findMember(def.base, def.discriminator)?.type.name ?? '';
    } else {
      tagEnum = def.base.find((m) => m.name === def.discriminator)?.type.name ?? '';
      // An implicit base holding just the discriminator adds nothing beyond each arm's literal.
      common = def.base.length > 1 ? this.objectLiteral(def.base, '') : undefined;
    }
    const enumDef = this.schema.types.get(tagEnum);
    const enumValues = enumDef?.meta === 'enum' ? enumDef.values.map((v) => v.name) : [];
    const variants = def.branches.map((b) => `{ ${tagKey}: ${quote(b.name)} } & ${this.typeRef(b.type)}`);
    // QAPI allows enum values without a branch: such objects carry the base members only.
    const uncovered = enumValues.filter((v) => !def.branches.some((b) => b.name === v));
    if (uncovered.length > 0) variants.push(`{ ${tagKey}: ${uncovered.map(quote).join(' | ')} }`);
    const arms = variants.map((v) => `\n  | (${v})`).join('');
    return common === undefined
      ? `${doc}export type ${def.name} =${arms};\n`
      : `${doc}export type ${def.name} = ${common} & (${arms}\n);\n`;
  }

  private isBase(name: string): boolean {
    return this.schema.definitions.some((d) => (d.meta === 'struct' || d.meta === 'union') && d.base === name);
  }

  private findMember(structName: string, member: string): Member | undefined {
    let def = this.schema.types.get(structName);
    while (def?.meta === 'struct') {
      const found = def.members.find((m) => m.name === member);
      if (found) return found;
      def = def.base === undefined ? undefined : this.schema.types.get(def.base);
    }
    return undefined;
  }

  alternateDef(def: AlternateDef): string {
    const doc = tsdoc(
      {
        heading: `QAPI alternate \`${def.name}\`: one of ${def.branches.map((b) => `\`${b.name}\``).join(', ')}.`,
        notes: def.branches
          .filter((b) => b.if !== undefined)
          .map((b) => `Branch \`${b.name}\` only in QEMU builds where \`${formatCond(b.if ?? '')}\` holds.`),
        since: def.since,
        features: def.features,
        if: def.if,
        link: this.link(def),
      },
      '',
    );
    return `${doc}export type ${def.name} =${def.branches.map((b) => `\n  | ${this.typeRef(b.type)}`).join('')};\n`;
  }

  dataType(data: string | readonly Member[] | undefined, indent: string, extraKeys = false): string {
    if (data === undefined) return extraKeys ? '{ [property: string]: unknown }' : 'Record<string, never>';
    if (typeof data === 'string') {
      const name = this.typeName(data);
      return extraKeys ? `${name} & { [property: string]: unknown }` : name;
    }
    return this.objectLiteral(data, indent, extraKeys);
  }

  commandEntry(def: CommandDef): string {
    const notes: string[] = [];
    if (def.allowOob) notes.push('May be sent out-of-band (`exec-oob`).');
    if (def.allowPreconfig) notes.push('Allowed in the preconfig state.');
    if (!def.gen) notes.push('Takes further arguments beyond the listed ones.');
    if (!def.successResponse) notes.push('QEMU sends no success response.');
    const doc = tsdoc(
      { heading: `QMP command \`${def.name}\`.`, notes, since: def.since, features: def.features, if: def.if, link: this.link(def) },
      '  ',
    );
    const args = this.dataType(def.data, '    ', !def.gen);
    const returns = def.returns === undefined ? 'Record<string, never>' : this.typeRef(def.returns);
    return `${doc}  ${quote(def.name)}: {\n    args: ${args};\n    returns: ${returns};\n  };\n`;
  }

  eventEntry(def: EventDef): string {
    const doc = tsdoc(
      { heading: `QMP event \`${def.name}\`.`, since: def.since, features: def.features, if: def.if, link: this.link(def) },
      '  ',
    );
    return `${doc}  ${propertyKey(def.name)}: ${this.dataType(def.data, '  ')};\n`;
  }
}

function byName<T extends { readonly name: string }>(a: T, b: T): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

const REFERENCE_KINDS: Readonly<Record<Definition['meta'], string>> = {
  enum: 'Enum',
  struct: 'Object',
  union: 'Object',
  alternate: 'Alternate',
  command: 'Command',
  event: 'Event',
};

/**
 * Fragment locating a definition in QEMU's 7.2 QMP reference. That page gives its sections
 * serial-number ids (`qapidoc-N`) that shift with every doc edit, so the link uses a text
 * fragment on the section title instead (`drive-backup (Command)`), which browsers scroll to.
 */
export function referenceFragment(def: Pick<Definition, 'name' | 'meta'>): string {
  const encode = (text: string) => encodeURIComponent(text).replace(/-/g, '%2D');
  return `:~:text=${encode(`${def.name} (${REFERENCE_KINDS[def.meta]})`)}`;
}

const QAPI_DOMAIN_KINDS: Readonly<Record<Definition['meta'], string>> = {
  enum: 'enum',
  struct: 'object',
  union: 'object',
  alternate: 'alternate',
  command: 'command',
  event: 'event',
};

/** The id QEMU's QAPI Sphinx domain (10.0 and later) gives a definition: `command-QMP-block-core.drive-backup`. */
export function qapiDomainId(def: Pick<Definition, 'name' | 'meta' | 'info'>): string {
  return `${QAPI_DOMAIN_KINDS[def.meta]}-QMP-${def.info.module}.${def.name}`;
}

function header(source: SourceDescription, what: string): string {
  return (
    `// Code generated by ${source.generator} from ${what}\n` +
    `// of ${source.input}. DO NOT EDIT: run \`pnpm --filter @qmpkit/schema run generate\`.\n`
  );
}

/** Generates every output file for `schema`. */
export function emitTypeScript(schema: Schema, source: SourceDescription): GeneratedFile[] {
  for (const def of schema.definitions) {
    if (RESERVED_NAMES.has(def.name)) {
      throw new QapiSchemaError(def.info.file, def.info.line, `'${def.name}' clashes with a name the generated index declares`);
    }
    if (def.meta !== 'command' && def.meta !== 'event' && !IDENTIFIER.test(def.name)) {
      throw new QapiSchemaError(def.info.file, def.info.line, `type name '${def.name}' is not a TypeScript identifier`);
    }
  }
  const modules = [...new Set(schema.definitions.map((d) => d.info.module))].sort();
  const files: GeneratedFile[] = [];
  const mapNames = new Map<string, { commands: string; events: string }>();
  for (const module of modules) {
    const names = moduleMapNames(module);
    for (const n of [names.commands, names.events]) {
      const clash = schema.types.get(n);
      if (clash) throw new QapiSchemaError(clash.info.file, clash.info.line, `'${n}' clashes with the generated map of module '${module}'`);
    }
    mapNames.set(module, names);
  }

  const moduleCommands = new Map<string, CommandDef[]>();
  const moduleEvents = new Map<string, EventDef[]>();
  for (const module of modules) {
    const writer = new ModuleWriter(schema, module, source);
    const defs = schema.definitions.filter((d) => d.info.module === module);
    const types = defs.filter((d): d is TypeDef => d.meta !== 'command' && d.meta !== 'event').sort(byName);
    const commands = defs.filter((d): d is CommandDef => d.meta === 'command').sort(byName);
    const events = defs.filter((d): d is EventDef => d.meta === 'event').sort(byName);
    moduleCommands.set(module, commands);
    moduleEvents.set(module, events);
    const blocks: string[] = [];
    for (const def of types) {
      switch (def.meta) {
        case 'enum':
          blocks.push(writer.enumDef(def));
          break;
        case 'struct':
          blocks.push(writer.structDef(def));
          break;
        case 'union':
          blocks.push(writer.unionDef(def));
          break;
        case 'alternate':
          blocks.push(writer.alternateDef(def));
          break;
      }
    }
    const names = mapNames.get(module) ?? moduleMapNames(module);
    if (commands.length > 0) {
      blocks.push(
        `/** QMP commands of QAPI module \`${module}\`: name -> arguments and return value. */\n` +
          `export interface ${names.commands} {\n${commands.map((c) => writer.commandEntry(c)).join('')}}\n`,
      );
    }
    if (events.length > 0) {
      blocks.push(
        `/** QMP events of QAPI module \`${module}\`: name -> data. */\n` +
          `export interface ${names.events} {\n${events.map((e) => writer.eventEntry(e)).join('')}}\n`,
      );
    }
    const imports = writer.importLines();
    files.push({
      path: `${module}.ts`,
      content: `${header(source, `QAPI module '${module}' (qapi/${module}.json)`)}\n${imports}${imports ? '\n' : ''}${blocks.join('\n')}`,
    });
  }

  files.push({
    path: `${BUILTIN_MODULE}.ts`,
    content:
      `${header(source, "QAPI's built-in types")}\n` +
      `/** QAPI's built-in enum of QObject kinds. */\n` +
      `export type QType =${QTYPE_VALUES.map((v) => `\n  | ${quote(v)}`).join('')};\n`,
  });

  files.push({ path: 'index.ts', content: emitIndex(schema, source, modules, mapNames, moduleCommands, moduleEvents) });
  return files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

function emitIndex(
  schema: Schema,
  source: SourceDescription,
  modules: readonly string[],
  mapNames: ReadonlyMap<string, { commands: string; events: string }>,
  moduleCommands: ReadonlyMap<string, readonly CommandDef[]>,
  moduleEvents: ReadonlyMap<string, readonly EventDef[]>,
): string {
  const all = [BUILTIN_MODULE, ...modules].sort();
  const withCommands = modules.filter((m) => (moduleCommands.get(m)?.length ?? 0) > 0);
  const withEvents = modules.filter((m) => (moduleEvents.get(m)?.length ?? 0) > 0);
  const importLines = modules
    .map((m) => {
      const names = mapNames.get(m);
      const list = [
        ...(withCommands.includes(m) && names ? [names.commands] : []),
        ...(withEvents.includes(m) && names ? [names.events] : []),
      ];
      return list.length > 0 ? `import type { ${list.join(', ')} } from './${m}.js';\n` : '';
    })
    .join('');
  const commands = [...schema.commands.values()].sort(byName);
  const events = [...schema.events.values()].sort(byName);
  const flag = (features: readonly Feature[], name: string) => String(hasFeature(features, name));
  const extendsList = (list: readonly string[]) => list.map((n) => `\n    ${n}`).join(',');
  return (
    `${header(source, 'the QAPI schema (qapi/qapi-schema.json and its includes)')}\n` +
    all.map((m) => `export * from './${m}.js';\n`).join('') +
    '\n' +
    importLines +
    '\n' +
    `/** Every QMP command: name -> \`{ args; returns }\`. */\n` +
    `export interface QmpCommands extends${extendsList(withCommands.map((m) => mapNames.get(m)?.commands ?? ''))} {}\n\n` +
    `/** Every QMP event: name -> the event's \`data\`. */\n` +
    `export interface QmpEvents extends${extendsList(withEvents.map((m) => mapNames.get(m)?.events ?? ''))} {}\n\n` +
    `/** Commands the schema marks \`allow-oob\`: the names \`exec-oob\` accepts. */\n` +
    `export type QmpOobCommandName =${oobUnion(commands)};\n\n` +
    `/** Facts about a command that a client acts on at run time. */\n` +
    `export interface QmpCommandInfo {\n` +
    `  /** Carries QAPI feature \`deprecated\`. */\n  readonly deprecated: boolean;\n` +
    `  /** Carries QAPI feature \`unstable\`. */\n  readonly unstable: boolean;\n` +
    `  /** May be sent with \`exec-oob\`. */\n  readonly allowOob: boolean;\n}\n\n` +
    `/** Facts about an event that a client acts on at run time. */\n` +
    `export interface QmpEventInfo {\n` +
    `  /** Carries QAPI feature \`deprecated\`. */\n  readonly deprecated: boolean;\n` +
    `  /** Carries QAPI feature \`unstable\`. */\n  readonly unstable: boolean;\n}\n\n` +
    `/** Top-level argument names of a command, for checks before sending. */\n` +
    `export interface QmpCommandArguments {\n` +
    `  /** Every argument QEMU knows (a union's base and all its branches). */\n  readonly names: readonly string[];\n` +
    `  /** Arguments that must be present whatever the branch. */\n  readonly required: readonly string[];\n` +
    `  /** The command takes further arguments beyond \`names\` (QAPI \`'gen': false\`). */\n  readonly open: boolean;\n}\n\n` +
    `/** Name of any QMP command QEMU ${source.series} defines. */\n` +
    `export type QmpCommandName = keyof QmpCommands & string;\n` +
    `/** Name of any QMP event QEMU ${source.series} defines. */\n` +
    `export type QmpEventName = keyof QmpEvents & string;\n` +
    `/** Arguments of command \`K\` (\`Record<string, never>\` when it takes none). */\n` +
    `export type QmpCommandArgs<K extends QmpCommandName> = QmpCommands[K]['args'];\n` +
    `/** Return value of command \`K\` (\`Record<string, never>\` when it returns nothing but \`{}\`). */\n` +
    `export type QmpCommandReturns<K extends QmpCommandName> = QmpCommands[K]['returns'];\n` +
    `/** The \`data\` member of event \`K\`. */\n` +
    `export type QmpEventData<K extends QmpEventName> = QmpEvents[K];\n\n` +
    `/** The QAPI input these types were generated from. */\n` +
    `export const qapiSource = ${quote(source.input)};\n\n` +
    `/** The QEMU release series these types describe. */\n` +
    `export const qapiSeries = ${quote(source.series)};\n\n` +
    `/** Feature flags of every command. */\n` +
    `export const qmpCommandInfo: { readonly [K in keyof QmpCommands]: QmpCommandInfo } = {\n` +
    commands
      .map(
        (c) =>
          `  ${quote(c.name)}: { deprecated: ${flag(c.features, 'deprecated')}, unstable: ${flag(c.features, 'unstable')}, allowOob: ${String(c.allowOob)} },\n`,
      )
      .join('') +
    `};\n\n` +
    `/** Feature flags of every event. */\n` +
    `export const qmpEventInfo: { readonly [K in keyof QmpEvents]: QmpEventInfo } = {\n` +
    events
      .map((e) => `  ${propertyKey(e.name)}: { deprecated: ${flag(e.features, 'deprecated')}, unstable: ${flag(e.features, 'unstable')} },\n`)
      .join('') +
    `};\n\n` +
    `/** Top-level argument names of every command. */\n` +
    `export const qmpCommandArguments: { readonly [K in keyof QmpCommands]: QmpCommandArguments } = {\n` +
    commands
      .map((c) => {
        const args = commandArguments(schema, c);
        const list = (names: readonly string[]) => `[${names.map(quote).join(', ')}]`;
        return `  ${quote(c.name)}: { names: ${list(args.names)}, required: ${list(args.required)}, open: ${String(!c.gen)} },\n`;
      })
      .join('') +
    `};\n`
  );
}

function oobUnion(commands: readonly CommandDef[]): string {
  const names = commands.filter((c) => c.allowOob).map((c) => c.name);
  return names.length === 0 ? ' never' : names.map((n) => `\n  | ${quote(n)}`).join('');
}

/** Members of a struct including its bases, in order. */
function structMembers(schema: Schema, name: string): readonly Member[] {
  const def = schema.types.get(name);
  if (def?.meta !== 'struct') return [];
  return [...(def.base === undefined ? [] : structMembers(schema, def.base)), ...def.members];
}

/**
 * The top-level argument names a command accepts: inline members, or a struct's members with its
 * bases, or for a (boxed) union its base members plus every branch's members; `required` holds
 * what every variant of every build needs. Sorted, so the table is deterministic.
 */
export function commandArguments(schema: Schema, def: CommandDef): { names: string[]; required: string[] } {
  let members: readonly Member[] = [];
  let branchNames: string[] = [];
  if (typeof def.data === 'string') {
    const type = schema.types.get(def.data);
    if (type?.meta === 'union') {
      members = typeof type.base === 'string' ? structMembers(schema, type.base) : type.base;
      branchNames = type.branches.flatMap((b) => structMembers(schema, b.type.name).map((m) => m.name));
    } else {
      members = structMembers(schema, def.data);
    }
  } else if (def.data !== undefined) {
    members = def.data;
  }
  const names = [...new Set([...members.map((m) => m.name), ...branchNames])].sort();
  // A required member under an `if` exists only in some builds: not demanded of every QEMU.
  const required = members.filter((m) => !m.optional && m.if === undefined).map((m) => m.name).sort();
  return { names, required };
}

/**
 * src/generated/versions.ts: the runtime tables of every generated series in one list, for
 * clients that pick the schema of the QEMU they are connected to.
 */
export function emitVersionsTable(versions: readonly { series: string; input: string }[]): string {
  const id = (series: string) => `qemu_${series.replace('.', '_')}`;
  return (
    `// Code generated by @qmpkit/schema generator (packages/schema/generator) from the QAPI schemas of\n` +
    `// ${versions.map((v) => `QEMU ${v.series}`).join(', ')}. DO NOT EDIT: run \`pnpm --filter @qmpkit/schema run generate\`.\n\n` +
    versions.map((v) => `import * as ${id(v.series)} from './qemu-${v.series}/index.js';\n`).join('') +
    `import type { QmpCommandArguments, QmpCommandInfo, QmpEventInfo } from './qemu-${versions[0]?.series ?? ''}/index.js';\n\n` +
    `/** A QEMU release series with generated types: \`import type { QmpCommands } from '@qmpkit/schema/qemu-<series>'\`. */\n` +
    `export type QemuSeries = ${versions.map((v) => quote(v.series)).join(' | ')};\n\n` +
    `/** The command and event maps of every series: \`QmpClient<QmpSchemaMaps['10.0']['commands'], QmpSchemaMaps['10.0']['events']>\`. */\n` +
    `export interface QmpSchemaMaps {\n` +
    versions.map((v) => `  ${quote(v.series)}: { commands: ${id(v.series)}.QmpCommands; events: ${id(v.series)}.QmpEvents };\n`).join('') +
    `}\n\n` +
    `/** The runtime facts of one series' schema. */\n` +
    `export interface QmpSchemaVersion {\n` +
    `  readonly series: QemuSeries;\n  readonly qapiSource: string;\n` +
    `  readonly commands: { readonly [name: string]: QmpCommandInfo };\n` +
    `  readonly events: { readonly [name: string]: QmpEventInfo };\n` +
    `  readonly commandArguments: { readonly [name: string]: QmpCommandArguments };\n}\n\n` +
    `/** Every generated series, oldest first. */\n` +
    `export const qmpSchemaVersions: readonly QmpSchemaVersion[] = [\n` +
    versions
      .map(
        (v) =>
          `  { series: ${quote(v.series)}, qapiSource: ${id(v.series)}.qapiSource, commands: ${id(v.series)}.qmpCommandInfo, ` +
          `events: ${id(v.series)}.qmpEventInfo, commandArguments: ${id(v.series)}.qmpCommandArguments },\n`,
      )
      .join('') +
    `];\n`
  );
}
