import { spawn } from 'node:child_process';

import type { ToolFailureReason } from './errors.js';

/** Options every call accepts. */
export interface CallOptions {
  /** Kill the tool and fail after this many milliseconds. */
  timeout?: number;
  /** Kill the tool and fail when this signal aborts. */
  signal?: AbortSignal;
}

export interface ProcessResult {
  binary: string;
  argv: readonly string[];
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Set when the run did not reach a normal exit (or signal not sent by us). */
  failure: { reason: Exclude<ToolFailureReason, 'exit' | 'output'>; message: string; cause?: unknown } | undefined;
}

/**
 * Spawn `binary argv...` directly (no shell), collect its output and report how it ended.
 * Never rejects: the callers turn a result into their own error class with the full details.
 */
export function runProcess(binary: string, argv: readonly string[], options: CallOptions = {}): Promise<ProcessResult> {
  const { timeout, signal } = options;
  const base = { binary, argv };

  if (signal?.aborted) {
    return Promise.resolve({
      ...base,
      exitCode: null,
      signal: null,
      stdout: '',
      stderr: '',
      failure: { reason: 'abort', message: 'aborted before start', cause: signal.reason },
    });
  }

  return new Promise<ProcessResult>((resolve) => {
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let failure: ProcessResult['failure'];
    let settled = false;
    let timer: NodeJS.Timeout | undefined;

    const child = spawn(binary, argv, {
      stdio: ['ignore', 'pipe', 'pipe'],
      shell: false,
      windowsHide: true,
    });

    const kill = (reason: 'timeout' | 'abort', message: string, cause?: unknown): void => {
      if (failure === undefined) failure = cause === undefined ? { reason, message } : { reason, message, cause };
      // SIGKILL: qemu-img/qemu-io hold no state worth a graceful exit, and a tool stuck in I/O
      // may ignore SIGTERM.
      child.kill('SIGKILL');
    };

    const onAbort = (): void => kill('abort', 'aborted', signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    if (timeout !== undefined) {
      timer = setTimeout(() => kill('timeout', `timed out after ${timeout} ms`), timeout);
    }

    const finish = (exitCode: number | null, exitSignal: NodeJS.Signals | null): void => {
      if (settled) return;
      settled = true;
      if (timer !== undefined) clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      resolve({
        ...base,
        exitCode,
        signal: exitSignal,
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
        failure: failure ?? (exitSignal !== null ? { reason: 'signal', message: `killed by ${exitSignal}` } : undefined),
      });
    };

    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.on('error', (error: NodeJS.ErrnoException) => {
      // 'error' without a later 'close' happens when the binary cannot be spawned at all.
      if (failure === undefined) {
        failure = { reason: 'spawn', message: `cannot start ${binary}: ${error.message}`, cause: error };
      }
      if (child.pid === undefined) finish(null, null);
    });
    // 'close' (not 'exit') so all output has been read before we resolve.
    child.on('close', (code, sig) => finish(code, sig));
  });
}
