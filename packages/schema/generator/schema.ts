// Turns parsed QAPI expressions into a checked schema model: every key known, every type
// reference resolved, unions' discriminators and branches consistent. The rules follow QEMU's
// docs/devel/qapi-code-gen.rst for QEMU 7.2. File reading is injected so tests can use snippets.
import { QapiSchemaError } from './errors.js';
import { type DocBlock, parseQapiText, QDict, QList, type QValue } from './parser.js';

export type Cond = string | { readonly all: readonly Cond[] } | { readonly any: readonly Cond[] } | { readonly not: Cond };

export interface SourceInfo {
  readonly file: string;
  readonly line: number;
  /** File name without directory and `.json`: `block-core`, `job`, ... */
  readonly module: string;
}

export interface Feature {
  readonly name: string;
  readonly if: Cond | undefined;
}

/** `T` or `['T']`. */
export interface TypeRef {
  readonly name: string;
  readonly array: boolean;
}

export interface Member {
  readonly name: string;
  readonly optional: boolean;
  readonly type: TypeRef;
  readonly if: Cond | undefined;
  readonly features: readonly Feature[];
  /** Version from a `(since X.Y)` note in the member's doc, if any. */
  readonly since: string | undefined;
}

export interface EnumValue {
  readonly name: string;
  readonly if: Cond | undefined;
  readonly features: readonly Feature[];
  readonly since: string | undefined;
}

export interface Branch {
  /** Union: the discriminator value. Alternate: the branch name. */
  readonly name: string;
  /** Never an array for unions; alternates may have one array branch (QEMU 7.2's `StatsValue`). */
  readonly type: TypeRef;
  readonly if: Cond | undefined;
}

interface DefinitionBase {
  readonly name: string;
  readonly info: SourceInfo;
  readonly if: Cond | undefined;
  readonly features: readonly Feature[];
  /** Version from the definition doc's `Since:` section. */
  readonly since: string | undefined;
}

export interface EnumDef extends DefinitionBase {
  readonly meta: 'enum';
  readonly values: readonly EnumValue[];
  readonly prefix: string | undefined;
}

export interface StructDef extends DefinitionBase {
  readonly meta: 'struct';
  readonly base: string | undefined;
  readonly members: readonly Member[];
}

export interface UnionDef extends DefinitionBase {
  readonly meta: 'union';
  /** A struct name, or the members of an implicit base written inline. */
  readonly base: string | readonly Member[];
  readonly discriminator: string;
  readonly branches: readonly Branch[];
}

export interface AlternateDef extends DefinitionBase {
  readonly meta: 'alternate';
  readonly branches: readonly Branch[];
}

export interface CommandDef extends DefinitionBase {
  readonly meta: 'command';
  /** A type name (struct, or union when boxed), inline members, or undefined for no arguments. */
  readonly data: string | readonly Member[] | undefined;
  readonly boxed: boolean;
  readonly returns: TypeRef | undefined;
  readonly allowOob: boolean;
  readonly allowPreconfig: boolean;
  readonly coroutine: boolean;
  /** false: QEMU hand-writes the marshaller; such commands may take extra arguments. */
  readonly gen: boolean;
  readonly successResponse: boolean;
}

export interface EventDef extends DefinitionBase {
  readonly meta: 'event';
  readonly data: string | readonly Member[] | undefined;
  readonly boxed: boolean;
}

export type TypeDef = EnumDef | StructDef | UnionDef | AlternateDef;
export type Definition = TypeDef | CommandDef | EventDef;

export interface Pragma {
  docRequired: boolean;
  commandNameExceptions: string[];
  commandReturnsExceptions: string[];
  memberNameExceptions: string[];
  /** Definitions exempt from doc-required (QEMU 8.2+). */
  documentationExceptions: string[];
}

export interface Schema {
  /** Every definition, in schema order. */
  readonly definitions: readonly Definition[];
  readonly types: ReadonlyMap<string, TypeDef>;
  readonly commands: ReadonlyMap<string, CommandDef>;
  readonly events: ReadonlyMap<string, EventDef>;
  /** Modules in include order. */
  readonly modules: readonly string[];
  readonly pragma: Pragma;
}

/** JSON types of QAPI's built-in types (as query-qmp-schema reports them). */
export const BUILTIN_JSON_TYPES: ReadonlyMap<string, 'string' | 'int' | 'number' | 'boolean' | 'null' | 'value'> = new Map([
  ['str', 'string'],
  ['number', 'number'],
  ['int', 'int'],
  ['int8', 'int'],
  ['int16', 'int'],
  ['int32', 'int'],
  ['int64', 'int'],
  ['uint8', 'int'],
  ['uint16', 'int'],
  ['uint32', 'int'],
  ['uint64', 'int'],
  ['size', 'int'],
  ['bool', 'boolean'],
  ['null', 'null'],
  ['any', 'value'],
] as const);

/** QAPI's one built-in enum. */
export const QTYPE_VALUES = ['none', 'qnull', 'qnum', 'qstring', 'qdict', 'qlist', 'qbool'] as const;

const BUILTIN_INFO: SourceInfo = { file: '<built-in>', line: 0, module: 'builtin' };

export interface LoadOptions {
  /** Reads an included file; `path` is resolved against the including file by `resolve`. */
  readonly readFile: (path: string) => string;
  readonly resolve: (fromFile: string, include: string) => string;
  /** Name shown in errors and used as module name for `path`. */
  readonly displayName?: (path: string) => string;
}

function moduleName(display: string): string {
  const base = display.slice(display.lastIndexOf('/') + 1);
  return base.endsWith('.json') ? base.slice(0, -5) : base;
}

function extractSince(lines: readonly string[]): string | undefined {
  for (const line of lines) {
    const match = /^Since:\s*v?(\d+\.\d+(?:\.\d+)?)/.exec(line.trim());
    if (match) return match[1];
  }
  return undefined;
}

/** `(since X.Y)` notes in the paragraph that documents `@name:` in a definition doc block. */
function memberSince(doc: DocBlock | undefined, name: string): string | undefined {
  if (doc === undefined) return undefined;
  const start = doc.lines.findIndex((l) => l.startsWith(`@${name}:`));
  if (start === -1) return undefined;
  let text = doc.lines[start] ?? '';
  for (let i = start + 1; i < doc.lines.length; i += 1) {
    const line = doc.lines[i] ?? '';
    if (line.startsWith('@') || line.trim() === '' || /^[A-Z][a-z]+( [a-z]+)?:/.test(line)) break;
    text += ` ${line.trim()}`;
  }
  return /\(since:?\s*v?(\d+\.\d+(?:\.\d+)?)\)/i.exec(text)?.[1];
}

class Checker {
  private readonly definitions: Definition[] = [];
  private readonly byName = new Map<string, Definition>();
  private readonly modules: string[] = [];
  private readonly seenFiles = new Set<string>();
  readonly pragma: Pragma = {
    docRequired: false,
    commandNameExceptions: [],
    commandReturnsExceptions: [],
    memberNameExceptions: [],
    documentationExceptions: [],
  };

  constructor(private readonly options: LoadOptions) {}

  private display(path: string): string {
    return this.options.displayName?.(path) ?? path;
  }

  loadFile(path: string, includedFrom?: { info: SourceInfo }): void {
    if (this.seenFiles.has(path)) return; // includes are idempotent
    this.seenFiles.add(path);
    const file = this.display(path);
    let text: string;
    try {
      text = this.options.readFile(path);
    } catch (cause) {
      const at = includedFrom?.info ?? { file, line: 0 };
      throw new QapiSchemaError(at.file, at.line, `cannot read schema file '${file}'`, { cause });
    }
    const parsed = parseQapiText(text, file);
    const module = moduleName(file);
    this.modules.push(module);
    for (const top of parsed.exprs) {
      const info: SourceInfo = { file, line: top.line, module };
      this.topLevel(top.expr, info, path, top.doc);
    }
  }

  private fail(info: { file: string }, line: number, detail: string): never {
    throw new QapiSchemaError(info.file, line, detail);
  }

  private topLevel(expr: QDict, info: SourceInfo, path: string, doc: DocBlock | undefined): void {
    const metas = ['include', 'pragma', 'enum', 'struct', 'union', 'alternate', 'command', 'event'] as const;
    const present = metas.filter((m) => expr.entries.has(m));
    if (present.length !== 1) {
      this.fail(
        info,
        info.line,
        present.length === 0
          ? `expression must have exactly one of the keys ${metas.map((m) => `'${m}'`).join(', ')}, found none (keys: ${[...expr.entries.keys()].join(', ') || 'none'})`
          : `expression has more than one of the keys ${present.map((m) => `'${m}'`).join(', ')}`,
      );
    }
    const meta = present[0];
    switch (meta) {
      case 'include': {
        this.checkKeys(expr, info, ['include'], []);
        const target = this.string(expr, 'include', info);
        this.loadFile(this.options.resolve(path, target), { info });
        return;
      }
      case 'pragma':
        this.checkKeys(expr, info, ['pragma'], []);
        this.pragmaDirective(this.dict(expr, 'pragma', info), info);
        return;
      case 'enum':
        this.add(this.enumDef(expr, info, doc), expr, info);
        return;
      case 'struct':
        this.add(this.structDef(expr, info, doc), expr, info);
        return;
      case 'union':
        this.add(this.unionDef(expr, info, doc), expr, info);
        return;
      case 'alternate':
        this.add(this.alternateDef(expr, info, doc), expr, info);
        return;
      case 'command':
        this.add(this.commandDef(expr, info, doc), expr, info);
        return;
      case 'event':
        this.add(this.eventDef(expr, info, doc), expr, info);
        return;
      default:
        this.fail(info, info.line, 'unreachable');
    }
  }

  private add(def: Definition, expr: QDict, info: SourceInfo): void {
    const existing = this.byName.get(def.name) ?? (BUILTIN_JSON_TYPES.has(def.name) || def.name === 'QType' ? 'builtin' : undefined);
    if (existing !== undefined) {
      const where = existing === 'builtin' ? 'a built-in type' : `${existing.meta} defined at ${existing.info.file}:${existing.info.line}`;
      this.fail(info, expr.keyLines.get(def.meta) ?? info.line, `'${def.name}' is already defined (${where})`);
    }
    this.byName.set(def.name, def);
    this.definitions.push(def);
  }

  // ---- value accessors ----------------------------------------------------------------------

  private line(expr: QDict, key: string): number {
    return expr.keyLines.get(key) ?? expr.line;
  }

  private checkKeys(expr: QDict, info: SourceInfo, required: readonly string[], optional: readonly string[]): void {
    for (const key of expr.entries.keys()) {
      if (!required.includes(key) && !optional.includes(key)) {
        const allowed = [...required, ...optional].map((k) => `'${k}'`).join(', ');
        this.fail(info, this.line(expr, key), `unknown key '${key}' (allowed here: ${allowed})`);
      }
    }
    for (const key of required) {
      if (!expr.entries.has(key)) this.fail(info, expr.line, `missing key '${key}'`);
    }
  }

  private string(expr: QDict, key: string, info: SourceInfo): string {
    const value = expr.entries.get(key);
    if (typeof value !== 'string') this.fail(info, this.line(expr, key), `'${key}' must be a string`);
    return value;
  }

  private dict(expr: QDict, key: string, info: SourceInfo): QDict {
    const value = expr.entries.get(key);
    if (!(value instanceof QDict)) this.fail(info, this.line(expr, key), `'${key}' must be an object`);
    return value;
  }

  private name(expr: QDict, key: string, info: SourceInfo): string {
    const value = this.string(expr, key, info);
    if (!/^[A-Za-z][A-Za-z0-9_.-]*$/.test(value)) {
      this.fail(info, this.line(expr, key), `'${key}' has an invalid name '${value}'`);
    }
    return value;
  }

  /** Flags that QEMU accepts with one value only ('boxed': true, 'gen': false, ...); absent is the other value. */
  private flag(expr: QDict, key: string, info: SourceInfo, only: boolean): boolean {
    const value = expr.entries.get(key);
    if (value === undefined) return !only;
    if (value !== only) this.fail(info, this.line(expr, key), `'${key}' must be ${String(only)}`);
    return only;
  }

  private stringList(value: QValue | undefined, info: SourceInfo, line: number, what: string): string[] {
    if (!(value instanceof QList)) this.fail(info, line, `${what} must be an array of strings`);
    return value.items.map((item) => {
      if (typeof item !== 'string') this.fail(info, value.line, `${what} must be an array of strings`);
      return item;
    });
  }

  private pragmaDirective(pragma: QDict, info: SourceInfo): void {
    for (const [key, value] of pragma.entries) {
      const line = pragma.keyLines.get(key) ?? pragma.line;
      switch (key) {
        case 'doc-required':
          if (typeof value !== 'boolean') this.fail(info, line, "pragma 'doc-required' must be true or false");
          this.pragma.docRequired = value;
          break;
        case 'command-name-exceptions':
          this.pragma.commandNameExceptions.push(...this.stringList(value, info, line, `pragma '${key}'`));
          break;
        case 'command-returns-exceptions':
          this.pragma.commandReturnsExceptions.push(...this.stringList(value, info, line, `pragma '${key}'`));
          break;
        case 'member-name-exceptions':
          this.pragma.memberNameExceptions.push(...this.stringList(value, info, line, `pragma '${key}'`));
          break;
        case 'documentation-exceptions':
          this.pragma.documentationExceptions.push(...this.stringList(value, info, line, `pragma '${key}'`));
          break;
        default:
          this.fail(info, line, `unknown pragma '${key}'`);
      }
    }
  }

  // ---- pieces shared by definitions -----------------------------------------------------------

  private cond(value: QValue | undefined, info: SourceInfo, line: number): Cond | undefined {
    if (value === undefined) return undefined;
    if (typeof value === 'string') {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(value)) this.fail(info, line, `'if' condition '${value}' is not a valid identifier`);
      return value;
    }
    if (!(value instanceof QDict)) this.fail(info, line, "'if' condition must be a string or an object with 'all', 'any' or 'not'");
    const keys = [...value.entries.keys()];
    if (keys.length !== 1) {
      this.fail(info, value.line, `'if' condition object must have exactly one of 'all', 'any', 'not' (found ${keys.join(', ') || 'none'})`);
    }
    const key = keys[0] ?? '';
    const inner = value.entries.get(key);
    const innerLine = value.keyLines.get(key) ?? value.line;
    if (key === 'not') {
      const operand = this.cond(inner, info, innerLine);
      if (operand === undefined) this.fail(info, innerLine, "'not' needs a condition");
      return { not: operand };
    }
    if (key !== 'all' && key !== 'any') this.fail(info, innerLine, `unknown 'if' operator '${key}' (allowed: 'all', 'any', 'not')`);
    if (!(inner instanceof QList) || inner.items.length === 0) {
      this.fail(info, innerLine, `'${key}' needs a non-empty array of conditions`);
    }
    const operands = inner.items.map((item) => {
      const c = this.cond(item, info, inner.line);
      if (c === undefined) this.fail(info, inner.line, `'${key}' operand is missing`);
      return c;
    });
    return key === 'all' ? { all: operands } : { any: operands };
  }

  private features(expr: QDict, info: SourceInfo): Feature[] {
    const value = expr.entries.get('features');
    if (value === undefined) return [];
    const line = this.line(expr, 'features');
    if (!(value instanceof QList)) this.fail(info, line, "'features' must be an array");
    const seen = new Set<string>();
    return value.items.map((item) => {
      let feature: Feature;
      if (typeof item === 'string') {
        feature = { name: item, if: undefined };
      } else if (item instanceof QDict) {
        this.checkKeys(item, info, ['name'], ['if']);
        feature = { name: this.name(item, 'name', info), if: this.cond(item.entries.get('if'), info, this.line(item, 'if')) };
      } else {
        this.fail(info, line, "each feature must be a string or an object with 'name'");
      }
      if (seen.has(feature.name)) this.fail(info, line, `duplicate feature '${feature.name}'`);
      seen.add(feature.name);
      return feature;
    });
  }

  private typeRef(value: QValue | undefined, info: SourceInfo, line: number, what: string, allowArray: boolean): TypeRef {
    if (typeof value === 'string') return { name: value, array: false };
    if (value instanceof QList) {
      if (!allowArray) this.fail(info, line, `${what} cannot be an array`);
      const element = value.items[0];
      if (value.items.length !== 1 || typeof element !== 'string') {
        this.fail(info, line, `${what}: an array type must be written ['TypeName'] with exactly one type name`);
      }
      return { name: element, array: true };
    }
    this.fail(info, line, `${what} must be a type name${allowArray ? " or ['TypeName']" : ''}`);
  }

  private members(value: QValue | undefined, info: SourceInfo, line: number, what: string, doc: DocBlock | undefined): Member[] {
    if (!(value instanceof QDict)) this.fail(info, line, `${what} must be an object of members`);
    const names = new Set<string>();
    const members: Member[] = [];
    for (const [key, spec] of value.entries) {
      const keyLine = value.keyLines.get(key) ?? value.line;
      const optional = key.startsWith('*');
      const name = optional ? key.slice(1) : key;
      if (!/^[A-Za-z][A-Za-z0-9_-]*$/.test(name)) this.fail(info, keyLine, `invalid member name '${key}'`);
      if (names.has(name)) this.fail(info, keyLine, `duplicate member '${name}'`);
      names.add(name);
      if (spec instanceof QDict) {
        this.checkKeys(spec, info, ['type'], ['if', 'features']);
        members.push({
          name,
          optional,
          type: this.typeRef(spec.entries.get('type'), info, this.line(spec, 'type'), `member '${name}'`, true),
          if: this.cond(spec.entries.get('if'), info, this.line(spec, 'if')),
          features: this.features(spec, info),
          since: memberSince(doc, name),
        });
      } else {
        members.push({
          name,
          optional,
          type: this.typeRef(spec, info, keyLine, `member '${name}'`, true),
          if: undefined,
          features: [],
          since: memberSince(doc, name),
        });
      }
    }
    return members;
  }

  private branches(value: QValue | undefined, info: SourceInfo, line: number, what: string, allowArray: boolean): Branch[] {
    if (!(value instanceof QDict)) this.fail(info, line, `'data' of ${what} must be an object of branches`);
    if (value.entries.size === 0) this.fail(info, line, `${what} must have at least one branch`);
    const branches: Branch[] = [];
    for (const [name, spec] of value.entries) {
      const keyLine = value.keyLines.get(name) ?? value.line;
      if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)) this.fail(info, keyLine, `invalid branch name '${name}'`);
      if (spec instanceof QDict) {
        this.checkKeys(spec, info, ['type'], ['if']);
        branches.push({
          name,
          type: this.typeRef(spec.entries.get('type'), info, this.line(spec, 'type'), `branch '${name}'`, allowArray),
          if: this.cond(spec.entries.get('if'), info, this.line(spec, 'if')),
        });
      } else {
        branches.push({ name, type: this.typeRef(spec, info, keyLine, `branch '${name}'`, allowArray), if: undefined });
      }
    }
    return branches;
  }

  private common(expr: QDict, meta: string, info: SourceInfo, doc: DocBlock | undefined) {
    const name = this.name(expr, meta, info);
    const defDoc = doc?.symbol === name ? doc : undefined;
    if (this.pragma.docRequired && defDoc === undefined && !this.pragma.documentationExceptions.includes(name)) {
      this.fail(info, info.line, `definition '${name}' has no doc comment (pragma doc-required is on)`);
    }
    return {
      name,
      info,
      if: this.cond(expr.entries.get('if'), info, this.line(expr, 'if')),
      features: this.features(expr, info),
      since: defDoc === undefined ? undefined : extractSince(defDoc.lines),
      doc: defDoc,
    };
  }

  // ---- definitions ---------------------------------------------------------------------------

  private enumDef(expr: QDict, info: SourceInfo, doc: DocBlock | undefined): EnumDef {
    this.checkKeys(expr, info, ['enum', 'data'], ['prefix', 'if', 'features']);
    const { doc: defDoc, ...common } = this.common(expr, 'enum', info, doc);
    const data = expr.entries.get('data');
    const dataLine = this.line(expr, 'data');
    if (!(data instanceof QList)) this.fail(info, dataLine, "'data' of an enum must be an array of values");
    const seen = new Set<string>();
    const values = data.items.map((item): EnumValue => {
      let value: EnumValue;
      if (typeof item === 'string') {
        value = { name: item, if: undefined, features: [], since: memberSince(defDoc, item) };
      } else if (item instanceof QDict) {
        this.checkKeys(item, info, ['name'], ['if', 'features']);
        const name = this.string(item, 'name', info);
        value = {
          name,
          if: this.cond(item.entries.get('if'), info, this.line(item, 'if')),
          features: this.features(item, info),
          since: memberSince(defDoc, name),
        };
      } else {
        this.fail(info, data.line, "each enum value must be a string or an object with 'name'");
      }
      if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(value.name)) this.fail(info, data.line, `invalid enum value '${value.name}'`);
      if (seen.has(value.name)) this.fail(info, data.line, `duplicate enum value '${value.name}'`);
      seen.add(value.name);
      return value;
    });
    const prefix = expr.entries.has('prefix') ? this.string(expr, 'prefix', info) : undefined;
    return { meta: 'enum', ...common, values, prefix };
  }

  private structDef(expr: QDict, info: SourceInfo, doc: DocBlock | undefined): StructDef {
    this.checkKeys(expr, info, ['struct', 'data'], ['base', 'if', 'features']);
    const { doc: defDoc, ...common } = this.common(expr, 'struct', info, doc);
    const base = expr.entries.has('base') ? this.string(expr, 'base', info) : undefined;
    const members = this.members(expr.entries.get('data'), info, this.line(expr, 'data'), "'data' of a struct", defDoc);
    return { meta: 'struct', ...common, base, members };
  }

  private unionDef(expr: QDict, info: SourceInfo, doc: DocBlock | undefined): UnionDef {
    this.checkKeys(expr, info, ['union', 'base', 'discriminator', 'data'], ['if', 'features']);
    const { doc: defDoc, ...common } = this.common(expr, 'union', info, doc);
    const baseValue = expr.entries.get('base');
    const base =
      typeof baseValue === 'string'
        ? baseValue
        : this.members(baseValue, info, this.line(expr, 'base'), "'base' of a union", defDoc);
    const discriminator = this.string(expr, 'discriminator', info);
    const branches = this.branches(expr.entries.get('data'), info, this.line(expr, 'data'), 'a union', false);
    return { meta: 'union', ...common, base, discriminator, branches };
  }

  private alternateDef(expr: QDict, info: SourceInfo, doc: DocBlock | undefined): AlternateDef {
    this.checkKeys(expr, info, ['alternate', 'data'], ['if', 'features']);
    const { doc: _doc, ...common } = this.common(expr, 'alternate', info, doc);
    const branches = this.branches(expr.entries.get('data'), info, this.line(expr, 'data'), 'an alternate', true);
    return { meta: 'alternate', ...common, branches };
  }

  private data(expr: QDict, info: SourceInfo, doc: DocBlock | undefined, what: string): string | Member[] | undefined {
    const value = expr.entries.get('data');
    if (value === undefined) return undefined;
    if (typeof value === 'string') return value;
    return this.members(value, info, this.line(expr, 'data'), `'data' of ${what}`, doc);
  }

  private commandDef(expr: QDict, info: SourceInfo, doc: DocBlock | undefined): CommandDef {
    this.checkKeys(
      expr,
      info,
      ['command'],
      ['data', 'returns', 'boxed', 'success-response', 'gen', 'allow-oob', 'allow-preconfig', 'coroutine', 'if', 'features'],
    );
    const { doc: defDoc, ...common } = this.common(expr, 'command', info, doc);
    const data = this.data(expr, info, defDoc, 'a command');
    const boxed = this.flag(expr, 'boxed', info, true);
    if (boxed && typeof data !== 'string') this.fail(info, this.line(expr, 'boxed'), "'boxed': true needs 'data' naming a type");
    const returns = expr.entries.has('returns')
      ? this.typeRef(expr.entries.get('returns'), info, this.line(expr, 'returns'), "'returns'", true)
      : undefined;
    const allowOob = this.flag(expr, 'allow-oob', info, true);
    const coroutine = this.flag(expr, 'coroutine', info, true);
    if (allowOob && coroutine) this.fail(info, info.line, "'coroutine': true and 'allow-oob': true cannot be combined");
    return {
      meta: 'command',
      ...common,
      data,
      boxed,
      returns,
      allowOob,
      allowPreconfig: this.flag(expr, 'allow-preconfig', info, true),
      coroutine,
      gen: this.flag(expr, 'gen', info, false),
      successResponse: this.flag(expr, 'success-response', info, false),
    };
  }

  private eventDef(expr: QDict, info: SourceInfo, doc: DocBlock | undefined): EventDef {
    this.checkKeys(expr, info, ['event'], ['data', 'boxed', 'if', 'features']);
    const { doc: defDoc, ...common } = this.common(expr, 'event', info, doc);
    const data = this.data(expr, info, defDoc, 'an event');
    const boxed = this.flag(expr, 'boxed', info, true);
    if (boxed && typeof data !== 'string') this.fail(info, this.line(expr, 'boxed'), "'boxed': true needs 'data' naming a type");
    return { meta: 'event', ...common, data, boxed };
  }

  // ---- cross-definition checks -----------------------------------------------------------------

  finish(): Schema {
    const types = new Map<string, TypeDef>();
    const commands = new Map<string, CommandDef>();
    const events = new Map<string, EventDef>();
    for (const def of this.definitions) {
      if (def.meta === 'command') commands.set(def.name, def);
      else if (def.meta === 'event') events.set(def.name, def);
      else types.set(def.name, def);
    }
    const isType = (name: string) => BUILTIN_JSON_TYPES.has(name) || name === 'QType' || types.has(name);
    const needType = (info: SourceInfo, ref: TypeRef, what: string): void => {
      if (!isType(ref.name)) {
        const other = this.byName.get(ref.name);
        this.fail(info, info.line, `${what} refers to ${other ? `${other.meta} '${ref.name}', which is not a type` : `unknown type '${ref.name}'`}`);
      }
    };
    const needStruct = (info: SourceInfo, name: string, what: string): StructDef => {
      const def = types.get(name);
      if (def?.meta !== 'struct') this.fail(info, info.line, `${what} must be a struct type, '${name}' is ${def ? `a ${def.meta}` : 'not defined'}`);
      return def;
    };
    const checkMembers = (info: SourceInfo, members: readonly Member[], what: string) => {
      for (const m of members) needType(info, m.type, `member '${m.name}' of ${what}`);
    };
    /** All members of a struct including its bases, checking for base cycles. */
    const allMembers = (def: StructDef, seen: Set<string> = new Set()): Member[] => {
      if (seen.has(def.name)) this.fail(def.info, def.info.line, `struct '${def.name}' is its own base`);
      seen.add(def.name);
      const base = def.base === undefined ? [] : allMembers(needStruct(def.info, def.base, `base of '${def.name}'`), seen);
      return [...base, ...def.members];
    };

    for (const def of this.definitions) {
      const what = `${def.meta} '${def.name}'`;
      switch (def.meta) {
        case 'enum':
          break;
        case 'struct': {
          checkMembers(def.info, def.members, what);
          const all = allMembers(def);
          const names = new Set<string>();
          for (const m of all) {
            if (names.has(m.name)) this.fail(def.info, def.info.line, `${what}: member '${m.name}' clashes with a member of its base`);
            names.add(m.name);
          }
          break;
        }
        case 'union': {
          let baseMembers: readonly Member[];
          if (typeof def.base === 'string') {
            baseMembers = allMembers(needStruct(def.info, def.base, `base of ${what}`));
          } else {
            checkMembers(def.info, def.base, what);
            baseMembers = def.base;
          }
          const tag = baseMembers.find((m) => m.name === def.discriminator);
          if (tag === undefined) this.fail(def.info, def.info.line, `${what}: discriminator '${def.discriminator}' is not a member of the base`);
          const tagType = types.get(tag.type.name);
          if (tag.optional || tag.type.array || tagType?.meta !== 'enum') {
            this.fail(def.info, def.info.line, `${what}: discriminator '${def.discriminator}' must be a required member of an enum type`);
          }
          for (const branch of def.branches) {
            if (!tagType.values.some((v) => v.name === branch.name)) {
              this.fail(def.info, def.info.line, `${what}: branch '${branch.name}' is not a value of enum '${tagType.name}'`);
            }
            const branchType = types.get(branch.type.name);
            if (branchType?.meta !== 'struct' && branchType?.meta !== 'union') {
              this.fail(def.info, def.info.line, `${what}: branch '${branch.name}' must be a struct or union type, '${branch.type.name}' is ${branchType ? `a ${branchType.meta}` : 'not a defined type'}`);
            }
          }
          break;
        }
        case 'alternate':
          for (const branch of def.branches) {
            needType(def.info, branch.type, `branch '${branch.name}' of ${what}`);
            if (!branch.type.array && types.get(branch.type.name)?.meta === 'alternate') {
              this.fail(def.info, def.info.line, `${what}: branch '${branch.name}' cannot be another alternate`);
            }
          }
          break;
        case 'command':
        case 'event': {
          if (typeof def.data === 'string') {
            const dataType = types.get(def.data);
            const ok = dataType?.meta === 'struct' || (def.boxed && dataType?.meta === 'union');
            if (!ok) {
              this.fail(def.info, def.info.line, `${what}: 'data' must name a struct${def.boxed ? ' or union' : ''} type, '${def.data}' is ${dataType ? `a ${dataType.meta}` : 'not a defined type'}`);
            }
          } else if (def.data !== undefined) {
            checkMembers(def.info, def.data, what);
          }
          if (def.meta === 'command' && def.returns !== undefined) needType(def.info, def.returns, `'returns' of ${what}`);
          break;
        }
      }
    }
    return { definitions: this.definitions, types, commands, events, modules: this.modules, pragma: this.pragma };
  }
}

/** Loads a schema starting at `entry`, following includes. */
export function loadSchema(entry: string, options: LoadOptions): Schema {
  const checker = new Checker(options);
  checker.loadFile(entry);
  return checker.finish();
}

/** Loads a schema held in memory: `files` maps a path (as used by includes) to its text. */
export function loadSchemaFromTexts(entry: string, files: Readonly<Record<string, string>>): Schema {
  return loadSchema(entry, {
    readFile: (path) => {
      const text = files[path];
      if (text === undefined) throw new Error(`no such file: ${path}`);
      return text;
    },
    resolve: (fromFile, include) => {
      const dir = fromFile.includes('/') ? fromFile.slice(0, fromFile.lastIndexOf('/') + 1) : '';
      return dir + include;
    },
  });
}
