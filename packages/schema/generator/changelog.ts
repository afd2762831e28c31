// Writes SCHEMA-CHANGES.md: what changed in the QMP schema from one supported QEMU release to the
// next (commands, events, arguments, type members, enum values and union branches added or
// removed, deprecations gained or dropped). Computed from the same parsed schemas as the types,
// sorted, so regenerating from the same inputs reproduces the same bytes.
import { commandArguments } from './emitter.js';
import type { CommandDef, Definition, EventDef, Feature, Member, Schema, TypeDef } from './schema.js';

export interface VersionedSchema {
  readonly series: string;
  /** e.g. `Debian source package qemu 1:10.0.13+ds-0+deb13u1`. */
  readonly input: string;
  readonly schema: Schema;
}

const has = (features: readonly Feature[], name: string) => features.some((f) => f.name === name);
const code = (text: string) => `\`${text}\``;
const sorted = (items: Iterable<string>) => [...items].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));

function memberList(schema: Schema, def: TypeDef): readonly Member[] {
  switch (def.meta) {
    case 'struct':
      return def.members;
    case 'union':
      return typeof def.base === 'string' ? [] : def.base;
    default:
      return [];
  }
}

/** Lines describing how one definition present in both versions changed (empty if it did not). */
function typeChanges(before: Schema, after: Schema, a: TypeDef, b: TypeDef): string[] {
  const out: string[] = [];
  if (a.meta !== b.meta) {
    out.push(`is now ${b.meta === 'enum' ? 'an' : 'a'} ${b.meta} (was ${a.meta})`);
    return out;
  }
  if (!has(a.features, 'deprecated') && has(b.features, 'deprecated')) out.push('deprecated');
  if (has(a.features, 'deprecated') && !has(b.features, 'deprecated')) out.push('no longer deprecated');
  if (a.meta === 'enum' && b.meta === 'enum') {
    const old = new Map(a.values.map((v) => [v.name, v]));
    const now = new Map(b.values.map((v) => [v.name, v]));
    const added = b.values.filter((v) => !old.has(v.name)).map((v) => code(v.name));
    const removed = a.values.filter((v) => !now.has(v.name)).map((v) => code(v.name));
    const deprecated = b.values.filter((v) => has(v.features, 'deprecated') && !has(old.get(v.name)?.features ?? [], 'deprecated')).map((v) => code(v.name));
    if (added.length > 0) out.push(`values added: ${added.join(', ')}`);
    if (removed.length > 0) out.push(`values removed: ${removed.join(', ')}`);
    if (deprecated.length > 0) out.push(`values deprecated: ${deprecated.filter((v) => !added.includes(v)).join(', ') || deprecated.join(', ')}`);
    return out;
  }
  if ((a.meta === 'struct' && b.meta === 'struct') || (a.meta === 'union' && b.meta === 'union')) {
    const baseName = (d: TypeDef) => (d.meta === 'struct' ? d.base : d.meta === 'union' && typeof d.base === 'string' ? d.base : undefined);
    if (baseName(a) !== baseName(b)) out.push(`base ${code(baseName(a) ?? 'none')} -> ${code(baseName(b) ?? 'none')}`);
    out.push(...memberChanges(memberList(before, a), memberList(after, b)));
  }
  if ((a.meta === 'union' && b.meta === 'union') || (a.meta === 'alternate' && b.meta === 'alternate')) {
    const old = new Set(a.branches.map((x) => x.name));
    const now = new Set(b.branches.map((x) => x.name));
    const added = sorted([...now].filter((n) => !old.has(n))).map(code);
    const removed = sorted([...old].filter((n) => !now.has(n))).map(code);
    if (added.length > 0) out.push(`branches added: ${added.join(', ')}`);
    if (removed.length > 0) out.push(`branches removed: ${removed.join(', ')}`);
  }
  return out;
}

function memberChanges(a: readonly Member[], b: readonly Member[]): string[] {
  const out: string[] = [];
  const old = new Map(a.map((m) => [m.name, m]));
  const now = new Map(b.map((m) => [m.name, m]));
  const describe = (m: Member) => `${code(m.name)}${m.optional ? ' (optional)' : ''}`;
  const added = b.filter((m) => !old.has(m.name)).map(describe);
  const removed = a.filter((m) => !now.has(m.name)).map((m) => code(m.name));
  const optional: string[] = [];
  const required: string[] = [];
  const deprecated: string[] = [];
  const retyped: string[] = [];
  for (const m of b) {
    const was = old.get(m.name);
    if (was === undefined) continue;
    if (!was.optional && m.optional) optional.push(code(m.name));
    if (was.optional && !m.optional) required.push(code(m.name));
    if (!has(was.features, 'deprecated') && has(m.features, 'deprecated')) deprecated.push(code(m.name));
    const typeText = (x: Member) => `${x.type.array ? '[' : ''}${x.type.name}${x.type.array ? ']' : ''}`;
    if (typeText(was) !== typeText(m)) retyped.push(`${code(m.name)} ${code(typeText(was))} -> ${code(typeText(m))}`);
  }
  if (added.length > 0) out.push(`members added: ${added.join(', ')}`);
  if (removed.length > 0) out.push(`members removed: ${removed.join(', ')}`);
  if (optional.length > 0) out.push(`now optional: ${optional.join(', ')}`);
  if (required.length > 0) out.push(`now required: ${required.join(', ')}`);
  if (deprecated.length > 0) out.push(`members deprecated: ${deprecated.join(', ')}`);
  if (retyped.length > 0) out.push(`member types changed: ${retyped.join(', ')}`);
  return out;
}

function commandChanges(before: Schema, after: Schema, a: CommandDef, b: CommandDef): string[] {
  const out: string[] = [];
  if (!has(a.features, 'deprecated') && has(b.features, 'deprecated')) out.push('deprecated');
  if (has(a.features, 'deprecated') && !has(b.features, 'deprecated')) out.push('no longer deprecated');
  if (!has(a.features, 'unstable') && has(b.features, 'unstable')) out.push('unstable');
  const argsA = commandArguments(before, a);
  const argsB = commandArguments(after, b);
  const added = argsB.names.filter((n) => !argsA.names.includes(n)).map(code);
  const removed = argsA.names.filter((n) => !argsB.names.includes(n)).map(code);
  const nowRequired = argsB.required.filter((n) => !argsA.required.includes(n) && argsA.names.includes(n)).map(code);
  const nowOptional = argsA.required.filter((n) => !argsB.required.includes(n) && argsB.names.includes(n)).map(code);
  if (added.length > 0) out.push(`arguments added: ${added.join(', ')}`);
  if (removed.length > 0) out.push(`arguments removed: ${removed.join(', ')}`);
  if (nowRequired.length > 0) out.push(`arguments now required: ${nowRequired.join(', ')}`);
  if (nowOptional.length > 0) out.push(`arguments now optional: ${nowOptional.join(', ')}`);
  const ret = (d: CommandDef) => (d.returns === undefined ? 'nothing' : `${d.returns.array ? '[' : ''}${d.returns.name}${d.returns.array ? ']' : ''}`);
  if (ret(a) !== ret(b)) out.push(`returns ${code(ret(a))} -> ${code(ret(b))}`);
  if (a.allowOob !== b.allowOob) out.push(b.allowOob ? 'now allowed out-of-band' : 'no longer allowed out-of-band');
  return out;
}

function eventChanges(a: EventDef, b: EventDef, before: Schema, after: Schema): string[] {
  const out: string[] = [];
  if (!has(a.features, 'deprecated') && has(b.features, 'deprecated')) out.push('deprecated');
  if (has(a.features, 'deprecated') && !has(b.features, 'deprecated')) out.push('no longer deprecated');
  const members = (d: EventDef, s: Schema): readonly Member[] => {
    if (d.data === undefined) return [];
    if (typeof d.data !== 'string') return d.data;
    const t = s.types.get(d.data);
    return t === undefined ? [] : memberList(s, t);
  };
  out.push(...memberChanges(members(a, before), members(b, after)));
  return out;
}

function section<T extends Definition>(
  title: string,
  before: ReadonlyMap<string, T>,
  after: ReadonlyMap<string, T>,
  changes: (a: T, b: T) => string[],
  label: (d: T) => string = (d) => code(d.name),
): string {
  const added = sorted([...after.keys()].filter((n) => !before.has(n)));
  const removed = sorted([...before.keys()].filter((n) => !after.has(n)));
  const changed: string[] = [];
  for (const name of sorted(after.keys())) {
    const a = before.get(name);
    const b = after.get(name);
    if (a === undefined || b === undefined) continue;
    const lines = changes(a, b);
    if (lines.length > 0) changed.push(`- ${label(b)}: ${lines.join('; ')}`);
  }
  const newlyDeprecated = added.filter((n) => has(after.get(n)?.features ?? [], 'deprecated'));
  const parts = [`### ${title}\n`];
  parts.push(`Added (${added.length}): ${added.length > 0 ? added.map((n) => `${code(n)}${newlyDeprecated.includes(n) ? ' (deprecated)' : ''}`).join(', ') : 'none'}\n`);
  parts.push(`Removed (${removed.length}): ${removed.length > 0 ? removed.map(code).join(', ') : 'none'}\n`);
  parts.push(changed.length > 0 ? `Changed (${changed.length}):\n\n${changed.join('\n')}\n` : 'Changed: none\n');
  return parts.join('\n');
}

function deprecatedList(schema: Schema): string {
  const commands = sorted([...schema.commands.values()].filter((c) => has(c.features, 'deprecated')).map((c) => c.name));
  const events = sorted([...schema.events.values()].filter((e) => has(e.features, 'deprecated')).map((e) => e.name));
  return `Deprecated commands: ${commands.map(code).join(', ') || 'none'}. Deprecated events: ${events.map(code).join(', ') || 'none'}.\n`;
}

/** The whole SCHEMA-CHANGES.md for `versions`, oldest first. */
export function schemaChangelog(versions: readonly VersionedSchema[]): string {
  const parts: string[] = [
    '<!-- Code generated by @qmpkit/schema generator (packages/schema/generator/changelog.ts). DO NOT EDIT: run `pnpm --filter @qmpkit/schema run generate`. -->\n',
    '# QMP schema changes between the supported QEMU releases\n',
    'Computed from the QAPI schemas the types of each `@qmpkit/schema/qemu-<series>` entry are generated from:\n',
    versions.map((v) => `- QEMU ${v.series}: ${v.input} (${v.schema.commands.size} commands, ${v.schema.events.size} events, ${v.schema.types.size} types)`).join('\n') + '\n',
    '"Changed" lists, per definition present in both, the arguments, members, enum values and union branches added or removed, members that became optional or required or changed type, and deprecations gained or dropped. Type members are those a type declares itself (not its base).\n',
  ];
  for (const v of versions) parts.push(`## Deprecated in QEMU ${v.series}\n\n${deprecatedList(v.schema)}`);
  for (let i = 1; i < versions.length; i += 1) {
    const a = versions[i - 1];
    const b = versions[i];
    if (a === undefined || b === undefined) continue;
    parts.push(`## QEMU ${a.series} -> ${b.series}\n`);
    parts.push(section('Commands', a.schema.commands, b.schema.commands, (x, y) => commandChanges(a.schema, b.schema, x, y)));
    parts.push(section('Events', a.schema.events, b.schema.events, (x, y) => eventChanges(x, y, a.schema, b.schema)));
    parts.push(section('Types', a.schema.types, b.schema.types, (x, y) => typeChanges(a.schema, b.schema, x, y), (d) => `${code(d.name)} (${d.meta})`));
  }
  return `${parts.join('\n').trimEnd()}\n`;
}
