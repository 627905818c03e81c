/**
 * The fleet view (src/fleet/fleet-view.ts): per-region aggregation, and the
 * rule that a region suspected down, or whose last report is older than the
 * bound, shows its VMs as `unknown` with the report's age, never with their
 * last state as if it were current.
 */
import { describe, expect, it } from 'vitest';
import { buildFleetView, selectVms, type FleetInput, type MemberView } from '../../src/fleet/fleet-view.ts';
import type { RegionRecord, VmRecord } from '../../src/fleet/observed.ts';

const NOW = 1_765_000_100_000;
const STALE = 15_000;

function region(name: string, ageMs: number, patch: Partial<RegionRecord> = {}): RegionRecord {
  return {
    region: name,
    location: `loc-${name}`,
    reportedAtMs: NOW - ageMs,
    publishIntervalMs: 5_000,
    providers: [{ name: 'local', kind: 'local', location: 'dc', capacity: { vcpus: 16, memoryGiB: 64, diskGiB: 1000 }, quota: null, usedVcpus: 0, usedMemoryMiB: 0, vms: 0, lastError: null }],
    labels: { tier: name === 'a' ? 'gold' : 'silver' },
    jurisdiction: 'eu',
    failed: [],
    compliance: ['gdpr'],
    health: 'ok',
    ...patch,
  };
}

function vm(regionName: string, id: string, state: VmRecord['state'], patch: Partial<VmRecord> = {}): VmRecord {
  return {
    region: regionName,
    provider: 'local',
    id,
    name: id,
    type: 'local.medium',
    zone: 'dc-a',
    vcpus: 2,
    memoryMiB: 4096,
    state,
    tags: {},
    spot: false,
    launchedAtMs: null,
    image: 'base',
    desiredVm: null,
    pricePerHour: 0.05,
    cpu: null,
    memory: null,
    ...patch,
  };
}

function member(name: string, health: MemberView['health'], phi: number | null = 1): MemberView {
  return { name, location: `loc-${name}`, phi, health };
}

function input(patch: Partial<FleetInput> = {}): FleetInput {
  return {
    self: 'a',
    selfLocation: 'loc-a',
    members: [member('b', 'alive'), member('c', 'alive')],
    regions: [region('a', 1_000), region('b', 2_000), region('c', 3_000)],
    vms: [vm('a', 'a1', 'running'), vm('a', 'a2', 'stopped'), vm('b', 'b1', 'running'), vm('b', 'b2', 'pending'), vm('c', 'c1', 'running')],
    nowMs: NOW,
    staleAfterMs: STALE,
    ...patch,
  };
}

describe('buildFleetView', () => {
  it('aggregates each region: VMs by state, vCPU and memory used/total, $/h of what holds resources, report age', () => {
    const view = buildFleetView(input());
    expect(view.regions.map((r) => r.region)).toEqual(['a', 'b', 'c']);
    const [a, b] = view.regions;
    expect(a).toMatchObject({
      self: true,
      health: 'self',
      phi: null,
      report: 'current',
      reportAgeSeconds: 1,
      vms: 2,
      vmsByState: { running: 1, stopped: 1 },
      vcpusUsed: 2,
      vcpusTotal: 16,
      memoryGiBUsed: 4,
      memoryGiBTotal: 64,
      pricePerHour: 0.05,
      labels: { tier: 'gold' },
      location: 'loc-a',
    });
    expect(b).toMatchObject({ self: false, health: 'alive', phi: 1, report: 'current', vmsByState: { running: 1, pending: 1 }, vcpusUsed: 4, pricePerHour: 0.1 });
    expect(view.vms.map((v) => [v.id, v.shownState])).toEqual([
      ['a1', 'running'],
      ['a2', 'stopped'],
      ['b1', 'running'],
      ['b2', 'pending'],
      ['c1', 'running'],
    ]);
    // No VM reports usage: busy is unknown, not zero.
    expect(a?.vcpusBusy).toBeNull();
  });

  it("sums the VMs' recent CPU use into the region's busy vCPUs (what holds resources and reports usage)", () => {
    const base = input();
    const vms = base.vms.map((v) => (v.id === 'b1' ? { ...v, cpu: 0.75 } : v.id === 'b2' ? { ...v, cpu: 0.25, vcpus: 4 } : v));
    const b = buildFleetView({ ...base, vms }).regions.find((r) => r.region === 'b');
    expect(b?.vcpusBusy).toBe(0.75 * 2 + 0.25 * 4);
  });

  it('a suspected region shows its VMs as unknown, with their last state kept apart and the report age', () => {
    const view = buildFleetView(input({ members: [member('b', 'suspected', 12), member('c', 'alive')] }));
    const b = view.regions.find((r) => r.region === 'b')!;
    expect(b).toMatchObject({ health: 'suspected', phi: 12, report: 'suspected', reportAgeSeconds: 2, vmsByState: { unknown: 2 } });
    const vms = view.vms.filter((v) => v.region === 'b');
    expect(vms.map((v) => [v.shownState, v.lastState, v.reportAgeSeconds])).toEqual([
      ['unknown', 'running', 2],
      ['unknown', 'pending', 2],
    ]);
    // Others are unaffected.
    expect(view.vms.find((v) => v.id === 'c1')!.shownState).toBe('running');
  });

  it('a report older than the bound is stale: unknown, whatever the detector says; at the bound it is still current', () => {
    const view = buildFleetView(input({ regions: [region('a', 1_000), region('b', STALE + 1), region('c', STALE)] }));
    expect(view.regions.map((r) => [r.region, r.report])).toEqual([
      ['a', 'current'],
      ['b', 'stale'],
      ['c', 'current'],
    ]);
    expect(view.vms.filter((v) => v.region === 'b').every((v) => v.shownState === 'unknown')).toBe(true);
    // This node's own report goes stale too if its publisher stopped.
    const selfStale = buildFleetView(input({ regions: [region('a', STALE + 1), region('b', 0), region('c', 0)] }));
    expect(selfStale.regions[0]).toMatchObject({ region: 'a', report: 'stale', vmsByState: { unknown: 2 } });
  });

  it('VMs without a region record, and members that never reported, show as such', () => {
    const view = buildFleetView(input({ regions: [region('a', 0)], members: [member('b', 'unknown', null), member('c', 'alive'), member('d', 'alive')] }));
    const b = view.regions.find((r) => r.region === 'b')!;
    expect(b).toMatchObject({ report: 'none', reportAgeSeconds: null, vmsByState: { unknown: 2 }, vcpusTotal: null, location: 'loc-b' });
    expect(view.regions.find((r) => r.region === 'd')).toMatchObject({ report: 'none', vms: 0, vmsByState: {} });
    expect(view.vms.filter((v) => v.region === 'b').map((v) => v.reportAgeSeconds)).toEqual([null, null]);
  });

  it('a report stamped ahead of this clock counts as age 0', () => {
    const view = buildFleetView(input({ regions: [region('a', -5_000), region('b', 0), region('c', 0)] }));
    expect(view.regions[0]).toMatchObject({ report: 'current', reportAgeSeconds: 0 });
  });

  it('is deterministic whatever the input order', () => {
    const base = input();
    const shuffled = input({ regions: [...base.regions].reverse(), vms: [...base.vms].reverse(), members: [...base.members].reverse() });
    expect(buildFleetView(shuffled)).toEqual(buildFleetView(base));
  });
});

describe('selectVms', () => {
  const view = buildFleetView(input({ vms: [...input().vms, vm('c', 'c2', 'running', { tags: { role: 'db' } })] }));
  it('by region (node name or location) and by label (region label or VM tag)', () => {
    expect(selectVms(view, { regions: ['b'] }).map((v) => v.id)).toEqual(['b1', 'b2']);
    expect(selectVms(view, { regions: ['loc-c'] }).map((v) => v.id)).toEqual(['c1', 'c2']);
    expect(selectVms(view, { labels: { tier: 'gold' } }).map((v) => v.id)).toEqual(['a1', 'a2']);
    expect(selectVms(view, { labels: { role: 'db' } }).map((v) => v.id)).toEqual(['c2']);
    expect(selectVms(view, { regions: ['a'], labels: { role: 'db' } })).toEqual([]);
    expect(selectVms(view, {}).length).toBe(6);
  });
});
