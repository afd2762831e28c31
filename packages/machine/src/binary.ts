import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, isAbsolute, join, resolve } from 'node:path';

import { QemuBinaryNotFoundError } from './errors.js';

function isExecutableFile(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function findOnPath(name: string, pathVariable: string | undefined): string | undefined {
  for (const dir of (pathVariable ?? '').split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, name);
    if (isExecutableFile(candidate)) return candidate;
  }
  return undefined;
}

/**
 * Picks the binary to run: an explicit option, else the environment variable, else the
 * default name looked up on PATH. A value containing a `/` is taken as a path; a bare name
 * is looked up on PATH. The result is an absolute path, so the argv in errors is unambiguous.
 */
export function resolveQemuBinary(
  explicit: string | undefined,
  environmentVariable: string,
  defaultName: string,
  env: NodeJS.ProcessEnv = process.env,
): string {
  const fromEnv = env[environmentVariable];
  const [wanted, source] =
    explicit !== undefined
      ? ([explicit, 'option'] as const)
      : fromEnv !== undefined && fromEnv !== ''
        ? ([fromEnv, 'environment'] as const)
        : ([defaultName, 'path'] as const);
  const found = wanted.includes('/')
    ? isExecutableFile(wanted)
      ? isAbsolute(wanted)
        ? wanted
        : resolve(wanted)
      : undefined
    : findOnPath(wanted, env['PATH']);
  if (found === undefined) throw new QemuBinaryNotFoundError(wanted, source, environmentVariable);
  return found;
}
