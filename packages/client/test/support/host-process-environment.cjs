// Jest's node environment, plus the worker's real `process` as `globalThis.qmpkitHostProcess`.
// Inside a test, `process` is a copy whose 'uncaughtException' and 'unhandledRejection'
// listeners never fire; the hostile-peer tests need the real ones to pin a crash or an
// unhandled rejection on the fuzz run that caused it (jest alone only fails the whole test).
// Select it with a `@jest-environment ./test/support/host-process-environment.cjs` docblock.
const { TestEnvironment } = require('jest-environment-node');

class HostProcessEnvironment extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    this.global.qmpkitHostProcess = process;
  }
}

module.exports = HostProcessEnvironment;
