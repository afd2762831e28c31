// Numbers of the NBD protocol (doc/proto.md of the NetworkBlockDevice/nbd project) and of
// QEMU's extensions (QEMU's docs/interop/nbd.txt). Names follow the specification's, without
// the NBD_ prefix where the grouping already says it.

/** 'NBDMAGIC', the first 8 bytes a server sends. */
export const INIT_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': the second 8 bytes of a newstyle greeting, and the start of each option. */
export const OPTION_MAGIC = 0x49484156454f5054n;
/** The old-style handshake's second magic; a server sending it cannot negotiate options. */
export const OLDSTYLE_MAGIC = 0x00420281861253n;
/** Start of every option reply. */
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server, 16 bits). */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
/** Client flags (32 bits). */
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

/** Transmission flags (16 bits), as found in `NbdExportInfo.transmissionFlags`. */
export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

/** Option types. */
export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

/** Option reply types; errors have bit 31 set. */
export const OptionReply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const;

const OPTION_REPLY_ERROR_NAMES: Readonly<Record<number, string>> = {
  [OptionReply.ERR_UNSUP]: 'NBD_REP_ERR_UNSUP',
  [OptionReply.ERR_POLICY]: 'NBD_REP_ERR_POLICY',
  [OptionReply.ERR_INVALID]: 'NBD_REP_ERR_INVALID',
  [OptionReply.ERR_PLATFORM]: 'NBD_REP_ERR_PLATFORM',
  [OptionReply.ERR_TLS_REQD]: 'NBD_REP_ERR_TLS_REQD',
  [OptionReply.ERR_UNKNOWN]: 'NBD_REP_ERR_UNKNOWN',
  [OptionReply.ERR_SHUTDOWN]: 'NBD_REP_ERR_SHUTDOWN',
  [OptionReply.ERR_BLOCK_SIZE_REQD]: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
  [OptionReply.ERR_TOO_BIG]: 'NBD_REP_ERR_TOO_BIG',
};

export function optionReplyErrorName(type: number): string {
  return OPTION_REPLY_ERROR_NAMES[type] ?? `NBD_REP_ERR(0x${type.toString(16)})`;
}

const OPTION_NAMES: Readonly<Record<number, string>> = {
  [Option.EXPORT_NAME]: 'NBD_OPT_EXPORT_NAME',
  [Option.ABORT]: 'NBD_OPT_ABORT',
  [Option.LIST]: 'NBD_OPT_LIST',
  [Option.STARTTLS]: 'NBD_OPT_STARTTLS',
  [Option.INFO]: 'NBD_OPT_INFO',
  [Option.GO]: 'NBD_OPT_GO',
  [Option.STRUCTURED_REPLY]: 'NBD_OPT_STRUCTURED_REPLY',
  [Option.LIST_META_CONTEXT]: 'NBD_OPT_LIST_META_CONTEXT',
  [Option.SET_META_CONTEXT]: 'NBD_OPT_SET_META_CONTEXT',
};

export function optionName(option: number): string {
  return OPTION_NAMES[option] ?? `option ${option}`;
}

/** Information types of NBD_REP_INFO. */
export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

/** Request (command) types. */
export const Command = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

/** Command flags. */
export const CommandFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

/** Structured reply flags. */
export const REPLY_FLAG_DONE = 1 << 0;

/** Structured reply chunk types; error chunks have bit 15 set. */
export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

export const REPLY_TYPE_ERROR_BIT = 0x8000;

/** Error values of the transmission phase (close to, but not the same as, Linux errno). */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

const ERRNO_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(NbdErrno).map(([name, value]) => [value, name]),
);

/** `'EIO'` for 5 and so on; the specification asks clients to treat unknown values like EINVAL, so callers get the number too. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/**
 * Status flags of block status extents. `base:allocation` uses HOLE and ZERO;
 * `qemu:dirty-bitmap:NAME` uses DIRTY (bit 0); `qemu:allocation-depth` carries a depth
 * number instead of flags (0 unallocated, 1 the exported node, 2 its backing file, ...).
 */
export const ExtentFlag = {
  HOLE: 1 << 0,
  ZERO: 1 << 1,
  DIRTY: 1 << 0,
} as const;

/** The standard allocation context. */
export const BASE_ALLOCATION = 'base:allocation';
/** QEMU's allocation-depth context (QEMU 5.2 and later). */
export const QEMU_ALLOCATION_DEPTH = 'qemu:allocation-depth';
/** QEMU's context for the exported dirty bitmap `name`. */
export function qemuDirtyBitmapContext(name: string): string {
  return `qemu:dirty-bitmap:${name}`;
}

/** Limits that the specification sets or recommends. */
export const MAX_STRING_LENGTH = 4096;
/** Without advertised constraints, requests are kept within this (the specification's interoperable maximum). */
export const DEFAULT_MAX_BLOCK_SIZE = 32 * 1024 * 1024;
