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
import { requireTimeout } from './call.ts';
import { POWER_STATES, type FleetResult, type PowerState } from '../fleet/commands.ts';
import { formatPlacement, type PlacementDecision } from '../fleet/placement.ts';
import type { ScheduleOutcome } from '../fleet/fleet-scheduler.ts';
import type { FleetSeat } from '../fleet/seat.ts';
import { MANAGED_BY_TAG, MANAGED_BY_VALUE } from '../fleet/reconciler.ts';
import { checkFleetVmSpec, type FleetVmSpec } from '../fleet/spec.ts';
import type { FleetState, FleetVm as DesiredVm } from '../fleet/state-machine.ts';
import type { FleetCreateRequest, FleetDesiredRequest, FleetPlaceRequest, FleetPowerRequest, FleetVmRef } from './schema.ts';

export interface FleetAdminOptions {
  /** The fleet as this node sees it now (ObservedPublisher.view). */
  view(): FleetView;
  /** This node's part in desired state; null when it holds no replica of the federation log. */
  seat: FleetSeat | null;
  /** For calls that name no timeout. */
  defaultTimeoutMs: number;
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
    vcpus_busy: undef(r.vcpusBusy),
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
    cpu: undef(v.cpu),
    memory: undef(v.memory),
  };
}

/** The spec of a request, checked against the fleet's spec schema; refusals name `spec.<field>`. */
function specOf(json: string): FleetVmSpec {
  let input: unknown;
  try {
    input = JSON.parse(json);
  } catch (err) {
    throw invalid(`spec_json: not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  const checked = checkFleetVmSpec(input);
  if (!checked.ok) throw invalid(checked.problems.join('; '));
  return checked.spec;
}

function powerOf(raw: string, fallback: PowerState | null): PowerState {
  if (raw === '' && fallback !== null) return fallback;
  if ((POWER_STATES as readonly string[]).includes(raw)) return raw as PowerState;
  throw invalid(`power: ${JSON.stringify(raw)} is not one of ${POWER_STATES.join(', ')}`);
}

/** Why a schedule failed, as the coded error dwcpctl prints in one line. */
function scheduleFailure(vm: string, outcome: Extract<ScheduleOutcome, { ok: false }>): DwcpError {
  const text = `${vm} not placed (${outcome.code}): ${outcome.reasons.join('; ')}`;
  switch (outcome.code) {
    case 'unknown_region':
    case 'invalid_command':
      return new DwcpError('invalid', text);
    case 'no_fit':
    case 'too_large':
    case 'insufficient_capacity':
      return new DwcpError('exhausted', text);
    case 'attempts_exhausted':
      // Other schedulers kept winning: a later try may find room.
      return new DwcpError('rejected', text, { retryable: true });
    default:
      return new DwcpError('rejected', text);
  }
}

function refusal(result: Extract<FleetResult, { ok: false }>): DwcpError {
  return new DwcpError(result.code === 'unknown_vm' ? 'not_found' : 'rejected', `${result.code}: ${result.message}`);
}

function explainLines(decision: PlacementDecision | undefined): string[] {
  return decision === undefined ? [] : formatPlacement(decision);
}

export function fleetServiceRegistration(opts: FleetAdminOptions): AdminServiceRegistration {
  function seat(): FleetSeat {
    if (opts.seat === null) throw new DwcpError('unsupported', 'this node holds no replica of the federation log, so it cannot schedule or change desired VMs');
    return opts.seat;
  }

  /** A desired VM with what is observed of its copy: the region's own report when it is this node, else the fleet view. */
  /** The observed copy of each desired VM, by `region \0 desired VM name`: built once per call, not scanned per VM. */
  function copiesOf(view: FleetView): Map<string, VmView> {
    const copies = new Map<string, VmView>();
    for (const v of view.vms) if (v.desiredVm !== null) copies.set(`${v.region}\u0000${v.desiredVm}`, v);
    return copies;
  }

  function desiredToWire(vm: DesiredVm, view: FleetView, copies: Map<string, VmView>): Record<string, unknown> {
    const s = seat();
    const a = vm.assignment;
    let status = 'absent';
    let reason: string | undefined;
    if (a !== null && !vm.deleted) {
      const copy = copies.get(`${a.region}\u0000${vm.name}`);
      if (copy !== undefined) status = copy.shownState;
      // This region's reconciler knows first; another region says so in its record.
      const report = a.region === s.region ? s.reconciler.reports().get(vm.name) : view.regions.find((r) => r.region === a.region)?.failed.find((f) => f.vm === vm.name);
      const failed = report !== undefined && 'status' in report ? report.status === 'failed' : report !== undefined;
      if (report !== undefined && report.generation === a.generation && (failed || copy === undefined)) {
        status = 'status' in report ? report.status : 'failed';
        reason = report.reason;
      }
    }
    return {
      name: vm.name,
      vcpus: vm.spec.vcpus,
      memory_bytes: vm.spec.memoryBytes,
      image: vm.spec.image,
      power: vm.power,
      region: a?.region ?? '',
      provider: a?.provider ?? '',
      generation: a?.generation ?? 0,
      deleted: vm.deleted,
      status,
      reason,
      labels: vm.spec.labels,
    };
  }

  function desiredVm(name: string): Record<string, unknown> {
    const vm = seat().state.vm(name);
    if (vm === undefined) throw new DwcpError('not_found', `vm: no desired VM named ${name}`);
    const view = opts.view();
    return desiredToWire(vm, view, copiesOf(view));
  }

  async function placeVm(r: FleetPlaceRequest): Promise<Record<string, unknown>> {
    const decision = seat().place(specOf(r.spec_json));
    const base = { explain: explainLines(decision), decision_json: JSON.stringify(decision) };
    return decision.ok
      ? { ok: true, region: decision.choice.region, provider: decision.choice.provider, code: '', message: '', ...base }
      : { ok: false, region: '', provider: '', code: decision.code, message: decision.message, ...base };
  }

  async function create(r: FleetCreateRequest): Promise<Record<string, unknown>> {
    const spec = specOf(r.spec_json);
    const outcome = await seat().create(spec, powerOf(r.power, 'running'), requireTimeout(r.timeout_ms, opts.defaultTimeoutMs));
    if (!outcome.ok) throw scheduleFailure(spec.name, outcome);
    return { vm: outcome.vm, region: outcome.region, provider: outcome.provider, generation: String(outcome.generation), attempts: outcome.attempts, explain: explainLines(outcome.decision) };
  }

  async function setPower(r: FleetPowerRequest): Promise<Record<string, unknown>> {
    if (r.vm === '') throw invalid('vm: a VM name is required');
    const result = await seat().command({ kind: 'set-power', vm: r.vm, power: powerOf(r.power, null) }, requireTimeout(r.timeout_ms, opts.defaultTimeoutMs));
    if (!result.ok) throw refusal(result);
    return desiredVm(r.vm);
  }

  async function remove(r: FleetVmRef): Promise<Record<string, unknown>> {
    if (r.vm === '') throw invalid('vm: a VM name is required');
    const result = await seat().command({ kind: 'delete', vm: r.vm }, requireTimeout(r.timeout_ms, opts.defaultTimeoutMs));
    if (!result.ok) throw refusal(result);
    return desiredVm(r.vm);
  }

  async function listDesired(r: FleetDesiredRequest): Promise<Record<string, unknown>> {
    if (r.vms.length > MAX_FILTERS) throw invalid(`vms: at most ${MAX_FILTERS}`);
    const state = seat().state;
    const view = opts.view();
    const vms = r.vms.length === 0 ? state.vms() : r.vms.map((name) => state.vm(name)).filter((v): v is DesiredVm => v !== undefined);
    const copies = copiesOf(view);
    return { vms: vms.map((vm) => desiredToWire(vm, view, copies)) };
  }

  async function status(): Promise<Record<string, unknown>> {
    const view = opts.view();
    let desired: FleetState | undefined;
    try {
      desired = opts.seat?.state;
    } catch {
      desired = undefined;
    }
    // Without a replica of the log this node cannot tell an orphan from a managed VM: it reports none rather than guess.
    const orphans = desired === undefined ? [] : view.vms.filter((v) => v.tags[MANAGED_BY_TAG] === MANAGED_BY_VALUE && (v.desiredVm === null || desired.vm(v.desiredVm) === undefined));
    return { self: view.self, now: new Date(view.nowMs).toISOString(), stale_after_ms: view.staleAfterMs, regions: view.regions.map(regionToWire), orphans: orphans.map(vmToWire) };
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
      Place: asyncUnary(opts.log, 'Place', placeVm),
      Create: asyncUnary(opts.log, 'Create', create),
      SetPower: asyncUnary(opts.log, 'SetPower', setPower),
      Delete: asyncUnary(opts.log, 'Delete', remove),
      ListDesired: asyncUnary(opts.log, 'ListDesired', listDesired),
    },
  };
}
