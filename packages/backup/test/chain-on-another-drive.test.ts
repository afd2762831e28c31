// Issue 9, scenario 1 continued: a chain directory used against a drive that is not the
// chain's (a copy of the directory on another VM, a drive swapped under the same node name,
// a copy of the directory continued elsewhere, a manifest of 0.1) used to layer that
// drive's changes on the chain's backups and reset its bitmap. It is refused, changing
// nothing, with a reason that says which.
import { cp, readFile, readdir, writeFile } from 'node:fs/promises';
import { BackupChain, NewFullBackupRequiredError, listBitmaps } from '../src/index.js';
import type { ChainBrokenReason, Manifest } from '../src/index.js';
import { DRIVE0_PATTERN, DRIVE1_PATTERN, Scratch, hmpWrites, qmpOf } from './helpers.js';

async function refusal(promise: Promise<unknown>): Promise<{ reason: ChainBrokenReason | 'resolved' | 'other'; message: string }> {
  try {
    await promise;
    return { reason: 'resolved', message: '' };
  } catch (error) {
    return NewFullBackupRequiredError.isInstance(error)
      ? { reason: error.reason, message: error.message }
      : { reason: 'other', message: String(error) };
  }
}

async function snapshotDir(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).sort()) out[f] = (await readFile(`${dir}/${f}`)).toString('base64').length.toString();
  out['manifest.json'] = await readFile(`${dir}/manifest.json`, 'utf8');
  return out;
}

describe('a chain on a drive that is not its own', () => {
  const scratch = new Scratch();
  afterEach(() => scratch.cleanup());

  it('a directory copied to another VM is refused there, and that VM\'s bitmaps are untouched', async () => {
    await scratch.init();
    const diskA = await scratch.image('vm-a.qcow2', '64M', DRIVE0_PATTERN);
    const diskB = await scratch.image('vm-b.qcow2', '64M', DRIVE1_PATTERN);
    const vmA = await scratch.launch([{ file: diskA, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    const vmB = await scratch.launch([{ file: diskB, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    const dirA = scratch.path('backups-a');
    await (await BackupChain.open({ qmp: qmpOf(vmA), dir: dirA, node: 'drive0' })).full();
    // VM B has a chain of its own on the same node name, which must not be disturbed.
    const own = await BackupChain.open({ qmp: qmpOf(vmB), dir: scratch.path('backups-b'), node: 'drive0' });
    await own.full();
    await hmpWrites(vmB, 'drive0', [[0x77, '3M', '64k']]);

    const copied = scratch.path('copied');
    await cp(dirA, copied, { recursive: true });
    const before = await snapshotDir(copied);
    const bitmapsBefore = await listBitmaps(qmpOf(vmB), 'drive0');
    const onB = await BackupChain.open({ qmp: qmpOf(vmB), dir: copied, node: 'drive0' });
    expect((await onB.check())[0]).toMatchObject({ ok: false, reason: 'drive-changed' });
    const refused = await refusal(onB.incremental());
    expect(refused.reason).toBe('drive-changed');
    expect(refused.message).toContain(diskB);
    expect(refused.message).toContain(diskA);
    expect(await snapshotDir(copied)).toEqual(before);
    expect(await listBitmaps(qmpOf(vmB), 'drive0')).toEqual(bitmapsBefore);
    expect((await own.incremental()).backups[0]?.bytes).toBe(65536);
  });

  it('a drive swapped under the same node name is refused; the chain\'s own drive, back in place, continues', async () => {
    await scratch.init();
    const disk = await scratch.image('disk.qcow2', '64M', DRIVE0_PATTERN);
    const other = await scratch.image('other.qcow2', '64M', DRIVE1_PATTERN);
    let vm = await scratch.launch([{ file: disk, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    const dir = scratch.path('backups');
    let chain = await BackupChain.open({ qmp: qmpOf(vm), dir, node: 'drive0' });
    await chain.full();
    await vm.shutdown({ timeout: 10_000 });

    vm = await scratch.launch([{ file: other, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    chain = await BackupChain.open({ qmp: qmpOf(vm), dir, node: 'drive0' });
    expect((await refusal(chain.incremental())).reason).toBe('drive-changed');
    await vm.shutdown({ timeout: 10_000 });

    // The persistent bitmap and mark travelled with the chain's own image: it continues.
    vm = await scratch.launch([{ file: disk, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    chain = await BackupChain.open({ qmp: qmpOf(vm), dir, node: 'drive0' });
    await hmpWrites(vm, 'drive0', [[0x66, '5M', '64k']]);
    expect((await chain.incremental()).backups[0]?.bytes).toBe(65536);
    await vm.shutdown({ timeout: 10_000 });
    expect((await chain.verify({ sources: { drive0: disk } })).ok).toBe(true);
  });

  it('a copy of the directory that another copy continued is refused as stale', async () => {
    await scratch.init();
    const disk = await scratch.image('disk.qcow2', '64M', DRIVE0_PATTERN);
    const vm = await scratch.launch([{ file: disk, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    const dir = scratch.path('backups');
    const chain = await BackupChain.open({ qmp: qmpOf(vm), dir, node: 'drive0' });
    await chain.full();
    const copy = scratch.path('copy');
    await cp(dir, copy, { recursive: true });
    await hmpWrites(vm, 'drive0', [[0x12, '1M', '64k']]);
    await chain.incremental();
    await hmpWrites(vm, 'drive0', [[0x13, '2M', '64k']]);
    // The copy still names the full as its last backup; the bitmap was reset since.
    const stale = await BackupChain.open({ qmp: qmpOf(vm), dir: copy, node: 'drive0' });
    const refused = await refusal(stale.incremental());
    expect(refused.reason).toBe('bitmap-stale');
    expect(refused.message).toContain(chain.drive?.mark?.bitmap);
    expect((await chain.incremental()).backups[0]?.bytes).toBe(65536);
  });

  it('a manifest written by 0.1 (shared bitmap) is refused as legacy, and a new full leaves the shared bitmap alone', async () => {
    await scratch.init();
    const disk = await scratch.image('disk.qcow2', '64M', DRIVE0_PATTERN);
    const vm = await scratch.launch([{ file: disk, format: 'qcow2', id: 'drive0', nodeName: 'node0' }]);
    const qmp = qmpOf(vm);
    const dir = scratch.path('backups');
    const chain = await BackupChain.open({ qmp, dir, node: 'drive0' });
    await chain.full();
    // What 0.1 wrote: version 1, the shared bitmap, no marks or digests; and its bitmap on the drive.
    const m = JSON.parse(await readFile(chain.manifestPath, 'utf8')) as Manifest & Record<string, unknown>;
    const drive = m.drives[0] as Manifest['drives'][number] & Record<string, unknown>;
    delete drive['mark'];
    delete drive['resizes'];
    delete drive['image'];
    for (const b of drive.backups) {
      delete b.digest;
      delete b.fileSize;
    }
    await writeFile(chain.manifestPath, JSON.stringify({ ...m, version: 1, drives: [{ ...drive, bitmap: 'qmpkit-backup' }] }));
    await qmp.execute('block-dirty-bitmap-add' as never, { node: 'drive0', name: 'qmpkit-backup', persistent: true } as never);

    const legacy = await BackupChain.open({ qmp, dir, node: 'drive0' });
    const refused = await refusal(legacy.incremental());
    expect(refused.reason).toBe('legacy-bitmap');
    expect(refused.message).toMatch(/0\.1/);
    // Its backups still verify (without digests) and restore.
    expect((await legacy.verify()).images.map((i) => i.digest)).toEqual(['unrecorded']);
    const fresh = await legacy.incremental({ fullIfBroken: true });
    expect(fresh.kind).toBe('full');
    expect((await listBitmaps(qmp, 'drive0')).map((b) => b.name)).toContain('qmpkit-backup');
    expect(legacy.manifest?.version).toBe(2);
  });
});
