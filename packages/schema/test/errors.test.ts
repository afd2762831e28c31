import { QapiError, QapiSchemaError, QapiSyntaxError } from '../generator/errors.js';

describe('generator errors', () => {
  it('carry file, line, detail and cause, with the location in the message', () => {
    const cause = new Error('inner');
    const error = new QapiSchemaError('qapi/job.json', 12, "unknown key 'x'", { cause });
    expect(error.message).toBe("qapi/job.json:12: unknown key 'x'");
    expect(error).toMatchObject({ file: 'qapi/job.json', line: 12, detail: "unknown key 'x'", name: 'QapiSchemaError', cause });
  });

  it('are recognised by brand, not by class identity', () => {
    const syntax = new QapiSyntaxError('a.json', 1, 'bad');
    expect(QapiError.isInstance(syntax)).toBe(true);
    expect(QapiSyntaxError.isInstance(syntax)).toBe(true);
    expect(QapiSchemaError.isInstance(syntax)).toBe(false);
    // A copy from a duplicate install has the same Symbol.for brands but another prototype.
    const foreign = Object.assign(Object.create(null) as object, {
      [Symbol.for('qmpkit.schema.QapiError')]: true,
      [Symbol.for('qmpkit.schema.QapiSchemaError')]: true,
    });
    expect(QapiSchemaError.isInstance(foreign)).toBe(true);
    expect(QapiError.isInstance(new Error('plain'))).toBe(false);
    expect(QapiError.isInstance(null)).toBe(false);
    expect(QapiError.isInstance('a.json:1: bad')).toBe(false);
  });
});
