// Chains start their jobs with blockdev-backup (drive-backup is deprecated in every supported
// QEMU), attach each target as a node first and close it when the run ends; a client that says
// its QEMU lacks blockdev-backup gets drive-backup. Runs on the QEMU under test ($QEMU_SYSTEM).
import { qemuImg } from '@qmpkit/image-tools';
import { QemuMachine } from '@qmpkit/machine';
import type { QmpTranscriptEntry } from '@qmpkit/client';

import { asBlockdevBackup, chainBackupCommand } from '../src/backup-command.js';
import { BackupChain } from '../src/index.js';
import type { BackupQmp } from '../src/index.js';
import { DRIVE0_PATTERN, Scratch, WRITES_A, hmpWrites } from './helpers.js';

interface Sent {
  command: string;
  actions: string[];
  /** blockdev-add / blockdev-del: the node. */
  node?: string;
  driver?: string;
}

function sentCommands(entries: readonly QmpTranscriptEntry[]): Sent[] {
  return entries
    .filter((e) => e.direction === 'out')
    .map((e) => {
      const message = e.message as {
        execute?: string;
        arguments?: { actions?: { type: string }[]; 'node-name'?: string; driver?: string };
      };
      const sent: Sent = { command: message.execute ?? '', actions: (message.arguments?.actions ?? []).map((a) => a.type) };
      if (message.arguments?.['node-name'] !== undefined) sent.node = message.arguments['node-name'];
      if (message.arguments?.driver !== undefined) sent.driver = message.arguments.driver;
      return sent;
    });
}

/** blockdev-add / blockdev-del of chain targets (the mark's bits use throwaway null-co nodes too). */
function targetNodeCommands(sent: readonly Sent[]): string[] {
  return sent
    .filter((s) => (s.command === 'blockdev-add' || s.command === 'blockdev-del') && (s.node ?? '').startsWith('qmpkit-target-'))
    .map((s) => s.command);
}

describe('the command a chain starts its jobs with', () => {
  it('is blockdev-backup unless the client knows its QEMU lacks it', () => {
    expect(chainBackupCommand({} as BackupQmp)).toBe('blockdev-backup');
    expect(chainBackupCommand({ schema: { hasCommand: () => undefined } } as unknown as BackupQmp)).toBe('blockdev-backup');
    expect(chainBackupCommand({ schema: { hasCommand: (n: string) => n !== 'blockdev-backup' } } as unknown as BackupQmp)).toBe('drive-backup');
  });

  it('keeps every job argument of the drive-backup it replaces, with the target as a node', () => {
    const { args, target } = asBlockdevBackup({
      'job-id': 'qmpkit-drive0-12345678', device: 'drive0', sync: 'incremental', bitmap: 'b0', 'bitmap-mode': 'never',
      speed: 1000, target: '/backups/x.qcow2', format: 'qcow2', mode: 'existing',
    });
    expect(target.file).toBe('/backups/x.qcow2');
    expect(target.nodeName.length).toBeLessThanOrEqual(31);
    expect(args).toEqual({ 'job-id': 'qmpkit-drive0-12345678', device: 'drive0', sync: 'incremental', bitmap: 'b0', 'bitmap-mode': 'never', speed: 1000, target: target.nodeName });
  });
});

describe('a chain against QEMU', () => {
  const scratch = new Scratch();
  const transcript: QmpTranscriptEntry[] = [];
  const deprecated: string[] = [];
  let vm: QemuMachine;

  beforeEach(async () => {
    await scratch.init();
    transcript.length = 0;
    deprecated.length = 0;
    const drive0 = await scratch.image('drive0.qcow2', '64M', DRIVE0_PATTERN);
    vm = new QemuMachine({
      drives: [{ file: drive0, format: 'qcow2', id: 'drive0', nodeName: 'node0' }],
      qmp: { transcript: (e) => transcript.push(e), onDeprecatedCommand: (name) => deprecated.push(name) },
    });
    scratch.machines.push(vm);
    await vm.launch({ timeout: 20_000 });
  });
  afterEach(() => scratch.cleanup());

  it('uses blockdev-backup, never the deprecated drive-backup, and closes its targets', async () => {
    const chain = await BackupChain.open({ qmp: vm.qmp, dir: scratch.path('backups'), node: 'drive0' });
    const full = await chain.full();
    await hmpWrites(vm, 'drive0', WRITES_A);
    const inc = await chain.incremental();
    const sent = sentCommands(transcript);
    const backupActions = sent.flatMap((s) => s.actions).filter((a) => a.endsWith('-backup'));
    expect(backupActions).toEqual(['blockdev-backup', 'blockdev-backup']);
    expect(sent.filter((s) => s.command === 'drive-backup')).toEqual([]);
    expect(targetNodeCommands(sent)).toEqual(['blockdev-add', 'blockdev-del', 'blockdev-add', 'blockdev-del']);
    // Every node the chain added (targets, and the null-co nodes that set the mark's bits) is removed.
    const added = sent.filter((s) => s.command === 'blockdev-add').map((s) => s.node);
    const removed = sent.filter((s) => s.command === 'blockdev-del').map((s) => s.node);
    expect([...removed].sort()).toEqual([...added].sort());
    expect(deprecated).toEqual([]);
    const nodes = (await vm.qmp.execute('query-named-block-nodes')).map((n) => n['node-name']);
    expect(nodes.filter((n) => (n ?? '').startsWith('qmpkit-target-'))).toEqual([]);
    // Closed means unlocked: qemu-img opens the targets without force-share while QEMU runs.
    for (const run of [full, inc]) {
      const file = run.backups[0]?.file ?? '';
      await expect(qemuImg.info(scratch.path(`backups/${file}`))).resolves.toMatchObject({ format: 'qcow2' });
    }
  });

  it('falls back to drive-backup for a client whose QEMU lacks blockdev-backup', async () => {
    const lacking: BackupQmp = {
      execute: ((name: string, args?: object, options?: object) => (vm.qmp.execute as (n: string, a?: object, o?: object) => Promise<unknown>)(name, args, options)) as BackupQmp['execute'],
      events: vm.qmp.events as unknown as BackupQmp['events'],
      schema: { hasCommand: (name: string) => name !== 'blockdev-backup' },
    } as BackupQmp;
    const chain = await BackupChain.open({ qmp: lacking, dir: scratch.path('backups'), node: 'drive0' });
    await chain.full();
    const sent = sentCommands(transcript);
    expect(sent.flatMap((s) => s.actions).filter((a) => a.endsWith('-backup'))).toEqual(['drive-backup']);
    expect(targetNodeCommands(sent)).toEqual([]);
    expect(sent.filter((s) => s.command === 'blockdev-add').map((s) => s.driver)).toEqual(sent.filter((s) => s.command === 'blockdev-add').map(() => 'null-co'));
  });
});
