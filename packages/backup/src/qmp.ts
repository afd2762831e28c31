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

/**
 * One consumer's own queue of events, as `qmp.events.listen()` of @qmpkit/client gives it:
 * it sees every event it listens to whatever else reads the connection's events.
 */
export interface BackupEventListener {
  wait(options?: never): Promise<unknown>;
  drain(): unknown[];
  close(): void;
}

export interface BackupQmp {
  execute(command: never, args?: never, options?: CallOptions): Promise<unknown>;
  readonly events: {
    listen(names: never, options?: never): BackupEventListener;
  };
}

type LooseExecute = (command: string, args?: object, options?: CallOptions) => Promise<unknown>;
type LooseListen = (
  names: readonly string[],
  options: { match: (event: QmpEventLike) => boolean; capacity?: number },
) => LooseListener;

/** A listener with the client's precise generic signatures replaced by loose ones. */
export interface LooseListener {
  wait(options: CallOptions): Promise<QmpEventLike>;
  drain(): QmpEventLike[];
  close(): void;
}

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

/**
 * Opens a listener of its own on `qmp`'s events: `names` that satisfy `match`, from now on.
 * Open it before sending the command that causes the events; close it when done.
 */
export function listenEvents(
  qmp: BackupQmp,
  names: readonly string[],
  match: (event: QmpEventLike) => boolean,
): LooseListener {
  const fn = qmp.events.listen as unknown as LooseListen;
  return fn.call(qmp.events, names, { match });
}

export function eventTimeMs(ts: QmpTimestamp): number {
  return ts.seconds * 1000 + ts.microseconds / 1000;
}

export function record(value: unknown): Record<string, unknown> {
  return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : {};
}
