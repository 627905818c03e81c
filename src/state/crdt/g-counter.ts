/**
 * Grow-only counter: one non-decreasing count per region, value = their sum.
 * Its state is exactly a vector clock (region -> count), so merge is the
 * clock's pointwise max and the encoding is the clock's.
 *
 * Invariants: only the owning region raises its own entry (the driver calls
 * `increment` with its own region), so pointwise max loses no increment. Each
 * entry is a safe integer; the sum is exact while it stays below 2^53.
 */
import { EMPTY_CLOCK, counterOf, decodeClock, encodeClock, incrementClock, mergeClocks, type VectorClock } from '../clock/vector-clock.ts';
import type { CrdtModule, RegionId } from './types.ts';

export type GCounterState = VectorClock;

function sum(state: GCounterState): number {
  let total = 0;
  for (const count of state.values()) total += count;
  return total;
}

/** Delta for `by` (> 0) increments at `region`: just that region's new count. */
function increment(state: GCounterState, region: RegionId, by = 1): GCounterState {
  return new Map([[region, counterOf(incrementClock(state, region, by), region)]]);
}

export const GCounter = {
  name: 'g-counter',
  empty: (): GCounterState => EMPTY_CLOCK,
  merge: mergeClocks,
  value: sum,
  encode: encodeClock,
  decode: (raw: unknown, field = 'g-counter'): GCounterState => decodeClock(raw, field),
  increment,
} satisfies CrdtModule<GCounterState, number>;
