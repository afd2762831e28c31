// qmpkit-backup: full and incremental backups of a running QEMU through its QMP socket,
// plus status, verify, restore and resize of the chain in a backup directory.
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { QmpClient } from '@qmpkit/client';
// The library through its public entry point (a self-reference, kept external by tsup), so the
// published CLI runs the same dist/index.js consumers import instead of bundling a second copy.
import {
  BackupAbortedError,
  BackupChainGroup,
  DEFAULT_FILE_MODE,
  MANIFEST_FILE,
  NewFullBackupRequiredError,
  PendingRunError,
  checkFileMode,
  inspectChain,
  readManifest,
  readRunLog,
  restoreChain,
  verifyChain,
  type ChainBackupOptions,
  type ChainRunResult,
  type ChainStatus,
  type DriveCheck,
  type JobProgress,
  type Manifest,
} from '@qmpkit/backup';

const USAGE = `usage: qmpkit-backup <command> [options]

commands:
  full           start a new chain: full backup of every --node, a bitmap of the chain's own (one transaction)
  incremental    back up what changed since the last backup (--differential: keep the bitmap)
  status         the chain in --dir: its files, any run left pending and, with --socket, whether it can continue
  verify         check every image against its recorded digest and with qemu-img check; --source NODE=FILE compares the newest backup
  restore        flatten the chain up to a backup into a standalone image (--output); checks the digests of what it reads
  resize         resize a drive through the chain (--size), so the next backup copies what a shrink cut off

options:
  --socket PATH          QMP unix socket of the running QEMU (full, incremental, resize; status to check the drives)
  --dir DIR              backup directory (holds ${MANIFEST_FILE}); required
  --node NODE            device or node-name to back up (repeat for several drives)
  --bitmap PREFIX        prefix of a new chain's bitmap name (default qmpkit; the chain id follows)
  --granularity BYTES    bitmap granularity for a new chain
  --full-if-broken       incremental: take a new full backup when the chain cannot be continued
  --differential         incremental: sync=bitmap with bitmap-mode=never
  --cancel-orphan-job    cancel the job an earlier, killed run left running in QEMU, then go on
  --overwrite            replace existing target / output files
  --speed BYTES          rate limit per job (bytes/s)
  --mode OCTAL           mode of backup images, manifest and restored images (default 0600; directories get x where readable)
  --source NODE=FILE     verify: compare the newest backup of NODE with FILE (repeatable)
  --reference BACKUP=FILE verify: compare a backup file with a reference image (repeatable)
  --output FILE          restore: the image to write
  --up-to N|FILE         restore: index or file name of the last backup to include (default: newest)
  --format qcow2|raw     restore: output format (default qcow2)
  --size BYTES           resize: the new size of --node
  --timeout MS           deadline of the whole operation (a backup still running then is cancelled)
  --json                 print the result as JSON on stdout (no progress bar)
  -h, --help             this text

Ctrl-C (SIGINT) or SIGTERM cancels the running backup job, waits for QEMU to end it, removes
its target and leaves the chain as before the run (exit 130); a second one quits at once and
leaves the job to be found by the next run.

exit status: 0 success, 1 failure, 2 usage error, 3 the chain needs a new full backup,
4 an earlier run's job is still in QEMU (--cancel-orphan-job), 130 interrupted`;

const EXIT = { ok: 0, failure: 1, usage: 2, newFull: 3, pending: 4, interrupted: 130 } as const;

class UsageError extends Error {}

interface Options {
  socket: string | undefined;
  dir: string;
  nodes: string[];
  bitmap: string | undefined;
  granularity: number | undefined;
  fullIfBroken: boolean;
  differential: boolean;
  cancelOrphanJob: boolean;
  overwrite: boolean;
  speed: number | undefined;
  mode: number;
  sources: Record<string, string>;
  references: Record<string, string>;
  output: string | undefined;
  upTo: string | undefined;
  format: 'qcow2' | 'raw';
  size: number | undefined;
  timeout: number | undefined;
  json: boolean;
}

/** What a command gets: its options, the signal that interrupts it, and the progress bar. */
interface CommandContext {
  options: Options;
  signal: AbortSignal;
  bar: ProgressBar;
}

/** The interrupt signal and --timeout, for operations that take `{ signal, timeout }`. */
function callOf(ctx: CommandContext): { signal: AbortSignal; timeout?: number } {
  return ctx.options.timeout === undefined ? { signal: ctx.signal } : { signal: ctx.signal, timeout: ctx.options.timeout };
}

function number(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new UsageError(`--${name} must be a non-negative integer, got "${value}"`);
  return n;
}

function fileMode(value: string | undefined): number {
  if (value === undefined) return DEFAULT_FILE_MODE;
  if (!/^0?[0-7]{3}$/.test(value)) throw new UsageError(`--mode takes an octal mode like 0640, got "${value}"`);
  try {
    return checkFileMode(Number.parseInt(value, 8));
  } catch (error) {
    throw new UsageError(`--mode: ${(error as Error).message}`);
  }
}

function pairs(name: string, values: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values ?? []) {
    const eq = v.indexOf('=');
    if (eq <= 0) throw new UsageError(`--${name} takes KEY=FILE, got "${v}"`);
    out[v.slice(0, eq)] = v.slice(eq + 1);
  }
  return out;
}

function parse(argv: string[]): { command: string; options: Options } | undefined {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      socket: { type: 'string' },
      dir: { type: 'string' },
      node: { type: 'string', multiple: true },
      bitmap: { type: 'string' },
      granularity: { type: 'string' },
      'full-if-broken': { type: 'boolean' },
      differential: { type: 'boolean' },
      'cancel-orphan-job': { type: 'boolean' },
      overwrite: { type: 'boolean' },
      speed: { type: 'string' },
      mode: { type: 'string' },
      source: { type: 'string', multiple: true },
      reference: { type: 'string', multiple: true },
      output: { type: 'string' },
      'up-to': { type: 'string' },
      format: { type: 'string' },
      size: { type: 'string' },
      timeout: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help || positionals.length === 0) return undefined;
  if (positionals.length > 1) throw new UsageError(`one command at a time, got: ${positionals.join(' ')}`);
  const command = positionals[0] as string;
  if (!(command in COMMANDS)) throw new UsageError(`unknown command "${command}"`);
  if (!values.dir) throw new UsageError('--dir is required');
  const format = values.format ?? 'qcow2';
  if (format !== 'qcow2' && format !== 'raw') throw new UsageError(`--format must be qcow2 or raw, got "${format}"`);
  const options: Options = {
    socket: values.socket,
    dir: values.dir,
    nodes: values.node ?? [],
    bitmap: values.bitmap,
    granularity: number('granularity', values.granularity),
    fullIfBroken: values['full-if-broken'] ?? false,
    differential: values.differential ?? false,
    cancelOrphanJob: values['cancel-orphan-job'] ?? false,
    overwrite: values.overwrite ?? false,
    speed: number('speed', values.speed),
    mode: fileMode(values.mode),
    sources: pairs('source', values.source),
    references: pairs('reference', values.reference),
    output: values.output,
    upTo: values['up-to'],
    format,
    size: number('size', values.size),
    timeout: number('timeout', values.timeout),
    json: values.json ?? false,
  };
  if (['full', 'incremental', 'resize'].includes(command) && !options.socket) throw new UsageError(`${command} needs --socket`);
  if (command === 'restore' && !options.output) throw new UsageError('restore needs --output');
  if (command === 'resize' && (options.size === undefined || options.size === 0)) throw new UsageError('resize needs --size');
  return { command, options };
}

/** A one-line progress bar on a terminal; nothing when stderr is not one. */
class ProgressBar {
  readonly #enabled: boolean;
  readonly #latest = new Map<string, JobProgress>();
  #drawn = false;

  constructor(enabled: boolean) {
    this.#enabled = enabled && process.stderr.isTTY === true;
  }

  update = (p: JobProgress & { node: string }): void => {
    if (!this.#enabled) return;
    this.#latest.set(p.node, p);
    let current = 0;
    let total = 0;
    for (const v of this.#latest.values()) {
      current += v.current;
      total += v.total;
    }
    const ratio = total > 0 ? Math.min(1, current / total) : 0;
    const width = 30;
    const filled = Math.round(ratio * width);
    const mib = (n: number): string => (n / 1048576).toFixed(1);
    const line = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(ratio * 100).toFixed(0).padStart(3)}%  ${mib(current)}/${mib(total)} MiB  ${[...this.#latest.keys()].join(', ')}`;
    process.stderr.write(`\r${line}\x1b[K`);
    this.#drawn = true;
  };

  done(): void {
    if (this.#drawn) process.stderr.write('\r\x1b[K');
    this.#drawn = false;
  }
}

/**
 * SIGINT and SIGTERM abort the returned signal: the library cancels the QEMU job, waits for
 * its end and undoes the run. A second one exits at once (130), leaving the job in QEMU and
 * the run pending in the manifest, for the next run to find.
 */
function interrupts(bar: ProgressBar): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const onSignal = (name: NodeJS.Signals): void => {
    bar.done();
    if (controller.signal.aborted) {
      process.stderr.write(`qmpkit-backup: ${name} again: quitting now; the next run will find the backup job left in QEMU\n`);
      process.exit(EXIT.interrupted);
    }
    process.stderr.write(`qmpkit-backup: ${name}: cancelling the backup job and waiting for QEMU to end it (again to quit at once)\n`);
    controller.abort(new Error(`interrupted by ${name}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    signal: controller.signal,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}

function nodesFor(options: Options, manifest: Manifest | undefined): string[] {
  if (options.nodes.length > 0) return options.nodes;
  if (manifest && manifest.drives.length > 0) return manifest.drives.map((d) => d.node);
  throw new UsageError('--node is required for a new chain');
}

async function withChain<T>(ctx: CommandContext, fn: (group: BackupChainGroup) => Promise<T>): Promise<T> {
  const { options } = ctx;
  const manifest = await readManifest(join(options.dir, MANIFEST_FILE));
  const nodes = nodesFor(options, manifest);
  const qmp = await QmpClient.connect(options.socket as string, {
    connectTimeout: options.timeout ?? 10_000,
    signal: ctx.signal,
  });
  try {
    const drives = nodes.map((node) => {
      const d: { node: string; bitmap?: string; granularity?: number } = { node };
      if (options.bitmap !== undefined) d.bitmap = options.bitmap;
      if (options.granularity !== undefined) d.granularity = options.granularity;
      return d;
    });
    const group = await BackupChainGroup.open({ qmp, dir: options.dir, drives, fileMode: options.mode });
    return await fn(group);
  } finally {
    await qmp.close().catch(() => undefined);
  }
}

function runOptions(ctx: CommandContext): ChainBackupOptions {
  const { options } = ctx;
  return {
    ...callOf(ctx),
    overwrite: options.overwrite,
    cancelOrphanJob: options.cancelOrphanJob,
    onProgress: ctx.bar.update,
    progressInterval: 200,
    ...(options.speed !== undefined ? { speed: options.speed } : {}),
  };
}

function describeRun(run: ChainRunResult): string {
  const lines = run.backups.map(
    (b, i) =>
      `${b.kind} backup of ${run.results[i]?.id ?? '?'}: ${b.file} (${b.bytes} bytes, parent ${b.parent ?? 'none'}, QEMU ${b.durationMs.toFixed(1)} ms)`,
  );
  lines.push(`chain ${run.chainId}, ${run.elapsedMs.toFixed(0)} ms`);
  return lines.join('\n');
}

function print(options: Options, json: unknown, text: string): void {
  process.stdout.write(options.json ? `${JSON.stringify(json, null, 2)}\n` : `${text}\n`);
}

/** A run that completed although an interrupt came (too late to cancel) still reports success. */
function noteLateInterrupt(ctx: CommandContext): void {
  if (ctx.signal.aborted) process.stderr.write('qmpkit-backup: the backup had completed before the cancel took effect; it is recorded\n');
}

function describeStatus(status: ChainStatus, checks: DriveCheck[] | undefined, lastRun: string | undefined, dir: string): string {
  const lines: string[] = [];
  const manifest = status.manifest;
  if (!manifest) lines.push(`no chain in ${dir}`);
  else {
    lines.push(`chain ${manifest.chainId} (manifest version ${manifest.version}, updated ${manifest.updated})`);
    if (status.legacy) {
      lines.push('  written by @qmpkit/backup 0.1: its bitmap is shared with every other 0.1 chain, so it cannot be continued; take a new full backup');
    }
    for (const d of manifest.drives) {
      const mark = d.mark ? `, mark ${d.mark.bitmap}` : '';
      lines.push(`  ${d.node}: bitmap ${d.bitmap}${mark}, granularity ${d.granularity}, drive size ${d.driveSize}`);
      for (const r of d.resizes ?? []) lines.push(`    resized ${r.from} -> ${r.to} at ${r.time} (the next backup copies from ${r.to})`);
      d.backups.forEach((b, i) => {
        const file = status.files.find((f) => f.node === d.node && f.file === b.file);
        const state = !file || file.state === 'ok' ? (b.digest ? 'ok' : 'ok (no digest recorded)') : file.state === 'missing' ? 'MISSING' : 'WRONG SIZE';
        lines.push(`    ${i}  ${b.kind.padEnd(12)} ${b.file}  ${b.bytes} bytes  ${b.time}  ${state}`);
      });
    }
  }
  if (status.pending) {
    const p = status.pending;
    const jobs = (p.drives ?? []).map((d) => d.jobId).join(', ');
    lines.push(`pending: ${p.kind} run ${p.run} started ${p.started}${p.pid !== undefined ? ` by process ${p.pid}${p.host ? ` on ${p.host}` : ''}` : ''}${jobs ? `, job ${jobs}` : ''}`);
  }
  if (lastRun) lines.push(`last run: ${lastRun}`);
  for (const c of checks ?? []) {
    if (c.ok) {
      const cover = c.coverFrom !== undefined ? `; the next backup also copies ${c.coverFrom}..${c.coverTo ?? '?'} (resized)` : '';
      lines.push(`  ${c.node}: can continue (${c.bitmap?.count ?? 0} dirty bytes${cover})`);
    } else if (c.reason === 'run-pending') {
      lines.push(`  ${c.node}: an earlier run is pending: ${c.detail ?? ''}`);
    } else {
      lines.push(`  ${c.node}: needs a new full backup (${c.reason ?? '?'}): ${c.detail ?? ''}`);
    }
  }
  if (!checks && manifest) lines.push('  (give --socket to check the drives: bitmaps, marks, sizes, jobs)');
  return lines.join('\n');
}

const COMMANDS: Record<string, (ctx: CommandContext) => Promise<number>> = {
  async full(ctx) {
    const result = await withChain(ctx, (g) => g.full(runOptions(ctx))).finally(() => ctx.bar.done());
    noteLateInterrupt(ctx);
    print(ctx.options, result, describeRun(result));
    return EXIT.ok;
  },

  async incremental(ctx) {
    const { options } = ctx;
    const result = await withChain(ctx, (g) => {
      const o = { ...runOptions(ctx), fullIfBroken: options.fullIfBroken };
      return options.differential ? g.differential(o) : g.incremental(o);
    }).finally(() => ctx.bar.done());
    noteLateInterrupt(ctx);
    print(options, result, describeRun(result));
    return EXIT.ok;
  },

  async status(ctx) {
    const { options } = ctx;
    const manifestPath = join(options.dir, MANIFEST_FILE);
    const status = await inspectChain(manifestPath);
    let checks: DriveCheck[] | undefined;
    if (options.socket && (status.manifest || options.nodes.length > 0)) {
      checks = await withChain(ctx, (g) => g.check(callOf(ctx)));
    }
    const last = (await readRunLog(manifestPath)).at(-1);
    const lastRun = last ? `${last.kind} ${last.run} ${last.outcome} at ${last.time}${last.error ? `: ${last.error}` : ''}` : undefined;
    print(
      options,
      { manifest: status.manifest ?? null, files: status.files, pending: status.pending ?? null, lastRun: last ?? null, checks: checks ?? null },
      describeStatus(status, checks, lastRun, options.dir),
    );
    const damaged = status.files.some((f) => f.state !== 'ok');
    if (checks?.some((c) => c.reason === 'run-pending')) return EXIT.pending;
    if (status.legacy || damaged || checks?.some((c) => !c.ok)) return EXIT.newFull;
    return EXIT.ok;
  },

  async verify(ctx) {
    const { options } = ctx;
    const report = await verifyChain(join(options.dir, MANIFEST_FILE), {
      ...callOf(ctx),
      sources: options.sources,
      references: options.references,
      throwOnFailure: false,
      ...(options.nodes.length > 0 ? { nodes: options.nodes } : {}),
    });
    const lines = report.images.map((i) => {
      const ok = i.check === 'clean' && (i.digest === 'ok' || i.digest === 'unrecorded') && i.reference?.identical !== false;
      const digest = i.digest === 'unrecorded' ? 'no digest recorded' : `digest ${i.digest}`;
      return `${ok ? 'ok  ' : 'FAIL'} ${i.file} (${digest}, check: ${i.check}${i.reference ? `, reference: ${i.reference.message}` : ''})`;
    });
    for (const s of report.sources) lines.push(`${s.identical ? 'ok  ' : 'FAIL'} ${s.file} against ${s.source}: ${s.message}`);
    lines.push(report.ok ? 'verified' : `verification failed:\n  ${report.failures.join('\n  ')}`);
    print(options, report, lines.join('\n'));
    return report.ok ? EXIT.ok : EXIT.failure;
  },

  async restore(ctx) {
    const { options } = ctx;
    const upTo = options.upTo === undefined ? undefined : /^-?\d+$/.test(options.upTo) ? Number(options.upTo) : options.upTo;
    const output = await restoreChain(join(options.dir, MANIFEST_FILE), options.output as string, {
      ...callOf(ctx),
      format: options.format,
      overwrite: options.overwrite,
      fileMode: options.mode,
      ...(upTo !== undefined ? { upTo } : {}),
      ...(options.nodes[0] !== undefined ? { node: options.nodes[0] } : {}),
    });
    print(options, { output }, `restored to ${output}`);
    return EXIT.ok;
  },

  async resize(ctx) {
    const { options } = ctx;
    const result = await withChain(ctx, (g) =>
      g.resize(options.size as number, {
        ...callOf(ctx),
        ...(options.nodes[0] !== undefined ? { node: options.nodes[0] } : {}),
      }),
    );
    const note = result.recorded
      ? `; the next backup copies everything from ${result.smallest} bytes on`
      : ' (no chain recorded it)';
    print(options, result, `resized ${result.node} from ${result.from} to ${result.to} bytes${note}`);
    return EXIT.ok;
  },
};

function exitCodeOf(error: unknown): number {
  if (BackupAbortedError.isInstance(error)) return EXIT.interrupted;
  if (NewFullBackupRequiredError.isInstance(error)) return EXIT.newFull;
  if (PendingRunError.isInstance(error)) return EXIT.pending;
  return EXIT.failure;
}

function report(error: unknown, options: Options): void {
  const message = error instanceof Error ? error.message : String(error);
  if (options.json) {
    const name = error instanceof Error ? error.name : 'Error';
    const reason = NewFullBackupRequiredError.isInstance(error) ? error.reason : undefined;
    process.stdout.write(`${JSON.stringify({ error: { name, message, ...(reason ? { reason } : {}) } }, null, 2)}\n`);
  }
  const hint = NewFullBackupRequiredError.isInstance(error) ? ' (run `incremental --full-if-broken` or `full`)' : '';
  process.stderr.write(`qmpkit-backup: ${message}${hint}\n`);
}

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parse(argv);
  } catch (error) {
    process.stderr.write(`qmpkit-backup: ${(error as Error).message}\n\n${USAGE}\n`);
    return EXIT.usage;
  }
  if (!parsed) {
    process.stdout.write(`${USAGE}\n`);
    return EXIT.ok;
  }
  const bar = new ProgressBar(!parsed.options.json);
  const interrupt = interrupts(bar);
  try {
    const command = COMMANDS[parsed.command] as (ctx: CommandContext) => Promise<number>;
    return await command({ options: parsed.options, signal: interrupt.signal, bar });
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`qmpkit-backup: ${error.message}\n`);
      return EXIT.usage;
    }
    report(error, parsed.options);
    return interrupt.signal.aborted ? EXIT.interrupted : exitCodeOf(error);
  } finally {
    interrupt.dispose();
  }
}

void main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
