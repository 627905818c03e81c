/**
 * The observed fleet with real processes: three dwcpd daemons, each with a
 * local provider of declared capacity and its own prices and labels.
 *
 * What it proves:
 * - a VM created on one region through the per-provider path
 *   (`vm create --provider local`) appears in `vm list --all` on every node
 *   with that region in the REGION column once the geo store converged, and
 *   `fleet status` agrees across nodes (regions, providers, capacity, usage,
 *   VMs by state, labels);
 * - `--region` and `--label` select;
 * - after kill -9 of that region's daemon, the survivors show its VMs as
 *   `unknown` with the report's age (never `running` as if current), in
 *   `vm list --all`, in `fleet status` and in dwcp_fleet_vms /
 *   dwcp_fleet_region_report_age_seconds (promtool-clean).
 *
 * No sleeps as synchronisation: log lines are awaited, other daemons' views
 * are polled with a deadline.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FleetRegion, FleetStatusResponse, FleetVm } from '../../src/admin/schema.ts';
import { RaftCluster } from './raft-cluster.ts';
import { eventually, metricValue, type CtlResult } from './harness.ts';
import { lintMetrics } from '../support/promtool.ts';

const PUBLISH_MS = 500;
const STALE_MS = 2_000;
/** From a create (or a kill) until every survivor shows it, on a loaded 2-core machine. */
const CONVERGENCE_MS = 20_000;
const POLL_MS = 150;

let cluster: RaftCluster;

const ctl = (i: number, ...args: string[]): Promise<CtlResult> => cluster.ctl(i, ...args);

async function json<T>(i: number, ...args: string[]): Promise<T> {
  const res = await ctl(i, ...args, '--json');
  expect(res.stderr, `n${i + 1}: dwcpctl ${args.join(' ')}`).toBe('');
  expect(res.code).toBe(0);
  return JSON.parse(res.stdout) as T;
}

/** What two converged nodes must agree on (ages, phi and "this node" differ by who answers). */
function agreed(s: FleetStatusResponse): unknown {
  return s.regions.map((r: FleetRegion) => ({
    region: r.region,
    location: r.location,
    providers: r.providers.map((p) => ({ ...p })),
    vms_by_state: r.vms_by_state,
    vcpus_used: r.vcpus_used,
    vcpus_total: r.vcpus_total,
    memory_gib_used: r.memory_gib_used,
    memory_gib_total: r.memory_gib_total,
    price_per_hour: r.price_per_hour,
    labels: r.labels,
    jurisdiction: r.jurisdiction,
    compliance: r.compliance,
    report: r.report,
  }));
}

beforeAll(async () => {
  cluster = await RaftCluster.start('fleet', 3, {
    extra: (i) => ({
      node: { labels: { tier: i === 0 ? 'gold' : 'silver' }, jurisdiction: i === 2 ? 'us' : 'eu', compliance: i === 0 ? ['gdpr', 'soc2'] : ['gdpr'] },
      clouds: {
        providers: [
          {
            kind: 'local',
            region: `dc${i + 1}`,
            capacity: { vcpus: 16 * (i + 1), memoryGiB: 32 * (i + 1), diskGiB: 500 },
            pricePerVcpuHour: 0.01 * (i + 1),
            pricePerGiBHour: 0.002,
            inventoryIntervalMs: 500,
            transitionDelayMs: 0,
          },
        ],
      },
      fleet: { publishIntervalMs: PUBLISH_MS, staleAfterMs: STALE_MS },
    }),
  });
}, 60_000);

afterAll(async () => {
  await cluster?.destroy();
});

describe('observed fleet, 3 daemons', () => {
  let id = '';

  it('a VM created on n1 is listed by every node with REGION n1, and fleet status agrees', async () => {
    const created = await json<{ instance: { id: string; state: string } }>(0, 'vm', 'create', '--provider', 'local', '--type', 'local.medium', '--image', 'base', '--name', 'web-1', '--tag', 'role=web');
    id = created.instance.id;
    for (const i of [0, 1, 2]) {
      const vm = await eventually(`n${i + 1} lists web-1 running`, CONVERGENCE_MS, async () => {
        const { vms } = await json<{ vms: FleetVm[] }>(i, 'vm', 'list', '--all');
        return vms.find((v) => v.id === id && v.state === 'running');
      }, POLL_MS);
      expect(vm).toMatchObject({ region: 'n1', provider: 'local', name: 'web-1', type: 'local.medium', vcpus: 2, memory_mib: 4096, last_state: 'running' });
      // 2 vCPU × $0.01 + 4 GiB × $0.002
      expect(vm.price_per_hour).toBeCloseTo(0.028, 6);
      const table = await ctl(i, 'vm', 'list', '--all');
      expect(table.code).toBe(0);
      expect(table.stdout).toMatch(/^REGION\s+PROVIDER/);
      expect(table.stdout).toMatch(new RegExp(`^n1\\s+local\\s+${id}\\s+web-1\\s+local.medium\\s+running`, 'm'));
    }
    const views = await eventually('fleet status agrees on every node', CONVERGENCE_MS, async () => {
      const all = await Promise.all([0, 1, 2].map((i) => json<FleetStatusResponse>(i, 'fleet', 'status')));
      const first = JSON.stringify(agreed(all[0]!));
      return all.every((s) => JSON.stringify(agreed(s)) === first && s.regions.every((r) => r.report === 'current')) ? all : undefined;
    }, POLL_MS);
    const n1 = views[1]!.regions.find((r) => r.region === 'n1')!;
    expect(n1).toMatchObject({
      location: 'r-n1',
      health: 'alive',
      vms: 1,
      vms_by_state: [{ state: 'running', count: 1 }],
      vcpus_used: 2,
      vcpus_total: 16,
      memory_gib_used: 4,
      memory_gib_total: 32,
      labels: { tier: 'gold' },
      jurisdiction: 'eu',
      compliance: ['gdpr', 'soc2'],
      provider_health: 'ok',
    });
    expect(n1.providers).toEqual([
      { name: 'local', kind: 'local', location: 'dc1', capacity: { vcpus: 16, memory_gib: 32, disk_gib: 500 }, quota: null, used_vcpus: 2, used_memory_mib: 4096, vms: 1, last_error: null },
    ]);
    expect(views[0]!.regions.find((r) => r.region === 'n1')!.health).toBe('self');
    expect(views[2]!.regions.map((r) => r.region)).toEqual(['n1', 'n2', 'n3']);
    const status = await ctl(2, 'fleet', 'status');
    expect(status.stdout).toMatch(/^REGION\s+LOCATION\s+HEALTH/);
    expect(status.stdout).toMatch(/^n1\s+r-n1\s+alive/m);
  }, 90_000);

  it('--region and --label select among every region', async () => {
    expect((await json<{ vms: FleetVm[] }>(2, 'vm', 'list', '--all', '--region', 'n2')).vms).toEqual([]);
    expect((await json<{ vms: FleetVm[] }>(2, 'vm', 'list', '--all', '--region', 'r-n1')).vms.map((v) => v.id)).toEqual([id]);
    expect((await json<{ vms: FleetVm[] }>(2, 'vm', 'list', '--all', '--label', 'tier=gold')).vms.map((v) => v.id)).toEqual([id]);
    expect((await json<{ vms: FleetVm[] }>(2, 'vm', 'list', '--all', '--label', 'tier=silver')).vms).toEqual([]);
    const bad = await ctl(2, 'vm', 'list', '--region', 'n1');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--all');
  }, 30_000);

  it('after kill -9 of n1, the others show its VMs as unknown with the report age', async () => {
    await cluster.stopNode(0, 'SIGKILL');
    for (const i of [1, 2]) {
      const vm = await eventually(`n${i + 1} shows web-1 unknown`, CONVERGENCE_MS, async () => {
        const { vms } = await json<{ vms: FleetVm[] }>(i, 'vm', 'list', '--all');
        return vms.find((v) => v.id === id && v.state === 'unknown');
      }, POLL_MS);
      expect(vm.last_state).toBe('running');
      expect(vm.report_age_seconds).not.toBeNull();
      const status = await json<FleetStatusResponse>(i, 'fleet', 'status');
      const n1 = status.regions.find((r) => r.region === 'n1')!;
      expect(['stale', 'suspected']).toContain(n1.report);
      expect(n1.vms_by_state).toEqual([{ state: 'unknown', count: 1 }]);
      expect(n1.report_age_seconds).toBeGreaterThan(0);
      const table = await ctl(i, 'vm', 'list', '--all');
      expect(table.stdout).toMatch(new RegExp(`^n1\\s+local\\s+${id}\\s+web-1\\s+local.medium\\s+unknown \\(last: running\\)`, 'm'));
      expect(table.stdout).not.toMatch(new RegExp(`^n1\\s.*\\srunning\\s`, 'm'));
      const text = await cluster.daemon(i).scrape();
      expect(metricValue(text, 'dwcp_fleet_vms', { region: 'n1', state: 'unknown' })).toBe(1);
      expect(metricValue(text, 'dwcp_fleet_vms', { region: 'n1', state: 'running' })).toBe(0);
      expect(metricValue(text, 'dwcp_fleet_region_report_age_seconds', { region: 'n1' })).toBeGreaterThan(0);
      expect(metricValue(text, 'dwcp_fleet_region_report_age_seconds', { region: `n${i + 1}` })).toBeLessThan(STALE_MS / 1000);
    }
  }, 60_000);

  it('the fleet metrics are promtool-clean', async (ctx) => {
    const verdict = lintMetrics(await cluster.daemon(1).scrape(), ctx);
    if (verdict) expect(verdict.status, verdict.output).toBe(0);
  });
});
