/**
 * Keeps bench/placement-e2e.ts from rotting: runs it through the bench CLI
 * with 3 managed and 3 reference VMs on 3 real daemons, checks the JSON
 * document and that every VM reached running, and that a bad flag is
 * refused by name. Says nothing about speed.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const RUN = fileURLToPath(new URL('../../bench/run.ts', import.meta.url));

function bench(args: string[], timeout: number): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [RUN, ...args], { timeout }, (err, stdout, stderr) => {
      if (err !== null && typeof err.code !== 'number') reject(err);
      else resolve({ code: err === null ? 0 : Number(err.code), stdout, stderr });
    });
  });
}

const positive = expect.toSatisfy((v: unknown) => typeof v === 'number' && Number.isFinite(v) && v > 0);
const stats = (n: number) => ({ n, p50_ms: positive, p99_ms: positive, max_ms: positive });

describe('bench placement-e2e', () => {
  it('prints one JSON document; every managed and reference VM reached running', async () => {
    const { code, stdout, stderr } = await bench(['placement-e2e', '--vms', '3', '--reference', '3', '--poll-ms', '50', '--gap-ms', '200', '--running-timeout-ms', '10000'], 28_000);
    expect(code, stderr).toBe(0);
    const result = JSON.parse(stdout) as { managed: { placed_by_region: Record<string, number>; running_entry_region: { n: number } | null; running_other_region: { n: number } | null } };
    expect(result).toMatchObject({
      bench: 'placement-e2e',
      loadavg: expect.any(Array),
      loadavg_after: expect.any(Array),
      options: { vms: 3, reference: 3, concurrency: 1, gap_ms: 200, poll_ms: 50, reconcile_interval_ms: 500, publish_interval_ms: 500, inventory_interval_ms: 500, transition_delay_ms: 0, regions: 3 },
      ratios: { running_p50: expect.any(String), running_p99: expect.any(String), placed_p50: expect.any(String) },
      resolution_ms: positive,
      managed: { vms: 3, vms_running: 3, creates_per_s: positive, running_per_s: positive, placed: stats(3), created: stats(3), running: stats(3) },
      reference: { vms: 3, vms_running: 3, creates_per_s: positive, created: stats(3), running: stats(3) },
      ratio: { running_p50: positive, running_p99: positive, placed_p50: positive },
    });
    const placed = Object.values(result.managed.placed_by_region).reduce((a, b) => a + b, 0);
    expect(placed).toBe(3);
    expect((result.managed.running_entry_region?.n ?? 0) + (result.managed.running_other_region?.n ?? 0)).toBe(3);
  }, 30_000);

  it('refuses a bad flag by name', async () => {
    const { code, stderr } = await bench(['placement-e2e', '--reconcile-ms', '5'], 20_000);
    expect(code).toBe(2);
    expect(stderr).toContain('--reconcile-ms: must be a whole number of at least 100');
  });
});
