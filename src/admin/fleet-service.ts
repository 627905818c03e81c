/**
 * The admin socket's Fleet service (fleet.proto): the fleet view
 * (src/fleet/fleet-view.ts) built on demand from this node's copy of the geo
 * store's fleet records and its failure detector, so any node answers. Read
 * only; requests are checked at the edge (region names, label pairs) and
 * errors name the field.
 */
import type { Logger } from '../log.ts';
import { selectVms, type FleetView, type RegionView, type VmView } from '../fleet/fleet-view.ts';
import { FLEET_SERVICE, loadAdminPackage, type FleetVmsRequest } from './schema.ts';
import { asyncUnary } from './call.ts';
import { DwcpError } from '../errors.ts';
import type { AdminServiceRegistration } from './server.ts';

export interface FleetAdminOptions {
  /** The fleet as this node sees it now (ObservedPublisher.view). */
  view(): FleetView;
  log: Logger;
}

const MAX_FILTERS = 64;

function invalid(message: string): DwcpError {
  return new DwcpError('invalid', message);
}

const undef = <T>(v: T | null): T | undefined => (v === null ? undefined : v);

function regionToWire(r: RegionView): Record<string, unknown> {
  return {
    region: r.region,
    location: undef(r.location),
    self: r.self,
    phi: undef(r.phi),
    health: r.health,
    report: r.report,
    report_age_seconds: undef(r.reportAgeSeconds),
    provider_health: undef(r.providerHealth),
    providers: r.providers.map((p) => ({
      name: p.name,
      kind: p.kind,
      location: p.location,
      capacity: p.capacity === null ? undefined : { vcpus: p.capacity.vcpus, memory_gib: p.capacity.memoryGiB, disk_gib: p.capacity.diskGiB },
      quota: p.quota === null ? undefined : { vcpus: undef(p.quota.vcpus), instances: undef(p.quota.instances) },
      used_vcpus: p.usedVcpus,
      used_memory_mib: p.usedMemoryMiB,
      vms: p.vms,
      last_error: undef(p.lastError),
    })),
    vms_by_state: Object.entries(r.vmsByState)
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([state, count]) => ({ state, count })),
    vms: r.vms,
    vcpus_used: r.vcpusUsed,
    vcpus_total: undef(r.vcpusTotal),
    memory_gib_used: r.memoryGiBUsed,
    memory_gib_total: undef(r.memoryGiBTotal),
    price_per_hour: r.pricePerHour,
    labels: r.labels,
    jurisdiction: undef(r.jurisdiction),
    compliance: r.compliance,
  };
}

function vmToWire(v: VmView): Record<string, unknown> {
  return {
    region: v.region,
    provider: v.provider,
    id: v.id,
    name: v.name,
    type: v.type,
    zone: v.zone,
    vcpus: undef(v.vcpus),
    memory_mib: undef(v.memoryMiB),
    state: v.shownState,
    last_state: v.lastState,
    tags: v.tags,
    spot: v.spot,
    launched_at: v.launchedAtMs === null ? undefined : new Date(v.launchedAtMs).toISOString(),
    image: undef(v.image),
    desired_vm: undef(v.desiredVm),
    price_per_hour: undef(v.pricePerHour),
    report_age_seconds: undef(v.reportAgeSeconds),
  };
}

export function fleetServiceRegistration(opts: FleetAdminOptions): AdminServiceRegistration {
  async function status(): Promise<Record<string, unknown>> {
    const view = opts.view();
    return { self: view.self, now: new Date(view.nowMs).toISOString(), stale_after_ms: view.staleAfterMs, regions: view.regions.map(regionToWire) };
  }

  async function listVms(r: FleetVmsRequest): Promise<Record<string, unknown>> {
    if (r.regions.length > MAX_FILTERS) throw invalid(`regions: at most ${MAX_FILTERS}`);
    r.regions.forEach((name, i) => {
      if (name === '') throw invalid(`regions[${i}]: must not be empty`);
    });
    const labels = Object.entries(r.labels);
    if (labels.length > MAX_FILTERS) throw invalid(`labels: at most ${MAX_FILTERS}`);
    for (const [k] of labels) if (k === '') throw invalid('labels: a key must not be empty');
    const vms = selectVms(opts.view(), { regions: r.regions, labels: r.labels });
    return { vms: vms.map(vmToWire) };
  }

  return {
    name: FLEET_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Status: asyncUnary(opts.log, 'Status', status),
      ListVms: asyncUnary(opts.log, 'ListVms', listVms),
    },
  };
}
