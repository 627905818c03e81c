/**
 * Counter that goes both ways: two G-counters, increments and decrements, and
 * value = their difference. Merge is the G-counter join on each half, so it is
 * a join too.
 *
 * Invariant: a delta touches one half and one region only.
 */
import { GCounter, type GCounterState } from './g-counter.ts';
import { readObject } from './decode.ts';
import { decodeClock } from '../clock/vector-clock.ts';
import type { CrdtModule, JsonValue, RegionId } from './types.ts';

export interface PNCounterState {
  readonly inc: GCounterState;
  readonly dec: GCounterState;
}

const EMPTY: PNCounterState = { inc: GCounter.empty(), dec: GCounter.empty() };

export const PNCounter = {
  name: 'pn-counter',
  empty: (): PNCounterState => EMPTY,
  merge: (a: PNCounterState, b: PNCounterState): PNCounterState => ({ inc: GCounter.merge(a.inc, b.inc), dec: GCounter.merge(a.dec, b.dec) }),
  value: (state: PNCounterState): number => GCounter.value(state.inc) - GCounter.value(state.dec),
  encode: (state: PNCounterState): JsonValue => ({ inc: GCounter.encode(state.inc), dec: GCounter.encode(state.dec) }),
  decode(raw: unknown, field = 'pn-counter'): PNCounterState {
    const record = readObject(raw, field, ['inc', 'dec']);
    return { inc: decodeClock(record.inc, `${field}.inc`), dec: decodeClock(record.dec, `${field}.dec`) };
  },
  /** Delta for `by` (> 0) increments at `region`. */
  increment: (state: PNCounterState, region: RegionId, by = 1): PNCounterState => ({ inc: GCounter.increment(state.inc, region, by), dec: GCounter.empty() }),
  /** Delta for `by` (> 0) decrements at `region`. */
  decrement: (state: PNCounterState, region: RegionId, by = 1): PNCounterState => ({ inc: GCounter.empty(), dec: GCounter.increment(state.dec, region, by) }),
} satisfies CrdtModule<PNCounterState, number>;
