import * as schema from '../src/index.js';
import { qapiSource, qmpCommandInfo, qmpEventInfo } from '../src/index.js';

describe('runtime exports', () => {
  it('exports only the feature tables and the source description at run time', () => {
    expect(Object.keys(schema).sort()).toEqual(['qapiSource', 'qmpCommandInfo', 'qmpEventInfo']);
    expect(qapiSource).toBe('Debian source package qemu 1:7.2+dfsg-7+deb12u18');
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
