// Issue 9: `verify` without a source said "verified" for a backup with a flipped byte in a data
// cluster (qemu-img check looks at metadata only, and nothing was recorded to compare with),
// and `status` said "can continue" with an earlier file of the chain missing. Every image's
// digest is now recorded; verify, restore and the chain's checks use what was recorded.
import { cp, open, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { qemuImg } from '@qmpkit/image-tools';
import { BackupChain, NewFullBackupRequiredError, VerifyError, readManifest, restoreChain, verifyChain } from '../src/index.js';
import { DRIVE0_PATTERN, Scratch, WRITES_A, WRITES_B, hmpWrites, launchWithSocket } from './helpers.js';

/** Flip one byte inside the first cluster of data the image itself holds (not its metadata). */
async function flipDataByte(file: string): Promise<number> {
  const extent = (await qemuImg.map(file)).find((e) => e.data && e.depth === 0 && e.offset !== undefined);
  if (!extent?.offset) throw new Error(`${file} holds no data cluster`);
  const at = extent.offset + 100;
  const handle = await open(file, 'r+');
  try {
    const byte = Buffer.alloc(1);
    await handle.read(byte, 0, 1, at);
    byte[0] = (byte[0] as number) ^ 0x01;
    await handle.write(byte, 0, 1, at);
  } finally {
    await handle.close();
  }
  return at;
}

describe('damaged backup files', () => {
  const scratch = new Scratch();
  let dir = '';
  let drive0 = '';
  let files: string[] = [];

  beforeAll(async () => {
    await scratch.init();
    drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    const { vm } = await launchWithSocket(scratch, drive0);
    dir = scratch.path('backups');
    const chain = await BackupChain.open({ qmp: vm.qmp, dir, node: 'drive0' });
    await chain.full();
    await hmpWrites(vm, 'drive0', WRITES_A);
    await chain.incremental();
    await hmpWrites(vm, 'drive0', WRITES_B);
    await chain.incremental();
    files = chain.backups.map((b) => b.file);
    await vm.shutdown({ timeout: 10_000 });
  });
  afterAll(() => scratch.cleanup());

  /** A copy of the intact chain to damage. */
  async function copyOfChain(name: string): Promise<string> {
    const copy = scratch.path(name);
    await cp(dir, copy, { recursive: true });
    return copy;
  }

  it('the intact chain verifies without a source, and every file has its digest recorded (the control)', async () => {
    const manifest = await readManifest(join(dir, 'manifest.json'));
    expect(manifest?.drives[0]?.backups.every((b) => /^sha256:[0-9a-f]{64}$/.test(b.digest ?? '') && b.fileSize !== undefined)).toBe(true);
    const report = await verifyChain(join(dir, 'manifest.json'));
    expect(report.images.map((i) => [i.digest, i.check])).toEqual(files.map(() => ['ok', 'clean']));
    const cli = await scratch.cli(['verify', '--dir', dir]).done;
    expect(cli.code).toBe(0);
    expect(cli.stdout).toMatch(/verified$/m);
  });

  it.each([
    ['the full', 0],
    ['an incremental', 2],
  ])('a byte flipped in a data cluster of %s fails verify and restore, naming the file', async (label, index) => {
    const copy = await copyOfChain(`flipped-${index}`);
    const file = files[index] as string;
    await flipDataByte(join(copy, file));
    // qemu-img check alone does not see it: only the digest does.
    expect((await qemuImg.check(join(copy, file))).status).toBe('clean');

    const manifestPath = join(copy, 'manifest.json');
    const report = await verifyChain(manifestPath, { throwOnFailure: false });
    expect(report.ok).toBe(false);
    expect(report.failures).toEqual([expect.stringContaining(`${file}: its content changed since it was made`)]);
    expect(report.images.find((i) => i.file === file)?.digest).toBe('mismatch');

    const cli = await scratch.cli(['verify', '--dir', copy]).done;
    expect(cli.code).toBe(1);
    expect(cli.stdout).toMatch(new RegExp(`^FAIL ${file.replace(/\./g, '\\.')} \\(digest mismatch`, 'm'));
    expect(cli.stdout + cli.stderr).not.toMatch(/QemuImgError|    at /);

    // A restore that reads the file refuses before writing anything; one that does not, works.
    const output = scratch.path(`restored-${index}.qcow2`);
    const error = await restoreChain(manifestPath, output).catch((e: unknown) => e);
    expect(VerifyError.isInstance(error)).toBe(true);
    expect((error as VerifyError).failures.join('\n')).toContain(file);
    await expect(stat(output)).rejects.toMatchObject({ code: 'ENOENT' });
    if (index > 0) await restoreChain(manifestPath, output, { upTo: index - 1 });
    void label;
  });

  it('a missing middle file fails verify and restore naming it, and the chain refuses to grow', async () => {
    const copy = await copyOfChain('missing-middle');
    const middle = files[1] as string;
    await rm(join(copy, middle));
    const manifestPath = join(copy, 'manifest.json');
    const report = await verifyChain(manifestPath, { throwOnFailure: false, sources: { drive0 } });
    expect(report.failures).toEqual([
      `${middle}: missing`,
      expect.stringMatching(new RegExp(`^${(files[2] as string).replace(/\./g, '\\.')}: qemu-img check cannot read it`)),
      expect.stringContaining(`was not compared with the drive ${drive0}`),
    ]);
    expect(report.images.map((i) => i.check)).toEqual(['clean', 'missing', 'unreadable']);

    const cli = await scratch.cli(['verify', '--dir', copy]).done;
    expect(cli.code).toBe(1);
    expect(cli.stdout).toMatch(new RegExp(`^FAIL ${middle.replace(/\./g, '\\.')} \\(digest missing, check: missing\\)`, 'm'));
    expect(cli.stdout + cli.stderr).not.toMatch(/QemuImgError|    at /);

    const error = await restoreChain(manifestPath, scratch.path('r.qcow2')).catch((e: unknown) => e);
    expect((error as VerifyError).failures).toContain(`${middle}: missing`);
    await restoreChain(manifestPath, scratch.path('r0.qcow2'), { upTo: 0 });

    // status without QEMU sees it; with QEMU the chain refuses to grow.
    const status = await scratch.cli(['status', '--dir', copy]).done;
    expect(status.code).toBe(3);
    expect(status.stdout).toMatch(new RegExp(`${middle.replace(/\./g, '\\.')} .*MISSING`));
    const { vm } = await launchWithSocket(scratch, drive0);
    const live = await BackupChain.open({ qmp: vm.qmp, dir: copy, node: 'drive0' });
    const refused = await live.incremental().catch((e: unknown) => e);
    expect(NewFullBackupRequiredError.isInstance(refused)).toBe(true);
    expect((refused as NewFullBackupRequiredError).reason).toBe('backup-damaged');
    expect((refused as Error).message).toContain(middle);
  });
});
