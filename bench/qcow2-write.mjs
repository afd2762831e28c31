#!/usr/bin/env node
// Write throughput of @qmpkit/image-tools' Qcow2ImageWriter against qemu-img convert, making the
// same qcow2 image from the same raw file in the same run. Run by `npm run bench:qcow2-write`
// (which builds the package first).
//
// A 1 GiB raw file, every 4 KiB block non-zero and different (so neither side can skip zeros),
// is turned into a qcow2 image (64 KiB clusters) each round by:
//   writer:            the raw file read in 2 MiB chunks, each given to Qcow2ImageWriter.write
//                      (the calls a pull-mode backup makes for what it reads over NBD), then
//                      close(), which flushes the image to disk
//   qemu-img:          qemu-img convert -f raw -O qcow2 -t writeback (flushes at the end too)
//   qemu-img unsafe:   qemu-img convert -f raw -O qcow2 (its default cache mode for convert is
//                      'unsafe': nothing is flushed, so this one leaves dirty pages behind)
// and, to show the writer's own cost, the writer given the same 2 MiB buffer 512 times
// (no reading), and how long the writer's close() took (mostly flushing 1 GiB). The order
// alternates each round; medians are printed. A ratio is qemu-img's time / the writer's time
// (above 1: the writer is faster). The machine may be shared: the
// figures are noisy, which is why the baseline is measured in the same run.
// The last line is: qcow2 write/qemu-img-convert ratio=X (both flush) ratio=Y (qemu-img unsafe)
import { execFile } from 'node:child_process';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { Qcow2ImageWriter, qemuImg } = await import(pathToFileURL(join(root, 'packages', 'image-tools', 'dist', 'index.js')).href);

const MiB = 1024 * 1024;
const SIZE = 1024 * MiB;
const CHUNK = 2 * MiB;
const ROUNDS = Number(process.env.QMPKIT_BENCH_ROUNDS ?? 3);
const QEMU_IMG = process.env.QEMU_IMG ?? 'qemu-img';

const log = (line) => process.stdout.write(`${line}\n`);
const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};
const mbps = (ms) => (SIZE / MiB / (ms / 1000)).toFixed(0);

function fillChunk(buf, position) {
  for (let i = 0; i < buf.length; i += 4096) {
    buf.fill(((position + i) / 4096) % 251 + 1, i, i + 4096);
    buf.writeUInt32LE((position + i) / 4096, i);
  }
}

async function makeSource(file) {
  const handle = await open(file, 'wx');
  const buf = Buffer.alloc(CHUNK);
  try {
    for (let position = 0; position < SIZE; position += CHUNK) {
      fillChunk(buf, position);
      await handle.write(buf, 0, CHUNK, position);
    }
  } finally {
    await handle.close();
  }
}

/** When the last writerFromRaw call started close() (tables, refcounts, two fsyncs). */
let closeStarted = 0;

async function writerFromRaw(source, output) {
  const started = performance.now();
  const input = await open(source, 'r');
  const writer = await Qcow2ImageWriter.create(output, { size: SIZE, clusterSize: 64 * 1024 });
  const buf = Buffer.alloc(CHUNK);
  try {
    for (let position = 0; position < SIZE; position += CHUNK) {
      const { bytesRead } = await input.read(buf, 0, CHUNK, position);
      if (bytesRead !== CHUNK) throw new Error(`short read at ${position}`);
      await writer.write(position, buf);
    }
    closeStarted = performance.now();
    await writer.close();
  } catch (error) {
    await writer.abort();
    throw error;
  } finally {
    await input.close();
  }
  const ended = performance.now();
  lastClose = ended - closeStarted;
  return ended - started;
}
let lastClose = 0;

async function writerFromMemory(output) {
  const buf = Buffer.alloc(CHUNK);
  fillChunk(buf, 0);
  const started = performance.now();
  const writer = await Qcow2ImageWriter.create(output, { size: SIZE, clusterSize: 64 * 1024 });
  for (let position = 0; position < SIZE; position += CHUNK) await writer.write(position, buf);
  await writer.close();
  return performance.now() - started;
}

async function convert(source, output, extra) {
  const started = performance.now();
  await run(QEMU_IMG, ['convert', ...extra, '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=65536', source, output], { maxBuffer: 1 << 20 });
  return performance.now() - started;
}

const dir = await mkdtemp(join(tmpdir(), 'qmpkit-qcow2-write-bench-'));
let exitCode = 0;
try {
  const source = join(dir, 'source.raw');
  await makeSource(source);
  const output = join(dir, 'out.qcow2');

  // One checked image first: the figures mean nothing if the writer writes a wrong image.
  await writerFromRaw(source, output);
  const check = await qemuImg.check(output, { format: 'qcow2' });
  if (check.status !== 'clean') throw new Error(`qemu-img check of the writer's image: ${check.status}`);
  const same = await qemuImg.compare(output, source, { formatA: 'qcow2', formatB: 'raw', timeout: 300_000 });
  if (!same.identical) throw new Error(`the writer's image differs from the source: ${same.message}`);
  const reference = join(dir, 'reference.qcow2');
  await convert(source, reference, []);
  const sizes = [(await stat(output)).size, (await stat(reference)).size];
  await rm(reference);
  log(`verified:  the writer's image is clean and equals the source (qemu-img check, compare); file ${sizes[0]} bytes, qemu-img's ${sizes[1]}`);

  const times = { writer: [], writerClose: [], qemu: [], qemuUnsafe: [], writerMemory: [] };
  for (let round = 0; round < ROUNDS; round++) {
    const steps = [
      ['writer', () => writerFromRaw(source, output)],
      ['qemu', () => convert(source, output, ['-t', 'writeback'])],
      ['qemuUnsafe', () => convert(source, output, [])],
      ['writerMemory', () => writerFromMemory(output)],
    ];
    if (round % 2 === 1) [steps[0], steps[1]] = [steps[1], steps[0]];
    for (const [name, step] of steps) {
      await rm(output, { force: true });
      times[name].push(await step());
      if (name === 'writer') times.writerClose.push(lastClose);
    }
    await rm(output, { force: true });
    log(`round ${round + 1}: writer ${times.writer.at(-1).toFixed(0)} ms, qemu-img -t writeback ${times.qemu.at(-1).toFixed(0)} ms, ` +
      `qemu-img (unsafe) ${times.qemuUnsafe.at(-1).toFixed(0)} ms, writer from memory ${times.writerMemory.at(-1).toFixed(0)} ms`);
  }
  const m = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)]));
  log(`medians over ${ROUNDS} rounds (1 GiB raw -> qcow2, 64 KiB clusters, 2 MiB writes; noisy on a shared machine):`);
  log(`  writer (read raw, write, close with fsync): ${m.writer.toFixed(0)} ms (${mbps(m.writer)} MiB/s), of which close() ${m.writerClose.toFixed(0)} ms`);
  log(`  qemu-img convert -t writeback (flushes):    ${m.qemu.toFixed(0)} ms (${mbps(m.qemu)} MiB/s)`);
  log(`  qemu-img convert (default cache=unsafe):    ${m.qemuUnsafe.toFixed(0)} ms (${mbps(m.qemuUnsafe)} MiB/s)`);
  log(`  writer from memory (no reading):            ${m.writerMemory.toFixed(0)} ms (${mbps(m.writerMemory)} MiB/s)`);
  log(`qcow2 write/qemu-img-convert ratio=${(m.qemu / m.writer).toFixed(3)} (both flush) ratio=${(m.qemuUnsafe / m.writer).toFixed(3)} (qemu-img unsafe)`);
} catch (error) {
  process.stderr.write(`bench:qcow2-write failed: ${error instanceof Error ? error.stack : String(error)}\n`);
  exitCode = 1;
} finally {
  await rm(dir, { recursive: true, force: true });
}
process.exit(exitCode);
