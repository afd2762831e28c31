import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join, resolve } from 'node:path';

import { blkdebugCases } from './cases/blkdebug.js';
import { IOTEST_124_CHECKS } from './cases/checks.js';
import { incrementalBackupCases } from './cases/incremental-backup.js';
import { imageTemplates } from './cases/scenario.js';
import { CaseContext, ImageTemplates, MachinePool, makeTools, RunFixtures, type SuiteTools } from './context.js';
import type { CheckDefinition } from './checks.js';
import { BinaryNotFoundError, ScratchDirError } from './errors.js';
import { SUITE_IDS, type BinaryOptions, type SuiteId } from './options.js';
import type { CompareWith } from './verdict.js';
import { IOTEST_257_CHECKS, suite257Cases, suite257Fixtures } from './suites/257/index.js';
import type { QemuDescription, SuiteSummary } from './reporters.js';
import { summarize } from './reporters.js';
import { runCases, type CaseDefinition, type CaseResult } from './runner.js';

/** Each suite's cases, in its reference's order of definition. */
export const suites: Readonly<Record<SuiteId, ReadonlyArray<CaseDefinition<CaseContext>>>> = {
  '124': [...incrementalBackupCases, ...blkdebugCases],
  '257': suite257Cases,
};

/** Every case of every suite. */
export const conformanceCases: ReadonlyArray<CaseDefinition<CaseContext>> = SUITE_IDS.flatMap((id) => suites[id]);

export const caseIds: readonly string[] = conformanceCases.map((c) => c.id);

/** Each suite's catalogue of named checks (names are unique across suites). */
export const suiteChecks: Readonly<Record<SuiteId, Readonly<Record<string, CheckDefinition>>>> = {
  '124': IOTEST_124_CHECKS,
  '257': IOTEST_257_CHECKS,
};

/** The suite a case id belongs to (257's ids start with `257.`; 124's are the reference's names). */
export function suiteOf(id: string): SuiteId {
  return id.startsWith('257.') ? '257' : '124';
}

export interface RunConformanceOptions {
  /** Suites to run (default: all). */
  suites?: readonly SuiteId[];
  /** Ids to run among those suites' cases (default: all). */
  ids?: readonly string[];
  binaries?: BinaryOptions;
  /** Cases at a time (default 1). */
  jobs?: number;
  /** Per-case limit, ms (default 60 s). */
  timeoutMs?: number;
  keepArtifacts?: boolean;
  /**
   * Existing directory under which the run makes its scratch directories (default:
   * `os.tmpdir()`, read once when the run starts). Checked before anything runs.
   */
  scratchDir?: string;
  /**
   * Who decides image comparisons and maps: a named set (default `independent`: the SDK's
   * reader and the suite's own qcow2 reader) or a list of engines (`sdk`, `suite`,
   * `qemu-img`), which must all agree; see the README's verdict section.
   */
  compareWith?: CompareWith;
  signal?: AbortSignal;
  onCaseStart?: (id: string) => void;
  onCaseEnd?: (result: CaseResult) => void;
}

export interface ConformanceResult {
  qemu: QemuDescription;
  cases: CaseResult[];
  summary: SuiteSummary;
  /** The named checks the cases count, with whose each is (the reference's or the suite's own). */
  checks: Readonly<Record<string, CheckDefinition>>;
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** Where a binary would be found: the option, else the variable, else PATH; as given when not found. */
export function locateBinary(explicit: string | undefined, variable: string, name: string): string {
  const wanted = explicit ?? (process.env[variable] || name);
  if (wanted.includes('/')) return resolve(wanted);
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (dir !== '' && isExecutable(join(dir, wanted))) return join(dir, wanted);
  }
  return wanted;
}

const BINARIES = [
  { binary: 'qemu-system', option: '--qemu-system', key: 'qemuSystem', variable: 'QEMU_SYSTEM', name: 'qemu-system-x86_64' },
  { binary: 'qemu-img', option: '--qemu-img', key: 'qemuImg', variable: 'QEMU_IMG', name: 'qemu-img' },
  { binary: 'qemu-io', option: '--qemu-io', key: 'qemuIo', variable: 'QEMU_IO', name: 'qemu-io' },
] as const;

/**
 * Throws `BinaryNotFoundError` for the first binary that is not an executable file, before
 * anything runs: a wrong path is one clear error, not a failure of every case.
 */
export function checkBinaries(binaries: BinaryOptions): void {
  for (const { binary, option, key, variable, name } of BINARIES) {
    const explicit = binaries[key];
    const located = locateBinary(explicit, variable, name);
    if (isExecutable(located)) continue;
    const source = explicit !== undefined ? 'option' : process.env[variable] ? 'environment' : 'path';
    throw new BinaryNotFoundError(binary, option, located, source, variable);
  }
}

/** Throws `ScratchDirError` unless `dir` is a directory this process can make directories in. */
export function checkScratchDir(dir: string): void {
  let reason: string | undefined;
  try {
    if (!statSync(dir).isDirectory()) reason = 'not a directory';
    else accessSync(dir, constants.W_OK | constants.X_OK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    reason ??= code === 'ENOENT' ? 'no such directory' : code === 'EACCES' ? 'not writable' : String(error);
  }
  if (reason !== undefined) throw new ScratchDirError(resolve(dir), reason);
}

export function describeBinaries(binaries: BinaryOptions): Record<string, string> {
  return {
    'qemu-system': locateBinary(binaries.qemuSystem, 'QEMU_SYSTEM', 'qemu-system-x86_64'),
    'qemu-img': locateBinary(binaries.qemuImg, 'QEMU_IMG', 'qemu-img'),
    'qemu-io': locateBinary(binaries.qemuIo, 'QEMU_IO', 'qemu-io'),
  };
}

/** `qemu-system --version`, used only when no case got as far as QEMU's QMP greeting. */
async function versionFromBinary(binary: string, signal: AbortSignal | undefined): Promise<string> {
  const { execFile } = await import('node:child_process');
  return new Promise((done) => {
    execFile(binary, ['--version'], { timeout: 10_000, ...(signal ? { signal } : {}) }, (error, stdout) => {
      const m = /version\s+(\S+)(?:\s+\(([^)]*)\))?/.exec(String(stdout));
      if (error || !m) done('unknown');
      else done(m[2] ? `${m[1]} (${m[2]})` : (m[1] ?? 'unknown'));
    });
  });
}

/**
 * Run the selected conformance cases against the QEMU binaries given (or found) and return
 * each case's result. Rejects with `BinaryNotFoundError` before running anything when a binary
 * is not an executable file, and with `RunAbortedError` when `signal` aborts (after cleaning up).
 */
export async function runConformance(options: RunConformanceOptions = {}): Promise<ConformanceResult> {
  const binaries = options.binaries ?? {};
  checkBinaries(binaries);
  if (options.scratchDir !== undefined) checkScratchDir(options.scratchDir);
  const tools: SuiteTools = makeTools(binaries, options.compareWith);
  const wanted = new Set(options.suites ?? SUITE_IDS);
  const selected = conformanceCases.filter(
    (c) => wanted.has(suiteOf(c.id)) && (options.ids === undefined || options.ids.includes(c.id)),
  );
  const templates = new ImageTemplates(tools);
  const fixtures = new RunFixtures();
  const pool = new MachinePool();
  let version: string | undefined;
  const onVersion = (v: string): void => {
    version ??= v;
  };
  const ids = selected.map((c) => c.id);
  const run = await runCases<CaseContext>({
    cases: selected,
    makeContext: (scope) => new CaseContext(scope, tools, templates, { onVersion }, suiteChecks[suiteOf(scope.id)], fixtures, pool),
    // The 124 cases start from drive0, the transaction cases also from drive1; the 257 API rows
    // share one QEMU. Built while the first machines start, so no case waits for them.
    onRunStart: (runDir, signal) => {
      // Interrupted (or ended): whatever the pool still holds is killed.
      signal.addEventListener('abort', () => pool.killAll(), { once: true });
      const has124 = ids.some((id) => suiteOf(id) === '124');
      for (const template of has124 ? imageTemplates(ids) : []) {
        templates.prefetch(template.name, template.writes, runDir, signal);
      }
      for (const fixture of suite257Fixtures) {
        if (ids.some(fixture.usedBy)) {
          fixtures.get(fixture.key, fixture.create, { runDir, signal, tools, observer: { onVersion } }).catch(() => undefined);
        }
      }
    },
    onRunEnd: async () => {
      await Promise.all([fixtures.disposeAll(), pool.closeAll()]);
    },
    jobs: options.jobs ?? 1,
    timeoutMs: options.timeoutMs ?? 60_000,
    keepArtifacts: options.keepArtifacts ?? false,
    ...(options.scratchDir === undefined ? {} : { scratchDir: resolve(options.scratchDir) }),
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.onCaseStart ? { onCaseStart: options.onCaseStart } : {}),
    ...(options.onCaseEnd ? { onCaseEnd: options.onCaseEnd } : {}),
  });
  const described = describeBinaries(binaries);
  version ??= await versionFromBinary(described['qemu-system'] ?? 'qemu-system-x86_64', options.signal);
  return {
    qemu: { version, binaries: described },
    cases: run.cases.map((c) => ({ ...c, suite: suiteOf(c.id) })),
    summary: summarize(run.cases, run.wallMs),
    // The catalogues of the suites that ran.
    checks: Object.assign({}, ...[...wanted].map((suite) => suiteChecks[suite])) as Record<string, CheckDefinition>,
  };
}
