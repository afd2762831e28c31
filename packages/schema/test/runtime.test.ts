import * as schema from '../src/index.js';
import { qapiSeries, qapiSource, qmpCommandArguments, qmpCommandInfo, qmpEventInfo } from '../src/index.js';
import * as qemu100 from '../src/generated/qemu-10.0/index.js';
import { findQmpSchemaVersion, qemuSeries } from '../src/versions.js';

describe('runtime exports', () => {
  it('exports only the tables and the source description at run time; the default is QEMU 7.2', () => {
    expect(Object.keys(schema).sort()).toEqual(['qapiSeries', 'qapiSource', 'qmpCommandArguments', 'qmpCommandInfo', 'qmpEventInfo']);
    expect(qapiSource).toBe('Debian source package qemu 1:7.2+dfsg-7+deb12u18');
    expect(qapiSeries).toBe('7.2');
  });

  it('lists the top-level arguments of commands, with the branches of a union, and gen: false as open', () => {
    expect(qmpCommandArguments['block-dirty-bitmap-add']).toEqual({ names: ['disabled', 'granularity', 'name', 'node', 'persistent'], required: ['name', 'node'], open: false });
    // blockdev-add takes the BlockdevOptions union: base members required, branch members listed.
    expect(qmpCommandArguments['blockdev-add'].required).toEqual(['driver']);
    expect(qmpCommandArguments['blockdev-add'].names).toEqual(expect.arrayContaining(['node-name', 'file', 'backing', 'filename']));
    expect(qmpCommandArguments.device_add.open).toBe(true);
    expect(qmpCommandArguments['query-block']).toEqual({ names: [], required: [], open: false });
  });

  it('has the tables of each series, found by the greeting version', () => {
    expect(qemuSeries.slice(0, 2)).toEqual(['7.2', '10.0']);
    expect(findQmpSchemaVersion({ major: 10, minor: 0 })?.commandArguments['blockdev-backup']?.names).toContain('discard-source');
    expect(findQmpSchemaVersion({ major: 7, minor: 2 })?.commandArguments['blockdev-backup']?.names).not.toContain('discard-source');
    expect(findQmpSchemaVersion({ major: 9, minor: 2 })).toBeUndefined();
    expect(qemu100.qapiSeries).toBe('10.0');
    expect(qemu100.qmpCommandInfo['query-migrationthreads'].deprecated).toBe(true);
  });

  it('marks deprecated, unstable and out-of-band commands', () => {
    expect(qmpCommandInfo['drive-backup']).toEqual({ deprecated: true, unstable: false, allowOob: false });
    expect(qmpCommandInfo['blockdev-backup']).toEqual({ deprecated: false, unstable: false, allowOob: false });
    expect(qmpCommandInfo['migrate-pause'].allowOob).toBe(true);
    expect(qmpCommandInfo['x-debug-query-block-graph'].unstable).toBe(true);
    expect(qmpCommandInfo['block-dirty-bitmap-add'].deprecated).toBe(false);
  });

  it('lists events', () => {
    expect(qmpEventInfo.BLOCK_JOB_COMPLETED).toEqual({ deprecated: false, unstable: false });
    expect(Object.keys(qmpEventInfo)).toContain('JOB_STATUS_CHANGE');
  });

  it('keeps the tables sorted by name', () => {
    const commands = Object.keys(qmpCommandInfo);
    expect(commands).toEqual([...commands].sort());
    const events = Object.keys(qmpEventInfo);
    expect(events).toEqual([...events].sort());
  });
});
