/**
 * A CRDT state paired with the vector clock of the writes it contains, so that
 * every entry shows its causal history: two regions' copies of a key compare as
 * before/after/equal/concurrent, and concurrent writes are visible as such even
 * though the type's own join already resolves them.
 *
 * Invariants:
 * - The pair is a product of two joins (the type's merge and mergeClocks), so
 *   it is a join.
 * - A local write increments the writer's own entry; its delta carries the
 *   writer's whole clock (the write's causal context). Merging that delta into
 *   a replica that has not seen the writer's earlier writes would overstate the
 *   replica's clock, so delta shipping must check isCausallyReady first (full
 *   states can always be merged).
 */
import { EMPTY_CLOCK, compareClocks, decodeClock, encodeClock, incrementClock, mergeClocks, type ClockOrder, type VectorClock } from '../clock/vector-clock.ts';
import { readObject } from './decode.ts';
import type { Crdt, CrdtModule, RegionId } from './types.ts';

export interface Versioned<S> {
  readonly state: S;
  readonly clock: VectorClock;
}

export interface VersionedModule<S, V> extends Crdt<Versioned<S>, V> {
  /** Delta for a local write at `region` whose own delta (from the type's mutator) is `delta`. */
  write(entry: Versioned<S>, region: RegionId, delta: S): Versioned<S>;
  /** Causal order of two copies of one entry. */
  order(a: Versioned<S>, b: Versioned<S>): ClockOrder;
}

export function versioned<S, V>(type: Crdt<S, V>): VersionedModule<S, V> & CrdtModule<Versioned<S>, V> {
  const name = `versioned-${type.name}`;
  return {
    name,
    empty: () => ({ state: type.empty(), clock: EMPTY_CLOCK }),
    merge: (a, b) => ({ state: type.merge(a.state, b.state), clock: mergeClocks(a.clock, b.clock) }),
    value: (entry) => type.value(entry.state),
    encode: (entry) => ({ state: type.encode(entry.state), clock: encodeClock(entry.clock) }),
    decode(raw, field = name) {
      const record = readObject(raw, field, ['state', 'clock']);
      return { state: type.decode(record.state, `${field}.state`), clock: decodeClock(record.clock, `${field}.clock`) };
    },
    write: (entry, region, delta) => ({ state: delta, clock: incrementClock(entry.clock, region) }),
    order: (a, b) => compareClocks(a.clock, b.clock),
  };
}
