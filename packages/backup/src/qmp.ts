// The part of @qmpkit/client this package relies on, as a structural type: a `QmpClient`
// fits it, and so does anything else that speaks the same contract (docs/architecture.md).

export interface CallOptions {
  /** Milliseconds before the operation fails with a timeout error. */
  timeout?: number;
  signal?: AbortSignal;
}

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

/** An event as the client delivers it. */
export interface QmpEventLike {
  event: string;
  data?: unknown;
  timestamp: QmpTimestamp;
}

export interface EventWaitOptions extends CallOptions {
  match?: (event: never) => boolean;
}

export interface BackupQmp {
  execute(command: never, args?: never, options?: CallOptions): Promise<unknown>;
  readonly events: {
    wait(names: never, options?: EventWaitOptions): Promise<unknown>;
  };
}

type LooseExecute = (command: string, args?: object, options?: CallOptions) => Promise<unknown>;
type LooseWait = (
  names: string | readonly string[],
  options?: { match?: (event: QmpEventLike) => boolean } & CallOptions,
) => Promise<QmpEventLike>;

/**
 * Internally every command and event is checked at run time (the shapes below), so the
 * client's precise generic signatures are called through these loose ones.
 */
export function execute<T>(
  qmp: BackupQmp,
  command: string,
  args?: object,
  options?: CallOptions,
): Promise<T> {
  const fn = qmp.execute as unknown as LooseExecute;
  return fn.call(qmp, command, args, options) as Promise<T>;
}

export function waitEvent(
  qmp: BackupQmp,
  names: readonly string[],
  match: (event: QmpEventLike) => boolean,
  options: CallOptions,
): Promise<QmpEventLike> {
  const fn = qmp.events.wait as unknown as LooseWait;
  return fn.call(qmp.events, names, { ...options, match });
}

export function eventTimeMs(ts: QmpTimestamp): number {
  return ts.seconds * 1000 + ts.microseconds / 1000;
}

export function record(value: unknown): Record<string, unknown> {
  return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : {};
}
