/**
 * The simulated load of the `local` provider's VMs, so rightsizing, idle
 * detection and bursting can be shown on a laptop: per VM a shape
 * (constant, diurnal or bursty) with its levels, and a seed. Configured per
 * provider (`clouds.providers[].load`: a default and overrides by VM name).
 *
 * Deterministic: the load of a VM at a time is a pure function of (shape,
 * seed, VM name, time), with no state, so the same question gets the same
 * answer in any order, after a restart, and on any machine. Noise and bursts
 * come from a hash of (seed, VM, 5-minute slot), not from Math.random.
 *
 * Shapes (CPU as a fraction of the VM's vCPUs, 0..1):
 * - constant: `cpu` ± noise;
 * - diurnal: between `min` and `max`, peaking at `peakHourUtc` (a cosine over
 *   the UTC day) ± noise;
 * - bursty: `cpu` most of the time; a slot starts a burst with probability
 *   `burstProbability`, and the burst holds `burstCpu` for `burstSlots` slots.
 * Memory is `memory` (a fraction) ± noise; network bytes per second scale
 * with CPU: `networkBytesPerSecond` × cpu ÷ the mean CPU level.
 *
 * `periodMs` (default 5 minutes, CloudWatch's and Monitoring's datapoint) is
 * the sample period and the slot noise and bursts are drawn per. Changing
 * the load while the daemon runs (a load step for a bursting demo or test):
 * `overridesFile`, an absolute path to a JSON file {default?, vms?} in the
 * same shapes; the local provider reads it at every usage query, and while
 * it exists its `default` and `vms` replace the configured ones (a file that
 * does not parse fails the query, naming the file and the field).
 */
import { z } from 'zod';
import { byteCount, fraction, type UsageSample, type UsageSubject } from '../utilisation.ts';

const SLOT_MS = 5 * 60_000;
const level = z.number().min(0).max(1);

const common = {
  memory: level.default(0.5),
  /** ± this much, uniformly, around the level (a fraction of the VM). */
  noise: level.default(0.02),
  networkBytesPerSecond: z.number().min(0).max(1e10).default(10_000),
};

export const LoadShapeSchema = z.discriminatedUnion('shape', [
  z.strictObject({ shape: z.literal('constant'), cpu: level.default(0.2), ...common }),
  z.strictObject({ shape: z.literal('diurnal'), min: level.default(0.1), max: level.default(0.8), peakHourUtc: z.number().min(0).max(24).default(14), ...common }),
  z.strictObject({
    shape: z.literal('bursty'),
    cpu: level.default(0.1),
    burstCpu: level.default(0.95),
    burstProbability: level.default(0.02),
    burstSlots: z.number().int().min(1).max(288).default(3),
    ...common,
  }),
]);
export type LoadShape = z.infer<typeof LoadShapeSchema>;

export const SimulatedLoadSchema = z.strictObject({
  seed: z.number().int().min(0).max(2 ** 32 - 1).default(1),
  /** The sample period and the slot noise and bursts are drawn per. */
  periodMs: z.number().int().min(1_000).max(3_600_000).default(SLOT_MS),
  /** An absolute path to a JSON file {default?, vms?} replacing the configured shapes while it exists. */
  overridesFile: z.string().min(2).max(4096).startsWith('/', 'an absolute path').optional(),
  default: LoadShapeSchema.default({ shape: 'constant', cpu: 0.2, memory: 0.5, noise: 0.02, networkBytesPerSecond: 10_000 }),
  /** Per VM name (the instance name: a fleet VM's name). */
  vms: z.record(z.string().min(1).max(253), LoadShapeSchema).default({}),
});
export type SimulatedLoadConfig = z.infer<typeof SimulatedLoadSchema>;

export const DEFAULT_SIMULATED_LOAD: SimulatedLoadConfig = SimulatedLoadSchema.parse({});

/** What an overrides file may hold: the shapes, replacing the configured ones. */
export const LoadOverridesSchema = z.strictObject({
  default: LoadShapeSchema.optional(),
  vms: z.record(z.string().min(1).max(253), LoadShapeSchema).optional(),
});
export type LoadOverrides = z.infer<typeof LoadOverridesSchema>;

/** The configured load with an overrides file's shapes in place of its own. */
export function withOverrides(config: SimulatedLoadConfig, overrides: LoadOverrides): SimulatedLoadConfig {
  return { ...config, default: overrides.default ?? config.default, vms: overrides.vms ?? config.vms };
}

/** A uniform number in [0, 1) from the seed, the VM and an integer (FNV-1a, then a 32-bit avalanche). */
export function unitHash(seed: number, vm: string, n: number): number {
  let h = 0x811c9dc5 ^ seed;
  const text = `${vm}\u0000${n}`;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) / 2 ** 32;
}

function meanCpu(shape: LoadShape): number {
  switch (shape.shape) {
    case 'constant':
      return shape.cpu;
    case 'diurnal':
      return (shape.min + shape.max) / 2;
    case 'bursty':
      return shape.cpu;
  }
}

/** CPU fraction of `shape` at `atMs` for this VM, before clamping. */
function cpuAt(shape: LoadShape, seed: number, vm: string, atMs: number, periodMs: number): number {
  const slot = Math.floor(atMs / periodMs);
  const noise = (unitHash(seed, vm, slot) - 0.5) * 2 * shape.noise;
  switch (shape.shape) {
    case 'constant':
      return shape.cpu + noise;
    case 'diurnal': {
      const hour = (atMs / 3_600_000) % 24;
      const phase = (2 * Math.PI * (hour - shape.peakHourUtc)) / 24;
      return shape.min + ((shape.max - shape.min) * (1 + Math.cos(phase))) / 2 + noise;
    }
    case 'bursty': {
      for (let back = 0; back < shape.burstSlots; back++) {
        if (unitHash(seed ^ 0x9e3779b9, vm, slot - back) < shape.burstProbability) return shape.burstCpu + noise;
      }
      return shape.cpu + noise;
    }
  }
}

export function shapeFor(config: SimulatedLoadConfig, vm: string): LoadShape {
  return config.vms[vm] ?? config.default;
}

/** The simulated use of one VM over the period ending at `atMs`. */
export function simulatedSample(config: SimulatedLoadConfig, vm: UsageSubject, atMs: number, periodMs: number): UsageSample {
  const shape = shapeFor(config, vm.name);
  const cpu = fraction(cpuAt(shape, config.seed, vm.name, atMs - periodMs / 2, config.periodMs)) ?? 0;
  const memory = fraction(shape.memory + (unitHash(config.seed ^ 0x51ed27, vm.name, Math.floor(atMs / config.periodMs)) - 0.5) * 2 * shape.noise);
  const mean = meanCpu(shape);
  const bytes = byteCount(shape.networkBytesPerSecond * (periodMs / 1000) * (mean > 0 ? cpu / mean : 1));
  return { instanceId: vm.id, atMs, periodMs, cpu, memory, networkInBytes: bytes, networkOutBytes: bytes === null ? null : bytes / 2 };
}

/**
 * Samples for every subject over (sinceMs, untilMs], one per period (5-minute by default) slot
 * end in that window (at most `maxPerVm`, the newest), so a collector asking
 * every 5 minutes gets one sample per VM, and one asking after a pause gets
 * the slots it missed.
 */
export function simulatedUsage(config: SimulatedLoadConfig, subjects: readonly UsageSubject[], sinceMs: number, untilMs: number, maxPerVm = 288): UsageSample[] {
  const out: UsageSample[] = [];
  const period = config.periodMs;
  const last = Math.floor(untilMs / period) * period;
  const first = Math.max(Math.floor(sinceMs / period) * period + period, last - (maxPerVm - 1) * period);
  for (const vm of subjects) {
    for (let at = first; at <= last; at += period) out.push(simulatedSample(config, vm, at, period));
  }
  return out;
}
