/**
 * The cost bench: the optimiser's core (src/cost/recommend.ts: every rule)
 * over N VMs × D days of 5-minute utilisation samples (the issue's case:
 * 10 000 × 14 days = 40.3 M points), against the floor of 60 s, with the
 * memory it takes stated (RSS and heap, and the series' own bound).
 *
 * Reference, in the same run: a bare scan that only reads every point of
 * every series (series.forEach summing CPU), the least any rule over the
 * data can cost; the ratio says what the rules add on top.
 *
 * The fleet is synthetic and seeded: a fifth idle, three tenths oversized,
 * the rest busy and right-sized, one in ten labelled fault-tolerant, half of
 * them fleet VMs with three move targets (one denied by policy), sizes and
 * prices from the shipped AWS catalog and the fake EC2's type table.
 *
 * Invariants: one JSON document on stdout; the floor is reported as
 * pass/fail, not asserted.
 */
import { EC2_INSTANCE_TYPES } from '../src/cloud/fake/ec2-server.ts';
import { PricingCatalog } from '../src/cloud/pricing/catalog.ts';
import { RecommendationSettingsSchema } from '../src/cost/config.ts';
import { recommend, type MoveTarget, type TypeOffer, type VmFacts } from '../src/cost/recommend.ts';
import { DEFAULT_RESOLUTION_MS, UtilisationSeries, seriesBytes } from '../src/cost/series.ts';
import { defineBench, intFlag, machineFacts, progress, renderTable, significant } from './run.ts';
import { mulberry32 as prng } from '../test/support/prng.ts';

export const FLOOR_MS = 60_000;
const DAY_MS = 86_400_000;
const MIB = 1024 ** 2;

interface CostOptions {
  vms: number;
  days: number;
  seed: number;
}


function offers(catalog: PricingCatalog): TypeOffer[] {
  return Object.entries(EC2_INSTANCE_TYPES).flatMap(([name, t]) => {
    const q = (model: 'on-demand' | 'spot' | 'reserved'): number | null => {
      try {
        return catalog.quote({ provider: 'aws', region: 'us-east-1', type: name, model }).hourly;
      } catch {
        return null;
      }
    };
    const onDemand = q('on-demand');
    return onDemand === null ? [] : [{ name, vcpus: t.vcpus, memoryMiB: t.memoryMiB, architectures: [t.architecture], onDemandHourly: onDemand, spotHourly: q('spot'), reservedHourly: q('reserved') }];
  });
}

/** RSS, V8 heap used, and memory outside the heap (external: the series' typed arrays live there). */
function memory(): { rssMiB: number; heapMiB: number; externalMiB: number } {
  const m = process.memoryUsage();
  return { rssMiB: significant(m.rss / MIB), heapMiB: significant(m.heapUsed / MIB), externalMiB: significant(m.external / MIB) };
}

export const costBench = defineBench<CostOptions>({
  flags: {
    vms: { default: '10000', description: 'VMs, each with its own series' },
    days: { default: '14', description: 'days of 5-minute samples per VM (the lookback)' },
    seed: { default: '1', description: 'seed of the synthetic fleet' },
  },
  parse: (flags) => ({ vms: intFlag(flags, 'vms'), days: intFlag(flags, 'days'), seed: intFlag(flags, 'seed', 0) }),
  async run(o) {
    const before = memory();
    const catalog = PricingCatalog.load();
    const typeOffers = offers(catalog);
    const x86 = typeOffers.filter((t) => t.architectures.includes('x86_64'));
    const random = prng(o.seed);
    const now = Date.UTC(2026, 11, 7);
    const slots = (o.days * DAY_MS) / DEFAULT_RESOLUTION_MS;
    const shape = { resolutionMs: DEFAULT_RESOLUTION_MS, retentionMs: o.days * DAY_MS };
    const settings = RecommendationSettingsSchema.parse({ lookbackDays: Math.min(14, o.days), idle: { windowDays: Math.min(14, o.days), days: Math.min(4, o.days) } });
    progress(`filling ${o.vms} series × ${slots} slots (${((o.vms * slots) / 1e6).toFixed(1)} M points)…`);
    const fillStart = performance.now();
    const vms: VmFacts[] = [];
    // One sample object reused: the fill is the harness, not the subject.
    const sample = { atMs: 0, periodMs: DEFAULT_RESOLUTION_MS, cpu: 0 as number | null, memory: null as number | null, networkInBytes: 0 as number | null, networkOutBytes: 0 as number | null };
    for (let v = 0; v < o.vms; v++) {
      const kind = random();
      const type = x86[Math.floor(random() * x86.length)] as TypeOffer;
      const idle = kind < 0.2;
      const oversized = !idle && kind < 0.5;
      const level = idle ? 0.03 : oversized ? 0.05 + random() * 0.1 : 0.5 + random() * 0.3;
      const net = idle ? 2_000 : 2_000_000;
      const sampledMemory = random() < 0.3;
      const series = new UtilisationSeries(shape);
      for (let k = slots - 1; k >= 0; k--) {
        sample.atMs = now - k * DEFAULT_RESOLUTION_MS;
        sample.cpu = Math.min(1, Math.max(0, level + (random() - 0.5) * 0.04));
        sample.memory = sampledMemory ? 0.2 + random() * 0.1 : null;
        sample.networkInBytes = net;
        sample.networkOutBytes = net / 2;
        series.add(sample);
      }
      vms.push({
        region: 'bench',
        provider: 'aws',
        kind: 'aws',
        location: 'us-east-1',
        instanceId: `i-${(0x10000000 + v).toString(16)}`,
        vm: `vm-${v}`,
        fleet: v % 2 === 0,
        type: type.name,
        vcpus: type.vcpus,
        memoryMiB: type.memoryMiB,
        diskBytes: 20 * 1024 ** 3,
        labels: v % 10 === 0 ? { 'fault-tolerant': 'true' } : {},
        model: 'on-demand',
        hourlyUsd: type.onDemandHourly,
        running: true,
        series,
      });
    }
    const fillMs = performance.now() - fillStart;
    (globalThis as { gc?: () => void }).gc?.();
    const filled = memory();

    const referenceStart = performance.now();
    let sum = 0;
    for (const vm of vms) vm.series?.forEach((p) => (sum += p.cpu ?? 0));
    const referenceMs = performance.now() - referenceStart;

    progress('running every rule…');
    const cpuStart = process.cpuUsage();
    const start = performance.now();
    const result = recommend({
      nowMs: now,
      settings,
      vms,
      offers: () => typeOffers,
      targets: (vm): MoveTarget[] => [
        { region: 'dc1', provider: 'local', kind: 'local', hourlyUsd: (vm.hourlyUsd ?? 0) * 0.5 },
        { region: 'eu1', provider: 'gcp', kind: 'gcp', hourlyUsd: (vm.hourlyUsd ?? 0) * 0.7 },
        { region: 'us2', provider: 'aws', kind: 'aws', hourlyUsd: (vm.hourlyUsd ?? 0) * 0.95 },
      ],
      policy: (_vm, t) => (t.region === 'dc1' ? 'denied by policy bench rule no-dc1' : null),
    });
    const wallMs = performance.now() - start;
    const cpu = process.cpuUsage(cpuStart);
    const after = memory();
    const byKind: Record<string, number> = {};
    for (const r of result.recommendations) byKind[r.kind] = (byKind[r.kind] ?? 0) + 1;
    const points = o.vms * slots;
    const doc = {
      bench: 'cost',
      ...machineFacts(),
      options: o,
      points,
      fill_ms: Math.round(fillMs),
      reference_scan_ms: Math.round(referenceMs),
      optimiser_ms: Math.round(wallMs),
      optimiser_cpu_ms: Math.round((cpu.user + cpu.system) / 1000),
      ratio_to_scan: significant(wallMs / Math.max(1, referenceMs), 3),
      points_per_s: Math.round(points / (wallMs / 1000)),
      recommendations: result.recommendations.length,
      by_kind: byKind,
      insufficient: result.insufficient.length,
      series_bytes_per_vm: seriesBytes(shape),
      series_mib: significant((seriesBytes(shape) * o.vms) / MIB),
      memory: { before, filled, after },
      floor_ms: FLOOR_MS,
      floor_met: wallMs < FLOOR_MS,
      checksum: Math.round(sum),
    };
    process.stderr.write(
      `${renderTable(
        ['VMS', 'POINTS', 'FILL', 'SCAN', 'OPTIMISER', 'RATIO', 'RSS', 'HEAP', 'RECS', 'FLOOR <60s'],
        [[String(o.vms), `${(points / 1e6).toFixed(1)} M`, `${(fillMs / 1000).toFixed(1)} s`, `${(referenceMs / 1000).toFixed(1)} s`, `${(wallMs / 1000).toFixed(1)} s`, String(doc.ratio_to_scan), `${after.rssMiB} MiB`, `${after.heapMiB} MiB`, String(doc.recommendations), doc.floor_met ? 'met' : 'NOT met']],
      )}\n`,
    );
    return doc;
  },
});
