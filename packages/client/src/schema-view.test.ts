import { QmpUnsupportedArgumentError, QmpUnsupportedCommandError } from './errors.js';
import type { QmpVersion } from './messages.js';
import { QmpSchemaView, type QmpSchemaInfoEntry } from './schema-view.js';

const version = (major: number, minor: number, micro = 0): QmpVersion => ({ qemu: { major, minor, micro }, package: 'test' });

// A hand-made query-qmp-schema reply: a command with a struct argument, one whose argument is a
// union (branch members count too), a deprecated one, and device_add (hand-marshalled in QEMU).
const ENTRIES: QmpSchemaInfoEntry[] = [
  { name: 'bitmap-add', 'meta-type': 'command', 'arg-type': '1' },
  { name: '1', 'meta-type': 'object', members: [{ name: 'node', type: 'str' }, { name: 'name', type: 'str' }, { name: 'granularity', type: 'int', default: null }] },
  { name: 'add-node', 'meta-type': 'command', 'arg-type': '2' },
  { name: '2', 'meta-type': 'object', members: [{ name: 'driver', type: 'str' }], tag: 'driver', variants: [{ case: 'file', type: '3' }] } as QmpSchemaInfoEntry,
  { name: '3', 'meta-type': 'object', members: [{ name: 'filename', type: 'str' }] },
  { name: 'old-backup', 'meta-type': 'command', 'arg-type': '0', features: ['deprecated'] },
  { name: '0', 'meta-type': 'object', members: [] },
  { name: 'device_add', 'meta-type': 'command', 'arg-type': '4' },
  { name: '4', 'meta-type': 'object', members: [{ name: 'driver', type: 'str' }, { name: 'id', type: 'str', default: null }] },
];

describe('QmpSchemaView from query-qmp-schema', () => {
  const view = QmpSchemaView.fromIntrospection(version(11, 1, 3), ENTRIES);

  it('knows the commands and their top-level arguments, with union branches', () => {
    expect(view.source).toEqual({ kind: 'query-qmp-schema' });
    expect(view.commandNames()).toEqual(['add-node', 'bitmap-add', 'device_add', 'old-backup']);
    expect(view.commandArguments('bitmap-add')).toEqual({ names: ['granularity', 'name', 'node'], required: ['name', 'node'], open: false });
    expect(view.commandArguments('add-node')).toEqual({ names: ['driver', 'filename'], required: ['driver'], open: false });
  });

  it('refuses an unknown command and unknown or missing arguments, naming them', () => {
    const unknownCommand = view.check('no-such', {});
    expect(QmpUnsupportedCommandError.isInstance(unknownCommand)).toBe(true);
    expect(unknownCommand?.message).toBe("QEMU 11.1.3 has no QMP command 'no-such' (per its query-qmp-schema); nothing was sent");
    const badArgs = view.check('bitmap-add', { node: 'n', extra: 1 });
    expect(QmpUnsupportedArgumentError.isInstance(badArgs)).toBe(true);
    expect(badArgs).toMatchObject({ command: 'bitmap-add', unknown: ['extra'], missing: ['name'], accepted: ['granularity', 'name', 'node'] });
  });

  it('accepts what the server takes: branch members, optional ones, device_add properties', () => {
    expect(view.check('bitmap-add', { node: 'n', name: 'b', granularity: 65536 })).toBeUndefined();
    expect(view.check('add-node', { driver: 'file', filename: '/x' })).toBeUndefined();
    // device_add takes the device's own properties; the generated schemas mark it open.
    expect(view.check('device_add', { driver: 'virtio-blk-pci', drive: 'd0', 'num-queues': 2 })).toBeUndefined();
    expect(view.check('old-backup', undefined)).toBeUndefined();
  });

  it('reports deprecation from the server itself', () => {
    expect(view.deprecation('old-backup')).toEqual({ deprecated: true, unstable: false, allowOob: false });
    expect(view.deprecation('bitmap-add')).toBeUndefined();
  });
});

describe('QmpSchemaView from the greeting', () => {
  it('uses the generated schema of the series: 7.2 lacks what 10.0 added', () => {
    const v72 = QmpSchemaView.fromGreeting(version(7, 2, 22));
    const v100 = QmpSchemaView.fromGreeting(version(10, 0, 2));
    expect(v72.source).toEqual({ kind: 'generated', series: '7.2' });
    const args = { device: 'node0', target: 'backup0', sync: 'full', 'discard-source': true };
    expect(v72.check('blockdev-backup', args)).toMatchObject({ unknown: ['discard-source'], qemuVersion: '7.2.22' });
    expect(v100.check('blockdev-backup', args)).toBeUndefined();
    expect(QmpUnsupportedCommandError.isInstance(v72.check('blockdev-set-active', {}))).toBe(true);
    expect(v100.check('blockdev-set-active', { active: true })).toBeUndefined();
  });

  it('reports deprecations per version', () => {
    expect(QmpSchemaView.fromGreeting(version(7, 2)).deprecation('query-migrationthreads')).toBeUndefined();
    expect(QmpSchemaView.fromGreeting(version(10, 0)).deprecation('query-migrationthreads')?.deprecated).toBe(true);
    expect(QmpSchemaView.fromGreeting(version(10, 0)).deprecation('drive-backup')?.deprecated).toBe(true);
  });

  it('cannot tell commands of a series without generated types, but reports the nearest older deprecations', () => {
    const newer = QmpSchemaView.fromGreeting(version(11, 1, 3));
    expect(newer.source).toBeUndefined();
    expect(newer.hasCommand('query-status')).toBeUndefined();
    expect(newer.check('anything', { at: 'all' })).toBeUndefined();
    expect(newer.deprecation('drive-backup')?.deprecated).toBe(true);
    const older = QmpSchemaView.fromGreeting(version(6, 2));
    expect(older.deprecation('drive-backup')).toBeUndefined();
  });
});
