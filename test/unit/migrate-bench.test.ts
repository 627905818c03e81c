/**
 * Keeps bench/migrate.ts from rotting: one 128 MiB TCG guest, idle, migrated
 * once through the qemu transport and once by QEMU directly (with
 * --multifd N, also QEMU directly with the same multifd), through the bench
 * CLI; checks the JSON document (all converged, downtimes and the tick gap
 * measured, the ratios formed) and that a bad flag is refused by name. Says
 * nothing about speed.
 */
import { describe, expect, it } from 'vitest';
import { DEFAULT_MULTIFD } from '../../src/cloud/qemu/migration-qmp.ts';
import { runBench } from '../support/bench-cli.ts';

const nonNegative = expect.toSatisfy((v: unknown) => typeof v === 'number' && Number.isFinite(v) && v >= 0);
const stats = { n: 1, p50: nonNegative, p99: nonNegative, max: nonNegative };

describe('bench migrate', () => {
  it('prints one JSON document: one live migration each through dwcp, direct and direct-multifd (multifd on by default), all converged and measured', async () => {
    const { code, stdout, stderr } = await runBench(['migrate', '--runs', '1', '--rates', '0', '--memory-mib', '128'], { timeout: 280_000 });
    expect(code, stderr).toBe(0);
    const result = JSON.parse(stdout) as object;
    const side = { runs: 1, converged: 1, errors: [], total_ms: stats, qemu_downtime_ms: stats, tick_gap_guest_ms: stats, tick_gap_wall_ms: stats, wire_bytes: stats, daemon_cpu_ms: stats };
    expect(result).toMatchObject({
      bench: 'migrate',
      loadavg: expect.any(Array),
      loadavg_after: expect.any(Array),
      options: { runs: 1, rates_mib_s: [0], memory_mib: 128, downtime_limit_ms: 300, multifd: DEFAULT_MULTIFD, references: ['direct', 'direct-multifd'] },
      ratios: { total_p50: expect.any(String) },
      results: [{ rate_mib_s: 0, dwcp: side, references: [{ method: 'direct', ...side, ratio: { total_p50: nonNegative } }, { method: 'direct-multifd', ...side, ratio: { total_p50: nonNegative } }] }],
    });
  }, 300_000);

  it('refuses a bad flag by name', async () => {
    const { code, stderr } = await runBench(['migrate', '--rates', '5,x']);
    expect(code).toBe(2);
    expect(stderr).toContain('--rates: must be whole MiB/s from 0 to 1000');
    const multifd = await runBench(['migrate', '--multifd-compression', 'lzma']);
    expect(multifd.code).toBe(2);
    expect(multifd.stderr).toContain('--multifd-compression: must be one of none, zlib, zstd, got "lzma"');
    const references = await runBench(['migrate', '--references', 'direct,tcp']);
    expect(references.code).toBe(2);
    expect(references.stderr).toContain('--references: must name one or both of direct, direct-multifd');
  });
});
