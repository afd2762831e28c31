import { closeSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';

import {
  ImageToolsArgumentError,
  QemuImg,
  QemuImgError,
  qemuImg,
  qemuIo,
} from '../src/index.js';
import type { ImageInfo } from '../src/index.js';
import { childProcesses, createScratch, processesWith, rejection } from './scratch.js';
import type { Scratch } from './scratch.js';

let scratch: Scratch;

beforeAll(() => {
  scratch = createScratch();
});

afterAll(() => {
  scratch.remove();
  expect(childProcesses()).toEqual([]);
});


function qcow2Bitmaps(info: ImageInfo): Array<{ name: string; granularity: number; flags: string[] }> {
  const specific = info['format-specific'];
  if (specific?.type !== 'qcow2') throw new Error(`not a qcow2 image: ${JSON.stringify(specific)}`);
  return specific.data.bitmaps ?? [];
}

/** Edit the 16-bit refcount of one cluster of a fresh qcow2 image, to make check find problems. */
function setRefcount(file: string, cluster: number, refcount: number, fileClusters?: number): void {
  const fd = openSync(file, 'r+');
  try {
    const header = Buffer.alloc(56);
    readSync(fd, header, 0, header.length, 0);
    const refcountTable = Number(header.readBigUInt64BE(48));
    const entry = Buffer.alloc(8);
    readSync(fd, entry, 0, 8, refcountTable);
    const refcountBlock = Number(entry.readBigUInt64BE(0));
    if (fileClusters !== undefined) ftruncateSync(fd, fileClusters * 65536);
    const value = Buffer.alloc(2);
    value.writeUInt16BE(refcount);
    writeSync(fd, value, 0, 2, refcountBlock + 2 * cluster);
  } finally {
    closeSync(fd);
  }
}

describe('qemuImg.create and info', () => {
  it('creates a qcow2 image with a size in units and -o options', async () => {
    const file = scratch.path('create.qcow2');
    await qemuImg.create(file, { format: 'qcow2', size: '64M', options: { cluster_size: '128k', lazy_refcounts: true } });
    const info = await qemuImg.info(file);
    expect(info.format).toBe('qcow2');
    expect(info['virtual-size']).toBe(64 * 1024 * 1024);
    expect(info['cluster-size']).toBe(128 * 1024);
    const specific = info['format-specific'];
    expect(specific?.type === 'qcow2' && specific.data['lazy-refcounts']).toBe(true);
  });

  it('creates an overlay on a backing file and lists the chain', async () => {
    const base = scratch.path('chain-base.qcow2');
    const top = scratch.path('chain-top.qcow2');
    await qemuImg.create(base, { format: 'qcow2', size: 1024 * 1024 });
    await qemuImg.create(top, { format: 'qcow2', backingFile: base, backingFormat: 'qcow2' });
    const info = await qemuImg.info(top, { format: 'qcow2' });
    expect(info['backing-filename']).toBe(base);
    expect(info['backing-filename-format']).toBe('qcow2');
    expect(info['virtual-size']).toBe(1024 * 1024);
    const chain = await qemuImg.info(top, { backingChain: true });
    expect(chain.map((i) => i.filename)).toEqual([top, base]);
  });

  it('creates with -u when the backing file does not exist yet', async () => {
    const top = scratch.path('unsafe-top.qcow2');
    await qemuImg.create(top, {
      format: 'qcow2',
      size: '1M',
      backingFile: scratch.path('not-yet.qcow2'),
      backingFormat: 'qcow2',
      unsafe: true,
    });
    expect((await qemuImg.info(top, { format: 'qcow2' }))['backing-filename']).toBe(scratch.path('not-yet.qcow2'));
  });

  it('reads an image through --image-opts', async () => {
    const file = scratch.path('opts.qcow2');
    await qemuImg.create(file, { format: 'qcow2', size: '2M' });
    const info = await qemuImg.info({ imageOpts: { driver: 'qcow2', 'file.driver': 'file', 'file.filename': file } });
    expect(info['virtual-size']).toBe(2 * 1024 * 1024);
  });

  it('throws QemuImgError with argv, exit code and stderr for a missing file', async () => {
    const missing = scratch.path('missing.qcow2');
    const error = await rejection(qemuImg.info(missing));
    expect(QemuImgError.isInstance(error)).toBe(true);
    const e = error as QemuImgError;
    expect(e.exitCode).toBe(1);
    expect(e.reason).toBe('exit');
    expect(e.argv).toEqual(['info', '--output=json', missing]);
    expect(e.stderr).toMatch(/Could not open/);
    expect(e.message).toMatch(/No such file or directory/);
  });

  it("treats a file name starting with '-' as a file, never as an option", async () => {
    const error = (await rejection(qemuImg.info('--help'))) as QemuImgError;
    expect(QemuImgError.isInstance(error)).toBe(true);
    expect(error.argv).toEqual(['info', '--output=json', './--help']);
    expect(error.stderr).toMatch(/Could not open '\.\/--help'/);
  });

  it('throws for a bad format: unknown, or not the image format', async () => {
    const file = scratch.path('badfmt.qcow2');
    await qemuImg.create(file, { format: 'qcow2', size: '1M' });
    const unknown = (await rejection(qemuImg.info(file, { format: 'no-such-format' }))) as QemuImgError;
    expect(QemuImgError.isInstance(unknown)).toBe(true);
    expect(unknown.stderr).toMatch(/Unknown driver|Unknown file format|no-such-format/i);
    const wrong = (await rejection(qemuImg.info(file, { format: 'vmdk' }))) as QemuImgError;
    expect(QemuImgError.isInstance(wrong)).toBe(true);
    expect(wrong.exitCode).not.toBe(0);
    const create = (await rejection(qemuImg.create(scratch.path('x.img'), { format: 'nonsense', size: 1 }))) as QemuImgError;
    expect(QemuImgError.isInstance(create)).toBe(true);
    expect(create.stderr).toMatch(/nonsense/);
  });
});

describe('qemuImg.check', () => {
  it('reports a good image as clean', async () => {
    const file = scratch.path('check-good.qcow2');
    await qemuImg.create(file, { format: 'qcow2', size: '1M' });
    await qemuIo.write(file, { pattern: 0x11, offset: 0, length: '64k' }, { format: 'qcow2' });
    const result = await qemuImg.check(file, { format: 'qcow2' });
    expect(result.status).toBe('clean');
    expect(result.exitCode).toBe(0);
    expect(result.report['check-errors']).toBe(0);
    expect(result.report['allocated-clusters']).toBe(1);
    expect(result.report.corruptions).toBeUndefined();
  });

  it('returns leaks (exit 3) as a result, and repairs them with repair: leaks', async () => {
    const file = scratch.path('check-leak.qcow2');
    await qemuImg.create(file, { format: 'qcow2', size: '1M' });
    setRefcount(file, 4, 1, 5);
    const result = await qemuImg.check(file);
    expect(result.status).toBe('leaked');
    expect(result.exitCode).toBe(3);
    expect(result.report.leaks).toBe(1);
    const repaired = await qemuImg.check(file, { repair: 'leaks' });
    expect(repaired.report['leaks-fixed']).toBe(1);
    expect((await qemuImg.check(file)).status).toBe('clean');
  });

  it('returns corruption (exit 2) as a result', async () => {
    const file = scratch.path('check-corrupt.qcow2');
    await qemuImg.create(file, { format: 'qcow2', size: '1M' });
    setRefcount(file, 1, 0);
    const result = await qemuImg.check(file);
    expect(result.status).toBe('corrupted');
    expect(result.exitCode).toBe(2);
    expect(result.report.corruptions).toBe(1);
  });

  it('throws for a format without checks and for a missing file', async () => {
    const raw = scratch.path('check.raw');
    await qemuImg.create(raw, { format: 'raw', size: '1M' });
    const unsupported = (await rejection(qemuImg.check(raw, { format: 'raw' }))) as QemuImgError;
    expect(QemuImgError.isInstance(unsupported)).toBe(true);
    expect(unsupported.exitCode).toBe(63);
    expect(unsupported.message).toMatch(/does not support checks/);
    const missing = (await rejection(qemuImg.check(scratch.path('nothing.qcow2')))) as QemuImgError;
    expect(missing.exitCode).toBe(1);
  });
});

describe('qemuImg.compare', () => {
  it('gives three distinct outcomes: identical, different, error', async () => {
    const a = scratch.path('cmp-a.qcow2');
    const b = scratch.path('cmp-b.qcow2');
    await qemuImg.create(a, { format: 'qcow2', size: '1M' });
    await qemuImg.create(b, { format: 'qcow2', size: '1M' });

    expect(await qemuImg.compare(a, b)).toEqual({ identical: true, message: 'Images are identical.' });

    await qemuIo.write(b, { pattern: 0x5a, offset: '64k', length: 512 }, { format: 'qcow2' });
    const different = await qemuImg.compare(a, b, { formatA: 'qcow2', formatB: 'qcow2' });
    expect(different.identical).toBe(false);
    expect(different.message).toBe('Content mismatch at offset 65536!');

    const error = (await rejection(qemuImg.compare(a, scratch.path('cmp-missing.qcow2')))) as QemuImgError;
    expect(QemuImgError.isInstance(error)).toBe(true);
    expect(error.exitCode).toBe(2);
    expect(error.stderr).toMatch(/Could not open/);
  });

  it('strict mode tells images of different size apart', async () => {
    const a = scratch.path('strict-a.qcow2');
    const b = scratch.path('strict-b.qcow2');
    await qemuImg.create(a, { format: 'qcow2', size: '1M' });
    await qemuImg.create(b, { format: 'qcow2', size: '2M' });
    expect((await qemuImg.compare(a, b)).identical).toBe(true);
    const strict = await qemuImg.compare(a, b, { strict: true });
    expect(strict.identical).toBe(false);
    expect(strict.message).toMatch(/size mismatch/i);
  });
});

describe('qemuImg.rebase, commit, convert, resize, map', () => {
  it('rebase -u only rewrites the backing file name; info shows it', async () => {
    const base = scratch.path('rb-base.qcow2');
    const top = scratch.path('rb-top.qcow2');
    await qemuImg.create(base, { format: 'qcow2', size: '1M' });
    await qemuImg.create(top, { format: 'qcow2', size: '1M' });
    await qemuImg.rebase(top, { backingFile: base, backingFormat: 'qcow2', unsafe: true, format: 'qcow2' });
    const info = await qemuImg.info(top);
    expect(info['backing-filename']).toBe(base);
    expect(info['backing-filename-format']).toBe('qcow2');
    await qemuImg.rebase(top, { backingFile: null, unsafe: true });
    expect((await qemuImg.info(top))['backing-filename']).toBeUndefined();
  });

  it('safe rebase keeps the guest-visible content when the backing file changes', async () => {
    const base = scratch.path('srb-base.qcow2');
    const top = scratch.path('srb-top.qcow2');
    await qemuImg.create(base, { format: 'qcow2', size: '1M' });
    await qemuIo.write(base, { pattern: 0x42, offset: 0, length: '64k' }, { format: 'qcow2' });
    await qemuImg.create(top, { format: 'qcow2', backingFile: base, backingFormat: 'qcow2' });
    await qemuImg.rebase(top, { backingFile: null });
    expect((await qemuImg.info(top))['backing-filename']).toBeUndefined();
    await qemuIo.verify(top, { pattern: 0x42, offset: 0, length: '64k' }, { format: 'qcow2' });
  });

  it('commit writes the overlay into its backing file', async () => {
    const base = scratch.path('commit-base.qcow2');
    const top = scratch.path('commit-top.qcow2');
    await qemuImg.create(base, { format: 'qcow2', size: '1M' });
    await qemuImg.create(top, { format: 'qcow2', backingFile: base, backingFormat: 'qcow2' });
    await qemuIo.write(top, { pattern: 0x77, offset: '128k', length: '32k' }, { format: 'qcow2' });
    await qemuImg.commit(top, { format: 'qcow2' });
    await qemuIo.verify(base, { pattern: 0x77, offset: '128k', length: '32k' }, { format: 'qcow2' });
  });

  it('convert copies the content into a new format', async () => {
    const source = scratch.path('conv-src.qcow2');
    const target = scratch.path('conv-dst.raw');
    await qemuImg.create(source, { format: 'qcow2', size: '1M' });
    await qemuIo.write(source, { pattern: 0x33, offset: '512k', length: '4k' }, { format: 'qcow2' });
    await qemuImg.convert(source, target, { format: 'qcow2', outputFormat: 'raw' });
    expect((await qemuImg.info(target, { format: 'raw' })).format).toBe('raw');
    expect(await qemuImg.compare(source, target, { formatA: 'qcow2', formatB: 'raw' })).toEqual({
      identical: true,
      message: 'Images are identical.',
    });
  });

  it('resize grows, refuses to shrink without shrink: true, then shrinks', async () => {
    const file = scratch.path('resize.qcow2');
    await qemuImg.create(file, { format: 'qcow2', size: '1M' });
    await qemuImg.resize(file, '+1M', { format: 'qcow2' });
    expect((await qemuImg.info(file))['virtual-size']).toBe(2 * 1024 * 1024);
    await qemuImg.resize(file, '4M');
    expect((await qemuImg.info(file))['virtual-size']).toBe(4 * 1024 * 1024);
    const refused = (await rejection(qemuImg.resize(file, '-1M'))) as QemuImgError;
    expect(QemuImgError.isInstance(refused)).toBe(true);
    expect(refused.stderr).toMatch(/shrink/);
    await qemuImg.resize(file, '-1M', { shrink: true });
    expect((await qemuImg.info(file))['virtual-size']).toBe(3 * 1024 * 1024);
  });

  it('map shows which extents hold data and at what depth', async () => {
    const base = scratch.path('map-base.qcow2');
    const top = scratch.path('map-top.qcow2');
    await qemuImg.create(base, { format: 'qcow2', size: '1M' });
    await qemuIo.write(base, { pattern: 1, offset: 0, length: '64k' }, { format: 'qcow2' });
    await qemuImg.create(top, { format: 'qcow2', backingFile: base, backingFormat: 'qcow2' });
    await qemuIo.write(top, { pattern: 2, offset: '128k', length: '64k' }, { format: 'qcow2' });
    const map = await qemuImg.map(top);
    const dataExtents = map.filter((e) => e.data).map((e) => ({ start: e.start, length: e.length, depth: e.depth }));
    expect(dataExtents).toEqual([
      { start: 0, length: 65536, depth: 1 },
      { start: 131072, length: 65536, depth: 0 },
    ]);
    expect(map.reduce((sum, e) => sum + e.length, 0)).toBe(1024 * 1024);
    const window = await qemuImg.map(top, { start: '128k', maxLength: '64k' });
    expect(window).toHaveLength(1);
    expect(window[0]).toMatchObject({ start: 131072, length: 65536, data: true, depth: 0 });
  });
});

describe('qemuImg.bitmap', () => {
  it('adds, disables, enables, clears, merges and removes persistent bitmaps', async () => {
    const file = scratch.path('bitmaps.qcow2');
    await qemuImg.create(file, { format: 'qcow2', size: '1M' });
    await qemuImg.bitmap(file, 'bitmap0', { action: 'add', granularity: '128k' });
    await qemuImg.bitmap(file, 'bitmap1', [{ action: 'add', disabled: true }], { format: 'qcow2' });
    let bitmaps = qcow2Bitmaps(await qemuImg.info(file));
    expect(bitmaps).toEqual([
      { name: 'bitmap0', granularity: 131072, flags: ['auto'] },
      { name: 'bitmap1', granularity: 65536, flags: [] },
    ]);

    await qemuImg.bitmap(file, 'bitmap0', [{ action: 'disable' }, { action: 'clear' }]);
    await qemuImg.bitmap(file, 'bitmap1', [{ action: 'enable' }, { action: 'merge', source: 'bitmap0' }]);
    bitmaps = qcow2Bitmaps(await qemuImg.info(file));
    expect(bitmaps.map((b) => [b.name, b.flags])).toEqual([
      ['bitmap0', []],
      ['bitmap1', ['auto']],
    ]);

    await qemuImg.bitmap(file, 'bitmap0', { action: 'remove' });
    expect(qcow2Bitmaps(await qemuImg.info(file)).map((b) => b.name)).toEqual(['bitmap1']);
  });

  it('merges a bitmap from another image', async () => {
    const source = scratch.path('bm-src.qcow2');
    const target = scratch.path('bm-dst.qcow2');
    await qemuImg.create(source, { format: 'qcow2', size: '1M' });
    await qemuImg.create(target, { format: 'qcow2', size: '1M' });
    await qemuImg.bitmap(source, 'src', { action: 'add' });
    await qemuImg.bitmap(target, 'dst', [
      { action: 'add' },
      { action: 'merge', source: 'src', sourceFile: source, sourceFormat: 'qcow2' },
    ]);
    expect(qcow2Bitmaps(await qemuImg.info(target)).map((b) => b.name)).toEqual(['dst']);
  });

  it('throws QemuImgError for a bitmap that does not exist', async () => {
    const file = scratch.path('bm-missing.qcow2');
    await qemuImg.create(file, { format: 'qcow2', size: '1M' });
    const error = (await rejection(qemuImg.bitmap(file, 'nope', { action: 'remove' }))) as QemuImgError;
    expect(QemuImgError.isInstance(error)).toBe(true);
    expect(error.stderr).toMatch(/nope/);
  });
});

describe('qemuImg.version and binary selection', () => {
  it('reports the installed version', async () => {
    const version = await qemuImg.version();
    expect(version.major).toBeGreaterThanOrEqual(7);
    expect(version.text).toMatch(/^qemu-img version /);
    expect(version.version).toBe(`${version.major}.${version.minor}.${version.micro}`);
  });

  it('uses $QEMU_IMG when no binary option is given, and reports a binary that cannot start', async () => {
    const saved = process.env['QEMU_IMG'];
    process.env['QEMU_IMG'] = scratch.path('no-such-qemu-img');
    try {
      const tool = new QemuImg();
      expect(tool.binary).toBe(scratch.path('no-such-qemu-img'));
      const error = (await rejection(tool.version())) as QemuImgError;
      expect(QemuImgError.isInstance(error)).toBe(true);
      expect(error.reason).toBe('spawn');
      expect(error.exitCode).toBeNull();
      expect(error.message).toMatch(/ENOENT/);
    } finally {
      if (saved === undefined) delete process.env['QEMU_IMG'];
      else process.env['QEMU_IMG'] = saved;
    }
    expect(new QemuImg({ binary: '/usr/bin/qemu-img' }).binary).toBe('/usr/bin/qemu-img');
  });
});

describe('argument validation happens before spawning', () => {
  // A binary that does not exist: had anything been spawned, the error would be a QemuImgError.
  const tool = new QemuImg({ binary: '/nonexistent/qemu-img' });

  it.each<[string, () => Promise<unknown>]>([
    ['empty file name', () => tool.info('')],
    ['size that is not a size', () => tool.create('a.qcow2', { format: 'qcow2', size: '12 parsecs' })],
    ['negative size', () => tool.create('a.qcow2', { format: 'qcow2', size: -1 })],
    ['missing size', () => tool.create('a.qcow2', { format: 'qcow2' })],
    ['format that looks like a flag', () => tool.create('a.qcow2', { format: '-u', size: 1 })],
    ['option key with a comma', () => tool.create('a.qcow2', { format: 'qcow2', size: 1, options: { 'a,b': 1 } })],
    ['backing format without backing file', () => tool.create('a.qcow2', { format: 'qcow2', size: 1, backingFormat: 'raw' })],
    ['bad repair mode', () => tool.check('a.qcow2', { repair: 'everything' as 'all' })],
    ['bad cache mode', () => tool.commit('a.qcow2', { cache: 'fast' as 'none' })],
    ['rebase without backingFile', () => tool.rebase('a.qcow2', {} as { backingFile: string })],
    ['empty source list', () => tool.convert([], 'b.raw')],
    ['bad relative size', () => tool.resize('a.qcow2', '+lots')],
    ['bitmap name starting with -', () => tool.bitmap('a.qcow2', '-g', { action: 'add' })],
    ['unknown bitmap action', () => tool.bitmap('a.qcow2', 'b', { action: 'frob' } as never)],
    ['no bitmap action', () => tool.bitmap('a.qcow2', 'b', [])],
    ['negative timeout', () => tool.info('a.qcow2', { timeout: -5 })],
    ['non-signal', () => tool.info('a.qcow2', { signal: {} as AbortSignal })],
    ['options that are not an object', () => tool.info('a.qcow2', null as unknown as undefined)],
  ])('%s', async (_name, call) => {
    const error = await rejection(call());
    expect(ImageToolsArgumentError.isInstance(error)).toBe(true);
    expect(QemuImgError.isInstance(error)).toBe(false);
  });
});

describe('timeouts and aborts kill qemu-img', () => {
  // qemu-img bench on the null-co driver does no real I/O and runs for as long as it is asked to.
  const benchArgs = (marker: string): string[] => [
    'bench',
    '-c',
    marker,
    '--image-opts',
    'driver=null-co,size=1G',
  ];

  it('timeout', async () => {
    const marker = '987654321';
    const started = Date.now();
    const error = (await rejection(qemuImg.run(benchArgs(marker), { timeout: 300 }))) as QemuImgError;
    expect(QemuImgError.isInstance(error)).toBe(true);
    expect(error.reason).toBe('timeout');
    expect(error.signal).toBe('SIGKILL');
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(processesWith(marker)).toEqual([]);
  });

  it('abort signal', async () => {
    const marker = '987654322';
    const controller = new AbortController();
    const pending = rejection(qemuImg.run(benchArgs(marker), { signal: controller.signal }));
    setTimeout(() => controller.abort(new Error('test is done')), 200);
    const error = (await pending) as QemuImgError;
    expect(error.reason).toBe('abort');
    expect((error.cause as Error).message).toBe('test is done');
    expect(processesWith(marker)).toEqual([]);
  });

  it('an already aborted signal spawns nothing', async () => {
    const error = (await rejection(qemuImg.version({ signal: AbortSignal.abort() }))) as QemuImgError;
    expect(error.reason).toBe('abort');
    expect(error.exitCode).toBeNull();
  });
});
