import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Integration tests start real daemons; each waits on events, these are only upper bounds.
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Two cores in CI: more workers only make process-heavy tests slower.
    maxWorkers: 2,
  },
});
