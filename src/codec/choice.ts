/**
 * Which codec a payload travels with, by the mode of its link
 * (ARCHITECTURE.md, "Trust, modes and consensus"): datacenter → LZ4,
 * internet → zstd at a configured level (9 by default), hybrid → the
 * candidate that minimises `compress time + wire bytes / bandwidth`.
 *
 * Invariants:
 * - `chooseCodec` is pure: the same payload size, link estimate, codec
 *   measurements and options give the same answer. The estimators are plain
 *   state fed by observations; they never read clocks themselves.
 * - The link's RTT is estimated alongside its bandwidth for the transfer
 *   code, but it does not enter the cost: every codec pays the same RTT, so
 *   it cannot change which one is cheapest.
 * - Payloads below `minCompressBytes`, and payloads of a kind whose measured
 *   ratio (wire / raw) is at or above `incompressibleRatio` for every codec,
 *   go uncompressed in every mode: the header and CPU would cost more than
 *   they save. Uncompressed payloads measure nothing, so a caller that sent
 *   some data as "incompressible" must now and then pass `probe` to compress
 *   one anyway, or a stretch of random bytes would switch compression off for
 *   good.
 * - Until a codec has been measured, hybrid uses the prior in
 *   `CODEC_PRIORS` (rough single-thread figures for VM-image-like data), so the
 *   choice is sensible from the first payload and sharpens as traffic flows;
 *   until the link's bandwidth is measured, hybrid falls back to LZ4, the
 *   datacenter choice, since a trusted pair is taken to be datacenter until
 *   measured (link-mode.ts).
 */
import type { LinkMode } from '../federation/link-mode.ts';
import { codecLabel, type CodecSpec } from './codecs.ts';

export interface CodecChoiceOptions {
  /** zstd level on internet links. */
  internetZstdLevel: number;
  /** Payloads smaller than this go uncompressed. */
  minCompressBytes: number;
  /** A measured wire/raw ratio at or above this means "incompressible": send as is. */
  incompressibleRatio: number;
  /** What hybrid links choose among (besides none). */
  hybridCandidates: CodecSpec[];
}

export const DEFAULT_CODEC_CHOICE: CodecChoiceOptions = {
  internetZstdLevel: 9,
  minCompressBytes: 512,
  incompressibleRatio: 0.97,
  hybridCandidates: [{ name: 'lz4' }, { name: 'zstd', level: 1 }, { name: 'zstd', level: 3 }, { name: 'zstd', level: 9 }],
};

/** An exponentially weighted moving average; the first sample sets it outright. */
export class Ewma {
  readonly alpha: number;
  #value: number | null = null;
  constructor(alpha = 0.2) {
    if (!(alpha > 0 && alpha <= 1)) throw new RangeError(`EWMA alpha must be in (0, 1], got ${alpha}`);
    this.alpha = alpha;
  }
  observe(sample: number): void {
    this.#value = this.#value === null ? sample : this.#value + this.alpha * (sample - this.#value);
  }
  get value(): number | null {
    return this.#value;
  }
}

/** Per-link estimates of bandwidth and RTT, fed by transfers and pings. */
export class LinkEstimate {
  readonly #bandwidth: Ewma;
  readonly #rtt: Ewma;
  constructor(alpha = 0.2) {
    this.#bandwidth = new Ewma(alpha);
    this.#rtt = new Ewma(alpha);
  }
  /** A transfer of `bytes` that took `seconds` on the wire. */
  observeTransfer(bytes: number, seconds: number): void {
    if (bytes > 0 && seconds > 0) this.#bandwidth.observe(bytes / seconds);
  }
  observeRtt(ms: number): void {
    if (ms >= 0) this.#rtt.observe(ms);
  }
  /** Bytes per second, or null before any transfer was measured. */
  get bandwidth(): number | null {
    return this.#bandwidth.value;
  }
  get rttMs(): number | null {
    return this.#rtt.value;
  }
}

export interface CodecPerformance {
  /** Raw bytes compressed per second. */
  compressBytesPerS: number;
  /** Wire bytes / raw bytes. */
  ratio: number;
}

/** Starting points before live measurements; order-of-magnitude only. */
export const CODEC_PRIORS: Readonly<Record<string, CodecPerformance>> = {
  lz4: { compressBytesPerS: 400e6, ratio: 0.55 },
  'zstd-1': { compressBytesPerS: 300e6, ratio: 0.45 },
  'zstd-3': { compressBytesPerS: 150e6, ratio: 0.42 },
  'zstd-9': { compressBytesPerS: 40e6, ratio: 0.38 },
};
const UNKNOWN_PRIOR: CodecPerformance = { compressBytesPerS: 20e6, ratio: 0.5 };

/** Per-codec speed and ratio measured on live traffic. */
export class CodecMeasurements {
  readonly #alpha: number;
  readonly #speed = new Map<string, Ewma>();
  readonly #ratio = new Map<string, Ewma>();
  constructor(alpha = 0.2) {
    this.#alpha = alpha;
  }
  #ewma(table: Map<string, Ewma>, label: string): Ewma {
    let e = table.get(label);
    if (e === undefined) {
      e = new Ewma(this.#alpha);
      table.set(label, e);
    }
    return e;
  }
  /** One compression: `rawBytes` in, `wireBytes` out, in `seconds`. */
  observe(spec: CodecSpec, rawBytes: number, wireBytes: number, seconds: number): void {
    if (rawBytes <= 0) return;
    const label = codecLabel(spec);
    this.#ewma(this.#ratio, label).observe(wireBytes / rawBytes);
    if (seconds > 0) this.#ewma(this.#speed, label).observe(rawBytes / seconds);
  }
  /** Measured figures where there are some, the prior elsewhere. */
  performance(spec: CodecSpec): CodecPerformance {
    const label = codecLabel(spec);
    const prior = CODEC_PRIORS[label] ?? UNKNOWN_PRIOR;
    return {
      compressBytesPerS: this.#speed.get(label)?.value ?? prior.compressBytesPerS,
      ratio: this.#ratio.get(label)?.value ?? prior.ratio,
    };
  }
  /** Whether `spec` has been measured at least once (priors do not count). */
  measured(spec: CodecSpec): boolean {
    return this.#ratio.has(codecLabel(spec));
  }
}

export interface CodecChoiceInput {
  mode: LinkMode;
  payloadBytes: number;
  link: { bandwidth: number | null };
  codecs: CodecMeasurements;
  options?: CodecChoiceOptions;
  /** Ignore the "incompressible" verdict for this payload, to measure again. */
  probe?: boolean;
}

/** Seconds to compress and send `bytes` with `perf` over `bandwidth` bytes/s. */
export function transferCost(bytes: number, perf: CodecPerformance, bandwidth: number): number {
  return bytes / perf.compressBytesPerS + (bytes * perf.ratio) / bandwidth;
}

const NONE: CodecSpec = { name: 'none' };

function incompressible(codecs: CodecMeasurements, candidates: readonly CodecSpec[], threshold: number): boolean {
  const measured = candidates.filter((c) => codecs.measured(c));
  return measured.length > 0 && measured.every((c) => codecs.performance(c).ratio >= threshold);
}

export function chooseCodec(input: CodecChoiceInput): CodecSpec {
  const o = input.options ?? DEFAULT_CODEC_CHOICE;
  const internet: CodecSpec = { name: 'zstd', level: o.internetZstdLevel };
  const lz4: CodecSpec = { name: 'lz4' };
  if (input.payloadBytes < o.minCompressBytes) return NONE;
  const considered = input.mode === 'datacenter' ? [lz4] : input.mode === 'internet' ? [internet] : o.hybridCandidates;
  if (input.probe !== true && incompressible(input.codecs, considered, o.incompressibleRatio)) return NONE;
  if (input.mode === 'datacenter') return lz4;
  if (input.mode === 'internet') return internet;
  const bandwidth = input.link.bandwidth;
  if (bandwidth === null || bandwidth <= 0) return lz4;
  let best = NONE;
  let bestCost = input.payloadBytes / bandwidth;
  for (const spec of o.hybridCandidates) {
    const cost = transferCost(input.payloadBytes, input.codecs.performance(spec), bandwidth);
    if (cost < bestCost) {
      best = spec;
      bestCost = cost;
    }
  }
  return best;
}
