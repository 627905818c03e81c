/**
 * A VM's utilisation history as a bounded series: one slot per `resolutionMs`
 * (5 minutes by default) over `retentionMs` (14 days by default: 4 032
 * slots), each slot holding the mean CPU and memory fractions and the summed
 * network bytes of the samples that fell in it. What the cost core (on-prem
 * usage for max(request, usage)) and the optimiser (P99.5 CPU for
 * rightsizing, idle days) read.
 *
 * Memory bound, per VM: the slots are typed arrays allocated once, 13 bytes
 * a slot (CPU and memory as 1/10 000 fractions in Uint16, network in and out
 * as Float32, a sample count as Uint8): 4 032 × 13 = 52 416 bytes at the
 * defaults, plus a few hundred bytes of object. It never grows.
 *
 * Past the bound: the series is a ring. A sample newer than the newest slot
 * advances it, clearing the slots it skips (a gap reads as "no data", never
 * as zero use); a sample older than the oldest slot still held is dropped
 * (add answers false). Several samples in one slot: CPU and memory are
 * averaged (by count, up to 255 samples; later ones in a full slot are still
 * averaged in with weight 1/256), network bytes add up.
 *
 * Pure: no clock, no I/O; times are inputs.
 */
import type { UsageSample } from '../cloud/utilisation.ts';

export const DEFAULT_RESOLUTION_MS = 5 * 60_000;
export const DEFAULT_RETENTION_MS = 14 * 24 * 3_600_000;
/** Bytes one slot takes: 2 + 2 + 4 + 4 + 1. */
export const BYTES_PER_SLOT = 13;
const SCALE = 10_000;
const NONE = 0xffff;

export interface SeriesShape {
  readonly resolutionMs: number;
  readonly retentionMs: number;
}

export interface SeriesPoint {
  /** Start of the slot, epoch ms. */
  readonly atMs: number;
  readonly cpu: number | null;
  readonly memory: number | null;
  readonly networkInBytes: number | null;
  readonly networkOutBytes: number | null;
}

export function slotsOf(shape: SeriesShape): number {
  const slots = shape.retentionMs / shape.resolutionMs;
  if (!Number.isInteger(shape.resolutionMs) || shape.resolutionMs < 1_000 || !Number.isInteger(slots) || slots < 1 || slots > 1_000_000) {
    throw new RangeError(`series: retentionMs ${shape.retentionMs} must be a whole number (1 to 1 000 000) of resolutionMs ${shape.resolutionMs} (at least 1 000)`);
  }
  return slots;
}

/** The memory one series of this shape holds, in bytes (its arrays). */
export function seriesBytes(shape: SeriesShape): number {
  return slotsOf(shape) * BYTES_PER_SLOT;
}

export class UtilisationSeries {
  readonly resolutionMs: number;
  readonly slots: number;
  readonly #cpu: Uint16Array;
  readonly #memory: Uint16Array;
  readonly #netIn: Float32Array;
  readonly #netOut: Float32Array;
  readonly #count: Uint8Array;
  /** Absolute slot number (epoch ms ÷ resolution) of the newest slot; -Infinity while empty. */
  #newest = Number.NEGATIVE_INFINITY;

  constructor(shape: SeriesShape = { resolutionMs: DEFAULT_RESOLUTION_MS, retentionMs: DEFAULT_RETENTION_MS }) {
    this.slots = slotsOf(shape);
    this.resolutionMs = shape.resolutionMs;
    this.#cpu = new Uint16Array(this.slots).fill(NONE);
    this.#memory = new Uint16Array(this.slots).fill(NONE);
    this.#netIn = new Float32Array(this.slots).fill(Number.NaN);
    this.#netOut = new Float32Array(this.slots).fill(Number.NaN);
    this.#count = new Uint8Array(this.slots);
  }

  /** Start of the newest slot (epoch ms), or null while empty. */
  get newestMs(): number | null {
    return Number.isFinite(this.#newest) ? this.#newest * this.resolutionMs : null;
  }

  /** Adds a sample to the slot holding its period's midpoint; false when it is older than the series holds. */
  add(sample: Pick<UsageSample, 'atMs' | 'periodMs' | 'cpu' | 'memory' | 'networkInBytes' | 'networkOutBytes'>): boolean {
    const slot = Math.floor((sample.atMs - sample.periodMs / 2) / this.resolutionMs);
    if (!Number.isFinite(slot)) return false;
    if (slot > this.#newest) {
      const skipped = Number.isFinite(this.#newest) ? Math.min(slot - this.#newest, this.slots) : this.slots;
      for (let k = 0; k < skipped; k++) this.#clear(this.#index(slot - k));
      this.#newest = slot;
    } else if (slot <= this.#newest - this.slots) {
      return false;
    }
    const i = this.#index(slot);
    const n = this.#count[i] ?? 0;
    const weight = 1 / (Math.min(n, 255) + 1);
    this.#cpu[i] = mean(this.#cpu[i] ?? NONE, sample.cpu, weight);
    this.#memory[i] = mean(this.#memory[i] ?? NONE, sample.memory, weight);
    this.#netIn[i] = sum(this.#netIn[i] ?? Number.NaN, sample.networkInBytes);
    this.#netOut[i] = sum(this.#netOut[i] ?? Number.NaN, sample.networkOutBytes);
    if (n < 255) this.#count[i] = n + 1;
    return true;
  }

  /** The slots with data from `sinceMs` (inclusive, rounded down to a slot) on, oldest first. */
  points(sinceMs = Number.NEGATIVE_INFINITY): SeriesPoint[] {
    const out: SeriesPoint[] = [];
    this.forEach((p) => out.push(p), sinceMs);
    return out;
  }

  /** Calls `fn` for each slot with data, oldest first, without building an array (for scans over many VMs). */
  forEach(fn: (point: SeriesPoint) => void, sinceMs = Number.NEGATIVE_INFINITY): void {
    if (!Number.isFinite(this.#newest)) return;
    const first = Math.max(this.#newest - this.slots + 1, Math.floor(sinceMs / this.resolutionMs));
    for (let slot = first; slot <= this.#newest; slot++) {
      const i = this.#index(slot);
      if ((this.#count[i] ?? 0) === 0) continue;
      fn({ atMs: slot * this.resolutionMs, cpu: unscale(this.#cpu[i]), memory: unscale(this.#memory[i]), networkInBytes: finite(this.#netIn[i]), networkOutBytes: finite(this.#netOut[i]) });
    }
  }

  /** Mean CPU and memory fractions over the slots with data from `sinceMs` on; null where none measured it. */
  mean(sinceMs: number): { cpu: number | null; memory: number | null } {
    let cpu = 0;
    let cpuN = 0;
    let memory = 0;
    let memoryN = 0;
    this.forEach((p) => {
      if (p.cpu !== null) {
        cpu += p.cpu;
        cpuN++;
      }
      if (p.memory !== null) {
        memory += p.memory;
        memoryN++;
      }
    }, sinceMs);
    return { cpu: cpuN === 0 ? null : cpu / cpuN, memory: memoryN === 0 ? null : memory / memoryN };
  }

  /** The newest slot with data, or null. */
  latest(): SeriesPoint | null {
    let last: SeriesPoint | null = null;
    this.forEach((p) => (last = p), (this.#newest - 1) * this.resolutionMs);
    return last;
  }

  #index(slot: number): number {
    return ((slot % this.slots) + this.slots) % this.slots;
  }

  #clear(i: number): void {
    this.#cpu[i] = NONE;
    this.#memory[i] = NONE;
    this.#netIn[i] = Number.NaN;
    this.#netOut[i] = Number.NaN;
    this.#count[i] = 0;
  }
}

function mean(stored: number, value: number | null, weight: number): number {
  if (value === null || !Number.isFinite(value)) return stored;
  const v = Math.round(Math.min(1, Math.max(0, value)) * SCALE);
  if (stored === NONE) return v;
  return Math.round(stored + (v - stored) * weight);
}

function sum(stored: number, value: number | null): number {
  if (value === null || !Number.isFinite(value)) return stored;
  return (Number.isNaN(stored) ? 0 : stored) + Math.max(0, value);
}

function unscale(v: number | undefined): number | null {
  return v === undefined || v === NONE ? null : v / SCALE;
}

function finite(v: number | undefined): number | null {
  return v === undefined || Number.isNaN(v) ? null : v;
}
