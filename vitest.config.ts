import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: TF.js suites are CPU-bound, so run files in two workers at most.
    maxWorkers: 2,
    pool: 'forks',
  },
});
