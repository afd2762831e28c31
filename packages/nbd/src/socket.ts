import { createConnection, type OnReadOpts, type Socket } from 'node:net';
import { NbdAbortError, NbdConnectionError, NbdTimeoutError } from './errors.js';

/** Where the server listens: a unix socket path, `{ path }`, or `{ host, port }` for TCP. */
export type NbdTarget = string | { path: string } | { host: string; port?: number };

/** The IANA port of NBD. */
export const NBD_DEFAULT_PORT = 10809;

export function describeTarget(target: NbdTarget): string {
  if (typeof target === 'string') return target;
  if ('path' in target) return target.path;
  return `${target.host}:${target.port ?? NBD_DEFAULT_PORT}`;
}

// A server that was just started (qemu-nbd, a QEMU whose nbd-server-start just returned)
// may not have its socket yet, or not listening: those two errors are retried until the
// deadline, quickly at first, because each retry costs only a failed connect().
const RETRYABLE = new Set(['ENOENT', 'ECONNREFUSED']);
const FIRST_RETRY_DELAY = 1;
const MAX_RETRY_DELAY = 20;

function connectOnce(target: NbdTarget, onread: OnReadOpts): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = typeof target === 'string' || 'path' in target
      ? createConnection({ path: typeof target === 'string' ? target : target.path, onread })
      : createConnection({ host: target.host, port: target.port ?? NBD_DEFAULT_PORT, onread });
    const onError = (error: Error): void => {
      socket.off('connect', onConnect);
      socket.destroy();
      reject(error);
    };
    const onConnect = (): void => {
      socket.off('error', onError);
      resolve(socket);
    };
    socket.once('error', onError);
    socket.once('connect', onConnect);
  });
}

/**
 * Connects to `target` with `onread` (the socket reads into buffers the connection chooses),
 * retrying while the socket is missing or refusing, until `deadline` (epoch ms).
 */
export async function openSocket(
  target: NbdTarget,
  onread: OnReadOpts,
  deadline: number,
  timeout: number,
  signal: AbortSignal | undefined,
): Promise<Socket> {
  const operation = `connect to ${describeTarget(target)}`;
  let wait = FIRST_RETRY_DELAY;
  for (;;) {
    if (signal?.aborted) throw new NbdAbortError(operation, signal.reason);
    let socket: Socket;
    try {
      socket = await withDeadline(connectOnce(target, onread), deadline, timeout, signal, operation, (s) => s.destroy());
      return socket;
    } catch (error) {
      if (NbdTimeoutError.isInstance(error) || NbdAbortError.isInstance(error)) throw error;
      const code = (error as NodeJS.ErrnoException).code ?? '';
      if (!RETRYABLE.has(code)) {
        throw new NbdConnectionError(`cannot ${operation}: ${(error as Error).message}`, { cause: error });
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new NbdTimeoutError(operation, timeout, { cause: error });
      await pause(Math.min(wait, remaining), signal, operation);
      wait = Math.min(wait * 2, MAX_RETRY_DELAY);
    }
  }
}

function pause(ms: number, signal: AbortSignal | undefined, operation: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(new NbdAbortError(operation, signal?.reason));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Settles with `promise`, or rejects with `NbdTimeoutError` at `deadline` (epoch ms; none when
 * undefined) or `NbdAbortError` on abort. A result arriving too late goes to `dispose`.
 */
export function withDeadline<T>(
  promise: Promise<T>,
  deadline: number | undefined,
  timeout: number,
  signal: AbortSignal | undefined,
  operation: string,
  dispose?: (value: T) => void,
): Promise<T> {
  if (deadline === undefined && signal === undefined) return promise;
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const finish = (): boolean => {
      if (settled) return false;
      settled = true;
      if (timer !== undefined) clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      return true;
    };
    const onAbort = (): void => {
      if (finish()) reject(new NbdAbortError(operation, signal?.reason));
    };
    const timer = deadline === undefined
      ? undefined
      : setTimeout(() => {
        if (finish()) reject(new NbdTimeoutError(operation, timeout));
      }, Math.max(0, deadline - Date.now()));
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        if (finish()) resolve(value);
        else dispose?.(value);
      },
      (error: unknown) => {
        if (finish()) reject(error);
      },
    );
  });
}
