// mapImageData and setBackingFile against qemu-img on the same files: the in-process map must
// list exactly qemu-img map's data extents, and the rewritten header must be byte for byte the
// one `qemu-img rebase -u` writes.
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';

import { compareImages, createQcow2Image, mapImageData, qemuImg, qemuIo, setBackingFile } from '../src/index.js';
import type { DataExtent } from '../src/index.js';
import { createScratch, type Scratch } from './scratch.js';

let scratch: Scratch;
beforeAll(() => {
  scratch = createScratch();
});
afterAll(() => {
  scratch.remove();
});

async function qemuImgData(file: string, format = 'qcow2'): Promise<DataExtent[]> {
  const extents: DataExtent[] = [];
  for (const e of await qemuImg.map(file, { format })) {
    if (!e.data) continue;
    const last = extents[extents.length - 1];
    if (last && last.depth === e.depth && last.start + last.length === e.start) last.length += e.length;
    else extents.push({ start: e.start, length: e.length, depth: e.depth });
  }
  return extents;
}

describe('mapImageData', () => {
  it('lists the data extents of a chain as qemu-img map does, without zero or unallocated clusters', async () => {
    const base = scratch.path('map-base.qcow2');
    await createQcow2Image(base, { size: '8M' });
    await qemuIo.run(base, ['write -P0x11 0 128k', 'write -P0x12 1M 64k', 'write -P0x13 7M 1M'], { format: 'qcow2' });
    const top = scratch.path('map-top.qcow2');
    await createQcow2Image(top, { size: '8M', backingFile: base, backingFormat: 'qcow2' });
    // Data over the base, a zero cluster hiding base data, new data, a partial cluster.
    await qemuIo.run(top, ['write -P0x21 64k 64k', 'write -z 1M 64k', 'write -P0x22 3M 192k', 'write -P0x23 7M 512'], { format: 'qcow2' });

    const ours = await mapImageData(top, { format: 'qcow2' });
    expect(ours.engine).toBe('in-process');
    expect(ours.extents).toEqual(await qemuImgData(top));
    // The zero cluster at 1M is no data; base data shows through at depth 1 elsewhere.
    expect(ours.extents).toEqual(
      expect.arrayContaining([
        { start: 0, length: 65536, depth: 1 },
        { start: 65536, length: 65536, depth: 0 },
      ]),
    );
    expect(ours.extents.some((e) => e.start <= 1048576 && e.start + e.length > 1048576)).toBe(false);
    expect((await mapImageData(base, { format: 'qcow2' })).extents).toEqual(await qemuImgData(base));
  });

  it('hands raw images to qemu-img, which sees their holes', async () => {
    const raw = scratch.path('map.raw');
    writeFileSync(raw, Buffer.alloc(0));
    await qemuImg.resize(raw, '4M', { format: 'raw' });
    await qemuIo.run(raw, ['write -P0x31 1M 64k'], { format: 'raw' });
    const map = await mapImageData(raw, { format: 'raw' });
    expect(map.engine).toBe('qemu-img');
    expect(map.fallbackReason).toMatch(/raw/);
    expect(map.extents).toEqual(await qemuImgData(raw, 'raw'));
    expect(map.extents).toContainEqual({ start: 1048576, length: 65536, depth: 0 });
  });
});

describe('setBackingFile', () => {
  it('writes the header qemu-img rebase -u writes, for images from createQcow2Image and qemu-img', async () => {
    const base = scratch.path('rb-base.qcow2');
    await qemuImg.create(base, { format: 'qcow2', size: '4M' });
    const other = scratch.path('rb-other.qcow2');
    await qemuImg.create(other, { format: 'qcow2', size: '4M' });
    const sources: Array<[string, () => Promise<void>]> = [
      ['in-process, 64k clusters', () => createQcow2Image(scratch.path('rb-src.qcow2'), { size: '4M', overwrite: true })],
      ['in-process, 4k clusters (no feature table)', () => createQcow2Image(scratch.path('rb-src.qcow2'), { size: '4M', clusterSize: '4k', overwrite: true })],
      ['qemu-img create', () => qemuImg.create(scratch.path('rb-src.qcow2'), { format: 'qcow2', size: '4M' })],
      ['qemu-img create with a backing file already', () => qemuImg.create(scratch.path('rb-src.qcow2'), { format: 'qcow2', size: '4M', backingFile: other, backingFormat: 'qcow2' })],
    ];
    for (const [what, make] of sources) {
      await make();
      const src = scratch.path('rb-src.qcow2');
      await qemuIo.run(src, ['write -P0x41 0 64k', 'write -P0x42 2M 64k'], { format: 'qcow2' });
      const ours = scratch.path('rb-ours.qcow2');
      const theirs = scratch.path('rb-theirs.qcow2');
      copyFileSync(src, ours);
      copyFileSync(src, theirs);
      expect([what, await setBackingFile(ours, { file: base, format: 'qcow2' })]).toEqual([what, 'in-process']);
      await qemuImg.rebase(theirs, { format: 'qcow2', unsafe: true, backingFile: base, backingFormat: 'qcow2' });
      expect([what, readFileSync(ours).equals(readFileSync(theirs))]).toEqual([what, true]);
      const info = await qemuImg.info(ours);
      expect(info['backing-filename']).toBe(base);
      expect((await compareImages(ours, theirs, { formatA: 'qcow2', formatB: 'qcow2' })).identical).toBe(true);
    }
  });

  it('hands a version 2 image to qemu-img', async () => {
    const base = scratch.path('v2-base.qcow2');
    await qemuImg.create(base, { format: 'qcow2', size: '4M' });
    const v2 = scratch.path('v2.qcow2');
    await qemuImg.create(v2, { format: 'qcow2', size: '4M', options: { compat: '0.10' } });
    expect(await setBackingFile(v2, { file: base, format: 'qcow2' })).toBe('qemu-img');
    expect((await qemuImg.info(v2))['backing-filename']).toBe(base);
  });
});
