// compareImages must give qemu-img compare's verdict and first line for every image it reads
// itself, and hand everything else to qemu-img. Each case is checked against the real
// qemu-img on the same files.
import fc from 'fast-check';
import { spawn } from 'node:child_process';
import { copyFileSync, writeFileSync } from 'node:fs';
import { compareImages, createQcow2Image, ImageToolsAbortError, qemuImg, qemuIo, QemuImgError } from '../src/index.js';
import { createScratch, rejection, type Scratch } from './scratch.js';

let scratch: Scratch;
beforeAll(() => {
  scratch = createScratch();
});
afterAll(() => {
  scratch.remove();
});

const Q = { formatA: 'qcow2', formatB: 'qcow2' } as const;

/** Both engines on the same pair: the in-process one must agree with qemu-img exactly. */
async function expectAgreement(a: string, b: string, formats: { formatA?: string; formatB?: string } = Q): Promise<boolean> {
  const ours = await compareImages(a, b, formats);
  const theirs = await qemuImg.compare(a, b, formats);
  expect(ours.engine).toBe('in-process');
  expect({ identical: ours.identical, message: ours.message }).toEqual(theirs);
  return ours.identical;
}

async function image(name: string, writes: string[] = [], options: { size?: string; backingFile?: string; clusterSize?: string } = {}): Promise<string> {
  const file = scratch.path(name);
  await qemuImg.create(file, {
    format: 'qcow2',
    size: options.size ?? '4M',
    ...(options.backingFile === undefined ? {} : { backingFile: options.backingFile, backingFormat: 'qcow2' }),
    ...(options.clusterSize === undefined ? {} : { options: { cluster_size: options.clusterSize } }),
  });
  if (writes.length > 0) await qemuIo.run(file, writes, { format: 'qcow2' });
  return file;
}

test('identical, different data, and the offset of the first different sector', async () => {
  const a = await image('a.qcow2', ['write -P 0x11 0 64k', 'write -P 0x22 1M 4k']);
  const b = await image('b.qcow2', ['write -P 0x11 0 64k', 'write -P 0x22 1M 4k']);
  expect(await expectAgreement(a, b)).toBe(true);
  await qemuIo.run(b, ['write -P 0x23 1028k 1'], { format: 'qcow2' });
  expect(await expectAgreement(a, b)).toBe(false);
  expect((await compareImages(a, b, Q)).message).toBe('Content mismatch at offset 1052672!');
});

test('zero clusters, discarded clusters and unallocated space all read as zeros', async () => {
  const a = await image('z1.qcow2', ['write -P 0x00 0 64k', 'write -z 128k 64k', 'write -P 0x5 2M 64k', 'discard 2M 64k']);
  const b = await image('z2.qcow2');
  expect(await expectAgreement(a, b)).toBe(true);
  await qemuIo.run(a, ['write -P 0x1 3M 512'], { format: 'qcow2' });
  expect(await expectAgreement(a, b)).toBe(false);
});

test('backing chains: an overlay shows its backing file where it has no data of its own', async () => {
  const base = await image('base.qcow2', ['write -P 0x41 0 512', 'write -P 0xd5 1M 32k']);
  const top = await image('top.qcow2', ['write -P 0xab 0 512'], { backingFile: 'base.qcow2' });
  const flat = await image('flat.qcow2', ['write -P 0xab 0 512', 'write -P 0xd5 1M 32k']);
  expect(await expectAgreement(top, flat)).toBe(true);
  // A zero write in the overlay hides the backing file's data.
  await qemuIo.run(top, ['write -z 1M 64k'], { format: 'qcow2' });
  expect(await expectAgreement(top, flat)).toBe(false);
  await qemuIo.run(flat, ['write -z 1M 64k'], { format: 'qcow2' });
  expect(await expectAgreement(top, flat)).toBe(true);
});

test('different cluster sizes in one comparison (128k and 512-byte clusters against 64k)', async () => {
  const writes = ['write -P 0x64 1984k 64k', 'write -P 0x7 3M 1536'];
  const big = await image('c128.qcow2', writes, { clusterSize: '128k' });
  const small = await image('c512.qcow2', writes, { clusterSize: '512' });
  const plain = await image('c64.qcow2', writes);
  expect(await expectAgreement(big, plain)).toBe(true);
  expect(await expectAgreement(small, plain)).toBe(true);
  await qemuIo.run(small, ['write -P 0x8 3M 512'], { format: 'qcow2' });
  expect(await expectAgreement(big, small)).toBe(false);
});

test('images of different sizes: equal when the extra part reads as zeros', async () => {
  const short = await image('short.qcow2', ['write -P 0x3 0 4k'], { size: '2M' });
  const long = await image('long.qcow2', ['write -P 0x3 0 4k'], { size: '4M' });
  expect(await expectAgreement(short, long)).toBe(true);
  expect((await compareImages(short, long, Q)).message).toBe('Warning: Image size mismatch!');
  await qemuIo.run(long, ['write -P 0x4 3M 512'], { format: 'qcow2' });
  expect(await expectAgreement(long, short)).toBe(false);
});

test('raw images, and a qcow2 image recognised without a format', async () => {
  const q = await image('r.qcow2', ['write -P 0x9 64k 4k']);
  const raw = scratch.path('r.raw');
  const bytes = Buffer.alloc(4 * 1024 * 1024);
  bytes.fill(9, 64 * 1024, 68 * 1024);
  writeFileSync(raw, bytes);
  expect(await expectAgreement(q, raw, { formatA: 'qcow2', formatB: 'raw' })).toBe(true);
  expect((await compareImages(q, q)).engine).toBe('in-process');
  bytes[4 * 1024 * 1024 - 1] = 1;
  writeFileSync(raw, bytes);
  expect(await expectAgreement(q, raw, { formatA: 'qcow2', formatB: 'raw' })).toBe(false);
});

test('the in-process writer and QEMU block jobs layouts: an image from createQcow2Image', async () => {
  const made = scratch.path('made.qcow2');
  await createQcow2Image(made, { size: '4M', backingFile: 'a.qcow2', backingFormat: 'qcow2' });
  const a = scratch.path('a.qcow2');
  expect(await expectAgreement(made, a)).toBe(true);
});

test('what it does not read goes to qemu-img: compressed clusters, an unprobed raw file', async () => {
  const source = await image('src.qcow2', ['write -P 0x33 0 256k']);
  const compressed = scratch.path('compressed.qcow2');
  await qemuImg.convert(source, compressed, { format: 'qcow2', outputFormat: 'qcow2', compress: true });
  const viaTool = await compareImages(source, compressed, Q);
  expect(viaTool).toMatchObject({ identical: true, engine: 'qemu-img', message: 'Images are identical.' });
  expect(viaTool.fallbackReason).toMatch(/compressed clusters/);
  const raw = scratch.path('probe.raw');
  writeFileSync(raw, Buffer.alloc(1024 * 1024));
  const probed = await compareImages(raw, raw);
  expect(probed.engine).toBe('qemu-img');
  expect(probed.fallbackReason).toMatch(/probed/);
});

test('a missing image is qemu-img\'s error, with its words', async () => {
  const a = await image('present.qcow2');
  const error = await rejection(compareImages(a, scratch.path('missing.qcow2'), Q));
  expect(QemuImgError.isInstance(error)).toBe(true);
  expect((error as Error).message).toMatch(/missing\.qcow2/);
});

/** A qemu-io process holding `file` open (read-write unless `readOnly`) until `close()`. */
async function holdOpen(file: string, readOnly: boolean): Promise<{ close(): Promise<void> }> {
  const child = spawn('qemu-io', ['-f', 'qcow2', ...(readOnly ? ['-r'] : []), file], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  let out = '';
  // The image is open (and locked) once qemu-io has answered its first command.
  await new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      if (out.includes('read 512/512 bytes')) resolve();
    });
    child.stdin.write('read 0 512\n');
  });
  return {
    close: async () => {
      child.stdin.end('quit\n');
      await exited;
    },
  };
}

test('an image another process holds open for writing is refused as qemu-img refuses it, a read-only user is not', async () => {
  const a = await image('held.qcow2', ['write -P 0x11 0 64k']);
  const b = await image('free.qcow2', ['write -P 0x11 0 64k']);
  const writer = await holdOpen(a, false);
  try {
    // Handed to qemu-img, which fails to get its lock: the same outcome as qemu-img compare.
    const error = await rejection(compareImages(b, a, Q));
    expect(QemuImgError.isInstance(error)).toBe(true);
    expect((error as QemuImgError).exitCode).toBe(2);
    expect((error as QemuImgError).stderr).toMatch(/Failed to get shared "write" lock/);
  } finally {
    await writer.close();
  }
  const reader = await holdOpen(a, true);
  try {
    const result = await compareImages(a, b, Q);
    expect(result).toMatchObject({ identical: true, engine: 'in-process' });
  } finally {
    await reader.close();
  }
});

test('an aborted comparison rejects with ImageToolsAbortError', async () => {
  const a = await image('ab.qcow2', ['write -P 1 0 1M']);
  const controller = new AbortController();
  controller.abort(new Error('stop'));
  const error = await rejection(compareImages(a, a, { ...Q, signal: controller.signal }));
  expect(ImageToolsAbortError.isInstance(error)).toBe(true);
});

test('property: random writes to a backed overlay and to a flat image, compared both ways, agree with qemu-img', async () => {
  const base = await image('pbase.qcow2', ['write -P 0x41 0 512', 'write -P 0xd5 1M 32k', 'write -P 0xdc 3M 124k']);
  const write = fc.record({
    kind: fc.constantFrom('write', 'zero', 'discard'),
    pattern: fc.integer({ min: 0, max: 3 }),
    // Sector-aligned offsets and lengths around cluster boundaries.
    sector: fc.integer({ min: 0, max: 8191 - 256 }),
    sectors: fc.integer({ min: 1, max: 256 }),
  });
  let run = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(write, { maxLength: 6 }), fc.array(write, { maxLength: 6 }), async (top, flat) => {
      run++;
      const overlay = await image(`p${run}-top.qcow2`, [], { backingFile: 'pbase.qcow2' });
      const plain = scratch.path(`p${run}-flat.qcow2`);
      copyFileSync(base, plain);
      const commands = (ws: typeof top): string[] =>
        ws.map((w) => {
          const at = `${w.sector * 512} ${w.sectors * 512}`;
          return w.kind === 'write' ? `write -P ${w.pattern} ${at}` : w.kind === 'zero' ? `write -z ${at}` : `discard ${at}`;
        });
      // The same writes on both sides half of the time, so that equal images are common too.
      const flatCommands = run % 2 === 0 ? commands(top) : commands(flat);
      if (top.length > 0) await qemuIo.run(overlay, commands(top), { format: 'qcow2' });
      if (flatCommands.length > 0) await qemuIo.run(plain, flatCommands, { format: 'qcow2' });
      await expectAgreement(overlay, plain);
      await expectAgreement(plain, overlay);
    }),
    { numRuns: 25 },
  );
}, 120_000);
