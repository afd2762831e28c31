export { NbdClient } from './client.js';
export type {
  NbdBlock,
  NbdBlockSize,
  NbdConnectOptions,
  NbdConnectionState,
  NbdExportInfo,
  NbdExtent,
  NbdExtentsOptions,
  NbdReadRangesOptions,
  NbdRequestOptions,
} from './client.js';
export { NBD_DEFAULT_PORT } from './socket.js';
export type { NbdTarget } from './socket.js';
export {
  BASE_ALLOCATION,
  Command,
  CommandFlag,
  ExtentFlag,
  NbdErrno,
  Option,
  OptionReply,
  QEMU_ALLOCATION_DEPTH,
  ReplyType,
  TransmissionFlag,
  errnoName,
  qemuDirtyBitmapContext,
} from './constants.js';
export {
  NbdAbortError,
  NbdArgumentError,
  NbdCommandError,
  NbdConnectionError,
  NbdError,
  NbdHandshakeError,
  NbdProtocolError,
  NbdTimeoutError,
} from './errors.js';
export type { NbdCommandName } from './errors.js';
export { HandshakeParser } from './handshake-parser.js';
export type { HandshakeMessage } from './handshake-parser.js';
export { ReplyParser } from './reply-parser.js';
export type { ReplyChunk, ReplyHandler, ReplyParserOptions } from './reply-parser.js';
export {
  serializeAbort,
  serializeClientFlags,
  serializeDisconnect,
  serializeGo,
  serializeMetaContext,
  serializeOption,
  serializeRequest,
  serializeStructuredReply,
} from './serializer.js';
// The root of every qmpkit error (one check for any package's errors, and their kind).
export { QmpkitError, errorKind, isQmpkitError } from '@qmpkit/errors';
export type { QmpkitErrorKind } from '@qmpkit/errors';
