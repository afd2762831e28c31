// The pinned QAPI input: Debian 12's qemu source package, the one the installed binaries come from.
export const QEMU_SOURCE_PACKAGE = 'qemu';
export const QEMU_SOURCE_VERSION = '1:7.2+dfsg-7+deb12u18';
