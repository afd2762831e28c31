// Shared jest settings. Tests are compiled to CommonJS by ts-jest (isolatedModules: type errors
// are caught by each package's `typecheck` task instead), and imports written with NodeNext's
// ".js" suffix are mapped back to the .ts sources.
const path = require('node:path');

module.exports = function jestConfig(dir, overrides = {}) {
  return {
    rootDir: dir,
    testEnvironment: 'node',
    testMatch: ['<rootDir>/src/**/*.test.ts', '<rootDir>/test/**/*.test.ts'],
    moduleFileExtensions: ['ts', 'js', 'cjs', 'json'],
    moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
    transform: {
      '^.+\\.ts$': [
        'ts-jest',
        {
          tsconfig: {
            module: 'commonjs',
            moduleResolution: 'node10',
            target: 'ES2022',
            isolatedModules: true,
            esModuleInterop: true,
            lib: ['ES2022', 'ESNext.Disposable'],
          },
        },
      ],
    },
    cacheDirectory: path.join(__dirname, 'node_modules', '.cache', 'jest'),
    testTimeout: 60_000,
    reporters: ['default', path.join(__dirname, 'scripts', 'jest-results-reporter.cjs')],
    ...overrides,
  };
};
