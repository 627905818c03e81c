/**
 * The phi-accrual failure detector: phi's shape (log10(2) at the mean, rising
 * with silence, finite however long), suspicion that takes longer on a
 * jittery link than on a steady one, the bounded window, reset, and option
 * checks.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { PhiAccrualDetector, healthOf, phiOf, type PhiOptions } from '../../src/federation/failure-detector.ts';

const OPTIONS: PhiOptions = { threshold: 8, maxSamples: 100, minStdDevMs: 50, acceptablePauseMs: 0, firstIntervalMs: 1000 };

/** Heartbeats at the given intervals from t = 0; returns the detector and the last arrival time. */
function fed(intervals: readonly number[], options: PhiOptions = OPTIONS): { d: PhiAccrualDetector; last: number } {
  const d = new PhiAccrualDetector(options);
  let t = 0;
  d.heartbeat(t);
  for (const i of intervals) d.heartbeat((t += i));
  return { d, last: t };
}

/** The first silence (ms, 10 ms steps) after which the detector suspects. */
function silenceToSuspect(d: PhiAccrualDetector, last: number): number {
  for (let s = 0; s < 1_000_000; s += 10) if (d.suspected(last + s)) return s;
  throw new Error('never suspected');
}

describe('phi', () => {
  it('is log10(2) at the mean, rises with silence, and stays finite for any silence', () => {
    expect(phiOf(1000, 1000, 100)).toBeCloseTo(Math.log10(2), 6);
    expect(phiOf(1100, 1000, 100)).toBeGreaterThan(phiOf(1000, 1000, 100));
    expect(phiOf(0, 1000, 100)).toBeGreaterThanOrEqual(0);
    const huge = phiOf(10_000_000, 1000, 1);
    expect(Number.isFinite(huge)).toBe(true);
    expect(huge).toBeGreaterThan(1e6);
  });

  it('never decreases as silence grows, for any history', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 50 }), fc.integer({ min: 0, max: 20_000 }), fc.integer({ min: 1, max: 20_000 }), (intervals, a, extra) => {
        const { d, last } = fed(intervals);
        const early = d.phi(last + a);
        const late = d.phi(last + a + extra);
        expect(early).not.toBeNull();
        expect(late as number).toBeGreaterThanOrEqual(early as number);
      }),
      { numRuns: 200 },
    );
  });
});

describe('PhiAccrualDetector', () => {
  it('knows nothing before the first heartbeat: phi null, health unknown, not suspected', () => {
    const d = new PhiAccrualDetector(OPTIONS);
    expect(d.phi(5_000)).toBeNull();
    expect(d.suspected(1e9)).toBe(false);
    expect(healthOf(d, 5_000)).toEqual({ phi: null, health: 'unknown' });
    expect(healthOf(undefined, 5_000)).toEqual({ phi: null, health: 'unknown' });
  });

  it('is usable from the first heartbeat, assuming the configured interval', () => {
    const d = new PhiAccrualDetector(OPTIONS);
    d.heartbeat(10_000);
    expect(d.phi(10_000)).toBeLessThan(0.1);
    expect(d.suspected(10_900)).toBe(false);
    expect(d.suspected(15_000)).toBe(true);
    expect(healthOf(d, 15_000).health).toBe('suspected');
    expect(healthOf(d, 10_500).health).toBe('alive');
  });

  it('suspects a steady member soon after its heartbeats stop, and a jittery one only after a longer silence', () => {
    const steady = fed(Array.from({ length: 60 }, () => 1000));
    const jittery = fed(Array.from({ length: 60 }, (_, i) => (i % 2 === 0 ? 400 : 1600)));
    const steadyAfter = silenceToSuspect(steady.d, steady.last);
    const jitteryAfter = silenceToSuspect(jittery.d, jittery.last);
    // Mean 1000 ms both; sd = the 50 ms floor vs 600 ms.
    expect(steadyAfter).toBeGreaterThan(1000);
    expect(steadyAfter).toBeLessThan(1400);
    expect(jitteryAfter).toBeGreaterThan(steadyAfter + 1000);
    // Right after a heartbeat neither is suspect.
    expect(steady.d.suspected(steady.last + 500)).toBe(false);
    expect(jittery.d.suspected(jittery.last + 1500)).toBe(false);
  });

  it('tolerates the acceptable pause on top of the mean', () => {
    const strict = fed(Array.from({ length: 20 }, () => 1000));
    const lenient = fed(Array.from({ length: 20 }, () => 1000), { ...OPTIONS, acceptablePauseMs: 3000 });
    expect(silenceToSuspect(lenient.d, lenient.last) - silenceToSuspect(strict.d, strict.last)).toBe(3000);
  });

  it('keeps only the last maxSamples intervals, so it adapts to a new rhythm', () => {
    const options = { ...OPTIONS, maxSamples: 10 };
    const { d, last } = fed([...Array.from({ length: 50 }, () => 5000), ...Array.from({ length: 10 }, () => 200)], options);
    expect(d.samples).toBe(10);
    // Only 200 ms intervals remain: two seconds of silence is now very suspicious.
    expect(d.suspected(last + 2000)).toBe(true);
  });

  it('forgets the history on reset, so an outage does not become an interval', () => {
    const { d, last } = fed(Array.from({ length: 20 }, () => 1000));
    d.reset();
    expect(d.phi(last + 60_000)).toBeNull();
    expect(d.samples).toBe(0);
    d.heartbeat(last + 60_000);
    expect(d.suspected(last + 61_000)).toBe(false);
    expect(d.suspected(last + 63_000)).toBe(true);
  });

  it('treats a heartbeat stamped before the previous one as simultaneous', () => {
    const d = new PhiAccrualDetector(OPTIONS);
    d.heartbeat(5000);
    d.heartbeat(4000);
    expect(d.phi(5000)).not.toBeNull();
    expect(Number.isFinite(d.phi(6000) as number)).toBe(true);
  });

  it('refuses bad options, naming the option', () => {
    expect(() => new PhiAccrualDetector({ ...OPTIONS, threshold: -1 })).toThrow('threshold: must be a finite number >= 0, got -1');
    expect(() => new PhiAccrualDetector({ ...OPTIONS, maxSamples: 1 })).toThrow('maxSamples: must be an integer >= 2, got 1');
    expect(() => new PhiAccrualDetector({ ...OPTIONS, firstIntervalMs: 0 })).toThrow('firstIntervalMs');
    expect(() => new PhiAccrualDetector({ ...OPTIONS, minStdDevMs: Number.NaN })).toThrow('minStdDevMs');
  });
});
