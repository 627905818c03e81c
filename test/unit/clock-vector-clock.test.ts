/**
 * Vector clocks: comparison is a partial order whose least upper bound is
 * merge, increment moves a clock strictly forward, and the encoding is
 * canonical and validated.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  EMPTY_CLOCK,
  clockOf,
  compareClocks,
  decodeClock,
  dominates,
  encodeClock,
  incrementClock,
  mergeClocks,
  type VectorClock,
} from '../../src/state/clock/vector-clock.ts';

const REGIONS = ['ap', 'eu', 'us'];
// Small counters over few regions, so equal and ordered pairs are common, not only concurrent ones.
const clock: fc.Arbitrary<VectorClock> = fc
  .array(fc.tuple(fc.constantFrom(...REGIONS), fc.integer({ min: 0, max: 3 })), { maxLength: 4 })
  .map((entries) => clockOf(entries));
const leq = (a: VectorClock, b: VectorClock): boolean => ['before', 'equal'].includes(compareClocks(a, b));
const RUNS = { numRuns: 500 };

describe('vector clock', () => {
  it('comparison is reflexive, antisymmetric and transitive, and before/after are mirror images', () => {
    fc.assert(
      fc.property(clock, clock, clock, (a, b, c) => {
        expect(compareClocks(a, a)).toBe('equal');
        if (leq(a, b) && leq(b, a)) expect(encodeClock(a)).toEqual(encodeClock(b));
        if (leq(a, b) && leq(b, c)) expect(leq(a, c)).toBe(true);
        const mirror = { before: 'after', after: 'before', equal: 'equal', concurrent: 'concurrent' } as const;
        expect(compareClocks(b, a)).toBe(mirror[compareClocks(a, b)]);
        expect(dominates(b, a)).toBe(leq(a, b));
      }),
      RUNS,
    );
  });

  it('is transitive along chains built by merging (where random triples rarely line up)', () => {
    fc.assert(
      fc.property(clock, clock, clock, (a, x, y) => {
        const b = mergeClocks(a, x);
        const c = mergeClocks(b, y);
        expect(leq(a, b) && leq(b, c) && leq(a, c)).toBe(true);
      }),
      RUNS,
    );
  });

  it('merge is the least upper bound (hence commutative, associative, idempotent)', () => {
    fc.assert(
      fc.property(clock, clock, clock, (a, b, c) => {
        const m = mergeClocks(a, b);
        expect(dominates(m, a) && dominates(m, b)).toBe(true);
        if (dominates(c, a) && dominates(c, b)) expect(dominates(c, m)).toBe(true);
        // An upper bound built on purpose, since random ones are rare.
        expect(dominates(mergeClocks(m, c), m)).toBe(true);
        expect(encodeClock(mergeClocks(b, a))).toEqual(encodeClock(m));
        expect(encodeClock(mergeClocks(mergeClocks(a, b), c))).toEqual(encodeClock(mergeClocks(a, mergeClocks(b, c))));
        expect(encodeClock(mergeClocks(a, a))).toEqual(encodeClock(a));
      }),
      RUNS,
    );
  });

  it('increment moves strictly after, and concurrent increments are concurrent', () => {
    fc.assert(
      fc.property(clock, fc.constantFrom(...REGIONS), fc.constantFrom(...REGIONS), (a, r1, r2) => {
        const x = incrementClock(a, r1);
        expect(compareClocks(a, x)).toBe('before');
        const y = incrementClock(a, r2);
        expect(compareClocks(x, y)).toBe(r1 === r2 ? 'equal' : 'concurrent');
        expect(a).not.toBe(x);
      }),
      RUNS,
    );
  });

  it('encodes canonically (sorted, no zeros) and round-trips; rejects bad peer clocks naming the region', () => {
    fc.assert(
      fc.property(clock, (a) => {
        expect(encodeClock(decodeClock(JSON.parse(JSON.stringify(encodeClock(a)))))).toEqual(encodeClock(a));
        expect(Object.keys(encodeClock(a))).toEqual(Object.keys(encodeClock(a)).sort());
      }),
      RUNS,
    );
    expect(encodeClock(clockOf([['us', 2], ['eu', 0], ['ap', 1]]))).toEqual({ ap: 1, us: 2 });
    expect(compareClocks(clockOf([['eu', 0]]), EMPTY_CLOCK)).toBe('equal');
    expect(() => decodeClock({ eu: 1, us: 2.5 })).toThrow(/vector-clock\.us: must be a non-negative safe integer/);
    expect(() => decodeClock({ ['x'.repeat(200)]: 1 })).toThrow(/limit 128/);
    expect(() => decodeClock('eu=1')).toThrow(/vector-clock: must be an object/);
    expect(() => incrementClock(EMPTY_CLOCK, 'eu', 0)).toThrow(/by/);
    expect(() => incrementClock(clockOf([['eu', Number.MAX_SAFE_INTEGER]]), 'eu')).toThrow(/exceed/);
  });
});
