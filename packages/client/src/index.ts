export { QmpClient } from './client.js';
export type {
  CloseOptions,
  CommandArgs,
  CommandOptions,
  CommandReturn,
  CommandSpecs,
  ConnectOptions,
  ConnectTarget,
  ExecuteParameters,
  LooseCommands,
  OobCommandName,
  QmpConnectionState,
  QmpTranscriptEntry,
} from './client.js';
export { QmpEventHub, QmpEventListener, matchesPartial } from './events.js';
export type {
  DeepPartial,
  EventHubOptions,
  EventMatch,
  EventSpecs,
  HubWaitOptions,
  ListenOptions,
  LooseEvents,
  QmpEventMessage,
  StreamOptions,
  WaitOptions,
} from './events.js';
export { QmpSchemaView } from './schema-view.js';
export type { QmpSchemaCheck, QmpSchemaInfoEntry } from './schema-view.js';
export type { QmpClientFor } from './client-for.js';
export {
  QmpAbortError,
  QmpCommandError,
  QmpConnectionError,
  QmpError,
  QmpEventOverflowError,
  QmpNegotiationError,
  QmpProtocolError,
  QmpTimeoutError,
  QmpUnsupportedArgumentError,
  QmpUnsupportedCommandError,
} from './errors.js';
export type { QmpSchemaSource } from './errors.js';
export { QmpMessageParser, DEFAULT_MAX_DEPTH, DEFAULT_MAX_MESSAGE_SIZE } from './parser.js';
export type { QmpParserOptions } from './parser.js';
export { serializeCommand } from './serializer.js';
export { classifyServerMessage } from './messages.js';
export type {
  QmpCommandMessage,
  QmpErrorReply,
  QmpGreeting,
  QmpId,
  QmpRawEvent,
  QmpReply,
  QmpServerMessage,
  QmpSuccessReply,
  QmpTimestamp,
  QmpVersion,
  QmpVersionTriple,
} from './messages.js';
// The root of every qmpkit error (one check for any package's errors, and their kind).
export { QmpkitError, errorKind, isQmpkitError } from '@qmpkit/errors';
export type { QmpkitErrorKind } from '@qmpkit/errors';
