/**
 * G-counter and PN-counter: join laws, convergence to the exact total of every
 * increment and decrement performed anywhere, and decode errors naming the field.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { GCounter } from '../../src/state/crdt/g-counter.ts';
import { PNCounter } from '../../src/state/crdt/pn-counter.ts';
import { StateDecodeError } from '../../src/state/crdt/decode.ts';
import { crdtLaws, type Performed } from './crdt-laws.ts';

const amount = fc.integer({ min: 1, max: 1000 });

describe('GCounter', () => {
  crdtLaws({
    type: GCounter,
    op: amount,
    apply: (state, by, region) => GCounter.increment(state, region, by),
    expectedValue: (performed: readonly Performed<number>[]) => performed.reduce((sum, { op }) => sum + op, 0),
  });

  it('increment returns a delta holding only that region', () => {
    const s = GCounter.merge(GCounter.increment(GCounter.empty(), 'eu', 2), GCounter.increment(GCounter.empty(), 'us', 5));
    const delta = GCounter.increment(s, 'eu', 3);
    expect(GCounter.encode(delta)).toEqual({ eu: 5 });
    expect(GCounter.value(GCounter.merge(s, delta))).toBe(10);
  });

  it('rejects a non-positive increment and bad peer state, naming the field', () => {
    expect(() => GCounter.increment(GCounter.empty(), 'eu', 0)).toThrow(/by/);
    expect(() => GCounter.decode({ eu: -1 })).toThrow(StateDecodeError);
    expect(() => GCounter.decode({ eu: '3' })).toThrow(/g-counter\.eu/);
    expect(() => GCounter.decode({ '': 1 })).toThrow(/g-counter\./);
    expect(() => GCounter.decode([1])).toThrow(/g-counter: must be an object/);
  });
});

describe('PNCounter', () => {
  type Op = { readonly sign: 1 | -1; readonly by: number };
  crdtLaws<ReturnType<typeof PNCounter.empty>, Op>({
    type: PNCounter,
    op: fc.record({ sign: fc.constantFrom(1 as const, -1 as const), by: amount }),
    apply: (state, { sign, by }, region) => (sign === 1 ? PNCounter.increment(state, region, by) : PNCounter.decrement(state, region, by)),
    expectedValue: (performed) => performed.reduce((sum, { op }) => sum + op.sign * op.by, 0),
  });

  it('goes below zero and names the bad half on decode', () => {
    const s = PNCounter.merge(PNCounter.increment(PNCounter.empty(), 'eu', 2), PNCounter.decrement(PNCounter.empty(), 'us', 5));
    expect(PNCounter.value(s)).toBe(-3);
    expect(PNCounter.encode(s)).toEqual({ inc: { eu: 2 }, dec: { us: 5 } });
    expect(() => PNCounter.decode({ inc: {}, dec: { us: 1.5 } })).toThrow(/pn-counter\.dec\.us/);
    expect(() => PNCounter.decode({ inc: {} })).toThrow(/pn-counter\.dec/);
    expect(() => PNCounter.decode({ inc: {}, dec: {}, extra: 1 })).toThrow(/pn-counter\.extra/);
  });
});
