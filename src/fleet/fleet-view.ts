/**
 * The fleet view: every region's VMs, capacity, cost and health as this node
 * sees them, built from the geo store's fleet records (observed.ts), the
 * failure detector's view of the members and the time. What `dwcpctl fleet
 * status` and `vm list --all` print and the fleet metrics export.
 *
 * Invariants:
 * - Pure: records, member health and `nowMs` in, a view out.
 * - A region's report is current only if its region record exists, is no
 *   older than `staleAfterMs`, and the failure detector does not suspect its
 *   daemon (this node is never suspected by itself). Otherwise every VM of
 *   that region shows as `unknown` with the report's age: a last-known state
 *   is never presented as if it were current. The last reported state stays
 *   available as `lastState`, labelled as such.
 * - Every configured member appears, reported or not, so a region that never
 *   published shows up (with no report) rather than silently missing; so does
 *   every region that has records, configured or not.
 * - Regions, and VMs within a region, come in a deterministic order (name,
 *   then provider and id), so two converged nodes print the same thing.
 */
import { holdsResources, type FailedReport, type ProviderReport, type RegionRecord, type VmRecord } from './observed.ts';
import type { InstanceState } from '../cloud/provider.ts';

export type MemberHealth = 'alive' | 'suspected' | 'unknown';

export interface MemberView {
  /** The member's node name (the fleet's region id). */
  readonly name: string;
  /** `region` of the member in the config (its location). */
  readonly location: string;
  readonly phi: number | null;
  readonly health: MemberHealth;
}

export type ReportStatus = 'current' | 'stale' | 'suspected' | 'none';
export type ShownState = InstanceState | 'unknown';

export interface VmView extends VmRecord {
  /** The state to show: the reported one while the region's report is current, else `unknown`. */
  readonly shownState: ShownState;
  /** The state in the last report (not current unless shownState equals it). */
  readonly lastState: InstanceState;
  /** Seconds since the region's last report; null when it never reported. */
  readonly reportAgeSeconds: number | null;
}

export interface RegionView {
  readonly region: string;
  readonly location: string | null;
  readonly self: boolean;
  /** The failure detector's phi for this member (null for this node, or before the first heartbeat). */
  readonly phi: number | null;
  /** `self` for this node. */
  readonly health: MemberHealth | 'self';
  readonly report: ReportStatus;
  readonly reportAgeSeconds: number | null;
  /** ok | degraded (a provider's last sync failed), from the region's own report; null without one. */
  readonly providerHealth: 'ok' | 'degraded' | null;
  readonly providers: readonly ProviderReport[];
  /** VMs by shown state (all `unknown` when the report is not current). */
  readonly vmsByState: Readonly<Record<string, number>>;
  readonly vms: number;
  readonly vcpusUsed: number;
  /** vCPUs' worth of CPU the region's VMs recently used (their published `cpu` × vCPUs); null when none reports usage. */
  readonly vcpusBusy: number | null;
  /** Declared capacity summed over on-premises providers; null when none declares one. */
  readonly vcpusTotal: number | null;
  readonly memoryGiBUsed: number;
  readonly memoryGiBTotal: number | null;
  /** USD per hour of the VMs holding resources (priced ones). */
  readonly pricePerHour: number;
  readonly labels: Readonly<Record<string, string>>;
  readonly jurisdiction: string | null;
  readonly compliance: readonly string[];
  /** Desired VMs this region's reconciler gave up on, with the provider's reason (from its last report). */
  readonly failed: readonly FailedReport[];
}

export interface FleetView {
  readonly self: string;
  readonly nowMs: number;
  readonly staleAfterMs: number;
  readonly regions: readonly RegionView[];
  readonly vms: readonly VmView[];
}

export interface FleetInput {
  readonly self: string;
  readonly selfLocation: string;
  readonly members: readonly MemberView[];
  readonly regions: readonly RegionRecord[];
  readonly vms: readonly VmRecord[];
  readonly nowMs: number;
  readonly staleAfterMs: number;
}

function reportStatus(record: RegionRecord | undefined, health: MemberHealth | 'self', ageMs: number | null, staleAfterMs: number): ReportStatus {
  if (record === undefined || ageMs === null) return 'none';
  if (health === 'suspected') return 'suspected';
  return ageMs > staleAfterMs ? 'stale' : 'current';
}

function byName(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function buildFleetView(input: FleetInput): FleetView {
  const { self, nowMs, staleAfterMs } = input;
  const records = new Map(input.regions.map((r) => [r.region, r]));
  const members = new Map(input.members.map((m) => [m.name, m]));
  const vmsOf = new Map<string, VmRecord[]>();
  for (const vm of input.vms) {
    const list = vmsOf.get(vm.region);
    if (list === undefined) vmsOf.set(vm.region, [vm]);
    else list.push(vm);
  }
  const names = [...new Set([self, ...members.keys(), ...records.keys(), ...vmsOf.keys()])].sort(byName);
  const regions: RegionView[] = [];
  const vms: VmView[] = [];
  for (const name of names) {
    const record = records.get(name);
    const member = members.get(name);
    const isSelf = name === self;
    const health: MemberHealth | 'self' = isSelf ? 'self' : (member?.health ?? 'unknown');
    // A report stamped ahead of this clock (skew) counts as just made, not as negative age.
    const ageMs = record === undefined ? null : Math.max(0, nowMs - record.reportedAtMs);
    const report = reportStatus(record, health, ageMs, staleAfterMs);
    const reportAgeSeconds = ageMs === null ? null : ageMs / 1000;
    const current = report === 'current';
    const mine = (vmsOf.get(name) ?? []).sort((a, b) => byName(a.provider, b.provider) || byName(a.id, b.id));
    const vmsByState: Record<string, number> = {};
    let vcpusUsed = 0;
    let memoryMiBUsed = 0;
    let pricePerHour = 0;
    let vcpusBusy: number | null = null;
    for (const vm of mine) {
      const shownState: ShownState = current ? vm.state : 'unknown';
      vmsByState[shownState] = (vmsByState[shownState] ?? 0) + 1;
      if (holdsResources(vm.state)) {
        vcpusUsed += vm.vcpus ?? 0;
        memoryMiBUsed += vm.memoryMiB ?? 0;
        pricePerHour += vm.pricePerHour ?? 0;
        if (vm.cpu !== null && vm.vcpus !== null) vcpusBusy = (vcpusBusy ?? 0) + vm.cpu * vm.vcpus;
      }
      vms.push({ ...vm, shownState, lastState: vm.state, reportAgeSeconds });
    }
    const providers = record?.providers ?? [];
    const declared = providers.filter((p) => p.capacity !== null);
    regions.push({
      region: name,
      location: record?.location ?? member?.location ?? (isSelf ? input.selfLocation : null),
      self: isSelf,
      phi: isSelf ? null : (member?.phi ?? null),
      health,
      report,
      reportAgeSeconds,
      providerHealth: record?.health ?? null,
      providers,
      vmsByState,
      vms: mine.length,
      vcpusUsed,
      vcpusBusy: vcpusBusy === null ? null : Math.round(vcpusBusy * 100) / 100,
      vcpusTotal: declared.length === 0 ? null : declared.reduce((n, p) => n + (p.capacity?.vcpus ?? 0), 0),
      memoryGiBUsed: memoryMiBUsed / 1024,
      memoryGiBTotal: declared.length === 0 ? null : declared.reduce((n, p) => n + (p.capacity?.memoryGiB ?? 0), 0),
      pricePerHour: Math.round(pricePerHour * 1e6) / 1e6,
      labels: record?.labels ?? {},
      jurisdiction: record?.jurisdiction ?? null,
      compliance: record?.compliance ?? [],
      failed: record?.failed ?? [],
    });
  }
  return { self, nowMs, staleAfterMs, regions, vms };
}

export interface VmFilter {
  /** Only these regions (node names or locations); all when empty. */
  readonly regions?: readonly string[];
  /** Every label must match a region label (k=v), or, failing that, a VM tag. */
  readonly labels?: Readonly<Record<string, string>>;
}

/** The view's VMs that pass `filter` (regions by node name or location; labels on the region or the VM's tags). */
export function selectVms(view: FleetView, filter: VmFilter): VmView[] {
  const regions = new Map(view.regions.map((r) => [r.region, r]));
  const wanted = filter.regions ?? [];
  const labels = Object.entries(filter.labels ?? {});
  return view.vms.filter((vm) => {
    const region = regions.get(vm.region);
    if (wanted.length > 0 && !wanted.some((w) => w === vm.region || (region?.location ?? null) === w)) return false;
    return labels.every(([k, v]) => region?.labels[k] === v || vm.tags[k] === v);
  });
}
