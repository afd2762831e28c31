// A jest reporter that records each package's counts in one folder, so `npm test` can end with
// a single "N passed, N failed" line over every package (jest prints one summary per package).
const fs = require('node:fs');
const path = require('node:path');

class ResultsFileReporter {
  constructor(globalConfig) {
    this.rootDir = globalConfig.rootDir;
  }

  onRunComplete(_contexts, results) {
    const dir = process.env.QMPKIT_TEST_RESULTS_DIR;
    if (!dir) return;
    fs.mkdirSync(dir, { recursive: true });
    const pkg = JSON.parse(fs.readFileSync(path.join(this.rootDir, 'package.json'), 'utf8')).name;
    // The test matrix runs packages again on other QEMU releases; each run keeps its own record.
    const series = process.env.QMPKIT_TEST_SERIES;
    const name = series ? `${pkg} on QEMU ${series}` : pkg;
    const record = {
      name,
      passed: results.numPassedTests,
      failed: results.numFailedTests + results.numRuntimeErrorTestSuites,
      skipped: results.numPendingTests + results.numTodoTests,
      suites: results.numTotalTestSuites,
    };
    fs.writeFileSync(path.join(dir, `${name.replace(/[@/ ]/g, '_')}.json`), JSON.stringify(record) + '\n');
  }
}

module.exports = ResultsFileReporter;
