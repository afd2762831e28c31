// Public API of @qmpkit/schema's default entry: the types of QEMU 7.2.
//
// Why 7.2 and not the newest: it is the system QEMU of Debian 12, the platform this SDK runs
// and tests on first, and the types every existing consumer was written against, so the
// default entry does not change under them. Code for another QEMU imports its series
// explicitly: `@qmpkit/schema/qemu-10.0` (Debian 13), `@qmpkit/schema/qemu-7.2`, ... with the
// same names; `@qmpkit/schema/versions` has every series' runtime tables.
export * from './generated/qemu-7.2/index.js';
