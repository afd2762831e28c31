// Parity with the installed QEMU: every command and event that qemu-system-x86_64 reports in
// query-qmp-schema must exist in the generated data with the same members, optionality and
// (structurally resolved) types. Generated entries the binary lacks must be explained by an
// `if` condition that Debian's x86_64 build leaves off.
import { join } from 'node:path';

import { generateFromDirectory } from '../generator/generate.js';
import type { Schema } from '../generator/schema.js';
import { qmpCommandInfo, qmpEventInfo } from '../src/index.js';
import { compareWithLive, type ParityReport } from './support/parity.js';
import { readLiveSchema, type SchemaInfo } from './support/qemu-schema.js';

const qapiDir = join(__dirname, '..', 'qapi-src');

describe('parity with the live qemu-system-x86_64', () => {
  let schema: Schema;
  let live: SchemaInfo[];
  let report: ParityReport;

  beforeAll(async () => {
    schema = generateFromDirectory(qapiDir).schema;
    live = (await readLiveSchema()).schema;
    report = compareWithLive(schema, live);
  });

  afterAll(() => {
    if (report === undefined) return;
    process.stdout.write(
      `parity: binary commands checked ${report.commandsChecked}, events checked ${report.eventsChecked}, ` +
        `mismatches ${report.mismatches.length}; generated ${schema.commands.size} commands, ${schema.events.size} events\n` +
        `generated definitions the binary lacks (${report.lackingDefinitions.length}):\n  ${report.lackingDefinitions.join('\n  ')}\n` +
        `generated members/values/branches the binary lacks (${report.lacking.length}):\n  ${report.lacking.join('\n  ')}\n`,
    );
  });

  it('reads a full schema from the binary', () => {
    expect(report.commandsChecked).toBeGreaterThan(150);
    expect(report.eventsChecked).toBeGreaterThan(30);
  });

  it('finds every command and event of the binary with the same shape', () => {
    expect(report.mismatches).toEqual([]);
  });

  it('explains every generated definition the binary lacks with an if condition', () => {
    // Each entry carries its condition; compareWithLive counts unexplained ones as mismatches.
    expect(report.lackingDefinitions.every((entry) => / \(if .+\)$/.test(entry))).toBe(true);
    expect(schema.commands.size + schema.events.size).toBe(
      report.commandsChecked + report.eventsChecked + report.lackingDefinitions.length,
    );
  });

  it('has runtime feature flags that agree with the binary', () => {
    for (const entry of live) {
      const features = entry.features ?? [];
      if (entry['meta-type'] === 'command') {
        const info = (qmpCommandInfo as Record<string, { deprecated: boolean; unstable: boolean; allowOob: boolean } | undefined>)[entry.name];
        expect({ name: entry.name, ...info }).toEqual({
          name: entry.name,
          deprecated: features.includes('deprecated'),
          unstable: features.includes('unstable'),
          allowOob: entry['allow-oob'] ?? false,
        });
      } else if (entry['meta-type'] === 'event') {
        const info = (qmpEventInfo as Record<string, { deprecated: boolean; unstable: boolean } | undefined>)[entry.name];
        expect({ name: entry.name, ...info }).toEqual({
          name: entry.name,
          deprecated: features.includes('deprecated'),
          unstable: features.includes('unstable'),
        });
      }
    }
    expect(qmpCommandInfo['drive-backup'].deprecated).toBe(true);
  });

  describe('detects differences (the comparison itself can fail)', () => {
    /** A deep copy of the live schema with drive-backup's argument object changed by `edit`. */
    function withDriveBackupArgs(edit: (args: { members: { name?: string; type?: string; default?: null }[] }, all: SchemaInfo[]) => void): SchemaInfo[] {
      const copy = JSON.parse(JSON.stringify(live)) as SchemaInfo[];
      const command = copy.find((e) => e.name === 'drive-backup');
      const args = copy.find((e) => e.name === command?.['arg-type']);
      if (args?.members === undefined) throw new Error('drive-backup has no argument object in the live schema');
      edit(args as unknown as { members: { name?: string; type?: string; default?: null }[] }, copy);
      return copy;
    }

    it('reports a member whose optionality differs', () => {
      const changed = withDriveBackupArgs((args) => {
        const device = args.members.find((m) => m.name === 'device');
        if (device) device.default = null;
      });
      expect(compareWithLive(schema, changed).mismatches).toEqual([
        'command drive-backup arguments.device: binary says optional, generated required',
      ]);
    });

    it('reports a member the generated type does not have', () => {
      const changed = withDriveBackupArgs((args) => args.members.push({ name: 'extra', type: 'str' }));
      expect(compareWithLive(schema, changed).mismatches).toEqual([
        "command drive-backup arguments.extra: member of the binary is not generated in 'DriveBackup'",
      ]);
    });

    it('reports a member whose type differs', () => {
      const changed = withDriveBackupArgs((args) => {
        const target = args.members.find((m) => m.name === 'target');
        if (target) target.type = 'int';
      });
      expect(compareWithLive(schema, changed).mismatches).toEqual([
        "command drive-backup arguments.target: binary JSON type int, generated 'str' (string)",
      ]);
    });

    it('reports an enum value the generated enum lacks', () => {
      const changed = withDriveBackupArgs((args, all) => {
        const sync = all.find((e) => e.name === args.members.find((m) => m.name === 'sync')?.type);
        (sync as unknown as { values: string[] }).values.push('everything');
      });
      expect(compareWithLive(schema, changed).mismatches).toContainEqual(
        "command drive-backup arguments.sync: enum value 'everything' of the binary is not in generated 'MirrorSyncMode'",
      );
    });

    it('reports a command the generated maps lack', () => {
      const changed = [...live, { name: 'x-new-command', 'meta-type': 'command', 'arg-type': '0', 'ret-type': '0' } as const];
      expect(compareWithLive(schema, changed).mismatches).toEqual(['command x-new-command: in the binary, not generated']);
    });
  });
});
