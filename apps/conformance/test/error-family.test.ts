import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { QmpClient } from '@qmpkit/client';
import { errorKind, isQmpkitError } from '@qmpkit/errors';
import { qemuImg } from '@qmpkit/image-tools';
import { QemuMachine } from '@qmpkit/machine';

import { CaseTimeoutError } from '../src/index.js';

// The packages' own timeouts, as a caller meets them against the real QEMU and its tools: one
// check, isQmpkitError(error, 'timeout'), handles them all, and a failure of another kind is not
// taken for one.

function failureOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => new Error('expected a failure'),
    (error: unknown) => error,
  );
}

test('timeouts of the client, image-tools, machine and the app answer one check', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'qmpkit-conformance-error-family-'));
  const vm = new QemuMachine({ tmpDir: dir });
  try {
    await vm.launch({ timeout: 30_000 });
    const timeouts = [
      // No QEMU ever listens there: connect() retries until its deadline.
      await failureOf(QmpClient.connect(join(dir, 'nobody.sock'), { connectTimeout: 50 })),
      // qemu-img cannot even load its libraries in 1 ms: killed at its timeout.
      await failureOf(qemuImg.create(join(dir, 'a.qcow2'), { format: 'qcow2', size: '64M', timeout: 1 })),
      // The machine keeps running.
      await failureOf(vm.waitForExit({ timeout: 20 })),
      new CaseTimeoutError('some case', 10),
    ];
    expect(timeouts.map((e) => (e as Error).name)).toEqual(['QmpTimeoutError', 'QemuImgError', 'MachineTimeoutError', 'CaseTimeoutError']);
    for (const error of timeouts) expect(isQmpkitError(error, 'timeout')).toBe(true);

    // Failures of other kinds, from the same packages.
    const refused = await failureOf(vm.qmp.execute('device_del', { id: 'no-such-device' }));
    const missing = await failureOf(qemuImg.info(join(dir, 'missing.qcow2')));
    expect([errorKind(refused), errorKind(missing)]).toEqual(['qemu', 'tool']);
    for (const error of [refused, missing]) {
      expect(isQmpkitError(error)).toBe(true);
      expect(isQmpkitError(error, 'timeout')).toBe(false);
    }
  } finally {
    await vm.shutdown({ timeout: 10_000 });
    await rm(dir, { recursive: true, force: true });
  }
});
