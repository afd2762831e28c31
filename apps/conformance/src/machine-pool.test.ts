import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { QemuMachine } from '@qmpkit/machine';

import { CaseContext, ImageTemplates, MachinePool, makeTools, RunFixtures } from './context.js';
import { CaseAssertionError, RunAbortedError } from './errors.js';
import { runCases, type CaseDefinition } from './runner.js';

// Machines handed from case to case (suite 257's scenarios) with real QEMU: a machine goes on
// only from a case that passed and handed it back; every other one is killed, and nothing
// outlives the run, whether it ends or is interrupted.

let scratch = '';
beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), 'qmpkit-machine-pool-test-'));
});
afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

const tools = makeTools({});

function run(cases: Array<CaseDefinition<CaseContext>>, pool: MachinePool, options: { signal?: AbortSignal; keepArtifacts?: boolean } = {}) {
  const templates = new ImageTemplates(tools);
  return runCases<CaseContext>({
    cases,
    jobs: 1,
    timeoutMs: 30_000,
    keepArtifacts: options.keepArtifacts ?? false,
    scratchDir: scratch,
    makeContext: (scope) => new CaseContext(scope, tools, templates, { onVersion: () => undefined }, {}, new RunFixtures(), pool),
    onRunStart: (_dir, signal) => signal.addEventListener('abort', () => pool.killAll(), { once: true }),
    onRunEnd: () => pool.closeAll(),
    ...(options.signal ? { signal: options.signal } : {}),
  });
}

function alive(pid: number | undefined): boolean {
  if (pid === undefined) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

const KEY = 'test';

test('a machine goes to the next case only from a case that passed and handed it back', async () => {
  const pool = new MachinePool();
  const pids: Array<number | undefined> = [];
  const machines: QemuMachine[] = [];
  const take = async (ctx: CaseContext): Promise<QemuMachine> => {
    const vm = await ctx.reusableMachine(KEY);
    machines.push(vm);
    pids.push(vm.pid);
    return vm;
  };
  const cases: Array<CaseDefinition<CaseContext>> = [
    // 0 launches a machine and hands it back: 1 gets the same one.
    { id: 'hands-back', weight: 6, run: async (ctx) => ctx.handBack(await take(ctx)) },
    { id: 'gets-it-and-fails', weight: 5, run: async (ctx) => {
      const vm = await take(ctx);
      ctx.handBack(vm);
      throw new CaseAssertionError('something', 'a', 'b');
    } },
    // The failed case's machine was killed: 2 gets a new one, and keeps it (no hand-back).
    { id: 'keeps-it', weight: 4, run: async (ctx) => void (await take(ctx)) },
    // So 3 gets yet another one, which the end of the run shuts down.
    { id: 'last', weight: 3, run: async (ctx) => ctx.handBack(await take(ctx)) },
  ];
  const result = await run(cases, pool);
  expect(result.cases.map((c) => c.status)).toEqual(['passed', 'failed', 'passed', 'passed']);
  expect(pids[0]).toBeDefined();
  expect(pids[1]).toBe(pids[0]);
  expect(new Set(pids).size).toBe(3);
  expect(pids[2]).not.toBe(pids[1]);
  expect(pids[3]).not.toBe(pids[2]);
  for (const pid of pids) expect(alive(pid)).toBe(false);
  // The last one was shut down (QEMU exited on its own), the others killed.
  expect(machines[3]?.state).toBe('exited');
  expect(readdirSync(scratch)).toEqual([]);
}, 60_000);

test("a failed case keeps the pooled machine's log with --keep-artifacts; an interrupted run kills the pool", async () => {
  const pool = new MachinePool();
  const kept = await run(
    [{ id: 'fails', run: async (ctx) => {
      await ctx.reusableMachine(KEY);
      throw new CaseAssertionError('something', 'a', 'b');
    } }],
    pool,
    { keepArtifacts: true },
  );
  const dir = kept.cases[0]?.artifactsDir as string;
  expect(readdirSync(dir)).toContain('qemu.log');
  rmSync(dir, { recursive: true, force: true });

  const controller = new AbortController();
  let pid: number | undefined;
  const error = await run(
    [
      { id: 'hands-back', weight: 2, run: async (ctx) => {
        const vm = await ctx.reusableMachine(KEY);
        pid = vm.pid;
        ctx.handBack(vm);
      } },
      { id: 'interrupted', weight: 1, run: async () => {
        controller.abort();
        await new Promise((resolve) => setTimeout(resolve, 100));
      } },
    ],
    new MachinePool(),
    { signal: controller.signal },
  ).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(RunAbortedError.isInstance(error)).toBe(true);
  expect(pid).toBeDefined();
  // The idle machine was killed with the run.
  for (let i = 0; i < 100 && alive(pid); i++) await new Promise((resolve) => setTimeout(resolve, 20));
  expect(alive(pid)).toBe(false);
  expect(readdirSync(scratch)).toEqual([]);
}, 60_000);
