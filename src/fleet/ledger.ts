/**
 * The capacity ledger: for every (region, provider) the declared limits and
 * the sum of the specs assigned there, and the checks that the state machine
 * (at apply) and placement (when planning) share, so a plan placement calls
 * feasible is exactly one the log accepts on the same state.
 *
 * Invariants:
 * - used ≤ limit for every resource with a declared limit, always: reserve
 *   asserts it (the state machine checks first and refuses with a reason),
 *   and release asserts usage never goes negative. A null limit means "not
 *   declared": cloud quotas bound vCPUs and instances but not memory or disk;
 *   a cloud with no quota declared is unbounded.
 * - Amounts are integers (vCPUs, bytes, instances), so sums are exact and
 *   every replica reaches the same numbers in any order of equal operations.
 * - Constraint checks here use only declared state (regions, providers,
 *   labels, prices): observed inputs (health, RTT) are placement's.
 */
import { DwcpError } from '../errors.ts';
import type { FleetProviderKind, ProviderPrices, RegionProviderDeclaration } from './commands.ts';
import type { FleetVmSpec } from './spec.ts';
import { formatSize } from './spec.ts';

export const RESOURCES = ['vcpus', 'memoryBytes', 'diskBytes', 'instances'] as const;
export type Resource = (typeof RESOURCES)[number];

export type ResourceAmounts = { readonly [R in Resource]: number };
/** null: no limit declared for that resource. */
export type ResourceLimits = { readonly [R in Resource]: number | null };

export const ZERO_AMOUNTS: ResourceAmounts = { vcpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0 };

/** A broken internal invariant: the fleet state can no longer be trusted. */
export class FleetInvariantError extends DwcpError<'internal'> {
  constructor(message: string) {
    super('internal', message);
  }
}

export function invariant(condition: boolean, message: () => string): asserts condition {
  if (!condition) throw new FleetInvariantError(message());
}

/** What one VM of this spec takes from a provider's capacity. */
export function demandOf(spec: FleetVmSpec): ResourceAmounts {
  return { vcpus: spec.vcpus, memoryBytes: spec.memoryBytes, diskBytes: spec.diskBytes, instances: 1 };
}

/** The limits a provider declaration sets: capacity for on-premises kinds, quota for clouds. */
export function limitsOf(declaration: RegionProviderDeclaration): ResourceLimits {
  const { capacity, quota } = declaration;
  // Both may be declared (an on-premises pool with a licence cap): the tighter one binds.
  const vcpus = Math.min(capacity?.vcpus ?? Infinity, quota?.vcpus ?? Infinity);
  return {
    vcpus: vcpus === Infinity ? null : vcpus,
    memoryBytes: capacity?.memoryBytes ?? null,
    diskBytes: capacity?.diskBytes ?? null,
    instances: quota?.instances ?? null,
  };
}

export interface Shortfall {
  readonly resource: Resource;
  readonly need: number;
  readonly free: number;
  readonly limit: number;
}

/** The first resource (in RESOURCES order) where `demand` does not fit, or null. */
export function shortfallOf(limits: ResourceLimits, used: ResourceAmounts, demand: ResourceAmounts): Shortfall | null {
  for (const resource of RESOURCES) {
    const limit = limits[resource];
    if (limit === null) continue;
    const free = limit - used[resource];
    if (demand[resource] > free) return { resource, need: demand[resource], free, limit };
  }
  return null;
}

/** Whether `demand` exceeds the limit itself (it could not fit even with nothing else there). */
export function exceedsLimits(limits: ResourceLimits, demand: ResourceAmounts): Shortfall | null {
  return shortfallOf(limits, ZERO_AMOUNTS, demand);
}

export function formatAmount(resource: Resource, amount: number): string {
  switch (resource) {
    case 'vcpus':
      return `${amount} vCPU${amount === 1 ? '' : 's'}`;
    case 'instances':
      return `${amount} instance${amount === 1 ? '' : 's'}`;
    case 'memoryBytes':
      return `${formatSize(amount)} of memory`;
    case 'diskBytes':
      return `${formatSize(amount)} of disk`;
  }
}

/** `needs 4 vCPUs, 2 vCPUs free of 16`. */
export function describeShortfall(s: Shortfall): string {
  return `needs ${formatAmount(s.resource, s.need)}, ${formatAmount(s.resource, Math.max(0, s.free))} free of ${formatAmount(s.resource, s.limit)}`;
}

/** The VM's $/h at a provider with these prices (its spot prices when the provider is spot capacity). */
export function hourlyUsd(spec: FleetVmSpec, prices: ProviderPrices): number {
  return spec.vcpus * prices.vcpuHourUsd + (spec.memoryBytes / 1024 ** 3) * prices.memoryGiBHourUsd;
}

/** The declared facts of a region that constraints look at. */
export interface RegionFacts {
  readonly name: string;
  readonly jurisdiction: string | null;
  /** Sorted. */
  readonly compliance: readonly string[];
  readonly labels: Readonly<Record<string, string>>;
}

export interface ProviderFacts {
  readonly name: string;
  readonly kind: FleetProviderKind;
  readonly spot: boolean;
  readonly prices: ProviderPrices;
}

/** Which of the spec's region constraints a region fails. */
export type RegionConstraint = 'regions' | 'jurisdictions' | 'regionLabels' | 'compliance';

/**
 * The first of the spec's declared-state region constraints this region
 * fails, or null; builds no text (placement runs it on every region per
 * decision). RTT is not declared state: placement checks it.
 */
export function failedRegionConstraint(spec: FleetVmSpec, region: RegionFacts): RegionConstraint | null {
  const c = spec.constraints;
  if (c.regions !== undefined && !c.regions.includes(region.name)) return 'regions';
  if (c.jurisdictions !== undefined && (region.jurisdiction === null || !c.jurisdictions.includes(region.jurisdiction))) return 'jurisdictions';
  if (c.regionLabels !== undefined) {
    for (const key in c.regionLabels) if (region.labels[key] !== c.regionLabels[key]) return 'regionLabels';
  }
  if (c.compliance !== undefined) {
    for (const mark of c.compliance) if (!region.compliance.includes(mark)) return 'compliance';
  }
  return null;
}

/** The sentence for a failed region constraint: `jurisdiction eu is not among the allowed ones (us)`. */
export function describeRegionConstraint(spec: FleetVmSpec, region: RegionFacts, failed: RegionConstraint): string {
  const c = spec.constraints;
  switch (failed) {
    case 'regions':
      return `not among the allowed regions (${(c.regions ?? []).join(', ')})`;
    case 'jurisdictions':
      return `jurisdiction ${region.jurisdiction ?? '(none declared)'} is not among the allowed ones (${(c.jurisdictions ?? []).join(', ')})`;
    case 'regionLabels': {
      for (const [key, want] of Object.entries(c.regionLabels ?? {})) {
        const have = region.labels[key];
        if (have !== want) return `label ${key}=${want} required, the region has ${have === undefined ? 'no such label' : `${key}=${have}`}`;
      }
      return 'region labels differ';
    }
    case 'compliance': {
      const missing = (c.compliance ?? []).filter((m) => !region.compliance.includes(m));
      return `lacks compliance ${missing.join(', ')} (has ${region.compliance.length === 0 ? 'none' : region.compliance.join(', ')})`;
    }
  }
}

/** Why the spec's declared-state constraints exclude this region, or null. */
export function regionConstraintProblem(spec: FleetVmSpec, region: RegionFacts): string | null {
  const failed = failedRegionConstraint(spec, region);
  return failed === null ? null : describeRegionConstraint(spec, region, failed);
}

/** Which check turned a provider down: the allowed-provider list, spot, or the price limit. */
export type ProviderFilter = 'constraint' | 'spot' | 'price';

export interface ProviderProblem {
  readonly filter: ProviderFilter;
  readonly reason: string;
}

/** Why the spec excludes this provider of an allowed region (provider list, spot, max $/h), or null. */
export function providerConstraintProblem(spec: FleetVmSpec, provider: ProviderFacts): ProviderProblem | null {
  const c = spec.constraints;
  if (c.providers !== undefined && !c.providers.includes(provider.name) && !c.providers.includes(provider.kind)) {
    return { filter: 'constraint', reason: `provider ${provider.name} (${provider.kind}) is not among the allowed ones (${c.providers.join(', ')})` };
  }
  if (provider.spot && !spec.spot) return { filter: 'spot', reason: `provider ${provider.name} is spot capacity and the spec does not allow spot` };
  if (c.maxHourlyUsd !== undefined) {
    const price = hourlyUsd(spec, provider.prices);
    if (price > c.maxHourlyUsd) return { filter: 'price', reason: `provider ${provider.name} costs $${formatUsd(price)}/h, above the limit $${c.maxHourlyUsd}/h` };
  }
  return null;
}

/** Dollars with up to 4 decimals, trailing zeros dropped. */
export function formatUsd(value: number): string {
  return String(Math.round(value * 10_000) / 10_000);
}

interface LedgerEntry {
  limits: ResourceLimits;
  used: { [R in Resource]: number };
}

/** Declared limits and usage per (region, provider). Mutated only by the state machine. */
export class CapacityLedger {
  #regions = new Map<string, Map<string, LedgerEntry>>();

  /** Sets a provider's limits, keeping its usage; throws if usage would exceed them (the caller checks first). */
  declare(region: string, provider: string, limits: ResourceLimits): void {
    let providers = this.#regions.get(region);
    if (providers === undefined) {
      providers = new Map();
      this.#regions.set(region, providers);
    }
    const entry = providers.get(provider);
    const used = entry?.used ?? { vcpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0 };
    for (const r of RESOURCES) {
      const limit = limits[r];
      invariant(limit === null || used[r] <= limit, () => `ledger: declaring ${region}/${provider} with ${r} ${limit} below its usage ${used[r]}`);
    }
    providers.set(provider, { limits, used });
  }

  /** Forgets a provider with nothing assigned to it. */
  remove(region: string, provider: string): void {
    const entry = this.#regions.get(region)?.get(provider);
    invariant(entry !== undefined, () => `ledger: removing unknown ${region}/${provider}`);
    invariant(entry.used.instances === 0, () => `ledger: removing ${region}/${provider} with ${entry.used.instances} instances assigned`);
    this.#regions.get(region)?.delete(provider);
  }

  has(region: string, provider: string): boolean {
    return this.#regions.get(region)?.has(provider) ?? false;
  }

  limits(region: string, provider: string): ResourceLimits | undefined {
    return this.#regions.get(region)?.get(provider)?.limits;
  }

  /** A copy of the usage; undefined for an unknown (region, provider). */
  usage(region: string, provider: string): ResourceAmounts | undefined {
    const entry = this.#regions.get(region)?.get(provider);
    return entry === undefined ? undefined : { ...entry.used };
  }

  /** Sum over the region's providers. */
  regionUsage(region: string): ResourceAmounts {
    const sum = { vcpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0 };
    for (const entry of this.#regions.get(region)?.values() ?? []) for (const r of RESOURCES) sum[r] += entry.used[r];
    return sum;
  }

  /** Where `demand` would not fit, given that `credit` (this VM's current reservation there, if any) is given back first. */
  check(region: string, provider: string, demand: ResourceAmounts, credit: ResourceAmounts = ZERO_AMOUNTS): Shortfall | null {
    const entry = this.#regions.get(region)?.get(provider);
    invariant(entry !== undefined, () => `ledger: checking unknown ${region}/${provider}`);
    const used = { vcpus: entry.used.vcpus - credit.vcpus, memoryBytes: entry.used.memoryBytes - credit.memoryBytes, diskBytes: entry.used.diskBytes - credit.diskBytes, instances: entry.used.instances - credit.instances };
    return shortfallOf(entry.limits, used, demand);
  }

  reserve(region: string, provider: string, demand: ResourceAmounts): void {
    const entry = this.#regions.get(region)?.get(provider);
    invariant(entry !== undefined, () => `ledger: reserving on unknown ${region}/${provider}`);
    const short = shortfallOf(entry.limits, entry.used, demand);
    invariant(short === null, () => `ledger: over-commit of ${region}/${provider}: ${short === null ? '' : describeShortfall(short)}`);
    for (const r of RESOURCES) entry.used[r] += demand[r];
  }

  release(region: string, provider: string, demand: ResourceAmounts): void {
    const entry = this.#regions.get(region)?.get(provider);
    invariant(entry !== undefined, () => `ledger: releasing on unknown ${region}/${provider}`);
    for (const r of RESOURCES) {
      entry.used[r] -= demand[r];
      invariant(entry.used[r] >= 0, () => `ledger: ${region}/${provider} ${r} usage went negative (${entry.used[r]})`);
    }
  }
}
