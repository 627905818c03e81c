/**
 * Keeps bench/placement.ts from rotting: runs it through the bench CLI with
 * small sizes and checks the JSON document, and that a bad flag is refused
 * by name. Says nothing about speed.
 */
import { describe, expect, it } from 'vitest';
import { positive, runBench } from '../support/bench-cli.ts';

const count = expect.toSatisfy((v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 0);

describe('bench placement', () => {
  it('prints one JSON document with a case per region count, policy rule count and strategy', async () => {
    const { code, stdout, stderr } = await runBench(['placement', '--regions', '5,12', '--rules', '0,50', '--vms', '300', '--decisions', '50', '--warmup', '5']);
    expect(code, stderr).toBe(0);
    const result = JSON.parse(stdout) as { cases: { placed: number; refused: number; decisions: number }[] };
    const oneCase = {
      vms: 300,
      constraints: 5,
      decisions: 50,
      placed: count,
      refused: count,
      decisions_per_s: positive,
      p50_ms: positive,
      p99_ms: positive,
      cpu_ms_per_decision: expect.any(Number),
      view_build_ms: expect.any(Number),
    };
    expect(result).toMatchObject({
      bench: 'placement',
      loadavg: expect.any(Array),
      options: { regions: [5, 12], rules: [0, 50], vms: 300, decisions: 50, warmup: 5, seed: 1, constraints: 5 },
      cases: [
        { regions: 5, strategy: 'binpack', rules: 0, ...oneCase },
        { regions: 5, strategy: 'spread', rules: 0, ...oneCase },
        { regions: 5, strategy: 'binpack', rules: 50, ...oneCase },
        { regions: 5, strategy: 'spread', rules: 50, ...oneCase },
        { regions: 12, strategy: 'binpack', rules: 0, ...oneCase },
        { regions: 12, strategy: 'spread', rules: 0, ...oneCase },
        { regions: 12, strategy: 'binpack', rules: 50, ...oneCase },
        { regions: 12, strategy: 'spread', rules: 50, ...oneCase },
      ],
      floor: { regions: 1000, decisions_per_s: 1000, p99_ms: 5, met: null },
    });
    for (const c of result.cases) expect(c.placed + c.refused).toBe(c.decisions);
    // Some decisions land and some do not: the 5 constraints bite without excluding everything.
    expect(result.cases.some((c) => c.placed > 0)).toBe(true);
  });

  it('refuses a bad flag by name', async () => {
    const { code, stderr } = await runBench(['placement', '--regions', '0']);
    expect(code).toBe(2);
    expect(stderr).toContain('--regions: region counts must be whole numbers from 1 to 5000');
    const rules = await runBench(['placement', '--rules', '0,999']);
    expect(rules.code).toBe(2);
    expect(rules.stderr).toContain('--rules: rule counts must be whole numbers from 0 to 256');
  });
});
