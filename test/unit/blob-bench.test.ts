/**
 * Keeps bench/delta.ts from rotting: runs it through the bench CLI at a tiny
 * size (two real daemons, a few MiB) and checks the JSON document's shape
 * and its own arithmetic (flag refusal is bench/run.ts's, tested there). Says
 * nothing about performance: the floors are for the 1 GiB run
 * (bench/RESULTS.md).
 */
import { describe, expect, it } from 'vitest';
import { positive, runBench } from '../support/bench-cli.ts';

describe('bench delta', () => {
  it('prints one JSON document with the delta, cache and bulk parts', async () => {
    const { code, stdout, stderr } = await runBench(['delta', '--size-mb', '4', '--repeat', '1', '--bulk-mb', '1', '--streams', '2', '--cache-keys', '20', '--cache-rounds', '5'], { timeout: 90_000, maxBuffer: 16 * 1024 * 1024 });
    expect(code, stderr).toBe(0);
    type Figures = { kind: string; transfer_seconds: number; wire_bytes_sent: number; manifest_bytes_sent: number };
    const r = JSON.parse(stdout) as {
      delta: { size_bytes: number; rounds: { full: Figures; delta: Figures; wire_ratio: number; time_ratio: number }[]; wire_ratio: number; time_ratio: number; verified: boolean };
      cache: { lookups: number; hits: number; misses: number; hit_ratio: number };
      bulk: { runs: { streams: number; mib_s: number; ratio: number }[]; tcp_mib_s: number; best_streams: number };
    };
    expect(r).toMatchObject({
      bench: 'delta',
      options: { size_bytes: 4 * 1024 * 1024, repeat: 1, streams: [2], cache_regions: 5, cache_keys: 20, cache_rounds: 5 },
      delta: { rounds: [{ full: { kind: 'full', transfer_seconds: positive }, delta: { kind: 'delta', transfer_seconds: positive } }], verified: true },
      bulk: { runs: [{ streams: 2, mib_s: positive, ratio: positive, attempts: 1 }], tcp_mib_s: positive, best_streams: 2 },
    });
    const [round] = r.delta.rounds;
    if (round === undefined) throw new Error('no round');
    expect(Math.abs(round.wire_ratio / ((round.delta.wire_bytes_sent + round.delta.manifest_bytes_sent) / r.delta.size_bytes) - 1)).toBeLessThan(0.01);
    expect(Math.abs(round.time_ratio / (round.delta.transfer_seconds / round.full.transfer_seconds) - 1)).toBeLessThan(0.01);
    expect(r.delta.time_ratio).toBe(round.time_ratio);
    expect(r.cache.hits + r.cache.misses).toBe(r.cache.lookups);
    expect(r.cache.hit_ratio).toBeCloseTo(r.cache.hits / r.cache.lookups, 3);
    expect(stderr).toContain('wire ratio');
  }, 100_000);

  it("--format qcow2 syncs a real qcow2 and its in-place rewrite (a warm migration's final delta) as a delta, verified", async () => {
    const { code, stdout, stderr } = await runBench(['delta', '--format', 'qcow2', '--size-mb', '4', '--repeat', '1', '--bulk-mb', '1', '--streams', '1', '--cache-keys', '10', '--cache-rounds', '2'], { timeout: 90_000, maxBuffer: 16 * 1024 * 1024 });
    expect(code, stderr).toBe(0);
    const r = JSON.parse(stdout) as { options: { format: string }; delta: { rounds: { full: { kind: string }; delta: { kind: string }; wire_ratio: number }[]; verified: boolean } };
    expect(r.options.format).toBe('qcow2');
    expect(r.delta.verified).toBe(true);
    expect(r.delta.rounds[0]).toMatchObject({ full: { kind: 'full' }, delta: { kind: 'delta' } });
    // 1 % of the blocks: a small part of the file goes again, however the chunks fall.
    expect(r.delta.rounds[0]?.wire_ratio).toBeLessThan(0.5);
    expect(stderr).toMatch(/as qcow2: [\d.]+ MiB file, 10 guest blocks rewritten in place/);
  }, 100_000);
});
