import { CliUsageError } from '../src/errors.js';
import { matchesFilter, parseCliOptions } from '../src/options.js';
import { IOTEST_124_CHECKS } from '../src/cases/checks.js';
import {
  buildJsonReport,
  buildJunitReport,
  escapeXml,
  formatCaseLine,
  formatSummaryLine,
} from '../src/reporters.js';
import type { CaseResult } from '../src/runner.js';
import { findAll, parseXml, XmlSyntaxError } from './xml.js';

const qemu = { version: '7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)', binaries: { 'qemu-img': '/usr/bin/qemu-img' } };

const results: CaseResult[] = [
  { id: 'TestIncrementalBackup.test_incremental_simple', status: 'passed', durationMs: 412 },
  {
    id: 'TestIncrementalBackup.test_transaction_failure',
    status: 'failed',
    durationMs: 99,
    error: 'image comparison <inc0> & "ref0": expected identical\nContent mismatch at offset 0!\u0007',
  },
  { id: 'TestIncrementalBackupBlkdebug.test_incremental_pause', status: 'skipped', durationMs: 3, error: "no 'blkdebug' driver" },
];

describe('console lines', () => {
  it('gives one line per case with status and time, and the reason below it', () => {
    expect(formatCaseLine(results[0] as CaseResult)).toBe('PASS TestIncrementalBackup.test_incremental_simple (412 ms)');
    const failed = formatCaseLine({ ...(results[1] as CaseResult), artifactsDir: '/tmp/qmpkit-conformance-abc' }).split('\n');
    expect(failed[0]).toBe('FAIL TestIncrementalBackup.test_transaction_failure (99 ms)');
    expect(failed.slice(1).every((l) => l.startsWith('    '))).toBe(true);
    expect(failed[failed.length - 1]).toBe('    artifacts kept in /tmp/qmpkit-conformance-abc');
  });

  it('ends with "N passed, N failed" and adds skipped only when there are any', () => {
    expect(formatSummaryLine({ passed: 13, failed: 0, skipped: 0, wallMs: 1 })).toBe('13 passed, 0 failed');
    expect(formatSummaryLine({ passed: 11, failed: 1, skipped: 1, wallMs: 1 })).toBe('11 passed, 1 failed, 1 skipped');
  });
});

describe('JSON report', () => {
  it('has exactly qemu, cases and summary, with error only where there is one', () => {
    const report = buildJsonReport(qemu, results, 1234);
    expect(Object.keys(report)).toEqual(['qemu', 'cases', 'summary']);
    expect(report.qemu).toEqual(qemu);
    expect(report.cases[0]).toEqual({ id: 'TestIncrementalBackup.test_incremental_simple', status: 'passed', durationMs: 412 });
    expect(Object.keys(report.cases[1] ?? {})).toEqual(['id', 'status', 'durationMs', 'error']);
    expect(report.summary).toEqual({ passed: 1, failed: 1, skipped: 1, wallMs: 1234 });
    // Round trip: nothing in it that JSON cannot carry.
    expect(JSON.parse(JSON.stringify(report))).toEqual(report);
  });
});

// A passed case and a failed one with named checks: the reports must say whose each check is.
const checked: CaseResult[] = [
  {
    id: 'TestIncrementalBackup.test_small_granularity',
    status: 'passed',
    durationMs: 300,
    checks: [
      { name: 'job-end', origin: 'reference', passed: 7 },
      { name: 'bitmap-dirty-count', origin: 'suite', passed: 2 },
    ],
  },
  {
    id: 'TestIncrementalBackup.test_large_granularity',
    status: 'failed',
    durationMs: 200,
    error: '[suite: bitmap-dirty-count] granularity and dirty bytes of bitmap bitmap0 on drive0 after the writes: expected ...',
    failedCheck: { name: 'bitmap-dirty-count', origin: 'suite' },
    checks: [{ name: 'job-end', origin: 'reference', passed: 2 }],
  },
];

describe('named checks in the reports', () => {
  it('console: the passed checks under each case, the reference\'s apart from the suite\'s own', () => {
    expect(formatCaseLine(checked[0] as CaseResult).split('\n')).toEqual([
      'PASS TestIncrementalBackup.test_small_granularity (300 ms)',
      "    checks passed: reference job-end 7; suite's own bitmap-dirty-count 2",
    ]);
    const failed = formatCaseLine(checked[1] as CaseResult).split('\n');
    expect(failed[1]).toMatch(/^ {4}\[suite: bitmap-dirty-count\] /);
  });

  it('JSON: checks and failedCheck per case, and what each check means and whose it is', () => {
    const report = buildJsonReport(qemu, checked, 500, IOTEST_124_CHECKS);
    expect(Object.keys(report)).toEqual(['qemu', 'cases', 'summary', 'checks']);
    expect(report.cases[0]?.checks).toEqual(checked[0]?.checks);
    expect(report.cases[1]?.failedCheck).toEqual({ name: 'bitmap-dirty-count', origin: 'suite' });
    expect(report.checks?.['image-compare']?.origin).toBe('reference');
    expect(report.checks?.['negative-control']?.origin).toBe('suite');
    expect(JSON.parse(JSON.stringify(report))).toEqual(report);
  });

  it('JUnit: passed checks as check.<origin>.<name> properties, the failed check as the failure type', () => {
    const root = parseXml(buildJunitReport(qemu, checked, 500));
    const [passed, failed] = findAll(root, 'testcase');
    const props = (node: typeof passed) =>
      findAll(node as NonNullable<typeof passed>, 'property').map((p) => [p.attributes['name'], p.attributes['value']]);
    expect(props(passed)).toEqual([
      ['check.reference.job-end', '7'],
      ['check.suite.bitmap-dirty-count', '2'],
    ]);
    expect(findAll(failed as NonNullable<typeof failed>, 'failure')[0]?.attributes['type']).toBe('suite:bitmap-dirty-count');
  });
});

describe('JUnit report', () => {
  it('is well-formed XML whose escaped text reads back as the original', () => {
    const xml = buildJunitReport(qemu, results, 1234);
    const root = parseXml(xml);
    expect(root.name).toBe('testsuites');
    expect(root.attributes).toMatchObject({ tests: '3', failures: '1', skipped: '1', time: '1.234' });
    const suites = findAll(root, 'testsuite');
    expect(suites.map((s) => [s.attributes['name'], s.attributes['tests']])).toEqual([
      ['TestIncrementalBackup', '2'],
      ['TestIncrementalBackupBlkdebug', '1'],
    ]);
    const cases = findAll(root, 'testcase');
    expect(cases.map((c) => `${c.attributes['classname']}.${c.attributes['name']}`)).toEqual(results.map((r) => r.id));
    const failure = findAll(root, 'failure')[0];
    // The BEL control character cannot appear in XML at all: it is replaced, the rest is kept.
    expect(failure?.text).toBe('image comparison <inc0> & "ref0": expected identical\nContent mismatch at offset 0!\uFFFD');
    expect(failure?.attributes['message']).toBe('image comparison <inc0> & "ref0": expected identical');
    expect(findAll(root, 'skipped')[0]?.attributes['message']).toBe("no 'blkdebug' driver");
    const props = findAll(root, 'property').map((p) => [p.attributes['name'], p.attributes['value']]);
    expect(props).toContainEqual(['qemu.version', qemu.version]);
  });

  it('escapes markup characters', () => {
    expect(escapeXml(`<a href="x">&'</a>`)).toBe('&lt;a href=&quot;x&quot;&gt;&amp;&apos;&lt;/a&gt;');
    expect(escapeXml('a\nb', 'text')).toBe('a\nb');
    expect(escapeXml('a\nb')).toBe('a&#10;b');
  });

  it('the checker itself rejects malformed XML', () => {
    for (const bad of ['<a>', '<a></b>', '<a x=1/>', '<a>&nope;</a>', '<a>&</a>', '<a/><b/>', '<a x="1" x="2"/>', '<a>\u0001</a>']) {
      expect(() => parseXml(bad)).toThrow(XmlSyntaxError);
    }
  });
});

describe('command line', () => {
  it('parses every option', () => {
    const options = parseCliOptions([
      '--filter',
      'simple',
      '--filter',
      '*Blkdebug*',
      '--jobs',
      '3',
      '--json',
      'r.json',
      '--junit',
      'r.xml',
      '--qemu-system',
      '/opt/q/qemu-system-x86_64',
      '--qemu-img',
      '/opt/q/qemu-img',
      '--qemu-io',
      '/opt/q/qemu-io',
      '--keep-artifacts',
      '--compare-with',
      'qemu-img',
      '--timeout',
      '2.5',
      '--scratch-dir',
      '/var/tmp/conformance',
    ]);
    expect(options).toMatchObject({
      filters: ['simple', '*Blkdebug*'],
      jobs: 3,
      json: 'r.json',
      junit: 'r.xml',
      binaries: { qemuSystem: '/opt/q/qemu-system-x86_64', qemuImg: '/opt/q/qemu-img', qemuIo: '/opt/q/qemu-io' },
      keepArtifacts: true,
      compareWith: ['qemu-img'],
      timeoutMs: 2500,
      scratchDir: '/var/tmp/conformance',
    });
    expect(parseCliOptions([]).scratchDir).toBeUndefined();
    // The named sets, and lists of engines (each once, in a fixed order).
    expect(parseCliOptions([]).compareWith).toEqual(['sdk', 'suite']);
    expect(parseCliOptions(['--compare-with', 'independent']).compareWith).toEqual(['sdk', 'suite']);
    expect(parseCliOptions(['--compare-with', 'both']).compareWith).toEqual(['sdk', 'qemu-img']);
    expect(parseCliOptions(['--compare-with', 'all']).compareWith).toEqual(['sdk', 'suite', 'qemu-img']);
    expect(parseCliOptions(['--compare-with', 'in-process']).compareWith).toEqual(['sdk']);
    expect(parseCliOptions(['--compare-with', 'qemu-img,suite,qemu-img']).compareWith).toEqual(['suite', 'qemu-img']);
  });

  it('defaults jobs to the number of cores', () => {
    const { availableParallelism } = jest.requireActual<typeof import('node:os')>('node:os');
    expect(parseCliOptions([]).jobs).toBe(availableParallelism());
  });

  it.each([
    [['--jobs', '0'], '--jobs'],
    [['--jobs', 'two'], '--jobs'],
    [['--timeout=-1'], '--timeout'],
    [['--timeout', '0'], '--timeout'],
    [['--timeout', 'soon'], '--timeout'],
    [['--json', ''], '--json'],
    [['--scratch-dir', ''], '--scratch-dir'],
    [['--compare-with', 'cmp'], '--compare-with'],
    [['--compare-with', 'sdk,'], '--compare-with'],
    [['--compare-with', 'sdk,cmp'], '--compare-with'],
  ])('rejects %j naming the option', (argv, option) => {
    let caught: unknown;
    try {
      parseCliOptions(argv);
    } catch (error) {
      caught = error;
    }
    expect(CliUsageError.isInstance(caught)).toBe(true);
    expect((caught as CliUsageError).option).toBe(option);
  });

  it('rejects unknown options and positionals', () => {
    expect(() => parseCliOptions(['--fliter', 'x'])).toThrow(CliUsageError);
    expect(() => parseCliOptions(['simple'])).toThrow(CliUsageError);
  });

  it('selects by substring, or by glob when the pattern has a wildcard', () => {
    const id = 'TestIncrementalBackup.test_incremental_simple';
    expect(matchesFilter(id, [])).toBe(true);
    expect(matchesFilter(id, ['incremental_simple'])).toBe(true);
    expect(matchesFilter(id, ['Blkdebug'])).toBe(false);
    expect(matchesFilter(id, ['*.test_incremental_*'])).toBe(true);
    expect(matchesFilter(id, ['test_incremental_*'])).toBe(false);
    expect(matchesFilter(id, ['nothing', 'simple'])).toBe(true);
  });
});
