/**
 * `dwcpctl policy` without a daemon: usage mistakes exit 2 naming what is
 * missing, an unreadable file exits 1 naming it (before any call), and the
 * violations table.
 */
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.ts';
import { formatViolations } from '../../src/cli/policy.ts';

async function run(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  // A socket that does not exist: any call would fail as unreachable, which these cases never reach.
  const code = await main(['--socket', '/nonexistent/dwcp.sock', ...argv], {}, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) });
  return { code, stdout, stderr };
}

describe('dwcpctl policy', () => {
  it('refuses a missing or unknown subcommand and missing files with the usage hint', async () => {
    expect(await run('policy')).toMatchObject({ code: 2, stderr: expect.stringContaining('policy needs a subcommand: apply, list, show, test or violations') });
    expect(await run('policy', 'remove')).toMatchObject({ code: 2, stderr: expect.stringContaining('(got "remove")') });
    expect(await run('policy', 'apply')).toMatchObject({ code: 2, stderr: expect.stringContaining('policy apply takes one or more FILEs') });
    expect(await run('policy', 'test')).toMatchObject({ code: 2, stderr: expect.stringContaining('policy test takes one or more FILEs') });
    expect(await run('policy', 'show')).toMatchObject({ code: 2, stderr: expect.stringContaining('policy show takes NAME') });
    expect(await run('policy', 'list', 'extra')).toMatchObject({ code: 2, stderr: expect.stringContaining('policy list takes no arguments') });
  });

  it('names a file it cannot read, before calling the daemon', async () => {
    const res = await run('policy', 'apply', '/nonexistent/eu.yaml');
    expect(res.code).toBe(1);
    expect(res.stderr).toBe('dwcpctl: /nonexistent/eu.yaml: no such file or directory, access \'/nonexistent/eu.yaml\'\n');
  });

  it('prints violations as a table', () => {
    expect(
      formatViolations([{ vm: 'pii', region: 'us', provider: 'local', generation: 1, operation: 'place', policy: 'eu-residency', rule: 'personal-data-in-eu', effect: 'deny', message: 'stays in the EU', error: null }]),
    ).toBe('VM   REGION  PROVIDER  EFFECT  POLICY        RULE                 MESSAGE\npii  us      local     deny    eu-residency  personal-data-in-eu  stays in the EU\n');
    expect(formatViolations([])).toBe('');
  });
});
