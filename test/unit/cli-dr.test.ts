/**
 * dwcpctl's disaster recovery: the flags of `vm protect` refused by name
 * before anything is asked of the daemon (exit 2), and the rendering of
 * `dr status` (the list and one VM, RPO over target marked).
 */
import { describe, expect, it } from 'vitest';
import type { DrVmStatusInfo } from '../../src/admin/schema.ts';
import { main } from '../../src/cli/main.ts';
import { formatDrStatus, formatDrVm } from '../../src/cli/dr.ts';

async function run(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await main(['--socket', '/nonexistent/dwcp-test.sock', ...argv], {}, { stdout: (t) => void (stdout += t), stderr: (t) => void (stderr += t) });
  return { code, stdout, stderr };
}

const S: DrVmStatusInfo = {
  vm: 'web1',
  state: 'failed-over',
  region: 'dc2',
  generation: '2',
  dr_region: 'dc2',
  dr_provider: 'local',
  rpo_target_ms: '300000',
  rto_target_ms: '600000',
  retention_ms: '604800000',
  failback: 'auto',
  failed_over_from: 'dc1/local',
  failover_reason: 'dc1 failed 3 consecutive checks (on dc3)',
  failed_over_at: '2026-12-06T10:00:00.000Z',
  last_backup_at: '2026-12-06T09:59:00.000Z',
  rpo_now_ms: '420000',
  rpo_over: true,
  rto_measured_ms: '21000',
  restored_backup: 'dr/backup/web1/000001796529540000-g1',
  restored_backup_at: '2026-12-06T09:59:00.000Z',
  data_loss_ms: '55000',
};

describe('dwcpctl vm protect and dr status', () => {
  it.each([
    [['vm', 'protect', 'web1'], '--dr-region is required (the region the VM fails over to)'],
    [['vm', 'protect', 'web1', '--dr-region', 'dc2', '--rpo', 'soon'], '--rpo: "soon" is not a duration from 10000 ms'],
    [['vm', 'protect', 'web1', '--dr-region', 'dc2', '--rto', '1s'], '--rto: "1s" is not a duration from 10000 ms'],
    [['vm', 'protect', 'web1', '--dr-region', 'dc2', '--retention', '400d'], '--retention: "400d" is not a duration'],
    [['vm', 'protect', 'web1', '--dr-region', 'dc2', '--failback', 'sometimes'], '--failback: "sometimes" is not one of auto, manual'],
    [['vm', 'protect'], "vm protect takes one argument, the managed VM's name"],
    [['vm', 'unprotect', 'a', 'b'], "vm unprotect takes one argument, the managed VM's name"],
    [['dr', 'failover'], 'dr needs a subcommand: status or test (got "failover")'],
    [['dr', 'test'], "dr test takes one argument, the managed VM's name"],
    [['vm', 'failback'], "vm failback takes one argument, the failed-over VM's name"],
    [['vm', 'failback', 'web1', '--to', 'dc3'], '--to: a failback goes where the VM failed over from'],
    [['vm', 'failback', 'web1', '--mode', 'teleport'], '--mode: "teleport" is not one of live, warm, cold'],
  ])('refuses %j by name, before asking the daemon', async (argv, message) => {
    const res = await run(...argv);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain(message);
  });

  it('renders the list and one VM, RPO over target marked', () => {
    expect(formatDrStatus([])).toContain('(no protected VMs');
    const table = formatDrStatus([S, { ...S, vm: 'db1', state: 'protected', region: 'dc1', rpo_now_ms: '60000', rpo_over: false, failed_over_from: null, rto_measured_ms: null }, { ...S, vm: 'new1', state: 'protected', last_backup_at: null, rpo_now_ms: null }]);
    expect(table).toMatch(/^VM +STATE +REGION +DR REGION +LAST BACKUP +RPO NOW\/TARGET +RTO TARGET +LAST RTO +FAILBACK/);
    expect(table).toMatch(/web1 +failed-over +dc2 g2 +dc2\/local +2026-12-06T09:59:00.000Z +7m 0s \/ 5m 0s OVER +10m 0s +21s +auto/);
    expect(table).toMatch(/db1 +protected +dc1 g2 .* 1m 0s \/ 5m 0s  /);
    expect(table).toMatch(/new1 .* no backup \/ 5m 0s OVER/);
    const one = formatDrVm(S);
    expect(one).toMatch(/Failed over from: +dc1\/local at 2026-12-06T10:00:00.000Z: dc1 failed 3 consecutive checks/);
    expect(one).toMatch(/Last RTO: +21s/);
    expect(one).toMatch(/Last backup: +2026-12-06T09:59:00.000Z/);
    expect(one).toMatch(/Restored backup: +dr\/backup\/web1\/000001796529540000-g1 taken 2026-12-06T09:59:00.000Z \(data loss 55s\)/);
  });
});
