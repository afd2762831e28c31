import type { CheckCount, CheckDefinition, FailedCheck } from './checks.js';
import type { CaseResult, CaseStatus } from './runner.js';

export interface QemuDescription {
  /** QEMU's version as it reports it, e.g. `7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`. */
  version: string;
  /** Binary paths the run used, keyed `qemu-system`, `qemu-img`, `qemu-io`. */
  binaries: Record<string, string>;
}

export interface SuiteSummary {
  passed: number;
  failed: number;
  skipped: number;
  wallMs: number;
}

export interface JsonCase {
  id: string;
  /** The suite (`124`, `257`), when known. */
  suite?: string;
  status: CaseStatus;
  durationMs: number;
  error?: string;
  /** The check whose failure failed the case (`origin`: the reference's or the suite's own). */
  failedCheck?: FailedCheck;
  /** The named checks the case passed, each with its origin and count. */
  checks?: CheckCount[];
}

/** The document `--json FILE` writes. */
export interface JsonReport {
  qemu: QemuDescription;
  cases: JsonCase[];
  summary: SuiteSummary;
  /** What each named check means and whose it is (the reference's or the suite's own). */
  checks?: Record<string, CheckDefinition>;
}

export function summarize(cases: readonly CaseResult[], wallMs: number): SuiteSummary {
  const count = (status: CaseStatus): number => cases.filter((c) => c.status === status).length;
  return { passed: count('passed'), failed: count('failed'), skipped: count('skipped'), wallMs };
}

const LABEL: Record<CaseStatus, string> = { passed: 'PASS', failed: 'FAIL', skipped: 'SKIP' };

/** The console line of one case, and for failures and skips the reason indented below it. */
export function formatCaseLine(result: CaseResult): string {
  const head = `${LABEL[result.status]} ${result.id} (${result.durationMs} ms)`;
  const lines = [head];
  if (result.error !== undefined) {
    for (const line of result.error.split('\n')) lines.push(`    ${line}`);
  }
  if (result.checks !== undefined) lines.push(`    ${formatChecks(result.checks)}`);
  if (result.artifactsDir !== undefined) lines.push(`    artifacts kept in ${result.artifactsDir}`);
  return lines.join('\n');
}

/** `checks: reference job-end 9, image-compare 4; suite's own bitmap-dirty-count 3`. */
export function formatChecks(checks: readonly CheckCount[]): string {
  const part = (origin: CheckCount['origin'], label: string): string | undefined => {
    const mine = checks.filter((c) => c.origin === origin);
    return mine.length === 0 ? undefined : `${label} ${mine.map((c) => `${c.name} ${c.passed}`).join(', ')}`;
  };
  return `checks passed: ${[part('reference', 'reference'), part('suite', "suite's own")].filter((p) => p !== undefined).join('; ')}`;
}

/** The last line of the console output: `N passed, N failed` then `, N skipped` when any were. */
export function formatSummaryLine(summary: SuiteSummary): string {
  const line = `${summary.passed} passed, ${summary.failed} failed`;
  return summary.skipped > 0 ? `${line}, ${summary.skipped} skipped` : line;
}

export function buildJsonReport(
  qemu: QemuDescription,
  cases: readonly CaseResult[],
  wallMs: number,
  checks?: Readonly<Record<string, CheckDefinition>>,
): JsonReport {
  const report: JsonReport = {
    qemu: { version: qemu.version, binaries: { ...qemu.binaries } },
    cases: cases.map((c) => {
      const entry: JsonCase = { id: c.id, ...(c.suite === undefined ? {} : { suite: c.suite }), status: c.status, durationMs: c.durationMs };
      if (c.error !== undefined) entry.error = c.error;
      if (c.failedCheck !== undefined) entry.failedCheck = { ...c.failedCheck };
      if (c.checks !== undefined) entry.checks = c.checks.map((k) => ({ ...k }));
      return entry;
    }),
    summary: summarize(cases, wallMs),
  };
  if (checks !== undefined) {
    report.checks = Object.fromEntries(Object.entries(checks).map(([name, d]) => [name, { ...d }]));
  }
  return report;
}

/**
 * Escape text for XML attribute values and character data. Characters XML 1.0 cannot carry at
 * all (most C0 controls, lone surrogates) are replaced, since escaping cannot make them legal.
 */
export function escapeXml(text: string, context: 'attribute' | 'text' = 'attribute'): string {
  // Attribute values normalise literal newlines and tabs to spaces, so they are kept as references.
  const keepWhitespace = context === 'text';
  let out = '';
  for (const ch of text) {
    const code = ch.codePointAt(0) ?? 0;
    switch (ch) {
      case '&':
        out += '&amp;';
        break;
      case '<':
        out += '&lt;';
        break;
      case '>':
        out += '&gt;';
        break;
      case '"':
        out += '&quot;';
        break;
      case "'":
        out += '&apos;';
        break;
      case '\n':
        out += keepWhitespace ? '\n' : '&#10;';
        break;
      case '\r':
        out += '&#13;';
        break;
      case '\t':
        out += keepWhitespace ? '\t' : '&#9;';
        break;
      default:
        if (code < 0x20 || (code >= 0xd800 && code <= 0xdfff) || code === 0xfffe || code === 0xffff) out += '\uFFFD';
        else out += ch;
    }
  }
  return out;
}

const seconds = (ms: number): string => (ms / 1000).toFixed(3);

/**
 * JUnit XML as CI systems read it: one <testsuite> per reference test class, one <testcase>
 * per case with `classname` = the class and `name` = the method, as Python's unittest names them.
 */
export function buildJunitReport(qemu: QemuDescription, cases: readonly CaseResult[], wallMs: number): string {
  const summary = summarize(cases, wallMs);
  const groups = new Map<string, CaseResult[]>();
  for (const c of cases) {
    const dot = c.id.lastIndexOf('.');
    const group = dot > 0 ? c.id.slice(0, dot) : 'conformance';
    const list = groups.get(group) ?? [];
    list.push(c);
    groups.set(group, list);
  }
  const lines: string[] = [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites name="qmpkit-conformance" tests="${cases.length}" failures="${summary.failed}" errors="0" skipped="${summary.skipped}" time="${seconds(wallMs)}">`,
  ];
  for (const [group, members] of groups) {
    const s = summarize(members, 0);
    const time = members.reduce((sum, m) => sum + m.durationMs, 0);
    lines.push(
      `  <testsuite name="${escapeXml(group)}" tests="${members.length}" failures="${s.failed}" errors="0" skipped="${s.skipped}" time="${seconds(time)}">`,
    );
    lines.push('    <properties>');
    lines.push(`      <property name="qemu.version" value="${escapeXml(qemu.version)}"/>`);
    for (const [name, path] of Object.entries(qemu.binaries)) {
      lines.push(`      <property name="qemu.binary.${escapeXml(name)}" value="${escapeXml(path)}"/>`);
    }
    lines.push('    </properties>');
    for (const m of members) {
      const name = m.id.slice(group.length + 1) || m.id;
      const open = `    <testcase classname="${escapeXml(group)}" name="${escapeXml(name)}" time="${seconds(m.durationMs)}"`;
      // Passed checks as properties named check.<origin>.<name>, so CI shows whose checks held.
      const properties =
        m.checks === undefined
          ? []
          : [
              '      <properties>',
              ...m.checks.map(
                (c) => `        <property name="check.${escapeXml(c.origin)}.${escapeXml(c.name)}" value="${c.passed}"/>`,
              ),
              '      </properties>',
            ];
      if (m.status === 'passed') {
        lines.push(...(properties.length === 0 ? [`${open}/>`] : [`${open}>`, ...properties, '    </testcase>']));
      } else if (m.status === 'skipped') {
        lines.push(`${open}>`, ...properties, `      <skipped message="${escapeXml(m.error ?? '')}"/>`, '    </testcase>');
      } else {
        const message = m.error ?? 'failed';
        const firstLine = message.split('\n', 1)[0] ?? message;
        const type = m.failedCheck === undefined ? 'AssertionError' : `${m.failedCheck.origin}:${m.failedCheck.name}`;
        lines.push(
          `${open}>`,
          ...properties,
          `      <failure message="${escapeXml(firstLine)}" type="${escapeXml(type)}">${escapeXml(message, 'text')}</failure>`,
          '    </testcase>',
        );
      }
    }
    lines.push('  </testsuite>');
  }
  lines.push('</testsuites>', '');
  return lines.join('\n');
}
