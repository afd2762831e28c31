import { MachineConfigError } from './errors.js';
import {
  formatStructuredOption,
  type BlockdevOption,
  type BlockExportOption,
  type NbdServerOption,
  type ObjectOption,
} from './option-syntax.js';
import { QemuProcess, type QemuProcessOptions, type TimeoutOptions } from './qemu-process.js';

export interface QemuStorageDaemonOptions extends QemuProcessOptions {
  /** `--blockdev` values (`BlockdevOptions`), e.g. `{ driver: 'qcow2', 'node-name': 'node0', file: { driver: 'file', filename } }`. */
  blockdevs?: readonly BlockdevOption[];
  /** `--export` values (`BlockExportOptions`), e.g. `{ type: 'nbd', id: 'exp0', 'node-name': 'node0', writable: true }`. */
  exports?: readonly BlockExportOption[];
  /** The `--nbd-server` value (`NbdServerOptions`), e.g. `{ addr: { type: 'unix', path } }`. */
  nbdServer?: NbdServerOption;
  /** `--object` values (`ObjectOptions`), e.g. `{ 'qom-type': 'iothread', id: 'iothread0' }`. */
  objects?: readonly ObjectOption[];
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
  addBlockdev(blockdev: BlockdevOption): this {
    this.#arguments.push('--blockdev', formatStructuredOption('blockdev', blockdev));
    return this;
  }

  /** Adds an `--export` for the next launch (its node must be added first). */
  addExport(exported: BlockExportOption): this {
    this.#arguments.push('--export', formatStructuredOption('export', exported));
    return this;
  }

  /** Sets the `--nbd-server` for the next launch (the daemon runs at most one). */
  setNbdServer(server: NbdServerOption): this {
    if (this.#hasNbdServer) throw new MachineConfigError('nbdServer', server, 'an NBD server was already set');
    this.#hasNbdServer = true;
    this.#arguments.push('--nbd-server', formatStructuredOption('nbdServer', server));
    return this;
  }

  /** Adds an `--object` (e.g. a secret or an iothread) for the next launch. */
  addObject(object: ObjectOption): this {
    this.#arguments.push('--object', formatStructuredOption('object', object));
    return this;
  }

  protected override buildArguments(qmpChardev: string, qmpChardevId: string): string[] {
    // qemu-storage-daemon acts on its options in order (an export needs its node to exist),
    // so the added options keep the order in which they were added.
    return ['--chardev', qmpChardev, '--monitor', `chardev=${qmpChardevId}`, ...this.#arguments, ...this.extraArgs];
  }
}
