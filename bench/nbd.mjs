#!/usr/bin/env node
// Read throughput of @qmpkit/nbd against qemu-img convert, on the same export in the same run.
// Run by `npm run bench:nbd` (which builds the packages first).
//
// A 1 GiB qcow2 image, every cluster allocated with data, is exported by qemu-storage-daemon
// on a unix socket. Each round copies the whole export into a new raw file twice:
//   client:    NbdClient.readRanges over the export (its defaults: 1 MiB blocks, 8 in flight,
//              recycled buffers), each block written at its offset
//   qemu-img:  qemu-img convert -f raw -O raw 'nbd+unix:///disk?socket=...' (its defaults)
// and, to show the reading side alone, into a sink that discards the data:
//   client:    the same reads, data dropped
//   qemu-img:  qemu-img convert -n ... --target-image-opts driver=null-co (a discarding target)
// plus, for comparison only, the client into the sink with 2 MiB blocks (qemu-img's request size).
// The order of client and qemu-img alternates each round. Medians over the rounds are printed; the ratio is
// qemu-img's time / the client's time (above 1: the client is faster). The machine may be
// shared: the figures are noisy, which is why the baseline is measured in the same run.
// The last line is: nbd read/qemu-img-convert ratio=X (file) ratio=Y (sink)
import { execFile } from 'node:child_process';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const load = (pkg) => import(pathToFileURL(join(root, 'packages', pkg, 'dist', 'index.js')).href);
const { NbdClient } = await load('nbd');
const { qemuImg, qemuIo } = await load('image-tools');
const { QemuStorageDaemon } = await load('machine');

const GiB = 1024 ** 3;
const SIZE = GiB;
const ROUNDS = Number(process.env.QMPKIT_BENCH_ROUNDS ?? 5);
// The client's defaults (1 MiB blocks, 8 in flight) with recycled buffers, as a backup sink that
// writes each block before taking the next would use it.
const READ_OPTIONS = { reuseBuffers: true };

const log = (line) => process.stdout.write(`${line}\n`);
const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};
const mbps = (ms) => (SIZE / (1024 * 1024) / (ms / 1000)).toFixed(0);

async function clientCopy(socket, output, extra = {}) {
  const started = performance.now();
  const nbd = await NbdClient.connect(socket, { exportName: 'disk' });
  const file = output ? await open(output, 'w') : undefined;
  let bytes = 0;
  try {
    for await (const block of nbd.readRanges([{ offset: 0, length: nbd.export.size }], { ...READ_OPTIONS, ...extra })) {
      if (file) await file.write(block.data, 0, block.length, block.offset);
      bytes += block.length;
    }
  } finally {
    await file?.close();
    await nbd.disconnect();
  }
  if (bytes !== SIZE) throw new Error(`client read ${bytes} bytes, expected ${SIZE}`);
  return performance.now() - started;
}

async function qemuImgCopy(socket, output) {
  const uri = `nbd+unix:///disk?socket=${socket}`;
  const argv = output
    ? ['convert', '-f', 'raw', '-O', 'raw', uri, output]
    : ['convert', '-n', '-f', 'raw', '--target-image-opts', uri, `driver=null-co,size=${SIZE}`];
  const started = performance.now();
  await run(process.env.QEMU_IMG ?? 'qemu-img', argv, { maxBuffer: 1 << 20 });
  return performance.now() - started;
}

const dir = await mkdtemp(join(tmpdir(), 'qmpkit-nbd-bench-'));
let qsd;
let exitCode = 0;
try {
  const image = join(dir, 'disk.qcow2');
  await qemuImg.create(image, { format: 'qcow2', size: SIZE });
  await qemuIo.run(image, ['write -P 0x5a 0 1G'], { format: 'qcow2', timeout: 300_000 });
  const socket = join(dir, 'nbd.sock');
  qsd = await QemuStorageDaemon.launch({
    tmpDir: dir,
    blockdevs: [{ driver: 'qcow2', 'node-name': 'disk', file: { driver: 'file', filename: image } }],
    nbdServer: { addr: { type: 'unix', path: socket } },
    exports: [{ type: 'nbd', id: 'disk', 'node-name': 'disk', name: 'disk' }],
  }, { timeout: 30_000 });

  // One checked copy first: the figures mean nothing if the client reads wrong data.
  const check = join(dir, 'check.raw');
  await clientCopy(socket, check);
  const same = await qemuImg.compare(check, image, { formatA: 'raw', formatB: 'qcow2', forceShare: true, timeout: 300_000 });
  if (!same.identical) throw new Error(`the client's copy differs from the image: ${same.message}`);
  await rm(check);
  log(`verified:  the client's copy of the export equals the image (qemu-img compare)`);

  const times = { clientFile: [], qemuFile: [], clientSink: [], qemuSink: [], client2M: [] };
  for (let round = 0; round < ROUNDS; round++) {
    const output = join(dir, 'copy.raw');
    const steps = [
      ['clientFile', () => clientCopy(socket, output)],
      ['qemuFile', () => qemuImgCopy(socket, output)],
      ['clientSink', () => clientCopy(socket, undefined)],
      ['qemuSink', () => qemuImgCopy(socket, undefined)],
    ];
    // Same request size as qemu-img convert (2 MiB), for comparison only.
    steps.push(['client2M', () => clientCopy(socket, undefined, { blockSize: 2 * 1024 * 1024 })]);
    if (round % 2 === 1) [steps[0], steps[1], steps[2], steps[3]] = [steps[1], steps[0], steps[3], steps[2]];
    for (const [name, step] of steps) {
      await rm(output, { force: true });
      const ms = await step();
      if (name.endsWith('File') && (await stat(output)).size !== SIZE) throw new Error(`${name} wrote a file of the wrong size`);
      times[name].push(ms);
    }
    await rm(output, { force: true });
    log(`round ${round + 1}: file client ${times.clientFile.at(-1).toFixed(0)} ms, qemu-img ${times.qemuFile.at(-1).toFixed(0)} ms; ` +
      `sink client ${times.clientSink.at(-1).toFixed(0)} ms, qemu-img ${times.qemuSink.at(-1).toFixed(0)} ms, client with 2 MiB blocks ${times.client2M.at(-1).toFixed(0)} ms`);
  }
  const m = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)]));
  log(`medians over ${ROUNDS} rounds (1 GiB; noisy on a shared machine):`);
  log(`  into a file: client ${m.clientFile.toFixed(0)} ms (${mbps(m.clientFile)} MiB/s), qemu-img convert ${m.qemuFile.toFixed(0)} ms (${mbps(m.qemuFile)} MiB/s)`);
  log(`  into a sink: client ${m.clientSink.toFixed(0)} ms (${mbps(m.clientSink)} MiB/s), qemu-img convert ${m.qemuSink.toFixed(0)} ms (${mbps(m.qemuSink)} MiB/s)`);
  log(`  client with 2 MiB blocks (qemu-img's request size) into a sink: ${m.client2M.toFixed(0)} ms (${mbps(m.client2M)} MiB/s), ratio ${(m.qemuSink / m.client2M).toFixed(3)}`);
  log(`nbd read/qemu-img-convert ratio=${(m.qemuFile / m.clientFile).toFixed(3)} (file) ratio=${(m.qemuSink / m.clientSink).toFixed(3)} (sink)`);
} catch (error) {
  process.stderr.write(`bench:nbd failed: ${error instanceof Error ? error.stack : String(error)}\n`);
  exitCode = 1;
} finally {
  await qsd?.shutdown({ timeout: 30_000 }).catch(() => qsd.kill());
  await rm(dir, { recursive: true, force: true });
}
process.exit(exitCode);
