#!/usr/bin/env node
// Incremental against full backup of a 1 GiB qcow2 drive, through @qmpkit/backup's BackupChain
// on a real QEMU. Run by `npm run bench:backup` (which builds the packages first).
//
//   full:         the whole drive, filled with data so the full backup has 1 GiB to copy
//   dirtied:      1% of the drive in scattered 64 KiB writes (aligned to the bitmap's 64 KiB
//                 granularity, distinct clusters, written through HMP qemu-io as a guest would)
//   incremental:  BackupChain.incremental()
//   pull:         a third chain of the same drive in pull mode (QEMU exports a point-in-time
//                 view over NBD, @qmpkit/nbd reads it, Qcow2ImageWriter writes the files): its
//                 full and its incremental after the same writes, bytes against the push chain's
//   pull rounds:  the read throughput of a pull-mode full against `qemu-img convert` reading an
//                 NBD export of the same drive in the same run (medians of 3 alternating rounds):
//                 a pull-mode full into qcow2 files (as the chain takes it: fleecing, NBD reads,
//                 qcow2 writes, digest) against `qemu-img convert` of the export into a qcow2
//                 file (and the same plus hashing that file, as the chain hashes every file it
//                 records), and `pullBackup()` into a sink that drops the data against
//                 `qemu-img convert` into QEMU's null driver (reads only, both)
//   compressed:   a second chain of the same drive with `compress: true` (the job's compress
//                 option), its full taken beside the plain one and its incremental after the
//                 same writes: file sizes and times against the plain chain's, same run
//
// "bytes" of a backup is what the job wrote (data allocated in the target); "job" is the job's
// len: what QEMU had to go through (for an incremental, the dirty bytes of the bitmap at the
// job's start). The data allocated in the incremental's target (qemu-img map, depth 0) is
// printed as a cross-check. Times are wall-clock times of the
// helper's calls; the overhead is the incremental's wall-clock time minus the QEMU job's own
// duration (its first to last JOB_STATUS_CHANGE, from QEMU's event timestamps).
// The digest line shows what hashing the full's file costs next to its QEMU job.
// The last lines are: compressed size/plain=A time/plain=B (full and incremental), pull
// full/convert and sink/convert throughput ratios (at least 0.9 is the target) and pull
// bytes/push, then incremental bytes/dirtied=X time/full=Y overhead_ms=Z
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

// The workspace packages are not installed at the root: load their built ESM entries.
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const load = (pkg) => import(pathToFileURL(join(root, 'packages', pkg, 'dist', 'index.js')).href);
const { BackupChain, digestFile, pullBackup } = await load('backup');
const { qemuImg, qemuIo } = await load('image-tools');
const { QemuMachine } = await load('machine');

const GiB = 1024 ** 3;
const CLUSTER = 64 * 1024;
const DRIVE_SIZE = GiB;
const DIRTY_FRACTION = 0.01;
const HMP_BATCH = 32;

const execFileAsync = promisify(execFile);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const PULL_ROUNDS = 3;

function log(line) {
  process.stdout.write(`${line}\n`);
}

/** Distinct 64 KiB clusters spread over the drive by a seeded generator (same set every run). */
function scatteredClusters(count, total, seed = 0x5eed) {
  let state = seed >>> 0;
  const next = () => {
    // xorshift32
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
  const chosen = new Set();
  while (chosen.size < count) chosen.add(next() % total);
  return [...chosen].sort((a, b) => a - b);
}

/** `size` bytes whose every 64 KiB cluster is half a repeated text line, half pseudo-random bytes. */
function mixedData(size, seed) {
  const line = Buffer.from('qmpkit bench: a line of text as a guest file system holds many of\n');
  const chunk = Buffer.alloc(size);
  let state = seed >>> 0;
  for (let off = 0; off < chunk.length; off += CLUSTER) {
    for (let i = 0; i < CLUSTER / 2; i++) chunk[off + i] = line[i % line.length];
    for (let i = CLUSTER / 2; i < CLUSTER; i += 4) {
      state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0;
      chunk.writeUInt32LE(state, off + i);
    }
  }
  return chunk;
}

/** Fills the drive with `mixedData`. */
async function fillDrive(drive) {
  const chunk = mixedData(64 * 1024 * 1024, 0x12345678);
  const raw = join(dir, 'chunk.raw');
  await writeFile(raw, chunk);
  // One 64 MiB chunk written 16 times over the 1 GiB drive (qemu-io reads it from a raw file through its backing).
  const commands = [];
  for (let at = 0; at < DRIVE_SIZE; at += chunk.length) commands.push(`write -s ${raw} ${at} ${chunk.length}`);
  await qemuIo.run(drive, commands, { format: 'qcow2', timeout: 600_000 });
  await rm(raw, { force: true });
}

const dir = await mkdtemp(join(tmpdir(), 'qmpkit-backup-bench-'));
const vm = new QemuMachine();
let exitCode = 0;
try {
  const drive = join(dir, 'drive0.qcow2');
  await qemuImg.create(drive, { format: 'qcow2', size: DRIVE_SIZE });
  // Data as a guest's disk holds it, so compression has something to do and something it
  // cannot: half of every 64 KiB is text-like (a repeating line), half random bytes.
  await fillDrive(drive);
  vm.addDrive({ file: drive, format: 'qcow2', id: 'drive0', nodeName: 'node0' });
  await vm.launch({ timeout: 30_000 });

  const chain = await BackupChain.open({ qmp: vm.qmp, dir: join(dir, 'backups'), node: 'drive0', granularity: CLUSTER });
  const packedChain = await BackupChain.open({ qmp: vm.qmp, dir: join(dir, 'compressed'), node: 'drive0', granularity: CLUSTER });
  const full = await chain.full({ timeout: 600_000 });
  const fullJob = full.results[0];
  log(`full:        ${full.backups[0].bytes} bytes written (job ${full.backups[0].jobLength}), file ${full.backups[0].fileSize} bytes, in ${full.elapsedMs.toFixed(1)} ms (QEMU job ${fullJob.qemuDurationMs.toFixed(1)} ms)`);
  const packedFull = await packedChain.full({ timeout: 600_000, compress: true });
  log(`full -c:     ${packedFull.backups[0].bytes} bytes written, file ${packedFull.backups[0].fileSize} bytes, in ${packedFull.elapsedMs.toFixed(1)} ms (QEMU job ${packedFull.results[0].qemuDurationMs.toFixed(1)} ms)`);
  const pullChain = await BackupChain.open({ qmp: vm.qmp, dir: join(dir, 'pull'), node: 'drive0', granularity: CLUSTER });
  const pullFull = await pullChain.full({ timeout: 600_000, mode: 'pull' });
  log(`full pull:   ${pullFull.backups[0].bytes} bytes written, file ${pullFull.backups[0].fileSize} bytes, in ${pullFull.elapsedMs.toFixed(1)} ms (${pullFull.fleecing?.[0]?.method ?? '?'} fleecing)`);
  // The full's wall-clock time includes hashing its file once (its digest goes into the
  // manifest); hashing it again here shows that share against the QEMU job of the same run.
  const digestStarted = performance.now();
  const digest = await digestFile(join(chain.dir, full.backups[0].file));
  const digestMs = performance.now() - digestStarted;
  if (digest.digest !== full.backups[0].digest) throw new Error('the full backup\'s digest differs from the one recorded');
  log(`digest:      ${digest.size} bytes of file hashed in ${digestMs.toFixed(1)} ms (${(digest.size / 1048576 / (digestMs / 1000)).toFixed(0)} MiB/s), digest/job=${(digestMs / fullJob.qemuDurationMs).toFixed(3)}`);

  const clusters = scatteredClusters(Math.round((DRIVE_SIZE / CLUSTER) * DIRTY_FRACTION), DRIVE_SIZE / CLUSTER);
  const dirtied = clusters.length * CLUSTER;
  // The guest's writes hold data of the same kind as the drive (QEMU's qemu-io reads it from a file).
  const dirtyData = join(dir, 'dirty.raw');
  await writeFile(dirtyData, mixedData(CLUSTER, 0x9e3779b9));
  for (let i = 0; i < clusters.length; i += HMP_BATCH) {
    // A batch of HMP commands in flight at once: the client pipelines them, QEMU runs them in order.
    const batch = clusters.slice(i, i + HMP_BATCH).map((c) =>
      vm.qmp.hmp(`qemu-io drive0 "write -s ${dirtyData} ${c * CLUSTER} ${CLUSTER}"`),
    );
    for (const output of await Promise.all(batch)) {
      if (/error|failed|cannot/i.test(output)) throw new Error(`qemu-io write failed: ${output.trim()}`);
    }
  }
  await vm.hmpQemuIo('drive0', 'flush');
  log(`dirtied:     ${dirtied} bytes in ${clusters.length} scattered 64 KiB writes (${((100 * dirtied) / DRIVE_SIZE).toFixed(2)}%)`);

  const inc = await chain.incremental({ timeout: 600_000 });
  const incJob = inc.results[0];
  const packedInc = await packedChain.incremental({ timeout: 600_000, compress: true });
  const pullInc = await pullChain.incremental({ timeout: 600_000, mode: 'pull' });
  const overhead = inc.elapsedMs - incJob.qemuDurationMs;
  const target = join(chain.dir, inc.backups[0].file);
  const allocated = (await qemuImg.map(target))
    .filter((e) => e.depth === 0 && e.data)
    .reduce((sum, e) => sum + e.length, 0);
  log(`incremental: ${inc.backups[0].bytes} bytes written (job ${inc.backups[0].jobLength}), file ${inc.backups[0].fileSize} bytes, in ${inc.elapsedMs.toFixed(1)} ms (QEMU job ${incJob.qemuDurationMs.toFixed(1)} ms), ${allocated} bytes of data allocated in the target (qemu-img map)`);
  if (allocated !== inc.backups[0].bytes) throw new Error(`bytes ${inc.backups[0].bytes} differs from qemu-img map's ${allocated}`);
  log(`inc -c:      ${packedInc.backups[0].bytes} bytes written, file ${packedInc.backups[0].fileSize} bytes, in ${packedInc.elapsedMs.toFixed(1)} ms (QEMU job ${packedInc.results[0].qemuDurationMs.toFixed(1)} ms)`);

  // The incremental must be right, or its figures mean nothing.
  const same = await qemuImg.compare(target, drive, { forceShare: true, timeout: 300_000 });
  if (!same.identical) throw new Error(`the incremental chain differs from the drive: ${same.message}`);
  const packedSame = await qemuImg.compare(join(packedChain.dir, packedInc.backups[0].file), drive, { forceShare: true, timeout: 300_000 });
  if (!packedSame.identical) throw new Error(`the compressed chain differs from the drive: ${packedSame.message}`);
  log(`inc pull:    ${pullInc.backups[0].bytes} bytes written, file ${pullInc.backups[0].fileSize} bytes, in ${pullInc.elapsedMs.toFixed(1)} ms`);
  const pullSame = await qemuImg.compare(join(pullChain.dir, pullInc.backups[0].file), drive, { forceShare: true, timeout: 300_000 });
  if (!pullSame.identical) throw new Error(`the pull-mode chain differs from the drive: ${pullSame.message}`);
  log('verified:    the three chains up to their incremental equal the drive (qemu-img compare)');

  // Read throughput: pull mode against qemu-img convert reading an NBD export of the same drive.
  const nbdSocket = join(dir, 'bench-nbd.sock');
  const exportUrl = `nbd+unix:///node0?socket=${nbdSocket}`;
  const convertInto = async (options, target) => {
    const started = performance.now();
    await execFileAsync(process.env.QEMU_IMG ?? 'qemu-img', ['convert', '-f', 'raw', ...options, exportUrl, target], { maxBuffer: 1 << 20 });
    return performance.now() - started;
  };
  const rounds = { pullFile: [], convertFile: [], convertHashed: [], pullSink: [], convertNull: [] };
  for (let round = 0; round < PULL_ROUNDS; round++) {
    const roundChain = await BackupChain.open({ qmp: vm.qmp, dir: join(dir, `pull-round-${round}`), node: 'drive0', granularity: CLUSTER });
    rounds.pullFile.push((await roundChain.full({ timeout: 600_000, mode: 'pull' })).elapsedMs);
    await rm(roundChain.dir, { recursive: true, force: true });
    let sunk = 0;
    const sink = new Writable({ objectMode: true, write(extent, _encoding, done) { sunk += extent.data?.length ?? 0; done(); } });
    const pulled = await pullBackup({ qmp: vm.qmp, node: 'drive0', sink, sync: 'full', timeout: 600_000 });
    if (sunk !== pulled.bytes) throw new Error(`the sink took ${sunk} bytes, pullBackup reported ${pulled.bytes}`);
    rounds.pullSink.push(pulled.elapsedMs);
    // The same drive exported read-only over NBD for qemu-img (the export is set up outside the timing).
    await vm.qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdSocket } } });
    await vm.qmp.execute('block-export-add', { type: 'nbd', id: 'bench', 'node-name': 'node0', writable: false });
    try {
      const out = join(dir, `convert-${round}.qcow2`);
      const convertMs = await convertInto(['-O', 'qcow2'], out);
      // A chain's file is worth keeping only with its digest (the pull full hashes its file
      // before recording it, as a push full does): the like-for-like baseline hashes too.
      const hashStarted = performance.now();
      await digestFile(out);
      const hashMs = performance.now() - hashStarted;
      rounds.convertFile.push(convertMs);
      rounds.convertHashed.push(convertMs + hashMs);
      await rm(out, { force: true });
      rounds.convertNull.push(await convertInto(['-n', '--target-image-opts'], `driver=null-co,size=${DRIVE_SIZE}`));
    } finally {
      await vm.qmp.execute('block-export-del', { id: 'bench' }).catch(() => undefined);
      await vm.qmp.execute('nbd-server-stop').catch(() => undefined);
    }
    log(`pull round ${round + 1}: pull full into files ${rounds.pullFile[round].toFixed(0)} ms, qemu-img convert into qcow2 ${rounds.convertFile[round].toFixed(0)} ms (${rounds.convertHashed[round].toFixed(0)} ms with the file's digest); pullBackup into a sink ${rounds.pullSink[round].toFixed(0)} ms, qemu-img convert into null-co ${rounds.convertNull[round].toFixed(0)} ms`);
  }
  const m = Object.fromEntries(Object.entries(rounds).map(([k, v]) => [k, median(v)]));
  const ratio = (a, b) => (a / b).toFixed(3);
  log(`compressed full size/plain=${ratio(packedFull.backups[0].fileSize, full.backups[0].fileSize)} time/plain=${ratio(packedFull.elapsedMs, full.elapsedMs)}`);
  log(`compressed incremental size/plain=${ratio(packedInc.backups[0].fileSize, inc.backups[0].fileSize)} time/plain=${ratio(packedInc.elapsedMs, inc.elapsedMs)}`);
  const mib = (ms) => (DRIVE_SIZE / 1048576 / (ms / 1000)).toFixed(0);
  log(`pull medians over ${PULL_ROUNDS} rounds (1 GiB): into files ${m.pullFile.toFixed(0)} ms (${mib(m.pullFile)} MiB/s) vs qemu-img convert ${m.convertFile.toFixed(0)} ms (${mib(m.convertFile)} MiB/s), ${m.convertHashed.toFixed(0)} ms with the digest; into a sink ${m.pullSink.toFixed(0)} ms (${mib(m.pullSink)} MiB/s) vs qemu-img convert into null-co ${m.convertNull.toFixed(0)} ms (${mib(m.convertNull)} MiB/s)`);
  log(`pull full time/push full=${ratio(pullFull.elapsedMs, full.elapsedMs)}`);
  log(`pull throughput/qemu-img-convert reads(sink/null-co)=${ratio(m.convertNull, m.pullSink)} files-with-digest=${ratio(m.convertHashed, m.pullFile)} files/plain-convert=${ratio(m.convertFile, m.pullFile)} (target >= 0.9 for reads)`);
  log(`pull bytes/push full=${ratio(pullFull.backups[0].bytes, full.backups[0].bytes)} incremental=${ratio(pullInc.backups[0].bytes, inc.backups[0].bytes)} pull incremental bytes/dirtied=${ratio(pullInc.backups[0].bytes, dirtied)}`);

  const bytesRatio = inc.backups[0].bytes / dirtied;
  const timeRatio = inc.elapsedMs / full.elapsedMs;
  log(`incremental bytes/dirtied=${bytesRatio.toFixed(3)} time/full=${timeRatio.toFixed(4)} overhead_ms=${overhead.toFixed(1)}`);
} catch (error) {
  process.stderr.write(`bench:backup failed: ${error instanceof Error ? error.stack : String(error)}\n`);
  exitCode = 1;
} finally {
  await vm.shutdown({ timeout: 30_000 }).catch(() => vm.kill());
  await rm(dir, { recursive: true, force: true });
}
process.exit(exitCode);
