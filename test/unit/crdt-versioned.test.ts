/**
 * Versioned entries (CRDT state + vector clock): join laws, concurrent writes
 * visible as concurrent, and causal delivery of shuffled deltas — a receiver
 * that applies only causally ready deltas never gets stuck and ends equal to
 * the merge of all replicas.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { GCounter } from '../../src/state/crdt/g-counter.ts';
import { OrSet, type OrSetState } from '../../src/state/crdt/or-set.ts';
import { versioned, type Versioned } from '../../src/state/crdt/versioned.ts';
import { clockOf, encodeClock, isCausallyReady } from '../../src/state/clock/vector-clock.ts';
import { sameState } from '../../src/state/crdt/types.ts';
import { crdtLaws, REGIONS, runHistory, shuffle, steps, type CrdtSubject } from './crdt-laws.ts';

const VersionedCounter = versioned(GCounter);
const VersionedOrSet = versioned(OrSet);
type SetOp = { readonly add: boolean; readonly element: string };
const setSubject: CrdtSubject<Versioned<OrSetState>, SetOp> = {
  type: VersionedOrSet,
  op: fc.record({ add: fc.boolean(), element: fc.constantFrom('a', 'b', 'c') }),
  apply: (entry, { add, element }, region) =>
    VersionedOrSet.write(entry, region, add ? OrSet.add(entry.state, region, element) : OrSet.remove(entry.state, element)),
};

describe('versioned', () => {
  crdtLaws({
    type: VersionedCounter,
    op: fc.integer({ min: 1, max: 9 }),
    apply: (entry, by, region) => VersionedCounter.write(entry, region, GCounter.increment(entry.state, region, by)),
    expectedValue: (performed) => performed.reduce((sum, { op }) => sum + op, 0),
  });
  crdtLaws(setSubject);

  it('shows concurrent writes as concurrent and a write after a merge as after both', () => {
    const base = VersionedCounter.empty();
    const eu = VersionedCounter.merge(base, VersionedCounter.write(base, 'eu', GCounter.increment(base.state, 'eu')));
    const us = VersionedCounter.merge(base, VersionedCounter.write(base, 'us', GCounter.increment(base.state, 'us')));
    expect(VersionedCounter.order(eu, us)).toBe('concurrent');
    const both = VersionedCounter.merge(eu, us);
    const later = VersionedCounter.merge(both, VersionedCounter.write(both, 'eu', GCounter.increment(both.state, 'eu')));
    expect([VersionedCounter.order(eu, later), VersionedCounter.order(later, us)]).toEqual(['before', 'after']);
    expect(encodeClock(later.clock)).toEqual({ eu: 2, us: 1 });
    expect(VersionedCounter.value(later)).toBe(3);
  });

  it('causal delivery of shuffled deltas never gets stuck and converges', () => {
    fc.assert(
      fc.property(steps(setSubject.op, REGIONS.length, 30), fc.gen(), (plan, g) => {
        const { finals, deltas, performed } = runHistory(setSubject, plan, REGIONS.length);
        const pending = shuffle(
          deltas.map((delta, i) => ({ delta, origin: performed[i]?.region ?? '' })),
          g,
        );
        let receiver = VersionedOrSet.empty();
        for (let progress = true; progress; ) {
          progress = false;
          for (let i = 0; i < pending.length; i++) {
            const next = pending[i];
            if (next === undefined || !isCausallyReady(receiver.clock, next.delta.clock, next.origin)) continue;
            receiver = VersionedOrSet.merge(receiver, next.delta);
            pending.splice(i--, 1);
            progress = true;
          }
        }
        expect(pending).toEqual([]);
        const everything = finals.reduce((acc, s) => VersionedOrSet.merge(acc, s), VersionedOrSet.empty());
        expect(sameState(VersionedOrSet, receiver, everything)).toBe(true);
      }),
      { numRuns: 150 },
    );
  });

  it('isCausallyReady wants exactly the next event from the origin and nothing unseen from others', () => {
    const local = clockOf([['eu', 2], ['us', 1]]);
    expect(isCausallyReady(local, clockOf([['eu', 3], ['us', 1]]), 'eu')).toBe(true);
    expect(isCausallyReady(local, clockOf([['eu', 4]]), 'eu')).toBe(false);
    expect(isCausallyReady(local, clockOf([['eu', 2], ['us', 1]]), 'eu')).toBe(false);
    expect(isCausallyReady(local, clockOf([['eu', 3], ['us', 2]]), 'eu')).toBe(false);
    expect(isCausallyReady(local, clockOf([['ap', 1]]), 'ap')).toBe(true);
    expect(isCausallyReady(local, clockOf([['us', 1]]), 'ap')).toBe(false);
  });

  it('names nested fields when decoding', () => {
    expect(() => VersionedCounter.decode({ state: { eu: 'x' }, clock: {} })).toThrow(/versioned-g-counter\.state\.eu/);
    expect(() => VersionedCounter.decode({ state: {}, clock: { eu: -2 } })).toThrow(/versioned-g-counter\.clock\.eu/);
    expect(() => VersionedOrSet.decode({ state: { entries: [], tombstones: [['eu']] }, clock: {} }, 'sync.entry[4]')).toThrow(/sync\.entry\[4\]\.state\.tombstones\[0\]/);
  });
});
