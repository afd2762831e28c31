// qmpkit-backup: full and incremental backups of a running QEMU through its QMP socket,
// plus status, verify, restore, resize and prune of the chains in a backup directory.
//
// Every argument is checked before anything happens (no connection, no file): a usage error
// exits 2 with the command's usage line. Paths are made absolute here, so QEMU, whose working
// directory may be another, opens the same files.
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { QmpClient, QmpTimeoutError } from '@qmpkit/client';
// The library through its public entry point (a self-reference, kept external by tsup), so the
// published CLI runs the same dist/index.js consumers import instead of bundling a second copy.
import {
  BackupAbortedError,
  BackupChainGroup,
  DEFAULT_FILE_MODE,
  InvalidGranularityError,
  MANIFEST_FILE,
  NewFullBackupRequiredError,
  PendingRunError,
  TargetExistsError,
  checkFileMode,
  checkGranularity,
  inspectChain,
  pruneChain,
  readManifest,
  readRunLog,
  restoreChain,
  verifyChain,
  type BackupMode,
  type ChainBackupOptions,
  type ChainDriveOptions,
  type ChainRunResult,
  type ChainStatus,
  type DriveCheck,
  type FleecingChoice,
  type ManifestBackup,
} from '@qmpkit/backup';
// The CLI's own views of progress (not part of the library).
import { BarView, JsonLinesView, NoProgressView, formatBytes } from './progress-view.js';
import type { ProgressView } from './progress-view.js';

const EXIT = { ok: 0, failure: 1, usage: 2, newFull: 3, pending: 4, interrupted: 130 } as const;

/** Bad command-line usage: exit 2 with the command's usage line. */
class UsageError extends Error {
  override readonly name = 'UsageError';
  readonly command: string | undefined;
  constructor(message: string, command?: string) {
    super(message);
    this.command = command;
  }
}

// ---- the options and the commands ----

interface OptionSpec {
  type: 'string' | 'boolean';
  multiple?: boolean;
  /** Placeholder of the value in the help text. */
  value?: string;
  help: string;
}

const OPTIONS = {
  socket: { type: 'string', value: 'PATH', help: 'QMP unix socket of the running QEMU' },
  wait: { type: 'string', value: 'SECONDS', help: 'wait up to SECONDS for the socket to appear and QEMU to answer (default: fail at once when it is missing)' },
  dir: { type: 'string', value: 'DIR', help: `backup directory (holds ${MANIFEST_FILE}); created by the first full backup` },
  node: { type: 'string', multiple: true, value: 'NODE', help: 'device or node-name; repeat for several drives (one chain, one transaction per backup)' },
  bitmap: { type: 'string', value: 'PREFIX', help: "prefix of a new chain's bitmap name (default qmpkit; the chain id follows)" },
  granularity: { type: 'string', value: 'BYTES', help: 'bitmap granularity of a new chain: a power of two, 512 B .. 2 GiB' },
  'full-if-broken': { type: 'boolean', help: 'take a new full backup when the chain cannot be continued' },
  differential: { type: 'boolean', help: "sync=bitmap with bitmap-mode=never: the chain's bitmap keeps the changes" },
  compress: { type: 'boolean', help: 'write compressed qcow2 clusters (smaller backups, more CPU; push mode)' },
  mode: { type: 'string', value: 'push|pull', help: "push (default): QEMU's backup job writes the files; pull: QEMU exports a point-in-time view over NBD and this process reads the changed extents and writes the same files" },
  fleecing: { type: 'string', value: 'auto|snapshot-access|backup-sync-none', help: 'pull mode: how the point-in-time view is made (default auto: copy-before-write with snapshot-access where the QEMU has it)' },
  'cancel-orphan-job': { type: 'boolean', help: 'cancel the job an earlier, killed run left running in QEMU, then go on' },
  overwrite: { type: 'boolean', help: 'replace existing target or output files' },
  speed: { type: 'string', value: 'BYTES', help: 'rate limit of each job, bytes per second (push mode)' },
  'file-mode': { type: 'string', value: 'OCTAL', help: 'mode of backup images, manifest and restored images (default 0600; directories get x where readable)' },
  source: { type: 'string', multiple: true, value: 'NODE=FILE', help: 'compare the newest backup of NODE with the image FILE (repeatable)' },
  reference: { type: 'string', multiple: true, value: 'BACKUP=FILE', help: 'compare a backup file with a reference image (repeatable)' },
  output: { type: 'string', value: 'FILE|DIR', help: 'the image to write; in an existing directory, <backup>.restored.<format>' },
  'up-to': { type: 'string', value: 'N|FILE', help: 'the last backup to include: its index (0 the oldest, -1 the newest, -2 the one before) or file name (default: newest)' },
  format: { type: 'string', value: 'qcow2|raw', help: 'output format (default qcow2)' },
  chain: { type: 'string', value: 'ID', help: 'an earlier chain of the directory (its id or first 8 hex digits; default: the current one)' },
  size: { type: 'string', value: 'BYTES', help: 'the new size of --node' },
  'keep-chains': { type: 'string', value: 'N', help: 'keep the N newest chains (the current one included), delete the files of older ones' },
  'keep-points': { type: 'string', value: 'N', help: 'keep the N newest backups of the current chain; the oldest kept becomes a standalone image holding everything before it' },
  timeout: { type: 'string', value: 'MS', help: 'deadline of the whole operation in milliseconds (a backup still running then is cancelled)' },
  progress: { type: 'string', value: 'auto|bar|json|none', help: 'progress on stderr: a bar (auto: when stderr is a terminal and --json is not given) or JSON lines' },
  json: { type: 'boolean', help: 'print the result, or the error, as JSON on stdout' },
  help: { type: 'boolean', help: 'this text' },
} as const satisfies Record<string, OptionSpec>;

type OptionName = keyof typeof OPTIONS;

interface CommandSpec {
  summary: string;
  /** The usage line's arguments. */
  synopsis: string;
  options: readonly OptionName[];
  run: (ctx: CommandContext) => Promise<number>;
}

const RUN_OPTIONS = ['socket', 'wait', 'dir', 'node', 'mode', 'fleecing', 'compress', 'overwrite', 'speed', 'file-mode', 'cancel-orphan-job', 'timeout', 'progress', 'json'] as const;

const COMMANDS: Record<string, CommandSpec> = {
  full: {
    summary: "start a new chain: a full backup of every --node and a bitmap of the chain's own, in one transaction; the chain it replaces stays restorable until pruned",
    synopsis: 'full --socket PATH --dir DIR --node NODE [--node NODE ...] [options]',
    options: [...RUN_OPTIONS, 'bitmap', 'granularity'],
    run: (ctx) => runBackup(ctx, 'full'),
  },
  incremental: {
    summary: 'back up what changed since the last backup, layered on it (drives come from the manifest)',
    synopsis: 'incremental --socket PATH --dir DIR [options]',
    options: [...RUN_OPTIONS, 'full-if-broken', 'differential', 'bitmap', 'granularity'],
    run: (ctx) => runBackup(ctx, ctx.options.differential ? 'differential' : 'incremental'),
  },
  status: {
    summary: 'the chains in --dir: files, any run left pending, the last run; with --socket, whether each drive can continue',
    synopsis: 'status --dir DIR [--socket PATH] [--chain ID] [options]',
    options: ['dir', 'socket', 'wait', 'node', 'chain', 'timeout', 'json'],
    run: (ctx) => statusCommand(ctx),
  },
  verify: {
    summary: 'check every image of a chain against its recorded digest and with qemu-img check; --source compares the newest backup with the drive',
    synopsis: 'verify --dir DIR [--source NODE=FILE ...] [options]',
    options: ['dir', 'source', 'reference', 'node', 'chain', 'timeout', 'json'],
    run: (ctx) => verifyCommand(ctx),
  },
  restore: {
    summary: 'flatten a chain up to a backup into a standalone image; checks the digests of what it reads first',
    synopsis: 'restore --dir DIR --output FILE|DIR [--up-to N|FILE] [options]',
    options: ['dir', 'output', 'up-to', 'format', 'node', 'chain', 'overwrite', 'file-mode', 'timeout', 'json'],
    run: (ctx) => restoreCommand(ctx),
  },
  resize: {
    summary: 'resize a drive through the chain, so the next backup copies what a shrink cut off',
    synopsis: 'resize --socket PATH --dir DIR --node NODE --size BYTES [options]',
    options: ['socket', 'wait', 'dir', 'node', 'size', 'timeout', 'json'],
    run: (ctx) => resizeCommand(ctx),
  },
  prune: {
    summary: 'delete earlier chains (--keep-chains) and fold the oldest backups of the current chain into one (--keep-points), then verify what remains; needs no QEMU',
    synopsis: 'prune --dir DIR [--keep-chains N] [--keep-points N] [options]',
    options: ['dir', 'keep-chains', 'keep-points', 'file-mode', 'timeout', 'json'],
    run: (ctx) => pruneCommand(ctx),
  },
};

const EXIT_TEXT = `exit status: 0 success, 1 failure, 2 usage error, 3 the chain needs a new full backup
(incremental --full-if-broken takes one), 4 an earlier run's job is still in QEMU
(--cancel-orphan-job cancels it once its process is gone), 130 interrupted`;

function usageLine(command?: string): string {
  return command && COMMANDS[command] ? `usage: qmpkit-backup ${COMMANDS[command].synopsis}` : 'usage: qmpkit-backup <command> [options]   (qmpkit-backup <command> --help)';
}

function generalHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length)) + 2;
  const lines = [usageLine(), '', 'commands:'];
  for (const [name, spec] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(width)} ${spec.summary}`);
  lines.push('', 'Ctrl-C (SIGINT) or SIGTERM cancels a running backup, waits for QEMU to end its job, removes its');
  lines.push('target and leaves the chain as before the run (exit 130); a second one quits at once.', '', EXIT_TEXT);
  return lines.join('\n');
}

function commandHelp(command: string): string {
  const spec = COMMANDS[command] as CommandSpec;
  const names = [...spec.options, 'help'] as OptionName[];
  const flag = (n: OptionName): string => {
    const o: OptionSpec = OPTIONS[n];
    return `--${n}${o.value ? ` ${o.value}` : ''}`;
  };
  const width = Math.max(...names.map((n) => flag(n).length)) + 2;
  const lines = [usageLine(command), '', spec.summary, '', 'options:'];
  for (const n of names) lines.push(`  ${flag(n).padEnd(width)} ${OPTIONS[n].help}`);
  lines.push('', EXIT_TEXT);
  return lines.join('\n');
}

// ---- parsing ----

type ProgressMode = 'auto' | 'bar' | 'json' | 'none';

interface Options {
  socket: string | undefined;
  wait: number | undefined;
  dir: string;
  nodes: string[];
  bitmap: string | undefined;
  granularity: number | undefined;
  fullIfBroken: boolean;
  differential: boolean;
  compress: boolean;
  cancelOrphanJob: boolean;
  overwrite: boolean;
  speed: number | undefined;
  /** The run mode (--mode). */
  runMode: BackupMode;
  fleecing: FleecingChoice | undefined;
  mode: number;
  sources: Record<string, string>;
  references: Record<string, string>;
  output: string | undefined;
  upTo: number | string | undefined;
  format: 'qcow2' | 'raw';
  chain: string | undefined;
  size: number | undefined;
  keepChains: number | undefined;
  keepPoints: number | undefined;
  timeout: number | undefined;
  progress: ProgressMode;
  json: boolean;
}

type Parsed =
  | { kind: 'help'; text: string }
  | { kind: 'run'; command: string; options: Options };

/** `--up-to -2`: a value that looks like a negative number is the option's value, not an option. */
function joinNegativeValues(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const name = arg.startsWith('--') && !arg.includes('=') ? arg.slice(2) : undefined;
    const next = argv[i + 1];
    if (name && name in OPTIONS && OPTIONS[name as OptionName].type === 'string' && next !== undefined && /^-\d+$/.test(next)) {
      out.push(`${arg}=${next}`);
      i++;
    } else {
      out.push(arg);
    }
  }
  return out;
}

function integer(command: string, name: string, value: string | undefined, min: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^-?\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min) {
    throw new UsageError(`--${name} must be a whole number${min > 0 ? ` of at least ${min}` : ' (0 or more)'}, got "${value}"`, command);
  }
  return n;
}

function fileMode(command: string, value: string | undefined): number {
  if (value === undefined) return DEFAULT_FILE_MODE;
  if (!/^0?[0-7]{3}$/.test(value)) throw new UsageError(`--file-mode takes an octal mode like 0640, got "${value}"`, command);
  try {
    return checkFileMode(Number.parseInt(value, 8));
  } catch (error) {
    throw new UsageError(`--file-mode: ${(error as Error).message}`, command);
  }
}

function pairs(command: string, name: string, values: readonly string[] | undefined, path: (v: string) => string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values ?? []) {
    const eq = v.indexOf('=');
    const spec: OptionSpec = OPTIONS[name as OptionName];
    if (eq <= 0 || eq === v.length - 1) throw new UsageError(`--${name} takes ${spec.value ?? 'KEY=FILE'}, got "${v}"`, command);
    out[v.slice(0, eq)] = path(v.slice(eq + 1));
  }
  return out;
}

function parse(argv: readonly string[]): Parsed {
  const [first, ...rest] = argv;
  if (first === undefined) throw new UsageError('no command given');
  if (first === '-h' || first === '--help' || first === 'help') {
    const topic = first === 'help' ? rest[0] : undefined;
    if (topic !== undefined && !(topic in COMMANDS)) throw new UsageError(`unknown command "${topic}"`);
    return { kind: 'help', text: topic ? commandHelp(topic) : generalHelp() };
  }
  if (first.startsWith('-')) {
    throw new UsageError(argv.some((a) => !a.startsWith('-')) ? `the command comes first, got "${first}"` : 'no command given');
  }
  const command = first;
  const spec = COMMANDS[command];
  if (!spec) throw new UsageError(`unknown command "${command}" (one of: ${Object.keys(COMMANDS).join(', ')})`);
  const allowed = new Set<string>([...spec.options, 'help']);
  const parseOptions: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = {};
  for (const name of allowed) {
    const o: OptionSpec = OPTIONS[name as OptionName];
    parseOptions[name] = { type: o.type, ...(o.multiple ? { multiple: true } : {}), ...(name === 'help' ? { short: 'h' } : {}) };
  }
  let values: Record<string, string | boolean | Array<string | boolean> | undefined>;
  try {
    ({ values } = parseArgs({ args: joinNegativeValues(rest), options: parseOptions, strict: true, allowPositionals: false }));
  } catch (error) {
    const message = (error as Error).message;
    const unknown = /Unknown option '([^']+)'/.exec(message)?.[1];
    const name = unknown?.replace(/^-+/, '');
    if (name !== undefined && name in OPTIONS) throw new UsageError(`${command} does not take ${unknown}`, command);
    throw new UsageError(message.replace(/\. To specify a positional argument.*$/s, ''), command);
  }
  if (values['help'] === true) return { kind: 'help', text: commandHelp(command) };
  const str = (n: string): string | undefined => values[n] as string | undefined;
  const list = (n: string): string[] => (values[n] as string[] | undefined) ?? [];
  const flag = (n: string): boolean => values[n] === true;

  const dir = str('dir');
  if (!dir) throw new UsageError('--dir is required', command);
  const nodes = list('node');
  if (nodes.some((n) => n === '')) throw new UsageError('--node must not be empty', command);
  if (new Set(nodes).size !== nodes.length) throw new UsageError('a --node is given twice', command);
  const granularity = integer(command, 'granularity', str('granularity'), 1);
  if (granularity !== undefined) {
    try {
      checkGranularity(granularity);
    } catch (error) {
      if (!InvalidGranularityError.isInstance(error)) throw error;
      throw new UsageError(`--granularity: ${error.message}`, command);
    }
  }
  const format = str('format') ?? 'qcow2';
  if (format !== 'qcow2' && format !== 'raw') throw new UsageError(`--format must be qcow2 or raw, got "${format}"`, command);
  const progress = str('progress') ?? 'auto';
  if (!['auto', 'bar', 'json', 'none'].includes(progress)) throw new UsageError(`--progress must be auto, bar, json or none, got "${progress}"`, command);
  const chain = str('chain');
  if (chain !== undefined && !/^[0-9a-f]{8}[0-9a-f-]{0,28}$/i.test(chain)) {
    throw new UsageError(`--chain takes a chain id or its first 8 hex digits, got "${chain}"`, command);
  }
  const upToText = str('up-to');
  let upTo: number | string | undefined;
  if (upToText !== undefined) {
    if (/^-?\d+$/.test(upToText)) upTo = integer(command, 'up-to', upToText, Number.MIN_SAFE_INTEGER);
    else if (upToText === '' || upToText.startsWith('-')) throw new UsageError(`--up-to takes an index or a backup's file name, got "${upToText}"`, command);
    else upTo = upToText;
  }
  const waitText = str('wait');
  let wait: number | undefined;
  if (waitText !== undefined) {
    wait = Number(waitText);
    if (!/^\d+(\.\d+)?$/.test(waitText) || !Number.isFinite(wait)) throw new UsageError(`--wait takes seconds, got "${waitText}"`, command);
  }
  const runMode = str('mode') ?? 'push';
  if (runMode !== 'push' && runMode !== 'pull') throw new UsageError(`--mode must be push or pull, got "${runMode}"`, command);
  const fleecing = str('fleecing');
  if (fleecing !== undefined && !['auto', 'snapshot-access', 'backup-sync-none'].includes(fleecing)) {
    throw new UsageError(`--fleecing must be auto, snapshot-access or backup-sync-none, got "${fleecing}"`, command);
  }
  if (runMode === 'push' && fleecing !== undefined) throw new UsageError('--fleecing applies to --mode pull only', command);
  if (runMode === 'pull') {
    // A pull-mode run has no QEMU backup job: nothing would compress or rate-limit it.
    for (const name of ['compress', 'speed'] as const) {
      if (values[name] !== undefined) throw new UsageError(`--${name} applies to --mode push only (a pull-mode backup has no backup job)`, command);
    }
  }
  const socket = str('socket');
  const options: Options = {
    socket: socket === undefined ? undefined : resolve(socket),
    wait,
    dir: resolve(dir),
    nodes,
    bitmap: str('bitmap'),
    granularity,
    fullIfBroken: flag('full-if-broken'),
    differential: flag('differential'),
    compress: flag('compress'),
    cancelOrphanJob: flag('cancel-orphan-job'),
    overwrite: flag('overwrite'),
    speed: integer(command, 'speed', str('speed'), 1),
    runMode,
    fleecing: fleecing as FleecingChoice | undefined,
    mode: fileMode(command, str('file-mode')),
    sources: pairs(command, 'source', list('source'), (f) => resolve(f)),
    references: pairs(command, 'reference', list('reference'), (f) => resolve(f)),
    output: str('output') === undefined ? undefined : resolve(str('output') as string),
    upTo,
    format,
    chain,
    size: integer(command, 'size', str('size'), 1),
    keepChains: integer(command, 'keep-chains', str('keep-chains'), 1),
    keepPoints: integer(command, 'keep-points', str('keep-points'), 1),
    timeout: integer(command, 'timeout', str('timeout'), 1),
    progress: progress as ProgressMode,
    json: flag('json'),
  };
  if (options.bitmap === '') throw new UsageError('--bitmap must not be empty', command);
  if (['full', 'incremental', 'resize'].includes(command) && !options.socket) throw new UsageError(`${command} needs --socket`, command);
  if (command === 'full' && nodes.length === 0) {
    // A new chain names its drives; `full` in a directory with a chain may take them from it (checked when run).
  }
  if (command === 'restore' && !options.output) throw new UsageError('restore needs --output', command);
  if (command === 'restore' && nodes.length > 1) throw new UsageError('restore writes one drive: give one --node', command);
  if (command === 'resize' && options.size === undefined) throw new UsageError('resize needs --size', command);
  if (command === 'resize' && nodes.length > 1) throw new UsageError('resize takes one --node', command);
  if (command === 'prune' && options.keepChains === undefined && options.keepPoints === undefined) {
    throw new UsageError('prune needs --keep-chains N, --keep-points N or both', command);
  }
  if (options.differential && options.fullIfBroken) {
    // Allowed: a differential that finds the chain broken takes a full instead.
  }
  return { kind: 'run', command, options };
}

// ---- running ----

/** What a command gets: its options, the signal that interrupts it, and the progress view. */
interface CommandContext {
  command: string;
  options: Options;
  signal: AbortSignal;
  progress: ProgressView;
}

/** The interrupt signal and --timeout, for operations that take `{ signal, timeout }`. */
function callOf(ctx: CommandContext): { signal: AbortSignal; timeout?: number } {
  return ctx.options.timeout === undefined ? { signal: ctx.signal } : { signal: ctx.signal, timeout: ctx.options.timeout };
}

function progressView(options: Options): ProgressView {
  const mode = options.progress === 'auto' ? (options.json || process.stderr.isTTY !== true ? 'none' : 'bar') : options.progress;
  if (mode === 'bar') return new BarView(process.stderr);
  if (mode === 'json') return new JsonLinesView(process.stderr);
  return new NoProgressView();
}

/**
 * SIGINT and SIGTERM abort the returned signal: the library cancels the QEMU job, waits for
 * its end and undoes the run. A second one exits at once (130), leaving the job in QEMU and
 * the run pending in the manifest, for the next run to find.
 */
function interrupts(progress: ProgressView): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const onSignal = (name: NodeJS.Signals): void => {
    progress.stop();
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

/** A socket problem the user can act on (exit 1), said in the CLI's words. */
class SocketError extends Error {
  override readonly name = 'SocketError';
}

async function connect(ctx: CommandContext): Promise<QmpClient> {
  const { options } = ctx;
  const socket = options.socket as string;
  if (options.wait === undefined) {
    const found = await stat(socket).catch(() => undefined);
    if (!found) {
      throw new SocketError(`no QMP socket at ${socket}: is QEMU running with -qmp unix:${socket},server=on,wait=off? (--wait SECONDS waits for it)`);
    }
    if (!found.isSocket()) throw new SocketError(`${socket} is not a socket`);
  }
  const connectTimeout = options.wait !== undefined ? Math.max(1, options.wait * 1000) : (options.timeout ?? 10_000);
  try {
    return await QmpClient.connect(socket, { connectTimeout, signal: ctx.signal });
  } catch (error) {
    if (QmpTimeoutError.isInstance(error)) {
      const code = (error.cause as NodeJS.ErrnoException | undefined)?.code;
      if (code === 'ENOENT') throw new SocketError(`no QMP socket appeared at ${socket} within ${options.wait ?? 0} s`, { cause: error });
      if (code === 'ECONNREFUSED') throw new SocketError(`nothing accepts connections on ${socket} (QEMU exited, leaving its socket file?)`, { cause: error });
      throw new SocketError(`QEMU at ${socket} did not answer within ${connectTimeout / 1000} s`, { cause: error });
    }
    throw error;
  }
}

async function withChain<T>(ctx: CommandContext, fn: (group: BackupChainGroup) => Promise<T>): Promise<T> {
  const { options } = ctx;
  const manifest = await readManifest(join(options.dir, MANIFEST_FILE));
  let nodes = options.nodes;
  if (nodes.length === 0) {
    if (!manifest || manifest.drives.length === 0) throw new UsageError('--node is required for a new chain', ctx.command);
    nodes = manifest.drives.map((d) => d.node);
  }
  const qmp = await connect(ctx);
  try {
    const drives = nodes.map((node) => {
      const d: ChainDriveOptions = { node };
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

function print(options: Options, json: unknown, text: string): void {
  process.stdout.write(options.json ? `${JSON.stringify(json, null, 2)}\n` : `${text}\n`);
}

function describeBackup(b: ManifestBackup, index?: number): string {
  const duration = b.durationMs !== undefined ? `${b.durationEstimated ? '<= ' : ''}${b.durationMs.toFixed(1)} ms` : '? ms';
  const extra = [b.mode === 'pull' ? 'pull mode' : '', b.compressed ? 'compressed' : '', b.mergedFrom ? `merged from ${b.mergedFrom.length} older` : ''].filter(Boolean).join(', ');
  return `${index === undefined ? '' : `${String(index).padStart(3)}  `}${b.kind.padEnd(12)} ${b.file}  ${formatBytes(b.bytes)} written${
    b.jobLength !== undefined ? ` (job ${formatBytes(b.jobLength)})` : ''
  }, drive ${formatBytes(b.driveSize)}, ${b.fileSize !== undefined ? `file ${formatBytes(b.fileSize)}, ` : ''}${duration}${extra ? `, ${extra}` : ''}`;
}

function describeRun(run: ChainRunResult, nodes: readonly string[]): string {
  const lines = run.backups.map((b, i) => `${nodes[i] ?? '?'}: ${describeBackup(b)}${b.parent ? `, parent ${b.parent}` : ''}`);
  lines.push(`chain ${run.chainId}, run ${run.run}, ${run.elapsedMs.toFixed(0)} ms`);
  return lines.join('\n');
}

async function runBackup(ctx: CommandContext, kind: 'full' | 'incremental' | 'differential'): Promise<number> {
  const { options } = ctx;
  const run: ChainBackupOptions & { fullIfBroken?: boolean } = {
    ...callOf(ctx),
    overwrite: options.overwrite,
    cancelOrphanJob: options.cancelOrphanJob,
    onProgress: (p) => ctx.progress.update(p),
    progressInterval: 200,
    ...(options.speed !== undefined ? { speed: options.speed } : {}),
    ...(options.compress ? { compress: true } : {}),
    ...(options.runMode === 'pull' ? { mode: 'pull' as const } : {}),
    ...(options.fleecing !== undefined ? { fleecing: options.fleecing } : {}),
  };
  let nodes: string[] = [];
  const result = await withChain(ctx, (g) => {
    nodes = g.nodes;
    if (kind === 'full') return g.full(run);
    const layered = { ...run, fullIfBroken: options.fullIfBroken };
    return kind === 'differential' ? g.differential(layered) : g.incremental(layered);
  }).finally(() => ctx.progress.stop());
  // A run that completed although an interrupt came (too late to cancel) still reports success.
  if (ctx.signal.aborted) process.stderr.write('qmpkit-backup: the backup had completed before the cancel took effect; it is recorded\n');
  print(options, result, describeRun(result, nodes));
  return EXIT.ok;
}

function describeStatus(status: ChainStatus, checks: DriveCheck[] | undefined, lastRun: string | undefined, dir: string): string {
  const lines: string[] = [];
  const manifest = status.manifest;
  const chain = status.chain;
  if (!manifest || !chain) lines.push(`no chain in ${dir}`);
  else {
    const current = chain.chainId === manifest.chainId;
    lines.push(`chain ${chain.chainId}${current ? ' (current)' : ' (earlier chain: restorable, cannot be continued)'}, manifest version ${chain.version}, updated ${chain.updated}`);
    if (status.legacy) {
      lines.push('  written by @qmpkit/backup 0.1: its bitmap is shared with every other 0.1 chain, so it cannot be continued; take a new full backup');
    }
    for (const d of chain.drives) {
      const mark = d.mark ? `, mark ${d.mark.bitmap}` : '';
      lines.push(`  ${d.node}: bitmap ${d.bitmap}${mark}, granularity ${d.granularity}, drive size ${d.driveSize}`);
      if (current) for (const r of d.resizes ?? []) lines.push(`    resized ${r.from} -> ${r.to} at ${r.time} (the next backup copies from ${r.to})`);
      d.backups.forEach((b, i) => {
        const file = status.files.find((f) => f.node === d.node && f.file === b.file);
        const state = !file || file.state === 'ok' ? (b.digest ? 'ok' : 'ok (no digest recorded)') : file.state === 'missing' ? 'MISSING' : 'WRONG SIZE';
        lines.push(`  ${describeBackup(b, i)}, ${b.time}  ${state}`);
      });
    }
    if (status.chains.length > 1) {
      lines.push('chains (newest first):');
      for (const c of status.chains) {
        lines.push(`  ${c.chainId.slice(0, 8)}  ${c.current ? 'current' : 'earlier'}  ${c.backups} backup${c.backups === 1 ? '' : 's'} of ${c.nodes.join(', ')}, ${c.created} .. ${c.updated}`);
      }
    }
  }
  if (status.pending) {
    const p = status.pending;
    const jobs = (p.drives ?? []).map((d) => d.jobId).join(', ');
    lines.push(`pending: ${p.kind} run ${p.run} started ${p.started}${p.pid !== undefined ? ` by process ${p.pid}${p.host ? ` on ${p.host}` : ''}` : ''}${jobs ? `, job ${jobs}` : ''}`);
  }
  if (status.prune) lines.push(`prune ${status.prune.id} was interrupted: the next prune or backup completes it (the chain reads the same meanwhile)`);
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
  if (!checks && manifest && chain?.chainId === manifest.chainId) lines.push('  (give --socket to check the drives: bitmaps, marks, sizes, jobs)');
  return lines.join('\n');
}

async function statusCommand(ctx: CommandContext): Promise<number> {
  const { options } = ctx;
  const manifestPath = join(options.dir, MANIFEST_FILE);
  const status = await inspectChain(manifestPath, options.chain === undefined ? {} : { chain: options.chain });
  const current = status.manifest !== undefined && status.chain?.chainId === status.manifest.chainId;
  let checks: DriveCheck[] | undefined;
  if (options.socket && (current || (!status.manifest && options.nodes.length > 0))) {
    checks = await withChain(ctx, (g) => g.check(callOf(ctx)));
  }
  const last = (await readRunLog(manifestPath)).at(-1);
  const lastRun = last ? `${last.kind} ${last.run} ${last.outcome} at ${last.time}${last.error ? `: ${last.error}` : ''}` : undefined;
  print(
    options,
    {
      manifest: status.manifest ?? null,
      chain: status.chain ?? null,
      chains: status.chains,
      files: status.files,
      pending: status.pending ?? null,
      prune: status.prune ?? null,
      lastRun: last ?? null,
      checks: checks ?? null,
    },
    describeStatus(status, checks, lastRun, options.dir),
  );
  const damaged = status.files.some((f) => f.state !== 'ok');
  if (checks?.some((c) => c.reason === 'run-pending')) return EXIT.pending;
  if (status.legacy || damaged || checks?.some((c) => !c.ok)) return EXIT.newFull;
  return EXIT.ok;
}

async function verifyCommand(ctx: CommandContext): Promise<number> {
  const { options } = ctx;
  const report = await verifyChain(join(options.dir, MANIFEST_FILE), {
    ...callOf(ctx),
    sources: options.sources,
    references: options.references,
    throwOnFailure: false,
    ...(options.nodes.length > 0 ? { nodes: options.nodes } : {}),
    ...(options.chain !== undefined ? { chain: options.chain } : {}),
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
}

async function restoreCommand(ctx: CommandContext): Promise<number> {
  const { options } = ctx;
  const output = await restoreChain(join(options.dir, MANIFEST_FILE), options.output as string, {
    ...callOf(ctx),
    format: options.format,
    overwrite: options.overwrite,
    fileMode: options.mode,
    ...(options.upTo !== undefined ? { upTo: options.upTo } : {}),
    ...(options.nodes[0] !== undefined ? { node: options.nodes[0] } : {}),
    ...(options.chain !== undefined ? { chain: options.chain } : {}),
  });
  print(options, { output }, `restored to ${output}`);
  return EXIT.ok;
}

async function resizeCommand(ctx: CommandContext): Promise<number> {
  const { options } = ctx;
  const result = await withChain(ctx, (g) =>
    g.resize(options.size as number, {
      ...callOf(ctx),
      ...(options.nodes[0] !== undefined ? { node: options.nodes[0] } : {}),
    }),
  );
  const note = result.recorded ? `; the next backup copies everything from ${result.smallest} bytes on` : ' (no chain recorded it)';
  print(options, result, `resized ${result.node} from ${result.from} to ${result.to} bytes${note}`);
  return EXIT.ok;
}

async function pruneCommand(ctx: CommandContext): Promise<number> {
  const { options } = ctx;
  const result = await pruneChain(join(options.dir, MANIFEST_FILE), {
    ...callOf(ctx),
    fileMode: options.mode,
    ...(options.keepChains !== undefined ? { keepChains: options.keepChains } : {}),
    ...(options.keepPoints !== undefined ? { keepPoints: options.keepPoints } : {}),
  });
  const lines: string[] = [];
  for (const id of result.removedChains) lines.push(`removed chain ${id}`);
  for (const m of result.merged) lines.push(`${m.node}: ${m.file} is now standalone (folded in ${m.mergedFrom.join(', ') || 'nothing'})`);
  for (const f of result.removedFiles) lines.push(`deleted ${f}`);
  if (lines.length === 0) lines.push('nothing to prune');
  const verify = result.verify;
  if (verify) lines.push(verify.ok ? 'what remains verified' : `verification of what remains failed:\n  ${verify.failures.join('\n  ')}`);
  const { manifest: _manifest, ...json } = result;
  print(options, json, lines.join('\n'));
  return verify?.ok === false ? EXIT.failure : EXIT.ok;
}

// ---- errors ----

function exitCodeOf(error: unknown): number {
  if (error instanceof UsageError) return EXIT.usage;
  if (BackupAbortedError.isInstance(error)) return EXIT.interrupted;
  if (NewFullBackupRequiredError.isInstance(error)) return EXIT.newFull;
  if (PendingRunError.isInstance(error)) return EXIT.pending;
  return EXIT.failure;
}

/** The error's message in the CLI's words: its remedies are flags, not library options. */
function cliMessage(error: unknown): string {
  if (NewFullBackupRequiredError.isInstance(error)) {
    return `the backup chain of "${error.node}" (bitmap "${error.bitmap}") cannot be continued: ${error.detail}; a new full backup is required: run \`qmpkit-backup incremental --full-if-broken\` (or \`qmpkit-backup full\`)`;
  }
  if (TargetExistsError.isInstance(error)) return `${error.target} already exists (--overwrite replaces it)`;
  if (PendingRunError.isInstance(error)) {
    const list = error.jobs.map((j) => `${j.id} (${j.node}, ${j.status})`).join(', ');
    const who = error.pid === undefined ? 'an unknown process' : `process ${error.pid}${error.host ? ` on ${error.host}` : ''}`;
    return error.ownerAlive
      ? `backup run ${error.run} of this chain is still in progress: ${who} is running job ${list}; wait for it to end`
      : `backup run ${error.run} was left behind by ${who}, which is gone, and its job ${list} is still in QEMU; wait for it to end, or run again with --cancel-orphan-job to cancel it and continue the chain`;
  }
  return error instanceof Error ? error.message : String(error);
}

function report(error: unknown, json: boolean, command: string | undefined): number {
  const code = exitCodeOf(error);
  const message = cliMessage(error);
  if (json) {
    const name = error instanceof Error ? error.name : 'Error';
    const reason = NewFullBackupRequiredError.isInstance(error) || BackupAbortedError.isInstance(error) ? error.reason : undefined;
    process.stdout.write(`${JSON.stringify({ error: { name, message, ...(reason ? { reason } : {}), exitCode: code } }, null, 2)}\n`);
  }
  process.stderr.write(`qmpkit-backup: ${message}\n`);
  if (code === EXIT.usage) process.stderr.write(`${usageLine(command)}\n`);
  return code;
}

export async function main(argv: readonly string[]): Promise<number> {
  let parsed: Parsed;
  try {
    parsed = parse(argv);
  } catch (error) {
    const command = error instanceof UsageError ? error.command : undefined;
    return report(error, argv.includes('--json'), command);
  }
  if (parsed.kind === 'help') {
    process.stdout.write(`${parsed.text}\n`);
    return EXIT.ok;
  }
  const progress = progressView(parsed.options);
  const interrupt = interrupts(progress);
  try {
    const spec = COMMANDS[parsed.command] as CommandSpec;
    return await spec.run({ command: parsed.command, options: parsed.options, signal: interrupt.signal, progress });
  } catch (error) {
    progress.stop();
    const code = report(error, parsed.options.json, parsed.command);
    return interrupt.signal.aborted && code !== EXIT.usage ? EXIT.interrupted : code;
  } finally {
    interrupt.dispose();
  }
}

void main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
