/**
 * Phi-accrual failure detection (Hayashibara et al., 2004, as in Akka and
 * Cassandra): instead of a yes/no timeout, each member gets a suspicion level
 * phi = -log10(P(a heartbeat arrives later than now)), computed from the
 * distribution of the heartbeat intervals seen so far (taken as normal). phi 1
 * means a 10% chance the member is fine, phi 8 (the usual threshold) one in
 * 10^8. A jittery WAN link thus needs a longer silence before suspicion than a
 * steady datacenter link, without per-link tuning.
 *
 * Pure: time is an argument (monotonic milliseconds from the driver), the
 * detector reads no clock and sets no timer.
 *
 * Invariants:
 * - phi is null until the first heartbeat (nothing is known), then finite and
 *   non-negative, and for a fixed history it never decreases as time passes.
 * - The window holds at most `maxSamples` intervals; mean and variance are kept
 *   as running sums, so a heartbeat and a phi query are O(1).
 * - The standard deviation used is at least `minStdDevMs`, so a perfectly
 *   regular history does not make a few milliseconds of lateness suspicious.
 * - `reset` forgets everything (a reconnected member starts a new history, so
 *   the outage itself never becomes an "interval").
 */

export interface PhiOptions {
  /** phi above this means suspected; 8 (Akka's, Cassandra's default) is one false suspicion in 10^8. */
  readonly threshold: number;
  /** Intervals kept. */
  readonly maxSamples: number;
  /** Floor of the standard deviation, in ms. */
  readonly minStdDevMs: number;
  /** Lateness tolerated on top of the mean before phi starts to rise (GC pauses, a busy event loop). */
  readonly acceptablePauseMs: number;
  /** The interval assumed before the second heartbeat: the configured heartbeat interval. */
  readonly firstIntervalMs: number;
}

function checkOptions(o: PhiOptions): void {
  const positive = (name: keyof PhiOptions, min: number): void => {
    const v = o[name];
    if (!Number.isFinite(v) || v < min) throw new RangeError(`${name}: must be a finite number >= ${min}, got ${v}`);
  };
  positive('threshold', 0);
  positive('minStdDevMs', 0);
  positive('acceptablePauseMs', 0);
  positive('firstIntervalMs', 1);
  if (!Number.isInteger(o.maxSamples) || o.maxSamples < 2) throw new RangeError(`maxSamples: must be an integer >= 2, got ${o.maxSamples}`);
}

/**
 * phi for a silence of `elapsedMs` under a normal distribution of intervals
 * (mean, sd), with the logistic approximation of the normal CDF Akka uses. In
 * log space, so a long silence gives a large finite phi, never Infinity.
 */
export function phiOf(elapsedMs: number, meanMs: number, stdDevMs: number): number {
  const y = (elapsedMs - meanMs) / stdDevMs;
  // e = exp(-t); P(later) = e / (1 + e) when late, 1 - 1 / (1 + e) otherwise (the same value).
  const t = y * (1.5976 + 0.070566 * y * y);
  // -log10(e / (1 + e)) = (t + ln(1 + e^-t)) / ln 10, stable for large t.
  const phi = t > 0 ? (t + Math.log1p(Math.exp(-t))) / Math.LN10 : Math.log1p(Math.exp(t)) / Math.LN10;
  return Math.max(0, phi);
}

export class PhiAccrualDetector {
  readonly options: PhiOptions;
  readonly #intervals: number[] = [];
  #next = 0;
  #sum = 0;
  #sumSquares = 0;
  #last: number | null = null;

  constructor(options: PhiOptions) {
    checkOptions(options);
    this.options = options;
  }

  /** A heartbeat arrived at `nowMs`; one that claims to arrive before the previous one counts as simultaneous. */
  heartbeat(nowMs: number): void {
    const last = this.#last;
    this.#last = last === null ? nowMs : Math.max(last, nowMs);
    if (last === null) {
      // Bootstrap as Akka does: two samples around the expected interval, so phi is usable at once.
      const first = this.options.firstIntervalMs;
      this.#record(first - first / 4);
      this.#record(first + first / 4);
      return;
    }
    this.#record(Math.max(0, nowMs - last));
  }

  /** Forgets the history: the member reconnected, or was (re)added. */
  reset(): void {
    this.#intervals.length = 0;
    this.#next = 0;
    this.#sum = 0;
    this.#sumSquares = 0;
    this.#last = null;
  }

  get samples(): number {
    return this.#intervals.length;
  }

  /** Suspicion at `nowMs`; null before the first heartbeat. */
  phi(nowMs: number): number | null {
    if (this.#last === null) return null;
    const n = this.#intervals.length;
    const mean = this.#sum / n;
    const variance = Math.max(0, this.#sumSquares / n - mean * mean);
    const sd = Math.max(Math.sqrt(variance), this.options.minStdDevMs);
    return phiOf(Math.max(0, nowMs - this.#last), mean + this.options.acceptablePauseMs, Math.max(sd, Number.MIN_VALUE));
  }

  /** Suspected once phi passes the threshold; never before the first heartbeat (then the member is unknown, not suspect). */
  suspected(nowMs: number): boolean {
    const phi = this.phi(nowMs);
    return phi !== null && phi > this.options.threshold;
  }

  #record(interval: number): void {
    const { maxSamples } = this.options;
    if (this.#intervals.length < maxSamples) {
      this.#intervals.push(interval);
    } else {
      const old = this.#intervals[this.#next] as number;
      this.#sum -= old;
      this.#sumSquares -= old * old;
      this.#intervals[this.#next] = interval;
      this.#next = (this.#next + 1) % maxSamples;
    }
    this.#sum += interval;
    this.#sumSquares += interval * interval;
  }
}

export type MemberHealth = 'alive' | 'suspected' | 'unknown';

/** One member's health as reported (status, metrics). */
export interface HealthReport {
  phi: number | null;
  health: MemberHealth;
}

export function healthOf(detector: PhiAccrualDetector | undefined, nowMs: number): HealthReport {
  const phi = detector?.phi(nowMs) ?? null;
  if (detector === undefined || phi === null) return { phi: null, health: 'unknown' };
  return { phi, health: phi > detector.options.threshold ? 'suspected' : 'alive' };
}
