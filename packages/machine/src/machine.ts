import { MachineAbortError, MachineConfigError, QemuIoHmpError } from './errors.js';
import {
  checkQemuId,
  formatName,
  formatOptionList,
  formatStructuredOption,
  type BlockdevOption,
  type DriveFormat,
  type ObjectOption,
  type OptionValue,
} from './option-syntax.js';
import { findQemuIoFailures } from '@qmpkit/image-tools';

import { checkHmpQemuIoArguments, hmpQemuIoCommandLine } from './qemu-io-hmp.js';
import { QemuProcess, type QemuProcessOptions, type TimeoutOptions } from './qemu-process.js';

export interface DriveOptions {
  /**
   * Image file name as QEMU reads it (relative to the current directory; a `proto:` prefix
   * selects a protocol, so write `./a:b.img` for a local file with a colon).
   */
  file: string;
  /**
   * Image format, a block driver of the schema (`qcow2`, `raw`, ...), so a typo does not
   * compile; `untyped('name')` passes another one. Required: format probing is unsafe and QEMU
   * warns about it.
   */
  format: DriveFormat;
  /** The drive id (`-drive id=`), the name HMP and `query-block` use as `device`. */
  id: string;
  /** Node name of the format node (`node-name=`), for blockdev-level commands. */
  nodeName?: string;
  /**
   * Further `-drive` options (`cache`, `discard`, `detect-zeroes`, `if`, ...). Commas in
   * values are escaped; booleans become `on` / `off`. `if` defaults to `none`.
   */
  opts?: Readonly<Record<string, OptionValue>>;
}

export interface QemuMachineOptions extends QemuProcessOptions {
  /** `-machine` value (default `none`: no guest runs, but the block layer, QMP and HMP work). */
  machine?: string;
  /** `-display` value (default `none`). */
  display?: string;
  /** Keep QEMU's default devices (default false: `-nodefaults`). */
  defaults?: boolean;
  /** Drives to add, as with `addDrive()`. */
  drives?: readonly DriveOptions[];
  /** `-blockdev` values, as with `addBlockdev()`. */
  blockdevs?: readonly BlockdevOption[];
  /** `-object` values, as with `addObject()`. */
  objects?: readonly ObjectOption[];
}

export interface HmpQemuIoResult {
  /** The HMP reply followed by what qemu-io printed to QEMU's stdout/stderr. */
  output: string;
}

/**
 * A `qemu-system-*` process with a connected QMP client (`machine.qmp`).
 *
 * ```ts
 * await using vm = await QemuMachine.launch({ drives: [{ file, format: 'qcow2', id: 'drive0' }] });
 * await vm.hmpQemuIo('drive0', 'write -P0xab 0 512');
 * ```
 */
export class QemuMachine extends QemuProcess {
  readonly #machineType: string;
  readonly #display: string;
  readonly #defaults: boolean;
  /** `-drive` and `-blockdev` arguments, in the order they were added. */
  readonly #blockArguments: string[] = [];
  /** `-object` arguments: before the block arguments, which may name them (iothreads, secrets). */
  readonly #objectArguments: string[] = [];
  readonly #driveIds = new Set<string>();
  #qemuIoQueue: Promise<unknown> = Promise.resolve();

  constructor(options: QemuMachineOptions = {}) {
    super({ defaultBinary: 'qemu-system-x86_64', environmentVariable: 'QEMU_SYSTEM' }, options);
    this.#machineType = options.machine ?? 'none';
    this.#display = options.display ?? 'none';
    this.#defaults = options.defaults ?? false;
    for (const object of options.objects ?? []) this.addObject(object);
    for (const drive of options.drives ?? []) this.addDrive(drive);
    for (const blockdev of options.blockdevs ?? []) this.addBlockdev(blockdev);
  }

  /** Creates a machine and launches it; the result supports `await using`. */
  static async launch(options: QemuMachineOptions = {}, launchOptions: TimeoutOptions = {}): Promise<QemuMachine> {
    return new QemuMachine(options).launch(launchOptions);
  }

  /**
   * Adds a `-drive if=none,...` for the next launch. Ids and node names are checked against
   * QEMU's rules here, so a mistake is reported before QEMU is started.
   */
  addDrive(drive: DriveOptions): this {
    checkQemuId('drive.id', drive.id);
    if (this.#driveIds.has(drive.id)) throw new MachineConfigError('drive.id', drive.id, 'a drive with this id was already added');
    if (drive.nodeName !== undefined) checkQemuId('drive.nodeName', drive.nodeName);
    if (drive.file === '') throw new MachineConfigError('drive.file', drive.file, 'the file name is empty');
    const format = formatName(drive.format);
    if (format === '') throw new MachineConfigError('drive.format', format, 'the format is empty');
    const reserved = new Set(['file', 'format', 'id', 'node-name']);
    const extra = Object.entries(drive.opts ?? {});
    for (const [key] of extra) {
      if (reserved.has(key)) throw new MachineConfigError(`drive.opts.${key}`, key, 'set it through the DriveOptions field of that name');
    }
    const hasInterface = extra.some(([key]) => key === 'if');
    const entries: Array<readonly [string, OptionValue]> = [
      ...(hasInterface ? [] : [['if', 'none'] as const]),
      ['id', drive.id],
      ['file', drive.file],
      ['format', format],
      ...(drive.nodeName === undefined ? [] : [['node-name', drive.nodeName] as const]),
      ...extra,
    ];
    this.#blockArguments.push('-drive', formatOptionList('drive', entries));
    this.#driveIds.add(drive.id);
    return this;
  }

  /**
   * Adds a `-blockdev` for the next launch: a `BlockdevOptions` object of the schema (passed
   * as JSON, no escaping needed), e.g. `{ driver: 'qcow2', 'node-name': 'node0', file: { driver:
   * 'file', filename } }`, a string in QEMU's `key=value` syntax, or `untyped({...})` for
   * what the schema does not know. Such a node has no drive id; address it by node name
   * (`hmpQemuIo('node0', ...)` works with node names too).
   */
  addBlockdev(blockdev: BlockdevOption): this {
    this.#blockArguments.push('-blockdev', formatStructuredOption('blockdev', blockdev));
    return this;
  }

  /**
   * Adds an `-object` for the next launch (before the drives, which may refer to it): an
   * `ObjectOptions` object of the schema, e.g. `{ 'qom-type': 'iothread', id: 'iothread0' }`,
   * a `key=value` string, or `untyped({...})`.
   */
  addObject(object: ObjectOption): this {
    this.#objectArguments.push('-object', formatStructuredOption('object', object));
    return this;
  }

  protected override buildArguments(qmpChardev: string, qmpChardevId: string): string[] {
    return [
      '-machine',
      this.#machineType,
      ...(this.#defaults ? [] : ['-nodefaults']),
      '-display',
      this.#display,
      '-chardev',
      qmpChardev,
      '-mon',
      `chardev=${qmpChardevId},mode=control`,
      ...this.#objectArguments,
      ...this.#blockArguments,
      ...this.extraArgs,
    ];
  }

  /** Runs an HMP command through QMP's `human-monitor-command` and returns its text. */
  async hmp(commandLine: string, options: TimeoutOptions = {}): Promise<string> {
    const qmp = this.requireRunning('run an HMP command');
    return qmp.hmp(commandLine, options);
  }

  /**
   * Runs one qemu-io command on a drive (or node) of the running machine, like iotests'
   * `hmp_qemu_io`. Throws `InvalidHmpCommandError` before sending anything if HMP would
   * mis-parse the arguments, and `QemuIoHmpError` when qemu-io reports a failure (which it
   * does only in text, partly on QEMU's stdout, so the log is read as well). Calls are
   * run one at a time per machine so each one's output is told apart.
   */
  async hmpQemuIo(drive: string, command: string, options: TimeoutOptions = {}): Promise<HmpQemuIoResult> {
    checkHmpQemuIoArguments(drive, command);
    const qmp = this.requireRunning('run qemu-io');
    const run = async (): Promise<HmpQemuIoResult> => {
      // It may have waited behind other calls; a caller who gave up meanwhile gets no write.
      if (options.signal?.aborted === true) throw new MachineAbortError('hmpQemuIo', options.signal.reason);
      const offset = await this.logOffset();
      const reply = await qmp.hmp(hmpQemuIoCommandLine(drive, command), options);
      // QEMU has written (and flushed) qemu-io's output before it sends the QMP reply.
      const printed = await this.logSince(offset);
      const output = reply + printed;
      // The same rules image-tools applies to a qemu-io process's output.
      const failures = findQemuIoFailures(output);
      const [failure] = failures;
      if (failure !== undefined) throw new QemuIoHmpError(drive, command, output, failure, failures);
      return { output };
    };
    const result = this.#qemuIoQueue.then(run, run);
    this.#qemuIoQueue = result.catch(() => undefined);
    return result;
  }
}
