import { QmpProtocolError } from './errors.js';

/** Any JSON value QEMU may use as a command id; this client always sends numbers. */
export type QmpId = number | string | boolean | null | readonly unknown[] | { readonly [key: string]: unknown };

export interface QmpVersionTriple {
  major: number;
  minor: number;
  micro: number;
}

export interface QmpVersion {
  qemu: QmpVersionTriple;
  /** Distribution build string, e.g. `Debian 1:7.2+dfsg-7+deb12u18`. */
  package: string;
}

/** The first message the server sends. */
export interface QmpGreeting {
  QMP: {
    version: QmpVersion;
    capabilities: string[];
  };
}

/** A command as it goes on the wire. */
export interface QmpCommandMessage {
  execute?: string;
  'exec-oob'?: string;
  arguments?: unknown;
  id?: QmpId;
}

export interface QmpSuccessReply {
  return: unknown;
  id?: QmpId;
}

export interface QmpErrorReply {
  error: { class: string; desc: string };
  id?: QmpId;
}

export type QmpReply = QmpSuccessReply | QmpErrorReply;

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

/** An asynchronous event as received (see `QmpEventMessage` for the typed form). */
export interface QmpRawEvent {
  event: string;
  data?: unknown;
  timestamp: QmpTimestamp;
}

/** What the server can send, sorted by kind. */
export type QmpServerMessage =
  | { kind: 'greeting'; message: QmpGreeting }
  | { kind: 'reply'; message: QmpReply }
  | { kind: 'event'; message: QmpRawEvent };

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function excerptOf(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 200 ? `${text.slice(0, 200)}...` : text;
}

/**
 * Sorts a parsed JSON value into greeting, reply or event, checking just enough of its
 * shape that the connection layer can rely on the fields it reads. Anything else is a
 * protocol error: QEMU sends nothing else, so a stranger means the peer is not QMP.
 */
export function classifyServerMessage(value: unknown): QmpServerMessage {
  if (isObject(value)) {
    if ('return' in value) return { kind: 'reply', message: value as unknown as QmpSuccessReply };
    if ('event' in value) {
      if (typeof value['event'] === 'string') return { kind: 'event', message: value as unknown as QmpRawEvent };
    } else if ('error' in value) {
      const error = value['error'];
      if (isObject(error) && typeof error['class'] === 'string' && typeof error['desc'] === 'string') {
        return { kind: 'reply', message: value as unknown as QmpErrorReply };
      }
    } else if ('QMP' in value) {
      const qmp = value['QMP'];
      if (isObject(qmp) && isObject(qmp['version']) && Array.isArray(qmp['capabilities'])) {
        return { kind: 'greeting', message: value as unknown as QmpGreeting };
      }
      throw new QmpProtocolError('malformed QMP greeting', { excerpt: excerptOf(value) });
    }
  }
  throw new QmpProtocolError('message of no known QMP kind (neither greeting, reply nor event)', {
    excerpt: excerptOf(value),
  });
}

export function isErrorReply(reply: QmpReply): reply is QmpErrorReply {
  return 'error' in reply;
}
