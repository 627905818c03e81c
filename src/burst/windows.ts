/**
 * A home region's trigger windows: since when its CPU has been above the
 * scale-out threshold, since when its memory has, and since when it has been
 * quiet (CPU and memory below the scale-in thresholds and nothing queued).
 * Fed one region sample per evaluation tick.
 *
 * Invariants:
 * - A window is the start of an unbroken run of samples on the same side of
 *   its threshold; one sample on the other side (or no sample, or a sample
 *   older than sampleMaxAgeMs) ends it. Missing data never counts as high or
 *   as quiet: the driver decides nothing on data it does not have.
 * - Pure: time is an input.
 */
import type { BurstThresholds } from './config.ts';

/** What the driver measured at home: fractions of the region's declared capacity in use; null when unknown. */
export interface RegionSample {
  /** When the newest measurement behind it was taken, epoch ms. */
  readonly atMs: number;
  readonly cpu: number | null;
  readonly memory: number | null;
}

export interface TriggerWindows {
  /** Start of the current run above scaleOut.cpuAbove, or null. */
  readonly cpuHighSince: number | null;
  readonly memoryHighSince: number | null;
  /** Start of the current quiet run, or null. */
  readonly quietSince: number | null;
  /** The sample the windows last saw (for status). */
  readonly last: RegionSample | null;
  /** Replicas of this home's groups queued for home capacity at the last tick. */
  readonly queue: number;
}

export const NO_WINDOWS: TriggerWindows = { cpuHighSince: null, memoryHighSince: null, quietSince: null, last: null, queue: 0 };

/** The windows after one tick at `nowMs` with `sample` (null: none) and `queue` replicas waiting for home. */
export function advanceWindows(w: TriggerWindows, sample: RegionSample | null, queue: number, nowMs: number, t: BurstThresholds): TriggerWindows {
  const fresh = sample !== null && nowMs - sample.atMs <= t.sampleMaxAgeMs ? sample : null;
  const cpu = fresh?.cpu ?? null;
  const memory = fresh?.memory ?? null;
  const cpuHigh = cpu !== null && cpu > t.scaleOut.cpuAbove;
  const memoryHigh = memory !== null && memory > t.scaleOut.memoryAbove;
  const quiet = cpu !== null && memory !== null && cpu < t.scaleIn.cpuBelow && memory < t.scaleIn.memoryBelow && queue === 0;
  return {
    cpuHighSince: cpuHigh ? (w.cpuHighSince ?? nowMs) : null,
    memoryHighSince: memoryHigh ? (w.memoryHighSince ?? nowMs) : null,
    quietSince: quiet ? (w.quietSince ?? nowMs) : null,
    last: sample,
    queue,
  };
}
