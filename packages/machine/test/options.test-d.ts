// Compile-time tests, checked by the package's `typecheck` task (tsc over src and test); jest
// does not run this file. Each @ts-expect-error line must fail to compile, or tsc reports the
// directive as unused: a misspelt key, driver, export type or object type is a compile error,
// and untyped() is the one way past the schema.
import {
  QemuMachine,
  QemuStorageDaemon,
  untyped,
  type BlockdevOption,
  type DriveOptions,
  type QemuStorageDaemonOptions,
} from '../src/index.js';

const filename = 'disk.qcow2';

// Well-typed options compile.
export const good: QemuStorageDaemonOptions = {
  blockdevs: [
    { driver: 'file', filename, 'node-name': 'file0' },
    { driver: 'qcow2', file: 'file0', 'node-name': 'node0', 'read-only': true },
    { driver: 'qcow2', 'node-name': 'node1', file: { driver: 'file', filename, 'aio': 'threads' } },
    `driver=file,filename=${filename},node-name=file1`,
  ],
  nbdServer: { addr: { type: 'unix', path: '/tmp/nbd.sock' }, 'max-connections': 4 },
  exports: [{ type: 'nbd', id: 'exp0', 'node-name': 'node0', writable: true, name: 'exp0' }],
  objects: [{ 'qom-type': 'iothread', id: 'iothread0', 'poll-max-ns': 0 }],
};
export const drive: DriveOptions = { file: filename, format: 'qcow2', id: 'drive0' };

// @ts-expect-error a misspelt driver
export const badDriver: BlockdevOption = { driver: 'qcow3', filename };

// @ts-expect-error a misspelt key: "drvier"
export const misspeltKey: BlockdevOption = { drvier: 'qcow2', file: 'file0' };

// @ts-expect-error a misspelt member of the file driver: "filenmae"
export const misspeltMember: BlockdevOption = { driver: 'file', filenmae: filename };

// @ts-expect-error a misspelt nested driver
export const misspeltNested: BlockdevOption = { driver: 'qcow2', file: { driver: 'fiel', filename } };

// @ts-expect-error an unknown key beside a complete, valid set ("cahce" for "cache")
export const extraKey: BlockdevOption = { driver: 'file', filename, cahce: { direct: true } };

// @ts-expect-error a required member missing: the file driver needs a filename
export const missingMember: BlockdevOption = { driver: 'file', 'node-name': 'file0' };

// @ts-expect-error a value outside the enum (aio is threads | native | io_uring)
export const wrongEnum: BlockdevOption = { driver: 'file', filename, aio: 'posix' };

// @ts-expect-error a drive format that is no block driver ("qcow" is one; "qcow3" is not)
export const badFormat: DriveOptions = { file: filename, format: 'qcow3', id: 'drive0' };

export const badExport: QemuStorageDaemonOptions = {
  // @ts-expect-error an export type that does not exist
  exports: [{ type: 'nbdx', id: 'exp0', 'node-name': 'node0' }],
};

export const badObject: QemuStorageDaemonOptions = {
  // @ts-expect-error an object type that does not exist
  objects: [{ 'qom-type': 'io-thread', id: 'iothread0' }],
};

export const badNbdServer: QemuStorageDaemonOptions = {
  // @ts-expect-error the NBD server needs an address of a known type
  nbdServer: { addr: { type: 'vsock2', path: '/tmp/nbd.sock' } },
};

// The escape hatch: untyped() passes anything, on purpose.
export const escaped: QemuStorageDaemonOptions = {
  blockdevs: [untyped({ driver: 'qcow3', filenmae: filename })],
  exports: [untyped({ type: 'nbdx' })],
  objects: [untyped({ 'qom-type': 'io-thread', id: 'x' })],
};
export const escapedFormat: DriveOptions = { file: filename, format: untyped('qcow3'), id: 'drive0' };

// The methods take the same types.
export function methods(vm: QemuMachine, qsd: QemuStorageDaemon): void {
  vm.addBlockdev({ driver: 'raw', file: 'file0', 'node-name': 'raw0' });
  // @ts-expect-error misspelt key through the method
  vm.addBlockdev({ driver: 'raw', flie: 'file0' });
  vm.addObject({ 'qom-type': 'iothread', id: 'io1' });
  // @ts-expect-error an iothread has no "size"
  vm.addObject({ 'qom-type': 'iothread', id: 'io1', size: 4 });
  qsd.addExport({ type: 'nbd', id: 'e', 'node-name': 'n' });
  // @ts-expect-error an export needs its node-name
  qsd.addExport({ type: 'nbd', id: 'e' });
}
