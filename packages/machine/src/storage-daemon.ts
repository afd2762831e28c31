import { MachineConfigError } from './errors.js';
import { QemuProcess, type QemuProcessOptions, type TimeoutOptions } from './qemu-process.js';

/**
 * A `--blockdev`, `--export`, `--nbd-server` or `--object` value: an object (written as
 * JSON, which qemu-storage-daemon accepts for all four and which needs no escaping) or a
 * string in QEMU's `key=value,...` syntax, passed as it is.
 */
export type StorageDaemonOption = string | Readonly<Record<string, unknown>>;

export interface QemuStorageDaemonOptions extends QemuProcessOptions {
  /** `--blockdev` values, e.g. `{ driver: 'qcow2', 'node-name': 'node0', file: { driver: 'file', filename } }`. */
  blockdevs?: readonly StorageDaemonOption[];
  /** `--export` values, e.g. `{ type: 'nbd', id: 'exp0', 'node-name': 'node0', writable: true }`. */
  exports?: readonly StorageDaemonOption[];
  /** The `--nbd-server` value, e.g. `{ addr: { type: 'unix', path } }`. */
  nbdServer?: StorageDaemonOption;
  /** `--object` values. */
  objects?: readonly StorageDaemonOption[];
}

function formatOption(option: string, value: StorageDaemonOption): string {
  if (typeof value === 'string') {
    if (value === '') throw new MachineConfigError(option, value, 'the value is empty');
    return value;
  }
  return JSON.stringify(value);
}

/**
 * A `qemu-storage-daemon` process with a connected QMP client (`daemon.qmp`): block nodes,
 * exports and block jobs without a VM.
 *
 * ```ts
 * await using qsd = await QemuStorageDaemon.launch({
 *   blockdevs: [{ driver: 'qcow2', 'node-name': 'node0', file: { driver: 'file', filename: 'a.qcow2' } }],
 * });
 * await qsd.qmp.execute('query-named-block-nodes');
 * ```
 */
export class QemuStorageDaemon extends QemuProcess {
  readonly #arguments: string[] = [];
  #hasNbdServer = false;

  constructor(options: QemuStorageDaemonOptions = {}) {
    super({ defaultBinary: 'qemu-storage-daemon', environmentVariable: 'QEMU_STORAGE_DAEMON' }, options);
    for (const object of options.objects ?? []) this.addObject(object);
    for (const blockdev of options.blockdevs ?? []) this.addBlockdev(blockdev);
    if (options.nbdServer !== undefined) this.setNbdServer(options.nbdServer);
    for (const exported of options.exports ?? []) this.addExport(exported);
  }

  /** Creates a daemon and launches it; the result supports `await using`. */
  static async launch(options: QemuStorageDaemonOptions = {}, launchOptions: TimeoutOptions = {}): Promise<QemuStorageDaemon> {
    return new QemuStorageDaemon(options).launch(launchOptions);
  }

  /** Adds a `--blockdev` for the next launch. */
  addBlockdev(blockdev: StorageDaemonOption): this {
    this.#arguments.push('--blockdev', formatOption('blockdev', blockdev));
    return this;
  }

  /** Adds an `--export` for the next launch (its node must be added first). */
  addExport(exported: StorageDaemonOption): this {
    this.#arguments.push('--export', formatOption('export', exported));
    return this;
  }

  /** Sets the `--nbd-server` for the next launch (the daemon runs at most one). */
  setNbdServer(server: StorageDaemonOption): this {
    if (this.#hasNbdServer) throw new MachineConfigError('nbdServer', server, 'an NBD server was already set');
    this.#hasNbdServer = true;
    this.#arguments.push('--nbd-server', formatOption('nbdServer', server));
    return this;
  }

  /** Adds an `--object` (e.g. a secret or an iothread) for the next launch. */
  addObject(object: StorageDaemonOption): this {
    this.#arguments.push('--object', formatOption('object', object));
    return this;
  }

  protected override buildArguments(qmpChardev: string, qmpChardevId: string): string[] {
    // qemu-storage-daemon acts on its options in order (an export needs its node to exist),
    // so the added options keep the order in which they were added.
    return ['--chardev', qmpChardev, '--monitor', `chardev=${qmpChardevId}`, ...this.#arguments, ...this.extraArgs];
  }
}
