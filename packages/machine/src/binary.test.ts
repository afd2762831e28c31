import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { resolveQemuBinary } from './binary.js';
import { QemuBinaryNotFoundError } from './errors.js';

describe('resolveQemuBinary', () => {
  let dir: string;
  let fake: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qmpkit-machine-test-'));
    fake = join(dir, 'qemu-system-x86_64');
    await writeFile(fake, '#!/bin/sh\nexit 0\n');
    await chmod(fake, 0o755);
    await writeFile(join(dir, 'not-executable'), '');
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('the option wins over the environment and PATH', () => {
    expect(resolveQemuBinary(fake, 'QEMU_SYSTEM', 'qemu-system-x86_64', { QEMU_SYSTEM: '/nope', PATH: '' })).toBe(fake);
  });

  test('then the environment variable', () => {
    expect(resolveQemuBinary(undefined, 'QEMU_SYSTEM', 'qemu-system-x86_64', { QEMU_SYSTEM: fake, PATH: '' })).toBe(fake);
  });

  test('then the default name on PATH', () => {
    expect(resolveQemuBinary(undefined, 'QEMU_SYSTEM', 'qemu-system-x86_64', { PATH: `/nonexistent:${dir}` })).toBe(fake);
  });

  test('a bare name in the option is looked up on PATH', () => {
    expect(resolveQemuBinary('qemu-system-x86_64', 'QEMU_SYSTEM', 'x', { PATH: dir })).toBe(fake);
  });

  test('not found is a named error saying where it looked', () => {
    let caught: unknown;
    try {
      resolveQemuBinary(undefined, 'QEMU_SYSTEM', 'qemu-system-x86_64', { PATH: '/nonexistent' });
    } catch (error) {
      caught = error;
    }
    expect(QemuBinaryNotFoundError.isInstance(caught)).toBe(true);
    expect((caught as QemuBinaryNotFoundError).source).toBe('path');
    expect((caught as QemuBinaryNotFoundError).message).toContain('$QEMU_SYSTEM');
  });

  test('a file without execute permission does not count', () => {
    expect(() => resolveQemuBinary(join(dir, 'not-executable'), 'QEMU_SYSTEM', 'x', {})).toThrow(QemuBinaryNotFoundError);
    expect(() => resolveQemuBinary(undefined, 'QEMU_SYSTEM', 'x', { QEMU_SYSTEM: join(dir, 'missing') })).toThrow(/from \$QEMU_SYSTEM/);
  });
});
