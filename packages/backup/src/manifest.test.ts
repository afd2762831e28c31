import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManifestError } from './errors.js';
import { stat } from 'node:fs/promises';
import { acceptedDigests, appendRunLog, backupLineage, chainsOf, findChain, lastBase, readManifest, readRunLog, resolveBackupFile, runLogPath, writeManifest } from './manifest.js';
import type { Manifest, ManifestBackup } from './manifest.js';

function backup(kind: ManifestBackup['kind'], file: string, parent: string | null): ManifestBackup {
  return {
    kind,
    file,
    parent,
    time: '2026-01-01T00:00:00.000Z',
    bytes: 65536,
    driveSize: 67108864,
    result: 'completed',
    jobId: 'job',
    durationMs: 1,
    run: 'run',
  };
}

function manifest(backups: ManifestBackup[]): Manifest {
  return {
    format: 'qmpkit-backup-chain',
    version: 1,
    chainId: 'c0ffee00-0000-4000-8000-000000000000',
    created: '2026-01-01T00:00:00.000Z',
    updated: '2026-01-01T00:00:00.000Z',
    drives: [
      { node: 'drive0', bitmap: 'b', granularity: 65536, persistent: true, driveSize: 67108864, targetFormat: 'qcow2', backups },
    ],
  };
}

describe('manifest files', () => {
  let dir = '';
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qmpkit-backup-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('round-trips, replacing the file by rename and leaving no temporary file', async () => {
    const path = join(dir, 'manifest.json');
    const m = manifest([backup('full', 'a.qcow2', null)]);
    await writeManifest(path, m);
    expect(await readManifest(path)).toEqual(m);
    const next = manifest([backup('full', 'a.qcow2', null), backup('incremental', 'b.qcow2', 'a.qcow2')]);
    await writeManifest(path, next);
    expect(await readManifest(path)).toEqual(next);
    expect(await readdir(dir)).toEqual(['manifest.json']);
  });

  it('reads a missing manifest as undefined', async () => {
    expect(await readManifest(join(dir, 'none.json'))).toBeUndefined();
  });

  it.each([
    ['not JSON', '{"format": '],
    ['another format', JSON.stringify({ format: 'other', version: 1 })],
    // Version 2 is this release's; 1 is read (and refused for continuing); anything else is unknown.
    ['another version', JSON.stringify({ ...manifest([]), version: 3 })],
    ['a malformed mark', JSON.stringify({ ...manifest([]), drives: [{ ...manifest([]).drives[0], mark: { bits: 1 } }] })],
    ['no drives', JSON.stringify({ ...manifest([]), drives: [] })],
    ['a backup without a file', JSON.stringify(manifest([{ kind: 'full' } as unknown as ManifestBackup]))],
    ['a malformed pending run', JSON.stringify({ ...manifest([]), pending: 'yes' })],
  ])('refuses %s with ManifestError', async (_label, text) => {
    const path = join(dir, 'bad.json');
    await writeFile(path, text);
    const error = await readManifest(path).catch((e: unknown) => e);
    expect(ManifestError.isInstance(error)).toBe(true);
    expect((error as ManifestError).path).toBe(path);
  });

  it('reports a write that cannot happen, without leaving a temporary file', async () => {
    const path = join(dir, 'missing-dir', 'manifest.json');
    await expect(writeManifest(path, manifest([]))).rejects.toThrow(ManifestError);
    expect(await readdir(dir)).toEqual([]);
  });

  it('finds the base of the next incremental, skipping differentials', () => {
    const m = manifest([
      backup('full', 'f', null),
      backup('incremental', 'i1', 'f'),
      backup('differential', 'd1', 'i1'),
      backup('differential', 'd2', 'i1'),
    ]);
    expect(lastBase(m.drives[0] as Manifest['drives'][number])?.file).toBe('i1');
    expect(lastBase({ ...(m.drives[0] as Manifest['drives'][number]), backups: [] })).toBeUndefined();
  });

  it('resolves backup files against the manifest directory unless absolute', async () => {
    expect(resolveBackupFile('/b/manifest.json', 'x.qcow2')).toBe('/b/x.qcow2');
    expect(resolveBackupFile('/b/manifest.json', '/elsewhere/x.qcow2')).toBe('/elsewhere/x.qcow2');
    // The file on disk is what was written.
    const path = join(dir, 'manifest.json');
    await writeManifest(path, manifest([]));
    expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({ format: 'qmpkit-backup-chain' });
  });

  it('writes the manifest owner-only whatever the umask, or with the mode asked for', async () => {
    const path = join(dir, 'manifest.json');
    const old = process.umask(0o000);
    try {
      await writeManifest(path, manifest([]));
      expect((await stat(path)).mode & 0o777).toBe(0o600);
      await writeManifest(path, manifest([]), { mode: 0o640 });
      expect((await stat(path)).mode & 0o777).toBe(0o640);
      process.umask(0o077);
      await writeManifest(path, manifest([]), { mode: 0o640 });
      expect((await stat(path)).mode & 0o777).toBe(0o640);
    } finally {
      process.umask(old);
    }
  });

  it('keeps a run log beside the manifest, skipping a torn last line', async () => {
    const path = join(dir, 'manifest.json');
    expect(runLogPath(path)).toBe(join(dir, 'manifest.runs.jsonl'));
    expect(await readRunLog(path)).toEqual([]);
    await appendRunLog(path, { run: 'r1', kind: 'full', time: 't', outcome: 'completed', files: ['f'] });
    await appendRunLog(path, { run: 'r2', kind: 'incremental', time: 't', outcome: 'aborted' });
    await writeFile(runLogPath(path), `${await readFile(runLogPath(path), 'utf8')}{"run":"r3","ki`);
    expect((await readRunLog(path)).map((e) => [e.run, e.outcome])).toEqual([
      ['r1', 'completed'],
      ['r2', 'aborted'],
    ]);
    expect((await stat(runLogPath(path))).mode & 0o777).toBe(0o600);
  });

  it('keeps earlier chains, finds one by id or prefix, and refuses a malformed one', async () => {
    const earlier = { ...manifest([backup('full', 'old.qcow2', null)]), chainId: 'deadbeef-0000-4000-8000-000000000000' };
    const current: Manifest = { ...manifest([backup('full', 'new.qcow2', null)]), version: 2, history: [{ ...earlier }] };
    const path = join(dir, 'manifest.json');
    await writeManifest(path, current);
    const read = (await readManifest(path)) as Manifest;
    expect(chainsOf(read).map((c) => c.chainId)).toEqual([current.chainId, earlier.chainId]);
    expect(findChain(path, read, undefined).chainId).toBe(current.chainId);
    expect(findChain(path, read, 'deadbeef').drives[0]?.backups[0]?.file).toBe('old.qcow2');
    expect(() => findChain(path, read, 'deadbee')).toThrow(/has no chain "deadbee" \(chains: c0ffee00, deadbeef\)/);
    const broken = { ...current, history: [{ ...earlier, drives: [{ node: 'drive0', bitmap: 'b', granularity: 65536, driveSize: 1 }] }] };
    await writeFile(path, JSON.stringify(broken));
    await expect(readManifest(path)).rejects.toThrow(/history\[0\]\.drives\[0\]\.backups is missing/);
  });

  it('accepts the digest of a file a pending prune replaces, for that file only', () => {
    const full = { ...backup('full', 'a.qcow2', null), digest: 'sha256:aa', fileSize: 1 };
    const inc = { ...backup('incremental', 'b.qcow2', 'a.qcow2'), digest: 'sha256:bb', fileSize: 2 };
    const m: Manifest = {
      ...manifest([full, inc]),
      prune: { id: 'p', started: '', pid: 1, host: 'h', replace: [{ node: 'drive0', file: 'b.qcow2', temp: 't', digest: 'sha256:cc', fileSize: 3 }], remove: ['a.qcow2'], drives: [] },
    };
    expect(acceptedDigests(m, inc)).toEqual([{ digest: 'sha256:bb', fileSize: 2 }, { digest: 'sha256:cc', fileSize: 3 }]);
    expect(acceptedDigests(m, full)).toEqual([{ digest: 'sha256:aa', fileSize: 1 }]);
  });

  it('lists the files a restore reads: the backup and its parents', () => {
    const m = manifest([
      backup('full', 'f', null),
      backup('incremental', 'i1', 'f'),
      backup('differential', 'd1', 'i1'),
      backup('incremental', 'i2', 'i1'),
    ]);
    const drive = m.drives[0] as Manifest['drives'][number];
    expect(backupLineage(drive, drive.backups[2] as ManifestBackup).map((b) => b.file)).toEqual(['d1', 'i1', 'f']);
    expect(backupLineage(drive, drive.backups[3] as ManifestBackup).map((b) => b.file)).toEqual(['i2', 'i1', 'f']);
  });
});
