import { QmpProtocolError } from './errors.js';
import { excerptOf } from './excerpt.js';

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
  /** The id of the command answered: always one this client sent (a positive integer). */
  id?: number;
}

export interface QmpErrorReply {
  /** `class` is QEMU's error class as sent (see `QmpCommandError.errorClass` for the typed one). */
  error: { class: string; desc: string };
  id?: number;
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

function isFiniteNumber(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value);
}

/**
 * Whether `id` can be QEMU's echo of a command id of this client, which sends positive
 * integers only and QEMU echoes ids unchanged; anything else did not come from QEMU.
 */
export function isEchoableId(id: unknown): id is number {
  return typeof id === 'number' && Number.isSafeInteger(id) && id > 0;
}

function fail(what: string, value: unknown): never {
  throw new QmpProtocolError(what, { excerpt: excerptOf(value) });
}

function checkId(message: Record<string, unknown>): void {
  if ('id' in message && !isEchoableId(message['id'])) {
    fail('reply with an id this client never sent (ids are positive integers)', message);
  }
}

/**
 * Sorts a parsed JSON value into greeting, reply or event and checks the shape of every
 * member the client or its callers read, so that code can rely on it: a reply has exactly one
 * of `return` and `error` (an object with string `class` and `desc`) and, if any, an id this
 * client could have sent; an event a string name, an object `timestamp` with numeric
 * `seconds` and `microseconds`, and `data` absent or an object; a greeting a version with
 * numbers and a package string, and a list of capability names. Members QEMU may add later
 * are ignored. Anything else throws a `QmpProtocolError`: QEMU sends nothing else, so a
 * stranger means the peer is not QMP (or not well).
 */
export function classifyServerMessage(value: unknown): QmpServerMessage {
  if (!isObject(value)) fail('message of no known QMP kind (not a JSON object)', value);
  const kinds = ('QMP' in value ? 1 : 0) + ('event' in value ? 1 : 0) + ('return' in value || 'error' in value ? 1 : 0);
  if (kinds !== 1) {
    fail(kinds === 0
      ? 'message of no known QMP kind (neither greeting, reply nor event)'
      : 'message of more than one QMP kind (greeting, reply, event)', value);
  }
  if ('return' in value) {
    if ('error' in value) fail("reply with both 'return' and 'error'", value);
    checkId(value);
    return { kind: 'reply', message: value as unknown as QmpSuccessReply };
  }
  if ('error' in value) {
    const error = value['error'];
    if (!isObject(error) || typeof error['class'] !== 'string' || typeof error['desc'] !== 'string') {
      fail("error reply whose 'error' is not an object with string 'class' and 'desc'", value);
    }
    checkId(value);
    return { kind: 'reply', message: value as unknown as QmpErrorReply };
  }
  if ('event' in value) {
    const timestamp = value['timestamp'];
    if (typeof value['event'] !== 'string') fail('event whose name is not a string', value);
    if (!isObject(timestamp) || !isFiniteNumber(timestamp['seconds']) || !isFiniteNumber(timestamp['microseconds'])) {
      fail("event without a 'timestamp' of numeric 'seconds' and 'microseconds'", value);
    }
    if ('data' in value && !isObject(value['data'])) fail("event whose 'data' is not an object", value);
    return { kind: 'event', message: value as unknown as QmpRawEvent };
  }
  const qmp = value['QMP'];
  const version = isObject(qmp) ? qmp['version'] : undefined;
  const qemu = isObject(version) ? version['qemu'] : undefined;
  const capabilities = isObject(qmp) ? qmp['capabilities'] : undefined;
  if (
    !isObject(version) || !isObject(qemu) || typeof version['package'] !== 'string'
    || !isFiniteNumber(qemu['major']) || !isFiniteNumber(qemu['minor']) || !isFiniteNumber(qemu['micro'])
    || !Array.isArray(capabilities) || !capabilities.every((c) => typeof c === 'string')
  ) {
    fail('malformed QMP greeting', value);
  }
  return { kind: 'greeting', message: value as unknown as QmpGreeting };
}

export function isErrorReply(reply: QmpReply): reply is QmpErrorReply {
  return 'error' in reply;
}
