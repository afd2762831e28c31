// Structural comparison of the parsed QAPI schema with the live binary's `query-qmp-schema`.
// QEMU masks type names as numbers there, so types are matched by shape: built-in JSON type,
// enum value set, object members (name, optionality, type) and variants, array element,
// alternate branches. Recursion is cut on pairs already under comparison (recursive types).
import {
  BUILTIN_JSON_TYPES,
  type Branch,
  type Cond,
  type EnumValue,
  type Member,
  QTYPE_VALUES,
  type Schema,
  type StructDef,
  type TypeRef,
} from '../../generator/schema.js';
import { formatCond } from '../../generator/emitter.js';
import type { SchemaInfo } from './qemu-schema.js';

type Shape =
  | { readonly kind: 'builtin'; readonly key: string; readonly json: string }
  | { readonly kind: 'enum'; readonly key: string; readonly values: readonly EnumValue[] }
  | { readonly kind: 'array'; readonly key: string; readonly element: Shape }
  | {
      readonly kind: 'object';
      readonly key: string;
      readonly members: readonly Member[];
      readonly variants?: { readonly tag: string; readonly branches: readonly Branch[]; readonly tagValues: readonly EnumValue[] };
    }
  | { readonly kind: 'alternate'; readonly key: string; readonly branches: readonly Branch[] };

export interface ParityReport {
  readonly commandsChecked: number;
  readonly eventsChecked: number;
  /** Differences between binary and generated data; must be empty. */
  readonly mismatches: string[];
  /** Generated entries the binary does not have, each with the `if` condition that explains it. */
  readonly lacking: string[];
  /** Generated commands and events the binary does not have. */
  readonly lackingDefinitions: string[];
}

export function compareWithLive(schema: Schema, live: readonly SchemaInfo[]): ParityReport {
  const byName = new Map(live.map((e) => [e.name, e]));
  const mismatches: string[] = [];
  const lacking = new Set<string>();
  const lackingDefinitions: string[] = [];
  const results = new Map<string, boolean>();

  const allMembers = (def: StructDef): Member[] => {
    const baseDef = def.base === undefined ? undefined : schema.types.get(def.base);
    return [...(baseDef?.meta === 'struct' ? allMembers(baseDef) : []), ...def.members];
  };

  const resolveNamed = (name: string): Shape => {
    const json = BUILTIN_JSON_TYPES.get(name);
    if (json !== undefined) return { kind: 'builtin', key: name, json };
    if (name === 'QType') {
      return { kind: 'enum', key: name, values: QTYPE_VALUES.map((v) => ({ name: v, if: undefined, features: [], since: undefined })) };
    }
    const def = schema.types.get(name);
    switch (def?.meta) {
      case 'enum':
        return { kind: 'enum', key: name, values: def.values };
      case 'struct':
        return { kind: 'object', key: name, members: allMembers(def) };
      case 'union': {
        const baseMembers = typeof def.base === 'string' ? allMembers(schema.types.get(def.base) as StructDef) : def.base;
        const tagType = schema.types.get(baseMembers.find((m) => m.name === def.discriminator)?.type.name ?? '');
        return {
          kind: 'object',
          key: name,
          members: baseMembers,
          variants: { tag: def.discriminator, branches: def.branches, tagValues: tagType?.meta === 'enum' ? tagType.values : [] },
        };
      }
      case 'alternate':
        return { kind: 'alternate', key: name, branches: def.branches };
      default:
        throw new Error(`unresolvable type ${name}`);
    }
  };
  const resolve = (ref: TypeRef): Shape => {
    const element = resolveNamed(ref.name);
    return ref.array ? { kind: 'array', key: `[${element.key}]`, element } : element;
  };
  const dataShape = (data: string | readonly Member[] | undefined, key: string): Shape =>
    typeof data === 'string' ? resolveNamed(data) : { kind: 'object', key, members: data ?? [] };

  const explain = (cond: Cond | undefined, what: string, out: string[]): void => {
    if (cond === undefined) out.push(`${what}: generated but missing in the binary, and it has no 'if' condition`);
    else lacking.add(`${what} (if ${formatCond(cond)})`);
  };

  /** Compares; pushes differences into `out`; returns whether it matched. */
  const compare = (liveName: string, shape: Shape, path: string, out: string[]): boolean => {
    const memo = `${liveName}|${shape.key}`;
    const known = results.get(memo);
    if (known !== undefined) return known;
    results.set(memo, true); // assumed while in progress: recursive types compare coinductively
    const before = out.length;
    compareNow(liveName, shape, path, out);
    const ok = out.length === before;
    results.set(memo, ok);
    return ok;
  };

  const compareNow = (liveName: string, shape: Shape, path: string, out: string[]): void => {
    const info = byName.get(liveName);
    if (info === undefined) {
      out.push(`${path}: the binary's schema has no type '${liveName}'`);
      return;
    }
    const meta = info['meta-type'];
    const expected = shape.kind === 'builtin' || shape.kind === 'enum' || shape.kind === 'array' || shape.kind === 'alternate' ? shape.kind : 'object';
    if (meta !== expected) {
      out.push(`${path}: binary has a ${meta}, generated ${shape.kind} '${shape.key}'`);
      return;
    }
    switch (shape.kind) {
      case 'builtin':
        if (info['json-type'] !== shape.json) out.push(`${path}: binary JSON type ${info['json-type'] ?? '?'}, generated '${shape.key}' (${shape.json})`);
        return;
      case 'enum': {
        const liveValues = new Set(info.values ?? []);
        for (const v of liveValues) {
          if (!shape.values.some((g) => g.name === v)) out.push(`${path}: enum value '${v}' of the binary is not in generated '${shape.key}'`);
        }
        for (const v of shape.values) if (!liveValues.has(v.name)) explain(v.if, `enum ${shape.key} value '${v.name}'`, out);
        return;
      }
      case 'array':
        compare(info['element-type'] ?? '', shape.element, `${path}[]`, out);
        return;
      case 'alternate': {
        const used = new Set<Branch>();
        for (const alt of info.members ?? []) {
          const match = shape.branches.find((b) => !used.has(b) && compare(alt.type ?? '', resolve(b.type), `${path}|${b.name}`, []));
          if (match === undefined) out.push(`${path}: an alternative of the binary (type ${alt.type ?? '?'}) matches no branch of '${shape.key}'`);
          else used.add(match);
        }
        for (const b of shape.branches) if (!used.has(b)) explain(b.if, `alternate ${shape.key} branch '${b.name}'`, out);
        return;
      }
      case 'object': {
        const liveMembers = info.members ?? [];
        for (const m of liveMembers) {
          const g = shape.members.find((x) => x.name === m.name);
          const at = `${path}.${m.name ?? '?'}`;
          if (g === undefined) {
            out.push(`${at}: member of the binary is not generated in '${shape.key}'`);
            continue;
          }
          const liveOptional = 'default' in m;
          if (liveOptional !== g.optional) out.push(`${at}: binary says ${liveOptional ? 'optional' : 'required'}, generated ${g.optional ? 'optional' : 'required'}`);
          compare(m.type ?? '', resolve(g.type), at, out);
        }
        for (const g of shape.members) {
          if (!liveMembers.some((m) => m.name === g.name)) explain(g.if, `${shape.key} member '${g.name}'`, out);
        }
        const variants = shape.variants;
        if (variants === undefined) {
          if (info.tag !== undefined) out.push(`${path}: binary has a union on '${info.tag}', generated '${shape.key}' is a struct`);
          return;
        }
        if (info.tag !== variants.tag) {
          out.push(`${path}: binary discriminator '${info.tag ?? 'none'}', generated '${variants.tag}'`);
          return;
        }
        const liveCases = info.variants ?? [];
        for (const v of liveCases) {
          const branch = variants.branches.find((b) => b.name === v.case);
          const at = `${path}(${variants.tag}=${v.case})`;
          if (branch !== undefined) {
            compare(v.type, resolve(branch.type), at, out);
          } else if (variants.tagValues.some((t) => t.name === v.case)) {
            // QEMU lists enum values without a branch with an empty object type.
            compare(v.type, { kind: 'object', key: 'q_empty', members: [] }, at, out);
          } else {
            out.push(`${at}: case of the binary is not a value of the generated discriminator enum`);
          }
        }
        for (const b of variants.branches) {
          if (!liveCases.some((v) => v.case === b.name)) {
            const value = variants.tagValues.find((t) => t.name === b.name);
            explain(b.if ?? value?.if, `${shape.key} branch '${b.name}'`, out);
          }
        }
        return;
      }
    }
  };

  let commandsChecked = 0;
  let eventsChecked = 0;
  for (const info of live) {
    if (info['meta-type'] === 'command') {
      commandsChecked += 1;
      const def = schema.commands.get(info.name);
      if (def === undefined) {
        mismatches.push(`command ${info.name}: in the binary, not generated`);
        continue;
      }
      compare(info['arg-type'] ?? '', dataShape(def.data, `${def.name}:args`), `command ${def.name} arguments`, mismatches);
      const ret: Shape = def.returns === undefined ? { kind: 'object', key: 'q_empty', members: [] } : resolve(def.returns);
      compare(info['ret-type'] ?? '', ret, `command ${def.name} returns`, mismatches);
      if ((info['allow-oob'] ?? false) !== def.allowOob) mismatches.push(`command ${def.name}: allow-oob differs`);
      for (const f of ['deprecated', 'unstable']) {
        const liveHas = (info.features ?? []).includes(f);
        if (liveHas !== def.features.some((x) => x.name === f)) mismatches.push(`command ${def.name}: feature '${f}' differs`);
      }
    } else if (info['meta-type'] === 'event') {
      eventsChecked += 1;
      const def = schema.events.get(info.name);
      if (def === undefined) {
        mismatches.push(`event ${info.name}: in the binary, not generated`);
        continue;
      }
      compare(info['arg-type'] ?? '', dataShape(def.data, `${def.name}:data`), `event ${def.name} data`, mismatches);
      for (const f of ['deprecated', 'unstable']) {
        const liveHas = (info.features ?? []).includes(f);
        if (liveHas !== def.features.some((x) => x.name === f)) mismatches.push(`event ${def.name}: feature '${f}' differs`);
      }
    }
  }
  for (const def of [...schema.commands.values(), ...schema.events.values()]) {
    if (!byName.has(def.name)) {
      const where = `${def.meta} ${def.name}`;
      if (def.if === undefined) mismatches.push(`${where}: generated but missing in the binary, and it has no 'if' condition`);
      else lackingDefinitions.push(`${where} (if ${formatCond(def.if)})`);
    }
  }
  return { commandsChecked, eventsChecked, mismatches, lacking: [...lacking].sort(), lackingDefinitions: lackingDefinitions.sort() };
}
