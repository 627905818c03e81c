/**
 * Prometheus' own exposition linter (`promtool check metrics`, Debian package
 * "prometheus") for tests. Where promtool is missing the check is skipped with
 * a visible reason, except under CI=true, where .ci/run installs it and its
 * absence is a failure.
 */
import { spawnSync } from 'node:child_process';

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
