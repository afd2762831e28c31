export { runConformance, conformanceCases, caseIds, checkBinaries, checkScratchDir, describeBinaries, suites, suiteOf } from './suite.js';
export type { RunConformanceOptions, ConformanceResult } from './suite.js';
export { runCli, main, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PASSED, EXIT_USAGE } from './cli-main.js';
export type { CliStreams } from './cli-main.js';
export { parseCliOptions, matchesFilter, defaultJobs, USAGE, DEFAULT_TIMEOUT_S, SUITE_IDS } from './options.js';
export type { CliOptions, BinaryOptions, CompareEngine, SuiteId, VerdictEngine } from './options.js';
export type { CheckCount, CheckDefinition, CheckOrigin, FailedCheck } from './checks.js';
export type { CompareWith, ImageComparer, ImageMapper, Verdict } from './verdict.js';
export { runCases, SCRATCH_PREFIX } from './runner.js';
export type { CaseDefinition, CaseResult, CaseScope, CaseStatus, RunCasesOptions, RunCasesResult } from './runner.js';
export {
  buildJsonReport,
  buildJunitReport,
  escapeXml,
  formatCaseLine,
  formatSummaryLine,
  summarize,
} from './reporters.js';
export type { JsonCase, JsonReport, QemuDescription, SuiteSummary } from './reporters.js';
export { CaseContext, MachinePool, RunFixtures } from './context.js';
export type { FixtureScope, MachineObserver, SharedFixture, SuiteTools, TemplateSource } from './context.js';
export {
  BinaryNotFoundError,
  CaseAssertionError,
  CaseSkip,
  CaseTimeoutError,
  CliUsageError,
  ConformanceError,
  RunAbortedError,
  ScratchDirError,
} from './errors.js';
export type { ConformanceErrorOptions } from './errors.js';
// The root of every qmpkit error (one check for any package's errors, and their kind).
export { QmpkitError, errorKind, isQmpkitError } from '@qmpkit/errors';
export type { QmpkitErrorKind } from '@qmpkit/errors';
