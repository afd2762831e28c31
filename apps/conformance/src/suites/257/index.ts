import type { CaseContext } from '../../context.js';
import type { CaseDefinition } from '../../runner.js';
import { apiCases, launchApiMachine, API_MACHINE } from './api.js';
import { bitmapSyncCases } from './bitmap-sync.js';
export { IOTEST_257_CHECKS } from './checks.js';

/** iotest 257: the 21 bitmap-sync scenarios, then the 48 rows of the API failure table. */
export const suite257Cases: ReadonlyArray<CaseDefinition<CaseContext>> = [...bitmapSyncCases, ...apiCases];

/** The run-wide fixture of the API rows, to start before the first case when any is selected. */
export const suite257Fixtures = [{ key: API_MACHINE, create: launchApiMachine, usedBy: (id: string) => id.startsWith('257.api.') }];
