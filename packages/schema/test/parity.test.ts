// Parity with the installed QEMU of every generated series: each series' qemu-system-x86_64
// (7.2 the system's, newer ones from /opt/qmpkit-qemu) reports query-qmp-schema, and every
// command and event in it must exist in that series' parsed schema with the same members,
// optionality and (structurally resolved) types. Generated entries the binary lacks must be
// explained by an `if` condition that Debian's x86_64 build leaves off.
import { join } from 'node:path';

import { generateFromDirectory } from '../generator/generate.js';
import type { Schema } from '../generator/schema.js';
import { qmpSchemaVersions } from '../src/versions.js';
import { compareWithLive, type ParityReport } from './support/parity.js';
import { seriesBinary } from './support/qemu-binaries.js';
import { readLiveSchema, type SchemaInfo } from './support/qemu-schema.js';

const srcRoot = join(__dirname, '..', 'qapi-src');

describe.each(qmpSchemaVersions.map((v) => [v.series, v] as const))('parity of QEMU %s with its live qemu-system-x86_64', (series, version) => {
  const where = seriesBinary(series);
  let schema: Schema;
  let live: SchemaInfo[];
  let liveVersion: { qemu?: { major: number; minor: number; micro: number }; package?: string };
  let report: ParityReport;

  if (where.skipReason !== undefined) {
    // Left out on purpose (QMPKIT_QEMU_SERIES); nothing of this series runs on this machine.
    it.skip(`(${where.skipReason})`, () => undefined);
    return;
  }

  beforeAll(async () => {
    if (where.binary === undefined) {
      throw new Error(`QEMU ${series} is not installed here: run \`node scripts/qemu-install.mjs ${series}\` (npm test's set-up does)`);
    }
    schema = generateFromDirectory(join(srcRoot, series)).schema;
    const read = await readLiveSchema(where.binary, 60_000);
    live = read.schema;
    liveVersion = read.version as typeof liveVersion;
    report = compareWithLive(schema, live);
  }, 90_000);

  afterAll(() => {
    if (report === undefined) return;
    process.stdout.write(
      `parity ${series} (${liveVersion.package ?? '?'} vs ${version.qapiSource}): binary commands checked ${report.commandsChecked}, ` +
        `events checked ${report.eventsChecked}, mismatches ${report.mismatches.length}; ` +
        `generated ${schema.commands.size} commands, ${schema.events.size} events\n` +
        `generated definitions the binary lacks (${report.lackingDefinitions.length}):\n  ${report.lackingDefinitions.join('\n  ')}\n` +
        `generated members/values/branches the binary lacks (${report.lacking.length}):\n  ${report.lacking.join('\n  ')}\n`,
    );
  });

  it('talks to a binary of this series', () => {
    expect(`${liveVersion.qemu?.major}.${liveVersion.qemu?.minor}`).toBe(series);
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
        expect({ name: entry.name, ...version.commands[entry.name] }).toEqual({
          name: entry.name,
          deprecated: features.includes('deprecated'),
          unstable: features.includes('unstable'),
          allowOob: entry['allow-oob'] ?? false,
        });
      } else if (entry['meta-type'] === 'event') {
        expect({ name: entry.name, ...version.events[entry.name] }).toEqual({
          name: entry.name,
          deprecated: features.includes('deprecated'),
          unstable: features.includes('unstable'),
        });
      }
    }
    expect(version.commands['drive-backup']?.deprecated).toBe(true);
  });

  it('has top-level argument tables that agree with the binary', () => {
    const byName = new Map(live.map((e) => [e.name, e]));
    for (const entry of live) {
      if (entry['meta-type'] !== 'command') continue;
      const args = byName.get(entry['arg-type'] ?? '');
      const liveNames = new Set((args?.members ?? []).map((m) => m.name ?? ''));
      // A union's branches add members: collect them from the variant objects.
      for (const variant of args?.variants ?? []) for (const m of byName.get(variant.type)?.members ?? []) liveNames.add(m.name ?? '');
      const table = version.commandArguments[entry.name];
      // The table may list more (members under an 'if' the build leaves off), never fewer.
      expect({ command: entry.name, missing: [...liveNames].filter((n) => !table?.names.includes(n)) }).toEqual({ command: entry.name, missing: [] });
    }
  });
});

describe('the parity comparison itself can fail', () => {
  let schema: Schema;
  let live: SchemaInfo[];

  beforeAll(async () => {
    schema = generateFromDirectory(join(srcRoot, '7.2')).schema;
    live = (await readLiveSchema('qemu-system-x86_64', 60_000)).schema;
  }, 90_000);

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
