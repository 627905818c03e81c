/**
 * The optimiser's core: from a region's VMs (what each is, runs as and
 * costs), their utilisation series, the catalog's type offers, the move
 * targets the fleet knows and a policy check, the recommendations, each with
 * its current and projected $/month, the savings, the numbers the rule used
 * (evidence) and a confidence.
 *
 * The rules (thresholds in `cost.recommendations`, config.ts):
 * - idle (Trusted Advisor): a rolling day is idle when its mean CPU ≤ 10 %
 *   and its network in + out ≤ 5 MB; a VM with idle days on ≥ 4 of the last
 *   14 → stop it. A day counts only when ≥ half its slots have data; without
 *   network data a day is judged on CPU alone (the evidence says so, and the
 *   confidence is at most medium). An idle VM gets no other recommendation:
 *   stopping it saves more than any of them.
 * - rightsizing (AWS Compute Optimizer): the P99.5 CPU over the lookback
 *   (14 days) × the current vCPUs × (1 + 20 % headroom) is what the new type
 *   must hold, and the same for memory when memory was sampled; memory never
 *   sampled (clouds without an agent) means no type with less memory than
 *   now. The cheapest catalog type of the same provider and location (same
 *   architecture) that fits, when cheaper than the current one. Downsizing
 *   only: this is a cost optimiser, not a capacity planner.
 * - spot: a VM carrying the fault-tolerant label, running on demand, whose
 *   type has a spot price.
 * - reserved: an on-demand VM running ≥ `minRunningShare` of the lookback
 *   whose type has a 1-year reserved price: the commitment (reserved hourly ×
 *   8 760 h) against on-demand at the measured share; break-even months =
 *   commitment ÷ the on-demand monthly spend; recommended when < 12.
 * - arbitrage: a fleet VM (only they can migrate) and a (region, provider)
 *   the fleet knows, that policy allows for a `migrate`, at least
 *   `minSavingsPercent` cheaper over `horizonMonths` net of the one-off
 *   transfer (disk GiB × `transferUsdPerGiB`); the cheapest such target.
 * - Too little data (less than `minDataHours` measured in the lookback, or
 *   fewer measured days than the idle rule needs) ⇒ no recommendation from
 *   that rule; the VM is listed in `insufficient` with the reason, never
 *   guessed at.
 *
 * $/month is the hourly rate × 730 h (the clouds' billing month) while
 * running; a stopped VM's disk is not priced (as in accrual.ts).
 *
 * Ids are stable: a hash of (region, provider, instance, kind, target), so
 * the same advice keeps its id between passes and `cost apply ID` finds it
 * unless the facts changed (then the id is stale and refused).
 *
 * Pure: no clock, no I/O; inputs in, recommendations out.
 */
import { createHash } from 'node:crypto';
import { HOURS_PER_MONTH } from '../cloud/pricing/catalog.ts';
import type { RecommendationSettings } from './config.ts';
import type { UtilisationSeries } from './series.ts';
import { DAY_MS, UsageScanner, type UsageStats } from './usage-stats.ts';

export const RECOMMENDATION_KINDS = ['idle', 'rightsize', 'spot', 'reserved', 'arbitrage'] as const;
export type RecommendationKind = (typeof RECOMMENDATION_KINDS)[number];
export type Confidence = 'high' | 'medium' | 'low';

const ID_PREFIX: Readonly<Record<RecommendationKind, string>> = { idle: 'idle', rightsize: 'rs', spot: 'spot', reserved: 'ri', arbitrage: 'mv' };
const HOURS_PER_YEAR = 8_760;
const GIB = 1024 ** 3;
const EPSILON = 5e-5;

/** One VM of this region, as the rules see it. */
export interface VmFacts {
  /** The fleet region (node) the VM runs in. */
  readonly region: string;
  /** Configured provider name. */
  readonly provider: string;
  readonly kind: string;
  /** The provider's own region (us-east-1, …). */
  readonly location: string;
  readonly instanceId: string;
  /** The fleet VM's name, else the instance's. */
  readonly vm: string;
  /** A fleet VM (desired state in the log): only these can be migrated. */
  readonly fleet: boolean;
  readonly type: string;
  readonly vcpus: number | null;
  readonly memoryMiB: number | null;
  /** The fleet spec's disk, for a move's transfer; null when unknown. */
  readonly diskBytes: number | null;
  readonly labels: Readonly<Record<string, string>>;
  /** What it runs as now, and the rate (accrual's view: subjects.ts); null rate: unpriced. */
  readonly model: 'on-demand' | 'spot' | 'reserved' | 'on-prem';
  readonly hourlyUsd: number | null;
  readonly running: boolean;
  readonly series: UtilisationSeries | undefined;
}

/** A type the catalog prices at a provider's location, with its size. */
export interface TypeOffer {
  readonly name: string;
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly architectures: readonly string[];
  readonly onDemandHourly: number;
  readonly spotHourly: number | null;
  readonly reservedHourly: number | null;
}

/** A (region, provider) a fleet VM could move to, with the VM's hourly rate there. */
export interface MoveTarget {
  readonly region: string;
  readonly provider: string;
  readonly kind: string;
  readonly hourlyUsd: number;
}

export interface RecommendInput {
  readonly nowMs: number;
  readonly settings: RecommendationSettings;
  readonly vms: Iterable<VmFacts>;
  /** The priced types of a provider kind at a location, with sizes; empty when unknown. */
  offers(kind: string, location: string): readonly TypeOffer[];
  /** Where a fleet VM could go (its current place excluded by the core). */
  targets(vm: VmFacts): readonly MoveTarget[];
  /** Null when policy allows the VM at the target for a migrate; else the denial. */
  policy(vm: VmFacts, target: MoveTarget): string | null;
}

export type RecommendationAction =
  | { readonly kind: 'stop' }
  | { readonly kind: 'resize'; readonly toType: string }
  | { readonly kind: 'spot' }
  | { readonly kind: 'reserve'; readonly type: string }
  | { readonly kind: 'move'; readonly region: string; readonly provider: string };

export interface Recommendation {
  readonly id: string;
  readonly kind: RecommendationKind;
  readonly region: string;
  readonly provider: string;
  readonly instanceId: string;
  readonly vm: string;
  readonly fleet: boolean;
  readonly type: string;
  readonly action: RecommendationAction;
  readonly currentMonthlyUsd: number;
  readonly projectedMonthlyUsd: number;
  readonly savingsMonthlyUsd: number;
  readonly confidence: Confidence;
  /** The numbers the rule used. */
  readonly evidence: Readonly<Record<string, number | string | boolean | null>>;
  /** One sentence: what and why. */
  readonly summary: string;
}

export interface InsufficientData {
  readonly vm: string;
  readonly provider: string;
  readonly instanceId: string;
  readonly reason: string;
}

export interface RecommendResult {
  readonly generatedAtMs: number;
  readonly scanned: number;
  readonly recommendations: Recommendation[];
  readonly insufficient: InsufficientData[];
}

export function recommendationId(kind: RecommendationKind, vm: Pick<VmFacts, 'region' | 'provider' | 'instanceId'>, target: string): string {
  const hash = createHash('sha256').update(`${vm.region}\u0000${vm.provider}\u0000${vm.instanceId}\u0000${kind}\u0000${target}`).digest('hex');
  return `${ID_PREFIX[kind]}-${hash.slice(0, 10)}`;
}

function money(v: number): number {
  return Math.round(v * 10_000) / 10_000;
}

function pct(v: number): number {
  return Math.round(v * 10_000) / 100;
}

function confidenceOf(coverage: number): Confidence {
  return coverage >= 0.9 ? 'high' : coverage >= 0.5 ? 'medium' : 'low';
}

function lower(c: Confidence): Confidence {
  return c === 'high' ? 'medium' : 'low';
}

/** Runs every rule over every VM. */
export function recommend(input: RecommendInput): RecommendResult {
  const s = input.settings;
  const scanner = new UsageScanner();
  const out: Recommendation[] = [];
  const insufficient: InsufficientData[] = [];
  const [spotKey = '', spotValue = ''] = splitLabel(s.spot.label);
  let scanned = 0;
  for (const vm of input.vms) {
    if (!vm.running || vm.hourlyUsd === null) continue;
    scanned++;
    const stats = vm.series === undefined ? null : scanner.scan(vm.series, { nowMs: input.nowMs, lookbackMs: s.lookbackDays * DAY_MS, percentile: s.rightsizing.percentile, days: s.idle.windowDays });
    const monthly = vm.hourlyUsd * HOURS_PER_MONTH;
    const base = { region: vm.region, provider: vm.provider, instanceId: vm.instanceId, vm: vm.vm, fleet: vm.fleet, type: vm.type, currentMonthlyUsd: money(monthly) };
    const idle = idleRule(vm, stats, s, base);
    if (idle.kind === 'recommend') {
      out.push(idle.recommendation);
      continue;
    }
    const enough = stats !== null && stats.measuredHours >= s.minDataHours;
    if (!enough || idle.kind === 'insufficient') {
      const hours = stats?.measuredHours ?? 0;
      const reasons = [!enough ? `${hours.toFixed(1)} h of utilisation in the last ${s.lookbackDays} days (rightsizing and reservations need ${s.minDataHours} h)` : null, idle.kind === 'insufficient' ? idle.reason : null].filter((r) => r !== null);
      insufficient.push({ vm: vm.vm, provider: vm.provider, instanceId: vm.instanceId, reason: reasons.join('; ') });
    }
    if (enough && stats !== null) {
      const rs = rightsizeRule(vm, stats, input, base);
      if (rs !== null) out.push(rs);
      const ri = reservedRule(vm, stats, input, base);
      if (ri !== null) out.push(ri);
    }
    if (vm.labels[spotKey] === spotValue && spotKey !== '') {
      const sp = spotRule(vm, stats, input, base);
      if (sp !== null) out.push(sp);
    }
    if (vm.fleet) {
      const mv = arbitrageRule(vm, stats, input, base);
      if (mv !== null) out.push(mv);
    }
  }
  out.sort((a, b) => b.savingsMonthlyUsd - a.savingsMonthlyUsd || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return { generatedAtMs: input.nowMs, scanned, recommendations: out, insufficient };
}

function splitLabel(label: string): [string, string] {
  const i = label.indexOf('=');
  return [label.slice(0, i), label.slice(i + 1)];
}

type Base = Pick<Recommendation, 'region' | 'provider' | 'instanceId' | 'vm' | 'fleet' | 'type' | 'currentMonthlyUsd'>;

type IdleOutcome = { kind: 'recommend'; recommendation: Recommendation } | { kind: 'insufficient'; reason: string } | { kind: 'busy' };

function idleRule(vm: VmFacts, stats: UsageStats | null, s: RecommendationSettings, base: Base): IdleOutcome {
  const rule = s.idle;
  const measured = stats?.days.filter((d) => d.coverage >= rule.minDayCoverage && d.cpuMean !== null) ?? [];
  if (measured.length < rule.days) {
    return { kind: 'insufficient', reason: `${measured.length} measured day${measured.length === 1 ? '' : 's'} of the last ${rule.windowDays} (the idle rule needs ${rule.days})` };
  }
  const cpuOnly = measured.some((d) => d.networkBytes === null);
  // Means of 1/10 000 fractions carry float noise (0.1 × 288 ÷ 288 > 0.1): compare within half a step.
  const idleDays = measured.filter((d) => (d.cpuMean ?? 1) <= rule.cpu + EPSILON && (d.networkBytes === null || d.networkBytes <= rule.networkBytes));
  if (idleDays.length < rule.days) return { kind: 'busy' };
  const maxCpu = Math.max(...idleDays.map((d) => d.cpuMean ?? 0));
  const maxNet = Math.max(...idleDays.map((d) => d.networkBytes ?? 0));
  const confidence = cpuOnly ? lower(confidenceOf(measured.length / rule.windowDays)) : confidenceOf(measured.length / rule.windowDays);
  return {
    kind: 'recommend',
    recommendation: {
      ...base,
      id: recommendationId('idle', vm, 'stop'),
      kind: 'idle',
      action: { kind: 'stop' },
      projectedMonthlyUsd: 0,
      savingsMonthlyUsd: base.currentMonthlyUsd,
      confidence,
      evidence: {
        idleDays: idleDays.length,
        measuredDays: measured.length,
        windowDays: rule.windowDays,
        requiredDays: rule.days,
        cpuThreshold: rule.cpu,
        networkThresholdBytes: rule.networkBytes,
        maxIdleDayCpu: Math.round(maxCpu * 10_000) / 10_000,
        maxIdleDayNetworkBytes: cpuOnly ? null : Math.round(maxNet),
        network: cpuOnly ? 'not measured on some days: judged on CPU alone' : 'measured',
      },
      summary: `idle on ${idleDays.length} of ${measured.length} measured days (CPU ≤ ${pct(rule.cpu)} %${cpuOnly ? '' : `, network ≤ ${rule.networkBytes / 1e6} MB`} a day): stop it`,
    },
  };
}

function currentShape(vm: VmFacts, offers: readonly TypeOffer[]): { vcpus: number; memoryMiB: number; architectures: readonly string[] } | null {
  const offer = offers.find((o) => o.name === vm.type);
  const vcpus = vm.vcpus ?? offer?.vcpus ?? null;
  const memoryMiB = vm.memoryMiB ?? offer?.memoryMiB ?? null;
  if (vcpus === null || memoryMiB === null) return null;
  return { vcpus, memoryMiB, architectures: offer?.architectures ?? [] };
}

function rightsizeRule(vm: VmFacts, stats: UsageStats, input: RecommendInput, base: Base): Recommendation | null {
  if ((vm.model !== 'on-demand' && vm.model !== 'spot') || stats.cpuPercentile === null || vm.hourlyUsd === null) return null;
  const offers = input.offers(vm.kind, vm.location);
  const shape = currentShape(vm, offers);
  if (shape === null) return null;
  const { percentile, headroom } = input.settings.rightsizing;
  const needVcpus = stats.cpuPercentile * shape.vcpus * (1 + headroom);
  const needMemoryMiB = stats.memoryPercentile === null ? shape.memoryMiB : stats.memoryPercentile * shape.memoryMiB * (1 + headroom);
  const priceOf = (o: TypeOffer): number | null => (vm.model === 'spot' ? o.spotHourly : o.onDemandHourly);
  const sameArch = (o: TypeOffer): boolean => shape.architectures.length === 0 || o.architectures.length === 0 || o.architectures.some((a) => shape.architectures.includes(a));
  let best: { offer: TypeOffer; hourly: number } | null = null;
  for (const o of offers) {
    const hourly = priceOf(o);
    if (hourly === null || o.name === vm.type || !sameArch(o) || o.vcpus + EPSILON < needVcpus || o.memoryMiB + EPSILON < needMemoryMiB || hourly >= vm.hourlyUsd) continue;
    if (best === null || hourly < best.hourly || (hourly === best.hourly && (o.vcpus < best.offer.vcpus || (o.vcpus === best.offer.vcpus && o.name < best.offer.name)))) best = { offer: o, hourly };
  }
  if (best === null) return null;
  const projected = money(best.hourly * HOURS_PER_MONTH);
  return {
    ...base,
    id: recommendationId('rightsize', vm, best.offer.name),
    kind: 'rightsize',
    action: { kind: 'resize', toType: best.offer.name },
    projectedMonthlyUsd: projected,
    savingsMonthlyUsd: money(base.currentMonthlyUsd - projected),
    confidence: stats.memoryPercentile === null ? lower(confidenceOf(stats.coverage)) : confidenceOf(stats.coverage),
    evidence: {
      percentile,
      cpuAtPercentile: stats.cpuPercentile,
      memoryAtPercentile: stats.memoryPercentile,
      headroom,
      vcpus: shape.vcpus,
      memoryMiB: shape.memoryMiB,
      neededVcpus: Math.round(needVcpus * 1000) / 1000,
      neededMemoryMiB: Math.round(needMemoryMiB),
      targetVcpus: best.offer.vcpus,
      targetMemoryMiB: best.offer.memoryMiB,
      memory: stats.memoryPercentile === null ? 'not sampled: no type with less memory than now' : 'sampled',
      measuredHours: Math.round(stats.measuredHours * 10) / 10,
      coverage: Math.round(stats.coverage * 1000) / 1000,
    },
    summary: `P${percentile} CPU ${pct(stats.cpuPercentile)} % of ${shape.vcpus} vCPU + ${pct(headroom)} % headroom needs ${needVcpus.toFixed(2)} vCPU: ${best.offer.name} (${best.offer.vcpus} vCPU, ${best.offer.memoryMiB} MiB) is the cheapest type that fits`,
  };
}

function spotRule(vm: VmFacts, stats: UsageStats | null, input: RecommendInput, base: Base): Recommendation | null {
  if (vm.model !== 'on-demand') return null;
  const offer = input.offers(vm.kind, vm.location).find((o) => o.name === vm.type);
  if (offer?.spotHourly == null || offer.spotHourly >= (vm.hourlyUsd ?? 0)) return null;
  const projected = money(offer.spotHourly * HOURS_PER_MONTH);
  return {
    ...base,
    id: recommendationId('spot', vm, vm.type),
    kind: 'spot',
    action: { kind: 'spot' },
    projectedMonthlyUsd: projected,
    savingsMonthlyUsd: money(base.currentMonthlyUsd - projected),
    // The label is the operator's word that the VM tolerates interruption; the price is the catalog's (live where published).
    confidence: stats === null ? 'medium' : 'high',
    evidence: { label: input.settings.spot.label, onDemandHourly: vm.hourlyUsd, spotHourly: offer.spotHourly, discountPercent: pct(1 - offer.spotHourly / (vm.hourlyUsd ?? 1)) },
    summary: `labelled ${input.settings.spot.label}: as spot ${vm.type} costs $${offer.spotHourly}/h instead of $${vm.hourlyUsd}/h (may be interrupted)`,
  };
}

function reservedRule(vm: VmFacts, stats: UsageStats, input: RecommendInput, base: Base): Recommendation | null {
  const share = input.settings.reserved.minRunningShare;
  if (vm.model !== 'on-demand' || vm.hourlyUsd === null || stats.coverage < share) return null;
  const offer = input.offers(vm.kind, vm.location).find((o) => o.name === vm.type);
  if (offer?.reservedHourly == null) return null;
  const commitment = offer.reservedHourly * HOURS_PER_YEAR;
  const onDemandMonthly = vm.hourlyUsd * HOURS_PER_MONTH * stats.coverage;
  const breakEven = commitment / onDemandMonthly;
  if (!(breakEven < 12)) return null;
  const projected = money(offer.reservedHourly * HOURS_PER_MONTH);
  const current = money(onDemandMonthly);
  return {
    ...base,
    currentMonthlyUsd: current,
    id: recommendationId('reserved', vm, vm.type),
    kind: 'reserved',
    action: { kind: 'reserve', type: vm.type },
    projectedMonthlyUsd: projected,
    savingsMonthlyUsd: money(current - projected),
    confidence: confidenceOf(stats.coverage),
    evidence: {
      runningShare: Math.round(stats.coverage * 1000) / 1000,
      minRunningShare: share,
      onDemandHourly: vm.hourlyUsd,
      reservedHourly: offer.reservedHourly,
      commitmentUsd: money(commitment),
      breakEvenMonths: Math.round(breakEven * 100) / 100,
    },
    summary: `running ${pct(stats.coverage)} % of the last ${input.settings.lookbackDays} days: a 1-year reservation of ${vm.type} ($${money(commitment)}) pays for itself in ${breakEven.toFixed(1)} months`,
  };
}

function arbitrageRule(vm: VmFacts, stats: UsageStats | null, input: RecommendInput, base: Base): Recommendation | null {
  if (vm.hourlyUsd === null || vm.hourlyUsd <= 0) return null;
  const a = input.settings.arbitrage;
  const transfer = vm.diskBytes === null ? 0 : (vm.diskBytes / GIB) * a.transferUsdPerGiB;
  const horizonCurrent = vm.hourlyUsd * HOURS_PER_MONTH * a.horizonMonths;
  let best: { target: MoveTarget; net: number } | null = null;
  let denied = 0;
  for (const t of input.targets(vm)) {
    if (t.region === vm.region && t.provider === vm.provider) continue;
    const net = horizonCurrent - t.hourlyUsd * HOURS_PER_MONTH * a.horizonMonths - transfer;
    if ((net / horizonCurrent) * 100 < a.minSavingsPercent) continue;
    if (input.policy(vm, t) !== null) {
      denied++;
      continue;
    }
    if (best === null || net > best.net || (net === best.net && `${t.region}/${t.provider}` < `${best.target.region}/${best.target.provider}`)) best = { target: t, net };
  }
  if (best === null) return null;
  const t = best.target;
  const projected = money(t.hourlyUsd * HOURS_PER_MONTH);
  return {
    ...base,
    id: recommendationId('arbitrage', vm, `${t.region}/${t.provider}`),
    kind: 'arbitrage',
    action: { kind: 'move', region: t.region, provider: t.provider },
    projectedMonthlyUsd: projected,
    savingsMonthlyUsd: money(base.currentMonthlyUsd - projected),
    // Prices are the fleet's declared ones, the transfer an estimate from the disk size.
    confidence: vm.diskBytes === null ? 'low' : 'medium',
    evidence: {
      targetRegion: t.region,
      targetProvider: t.provider,
      targetKind: t.kind,
      currentHourly: vm.hourlyUsd,
      targetHourly: t.hourlyUsd,
      diskGiB: vm.diskBytes === null ? null : Math.round((vm.diskBytes / GIB) * 100) / 100,
      transferUsd: money(transfer),
      horizonMonths: a.horizonMonths,
      netSavingsPercent: pct(best.net / horizonCurrent),
      minSavingsPercent: a.minSavingsPercent,
      deniedByPolicy: denied,
      measured: stats !== null,
    },
    summary: `${t.region}/${t.provider} runs it for $${t.hourlyUsd.toFixed(4)}/h instead of $${vm.hourlyUsd.toFixed(4)}/h: ${pct(best.net / horizonCurrent)} % less over ${a.horizonMonths} months after ~$${money(transfer)} of transfer; migrate it`,
  };
}
