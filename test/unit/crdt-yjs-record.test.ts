/**
 * Yjs records: join laws and convergence over random sets/deletes at several
 * regions, state-vector diffs that carry exactly what the peer lacks, and
 * validation of untrusted updates.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { YjsRecord, regionClientId, type YjsRecordState } from '../../src/state/crdt/yjs-record.ts';
import { digest, sortedEntries, type JsonValue } from '../../src/state/crdt/types.ts';
import { crdtLaws, REGIONS } from './crdt-laws.ts';

type Op = { readonly key: string; readonly value: JsonValue | undefined };
const op: fc.Arbitrary<Op> = fc.record({ key: fc.constantFrom('cpu', 'mem', 'owner'), value: fc.option(fc.oneof(fc.integer(), fc.string({ maxLength: 3 }), fc.array(fc.boolean(), { maxLength: 2 })), { nil: undefined }) });
const applyOp = (state: YjsRecordState, { key, value }: Op, region: string): YjsRecordState =>
  value === undefined ? YjsRecord.delete(state, region, key) : YjsRecord.set(state, region, key, value);

describe('YjsRecord', () => {
  crdtLaws<YjsRecordState, Op>({ type: YjsRecord, op, apply: (state, o, region) => applyOp(state, o, region) }, { numRuns: 60, maxSteps: 20 });

  it('on one replica behaves like a map', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 20 }), (ops) => {
        const model = new Map<string, JsonValue>();
        let state = YjsRecord.empty();
        for (const o of ops) {
          state = YjsRecord.merge(state, applyOp(state, o, 'eu'));
          if (o.value === undefined) model.delete(o.key);
          else model.set(o.key, o.value);
        }
        expect(YjsRecord.value(state)).toEqual(Object.fromEntries(sortedEntries(model)));
      }),
      { numRuns: 60 },
    );
  });

  it('a diff against the peer state vector is all the peer needs, and smaller than the whole state', () => {
    let eu = YjsRecord.empty();
    for (let i = 0; i < 20; i++) eu = YjsRecord.merge(eu, YjsRecord.set(eu, 'eu', `k${i}`, 'x'.repeat(50)));
    let us = eu;
    us = YjsRecord.merge(us, YjsRecord.set(us, 'us', 'k0', 'changed in us'));
    eu = YjsRecord.merge(eu, YjsRecord.delete(eu, 'eu', 'k1'));
    const forUs = YjsRecord.diff(eu, YjsRecord.stateVector(us));
    const forEu = YjsRecord.diff(us, YjsRecord.stateVector(eu));
    expect(forUs.length).toBeLessThan(eu.length / 4);
    const euAfter = YjsRecord.merge(eu, forEu);
    const usAfter = YjsRecord.merge(us, forUs);
    expect(digest(YjsRecord, euAfter)).toBe(digest(YjsRecord, usAfter));
    expect(YjsRecord.value(euAfter).k0).toBe('changed in us');
    expect(YjsRecord.value(euAfter).k1).toBeUndefined();
  });

  it('writes under a region-derived client id and rejects bad peer updates', () => {
    expect(regionClientId('eu-west')).toBe(regionClientId('eu-west'));
    expect(new Set(REGIONS.map(regionClientId)).size).toBe(REGIONS.length);
    expect(() => YjsRecord.decode(42)).toThrow(/yjs-record: must be a string/);
    expect(() => YjsRecord.decode('not base64!')).toThrow(/yjs-record: must be base64/);
    expect(() => YjsRecord.decode(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff]).toString('base64'))).toThrow(/yjs-record: is not a Yjs update/);
    expect(() => YjsRecord.set(YjsRecord.empty(), 'eu', 'k', { n: Number.NaN })).toThrow(/value of k\.n/);
  });
});
