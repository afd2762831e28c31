// Errors of the QAPI schema generator. Every error names the schema file and line it is about,
// so a broken or unexpected input points straight at the offending definition.

const QAPI_ERROR = Symbol.for('qmpkit.schema.QapiError');
const QAPI_SYNTAX_ERROR = Symbol.for('qmpkit.schema.QapiSyntaxError');
const QAPI_SCHEMA_ERROR = Symbol.for('qmpkit.schema.QapiSchemaError');

function hasBrand(value: unknown, brand: symbol): boolean {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[brand] === true;
}

/** Base class: a problem in a QAPI schema file at `file`:`line`. */
export class QapiError extends Error {
  readonly file: string;
  readonly line: number;
  /** The message without the `file:line:` prefix. */
  readonly detail: string;

  constructor(file: string, line: number, detail: string, options?: { cause?: unknown }) {
    super(`${file}:${line}: ${detail}`, options);
    this.name = 'QapiError';
    this.file = file;
    this.line = line;
    this.detail = detail;
    Object.defineProperty(this, QAPI_ERROR, { value: true });
  }

  static isInstance(value: unknown): value is QapiError {
    return hasBrand(value, QAPI_ERROR);
  }
}

/** The text is not well-formed QAPI: bad token, bad string, unbalanced brackets, bad doc block. */
export class QapiSyntaxError extends QapiError {
  constructor(file: string, line: number, detail: string, options?: { cause?: unknown }) {
    super(file, line, detail, options);
    this.name = 'QapiSyntaxError';
    Object.defineProperty(this, QAPI_SYNTAX_ERROR, { value: true });
  }

  static override isInstance(value: unknown): value is QapiSyntaxError {
    return hasBrand(value, QAPI_SYNTAX_ERROR);
  }
}

/** Well-formed text that breaks the schema rules: unknown key, missing key, unknown type, ... */
export class QapiSchemaError extends QapiError {
  constructor(file: string, line: number, detail: string, options?: { cause?: unknown }) {
    super(file, line, detail, options);
    this.name = 'QapiSchemaError';
    Object.defineProperty(this, QAPI_SCHEMA_ERROR, { value: true });
  }

  static override isInstance(value: unknown): value is QapiSchemaError {
    return hasBrand(value, QAPI_SCHEMA_ERROR);
  }
}
