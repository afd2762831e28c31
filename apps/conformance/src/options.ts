import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';

import { CliUsageError } from './errors.js';
import { COMPARE_ENGINES, COMPARE_PRESETS, DEFAULT_COMPARE_ENGINE, VERDICT_ENGINES, type CompareEngine, type VerdictEngine } from './verdict.js';

/** Paths of the QEMU binaries under test; undefined means the SDK's default lookup. */
export interface BinaryOptions {
  qemuSystem?: string;
  qemuImg?: string;
  qemuIo?: string;
}

/** The suites, each named after the QEMU iotest it ports. */
export const SUITE_IDS = ['124', '257'] as const;
export type SuiteId = (typeof SUITE_IDS)[number];

export interface CliOptions {
  /** Suites to run (`--suite`; default every suite). */
  suites: SuiteId[];
  filters: string[];
  jobs: number;
  json: string | undefined;
  junit: string | undefined;
  binaries: BinaryOptions;
  keepArtifacts: boolean;
  /** The engines that decide image comparisons and maps (they must agree); see verdict.ts. */
  compareWith: VerdictEngine[];
  /** Per-case limit in milliseconds. */
  timeoutMs: number;
  /** Where the run makes its scratch directories (`--scratch-dir`; undefined: `os.tmpdir()`). */
  scratchDir: string | undefined;
  list: boolean;
  help: boolean;
}

export const DEFAULT_TIMEOUT_S = 60;

export type { CompareEngine, VerdictEngine };

export const USAGE = `Usage: qmpkit-conformance [options]

Runs QEMU's incremental-backup conformance suites (iotests 124 and 257) through the qmpkit SDK.

Options:
  --suite NAME          124, 257 or all (default: all); repeatable
  --filter PATTERN      run only cases whose id contains PATTERN (or matches it as a glob
                        when it has * or ?); repeatable, a case matching any is selected
  --jobs N              cases run at the same time (default: number of cores)
  --json FILE           write a JSON report to FILE
  --junit FILE          write a JUnit XML report to FILE
  --qemu-system PATH    qemu-system binary (default: $QEMU_SYSTEM or qemu-system-x86_64 on PATH)
  --qemu-img PATH       qemu-img binary (default: $QEMU_IMG or qemu-img on PATH)
  --qemu-io PATH        qemu-io binary (default: $QEMU_IO or qemu-io on PATH)
  --keep-artifacts      keep the images and QEMU log of failed cases (their path is printed)
  --scratch-dir DIR     make the run's scratch directories in DIR, an existing directory
                        (default: $TMPDIR, else /tmp)
  --compare-with WHO    who decides image comparisons and maps; the engines must agree:
                        independent (default: the SDK's reader and the suite's own qcow2
                        reader), both (the SDK's reader and qemu-img), all, in-process
                        (the SDK's reader alone), suite, qemu-img, or a comma-separated
                        list of the engines sdk, suite, qemu-img
  --timeout SECONDS     limit per case (default: ${DEFAULT_TIMEOUT_S})
  --list                print the case ids and exit
  -h, --help            print this help and exit
`;

function positiveInteger(option: string, raw: string): number {
  if (!/^[0-9]+$/.test(raw) || Number(raw) < 1) {
    throw new CliUsageError(`${option} needs a positive integer, got "${raw}"`, { option, value: raw });
  }
  return Number(raw);
}

function positiveSeconds(option: string, raw: string): number {
  const value = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(value) || value <= 0) {
    throw new CliUsageError(`${option} needs a positive number of seconds, got "${raw}"`, { option, value: raw });
  }
  return value;
}

function nonEmpty(option: string, raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (raw === '') throw new CliUsageError(`${option} needs a non-empty value`, { option, value: raw });
  return raw;
}

/** Parse the command line (without `node` and the script). Throws `CliUsageError`. */
export function parseCliOptions(argv: readonly string[]): CliOptions {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        suite: { type: 'string', multiple: true },
        filter: { type: 'string', multiple: true },
        jobs: { type: 'string' },
        json: { type: 'string' },
        junit: { type: 'string' },
        'qemu-system': { type: 'string' },
        'qemu-img': { type: 'string' },
        'qemu-io': { type: 'string' },
        'keep-artifacts': { type: 'boolean' },
        'scratch-dir': { type: 'string' },
        'compare-with': { type: 'string' },
        timeout: { type: 'string' },
        list: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    throw new CliUsageError(error instanceof Error ? error.message : String(error), { cause: error });
  }
  const { values } = parsed;
  const binaries: BinaryOptions = {};
  const qemuSystem = nonEmpty('--qemu-system', values['qemu-system']);
  const qemuImg = nonEmpty('--qemu-img', values['qemu-img']);
  const qemuIo = nonEmpty('--qemu-io', values['qemu-io']);
  if (qemuSystem !== undefined) binaries.qemuSystem = qemuSystem;
  if (qemuImg !== undefined) binaries.qemuImg = qemuImg;
  if (qemuIo !== undefined) binaries.qemuIo = qemuIo;

  const compareWith = parseCompareWith(values['compare-with'] ?? DEFAULT_COMPARE_ENGINE);

  const suites = new Set<SuiteId>();
  for (const name of values.suite ?? ['all']) {
    if (name === 'all') SUITE_IDS.forEach((id) => suites.add(id));
    else if ((SUITE_IDS as readonly string[]).includes(name)) suites.add(name as SuiteId);
    else {
      throw new CliUsageError(`--suite needs one of ${[...SUITE_IDS, 'all'].join(', ')}, got "${name}"`, {
        option: '--suite',
        value: name,
      });
    }
  }

  const filters = values.filter ?? [];
  for (const f of filters) nonEmpty('--filter', f);

  return {
    suites: SUITE_IDS.filter((id) => suites.has(id)),
    filters,
    jobs: values.jobs === undefined ? defaultJobs() : positiveInteger('--jobs', values.jobs),
    json: nonEmpty('--json', values.json),
    junit: nonEmpty('--junit', values.junit),
    binaries,
    keepArtifacts: values['keep-artifacts'] ?? false,
    compareWith,
    scratchDir: nonEmpty('--scratch-dir', values['scratch-dir']),
    timeoutMs: Math.round(1000 * (values.timeout === undefined ? DEFAULT_TIMEOUT_S : positiveSeconds('--timeout', values.timeout))),
    list: values.list ?? false,
    help: values.help ?? false,
  };
}

/** `--compare-with`: a named set of engines, or a comma-separated list of engines. */
function parseCompareWith(raw: string): VerdictEngine[] {
  if ((COMPARE_ENGINES as readonly string[]).includes(raw)) return [...COMPARE_PRESETS[raw as CompareEngine]];
  const named = raw.split(',').map((e) => e.trim());
  if (named.length > 0 && named.every((e) => (VERDICT_ENGINES as readonly string[]).includes(e))) {
    return VERDICT_ENGINES.filter((e) => named.includes(e));
  }
  throw new CliUsageError(
    `--compare-with needs one of ${COMPARE_ENGINES.join(', ')} or a comma-separated list of ${VERDICT_ENGINES.join(', ')}, got "${raw}"`,
    { option: '--compare-with', value: raw },
  );
}

export function defaultJobs(): number {
  return Math.max(1, availableParallelism());
}

/**
 * Case selection like Python unittest's `-k`: a pattern with a wildcard is matched as a glob
 * against the whole id, otherwise as a substring (so results select the same cases as the
 * reference's runner would).
 */
export function matchesFilter(id: string, patterns: readonly string[]): boolean {
  if (patterns.length === 0) return true;
  return patterns.some((pattern) => (/[*?]/.test(pattern) ? globToRegExp(pattern).test(id) : id.includes(pattern)));
}

function globToRegExp(glob: string): RegExp {
  let source = '';
  for (const ch of glob) {
    if (ch === '*') source += '.*';
    else if (ch === '?') source += '.';
    else source += ch.replace(/[\\^$.|+()[\]{}]/g, '\\$&');
  }
  return new RegExp(`^${source}$`);
}
