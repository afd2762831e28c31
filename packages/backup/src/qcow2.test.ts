import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qemuImg, qemuIo } from '@qmpkit/image-tools';
import { MAX_INPROCESS_QCOW2_SIZE, canCreateInProcess, createQcow2 } from './qcow2.js';

describe('createQcow2', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qmpkit-backup-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it.each([
    ['64 MiB', 64 * 1024 * 1024],
    ['1 GiB', 1024 ** 3],
    ['65 MiB (not a multiple of an L2 table)', 65 * 1024 * 1024],
    ['3 TiB', 3 * 1024 ** 4],
  ])('writes an image qemu-img accepts as clean: %s', async (_label, size) => {
    const file = join(dir, `plain-${size}.qcow2`);
    await createQcow2(file, { size });
    const info = await qemuImg.info(file);
    expect(info).toMatchObject({ format: 'qcow2', 'virtual-size': size, 'cluster-size': 65536 });
    expect(info['backing-filename']).toBeUndefined();
    expect((await qemuImg.check(file)).status).toBe('clean');
    // Same layout as qemu-img's own: the file ends right after the L1 table.
    const reference = join(dir, `ref-${size}.qcow2`);
    await qemuImg.create(reference, { format: 'qcow2', size });
    expect((await stat(file)).size).toBe((await stat(reference)).size);
  });

  it('records the backing file and its format, and reads through to it', async () => {
    const base = join(dir, 'base.qcow2');
    await qemuImg.create(base, { format: 'qcow2', size: '16M' });
    await qemuIo.run(base, ['write -P0x41 1M 64k'], { format: 'qcow2' });
    const top = join(dir, 'top.qcow2');
    await createQcow2(top, { size: 16 * 1024 * 1024, backingFile: 'base.qcow2', backingFormat: 'qcow2' });
    const info = await qemuImg.info(top);
    expect(info).toMatchObject({ 'backing-filename': 'base.qcow2', 'backing-filename-format': 'qcow2' });
    expect((await qemuImg.check(top)).status).toBe('clean');
    await qemuIo.run(top, ['read -P0x41 1M 64k', 'write -P0x42 2M 64k'], { format: 'qcow2' });
    expect((await qemuImg.check(top)).status).toBe('clean');
    expect((await qemuImg.compare(top, base)).identical).toBe(false);
  });

  it('refuses to replace an existing file', async () => {
    const file = join(dir, 'twice.qcow2');
    await createQcow2(file, { size: 1024 * 1024 });
    await expect(createQcow2(file, { size: 1024 * 1024 })).rejects.toMatchObject({ code: 'EEXIST' });
  });

  it('leaves what it cannot lay out to qemu-img', () => {
    expect(canCreateInProcess({ size: MAX_INPROCESS_QCOW2_SIZE })).toBe(true);
    expect(canCreateInProcess({ size: MAX_INPROCESS_QCOW2_SIZE + 512 })).toBe(false);
    expect(canCreateInProcess({ size: 1000 })).toBe(false);
    expect(canCreateInProcess({ size: 4096, backingFile: 'x'.repeat(1024) })).toBe(false);
    expect(() => createQcow2(join(dir, 'never'), { size: 0 })).rejects.toThrow(RangeError);
  });
});
