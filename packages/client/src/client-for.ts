// A client typed for one QEMU release: `QmpClientFor<'10.0'>` is
// `QmpClient<QmpCommands, QmpEvents>` with the maps of `@qmpkit/schema/qemu-10.0`.
import type { QemuSeries, QmpSchemaMaps } from '@qmpkit/schema/versions';

import type { QmpClient } from './client.js';

// Inferred per series, so each series' maps meet the client's constraints on their own.
export type QmpClientFor<S extends QemuSeries> = QmpSchemaMaps[S] extends { commands: infer C extends { [K in keyof C]: { args: unknown; returns: unknown } }; events: infer E }
  ? QmpClient<C, E>
  : never;
