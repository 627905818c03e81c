/**
 * Prometheus' own exposition linter (`promtool check metrics`, Debian package
 * "prometheus") and rule checker (`check rules`, `test rules` of the shipped
 * files in config/prometheus/) for tests. Where promtool is missing the check is skipped with
 * a visible reason, except under CI=true, where .ci/run installs it and its
 * absence is a failure.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';

/** promtool's verdict on an exposition text, or undefined when promtool is not installed. */
export function promtool(input: string): { status: number | null; output: string } | undefined {
  const run = spawnSync('promtool', ['check', 'metrics'], { input, encoding: 'utf8' });
  if ((run.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return undefined;
  if (run.error) throw run.error;
  return { status: run.status, output: run.stdout + run.stderr };
}

/** promtool's verdict, or a skip (outside CI) when it is not installed. */
export function lintMetrics(text: string, ctx: { skip: (note: string) => void }): { status: number | null; output: string } | undefined {
  const verdict = promtool(text);
  if (!verdict) {
    if (process.env.CI === 'true') throw new Error('promtool is required under CI=true (Debian package "prometheus")');
    ctx.skip('promtool not installed (Debian package "prometheus"); exposition format not linted');
  }
  return verdict;
}

const RULES_DIR = fileURLToPath(new URL('../../config/prometheus/', import.meta.url));

/** A shipped rule file passes `promtool check rules` (with `rules` rules) and `promtool test rules` of its .test.yml; a skip (outside CI) without promtool. */
export function checkShippedRules(ctx: { skip: (note: string) => void }, file: string, rules: number): void {
  const check = spawnSync('promtool', ['check', 'rules', file], { cwd: RULES_DIR, encoding: 'utf8' });
  if ((check.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
    if (process.env.CI === 'true') throw new Error('promtool is required under CI=true (Debian package "prometheus")');
    ctx.skip('promtool not installed (Debian package "prometheus")');
    return;
  }
  expect(check.stdout + check.stderr).toContain(`SUCCESS: ${rules} rules found`);
  expect(check.status).toBe(0);
  const test = spawnSync('promtool', ['test', 'rules', file.replace(/\.yml$/, '.test.yml')], { cwd: RULES_DIR, encoding: 'utf8' });
  expect(test.stdout + test.stderr).toContain('SUCCESS');
  expect(test.status).toBe(0);
}
