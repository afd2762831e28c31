import { existsSync, readFileSync, writeFileSync } from 'node:fs';

import fc from 'fast-check';

import {
  ImageToolsAbortError,
  ImageToolsArgumentError,
  UnsupportedQcow2LayoutError,
  createQcow2Image,
  qemuImg,
  qemuIo,
} from '../src/index.js';
import type { ImageInfo, Qcow2ImageOptions } from '../src/index.js';
import { childProcesses, createScratch, rejection } from './scratch.js';
import type { Scratch } from './scratch.js';

// Every image createQcow2Image writes is held against the one qemu-img makes from the same
// options: same bytes, same `qemu-img info`, clean `qemu-img check`, identical contents.

let scratch: Scratch;
let base: string;
let serial = 0;

beforeAll(async () => {
  scratch = createScratch();
  base = scratch.path('base.qcow2');
  await qemuImg.create(base, { format: 'qcow2', size: '64M' });
  await qemuIo.run(base, ['write -P 0x41 1M 64k'], { format: 'qcow2' });
});

afterAll(() => {
  scratch.remove();
  expect(childProcesses()).toEqual([]);
});


/** The same image made by qemu-img. */
async function twin(file: string, options: Qcow2ImageOptions): Promise<void> {
  await qemuImg.create(file, {
    format: 'qcow2',
    size: typeof options.size === 'bigint' ? options.size.toString() : options.size,
    ...(options.clusterSize === undefined ? {} : { options: { cluster_size: options.clusterSize } }),
    ...(options.backingFile === undefined ? {} : { backingFile: options.backingFile, backingFormat: options.backingFormat ?? 'qcow2' }),
  });
}

/** The parts of `qemu-img info` that describe how an image was created. */
function shape(info: ImageInfo): Record<string, unknown> {
  const specific = info['format-specific'];
  return {
    format: info.format,
    virtualSize: info['virtual-size'],
    clusterSize: info['cluster-size'],
    backing: info['backing-filename'],
    backingFormat: info['backing-filename-format'],
    specific: specific?.type === 'qcow2' ? { ...specific.data } : specific,
  };
}

describe('createQcow2Image', () => {
  it.each<[string, Omit<Qcow2ImageOptions, 'backingFile'> & { backing?: 'qcow2' | 'raw' }]>([
    ['64 MiB, default clusters', { size: '64M' }],
    ['empty (0 bytes)', { size: 0 }],
    ['512 bytes', { size: 512 }],
    ['65 MiB over a qcow2 backing file', { size: 65 * 1024 * 1024, backing: 'qcow2' }],
    ['64 MiB, 128 KiB clusters', { size: '64M', clusterSize: '128k' }],
    ['64 MiB, 128 KiB clusters, backing file', { size: '64M', clusterSize: 131072, backing: 'qcow2' }],
    ['64 MiB, 512 B clusters (32-cluster L1), backing file', { size: '64M', clusterSize: 512, backing: 'qcow2' }],
    ['1 GiB, 1 KiB clusters', { size: '1G', clusterSize: '1k' }],
    ['100 MiB, 4 KiB clusters (no feature table)', { size: '100M', clusterSize: '4k' }],
    ['100 MiB, 8 KiB clusters (feature table)', { size: '100M', clusterSize: '8k', backing: 'raw' }],
    ['1 TiB, 2 MiB clusters', { size: '1T', clusterSize: '2M' }],
    ['3 TiB, default clusters, backing file', { size: 3n * 1024n ** 4n, backing: 'qcow2' }],
  ])('writes what qemu-img create writes: %s', async (_label, spec) => {
    const n = serial++;
    const { backing, ...rest } = spec;
    const options: Qcow2ImageOptions = {
      ...rest,
      ...(backing === undefined ? {} : { backingFile: `base.${backing}`, backingFormat: backing }),
    };
    if (backing === 'raw') writeFileSync(scratch.path('base.raw'), Buffer.alloc(0));
    const mine = scratch.path(`mine-${n}.qcow2`);
    const theirs = scratch.path(`theirs-${n}.qcow2`);
    await Promise.all([createQcow2Image(mine, options), twin(theirs, options)]);

    expect(readFileSync(mine).equals(readFileSync(theirs))).toBe(true);
    const [info, reference] = await Promise.all([qemuImg.info(mine), qemuImg.info(theirs)]);
    expect(shape(info)).toEqual(shape(reference));
    expect(info['format-specific']).toMatchObject({
      type: 'qcow2',
      data: { compat: '1.1', 'refcount-bits': 16, 'compression-type': 'zlib', 'lazy-refcounts': false, corrupt: false },
    });
    expect(info['backing-filename']).toBe(options.backingFile);
    expect((await qemuImg.check(mine)).status).toBe('clean');
    expect((await qemuImg.compare(mine, theirs, { formatA: 'qcow2', formatB: 'qcow2' })).identical).toBe(true);
  });

  it('makes a working overlay: reads through to the backing file, takes writes, stays clean', async () => {
    const top = scratch.path('overlay.qcow2');
    await createQcow2Image(top, { size: '64M', clusterSize: '128k', backingFile: 'base.qcow2', backingFormat: 'qcow2' });
    await qemuIo.run(top, ['read -P 0x41 1M 64k', 'write -P 0x42 2M 192k'], { format: 'qcow2' });
    expect((await qemuImg.check(top)).status).toBe('clean');
    expect((await qemuImg.compare(top, base)).identical).toBe(false);
  });

  it('agrees with qemu-img byte for byte over random sizes, cluster sizes and backing files', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.bigInt({ min: 0n, max: 1n << 31n }),
        fc.integer({ min: 9, max: 21 }),
        fc.boolean(),
        async (sectors, clusterBits, backed) => {
          const n = serial++;
          const options: Qcow2ImageOptions = {
            size: sectors * 512n,
            clusterSize: 2 ** clusterBits,
            ...(backed ? { backingFile: 'base.qcow2', backingFormat: 'qcow2' } : {}),
          };
          const mine = scratch.path(`prop-mine-${n}.qcow2`);
          const theirs = scratch.path(`prop-theirs-${n}.qcow2`);
          const refused = await twin(theirs, options).then(
            () => false,
            () => true, // too large for qcow2 with this cluster size
          );
          const error = await createQcow2Image(mine, options).then(
            () => undefined,
            (e: unknown) => e,
          );
          if (error !== undefined) {
            // What it leaves to qemu-img is only what needs another layout (or what qemu-img
            // refuses as well), and it writes nothing then.
            expect(UnsupportedQcow2LayoutError.isInstance(error)).toBe(true);
            expect(['refcount-block-overflow', 'l1-table-too-large']).toContain((error as UnsupportedQcow2LayoutError).reason);
            expect(existsSync(mine)).toBe(false);
            return;
          }
          expect(refused).toBe(false);
          expect(readFileSync(mine).equals(readFileSync(theirs))).toBe(true);
        },
      ),
      { numRuns: 25 },
    );
  });

  it.each<[string, Qcow2ImageOptions]>([
    ['a size that is not a multiple of 512', { size: 1000 }],
    ['a negative size', { size: -512 }],
    ['a cluster size that is not a power of two', { size: '1M', clusterSize: 1000 }],
    ['a cluster size under 512 bytes', { size: '1M', clusterSize: 256 }],
    ['a cluster size over 2 MiB', { size: '1M', clusterSize: '4M' }],
    ['a backing file without its format', { size: '1M', backingFile: 'base.qcow2' }],
    ['a backing format without a backing file', { size: '1M', backingFormat: 'qcow2' }],
  ])('refuses %s as qemu-img would, before writing', async (_label, options) => {
    const file = scratch.path(`bad-${serial++}.qcow2`);
    const error = await rejection(createQcow2Image(file, options));
    expect(ImageToolsArgumentError.isInstance(error)).toBe(true);
    expect(existsSync(file)).toBe(false);
  });

  it.each<[string, Qcow2ImageOptions, string]>([
    ['1 GiB with 512 B clusters', { size: '1G', clusterSize: 512 }, 'refcount-block-overflow'],
    ['a 1024-byte backing file name', { size: '1M', backingFile: 'x'.repeat(1024), backingFormat: 'qcow2' }, 'backing-file-name-too-long'],
    ['a 16-byte backing format', { size: '1M', backingFile: 'b', backingFormat: 'f'.repeat(16) }, 'backing-format-too-long'],
    ['a name that overflows a 512 B header cluster', { size: '1M', clusterSize: 512, backingFile: 'n'.repeat(400), backingFormat: 'qcow2' }, 'header-overflow'],
    ['more L1 entries than QEMU allows', { size: '4E', clusterSize: '64k' }, 'l1-table-too-large'],
  ])('leaves %s to qemu-img with a named error', async (_label, options, reason) => {
    const file = scratch.path(`unsupported-${serial++}.qcow2`);
    const error = await rejection(createQcow2Image(file, options));
    expect(UnsupportedQcow2LayoutError.isInstance(error)).toBe(true);
    expect(error).toMatchObject({ reason, file });
    expect(existsSync(file)).toBe(false);
  });

  it('falls back cleanly: qemu-img creates what the writer refuses', async () => {
    const file = scratch.path('fallback.qcow2');
    const options = { size: '1G', clusterSize: 512 } as const;
    const error = await rejection(createQcow2Image(file, options));
    expect(UnsupportedQcow2LayoutError.isInstance(error)).toBe(true);
    await twin(file, options);
    expect((await qemuImg.check(file)).status).toBe('clean');
  });

  it('creates the file exclusively unless told to overwrite', async () => {
    const file = scratch.path('exists.qcow2');
    writeFileSync(file, 'precious');
    await expect(createQcow2Image(file, { size: '1M' })).rejects.toMatchObject({ code: 'EEXIST' });
    expect(readFileSync(file, 'utf8')).toBe('precious');
    await createQcow2Image(file, { size: '1M', overwrite: true });
    expect((await qemuImg.info(file))['virtual-size']).toBe(1024 * 1024);
  });

  it('does nothing once its signal has fired', async () => {
    const file = scratch.path('aborted.qcow2');
    const controller = new AbortController();
    controller.abort(new Error('stop'));
    const error = await rejection(createQcow2Image(file, { size: '1M' }, { signal: controller.signal }));
    expect(ImageToolsAbortError.isInstance(error)).toBe(true);
    expect(error).toMatchObject({ reason: 'abort', operation: 'createQcow2Image' });
    expect(existsSync(file)).toBe(false);
  });
});
