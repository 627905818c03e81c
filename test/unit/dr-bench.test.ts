/**
 * Keeps bench/dr.ts from rotting: runs it through the bench CLI with 4
 * protected VMs and shortened DR timings (checks every 500 ms) on 3 real
 * daemons, and checks its JSON document: the blip failed nothing over,
 * every VM ran at the DR region with an RTO measured, no copy ran twice.
 * Says nothing about speed (the floors are for the full run).
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const RUN = fileURLToPath(new URL('../../bench/run.ts', import.meta.url));

describe('bench dr', () => {
  it('prints one JSON document: no failover after a blip, every VM running at the DR region, none twice', async () => {
    const args = ['dr', '--vms', '4', '--concurrency', '2', '--check-ms', '500', '--fence-after-ms', '1500', '--hold-ms', '3000', '--lease-ms', '2000', '--blip-ms', '400', '--poll-ms', '100', '--timeout-ms', '60000'];
    const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve, reject) => {
      execFile(process.execPath, [RUN, ...args], { timeout: 170_000 }, (err, out, errOut) => {
        if (err !== null && typeof err.code !== 'number') reject(err);
        else resolve({ code: err === null ? 0 : Number(err.code), stdout: out, stderr: errOut });
      });
    });
    expect(code, stderr).toBe(0);
    const result = JSON.parse(stdout) as { blip: { failovers: number }; rto: { n: number }; double_running: number; detection_ms: number; all_running_ms: number };
    expect(result).toMatchObject({ bench: 'dr', blip: { failovers: 0 }, rto: { n: 4 }, double_running: 0 });
    expect(result.detection_ms).toBeGreaterThan(0);
    expect(result.all_running_ms).toBeGreaterThanOrEqual(result.detection_ms);
  }, 180_000);
});
