// Issue 10: a new full dropped the previous chain from the manifest (its files stayed on disk,
// out of reach), and nothing pruned. Now earlier chains stay restorable until `prune
// --keep-chains` deletes them, and `prune --keep-points` folds the oldest points of the
// current chain into a standalone image; every remaining point restores exactly as before,
// the digests follow the files, and an interrupted prune still verifies and restores.
import { copyFile, cp, readFile, readdir, rename, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { qemuImg } from '@qmpkit/image-tools';
import { BackupChain, digestFile, pruneChain, readManifest, restoreChain, verifyChain } from '../src/index.js';
import type { Manifest, PendingPrune } from '../src/index.js';
import { DRIVE0_PATTERN, Scratch, hmpWrites, launchWithSocket, qmpOf } from './helpers.js';

async function manifestOf(dir: string): Promise<Manifest> {
  return JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest;
}

describe('chain history and prune', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  /** The drive as a backup taken now sees it (QEMU has it open: read with force-share). */
  async function snapshot(drive: string, name: string): Promise<string> {
    const file = scratch.path(name);
    await qemuImg.run(['convert', '-U', '-f', 'qcow2', '-O', 'raw', drive, file]);
    return file;
  }

  async function expectRestores(dir: string, points: ReadonlyArray<{ upTo: string | number; reference: string }>, chain?: string): Promise<void> {
    for (const [i, p] of points.entries()) {
      const out = scratch.path(`check-${Math.random().toString(16).slice(2, 10)}.raw`);
      await restoreChain(join(dir, 'manifest.json'), out, { upTo: p.upTo, format: 'raw', ...(chain ? { chain } : {}) });
      const cmp = await qemuImg.compare(out, p.reference);
      expect({ point: i, upTo: p.upTo, identical: cmp.identical }).toEqual({ point: i, upTo: p.upTo, identical: true });
    }
  }

  it('keeps the replaced chain restorable (status, verify, restore --chain) until prune --keep-chains deletes it', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const { vm, socket } = await launchWithSocket(scratch, drive0);
    const dir = scratch.path('backups');
    const cli = (args: string[]): ReturnType<typeof scratch.cli>['done'] => scratch.cli(args).done;
    expect((await cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0'])).code).toBe(0);
    await hmpWrites(vm, 'drive0', [[0x61, '3M', '64k']]);
    expect((await cli(['incremental', '--socket', socket, '--dir', dir])).code).toBe(0);
    const first = await manifestOf(dir);
    const pointA = await snapshot(drive0, 'a.raw');
    await hmpWrites(vm, 'drive0', [[0x62, '7M', '64k']]);
    expect((await cli(['full', '--socket', socket, '--dir', dir, '--node', 'drive0'])).code).toBe(0);
    const pointB = await snapshot(drive0, 'b.raw');

    const second = await manifestOf(dir);
    expect(second.chainId).not.toBe(first.chainId);
    expect(second.history?.map((c) => [c.chainId, c.drives[0]?.backups.length])).toEqual([[first.chainId, 2]]);
    const id = first.chainId.slice(0, 8);
    const status = await cli(['status', '--dir', dir]);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(new RegExp(`${id}  earlier  2 backups of drive0`));
    const earlier = await cli(['status', '--dir', dir, '--chain', id, '--json']);
    expect(JSON.parse(earlier.stdout)).toMatchObject({ chain: { chainId: first.chainId }, files: [{ state: 'ok' }, { state: 'ok' }] });
    expect((await cli(['verify', '--dir', dir, '--chain', id])).code).toBe(0);
    await expectRestores(dir, [{ upTo: -1, reference: pointA }], id);
    await expectRestores(dir, [{ upTo: -1, reference: pointB }]);
    // The earlier chain's files are the earlier chain's; the current chain has its own.
    expect((await readdir(dir)).filter((f) => f.startsWith(`drive0.${id}.`)).length).toBe(2);

    const pruned = await cli(['prune', '--dir', dir, '--keep-chains', '1', '--json']);
    expect(pruned.code).toBe(0);
    expect(JSON.parse(pruned.stdout)).toMatchObject({ removedChains: [first.chainId], removedFiles: first.drives[0]?.backups.map((b) => b.file), verify: { ok: true } });
    expect((await readdir(dir)).filter((f) => f.startsWith(`drive0.${id}.`))).toEqual([]);
    expect((await manifestOf(dir)).history).toBeUndefined();
    const gone = await cli(['restore', '--dir', dir, '--chain', id, '--output', scratch.path('x.raw')]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/has no chain/);
    await expectRestores(dir, [{ upTo: -1, reference: pointB }]);
  });

  it('prune --keep-points folds the oldest points into a standalone image: every kept point restores as before, the chain continues', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const { vm, socket } = await launchWithSocket(scratch, drive0);
    const dir = scratch.path('backups');
    const chain = await BackupChain.open({ qmp: qmpOf(vm), dir, node: 'drive0' });
    const references: string[] = [];
    await chain.full();
    references.push(await snapshot(drive0, 'p0.raw'));
    // inc, inc, diff, inc, inc: six points, each with writes of its own.
    const kinds = ['incremental', 'incremental', 'differential', 'incremental', 'incremental'] as const;
    for (const [i, kind] of kinds.entries()) {
      await hmpWrites(vm, 'drive0', [[0x70 + i, `${4 + 3 * i}M`, '128k'], [0x90 + i, '1M', '4k']]);
      await (kind === 'differential' ? chain.differential() : chain.incremental());
      references.push(await snapshot(drive0, `p${i + 1}.raw`));
    }
    const before = structuredClone(chain.manifest as Manifest);
    const files = before.drives[0]?.backups.map((b) => b.file) as string[];

    // Keep 3: the oldest kept is the differential, so its base (point 2) stays as the standalone base.
    const result = await chain.prune({ keepPoints: 3 });
    expect(result.verify?.ok).toBe(true);
    expect(result.merged).toEqual([{ node: 'drive0', file: files[2], mergedFrom: [files[1], files[0]] }]);
    expect(result.removedFiles).toEqual([files[0], files[1]]);
    const after = (await manifestOf(dir)).drives[0]?.backups ?? [];
    expect(after.map((b) => b.file)).toEqual(files.slice(2));
    expect(after[0]).toMatchObject({ parent: null, mergedFrom: [files[1], files[0]] });
    // Its digest was recomputed for its new content; the others did not change.
    expect(after[0]?.digest).not.toBe(before.drives[0]?.backups[2]?.digest);
    expect((await digestFile(join(dir, files[2] as string))).digest).toBe(after[0]?.digest);
    expect(after.slice(1).map((b) => b.digest)).toEqual(before.drives[0]?.backups.slice(3).map((b) => b.digest));
    expect((await qemuImg.info(join(dir, files[2] as string), { forceShare: true }))['backing-filename']).toBeUndefined();
    expect((await readdir(dir)).filter((f) => f.endsWith('.qcow2')).sort()).toEqual(files.slice(2).sort());
    await expectRestores(dir, files.slice(2).map((f, i) => ({ upTo: f, reference: references[i + 2] as string })));
    // A negative control: a kept point compared with another point's reference differs.
    const control = scratch.path('control.raw');
    await restoreChain(join(dir, 'manifest.json'), control, { upTo: files[2] as string, format: 'raw' });
    expect((await qemuImg.compare(control, references[1] as string)).identical).toBe(false);

    // The chain continues from its newest backup, untouched by the prune.
    await hmpWrites(vm, 'drive0', [[0xa5, '50M', '64k']]);
    expect((await chain.incremental()).backups[0]).toMatchObject({ kind: 'incremental', parent: files[5], bytes: 65536 });
    // The CLI down to one point: the newest, standalone.
    const cli = await scratch.cli(['prune', '--dir', dir, '--keep-points', '1', '--json']).done;
    expect(cli.code).toBe(0);
    expect(JSON.parse(cli.stdout)).toMatchObject({ verify: { ok: true } });
    expect((await manifestOf(dir)).drives[0]?.backups).toHaveLength(1);
    await hmpWrites(vm, 'drive0', [[0xa6, '51M', '64k']]);
    expect((await scratch.cli(['incremental', '--socket', socket, '--dir', dir]).done).code).toBe(0);
    await vm.shutdown({ timeout: 10_000 });
    expect((await chain.verify({ sources: { drive0 } })).ok).toBe(true);
  });

  it('an interrupted prune verifies and restores at every stage, and the next change to the chain completes it', async () => {
    await scratch.init();
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const { vm } = await launchWithSocket(scratch, drive0);
    const dir = scratch.path('backups');
    const chain = await BackupChain.open({ qmp: qmpOf(vm), dir, node: 'drive0' });
    const references: string[] = [];
    await chain.full();
    references.push(await snapshot(drive0, 'p0.raw'));
    for (const i of [1, 2]) {
      await hmpWrites(vm, 'drive0', [[0x40 + i, `${i * 5}M`, '256k']]);
      await chain.incremental();
      references.push(await snapshot(drive0, `p${i}.raw`));
    }
    const manifest = (await readManifest(join(dir, 'manifest.json'))) as Manifest;
    const files = manifest.drives[0]?.backups.map((b) => b.file) as string[];
    const points = files.map((f, i) => ({ upTo: f, reference: references[i] as string }));

    // What a prune to one point writes, from a real prune of a copy of the directory.
    const copy = scratch.path('copy');
    await cp(dir, copy, { recursive: true });
    const done = await pruneChain(join(copy, 'manifest.json'), { keepPoints: 1 });
    const temp = `${files[2] as string}.prune-0badc0de.tmp`;
    await copyFile(join(copy, files[2] as string), join(dir, temp));
    const newest = done.manifest.drives[0]?.backups[0];
    const prune: PendingPrune = {
      id: '0badc0de-0000-4000-8000-000000000000',
      started: new Date().toISOString(),
      pid: 999_999_999,
      host: hostname(),
      replace: [{ node: 'drive0', file: files[2] as string, temp, digest: newest?.digest as string, fileSize: newest?.fileSize as number }],
      remove: [files[0] as string, files[1] as string],
      drives: done.manifest.drives,
    };
    // Stage 1: the pending prune is recorded, nothing renamed yet.
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ ...manifest, prune }));
    expect((await verifyChain(join(dir, 'manifest.json'), { throwOnFailure: false })).ok).toBe(true);
    await expectRestores(dir, points);
    const status = await scratch.cli(['status', '--dir', dir]).done;
    expect(status.stdout).toMatch(/prune 0badc0de-.* was interrupted/);
    // Stage 2: the standalone image has replaced the newest file; the manifest is not written yet.
    await rename(join(dir, temp), join(dir, files[2] as string));
    expect((await verifyChain(join(dir, 'manifest.json'), { throwOnFailure: false })).ok).toBe(true);
    await expectRestores(dir, points);
    // A file changed in any other way still fails: the prune's digest is accepted only for its file.
    const tampered = structuredClone(prune);
    (tampered.replace[0] as { file: string }).file = files[1] as string;
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ ...manifest, prune: tampered }));
    const wrong = await verifyChain(join(dir, 'manifest.json'), { throwOnFailure: false });
    expect(wrong.ok).toBe(false);
    expect(wrong.failures.join('\n')).toContain(files[2]);
    await writeFile(join(dir, 'manifest.json'), JSON.stringify({ ...manifest, prune }));

    // The next backup completes the prune first, then continues the chain.
    await hmpWrites(vm, 'drive0', [[0x4f, '30M', '64k']]);
    const inc = await chain.incremental();
    expect(inc.backups[0]).toMatchObject({ parent: files[2], bytes: 65536 });
    const final = await manifestOf(dir);
    expect(final.prune).toBeUndefined();
    expect(final.drives[0]?.backups.map((b) => b.file)).toEqual([files[2], inc.backups[0]?.file]);
    expect((await readdir(dir)).filter((f) => f.endsWith('.qcow2') || f.endsWith('.tmp')).sort()).toEqual([files[2], inc.backups[0]?.file].sort());
    await expectRestores(dir, [points[2] as { upTo: string; reference: string }]);
    await vm.shutdown({ timeout: 10_000 });
    expect((await chain.verify({ sources: { drive0 } })).ok).toBe(true);
  });
});

