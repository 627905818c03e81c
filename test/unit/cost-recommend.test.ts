/**
 * The optimiser's pure core (src/cost/recommend.ts, usage-stats.ts): each
 * rule at and around its thresholds (3 vs 4 idle days, the headroom edge,
 * the reserved share, the arbitrage margin net of transfer), too little data
 * giving no recommendation, and stable ids.
 */
import { describe, expect, it } from 'vitest';
import { RecommendationSettingsSchema, CostSettingsSchema } from '../../src/cost/config.ts';
import { recommend, recommendationId, type MoveTarget, type RecommendInput, type TypeOffer, type VmFacts } from '../../src/cost/recommend.ts';
import { DEFAULT_RESOLUTION_MS, UtilisationSeries } from '../../src/cost/series.ts';
import { DAY_MS, UsageScanner } from '../../src/cost/usage-stats.ts';

const P = DEFAULT_RESOLUTION_MS;
const NOW = Date.UTC(2026, 11, 7, 0, 0, 0);
const settings = RecommendationSettingsSchema.parse({});

const OFFERS: TypeOffer[] = [
  { name: 't3.micro', vcpus: 2, memoryMiB: 1024, architectures: ['x86_64'], onDemandHourly: 0.0104, spotHourly: 0.0034, reservedHourly: 0.0065 },
  { name: 't3.small', vcpus: 2, memoryMiB: 2048, architectures: ['x86_64'], onDemandHourly: 0.0208, spotHourly: 0.0069, reservedHourly: 0.013 },
  { name: 't3.medium', vcpus: 2, memoryMiB: 4096, architectures: ['x86_64'], onDemandHourly: 0.0416, spotHourly: 0.0146, reservedHourly: 0.026 },
  { name: 'm5.large', vcpus: 2, memoryMiB: 8192, architectures: ['x86_64'], onDemandHourly: 0.096, spotHourly: 0.0374, reservedHourly: 0.06 },
  { name: 'm5.xlarge', vcpus: 4, memoryMiB: 16384, architectures: ['x86_64'], onDemandHourly: 0.192, spotHourly: 0.0749, reservedHourly: 0.121 },
  { name: 'm5.2xlarge', vcpus: 8, memoryMiB: 32768, architectures: ['x86_64'], onDemandHourly: 0.384, spotHourly: 0.1574, reservedHourly: 0.242 },
  { name: 'm6g.large', vcpus: 2, memoryMiB: 8192, architectures: ['arm64'], onDemandHourly: 0.077, spotHourly: 0.0293, reservedHourly: 0.0484 },
];

interface Load {
  cpu: (slotEndMs: number) => number | null;
  memory?: (slotEndMs: number) => number | null;
  net?: (slotEndMs: number) => number | null;
  /** How far back the series has data. */
  days?: number;
}

function series(load: Load): UtilisationSeries {
  const s = new UtilisationSeries();
  const slots = Math.round(((load.days ?? 14) * DAY_MS) / P);
  for (let k = slots - 1; k >= 0; k--) {
    const end = NOW - k * P;
    const cpu = load.cpu(end);
    if (cpu === null) continue;
    const net = load.net?.(end) ?? null;
    s.add({ atMs: end, periodMs: P, cpu, memory: load.memory?.(end) ?? null, networkInBytes: net, networkOutBytes: net === null ? null : 0 });
  }
  return s;
}

function vm(over: Partial<VmFacts> & { load?: Load }): VmFacts {
  const { load, ...rest } = over;
  return {
    region: 'home',
    provider: 'aws',
    kind: 'aws',
    location: 'us-east-1',
    instanceId: 'i-1',
    vm: 'web1',
    fleet: false,
    type: 'm5.xlarge',
    vcpus: 4,
    memoryMiB: 16384,
    diskBytes: null,
    labels: {},
    model: 'on-demand',
    hourlyUsd: 0.192,
    running: true,
    series: load === undefined ? undefined : series(load),
    ...rest,
  };
}

function run(vms: VmFacts[], over: Partial<RecommendInput> = {}, s = settings) {
  return recommend({ nowMs: NOW, settings: s, vms, offers: (kind) => (kind === 'aws' ? OFFERS : []), targets: () => [], policy: () => null, ...over });
}

/** A day index (0 = the last 24 h) of a slot ending at `end`. */
const dayOf = (end: number): number => Math.floor((NOW - end) / DAY_MS);
const BUSY_NET = 50_000_000 / 288;

describe('usage scan', () => {
  it('gives the exact nearest-rank P99.5 and the measured share', () => {
    // 4 032 slots: 20 at 0.9, the rest 0.1. 0.5 % of 4032 = 20.16 → rank 4012, which is still 0.1… with 21 slots at 0.9 it is 0.9.
    const spikes = (n: number) => series({ cpu: (end) => ((NOW - end) / P < n ? 0.9 : 0.1) });
    const scanner = new UsageScanner();
    const q = { nowMs: NOW, lookbackMs: 14 * DAY_MS, percentile: 99.5, days: 14 };
    expect(scanner.scan(spikes(20), q).cpuPercentile).toBe(0.1);
    expect(scanner.scan(spikes(21), q).cpuPercentile).toBe(0.9);
    const stats = scanner.scan(series({ cpu: () => 0.3, days: 7 }), q);
    expect(stats.coverage).toBeCloseTo(0.5, 2);
    expect(stats.measuredHours).toBeCloseTo(168, 0);
    expect(stats.memoryPercentile).toBeNull();
    expect(stats.days.slice(0, 7).every((d) => d.coverage === 1 && d.cpuMean !== null && Math.abs(d.cpuMean - 0.3) < 1e-9)).toBe(true);
    expect(stats.days.slice(7).every((d) => d.coverage === 0 && d.cpuMean === null)).toBe(true);
  });
});

describe('idle (Trusted Advisor)', () => {
  const idleOn = (idleDays: number) => ({ cpu: (end: number) => (dayOf(end) < idleDays ? 0.02 : 0.6), net: (end: number) => (dayOf(end) < idleDays ? 1_000 : BUSY_NET) });

  it('3 idle days of 14: no recommendation; 4: stop it', () => {
    expect(run([vm({ load: idleOn(3) })]).recommendations.filter((r) => r.kind === 'idle')).toEqual([]);
    const [r] = run([vm({ load: idleOn(4) })]).recommendations;
    expect(r).toMatchObject({ kind: 'idle', action: { kind: 'stop' }, currentMonthlyUsd: 140.16, projectedMonthlyUsd: 0, savingsMonthlyUsd: 140.16, confidence: 'high' });
    expect(r?.evidence).toMatchObject({ idleDays: 4, measuredDays: 14, requiredDays: 4, network: 'measured' });
  });

  it('CPU exactly 10 % and network exactly 5 MB is idle; a byte more is not', () => {
    // Each day: 287 slots of 1 000 bytes plus one slot topping it up to exactly `net`.
    const perDay = (total: number) => ({ cpu: () => 0.1, net: (end: number) => ((NOW - end) / P) % 288 === 0 ? total - 287 * 1000 : 1000 });
    expect(run([vm({ load: perDay(5_000_000) })]).recommendations.map((r) => r.kind)).toEqual(['idle']);
    expect(run([vm({ load: perDay(5_000_001) })]).recommendations.some((r) => r.kind === 'idle')).toBe(false);
    expect(run([vm({ load: { cpu: () => 0.1001, net: () => 0 } })]).recommendations.some((r) => r.kind === 'idle')).toBe(false);
  });

  it('fewer measured days than the rule needs: no recommendation, listed as too little data', () => {
    const result = run([vm({ load: { cpu: () => 0.01, net: () => 0, days: 3 } })]);
    expect(result.recommendations).toEqual([]);
    expect(result.insufficient).toHaveLength(1);
    expect(result.insufficient[0]?.reason).toContain('3 measured days of the last 14 (the idle rule needs 4)');
    // A day with less than half its slots measured does not count.
    const sparse = run([vm({ load: { cpu: (end) => (((NOW - end) / P) % 3 === 0 ? 0.01 : null), net: () => 0 } })]);
    expect(sparse.recommendations).toEqual([]);
  });

  it('without network data a day is judged on CPU alone, at lower confidence', () => {
    const [r] = run([vm({ load: { cpu: () => 0.01 } })]).recommendations;
    expect(r).toMatchObject({ kind: 'idle', confidence: 'medium' });
    expect(r?.evidence.network).toContain('judged on CPU alone');
  });
});

describe('rightsizing (Compute Optimizer)', () => {
  const busy = { net: () => BUSY_NET };

  it('picks the cheapest type holding P99.5 CPU × vCPUs × 1.2, never less memory than now when memory is not sampled', () => {
    // m5.2xlarge (8 vCPU) at 20 %: needs 8 × 0.2 × 1.2 = 1.92 vCPU; memory unsampled: ≥ 32 GiB → nothing but itself.
    const sized = (r: { kind: string }) => r.kind === 'rightsize';
    expect(run([vm({ type: 'm5.2xlarge', vcpus: 8, memoryMiB: 32768, hourlyUsd: 0.384, load: { cpu: () => 0.2, ...busy } })]).recommendations.filter(sized)).toEqual([]);
    // m5.xlarge at 20 % with memory sampled at 10 %: 4 × 0.2 × 1.2 = 0.96 vCPU, 16384 × 0.1 × 1.2 = 1966 MiB → t3.small.
    const [r] = run([vm({ load: { cpu: () => 0.2, memory: () => 0.1, ...busy } })]).recommendations;
    expect(r).toMatchObject({ kind: 'rightsize', action: { kind: 'resize', toType: 't3.small' }, currentMonthlyUsd: 140.16, projectedMonthlyUsd: 15.184, savingsMonthlyUsd: 124.976, confidence: 'high' });
    expect(r?.evidence).toMatchObject({ cpuAtPercentile: 0.2, memoryAtPercentile: 0.1, neededVcpus: 0.96, neededMemoryMiB: 1966, targetVcpus: 2, targetMemoryMiB: 2048 });
  });

  it('the headroom edge: a type exactly holding the need fits, a hair over does not', () => {
    // 4 vCPU at 41.66 % → 4 × 0.4166 × 1.2 = 1.99968 ≤ 2: a 2-vCPU type; at 41.67 % → 2.00016: none of 2 vCPUs.
    const at = (cpu: number) => run([vm({ load: { cpu: () => cpu, memory: () => 0.1, ...busy } })]).recommendations.find((r) => r.kind === 'rightsize');
    expect(at(0.4166)?.action).toEqual({ kind: 'resize', toType: 't3.small' });
    expect(at(0.4167)).toBeUndefined();
    // Headroom 0: 4 × 0.5 = 2 fits exactly.
    const noRoom = RecommendationSettingsSchema.parse({ rightsizing: { headroom: 0 } });
    expect(run([vm({ load: { cpu: () => 0.5, memory: () => 0.1, ...busy } })], {}, noRoom).recommendations.find((r) => r.kind === 'rightsize')?.action).toEqual({ kind: 'resize', toType: 't3.small' });
  });

  it('the percentile ignores the top 0.5 % of samples but not more', () => {
    // 20 spikes of 100 % in 4 032 slots lie above P99.5 (0.5 % is 20.16 slots); 21 make P99.5 100 %: 4.8 vCPU, no cheaper type.
    const spiky = (n: number) => ({ cpu: (end: number) => ((NOW - end) / P < n ? 1 : 0.1), memory: () => 0.1, ...busy });
    expect(run([vm({ load: spiky(20) })]).recommendations[0]?.action).toEqual({ kind: 'resize', toType: 't3.small' });
    expect(run([vm({ load: spiky(21) })]).recommendations.find((r) => r.kind === 'rightsize')).toBeUndefined();
  });

  it('a busy right-sized VM gets neither rightsizing nor idle (only the reservation its 100 % running share earns); an arm type never replaces an x86 one', () => {
    expect(run([vm({ type: 't3.medium', vcpus: 2, memoryMiB: 4096, hourlyUsd: 0.0416, load: { cpu: () => 0.7, ...busy } })]).recommendations.map((r) => r.kind)).toEqual(['reserved']);
    // m5.large (x86, 8 GiB) at 30 %: 0.72 vCPU, memory unsampled ≥ 8 GiB → m6g.large is cheaper but arm64.
    expect(run([vm({ type: 'm5.large', vcpus: 2, memoryMiB: 8192, hourlyUsd: 0.096, load: { cpu: () => 0.3, ...busy } })]).recommendations.filter((r) => r.kind === 'rightsize')).toEqual([]);
  });

  it('less than 30 hours of data: no rightsizing, said so', () => {
    const result = run([vm({ load: { cpu: () => 0.05, memory: () => 0.05, net: () => BUSY_NET, days: 1 } })]);
    expect(result.recommendations).toEqual([]);
    expect(result.insufficient[0]?.reason).toMatch(/^24\.0 h of utilisation in the last 14 days \(rightsizing and reservations need 30 h\)/);
  });
});

describe('spot and reserved', () => {
  it('a fault-tolerant on-demand VM is a spot candidate at the catalog spot price; one without the label is not', () => {
    const load = { cpu: () => 0.7, net: () => BUSY_NET };
    const t3 = { type: 't3.medium', vcpus: 2, memoryMiB: 4096, hourlyUsd: 0.0416 };
    expect(run([vm({ ...t3, load })]).recommendations.filter((x) => x.kind === 'spot')).toEqual([]);
    const [r] = run([vm({ ...t3, labels: { 'fault-tolerant': 'true' }, load })]).recommendations.filter((x) => x.kind === 'spot');
    expect(r).toMatchObject({ kind: 'spot', projectedMonthlyUsd: 10.658, currentMonthlyUsd: 30.368, evidence: { spotHourly: 0.0146 } });
    expect(run([vm({ ...t3, model: 'spot', hourlyUsd: 0.0146, labels: { 'fault-tolerant': 'true' }, load })]).recommendations.filter((x) => x.kind === 'spot')).toEqual([]);
  });

  it('reserved: running ≥ 90 % of the lookback, break-even under a year; 89 % is not enough', () => {
    const t3 = { type: 't3.medium', vcpus: 2, memoryMiB: 4096, hourlyUsd: 0.0416 };
    const running = (share: number) => ({ cpu: (end: number) => ((NOW - end) / (14 * DAY_MS) < share ? 0.7 : null), net: () => BUSY_NET });
    const [r] = run([vm({ ...t3, load: running(0.95) })]).recommendations;
    expect(r).toMatchObject({ kind: 'reserved', action: { kind: 'reserve', type: 't3.medium' }, projectedMonthlyUsd: 18.98 });
    // 0.026 × 8760 / (0.0416 × 730 × 0.95) = 7.89 months.
    expect(r?.evidence.breakEvenMonths).toBeCloseTo(7.89, 1);
    expect(run([vm({ ...t3, load: running(0.89) })]).recommendations).toEqual([]);
  });
});

describe('arbitrage', () => {
  const fleetVm = (diskGiB: number) => vm({ fleet: true, type: 't3.medium', vcpus: 2, memoryMiB: 4096, hourlyUsd: 0.0416, diskBytes: diskGiB * 1024 ** 3, load: { cpu: () => 0.7, net: () => BUSY_NET } });
  const targets: MoveTarget[] = [
    { region: 'home', provider: 'aws', kind: 'aws', hourlyUsd: 0.0416 },
    { region: 'dc1', provider: 'local', kind: 'local', hourlyUsd: 0.03 },
    { region: 'eu1', provider: 'gcp', kind: 'gcp', hourlyUsd: 0.02 },
  ];

  it('the cheapest target policy allows, at least 20 % cheaper net of the transfer', () => {
    const r = run([fleetVm(20)], { targets: () => targets }).recommendations.find((x) => x.kind === 'arbitrage');
    expect(r).toMatchObject({ action: { kind: 'move', region: 'eu1', provider: 'gcp' }, projectedMonthlyUsd: 14.6 });
    expect(r?.evidence).toMatchObject({ transferUsd: 1.8, deniedByPolicy: 0 });
    const denied = run([fleetVm(20)], { targets: () => targets, policy: (_v, t) => (t.region === 'eu1' ? 'denied by policy eu' : null) }).recommendations.find((x) => x.kind === 'arbitrage');
    expect(denied).toMatchObject({ action: { kind: 'move', region: 'dc1', provider: 'local' } });
    expect(denied?.evidence.deniedByPolicy).toBe(1);
  });

  it('the transfer can eat the margin: a big disk makes the move not worth it', () => {
    // 12 months at 0.0416 = $364.42; dc1 saves 27.9 % before transfer; 200 GiB × 0.09 = $18 leaves 23 %, 500 GiB ($45) leaves 15.5 %.
    const only = [targets[1] as MoveTarget];
    expect(run([fleetVm(200)], { targets: () => only }).recommendations.some((x) => x.kind === 'arbitrage')).toBe(true);
    expect(run([fleetVm(500)], { targets: () => only }).recommendations.some((x) => x.kind === 'arbitrage')).toBe(false);
    // An unmanaged instance cannot migrate.
    expect(run([{ ...fleetVm(20), fleet: false }], { targets: () => targets }).recommendations.some((x) => x.kind === 'arbitrage')).toBe(false);
  });
});

describe('ids, order and config', () => {
  it('ids are stable per (VM, kind, target) and differ across them', () => {
    const a = recommendationId('rightsize', { region: 'home', provider: 'aws', instanceId: 'i-1' }, 't3.small');
    expect(a).toMatch(/^rs-[0-9a-f]{10}$/);
    expect(recommendationId('rightsize', { region: 'home', provider: 'aws', instanceId: 'i-1' }, 't3.small')).toBe(a);
    expect(recommendationId('rightsize', { region: 'home', provider: 'aws', instanceId: 'i-1' }, 't3.micro')).not.toBe(a);
    expect(recommendationId('idle', { region: 'home', provider: 'aws', instanceId: 'i-2' }, 'stop')).toMatch(/^idle-/);
  });

  it('sorts by savings, and skips stopped and unpriced VMs', () => {
    const result = run([
      vm({ instanceId: 'i-small', type: 't3.medium', vcpus: 2, memoryMiB: 4096, hourlyUsd: 0.0416, load: { cpu: () => 0.01, net: () => 0 } }),
      vm({ instanceId: 'i-big', load: { cpu: () => 0.01, net: () => 0 } }),
      vm({ instanceId: 'i-stopped', running: false, load: { cpu: () => 0.01, net: () => 0 } }),
      vm({ instanceId: 'i-unpriced', hourlyUsd: null, load: { cpu: () => 0.01, net: () => 0 } }),
    ]);
    expect(result.recommendations.map((r) => r.instanceId)).toEqual(['i-big', 'i-small']);
    expect(result.scanned).toBe(2);
  });

  it('refuses thresholds that read past the series, naming the field', () => {
    const bad = CostSettingsSchema.safeParse({ utilisation: { retentionDays: 7 }, recommendations: { lookbackDays: 14, idle: { days: 5, windowDays: 4 } } });
    expect(bad.success).toBe(false);
    const paths = bad.error?.issues.map((i) => i.path.join('.'));
    expect(paths).toEqual(expect.arrayContaining(['recommendations.lookbackDays', 'recommendations.idle.days']));
    expect(RecommendationSettingsSchema.safeParse({ spot: { label: 'fault tolerant' } }).success).toBe(false);
  });
});
