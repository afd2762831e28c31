// Issue 10: progress was only polled, so a 256 MiB full stopped reporting short of its end and
// a small incremental reported nothing. Now every job ends with a final report from its end
// event (current === total when it completed), and reports never go backwards.
import { BackupChain } from '../src/index.js';
import type { JobProgress } from '../src/index.js';
import { DRIVE0_PATTERN, Scratch, hmpWrites, launchWithSocket, qmpOf } from './helpers.js';

const MiB = 1048576;

describe('progress of chain runs', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  it('a throttled full reports as it goes and ends at 100 %; a small incremental reports once, at its end', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const vm = await scratch.launch([{ file: drive0, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    const chain = await BackupChain.open({ qmp: qmpOf(vm), dir: scratch.path('backups'), node: 'drive0' });
    const reports: Array<JobProgress & { node: string }> = [];
    // 64 MiB at 32 MiB/s: about two seconds of polls at 100 ms.
    await chain.full({ speed: 32 * MiB, progressInterval: 100, onProgress: (p) => reports.push(p) });
    expect(reports.length).toBeGreaterThan(3);
    expect(reports.every((p) => p.node === 'drive0' && p.total === 64 * MiB)).toBe(true);
    expect(reports.some((p) => p.current > 0 && p.current < p.total)).toBe(true);
    for (let i = 1; i < reports.length; i++) expect((reports[i] as JobProgress).current).toBeGreaterThanOrEqual((reports[i - 1] as JobProgress).current);
    expect(reports.filter((p) => p.final === true)).toHaveLength(1);
    expect(reports.at(-1)).toMatchObject({ final: true, status: 'concluded', current: 64 * MiB, total: 64 * MiB });

    // 64 KiB dirty: the job ends long before the first poll could see it.
    await hmpWrites(vm, 'drive0', [[0x77, '5M', '64k']]);
    const small: JobProgress[] = [];
    const inc = await chain.incremental({ progressInterval: 60_000, onProgress: (p) => small.push(p) });
    expect(inc.backups[0]).toMatchObject({ bytes: 65536, jobLength: 65536 });
    expect(small.at(-1)).toMatchObject({ final: true, current: 65536, total: 65536 });
    expect(small.filter((p) => p.final === true)).toHaveLength(1);
  });

  it('--progress=json writes JSON lines on stderr that end at 100 %, beside the --json result on stdout', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const { socket } = await launchWithSocket(scratch, drive0);
    const run = await scratch.cli(['full', '--socket', socket, '--dir', scratch.path('backups'), '--node', 'drive0', '--speed', String(32 * MiB), '--progress=json', '--json']).done;
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({ kind: 'full' });
    const lines = run.stderr.trimEnd().split('\n').map((l) => (JSON.parse(l) as { progress: { current: number; total: number; final: boolean; run: { percent: number; done: boolean } } }).progress);
    expect(lines.length).toBeGreaterThan(2);
    expect(lines.some((l) => l.run.percent > 0 && l.run.percent < 100)).toBe(true);
    expect(lines.at(-1)).toMatchObject({ final: true, current: 64 * MiB, total: 64 * MiB, run: { percent: 100, done: true } });
    // --progress json without --json: the result is text, the progress still JSON lines.
    const text = await scratch.cli(['full', '--socket', socket, '--dir', scratch.path('backups2'), '--node', 'drive0', '--progress', 'json']).done;
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^drive0: full /);
    expect(JSON.parse(text.stderr.trimEnd().split('\n').at(-1) as string)).toMatchObject({ progress: { final: true } });
    // Without a terminal and without --progress: nothing on stderr.
    const quiet = await scratch.cli(['full', '--socket', socket, '--dir', scratch.path('backups3'), '--node', 'drive0']).done;
    expect(quiet.code).toBe(0);
    expect(quiet.stderr).toBe('');
  });
});
