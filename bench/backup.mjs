#!/usr/bin/env node
// Incremental against full backup of a 1 GiB qcow2 drive, through @qmpkit/backup's BackupChain
// on a real QEMU. Run by `npm run bench:backup` (which builds the packages first).
//
//   full:         the whole drive, filled with data so the full backup has 1 GiB to copy
//   dirtied:      1% of the drive in scattered 64 KiB writes (aligned to the bitmap's 64 KiB
//                 granularity, distinct clusters, written through HMP qemu-io as a guest would)
//   incremental:  BackupChain.incremental()
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
// The last lines are: compressed size/plain=A time/plain=B (full and incremental), then
// incremental bytes/dirtied=X time/full=Y overhead_ms=Z
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

// The workspace packages are not installed at the root: load their built ESM entries.
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const load = (pkg) => import(pathToFileURL(join(root, 'packages', pkg, 'dist', 'index.js')).href);
const { BackupChain, digestFile } = await load('backup');
const { qemuImg, qemuIo } = await load('image-tools');
const { QemuMachine } = await load('machine');

const GiB = 1024 ** 3;
const CLUSTER = 64 * 1024;
const DRIVE_SIZE = GiB;
const DIRTY_FRACTION = 0.01;
const HMP_BATCH = 32;

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
  log('verified:    both chains up to their incremental equal the drive (qemu-img compare)');
  const ratio = (a, b) => (a / b).toFixed(3);
  log(`compressed full size/plain=${ratio(packedFull.backups[0].fileSize, full.backups[0].fileSize)} time/plain=${ratio(packedFull.elapsedMs, full.elapsedMs)}`);
  log(`compressed incremental size/plain=${ratio(packedInc.backups[0].fileSize, inc.backups[0].fileSize)} time/plain=${ratio(packedInc.elapsedMs, inc.elapsedMs)}`);

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
