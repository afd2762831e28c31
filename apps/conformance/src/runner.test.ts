import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';

import { CaseAssertionError, CaseSkip, RunAbortedError } from './errors.js';
import { RunFixtures } from './context.js';
import { liveRuns, runCases, SCRATCH_PREFIX, type CaseDefinition, type CaseScope } from './runner.js';

// The runner with synthetic cases (no QEMU): scheduling, scratch directories, timeouts,
// skips and interruption. The real cases are exercised end to end in test/cli.test.ts.

// Every run here makes its directories under a private scratch root given explicitly
// (`scratchDir`), never through TMPDIR: other work in this process (another test file's, or
// this one's) may create directories of the same prefix in os.tmpdir() at any moment, and
// "nothing left behind" must see only this file's runs, whatever else runs meanwhile.
let scratchRoot = '';
const scratchDirs = (): string[] => readdirSync(scratchRoot).filter((n) => n.startsWith(SCRATCH_PREFIX));
beforeAll(() => {
  scratchRoot = mkdtempSync(join(tmpdir(), 'qmpkit-runner-test-'));
});
afterAll(() => {
  rmSync(scratchRoot, { recursive: true, force: true });
});

function waitForAbort(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    signal.addEventListener('abort', () => reject(signal.reason), { once: true });
  });
}

async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection');
}

const base = {
  makeContext: (scope: CaseScope) => scope,
  timeoutMs: 10_000,
  keepArtifacts: false,
  // Read when a test spreads `base`, i.e. after beforeAll made the root.
  get scratchDir(): string {
    return scratchRoot;
  },
};

describe('runCases', () => {
  let before: string[];
  beforeEach(() => {
    before = scratchDirs();
  });
  afterEach(() => {
    // Nothing of a run may stay behind (kept artifacts are removed by the test that keeps them).
    expect(scratchDirs().filter((d) => !before.includes(d))).toEqual([]);
  });

  it('runs at most `jobs` cases at a time and reports in definition order', async () => {
    let running = 0;
    let peak = 0;
    const gates: Array<() => void> = [];
    const cases: Array<CaseDefinition<CaseScope>> = ['a', 'b', 'c', 'd', 'e'].map((id) => ({
      id,
      run: async () => {
        running++;
        peak = Math.max(peak, running);
        await new Promise<void>((resolve) => gates.push(resolve));
        running--;
      },
    }));
    // Release waiting cases as they queue up so the run finishes.
    const releaser = setInterval(() => gates.shift()?.(), 1);
    try {
      const result = await runCases({ ...base, cases, jobs: 2 });
      expect(result.cases.map((c) => [c.id, c.status])).toEqual([
        ['a', 'passed'],
        ['b', 'passed'],
        ['c', 'passed'],
        ['d', 'passed'],
        ['e', 'passed'],
      ]);
      expect(peak).toBe(2);
    } finally {
      clearInterval(releaser);
    }
  });

  it('starts the heaviest cases first', async () => {
    const order: string[] = [];
    const cases: Array<CaseDefinition<CaseScope>> = [
      { id: 'light', weight: 1, run: async () => void order.push('light') },
      { id: 'heavy', weight: 9, run: async () => void order.push('heavy') },
      { id: 'middle', weight: 5, run: async () => void order.push('middle') },
    ];
    await runCases({ ...base, cases, jobs: 1 });
    expect(order).toEqual(['heavy', 'middle', 'light']);
  });

  it('gives each case its own scratch directory under the scratch root and removes it', async () => {
    const seen: string[] = [];
    const cases: Array<CaseDefinition<CaseScope>> = ['x', 'y'].map((id) => ({
      id,
      run: async (scope) => {
        expect(dirname(scope.dir)).toBe(scratchRoot);
        expect(dirname(scope.runDir)).toBe(scratchRoot);
        expect(basename(scope.dir).startsWith(SCRATCH_PREFIX)).toBe(true);
        writeFileSync(join(scope.dir, 'image.qcow2'), 'data');
        seen.push(scope.dir);
      },
    }));
    await runCases({ ...base, cases, jobs: 2 });
    expect(new Set(seen).size).toBe(2);
    for (const dir of seen) expect(existsSync(dir)).toBe(false);
  });

  it('without a scratch root uses os.tmpdir(), and a missing root is an error that leaves nothing registered', async () => {
    let dir = '';
    const { scratchDir: _unused, ...withoutRoot } = base;
    await runCases({
      ...withoutRoot,
      jobs: 1,
      cases: [
        {
          id: 'default-root',
          run: async (scope) => {
            dir = scope.dir;
            expect(dirname(scope.dir)).toBe(tmpdir());
          },
        },
      ],
    });
    expect(dir).not.toBe('');
    expect(existsSync(dir)).toBe(false);

    const runsBefore = liveRuns.size;
    const missing = join(scratchRoot, 'no-such-dir');
    const error = await rejectionOf(runCases({ ...base, scratchDir: missing, jobs: 1, cases: [{ id: 'a', run: async () => undefined }] }));
    expect((error as NodeJS.ErrnoException).code).toBe('ENOENT');
    expect(liveRuns.size).toBe(runsBefore);
  });

  it('keeps the directory of a failed case only with keepArtifacts', async () => {
    const failing: Array<CaseDefinition<CaseScope>> = [
      {
        id: 'fails',
        run: async (scope) => {
          writeFileSync(join(scope.dir, 'drive0.qcow2'), 'data');
          throw new CaseAssertionError('image comparison', 'identical', 'different');
        },
      },
      { id: 'passes', run: async () => undefined },
    ];
    const removed = await runCases({ ...base, cases: failing, jobs: 1 });
    expect(removed.cases[0]).toMatchObject({ status: 'failed', error: expect.stringContaining('image comparison') });
    expect(removed.cases[0]?.artifactsDir).toBeUndefined();

    const kept = await runCases({ ...base, cases: failing, jobs: 1, keepArtifacts: true });
    const dir = kept.cases[0]?.artifactsDir;
    try {
      expect(dir).toBeDefined();
      expect(readdirSync(dir as string)).toEqual(['drive0.qcow2']);
      expect(kept.cases[1]?.artifactsDir).toBeUndefined();
    } finally {
      if (dir) await rm(dir, { recursive: true, force: true });
    }
  });

  it('fails a case that exceeds the timeout, after killing what it registered', async () => {
    const killed: string[] = [];
    const torn: boolean[] = [];
    const cases: Array<CaseDefinition<CaseScope>> = [
      {
        id: 'hangs',
        run: async (scope) => {
          scope.onKill(() => killed.push('machine'));
          scope.onTeardown((failed) => void torn.push(failed));
          await waitForAbort(scope.signal);
        },
      },
    ];
    const result = await runCases({ ...base, cases, jobs: 1, timeoutMs: 50 });
    expect(result.cases[0]).toMatchObject({ status: 'failed', error: expect.stringMatching(/did not finish within 50 ms/) });
    expect(killed).toContain('machine');
    expect(torn).toEqual([true]);
  });

  it('reports CaseSkip as skipped with its reason', async () => {
    const cases: Array<CaseDefinition<CaseScope>> = [
      {
        id: 'needs-blkdebug',
        run: async () => {
          throw new CaseSkip('no blkdebug');
        },
      },
    ];
    const result = await runCases({ ...base, cases, jobs: 1 });
    expect(result.cases[0]).toMatchObject({ status: 'skipped', error: 'no blkdebug' });
  });

  it('on abort: kills, tears down, removes every directory and rejects with RunAbortedError', async () => {
    const controller = new AbortController();
    const killed: string[] = [];
    const started: string[] = [];
    const ended: string[] = [];
    const cases: Array<CaseDefinition<CaseScope>> = ['p', 'q', 'r'].map((id) => ({
      id,
      run: async (scope) => {
        started.push(id);
        scope.onKill(() => killed.push(id));
        writeFileSync(join(scope.dir, 'x'), 'x');
        if (started.length === 2) controller.abort();
        await waitForAbort(scope.signal);
      },
    }));
    const error = await rejectionOf(
      runCases({ ...base, cases, jobs: 2, keepArtifacts: true, signal: controller.signal, onCaseEnd: (r) => ended.push(r.id) }),
    );
    expect(RunAbortedError.isInstance(error)).toBe(true);
    expect(started).toEqual(['p', 'q']);
    // Kill hooks may run more than once (on the abort and again after teardown): they must be idempotent.
    expect([...new Set(killed)].sort()).toEqual(['p', 'q']);
    expect(ended).toEqual([]);
  });

  it('rejects at once when the signal is already aborted', async () => {
    const controller = new AbortController();
    controller.abort();
    const error = await rejectionOf(
      runCases({ ...base, cases: [{ id: 'a', run: async () => undefined }], jobs: 1, signal: controller.signal }),
    );
    expect(RunAbortedError.isInstance(error)).toBe(true);
  });

  it('releases a fixture the cases shared once, after the last case, and kills it on interruption', async () => {
    const made: string[] = [];
    const events: string[] = [];
    const fixtures = new RunFixtures();
    const fixtureScope = (runDir: string, signal: AbortSignal) => ({
      runDir,
      signal,
      tools: {} as never,
      observer: { onVersion: () => undefined },
    });
    let shared: { runDir: string; signal: AbortSignal } | undefined;
    const create = async (scope: { runDir: string; signal: AbortSignal }) => {
      made.push(scope.runDir);
      scope.signal.addEventListener('abort', () => events.push('killed'), { once: true });
      return { value: 42, dispose: async () => void events.push('disposed') };
    };
    const cases: Array<CaseDefinition<CaseScope>> = ['a', 'b', 'c'].map((id) => ({
      id,
      run: async (scope) => {
        shared = { runDir: scope.runDir, signal: scope.runSignal };
        expect(await fixtures.get('f', create, fixtureScope(scope.runDir, scope.runSignal))).toBe(42);
        events.push(`case ${id}`);
      },
    }));
    const run = await runCases({ ...base, cases, jobs: 2, onRunEnd: () => fixtures.disposeAll() });
    expect(run.cases.map((c) => c.status)).toEqual(['passed', 'passed', 'passed']);
    expect(made).toHaveLength(1);
    // Disposed once, after every case and before the run signal ends the fixture's life.
    expect(events.slice(-2)).toEqual(['disposed', 'killed']);
    expect(events.filter((e) => e.startsWith('case '))).toHaveLength(3);
    expect(shared?.signal.aborted).toBe(true);
    expect(existsSync(shared?.runDir ?? '/nonexistent-run-dir')).toBe(false);

    // Interrupted: the run signal kills it even though no one disposes it.
    const interrupted = new RunFixtures();
    const events2: string[] = [];
    const controller = new AbortController();
    const error = await rejectionOf(
      runCases({
        ...base,
        jobs: 1,
        signal: controller.signal,
        cases: [
          {
            id: 'x',
            run: async (scope: CaseScope) => {
              await interrupted.get(
                'f',
                async (s) => {
                  s.signal.addEventListener('abort', () => events2.push('killed'), { once: true });
                  return { value: 1, dispose: async () => void events2.push('disposed') };
                },
                fixtureScope(scope.runDir, scope.runSignal),
              );
              controller.abort();
              await waitForAbort(scope.signal);
            },
          },
        ],
      }),
    );
    expect(RunAbortedError.isInstance(error)).toBe(true);
    expect(events2).toEqual(['killed']);
  });
});
