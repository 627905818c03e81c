/**
 * Keeps bench/ from rotting: runs the transport bench through its CLI with
 * tiny sizes and checks the JSON document on stdout, and that bad flags are
 * refused by name. Says nothing about performance.
 */
import { describe, expect, it } from 'vitest';
import { positive, runBench } from '../support/bench-cli.ts';

/** Ratios and their inputs are rounded to a few significant digits, so compare within 1 %. */
function expectRatio(ratio: number, numerator: number, denominator: number): void {
  expect(Math.abs(ratio / (numerator / denominator) - 1)).toBeLessThan(0.01);
}

describe('bench transport', () => {
  it('prints one JSON document with a case per size and the latency ratios', async () => {
    const { code, stdout, stderr } = await runBench(['transport', '--total-mb', '0.25', '--sizes', '1k,64k', '--rounds', '20', '--repeat', '1']);
    expect(code, stderr).toBe(0);
    const result: unknown = JSON.parse(stdout);
    expect(result).toMatchObject({
      bench: 'transport',
      node: process.version,
      cpus: positive,
      date: expect.any(String),
      loadavg: expect.any(Array),
      options: { sizes: [1024, 65536], total_bytes: 262144, rounds: 20, repeat: 1 },
      cases: [
        { size: 1024, messages: 256, bytes: 262144, tcp_mib_s: positive, framed_mib_s: positive, ratio: positive },
        { size: 65536, messages: 4, bytes: 262144, tcp_mib_s: positive, framed_mib_s: positive, ratio: positive },
      ],
      latency: {
        rounds: 20,
        tcp_p50_us: positive,
        tcp_p99_us: positive,
        framed_p50_us: positive,
        framed_p99_us: positive,
        ratio_p50: positive,
        ratio_p99: positive,
      },
    });
    const { cases, latency } = result as {
      cases: { ratio: number; tcp_mib_s: number; framed_mib_s: number; tcp_runs_mib_s: number[]; framed_runs_mib_s: number[] }[];
      latency: { ratio_p50: number; tcp_p50_us: number; framed_p50_us: number };
    };
    for (const c of cases) {
      // The ratio's direction is part of the contract: framed over tcp.
      expectRatio(c.ratio, c.framed_mib_s, c.tcp_mib_s);
      expect(c.tcp_runs_mib_s).toHaveLength(1);
      expect(c.framed_runs_mib_s).toHaveLength(1);
    }
    expectRatio(latency.ratio_p50, latency.framed_p50_us, latency.tcp_p50_us);
    expect(stderr).toContain('framed/tcp');
  });

  it('refuses a bad flag value, naming the flag', async () => {
    const { code, stdout, stderr } = await runBench(['transport', '--sizes', '1k,0']);
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toContain('--sizes: "0" is not a byte size');
  });

  it('refuses an unknown bench, listing the known ones', async () => {
    const { code, stderr } = await runBench(['no-such-bench']);
    expect(code).toBe(2);
    expect(stderr).toMatch(/unknown bench "no-such-bench"[\s\S]*transport/);
  });
});
