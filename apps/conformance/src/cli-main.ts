import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

import { BinaryNotFoundError, CliUsageError, RunAbortedError, ScratchDirError } from './errors.js';
import { USAGE, matchesFilter, parseCliOptions } from './options.js';
import { buildJsonReport, buildJunitReport, formatCaseLine, formatSummaryLine, summarize } from './reporters.js';
import { liveRuns } from './runner.js';
import { caseIds, runConformance, suiteOf } from './suite.js';

export interface CliStreams {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
}

/** Exit statuses: 0 all passed, 1 a case failed, 2 bad usage, 130 interrupted (signal, closed output, parent gone). */
export const EXIT_PASSED = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;
export const EXIT_INTERRUPTED = 130;

async function writeReport(file: string, text: string): Promise<void> {
  const path = resolve(file);
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, text);
}

/**
 * The command line without process wiring: parses `argv`, runs the cases, prints one line per
 * case and the summary line last, writes the reports. Resolves with the exit status.
 */
export async function runCli(argv: readonly string[], streams: CliStreams, signal?: AbortSignal): Promise<number> {
  let options;
  try {
    options = parseCliOptions(argv);
  } catch (error) {
    if (CliUsageError.isInstance(error)) {
      streams.stderr.write(`qmpkit-conformance: ${error.message}\n\n${USAGE}`);
      return EXIT_USAGE;
    }
    throw error;
  }
  if (options.help) {
    streams.stdout.write(USAGE);
    return EXIT_PASSED;
  }
  const ids = caseIds.filter((id) => options.suites.includes(suiteOf(id)) && matchesFilter(id, options.filters));
  if (options.list) {
    for (const id of ids) streams.stdout.write(`${id}\n`);
    return EXIT_PASSED;
  }
  if (ids.length === 0) {
    streams.stderr.write(`qmpkit-conformance: no case matches --filter ${options.filters.map((f) => `"${f}"`).join(', ')}\n`);
    return EXIT_USAGE;
  }

  let result;
  try {
    result = await runConformance({
      suites: options.suites,
      ids,
      binaries: options.binaries,
      jobs: options.jobs,
      timeoutMs: options.timeoutMs,
      keepArtifacts: options.keepArtifacts,
      ...(options.scratchDir === undefined ? {} : { scratchDir: options.scratchDir }),
      compareWith: options.compareWith,
      ...(signal ? { signal } : {}),
      onCaseEnd: (r) => streams.stdout.write(`${formatCaseLine(r)}\n`),
    });
  } catch (error) {
    if (BinaryNotFoundError.isInstance(error)) {
      streams.stderr.write(`qmpkit-conformance: ${error.message}\n`);
      return EXIT_USAGE;
    }
    if (ScratchDirError.isInstance(error)) {
      streams.stderr.write(`qmpkit-conformance: ${error.message} (from --scratch-dir)\n`);
      return EXIT_USAGE;
    }
    if (RunAbortedError.isInstance(error)) {
      const why = signal?.reason instanceof Error ? ` (${signal.reason.message})` : '';
      streams.stderr.write(`qmpkit-conformance: interrupted${why}; QEMU stopped and scratch directories removed\n`);
      return EXIT_INTERRUPTED;
    }
    throw error;
  }

  if (options.json !== undefined) {
    await writeReport(options.json, `${JSON.stringify(buildJsonReport(result.qemu, result.cases, result.summary.wallMs, result.checks), null, 2)}\n`);
  }
  if (options.junit !== undefined) {
    await writeReport(options.junit, buildJunitReport(result.qemu, result.cases, result.summary.wallMs));
  }
  if (options.suites.length > 1) {
    // One line per suite, then the line over all of them last (what CI reads).
    for (const suite of options.suites) {
      const own = result.cases.filter((c) => c.suite === suite);
      if (own.length > 0) streams.stdout.write(`suite ${suite}: ${formatSummaryLine(summarize(own, 0))}\n`);
    }
  }
  streams.stdout.write(`${formatSummaryLine(result.summary)}\n`);
  return result.summary.failed === 0 && result.summary.skipped === 0 ? EXIT_PASSED : EXIT_FAILED;
}

/** How often the CLI looks whether its parent process is still there. */
const PARENT_POLL_MS = 500;
/** After the first stop request, how long the graceful clean-up may take before a forced one. */
const FORCE_AFTER_MS = 5_000;

/** A stream whose writes are dropped once it has failed (a closed pipe): nothing is left to read them. */
function guarded(stream: NodeJS.WriteStream, onClosed: (error: Error) => void): CliStreams['stdout'] {
  let closed = false;
  stream.on('error', (error: Error) => {
    if (closed) return;
    closed = true;
    onClosed(error);
  });
  return {
    write: (text: string) => {
      if (!closed && !stream.destroyed) stream.write(text);
      return true;
    },
  };
}

/**
 * Wire `runCli` to the process. The run is stopped (QEMU stopped, scratch directories removed,
 * exit 130) when SIGINT, SIGTERM or SIGHUP arrives, when its standard output or error is
 * closed (`| head -1`: EPIPE), and when its parent process goes away (it is then re-parented;
 * checked every half second). A second signal, or a clean-up taking over 5 s, releases
 * everything synchronously; so does any other way out of the process (a crash included).
 */
export async function main(argv: readonly string[] = process.argv.slice(2)): Promise<void> {
  const controller = new AbortController();
  let stopping = false;
  const releaseAll = (): void => {
    for (const run of liveRuns) run.releaseSync();
  };
  const forceExit = (): never => {
    releaseAll();
    process.exit(EXIT_INTERRUPTED);
  };
  const stop = (why: string): void => {
    if (stopping) return;
    stopping = true;
    controller.abort(new Error(why));
    setTimeout(forceExit, FORCE_AFTER_MS).unref();
  };
  const onSignal = (name: NodeJS.Signals): void => {
    if (stopping) forceExit();
    stop(`received ${name}`);
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const name of signals) process.on(name, onSignal);
  // The last resort: whatever ends the process from here on (process.exit, an uncaught
  // exception), the run's directories go with it; the machine package kills QEMU on 'exit'.
  process.on('exit', releaseAll);
  const stdout = guarded(process.stdout, () => stop('standard output closed'));
  const stderr = guarded(process.stderr, () => stop('standard error closed'));
  const parent = process.ppid;
  const parentWatch = setInterval(() => {
    if (process.ppid !== parent) stop(`parent process ${parent} exited`);
  }, PARENT_POLL_MS);
  parentWatch.unref();
  try {
    process.exitCode = await runCli(argv, { stdout, stderr }, controller.signal);
  } catch (error) {
    stderr.write(`qmpkit-conformance: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = EXIT_FAILED;
  } finally {
    clearInterval(parentWatch);
    for (const name of signals) process.off(name, onSignal);
    process.off('exit', releaseAll);
  }
}
