// qmpkit-backup: full and incremental backups of a running QEMU through its QMP socket,
// plus status, verify and restore of the chain in a backup directory.
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { QmpClient } from '@qmpkit/client';
import { BackupChainGroup } from './chain.js';
import type { ChainRunResult, DriveCheck } from './chain.js';
import { NewFullBackupRequiredError } from './errors.js';
import type { JobProgress } from './job.js';
import { MANIFEST_FILE, readManifest } from './manifest.js';
import type { Manifest } from './manifest.js';
import { restoreChain, verifyChain } from './verify.js';

const USAGE = `usage: qmpkit-backup <command> [options]

commands:
  full           start a new chain: full backup of every --node, fresh bitmap (one transaction)
  incremental    back up what changed since the last backup (--differential: keep the bitmap)
  status         the chain in --dir and, with --socket, whether it can be continued
  verify         qemu-img check every image; --source NODE=FILE compares the newest backup
  restore        flatten the chain up to a backup into a standalone image (--output)

options:
  --socket PATH          QMP unix socket of the running QEMU (full, incremental, status)
  --dir DIR              backup directory (holds ${MANIFEST_FILE}); required
  --node NODE            device or node-name to back up (repeat for several drives)
  --bitmap NAME          bitmap name (default qmpkit-backup)
  --granularity BYTES    bitmap granularity for a new chain
  --full-if-broken       incremental: take a new full backup when the chain cannot be continued
  --differential         incremental: sync=bitmap with bitmap-mode=never
  --overwrite            replace existing target / output files
  --speed BYTES          rate limit per job (bytes/s)
  --source NODE=FILE     verify: compare the newest backup of NODE with FILE (repeatable)
  --reference BACKUP=FILE verify: compare a backup file with a reference image (repeatable)
  --output FILE          restore: the image to write
  --up-to N|FILE         restore: index or file name of the last backup to include (default: newest)
  --format qcow2|raw     restore: output format (default qcow2)
  --timeout MS           deadline of the whole operation
  --json                 print the result as JSON on stdout (no progress bar)
  -h, --help             this text

exit status: 0 success, 1 failure, 2 usage error, 3 the chain needs a new full backup`;

class UsageError extends Error {}

interface Options {
  socket: string | undefined;
  dir: string;
  nodes: string[];
  bitmap: string | undefined;
  granularity: number | undefined;
  fullIfBroken: boolean;
  differential: boolean;
  overwrite: boolean;
  speed: number | undefined;
  sources: Record<string, string>;
  references: Record<string, string>;
  output: string | undefined;
  upTo: string | undefined;
  format: 'qcow2' | 'raw';
  timeout: number | undefined;
  json: boolean;
}

function number(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new UsageError(`--${name} must be a non-negative integer, got "${value}"`);
  return n;
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
      overwrite: { type: 'boolean' },
      speed: { type: 'string' },
      source: { type: 'string', multiple: true },
      reference: { type: 'string', multiple: true },
      output: { type: 'string' },
      'up-to': { type: 'string' },
      format: { type: 'string' },
      timeout: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help || positionals.length === 0) return undefined;
  if (positionals.length > 1) throw new UsageError(`one command at a time, got: ${positionals.join(' ')}`);
  const command = positionals[0] as string;
  if (!['full', 'incremental', 'status', 'verify', 'restore'].includes(command)) {
    throw new UsageError(`unknown command "${command}"`);
  }
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
    overwrite: values.overwrite ?? false,
    speed: number('speed', values.speed),
    sources: pairs('source', values.source),
    references: pairs('reference', values.reference),
    output: values.output,
    upTo: values['up-to'],
    format,
    timeout: number('timeout', values.timeout),
    json: values.json ?? false,
  };
  if ((command === 'full' || command === 'incremental') && !options.socket) throw new UsageError(`${command} needs --socket`);
  if (command === 'restore' && !options.output) throw new UsageError('restore needs --output');
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
  }
}

function nodesFor(options: Options, manifest: Manifest | undefined): string[] {
  if (options.nodes.length > 0) return options.nodes;
  if (manifest) return manifest.drives.map((d) => d.node);
  throw new UsageError('--node is required for a new chain');
}

async function withChain<T>(options: Options, fn: (group: BackupChainGroup) => Promise<T>): Promise<T> {
  const manifest = await readManifest(join(options.dir, MANIFEST_FILE));
  const nodes = nodesFor(options, manifest);
  const qmp = await QmpClient.connect(options.socket as string, { connectTimeout: options.timeout ?? 10_000 });
  try {
    const drives = nodes.map((node) => {
      const d: { node: string; bitmap?: string; granularity?: number } = { node };
      if (options.bitmap !== undefined) d.bitmap = options.bitmap;
      if (options.granularity !== undefined) d.granularity = options.granularity;
      return d;
    });
    const group = await BackupChainGroup.open({ qmp, dir: options.dir, drives });
    return await fn(group);
  } finally {
    await qmp.close().catch(() => undefined);
  }
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

async function run(command: string, options: Options): Promise<number> {
  const signal = options.timeout !== undefined ? AbortSignal.timeout(options.timeout) : undefined;
  const call = signal ? { signal } : {};
  const bar = new ProgressBar(!options.json);
  const runOptions = {
    ...call,
    overwrite: options.overwrite,
    onProgress: bar.update,
    progressInterval: 200,
    ...(options.speed !== undefined ? { speed: options.speed } : {}),
  };
  switch (command) {
    case 'full': {
      const result = await withChain(options, (g) => g.full(runOptions)).finally(() => bar.done());
      print(options, result, describeRun(result));
      return 0;
    }
    case 'incremental': {
      const result = await withChain(options, (g) => {
        const o = { ...runOptions, fullIfBroken: options.fullIfBroken };
        return options.differential ? g.differential(o) : g.incremental(o);
      }).finally(() => bar.done());
      print(options, result, describeRun(result));
      return 0;
    }
    case 'status': {
      const manifestPath = join(options.dir, MANIFEST_FILE);
      const manifest = await readManifest(manifestPath);
      let checks: DriveCheck[] | undefined;
      if (options.socket) {
        checks = manifest || options.nodes.length > 0 ? await withChain(options, (g) => g.check(call)) : undefined;
      }
      const lines: string[] = [];
      if (!manifest) lines.push(`no chain in ${options.dir}`);
      else {
        lines.push(`chain ${manifest.chainId} (updated ${manifest.updated})`);
        for (const d of manifest.drives) {
          lines.push(`  ${d.node}: bitmap ${d.bitmap}, granularity ${d.granularity}, drive size ${d.driveSize}`);
          d.backups.forEach((b, i) => lines.push(`    ${i}  ${b.kind.padEnd(12)} ${b.file}  ${b.bytes} bytes  ${b.time}`));
        }
      }
      for (const c of checks ?? []) {
        lines.push(
          c.ok
            ? `  ${c.node}: can continue (${c.bitmap?.count ?? 0} dirty bytes)`
            : `  ${c.node}: needs a new full backup: ${c.detail ?? c.reason ?? ''}`,
        );
      }
      print(options, { manifest: manifest ?? null, checks: checks ?? null }, lines.join('\n'));
      return checks?.some((c) => !c.ok) ? 3 : 0;
    }
    case 'verify': {
      const report = await verifyChain(join(options.dir, MANIFEST_FILE), {
        ...call,
        sources: options.sources,
        references: options.references,
        throwOnFailure: false,
        ...(options.nodes.length > 0 ? { nodes: options.nodes } : {}),
      });
      const lines = report.images.map((i) => `${i.check === 'clean' ? 'ok  ' : 'FAIL'} ${i.file} (check: ${i.check}${i.reference ? `, reference: ${i.reference.message}` : ''})`);
      for (const s of report.sources) lines.push(`${s.identical ? 'ok  ' : 'FAIL'} ${s.file} against ${s.source}: ${s.message}`);
      lines.push(report.ok ? 'verified' : `verification failed:\n  ${report.failures.join('\n  ')}`);
      print(options, report, lines.join('\n'));
      return report.ok ? 0 : 1;
    }
    case 'restore': {
      const upTo = options.upTo === undefined ? undefined : /^-?\d+$/.test(options.upTo) ? Number(options.upTo) : options.upTo;
      const output = await restoreChain(join(options.dir, MANIFEST_FILE), options.output as string, {
        ...call,
        format: options.format,
        overwrite: options.overwrite,
        ...(upTo !== undefined ? { upTo } : {}),
        ...(options.nodes[0] !== undefined ? { node: options.nodes[0] } : {}),
      });
      print(options, { output }, `restored to ${output}`);
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parse(argv);
  } catch (error) {
    process.stderr.write(`qmpkit-backup: ${(error as Error).message}\n\n${USAGE}\n`);
    return 2;
  }
  if (!parsed) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  try {
    return await run(parsed.command, parsed.options);
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`qmpkit-backup: ${error.message}\n`);
      return 2;
    }
    const message = error instanceof Error ? error.message : String(error);
    if (parsed.options.json) {
      const name = error instanceof Error ? error.name : 'Error';
      const reason = NewFullBackupRequiredError.isInstance(error) ? error.reason : undefined;
      process.stdout.write(`${JSON.stringify({ error: { name, message, ...(reason ? { reason } : {}) } }, null, 2)}\n`);
    }
    const hint = NewFullBackupRequiredError.isInstance(error) ? ' (run `incremental --full-if-broken` or `full`)' : '';
    process.stderr.write(`qmpkit-backup: ${message}${hint}\n`);
    return NewFullBackupRequiredError.isInstance(error) ? 3 : 1;
  }
}

void main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
