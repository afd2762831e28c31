import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { qemuImg, type ImageInfo } from '@qmpkit/image-tools';
import { QemuMachine } from '@qmpkit/machine';

import { createImageInQemu } from '../src/sdk-gaps.js';

// The cases create their backup targets through QEMU instead of `qemu-img create`; these
// images must be what qemu-img would have made, or the cases would test something else.

let dir: string;
let vm: QemuMachine;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qmpkit-conformance-gaps-'));
  vm = new QemuMachine({ tmpDir: dir, logFile: join(dir, 'qemu.log') });
  await vm.launch({ timeout: 30_000 });
});

afterAll(async () => {
  await vm?.shutdown({ timeout: 10_000 });
  await rm(dir, { recursive: true, force: true });
});

/** The parts of `qemu-img info` that describe how an image was created. */
function shape(info: ImageInfo): Record<string, unknown> {
  const specific = info['format-specific'];
  return {
    format: info.format,
    virtualSize: info['virtual-size'],
    clusterSize: info['cluster-size'],
    backing: info['backing-filename'],
    backingFormat: info['backing-filename-format'],
    specific: specific?.type === 'qcow2' ? { ...specific.data } : specific,
  };
}

describe('createImageInQemu', () => {
  it.each([
    ['64M with a backing file', { size: '64M', backing: true }],
    ['65M with a backing file', { size: '65M', backing: true }],
    ['64M with 128k clusters, no backing file', { size: '64M', clusterSize: '128k' }],
  ] as const)('makes the image qemu-img create makes: %s', async (_, spec) => {
    const base = join(dir, 'base.qcow2');
    await qemuImg.create(base, { format: 'qcow2', size: '64M' });
    const viaTool = join(dir, `tool-${spec.size}-${'clusterSize' in spec ? 'c' : 'b'}.qcow2`);
    const viaQemu = join(dir, `qemu-${spec.size}-${'clusterSize' in spec ? 'c' : 'b'}.qcow2`);
    await qemuImg.create(viaTool, {
      format: 'qcow2',
      size: spec.size,
      ...('backing' in spec ? { backingFile: base, backingFormat: 'qcow2' } : {}),
      ...('clusterSize' in spec ? { options: { cluster_size: spec.clusterSize } } : {}),
    });
    await createImageInQemu(vm.qmp, {
      filename: viaQemu,
      size: spec.size === '64M' ? 64 * 1048576 : 65 * 1048576,
      ...('backing' in spec ? { backingFile: base, backingFormat: 'qcow2' as const } : {}),
      ...('clusterSize' in spec ? { clusterSize: 131072 } : {}),
    });
    const [tool, qemu] = await Promise.all([qemuImg.info(viaTool), qemuImg.info(viaQemu)]);
    expect(shape(qemu)).toEqual(shape(tool));
    expect(shape(qemu)['virtualSize']).toBe(spec.size === '64M' ? 67108864 : 68157440);
    if ('backing' in spec) expect(shape(qemu)['backing']).toBe(base);
    else expect(shape(qemu)['clusterSize']).toBe(131072);
    // Both are empty overlays of the same base: identical content.
    expect((await qemuImg.compare(viaTool, viaQemu, { formatA: 'qcow2', formatB: 'qcow2' })).identical).toBe(true);
    // The jobs' events were taken by the helper, none is left for a later "no events" check.
    expect(vm.qmp.events.drain()).toEqual([]);
  });

  it('reports a failed creation with the reason and leaves no job or node behind', async () => {
    const qmp = vm.qmp;
    const nodesBefore = await qmp.execute('query-named-block-nodes', { flat: true });
    await expect(
      createImageInQemu(qmp, { filename: join(dir, 'no-such-dir', 'x.qcow2'), size: 1048576 }),
    ).rejects.toThrow(/ENOENT|No such file or directory/);
    // QEMU's own refusal (a size it cannot take) comes back as ImageCreateError with its reason.
    await expect(createImageInQemu(qmp, { filename: join(dir, 'odd.qcow2'), size: 1048576, clusterSize: 1000 })).rejects.toThrow(
      /creating .*odd\.qcow2 in QEMU failed \(blockdev-create job .*\): .*[Cc]luster size/,
    );
    expect(await qmp.execute('query-jobs')).toEqual([]);
    const nodes = await qmp.execute('query-named-block-nodes', { flat: true });
    expect(nodes.length).toBe(nodesBefore.length);
    expect(qmp.events.drain()).toEqual([]);
    expect(await readFile(join(dir, 'qemu.log'), 'utf8')).not.toMatch(/assert|abort/i);
  });
});
