/**
 * The utilisation series (bounded ring of 5-minute slots), the local
 * provider's simulated load, and the qemu rate conversion: pure modules.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BYTES_PER_SLOT, DEFAULT_RESOLUTION_MS, UtilisationSeries, seriesBytes } from '../../src/cost/series.ts';
import { SimulatedLoadSchema, simulatedSample, simulatedUsage, unitHash } from '../../src/cloud/local/simulated-load.ts';
import { QemuUsageRates } from '../../src/cloud/qemu/qemu-utilisation.ts';
import type { VmUtilisation } from '../../src/cloud/qemu/metrics.ts';

const P = DEFAULT_RESOLUTION_MS;
const sample = (atMs: number, cpu: number | null, net: number | null = null) => ({ atMs, periodMs: P, cpu, memory: 0.5, networkInBytes: net, networkOutBytes: net });

describe('UtilisationSeries', () => {
  it('holds 14 days of 5-minute slots in 52 416 bytes', () => {
    const s = new UtilisationSeries();
    expect(s.slots).toBe(4032);
    expect(seriesBytes({ resolutionMs: P, retentionMs: 14 * 86_400_000 })).toBe(4032 * BYTES_PER_SLOT);
    expect(4032 * BYTES_PER_SLOT).toBe(52_416);
  });

  it('averages CPU and sums network within a slot, and keeps gaps as no data', () => {
    const s = new UtilisationSeries({ resolutionMs: P, retentionMs: 10 * P });
    const t0 = 1_000 * P;
    s.add({ ...sample(t0 + P / 2, 0.2, 100), periodMs: P / 2 });
    s.add({ ...sample(t0 + P, 0.4, 50), periodMs: P / 2 });
    s.add(sample(t0 + 4 * P, 0.9, 1));
    expect(s.points()).toEqual([
      { atMs: t0, cpu: 0.3, memory: 0.5, networkInBytes: 150, networkOutBytes: 150 },
      { atMs: t0 + 3 * P, cpu: 0.9, memory: 0.5, networkInBytes: 1, networkOutBytes: 1 },
    ]);
    expect(s.latest()?.atMs).toBe(t0 + 3 * P);
    // The fleet's records show the mean over recent slots with data (gaps do not count as zero).
    expect(s.mean(t0)).toEqual({ cpu: 0.6, memory: 0.5 });
    expect(s.mean(t0 + P)).toEqual({ cpu: 0.9, memory: 0.5 });
    expect(s.mean(t0 + 5 * P)).toEqual({ cpu: null, memory: null });
  });

  it('is a ring: past the bound the oldest slots go, and a sample older than the window is refused', () => {
    const s = new UtilisationSeries({ resolutionMs: P, retentionMs: 4 * P });
    for (let k = 1; k <= 6; k++) expect(s.add(sample(k * P, k / 10))).toBe(true);
    expect(s.points().map((p) => p.cpu)).toEqual([0.3, 0.4, 0.5, 0.6]);
    expect(s.add(sample(2 * P, 0.99))).toBe(false);
    // A jump longer than the window clears everything before it.
    s.add(sample(100 * P, 0.7));
    expect(s.points().map((p) => p.cpu)).toEqual([0.7]);
  });

  it('matches a naive model for any order of samples (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 0, max: 100 })), { maxLength: 80 }), (events) => {
        const window = 8;
        const s = new UtilisationSeries({ resolutionMs: P, retentionMs: window * P });
        const model = new Map<number, number[]>();
        let newest = -Infinity;
        for (const [slot, pct] of events) {
          const accepted = s.add({ ...sample(slot * P + P, pct / 100), networkInBytes: null, networkOutBytes: null });
          const expectedAccept = slot > newest - window;
          expect(accepted).toBe(expectedAccept);
          if (!accepted) continue;
          if (slot > newest) {
            for (const k of [...model.keys()]) if (k <= slot - window) model.delete(k);
            newest = slot;
          }
          model.set(slot, [...(model.get(slot) ?? []), pct / 100]);
        }
        const got = s.points().map((p) => [p.atMs / P, p.cpu]);
        const want = [...model.entries()].sort((a, b) => a[0] - b[0]).map(([k, v]) => [k, v]);
        expect(got.map(([k]) => k)).toEqual(want.map(([k]) => k));
        got.forEach(([, cpu], i) => {
          const values = want[i]?.[1] as number[];
          const mean = values.reduce((a, b) => a + b, 0) / values.length;
          expect(cpu as number).toBeCloseTo(mean, 2);
        });
      }),
    );
  });
});

describe('simulated load (local provider)', () => {
  const vm = { id: 'local-000000000001', name: 'web1', zone: 'local-a', vcpus: 2, memoryMiB: 2048 };
  it('is deterministic from the seed and the same in any query order', () => {
    const config = SimulatedLoadSchema.parse({ seed: 9, default: { shape: 'bursty', cpu: 0.1, burstCpu: 0.9, burstProbability: 0.1 } });
    const a = simulatedUsage(config, [vm], 0, 288 * P);
    const b = simulatedUsage(config, [vm], 100 * P, 288 * P);
    expect(a.slice(100)).toEqual(b);
    const other = simulatedUsage(SimulatedLoadSchema.parse({ seed: 10, default: { shape: 'bursty', cpu: 0.1, burstCpu: 0.9, burstProbability: 0.1 } }), [vm], 0, 288 * P);
    expect(other).not.toEqual(a);
    // Bursts happen, and last burstSlots (3) slots at least.
    const busy = a.filter((s) => (s.cpu ?? 0) > 0.5).length;
    expect(busy).toBeGreaterThan(20);
    expect(busy).toBeLessThan(200);
  });

  it('diurnal peaks at the configured hour and bottoms 12 hours later', () => {
    const config = SimulatedLoadSchema.parse({ default: { shape: 'diurnal', min: 0.1, max: 0.8, peakHourUtc: 14, noise: 0 } });
    const day = Date.UTC(2026, 0, 5);
    expect(simulatedSample(config, vm, day + 14 * 3_600_000 + P / 2, P).cpu).toBeCloseTo(0.8, 3);
    expect(simulatedSample(config, vm, day + 2 * 3_600_000 + P / 2, P).cpu).toBeCloseTo(0.1, 3);
  });

  it('per-VM overrides win over the default; network scales with CPU', () => {
    const config = SimulatedLoadSchema.parse({ default: { shape: 'constant', cpu: 0.2, noise: 0 }, vms: { web1: { shape: 'constant', cpu: 0.02, noise: 0, networkBytesPerSecond: 100 } } });
    const s = simulatedSample(config, vm, 10 * P, P);
    expect(s.cpu).toBeCloseTo(0.02, 6);
    expect(s.networkInBytes).toBeCloseTo(100 * 300, 6);
    expect(simulatedSample(config, { ...vm, name: 'db1' }, 10 * P, P).cpu).toBeCloseTo(0.2, 6);
  });

  it('hashes uniformly enough', () => {
    const n = 10_000;
    let below = 0;
    for (let i = 0; i < n; i++) if (unitHash(1, 'x', i) < 0.25) below++;
    expect(below / n).toBeGreaterThan(0.23);
    expect(below / n).toBeLessThan(0.27);
  });
});

describe('qemu usage rates', () => {
  const u = (id: string, at: number, cpuSeconds: number, extra: Partial<VmUtilisation> = {}): VmUtilisation => ({
    id,
    name: id,
    vcpus: 2,
    cpuSeconds,
    memoryBytes: 128 * 2 ** 20,
    guestMemory: null,
    diskReadBytes: 0,
    diskWrittenBytes: 0,
    network: null,
    sampledAt: at,
    ...extra,
  });
  it('gives a baseline first, then CPU seconds over vCPU-seconds, and never spans a QEMU restart', () => {
    const rates = new QemuUsageRates();
    expect(rates.next([u('a', 0, 10)], () => 256)).toEqual([]);
    const [s] = rates.next([u('a', 10_000, 15, { guestMemory: { totalBytes: 1000, availableBytes: 250 } })], () => 256);
    expect(s).toMatchObject({ instanceId: 'a', atMs: 10_000, periodMs: 10_000, cpu: 0.25, memory: 0.75 });
    // CPU seconds went down: a new QEMU process; baseline only.
    expect(rates.next([u('a', 20_000, 1)], () => 256)).toEqual([]);
    const [t] = rates.next([u('a', 30_000, 1)], () => 256);
    expect(t).toMatchObject({ cpu: 0, memory: 0.5 });
  });
});
