/**
 * The Fleet admin service (fleet.proto) as the admin client exposes it:
 * response types in the .proto's snake_case and the `.fleet` sub-client.
 *
 * Invariant (as for the rest of the admin client): every response has every
 * field, proto3 `optional` fields absent on the wire become null, and each
 * message is rebuilt field by field in .proto order.
 */
import type { FleetCreateRequest, FleetCreateResponse, FleetDesiredVm, FleetPlaceRequest, FleetPlaceResponse, FleetPowerRequest, FleetProvider, FleetRegion, FleetStatusResponse, FleetVm, FleetVmRef, FleetVmsRequest, ServiceCall, OptionalWire as Wire } from './schema.ts';
import { nullIfAbsent as opt } from './schema.ts';

export interface FleetClient {
  status(): Promise<FleetStatusResponse>;
  listVms(request: FleetVmsRequest): Promise<FleetVm[]>;
  place(request: FleetPlaceRequest): Promise<FleetPlaceResponse>;
  create(request: FleetCreateRequest): Promise<FleetCreateResponse>;
  setPower(request: FleetPowerRequest): Promise<FleetDesiredVm>;
  delete(request: FleetVmRef): Promise<FleetDesiredVm>;
  listDesired(vms: string[]): Promise<FleetDesiredVm[]>;
}

function desiredFromWire(v: Wire<FleetDesiredVm>): FleetDesiredVm {
  return {
    name: v.name ?? '',
    vcpus: v.vcpus ?? 0,
    memory_bytes: v.memory_bytes ?? '0',
    image: v.image ?? '',
    power: v.power ?? '',
    region: v.region ?? '',
    provider: v.provider ?? '',
    generation: v.generation ?? '0',
    deleted: v.deleted ?? false,
    status: v.status ?? '',
    reason: opt(v.reason),
    labels: { ...(v.labels ?? {}) },
  };
}

function providerFromWire(p: Wire<FleetProvider>): FleetProvider {
  const c = p.capacity ?? null;
  const q = p.quota ?? null;
  return {
    name: p.name ?? '',
    kind: p.kind ?? '',
    location: p.location ?? '',
    capacity: c === null ? null : { vcpus: c.vcpus, memory_gib: c.memory_gib, disk_gib: c.disk_gib },
    quota: q === null ? null : { vcpus: opt(q.vcpus), instances: opt(q.instances) },
    used_vcpus: p.used_vcpus ?? 0,
    used_memory_mib: p.used_memory_mib ?? 0,
    vms: p.vms ?? 0,
    last_error: opt(p.last_error),
  };
}

function regionFromWire(r: Wire<FleetRegion>): FleetRegion {
  return {
    region: r.region ?? '',
    location: opt(r.location),
    self: r.self ?? false,
    phi: opt(r.phi),
    health: r.health ?? '',
    report: r.report ?? '',
    report_age_seconds: opt(r.report_age_seconds),
    provider_health: opt(r.provider_health),
    providers: (r.providers ?? []).map(providerFromWire),
    vms_by_state: (r.vms_by_state ?? []).map((s) => ({ state: s.state, count: s.count })),
    vms: r.vms ?? 0,
    vcpus_used: r.vcpus_used ?? 0,
    vcpus_busy: opt(r.vcpus_busy),
    vcpus_total: opt(r.vcpus_total),
    memory_gib_used: r.memory_gib_used ?? 0,
    memory_gib_total: opt(r.memory_gib_total),
    price_per_hour: r.price_per_hour ?? 0,
    labels: { ...(r.labels ?? {}) },
    jurisdiction: opt(r.jurisdiction),
    compliance: [...(r.compliance ?? [])],
  };
}

function vmFromWire(v: Wire<FleetVm>): FleetVm {
  return {
    region: v.region ?? '',
    provider: v.provider ?? '',
    id: v.id ?? '',
    name: v.name ?? '',
    type: v.type ?? '',
    zone: v.zone ?? '',
    vcpus: opt(v.vcpus),
    memory_mib: opt(v.memory_mib),
    state: v.state ?? '',
    last_state: v.last_state ?? '',
    tags: { ...(v.tags ?? {}) },
    spot: v.spot ?? false,
    launched_at: opt(v.launched_at),
    image: opt(v.image),
    desired_vm: opt(v.desired_vm),
    price_per_hour: opt(v.price_per_hour),
    report_age_seconds: opt(v.report_age_seconds),
    cpu: opt(v.cpu),
    memory: opt(v.memory),
  };
}

export function fleetClient(call: ServiceCall): FleetClient {
  return {
    status: async () => {
      const r = await call<Record<string, never>, Wire<Omit<FleetStatusResponse, 'regions' | 'orphans'>> & { regions?: Wire<FleetRegion>[]; orphans?: Wire<FleetVm>[] }>('Status', {});
      return { self: r.self ?? '', now: r.now ?? '', stale_after_ms: r.stale_after_ms ?? 0, regions: (r.regions ?? []).map(regionFromWire), orphans: (r.orphans ?? []).map(vmFromWire) };
    },
    listVms: async (request) => {
      const r = await call<FleetVmsRequest, { vms?: Wire<FleetVm>[] }>('ListVms', request);
      return (r.vms ?? []).map(vmFromWire);
    },
    place: async (request) => {
      const r = await call<FleetPlaceRequest, Wire<FleetPlaceResponse>>('Place', request);
      return { ok: r.ok ?? false, region: r.region ?? '', provider: r.provider ?? '', code: r.code ?? '', message: r.message ?? '', explain: [...(r.explain ?? [])], decision_json: r.decision_json ?? '' };
    },
    create: async (request) => {
      const r = await call<FleetCreateRequest, Wire<FleetCreateResponse>>('Create', request);
      return { vm: r.vm ?? '', region: r.region ?? '', provider: r.provider ?? '', generation: r.generation ?? '0', attempts: r.attempts ?? 0, explain: [...(r.explain ?? [])] };
    },
    setPower: async (request) => desiredFromWire(await call<FleetPowerRequest, Wire<FleetDesiredVm>>('SetPower', request)),
    delete: async (request) => desiredFromWire(await call<FleetVmRef, Wire<FleetDesiredVm>>('Delete', request)),
    listDesired: async (vms) => ((await call<{ vms: string[] }, { vms?: Wire<FleetDesiredVm>[] }>('ListDesired', { vms })).vms ?? []).map(desiredFromWire),
  };
}
