// Reads the text of one QAPI schema file into JSON-like values with line numbers.
// The syntax (QEMU docs/devel/qapi-code-gen.rst, "Schema syntax"): JSON with single-quoted
// strings whose only escape is a doubled backslash, `#` comments to the end of the line, no
// numbers and no null, and doc comment blocks that open and close with a line of `##`.
// No I/O here: the caller supplies the text and the file name used in error messages.
import { QapiSyntaxError } from './errors.js';

/** A JSON object of the schema. Keys keep their order (a Map, as member names may look numeric). */
export class QDict {
  readonly entries = new Map<string, QValue>();
  readonly keyLines = new Map<string, number>();
  constructor(readonly line: number) {}
}

/** A JSON array of the schema. */
export class QList {
  readonly items: QValue[] = [];
  constructor(readonly line: number) {}
}

export type QValue = string | boolean | QDict | QList;

/** A `##` ... `##` comment block. `symbol` is set when its first line is `@Name:`. */
export interface DocBlock {
  readonly line: number;
  readonly symbol: string | undefined;
  /** Text of each line after the leading `#` (and the one space after it). */
  readonly lines: readonly string[];
}

/** A top-level expression with the definition doc block right before it, if any. */
export interface TopLevelExpr {
  readonly expr: QDict;
  readonly line: number;
  readonly doc: DocBlock | undefined;
}

export interface ParsedFile {
  readonly file: string;
  readonly exprs: readonly TopLevelExpr[];
  /** Every doc block in the file, also free-form ones that document no definition. */
  readonly docs: readonly DocBlock[];
}

type Token =
  | { kind: 'punct'; value: '{' | '}' | '[' | ']' | ':' | ','; line: number }
  | { kind: 'string'; value: string; line: number }
  | { kind: 'bool'; value: boolean; line: number }
  | { kind: 'doc'; value: DocBlock; line: number }
  | { kind: 'eof'; line: number };

class Lexer {
  private pos = 0;
  private line = 1;

  constructor(
    private readonly src: string,
    private readonly file: string,
  ) {}

  private fail(detail: string, line = this.line): never {
    throw new QapiSyntaxError(this.file, line, detail);
  }

  /** The next token; comments are skipped unless a doc block starts at the beginning of a line. */
  next(allowDoc: boolean): Token {
    for (;;) {
      const ch = this.src[this.pos];
      if (ch === undefined) return { kind: 'eof', line: this.line };
      if (ch === '\n') {
        this.line += 1;
        this.pos += 1;
        continue;
      }
      if (ch === ' ' || ch === '\t' || ch === '\r') {
        this.pos += 1;
        continue;
      }
      if (ch === '#') {
        const end = this.lineEnd();
        const text = this.src.slice(this.pos, end);
        if (allowDoc && text === '##' && this.atLineStart()) return this.docBlock();
        this.pos = end;
        continue;
      }
      const line = this.line;
      if (ch === '{' || ch === '}' || ch === '[' || ch === ']' || ch === ':' || ch === ',') {
        this.pos += 1;
        return { kind: 'punct', value: ch, line };
      }
      if (ch === "'") return { kind: 'string', value: this.string(), line };
      if (this.src.startsWith('true', this.pos) && !/[\w-]/.test(this.src[this.pos + 4] ?? '')) {
        this.pos += 4;
        return { kind: 'bool', value: true, line };
      }
      if (this.src.startsWith('false', this.pos) && !/[\w-]/.test(this.src[this.pos + 5] ?? '')) {
        this.pos += 5;
        return { kind: 'bool', value: false, line };
      }
      const word = /^[^\s{}[\]:,']+/.exec(this.src.slice(this.pos, this.pos + 40))?.[0] ?? ch;
      this.fail(`unexpected '${word}' (QAPI allows strings in single quotes, true, false, {}, [], ':' and ',')`);
    }
  }

  private lineEnd(): number {
    const end = this.src.indexOf('\n', this.pos);
    return end === -1 ? this.src.length : end;
  }

  private atLineStart(): boolean {
    const start = this.src.lastIndexOf('\n', this.pos - 1) + 1;
    return this.src.slice(start, this.pos).trim() === '';
  }

  private string(): string {
    const startLine = this.line;
    this.pos += 1;
    let out = '';
    for (;;) {
      const ch = this.src[this.pos];
      if (ch === undefined || ch === '\n') this.fail("missing closing ' of a string", startLine);
      this.pos += 1;
      if (ch === "'") return out;
      if (ch === '\\') {
        const escaped = this.src[this.pos];
        if (escaped !== '\\') this.fail(`unknown escape \\${escaped ?? ''} in a string (only \\\\ is allowed)`);
        this.pos += 1;
        out += '\\';
        continue;
      }
      const code = ch.charCodeAt(0);
      if (code < 0x20 || code > 0x7e) {
        this.fail(`character U+${code.toString(16).padStart(4, '0')} in a string (only printable ASCII is allowed)`);
      }
      out += ch;
    }
  }

  private docBlock(): Token {
    const line = this.line;
    this.pos = this.lineEnd();
    const lines: string[] = [];
    for (;;) {
      if (this.pos >= this.src.length) this.fail("doc comment block is not closed by a line of '##'", line);
      this.pos += 1; // the newline
      this.line += 1;
      const end = this.lineEnd();
      const text = this.src.slice(this.pos, end).replace(/\s+$/, '');
      const trimmed = text.trimStart();
      this.pos = end;
      // QEMU's lexer skips whitespace between comments, so blank lines inside a block are allowed.
      if (trimmed === '') continue;
      if (trimmed === '##') break;
      if (!trimmed.startsWith('#')) {
        this.fail(`doc comment block is not closed by a line of '##' (found a line without '#')`);
      }
      if (trimmed.startsWith('##')) this.fail("unexpected '##' inside a doc comment block");
      if (trimmed.length > 1 && trimmed[1] !== ' ') this.fail("missing space after '#' in a doc comment block");
      lines.push(trimmed.slice(2));
    }
    const first = lines[0];
    const match = first === undefined ? null : /^@([^:\s]+):\s*$/.exec(first);
    return { kind: 'doc', value: { line, symbol: match?.[1], lines }, line };
  }
}

class Parser {
  private readonly lexer: Lexer;
  private tok: Token;

  constructor(
    src: string,
    private readonly file: string,
  ) {
    this.lexer = new Lexer(src, file);
    this.tok = this.lexer.next(true);
  }

  private fail(detail: string, line = this.tok.line): never {
    throw new QapiSyntaxError(this.file, line, detail);
  }

  private advance(allowDoc = false): void {
    this.tok = this.lexer.next(allowDoc);
  }

  private describe(tok: Token): string {
    switch (tok.kind) {
      case 'eof':
        return 'end of file';
      case 'punct':
        return `'${tok.value}'`;
      case 'string':
        return `string '${tok.value}'`;
      case 'bool':
        return String(tok.value);
      case 'doc':
        return 'doc comment';
    }
  }

  parseFile(): ParsedFile {
    const exprs: TopLevelExpr[] = [];
    const docs: DocBlock[] = [];
    let pendingDoc: DocBlock | undefined;
    for (;;) {
      const tok = this.tok;
      if (tok.kind === 'eof') break;
      if (tok.kind === 'doc') {
        docs.push(tok.value);
        pendingDoc = tok.value;
        this.advance(true);
        continue;
      }
      if (tok.kind !== 'punct' || tok.value !== '{') {
        this.fail(`expected '{' starting a top-level expression, found ${this.describe(tok)}`);
      }
      const expr = this.dict(true);
      exprs.push({ expr, line: expr.line, doc: pendingDoc?.symbol === undefined ? undefined : pendingDoc });
      pendingDoc = undefined;
    }
    return { file: this.file, exprs, docs };
  }

  private value(): QValue {
    const tok = this.tok;
    if (tok.kind === 'punct' && tok.value === '{') return this.dict(false);
    if (tok.kind === 'punct' && tok.value === '[') return this.list();
    if (tok.kind === 'string' || tok.kind === 'bool') {
      this.advance();
      return tok.value;
    }
    this.fail(`expected a value, found ${this.describe(tok)}`);
  }

  /** Parses `{ ... }`; at top level the token after '}' may be a doc block. */
  private dict(topLevel: boolean): QDict {
    const dict = new QDict(this.tok.line);
    this.advance();
    if (this.tok.kind === 'punct' && this.tok.value === '}') {
      this.advance(topLevel);
      return dict;
    }
    for (;;) {
      const key = this.tok;
      if (key.kind !== 'string') this.fail(`expected a string as object key, found ${this.describe(key)}`);
      if (dict.entries.has(key.value)) this.fail(`duplicate key '${key.value}'`, key.line);
      this.advance();
      if (this.tok.kind !== 'punct' || this.tok.value !== ':') {
        this.fail(`expected ':' after key '${key.value}', found ${this.describe(this.tok)}`);
      }
      this.advance();
      dict.keyLines.set(key.value, key.line);
      dict.entries.set(key.value, this.value());
      const sep = this.tok;
      if (sep.kind === 'punct' && sep.value === '}') {
        this.advance(topLevel);
        return dict;
      }
      if (sep.kind !== 'punct' || sep.value !== ',') {
        this.fail(`expected ',' or '}' in an object, found ${this.describe(sep)}`);
      }
      this.advance();
    }
  }

  private list(): QList {
    const list = new QList(this.tok.line);
    this.advance();
    if (this.tok.kind === 'punct' && this.tok.value === ']') {
      this.advance();
      return list;
    }
    for (;;) {
      list.items.push(this.value());
      const sep = this.tok;
      if (sep.kind === 'punct' && sep.value === ']') {
        this.advance();
        return list;
      }
      if (sep.kind !== 'punct' || sep.value !== ',') {
        this.fail(`expected ',' or ']' in an array, found ${this.describe(sep)}`);
      }
      this.advance();
    }
  }
}

/** Parses the text of one schema file. `file` is used in error messages only. */
export function parseQapiText(text: string, file: string): ParsedFile {
  return new Parser(text, file).parseFile();
}
