/**
 * dwcpctl's migrations: the flags of `vm migrate` refused by name before
 * anything is asked of the daemon (exit 2), and the rendering of the list
 * and of one migration.
 */
import { describe, expect, it } from 'vitest';
import type { MigrationInfo } from '../../src/admin/schema.ts';
import { main } from '../../src/cli/main.ts';
import { formatMigration, formatMigrations } from '../../src/cli/migration.ts';

async function run(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await main(['--socket', '/nonexistent/dwcp-test.sock', ...argv], {}, { stdout: (t) => void (stdout += t), stderr: (t) => void (stderr += t) });
  return { code, stdout, stderr };
}

const M: MigrationInfo = {
  id: 'm3',
  vm: 'web1',
  mode: 'live',
  source_region: 'dc1',
  source_provider: 'qemu',
  source_generation: '4',
  target_region: 'dc2',
  target_provider: 'qemu',
  target_generation: '5',
  phase: 'rolling-back',
  result: 'rolled-back',
  reason: 'cancelled by operator (on dc2)',
  bytes: '3145728',
  rounds: 3,
  downtime_ms: null,
  max_downtime_ms: 300,
  started_at: '2026-12-06T10:00:00.000Z',
  updated_at: '2026-12-06T10:00:05.000Z',
  ended_at: '2026-12-06T10:00:07.000Z',
  waiting: null,
  transfer_step: null,
  transfer_status: null,
  transfer_bytes: null,
};

describe('dwcpctl vm migrate and migration', () => {
  it.each([
    [['vm', 'migrate', 'web1'], '--to is required (the target region)'],
    [['vm', 'migrate', 'web1', '--to', 'dc2', '--mode', 'hot'], '--mode: "hot" is not one of live, warm, cold'],
    [['vm', 'migrate', 'web1', '--to', 'dc2', '--max-downtime', '300ms'], '--max-downtime: only a live migration has a downtime limit (--mode is cold)'],
    [['vm', 'migrate', 'web1', '--to', 'dc2', '--mode', 'live', '--max-downtime', 'soon'], '--max-downtime: "soon" is not a duration'],
    [['vm', 'migrate'], "vm migrate takes one argument, the managed VM's name"],
    [['migration', 'status'], 'migration status takes ID (got 0 arguments)'],
    [['migration', 'drop', 'm1'], 'migration needs a subcommand: list, status or cancel (got "drop")'],
  ])('refuses %j by name, before asking the daemon', async (argv, message) => {
    const res = await run(...argv);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain(message);
  });

  it('renders the list and one migration', () => {
    expect(formatMigrations([])).toBe('(no migrations)\n');
    const table = formatMigrations([M]);
    expect(table).toMatch(/^ID +VM +MODE +FROM +TO +STATE +BYTES +DOWNTIME +STARTED +REASON/);
    expect(table).toContain('m3  web1  live  dc1/qemu g4  dc2/qemu g5  rolled-back  3.0 MiB  -');
    expect(table).toContain('cancelled by operator (on dc2)');
    const one = formatMigration({ ...M, result: null, phase: 'transfer', reason: null, ended_at: null, waiting: 'the live transfer (1000 bytes, round 3)', transfer_step: 'live', transfer_status: 'running', transfer_bytes: '1000' });
    expect(one).toMatch(/Mode: +live \(max downtime 300 ms\)/);
    expect(one).toMatch(/From: +dc1\/qemu \(generation 4\)/);
    expect(one).toMatch(/Result: +\(under way\)/);
    expect(one).toMatch(/Waiting for: +the live transfer/);
    expect(one).toMatch(/Transfer: +live running \(1000 B\)/);
    expect(one).not.toContain('Reason');
  });
});
