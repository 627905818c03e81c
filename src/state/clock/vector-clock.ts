/**
 * Vector clocks: region -> counter, the causal history every state entry
 * carries so that concurrent writes are visible as such. The same structure is
 * the G-counter's state and the OR-set's per-region tag high-water mark.
 *
 * Invariants:
 * - Counters are positive safe integers; a region at 0 is simply absent, so a
 *   clock has exactly one representation and one canonical encoding.
 * - `compareClocks` is a partial order (`equal` is reflexive, `before`/`after`
 *   antisymmetric and transitive) and `mergeClocks` is its least upper bound
 *   (pointwise max), hence a join.
 * - Functions never mutate their inputs.
 */
import { readCount, readObject, readRegion, assertRegion } from '../crdt/decode.ts';
import { sortedEntries, type RegionId } from '../crdt/types.ts';

export type VectorClock = ReadonlyMap<RegionId, number>;

export type ClockOrder = 'before' | 'after' | 'equal' | 'concurrent';

export const EMPTY_CLOCK: VectorClock = new Map();

/**
 * A clock with one region: a dot. Most entries of the geo store have a
 * single writer (a region's own records), and a Map of one entry costs about
 * 190 bytes of heap against about 40 for this, on every member for every
 * key. Read-only like every VectorClock; functions that derive a new clock
 * build a Map as before, and the replica compacts what it stores (compactClock).
 */
export class Dot implements ReadonlyMap<RegionId, number> {
  readonly region: RegionId;
  readonly counter: number;
  constructor(region: RegionId, counter: number) {
    this.region = region;
    this.counter = counter;
  }
  get size(): number {
    return 1;
  }
  get(region: RegionId): number | undefined {
    return region === this.region ? this.counter : undefined;
  }
  has(region: RegionId): boolean {
    return region === this.region;
  }
  forEach(fn: (counter: number, region: RegionId, clock: ReadonlyMap<RegionId, number>) => void, thisArg?: unknown): void {
    fn.call(thisArg, this.counter, this.region, this);
  }
  *entries(): MapIterator<[RegionId, number]> {
    yield [this.region, this.counter];
  }
  *keys(): MapIterator<RegionId> {
    yield this.region;
  }
  *values(): MapIterator<number> {
    yield this.counter;
  }
  [Symbol.iterator](): MapIterator<[RegionId, number]> {
    return this.entries();
  }
}

/**
 * The same clock in its smallest form: a Dot when it has one region (with
 * the region id taken from `intern`, so a member keeps one copy of each
 * region's name rather than one per decoded entry), else the clock as it is.
 */
export function compactClock(clock: VectorClock, intern: (region: RegionId) => RegionId = (r) => r): VectorClock {
  if (clock.size !== 1 || clock instanceof Dot) return clock;
  for (const [region, counter] of clock) return new Dot(intern(region), counter);
  return clock;
}

export function clockOf(entries: Iterable<readonly [RegionId, number]>): VectorClock {
  const clock = new Map<RegionId, number>();
  for (const [region, counter] of entries) {
    assertRegion(region);
    if (!Number.isSafeInteger(counter) || counter < 0) throw new RangeError(`counter for ${region}: must be a non-negative safe integer, got ${counter}`);
    if (counter > 0) clock.set(region, counter);
  }
  return clock;
}

export function counterOf(clock: VectorClock, region: RegionId): number {
  return clock.get(region) ?? 0;
}

/** `by` more events at `region`. */
export function incrementClock(clock: VectorClock, region: RegionId, by = 1): VectorClock {
  assertRegion(region);
  if (!Number.isSafeInteger(by) || by < 1) throw new RangeError(`by: must be a positive safe integer, got ${by}`);
  const next = counterOf(clock, region) + by;
  if (!Number.isSafeInteger(next)) throw new RangeError(`counter for ${region} would exceed ${Number.MAX_SAFE_INTEGER}`);
  return new Map(clock).set(region, next);
}

export function mergeClocks(a: VectorClock, b: VectorClock): VectorClock {
  const merged = new Map(a);
  for (const [region, counter] of b) merged.set(region, Math.max(counter, merged.get(region) ?? 0));
  return merged;
}

export function compareClocks(a: VectorClock, b: VectorClock): ClockOrder {
  let aAhead = false;
  let bAhead = false;
  for (const region of new Set([...a.keys(), ...b.keys()])) {
    const ca = counterOf(a, region);
    const cb = counterOf(b, region);
    if (ca > cb) aAhead = true;
    if (cb > ca) bAhead = true;
  }
  if (aAhead && bAhead) return 'concurrent';
  if (aAhead) return 'after';
  if (bAhead) return 'before';
  return 'equal';
}

/** `a` has seen everything `b` has (a >= b). */
export function dominates(a: VectorClock, b: VectorClock): boolean {
  for (const [region, counter] of b) if (counterOf(a, region) < counter) return false;
  return true;
}

/** The clock as a list in region order, the shape the sync wire and the admin API carry. */
export function clockCounters(clock: VectorClock): { region: RegionId; count: number }[] {
  return sortedEntries(clock).map(([region, count]) => ({ region, count }));
}

/** JSON object with regions in sorted order (zero counters never appear). */
export function encodeClock(clock: VectorClock): Record<RegionId, number> {
  return Object.fromEntries(sortedEntries(clock));
}

export function decodeClock(raw: unknown, field = 'vector-clock'): VectorClock {
  const record = readObject(raw, field);
  const clock = new Map<RegionId, number>();
  for (const [region, counter] of Object.entries(record)) {
    const key = `${field}.${region}`;
    readRegion(region, key);
    const value = readCount(counter, key);
    if (value > 0) clock.set(region, value);
  }
  return clock;
}

/**
 * Causal delivery check for a delta stamped `remote` by `origin`: it is the
 * next event from `origin` and everything else it depends on has already been
 * seen locally. Deltas that are not ready wait (or a full state is pulled).
 */
export function isCausallyReady(local: VectorClock, remote: VectorClock, origin: RegionId): boolean {
  for (const [region, counter] of remote) {
    const expected = region === origin ? counterOf(local, region) + 1 : counterOf(local, region);
    if (region === origin ? counter !== expected : counter > expected) return false;
  }
  return remote.has(origin);
}
