/**
 * Keeps bench/policy.ts from rotting: runs it through the bench CLI with
 * small sizes and checks the JSON document and that a bad flag is refused by
 * name. Says nothing about speed.
 */
import { describe, expect, it } from 'vitest';
import { positive, runBench } from '../support/bench-cli.ts';
import { benchPolicies } from '../../bench/policy.ts';

describe('bench policy', () => {
  it('prints one JSON document with the state machine\'s and placement\'s evaluation, against the floor', async () => {
    const { code, stdout, stderr } = await runBench(['policy', '--regions', '20', '--vms', '20', '--evaluations', '2000', '--audit-vms', '200']);
    expect(code, stderr).toBe(0);
    const result = JSON.parse(stdout) as { cases: { mode: string; denied: number }[] };
    const oneCase = { evaluations: 2000, p50_ms: positive, p99_ms: positive, max_ms: positive, cpu_ms_per_evaluation: expect.any(Number), denied: expect.any(Number) };
    expect(result).toMatchObject({
      bench: 'policy',
      loadavg: expect.any(Array),
      options: { rules: 50, regions: 20, vms: 20, evaluations: 2000, auditVms: 200, seed: 1, candidates: 30 },
      cases: [
        { mode: 'evaluate', ...oneCase },
        { mode: 'scope', ...oneCase },
      ],
      ratio_p99: { evaluate: 1, scope: positive },
      floor: { rules: 50, p99_ms: 0.1, met: expect.any(Boolean) },
      audit: { vms: positive, violations: expect.any(Number), full: { wall_ms: positive, cpu_ms: expect.any(Number) }, incremental: { wall_ms: positive, cpu_ms: expect.any(Number) }, us_per_vm_full: positive },
    });
    // Both ways see the same candidates in the same order: the same verdicts.
    expect(result.cases[0]?.denied).toBe(result.cases[1]?.denied);
  });

  it('its 50 rules compile, all of them with empty selectors, and some deny', () => {
    const policies = benchPolicies(50);
    expect(policies.flatMap((p) => p.rules)).toHaveLength(50);
    expect(policies.flatMap((p) => p.rules).every((r) => Object.keys(r.selector).length === 0)).toBe(true);
    expect(benchPolicies(7).flatMap((p) => p.rules)).toHaveLength(7);
  });

  it('refuses a bad flag by name', async () => {
    const { code, stderr } = await runBench(['policy', '--rules', '0']);
    expect(code).toBe(2);
    expect(stderr).toContain('--rules: must be a whole number of at least 1');
  });
});
