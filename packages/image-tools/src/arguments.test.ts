import {
  checkOptionsObject,
  fileArgument,
  imageArguments,
  optionString,
  patternArgument,
  sizeArgument,
} from './arguments.js';
import { ImageToolsArgumentError } from './errors.js';

describe('fileArgument', () => {
  it('keeps ordinary names and absolute paths', () => {
    expect(fileArgument('disk.qcow2')).toBe('disk.qcow2');
    expect(fileArgument('/tmp/-x.qcow2')).toBe('/tmp/-x.qcow2');
  });

  it("makes names starting with '-' explicitly relative so getopt does not read them as options", () => {
    expect(fileArgument('-f')).toBe('./-f');
    expect(fileArgument('--help')).toBe('./--help');
  });

  it.each(['', undefined, 42, 'a\0b'])('rejects %j', (value) => {
    expect(() => fileArgument(value)).toThrow(ImageToolsArgumentError);
  });
});

describe('optionString', () => {
  it('renders values and doubles commas, which is QEMU escaping', () => {
    expect(optionString({ cluster_size: '128k', lazy_refcounts: true, refcount_bits: 16 }, 'options')).toBe(
      'cluster_size=128k,lazy_refcounts=on,refcount_bits=16',
    );
    expect(optionString({ 'file.filename': '/tmp/a,b.qcow2', driver: 'qcow2' }, 'imageOpts')).toBe(
      'file.filename=/tmp/a,,b.qcow2,driver=qcow2',
    );
  });

  it('skips undefined values', () => {
    expect(optionString({ a: 'x', b: undefined }, 'options')).toBe('a=x');
  });

  it.each([
    [{ 'a=b': 'x' }],
    [{ 'a,b': 'x' }],
    [{ '-a': 'x' }],
    [{ a: Number.NaN }],
    [{ a: { nested: 1 } }],
    [{}],
    [['a']],
    ['cluster_size=64k'],
  ])('rejects %j', (value) => {
    expect(() => optionString(value, 'options')).toThrow(ImageToolsArgumentError);
  });
});

describe('imageArguments', () => {
  it('uses -f and the file name', () => {
    expect(imageArguments('a.qcow2', 'qcow2')).toEqual({ flags: ['-f', 'qcow2'], positional: 'a.qcow2' });
  });

  it('uses --image-opts for an option map', () => {
    expect(imageArguments({ imageOpts: { driver: 'null-co', size: 1024 } }, undefined)).toEqual({
      flags: ['--image-opts'],
      positional: 'driver=null-co,size=1024',
    });
  });

  it('refuses a format together with image options, and formats that look like flags', () => {
    expect(() => imageArguments({ imageOpts: { driver: 'raw' } }, 'raw')).toThrow(ImageToolsArgumentError);
    expect(() => imageArguments('a.img', '-U')).toThrow(ImageToolsArgumentError);
    expect(() => imageArguments('a.img', '')).toThrow(ImageToolsArgumentError);
  });
});

describe('sizeArgument / patternArgument', () => {
  it('renders sizes as exact decimal bytes', () => {
    expect(sizeArgument('32736k', 'size')).toBe('33521664');
    expect(sizeArgument(512, 'size')).toBe('512');
    expect(sizeArgument(5n, 'size')).toBe('5');
  });

  it.each([-1, 1.5, '1x', null, true])('rejects size %j', (value) => {
    expect(() => sizeArgument(value, 'size')).toThrow(ImageToolsArgumentError);
  });

  it.each([-1, 256, 1.5, '0x41', Number.NaN])('rejects pattern %j', (value) => {
    expect(() => patternArgument(value)).toThrow(ImageToolsArgumentError);
  });

  it('accepts every byte', () => {
    for (let byte = 0; byte < 256; byte++) expect(patternArgument(byte)).toBe(byte);
  });
});

describe('checkOptionsObject', () => {
  it('accepts an object or nothing, and names anything else', () => {
    expect(() => checkOptionsObject(undefined)).not.toThrow();
    expect(() => checkOptionsObject({ timeout: 1 })).not.toThrow();
    for (const bad of [null, 'qcow2', 5, ['a']]) {
      expect(() => checkOptionsObject(bad)).toThrow(ImageToolsArgumentError);
    }
  });
});
