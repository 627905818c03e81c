/**
 * G-set and OR-set: join laws and convergence; the OR-set against a
 * sequential Set model, its add-wins rule for concurrent add/remove, tag
 * uniqueness, and decode errors naming the field.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { GSet } from '../../src/state/crdt/g-set.ts';
import { OrSet, type OrSetState } from '../../src/state/crdt/or-set.ts';
import { encodeClock } from '../../src/state/clock/vector-clock.ts';
import { crdtLaws } from './crdt-laws.ts';

const element = fc.constantFrom('vm-1', 'vm-2', 'vm-3', 'vm-4', '__proto__', '');

describe('GSet', () => {
  crdtLaws({
    type: GSet,
    op: element,
    apply: (state, e) => GSet.add(state, e),
    expectedValue: (performed) => [...new Set(performed.map(({ op }) => op))].sort(),
  });

  it('rejects duplicates and non-strings in peer state', () => {
    expect(() => GSet.decode(['a', 'a'])).toThrow(/g-set\[1\]: duplicate/);
    expect(() => GSet.decode(['a', 3])).toThrow(/g-set\[1\]: must be a string/);
    expect(() => GSet.decode(['x'.repeat(1025)])).toThrow(/limit 1024/);
  });
});

describe('OrSet', () => {
  type Op = { readonly add: boolean; readonly element: string };
  const op = fc.record({ add: fc.boolean(), element });
  const applyOp = (state: OrSetState, { add, element: e }: Op, region: string): OrSetState =>
    add ? OrSet.add(state, region, e) : OrSet.remove(state, e);

  crdtLaws<OrSetState, Op>({ type: OrSet, op, apply: (state, o, region) => applyOp(state, o, region) });

  it('on one replica behaves exactly like a Set', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
        const model = new Set<string>();
        let state = OrSet.empty();
        for (const o of ops) {
          state = OrSet.merge(state, applyOp(state, o, 'eu'));
          if (o.add) model.add(o.element);
          else model.delete(o.element);
          expect(OrSet.has(state, o.element)).toBe(model.has(o.element));
        }
        expect(OrSet.value(state)).toEqual([...model].sort());
      }),
      { numRuns: 200 },
    );
  });

  it('add wins over a concurrent remove; a remove that observed the add wins', () => {
    const base = OrSet.merge(OrSet.empty(), OrSet.add(OrSet.empty(), 'eu', 'vm'));
    const removedInUs = OrSet.merge(base, OrSet.remove(base, 'vm'));
    const reAddedInEu = OrSet.merge(base, OrSet.add(base, 'eu', 'vm'));
    expect(OrSet.value(OrSet.merge(removedInUs, reAddedInEu))).toEqual(['vm']);
    expect(OrSet.value(OrSet.merge(removedInUs, base))).toEqual([]);
  });

  it('tags are (region, counter) and never reused by a region', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 30 }), (ops) => {
        let state = OrSet.empty();
        const issued = new Set<string>();
        for (const o of ops) {
          const delta = applyOp(state, o, 'eu');
          for (const tags of delta.entries.values()) {
            for (const tag of tags.values()) {
              const key = `${tag.region}/${tag.counter}`;
              expect(issued.has(key)).toBe(false);
              issued.add(key);
            }
          }
          state = OrSet.merge(state, delta);
        }
        expect(encodeClock(OrSet.clock(state))).toEqual(issued.size === 0 ? {} : { eu: issued.size });
      }),
      { numRuns: 100 },
    );
  });

  it('rejects malformed peer state, naming the field', () => {
    const good = OrSet.encode(OrSet.add(OrSet.empty(), 'eu', 'vm'));
    expect(OrSet.decode(good)).toBeDefined();
    expect(() => OrSet.decode({ entries: [{ element: 'vm', tags: [['eu', 0]] }], tombstones: [] })).toThrow(/or-set\.entries\[0\]\.tags\[0\]\[1\]/);
    expect(() => OrSet.decode({ entries: [{ element: 'vm', tags: [['eu']] }], tombstones: [] })).toThrow(/or-set\.entries\[0\]\.tags\[0\]: must be \[region, counter\]/);
    expect(() => OrSet.decode({ entries: [], tombstones: [['', 1]] })).toThrow(/or-set\.tombstones\[0\]\[0\]/);
    expect(() => OrSet.decode({ entries: [{ element: 'a', tags: [] }, { element: 'a', tags: [] }], tombstones: [] })).toThrow(
      /or-set\.entries\[1\]\.element: duplicate/,
    );
    expect(() => OrSet.decode({ entries: [] })).toThrow(/or-set\.tombstones: must be an array/);
  });
});
