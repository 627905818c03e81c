/**
 * Placement: which region and provider a VM spec should go to, as a pure
 * function of the spec, a view of the fleet and the options, with an
 * explanation an operator can read (`--explain`, `dwcpctl place`).
 *
 * place(spec, view, options):
 * 1. Refuses a constraint naming a region the view does not know
 *    (`unknown_region`): a typo must not read as "fits nowhere".
 * 2. Filters every region, in this order, recording the first filter that
 *    excludes it and why, with the numbers: constraint (allowed regions,
 *    jurisdictions, region labels, compliance), health (suspected, or phi
 *    above options.maxPhi), rtt (maxRtt to the named region), anti-affinity
 *    (a VM of the group already there); then each provider of the region:
 *    constraint (allowed providers), spot, capacity (the ledger's shortfall),
 *    price (max $/h), policy (an enforced rule of the view's policy set
 *    denies the VM there under the operation: options.operation, or create /
 *    place from the spec, src/fleet/policy-check.ts; the reason names the
 *    policy, the rule and its message). A region survives with at least one
 *    provider. Policy comes last because it is the dearest filter (CEL per
 *    candidate); the state machine re-checks it at apply with the same
 *    evaluator on the same facts, so a choice placement makes on the log's
 *    state is one the log accepts.
 * 3. Scores each surviving (region, provider) as Σ weight × factor, each
 *    factor in [0, 1], higher better: cost (cheapest eligible $/h ÷ this $/h),
 *    rtt (1 − RTT ÷ scale, from the constraint's region or options.origin),
 *    headroom (the tightest resource's free share after placing: binpack
 *    scores 1 − that, spread scores it as is), health (1 − phi ÷ maxPhi),
 *    priority (spot capacity scores 1 − priority ÷ 1000: important VMs keep
 *    off spot), spread (1 ÷ (1 + VMs of the spec's spread group there)).
 *    A region's best provider represents it. Audit and warn rules that fire
 *    for a candidate do not exclude it; they ride along (`policy`).
 * 4. Chooses the highest score; ties go to the region name, then the
 *    provider name, in code-unit order. Returns the choice, the next two
 *    regions, and every region's explanation (excluded by what, or scored by
 *    factor). Nothing fits: `too_large` when the spec exceeds the largest
 *    declared capacity of every region (naming it), else `no_fit`; both keep
 *    every region's reason.
 *
 * Invariants: pure (no clock, no randomness; same inputs, same decision,
 * bit for bit: floating sums are taken in a fixed order); the capacity filter
 * is the ledger's own check (shortfallOf), so a choice placement makes on a
 * view equal to the log's state is one the log accepts. Cost: O(regions ×
 * providers) per decision, nothing per VM: the view carries per-provider
 * usage and group counts, precomputed (buildPlacementView). Factor details
 * are formatted when read (and by JSON.stringify), the rest of the
 * explanation eagerly: see bench/RESULTS.md for what each costs.
 */
import type { FleetConstraints, FleetVmSpec } from './spec.ts';
import type { PolicyOperation } from '../policy/document.ts';
import { NO_POLICY, formatHit, type PolicyEvaluator, type PolicyHit, type PolicyScope, type PolicyVerdict } from '../policy/evaluate.ts';
import type { PolicyRegion } from '../policy/facts.ts';
import { describeDenial, firstAssignmentOperation, policyRegionOf, policyVmOf } from './policy-check.ts';
import { hardBudgetDenial, type FleetBudget } from './budgets.ts';
import { FLEET_MAX_PRIORITY } from './spec.ts';
import type { FleetGroupKind, FleetState } from './state-machine.ts';
import type { ProviderFacts, RegionFacts, Resource, ResourceAmounts, ResourceLimits } from './ledger.ts';
import { RESOURCES, demandOf, describeRegionConstraint, describeShortfall, exceedsLimits, failedRegionConstraint, formatAmount, formatUsd, hourlyUsd, providerConstraintProblem, shortfallOf } from './ledger.ts';

export const PLACEMENT_STRATEGIES = ['binpack', 'spread'] as const;
export type PlacementStrategy = (typeof PLACEMENT_STRATEGIES)[number];

export const PLACEMENT_FACTORS = ['cost', 'rtt', 'headroom', 'health', 'priority', 'spread'] as const;
export type PlacementFactor = (typeof PLACEMENT_FACTORS)[number];
export type PlacementWeights = { readonly [F in PlacementFactor]: number };

export const PLACEMENT_FILTERS = ['constraint', 'health', 'rtt', 'anti-affinity', 'spot', 'capacity', 'price', 'policy', 'providers'] as const;
/** `providers`: the region's providers were excluded for different reasons (each is listed). */
export type PlacementFilter = (typeof PLACEMENT_FILTERS)[number];

/** Largest view place() accepts; larger views are a mistake upstream. */
export const PLACEMENT_MAX_REGIONS = 10_000;

export const DEFAULT_PLACEMENT_WEIGHTS: PlacementWeights = { cost: 1, rtt: 0.5, headroom: 0.5, health: 1, priority: 1, spread: 1 };

export interface PlacementOptions {
  readonly strategy: PlacementStrategy;
  readonly weights: PlacementWeights;
  /** Regions whose phi exceeds this are excluded (the failure detector's suspicion threshold). */
  readonly maxPhi: number;
  /** The RTT that scores 0 when the spec has no maxRtt constraint. */
  readonly rttScaleMs: number;
  /** The region the request came from: RTT is scored from it when the spec names no maxRtt region. */
  readonly origin: string | null;
  /** The operation policies see; absent: create or place, from the spec (a first assignment). */
  readonly operation?: PolicyOperation;
}

export const DEFAULT_PLACEMENT_OPTIONS: PlacementOptions = { strategy: 'binpack', weights: DEFAULT_PLACEMENT_WEIGHTS, maxPhi: 8, rttScaleMs: 200, origin: null };

export interface PlacementProviderView extends ProviderFacts {
  readonly limits: ResourceLimits;
  readonly used: ResourceAmounts;
}

export interface PlacementRegionView extends RegionFacts {
  /** The node's declared trust (policies' region.trust); absent or null: not declared. */
  readonly trust?: 'trusted' | 'untrusted' | null;
  /** Sorted by name. */
  readonly providers: readonly PlacementProviderView[];
  /** The failure detector's phi for this region (0: heard from just now). */
  readonly phi: number;
  /** Suspected down, or its last report is too old to trust. */
  readonly suspected: boolean;
}

/** What placement sees: regions with precomputed usage, observed health and RTT, and group counts. */
export interface PlacementView {
  /** Sorted by name. */
  readonly regions: readonly PlacementRegionView[];
  readonly byName: ReadonlyMap<string, PlacementRegionView>;
  /** RTT in milliseconds from one region to every other it has measured; a region is 0 ms from itself. */
  rttFrom(region: string): ReadonlyMap<string, number> | undefined;
  /** Live VMs of the group per region (anti-affinity and spread); read once per decision. */
  groupCounts(kind: FleetGroupKind, group: string): ReadonlyMap<string, number>;
  /** The policy set candidates are filtered through (the log's, for a view of desired state). */
  readonly policy: PolicyEvaluator;
  /** Budgets in the log: a spent hard one excludes new placements in its scope (filter `policy`; src/fleet/budgets.ts). */
  readonly budgets: readonly FleetBudget[];
}

export interface RegionHealth {
  readonly phi: number;
  readonly suspected: boolean;
}

export interface ObservedFleet {
  /** Per region; a region absent here counts as healthy (phi 0) — the driver decides what an absent report means. */
  readonly health?: ReadonlyMap<string, RegionHealth>;
  /** rtt.get(from)?.get(to) in ms. */
  readonly rttMs?: ReadonlyMap<string, ReadonlyMap<string, number>>;
}

/**
 * A view over desired state (regions, the ledger's usage, group counts) and
 * observed health and RTT. O(regions × providers); group counts are read
 * from `state` when asked, so use the view before applying more commands.
 */
export function buildPlacementView(state: FleetState, observed: ObservedFleet = {}): PlacementView {
  const regions = state.regions().map((region): PlacementRegionView => {
    const health = observed.health?.get(region.name);
    return {
      name: region.name,
      jurisdiction: region.jurisdiction,
      trust: region.trust,
      compliance: region.compliance,
      labels: region.labels,
      phi: health?.phi ?? 0,
      suspected: health?.suspected ?? false,
      providers: region.providers.map((p) => ({ ...p, used: state.usage(region.name, p.name) ?? { vcpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0 } })),
    };
  });
  return makePlacementView(regions, observed.rttMs ?? new Map(), (kind, group) => state.groupCounts(kind, group), state.policy.evaluator, state.budgets());
}

/** A view from parts (tests, simulators, a driver with its own sources). Regions are sorted here. */
export function makePlacementView(
  regions: readonly PlacementRegionView[],
  rtt: ReadonlyMap<string, ReadonlyMap<string, number>>,
  groupCounts: (kind: FleetGroupKind, group: string) => ReadonlyMap<string, number>,
  policy: PolicyEvaluator = NO_POLICY,
  budgets: readonly FleetBudget[] = [],
): PlacementView {
  if (regions.length > PLACEMENT_MAX_REGIONS) throw new RangeError(`placement view: ${regions.length} regions, above the ${PLACEMENT_MAX_REGIONS} limit`);
  const sorted = [...regions].sort((a, b) => compareNames(a.name, b.name));
  const byName = new Map(sorted.map((r) => [r.name, r]));
  if (byName.size !== sorted.length) throw new RangeError('placement view: two regions share a name');
  return { regions: sorted, byName, rttFrom: (region) => rtt.get(region), groupCounts, policy, budgets };
}

export interface FactorScore {
  /** In [0, 1]. */
  readonly value: number;
  readonly weight: number;
  /** value × weight. */
  readonly contribution: number;
  /** The inputs, for people: `$0.042/h, cheapest $0.021/h`. */
  readonly detail: string;
}

/**
 * A factor's detail is text for people, built only when read (and by
 * toJSON for `--json`): a decision where 1 000 regions are eligible scores
 * 6 000 factors, and formatting all of them up front costs more than the
 * arithmetic. Compare factors by value (toMatchObject, JSON), not by class.
 */
class Factor implements FactorScore {
  readonly value: number;
  readonly weight: number;
  readonly contribution: number;
  #detail: string | (() => string);
  constructor(value: number, weight: number, detail: string | (() => string)) {
    this.value = value < 0 ? 0 : value > 1 ? 1 : value;
    this.weight = weight;
    this.contribution = this.value * weight;
    this.#detail = detail;
  }
  get detail(): string {
    if (typeof this.#detail !== 'string') this.#detail = this.#detail();
    return this.#detail;
  }
  toJSON(): FactorScore {
    return { value: this.value, weight: this.weight, contribution: this.contribution, detail: this.detail };
  }
}

function factor(value: number, weight: number, detail: string | (() => string)): FactorScore {
  return new Factor(value, weight, detail);
}

export interface ProviderExclusion {
  readonly provider: string;
  readonly filter: PlacementFilter;
  readonly reason: string;
  /** Filter `policy`: the deny rules that fired, in the set's order. */
  readonly denials?: readonly PolicyHit[];
}

export interface ScoredCandidate {
  readonly region: string;
  readonly provider: string;
  readonly hourlyUsd: number;
  readonly score: number;
  readonly factors: { readonly [F in PlacementFactor]: FactorScore };
  /** Other providers of the region: excluded (with why) or outscored. */
  readonly otherProviders: readonly (ProviderExclusion | { readonly provider: string; readonly score: number })[];
  /** Audit and warn rules that fire for this candidate (present only when some do). */
  readonly policy?: PolicyVerdict;
}

export interface ExcludedCandidate {
  readonly status: 'excluded';
  readonly region: string;
  readonly filter: PlacementFilter;
  /** A sentence with the numbers that decided. */
  readonly reason: string;
  /** When a provider filter decided: each provider and why. */
  readonly providers: readonly ProviderExclusion[];
}

function exclusion(region: string, filter: PlacementFilter, reason: string, providers: readonly ProviderExclusion[] = []): ExcludedCandidate {
  return { status: 'excluded', region, filter, reason, providers };
}

export type CandidateExplanation = ({ readonly status: 'eligible' } & ScoredCandidate) | ExcludedCandidate;

export type PlacementDecision =
  | {
      readonly ok: true;
      readonly choice: ScoredCandidate;
      /** The next best regions (at most two), best first. */
      readonly alternatives: readonly ScoredCandidate[];
      /** Every region of the view, by name. */
      readonly candidates: readonly CandidateExplanation[];
    }
  | {
      readonly ok: false;
      readonly code: 'no_fit' | 'too_large' | 'unknown_region';
      readonly message: string;
      readonly candidates: readonly CandidateExplanation[];
    };

/** Raw measurements of a surviving (region, provider), before normalisation across candidates. */
interface Survivor {
  regionIndex: number;
  region: PlacementRegionView;
  provider: PlacementProviderView;
  price: number;
  /** The tightest limited resource's free share after placing; 1 when nothing is limited. */
  headroom: number;
  headroomResource: Resource | null;
  rtt: number | undefined;
  verdict: PolicyVerdict | null;
}

function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Options from partial input (config, CLI); refuses weights or thresholds that would make scores meaningless. */
export function resolvePlacementOptions(partial: Partial<Omit<PlacementOptions, 'weights'>> & { weights?: Partial<PlacementWeights> } = {}): PlacementOptions {
  const weights = { ...DEFAULT_PLACEMENT_WEIGHTS, ...partial.weights };
  for (const f of PLACEMENT_FACTORS) {
    const w = weights[f];
    if (!Number.isFinite(w) || w < 0 || w > 100) throw new RangeError(`placement weights.${f}: ${w} is not a number from 0 to 100`);
  }
  const options = { ...DEFAULT_PLACEMENT_OPTIONS, ...partial, weights };
  if (!PLACEMENT_STRATEGIES.includes(options.strategy)) throw new RangeError(`placement strategy: ${String(options.strategy)} is not one of ${PLACEMENT_STRATEGIES.join('|')}`);
  if (!(options.maxPhi > 0)) throw new RangeError(`placement maxPhi: ${options.maxPhi} must be above 0`);
  if (!(options.rttScaleMs > 0)) throw new RangeError(`placement rttScaleMs: ${options.rttScaleMs} must be above 0`);
  return options;
}

function unknownRegions(c: FleetConstraints, view: PlacementView, origin: string | null): string[] {
  const named = [...(c.regions ?? []), ...(c.maxRtt !== undefined ? [c.maxRtt.region] : [])];
  const unknown = named.filter((r) => !view.byName.has(r));
  if (origin !== null && !view.byName.has(origin)) unknown.push(origin);
  return unknown;
}

const NO_COUNTS: ReadonlyMap<string, number> = new Map();

/**
 * A candidate's policy facts, built once per (region, provider) of a view (a
 * view is reused across decisions where it can be). Keyed by both objects:
 * they are immutable, so the facts derived from the pair cannot go stale.
 */
const regionFacts = new WeakMap<PlacementRegionView, WeakMap<PlacementProviderView, PolicyRegion>>();

function policyRegionFor(region: PlacementRegionView, provider: PlacementProviderView): PolicyRegion {
  let byProvider = regionFacts.get(region);
  if (byProvider === undefined) regionFacts.set(region, (byProvider = new WeakMap()));
  let facts = byProvider.get(provider);
  if (facts === undefined) byProvider.set(provider, (facts = policyRegionOf(region, provider)));
  return facts;
}

export function place(spec: FleetVmSpec, view: PlacementView, options: PlacementOptions = DEFAULT_PLACEMENT_OPTIONS): PlacementDecision {
  const c = spec.constraints;
  const unknown = unknownRegions(c, view, options.origin);
  if (unknown.length > 0) {
    return { ok: false, code: 'unknown_region', message: `${spec.name}: unknown region${unknown.length === 1 ? '' : 's'} ${unknown.join(', ')} (the fleet has ${view.regions.length} regions)`, candidates: [] };
  }
  const demand = demandOf(spec);
  const rttFrom = c.maxRtt?.region ?? options.origin;
  const rttRow = rttFrom === null ? undefined : view.rttFrom(rttFrom);
  const maxRtt = c.maxRtt;
  const antiCounts = c.antiAffinityGroup === undefined ? NO_COUNTS : view.groupCounts('anti-affinity', c.antiAffinityGroup);
  const spreadCounts = c.spreadGroup === undefined ? NO_COUNTS : view.groupCounts('spread', c.spreadGroup);
  const candidates = new Array<CandidateExplanation>(view.regions.length);
  /** Every surviving (region, provider), in region then provider order. */
  const survivors: Survivor[] = [];
  /** Providers excluded inside regions that survived, by region index, for their explanations. */
  const partial = new Map<number, ProviderExclusion[]>();
  let cheapest = Infinity;
  const constraintText = new Map<string, string>();
  const operation = options.operation ?? firstAssignmentOperation(spec);
  const scope: PolicyScope | null = view.policy.ruleCount === 0 ? null : view.policy.forVm(policyVmOf(spec), operation);

  for (let i = 0; i < view.regions.length; i++) {
    const region = view.regions[i] as PlacementRegionView;
    const failed = failedRegionConstraint(spec, region);
    if (failed !== null) {
      // Most regions fail the same way (not in the list, the wrong jurisdiction): build each sentence once per decision.
      const key = failed === 'regions' ? failed : failed === 'jurisdictions' ? `j:${region.jurisdiction ?? ''}` : null;
      let reason = key === null ? undefined : constraintText.get(key);
      if (reason === undefined) {
        reason = describeRegionConstraint(spec, region, failed);
        if (key !== null) constraintText.set(key, reason);
      }
      candidates[i] = exclusion(region.name, 'constraint', reason);
      continue;
    }
    if (region.suspected || region.phi > options.maxPhi) {
      candidates[i] = exclusion(
        region.name,
        'health',
        region.suspected ? `suspected down (phi ${region.phi.toFixed(1)})` : `phi ${region.phi.toFixed(1)} above the limit ${options.maxPhi}`,
      );
      continue;
    }
    const rtt = rttFrom === null ? undefined : rttFrom === region.name ? 0 : rttRow?.get(region.name);
    if (maxRtt !== undefined) {
      if (rtt === undefined) {
        candidates[i] = exclusion(region.name, 'rtt', `no RTT measured from ${maxRtt.region}`);
        continue;
      }
      if (rtt > maxRtt.ms) {
        candidates[i] = exclusion(region.name, 'rtt', `RTT from ${maxRtt.region} is ${rtt.toFixed(1)} ms, above the limit ${maxRtt.ms} ms`);
        continue;
      }
    }
    const anti = antiCounts.get(region.name) ?? 0;
    if (anti > 0) {
      candidates[i] = exclusion(region.name, 'anti-affinity', `already holds ${anti} VM${anti === 1 ? '' : 's'} of anti-affinity group ${c.antiAffinityGroup ?? ''}`);
      continue;
    }
    let out: ProviderExclusion[] | null = null;
    let kept = 0;
    for (const provider of region.providers) {
      const problem = providerConstraintProblem(spec, provider);
      // Capacity goes before price: "full" is the more useful thing to know about a region.
      if (problem !== null && problem.filter !== 'price') {
        (out ??= []).push({ provider: provider.name, filter: problem.filter, reason: problem.reason });
        continue;
      }
      const short = shortfallOf(provider.limits, provider.used, demand);
      if (short !== null) {
        (out ??= []).push({ provider: provider.name, filter: 'capacity', reason: `${provider.name} ${describeShortfall(short)}` });
        continue;
      }
      if (problem !== null) {
        (out ??= []).push({ provider: provider.name, filter: problem.filter, reason: problem.reason });
        continue;
      }
      const price = hourlyUsd(spec, provider.prices);
      const verdict = scope === null ? null : scope.evaluate(policyRegionFor(region, provider), price);
      if (verdict !== null && !verdict.allowed) {
        (out ??= []).push({ provider: provider.name, filter: 'policy', reason: `${provider.name} ${describeDenial(verdict)}`, denials: verdict.denials });
        continue;
      }
      const spent = view.budgets.length === 0 ? null : hardBudgetDenial(view.budgets, operation, { region: region.name, provider: provider.name, labels: spec.labels });
      if (spent !== null) {
        (out ??= []).push({ provider: provider.name, filter: 'policy', reason: `${provider.name} ${spent}` });
        continue;
      }
      let headroom = 1;
      let headroomResource: Resource | null = null;
      for (const r of RESOURCES) {
        const limit = provider.limits[r];
        if (limit === null || limit === 0) continue;
        const share = (limit - provider.used[r] - demand[r]) / limit;
        if (share < headroom) {
          headroom = share;
          headroomResource = r;
        }
      }
      if (price < cheapest) cheapest = price;
      survivors.push({ regionIndex: i, region, provider, price, headroom, headroomResource, rtt, verdict: verdict === null || verdict.audits.length + verdict.warnings.length === 0 ? null : verdict });
      kept++;
    }
    if (kept === 0) {
      const exclusions = out ?? [];
      const first = exclusions[0];
      const same = first !== undefined && exclusions.every((e) => e.filter === first.filter);
      candidates[i] = exclusion(region.name, same ? first.filter : 'providers', exclusions.map((e) => e.reason).join('; ') || 'declares no provider', exclusions);
    } else if (out !== null) {
      partial.set(i, out);
    }
  }

  // Second pass, once the cheapest eligible price is known: scores, each region's best provider, the top three.
  const top: ScoredCandidate[] = [];
  const cheapestText = `$${formatUsd(cheapest)}`;
  for (let k = 0; k < survivors.length; ) {
    const regionIndex = (survivors[k] as Survivor).regionIndex;
    let best: ScoredCandidate | null = null;
    const outscored: { provider: string; score: number }[] = [];
    for (; k < survivors.length && (survivors[k] as Survivor).regionIndex === regionIndex; k++) {
      const scored = scoreSurvivor(spec, survivors[k] as Survivor, cheapest, cheapestText, options, rttFrom, spreadCounts);
      // Providers come sorted by name: the first of equal scores wins.
      if (best === null || scored.score > best.score) {
        if (best !== null) outscored.push({ provider: best.provider, score: best.score });
        best = scored;
      } else {
        outscored.push({ provider: scored.provider, score: scored.score });
      }
    }
    if (best === null) continue;
    const others = partial.get(regionIndex);
    const candidate: ScoredCandidate = others === undefined && outscored.length === 0 ? best : { ...best, otherProviders: [...(others ?? []), ...outscored] };
    candidates[regionIndex] = { status: 'eligible', ...candidate };
    insertTop(top, candidate);
  }
  const choice = top[0];
  if (choice !== undefined) return { ok: true, choice, alternatives: top.slice(1), candidates };
  const tooLarge = largerThanEveryRegion(demand, view);
  if (tooLarge !== null) return { ok: false, code: 'too_large', message: `${spec.name} ${tooLarge}`, candidates };
  const reasons = candidates.map((e) => `${e.region}: ${e.status === 'excluded' ? `${e.filter}: ${e.reason}` : 'eligible'}`);
  return { ok: false, code: 'no_fit', message: `${spec.name} fits no region (${reasons.length}): ${reasons.join('; ')}`, candidates };
}

/** Keeps the best three by (score desc, region asc); candidates arrive in region order, so a later equal never displaces. */
function insertTop(top: ScoredCandidate[], candidate: ScoredCandidate): void {
  let at = top.length;
  while (at > 0 && (top[at - 1] as ScoredCandidate).score < candidate.score) at--;
  if (at >= 3) return;
  top.splice(at, 0, candidate);
  if (top.length > 3) top.pop();
}

function scoreSurvivor(spec: FleetVmSpec, s: Survivor, cheapest: number, cheapestText: string, options: PlacementOptions, rttFrom: string | null, spreadCounts: ReadonlyMap<string, number>): ScoredCandidate {
  const w = options.weights;
  const c = spec.constraints;
  const cost = factor(s.price === 0 ? 1 : cheapest / s.price, w.cost, () => `$${formatUsd(s.price)}/h, cheapest ${cheapestText}/h`);
  let rtt: FactorScore;
  const measured = s.rtt;
  if (rttFrom === null) rtt = factor(1, w.rtt, 'no reference region');
  else if (measured === undefined) rtt = factor(0.5, w.rtt, () => `not measured from ${rttFrom}`);
  else {
    const scale = c.maxRtt !== undefined && c.maxRtt.ms > 0 ? c.maxRtt.ms : options.rttScaleMs;
    rtt = factor(1 - measured / scale, w.rtt, () => `${measured.toFixed(1)} ms from ${rttFrom}, scale ${scale} ms`);
  }
  const headroom = factor(options.strategy === 'binpack' ? 1 - s.headroom : s.headroom, w.headroom, () =>
    s.headroomResource === null ? 'no declared limit' : `${(s.headroom * 100).toFixed(1)}% of ${s.headroomResource} free after placing (${options.strategy})`,
  );
  const phi = s.region.phi;
  const health = factor(1 - phi / options.maxPhi, w.health, () => `phi ${phi.toFixed(1)} of ${options.maxPhi}`);
  const priority = s.provider.spot
    ? factor(1 - spec.priority / FLEET_MAX_PRIORITY, w.priority, () => `spot capacity, priority ${spec.priority}`)
    : factor(1, w.priority, 'on-demand capacity');
  let spread: FactorScore;
  const group = c.spreadGroup;
  if (group === undefined) spread = factor(1, w.spread, 'no spread group');
  else {
    const n = spreadCounts.get(s.region.name) ?? 0;
    spread = factor(1 / (1 + n), w.spread, () => `${n} VM${n === 1 ? '' : 's'} of spread group ${group} here`);
  }
  // A fixed order of addition: the same inputs give the same float on every replica.
  const score = cost.contribution + rtt.contribution + headroom.contribution + health.contribution + priority.contribution + spread.contribution;
  const candidate: ScoredCandidate = { region: s.region.name, provider: s.provider.name, hourlyUsd: s.price, score, factors: { cost, rtt, headroom, health, priority, spread }, otherProviders: [] };
  return s.verdict === null ? candidate : { ...candidate, policy: s.verdict };
}

/** `needs 64 vCPUs, larger than every region's capacity: the largest is eu-west/local with 32 vCPUs`, or null when some provider could hold it empty. */
function largerThanEveryRegion(demand: ResourceAmounts, view: PlacementView): string | null {
  if (view.regions.length === 0) return 'cannot be placed: the fleet has no registered region';
  for (const region of view.regions) {
    for (const p of region.providers) if (exceedsLimits(p.limits, demand) === null) return null;
  }
  // Name the resource that fails at the largest provider for it.
  for (const r of RESOURCES) {
    let largest: { region: string; provider: string; limit: number } | null = null;
    let unlimited = false;
    for (const region of view.regions) {
      for (const p of region.providers) {
        const limit = p.limits[r];
        if (limit === null) unlimited = true;
        else if (largest === null || limit > largest.limit) largest = { region: region.name, provider: p.name, limit };
      }
    }
    if (!unlimited && largest !== null && demand[r] > largest.limit) {
      return `needs ${formatAmount(r, demand[r])}, larger than every region's capacity: the largest is ${largest.region}/${largest.provider} with ${formatAmount(r, largest.limit)}`;
    }
  }
  return 'is larger than every provider of every region in some resource (each region lists which)';
}

/** Lines for `--explain`: the choice, the alternatives, then every region. */
export function formatPlacement(decision: PlacementDecision): string[] {
  const lines: string[] = [];
  const scoredLine = (c: ScoredCandidate): string =>
    `${c.region}/${c.provider} score ${c.score.toFixed(3)} ($${formatUsd(c.hourlyUsd)}/h): ` +
    PLACEMENT_FACTORS.map((f) => `${f} ${c.factors[f].contribution.toFixed(3)} (${c.factors[f].detail})`).join(', ') +
    (c.policy === undefined ? '' : [...c.policy.audits, ...c.policy.warnings].map((h) => `; ${h.effect}: ${formatHit(h)}`).join(''));
  if (decision.ok) {
    lines.push(`choice: ${scoredLine(decision.choice)}`);
    decision.alternatives.forEach((a, i) => lines.push(`alternative ${i + 1}: ${scoredLine(a)}`));
  } else {
    lines.push(`refused (${decision.code}): ${decision.message}`);
  }
  for (const c of decision.candidates) {
    lines.push(c.status === 'eligible' ? `  ${scoredLine(c)}` : `  ${c.region}: excluded by ${c.filter}: ${c.reason}`);
  }
  return lines;
}
