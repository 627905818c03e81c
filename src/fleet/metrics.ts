/**
 * Metrics of the observed fleet: dwcp_fleet_vms{region,state} and
 * dwcp_fleet_region_report_age_seconds{region}, created on the daemon's
 * registry by createMetrics (src/metrics/metrics.ts). Both are computed at
 * scrape time from the fleet view (the daemon plugs its source in once the
 * publisher exists), so they are never older than the scrape.
 *
 * Invariant: label sets are bounded: regions are members and regions with
 * records (both bounded), states the instance states plus `unknown`, each
 * exported for every region (zeroes included) so a state that empties reads
 * 0 rather than vanishing.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { INSTANCE_STATES } from '../cloud/provider.ts';
import type { FleetView } from './fleet-view.ts';

export const FLEET_VM_STATES = [...INSTANCE_STATES, 'unknown'] as const;

export interface FleetMetrics {
  vms: Gauge<'region' | 'state'>;
  reportAge: Gauge<'region'>;
  /** Creates scheduled here, by outcome: placed | failed. */
  placements: Counter<'result'>;
  /** One pure placement decision (the scheduler's plan or a dry run). */
  placementDuration: Histogram;
  /** Provider calls this region's reconciler made, by action (create, start, stop, terminate) and result (ok, error). */
  reconcileActions: Counter<'action' | 'result'>;
  /** Where the gauges read the fleet from at scrape time; until set they export nothing. */
  setSource(view: () => FleetView): void;
}

export function createFleetMetrics(registers: Registry[]): FleetMetrics {
  let source: (() => FleetView) | null = null;
  let latest: FleetView | null = null;
  // One view per scrape: the first gauge's collect builds it, the second reuses it.
  const fresh = (): FleetView | null => {
    latest = source === null ? null : source();
    return latest;
  };
  const vms = new Gauge({
    name: 'dwcp_fleet_vms',
    help: 'VMs of each region of the fleet by state as this node sees them; unknown: the region is suspected down or its report is stale.',
    labelNames: ['region', 'state'],
    registers,
    collect() {
      this.reset();
      const view = fresh();
      if (view === null) return;
      for (const r of view.regions) for (const state of FLEET_VM_STATES) this.set({ region: r.region, state }, r.vmsByState[state] ?? 0);
    },
  });
  const reportAge = new Gauge({
    name: 'dwcp_fleet_region_report_age_seconds',
    help: 'Age of the last observed-state report of each region of the fleet, as this node sees it (absent for a region that never reported).',
    labelNames: ['region'],
    registers,
    collect() {
      this.reset();
      const view = latest ?? fresh();
      latest = null;
      if (view === null) return;
      for (const r of view.regions) if (r.reportAgeSeconds !== null) this.set({ region: r.region }, r.reportAgeSeconds);
    },
  });
  const placements = new Counter({ name: 'dwcp_fleet_placements_total', help: 'VM creates scheduled on this node, by outcome (placed, failed).', labelNames: ['result'], registers });
  const placementDuration = new Histogram({
    name: 'dwcp_fleet_placement_duration_seconds',
    help: 'Time of one placement decision (filters and scores over every region), as this node computed it.',
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1],
    registers,
  });
  const reconcileActions = new Counter({
    name: 'dwcp_fleet_reconcile_actions_total',
    help: "Provider calls this region's fleet reconciler made, by action and result.",
    labelNames: ['action', 'result'],
    registers,
  });
  return {
    vms,
    reportAge,
    placements,
    placementDuration,
    reconcileActions,
    setSource(view) {
      source = view;
    },
  };
}
