// Public API of @qmpkit/schema: the generated QAPI types, the command and event maps, the runtime
// feature table, and a few helper types for code that is generic over command or event names.
import type { QmpCommands, QmpEvents } from './generated/index.js';

export * from './generated/index.js';

/** Name of any QMP command QEMU 7.2 defines. */
export type QmpCommandName = keyof QmpCommands & string;
/** Name of any QMP event QEMU 7.2 defines. */
export type QmpEventName = keyof QmpEvents & string;
/** Arguments of command `K` (`Record<string, never>` when it takes none). */
export type QmpCommandArgs<K extends QmpCommandName> = QmpCommands[K]['args'];
/** Return value of command `K` (`Record<string, never>` when it returns nothing but `{}`). */
export type QmpCommandReturns<K extends QmpCommandName> = QmpCommands[K]['returns'];
/** The `data` member of event `K`. */
export type QmpEventData<K extends QmpEventName> = QmpEvents[K];
