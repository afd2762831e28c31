import fc from 'fast-check';

import { ImageToolsArgumentError, QemuIo, QemuIoError, parseSize, qemuImg, qemuIo } from '../src/index.js';
import { childProcesses, createScratch, processesWith, rejection } from './scratch.js';
import type { Scratch } from './scratch.js';

let scratch: Scratch;
let image: string;

beforeAll(async () => {
  scratch = createScratch();
  image = scratch.path('io.qcow2');
  await qemuImg.create(image, { format: 'qcow2', size: '64M' });
});

afterAll(() => {
  scratch.remove();
  expect(childProcesses()).toEqual([]);
});


const qcow2 = { format: 'qcow2' } as const;

describe('qemuIo helpers', () => {
  it('writes a pattern and verifies it, with sizes in QEMU units', async () => {
    await qemuIo.write(image, { pattern: 0x41, offset: '1M', length: '32736k' }, qcow2);
    await qemuIo.verify(image, { pattern: 0x41, offset: 1024 * 1024, length: 32736 * 1024 }, qcow2);
    const read = await qemuIo.read(image, { offset: '1M', length: '32k' }, qcow2);
    expect(read.stdout).toMatch(/^read 32768\/32768 bytes at offset 1048576$/m);
    expect(read.argv).toEqual(['-f', 'qcow2', '-c', 'read 1M 32k', image]);
  });

  it('throws QemuIoError when the pattern does not match', async () => {
    await qemuIo.write(image, { pattern: 0x10, offset: 0, length: 512 }, qcow2);
    const error = (await rejection(qemuIo.verify(image, { pattern: 0x11, offset: 0, length: 512 }, qcow2))) as QemuIoError;
    expect(QemuIoError.isInstance(error)).toBe(true);
    expect(error.failures).toEqual(['Pattern verification failed at offset 0, 512 bytes']);
    expect(error.argv).toContain('read -P 0x11 0 512');
  });

  it('runs several commands in one process, in order', async () => {
    const result = await qemuIo.run(
      image,
      ['write -P 0xa5 64k 64k', 'read -P 0xa5 64k 64k', 'discard 64k 64k', 'read -P 0 64k 64k', 'flush'],
      qcow2,
    );
    expect(result.stdout).toMatch(/wrote 65536\/65536 bytes at offset 65536/);
    expect(result.stdout).toMatch(/discard 65536\/65536 bytes at offset 65536/);
    expect(result.stdout.match(/^read 65536\/65536 bytes at offset 65536$/gm)).toHaveLength(2);
  });

  it('discards and flushes through the typed helpers', async () => {
    await qemuIo.write(image, { pattern: 0x99, offset: '4M', length: '64k' }, qcow2);
    await qemuIo.discard(image, { offset: '4M', length: '64k' }, qcow2);
    await qemuIo.verify(image, { pattern: 0, offset: '4M', length: '64k' }, qcow2);
    const flushed = await qemuIo.flush(image, qcow2);
    expect(flushed.argv).toEqual(['-f', 'qcow2', '-c', 'flush', image]);
  });

  it('writes zeroes', async () => {
    await qemuIo.write(image, { pattern: 0xee, offset: '8M', length: '64k' }, qcow2);
    await qemuIo.write(image, { zero: true, offset: '8M', length: '64k' }, qcow2);
    await qemuIo.verify(image, { pattern: 0, offset: '8M', length: '64k' }, qcow2);
  });

  it('works through --image-opts and read-only', async () => {
    const opts = { imageOpts: { driver: 'qcow2', 'file.driver': 'file', 'file.filename': image } };
    await qemuIo.verify(opts, { pattern: 0x41, offset: '1M', length: '4k' }, { readOnly: true });
    const error = (await rejection(qemuIo.write(opts, { offset: 0, length: 512 }, { readOnly: true }))) as QemuIoError;
    expect(QemuIoError.isInstance(error)).toBe(true);
  });

  it('takes an option string with imageOpts: true', async () => {
    const result = await qemuIo.run(`driver=qcow2,file.filename=${image}`, ['read -P 0x41 1M 4k'], { imageOpts: true });
    expect(result.argv).toEqual(['--image-opts', '-c', 'read -P 0x41 1M 4k', `driver=qcow2,file.filename=${image}`]);
    const error = await rejection(qemuIo.run('-x', ['flush'], { imageOpts: true }));
    expect(ImageToolsArgumentError.isInstance(error)).toBe(true);
  });
});

describe('qemuIo failures', () => {
  it('a write past the end of the image throws', async () => {
    const error = (await rejection(qemuIo.write(image, { pattern: 1, offset: '64M', length: 512 }, qcow2))) as QemuIoError;
    expect(QemuIoError.isInstance(error)).toBe(true);
    expect(error.failures.join('\n')).toMatch(/write failed/);
    expect(error.exitCode).not.toBeNull();
  });

  it('a missing file throws', async () => {
    const missing = scratch.path('missing.qcow2');
    const error = (await rejection(qemuIo.read(missing, { offset: 0, length: 512 }, qcow2))) as QemuIoError;
    expect(QemuIoError.isInstance(error)).toBe(true);
    expect(error.stderr).toMatch(/Could not open/);
    expect(error.exitCode).toBe(1);
  });

  it("treats a file name starting with '-' as a file", async () => {
    const error = (await rejection(qemuIo.read('-r', { offset: 0, length: 512 }))) as QemuIoError;
    expect(QemuIoError.isInstance(error)).toBe(true);
    expect(error.argv[error.argv.length - 1]).toBe('./-r');
    expect(error.stderr).toMatch(/Could not open '\.\/-r'/);
  });

  it('a bad format throws', async () => {
    const error = (await rejection(qemuIo.read(image, { offset: 0, length: 512 }, { format: 'vmdk' }))) as QemuIoError;
    expect(QemuIoError.isInstance(error)).toBe(true);
    expect(error.message).toMatch(/vmdk|open/i);
  });

  it('a failed command among successful ones still throws', async () => {
    const error = (await rejection(
      qemuIo.run(image, ['write -P 0x01 0 512', 'read -P 0x02 0 512', 'read 0 512'], qcow2),
    )) as QemuIoError;
    expect(QemuIoError.isInstance(error)).toBe(true);
    expect(error.failures).toEqual(['Pattern verification failed at offset 0, 512 bytes']);
  });

  it('an unknown command throws', async () => {
    const error = (await rejection(qemuIo.run(image, ['frobnicate 0 512'], qcow2))) as QemuIoError;
    expect(error.failures).toEqual(['command "frobnicate" not found']);
  });

  // Lines the HMP path of @qmpkit/machine relies on, as the real qemu-io prints them.
  it.each([
    ['write -z -P 0x01 0 512', 'Only one of -z, -P, and -s can be specified at the same time'],
    ['write -u 0 512', '-u requires -z to be specified'],
    ['write -b 1 512', "1 is not a sector-aligned value for 'offset'"],
    ['aio_write 0 1E', "Argument '1E' exceeds maximum size 2147483136"],
    ['read -v -P 0 -s 0 -l 513 0 512', 'pattern verification range exceeds end of read data'],
    ['read 0 512 -P', "read: option requires an argument -- 'P'"],
  ])('%j is reported with the line qemu-io prints', async (command, line) => {
    const error = (await rejection(qemuIo.run(image, [command], qcow2))) as QemuIoError;
    expect(QemuIoError.isInstance(error)).toBe(true);
    expect(error.failures).toEqual([line]);
  });

  it('validates arguments before spawning anything', async () => {
    const tool = new QemuIo({ binary: '/nonexistent/qemu-io' });
    const calls: Array<() => Promise<unknown>> = [
      () => tool.write(image, { pattern: 256, offset: 0, length: 512 }),
      () => tool.write(image, { pattern: 0x41, offset: -1, length: 512 }),
      () => tool.read(image, { offset: 0, length: 1.5 }),
      () => tool.verify(image, { offset: 0, length: 512 } as never),
      () => tool.discard('', { offset: 0, length: 512 }),
      () => tool.run(image, []),
      () => tool.run(image, ['read 0 512\nwrite 0 512']),
      () => tool.run(image, ['read 0 512'], { cache: 'turbo' as 'none' }),
      () => tool.run(image, ['read 0 512'], { format: '--help' }),
      () => tool.run(image, ['read 0 512'], { timeout: Number.NaN }),
    ];
    for (const call of calls) {
      const error = await rejection(call());
      expect(ImageToolsArgumentError.isInstance(error)).toBe(true);
    }
  });

  it('a timeout kills qemu-io', async () => {
    const marker = 'sleep 987654';
    const started = Date.now();
    const error = (await rejection(
      qemuIo.run({ imageOpts: { driver: 'null-co', size: '1M' } }, [marker], { timeout: 200 }),
    )) as QemuIoError;
    expect(error.reason).toBe('timeout');
    expect(error.signal).toBe('SIGKILL');
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(processesWith(marker)).toEqual([]);
  });

  it('an abort kills qemu-io', async () => {
    const marker = 'sleep 987655';
    const controller = new AbortController();
    const pending = rejection(qemuIo.run({ imageOpts: { driver: 'null-co', size: '1M' } }, [marker], { signal: controller.signal }));
    setTimeout(() => controller.abort(), 100);
    const error = (await pending) as QemuIoError;
    expect(QemuIoError.isInstance(error)).toBe(true);
    expect(error.reason).toBe('abort');
    expect(processesWith(marker)).toEqual([]);
  });
});

describe('size parsing agrees with qemu-io', () => {
  // qemu-io parses lengths with the same function as qemu-img; reading from the null-co driver
  // echoes the parsed byte count, so one process checks many generated size strings.
  const sizeText = fc
    .tuple(
      fc.integer({ min: 0, max: 2047 }),
      fc.option(fc.stringMatching(/^[0-9]{0,14}$/), { nil: undefined }),
      fc.constantFrom('', 'b', 'B', 'k', 'K'),
      fc.boolean(),
    )
    .filter(([, fraction, suffix]) => fraction === undefined || !/[1-9]/.test(fraction) || /[kK]/.test(suffix))
    .map(([whole, fraction, suffix, hex]) =>
      hex && fraction === undefined && suffix === '' ? `0x${whole.toString(16)}` : `${whole}${fraction === undefined ? '' : `.${fraction}`}${suffix}`,
    );

  it('for generated size strings', async () => {
    const samples = fc.sample(sizeText, { numRuns: 200, seed: 4242 });
    const result = await qemuIo.run(
      { imageOpts: { driver: 'null-co', size: '4M' } },
      samples.map((s) => `read 0 ${s}`),
    );
    const echoed = [...result.stdout.matchAll(/^read (\d+)\/\d+ bytes at offset 0$/gm)].map((m) => Number(m[1]));
    expect(echoed).toEqual(samples.map((s) => parseSize(s)));
  });
});
