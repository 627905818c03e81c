/**
 * LWW register: join laws and convergence to the write with the greatest
 * (HLC, region); TTL expiry decided by HLC time so that regions with different
 * wall clocks agree; decode errors naming the field.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { compareHlc, hlcAfter, hlcReceive, hlcSend, HLC_ZERO, type Hlc } from '../../src/state/clock/hlc.ts';
import { LwwRegister, type LwwRegisterState } from '../../src/state/crdt/lww-register.ts';
import type { JsonValue } from '../../src/state/crdt/types.ts';
import { crdtLaws, type Performed } from './crdt-laws.ts';

type Op = { readonly value: JsonValue; readonly ttlMs: number | null };

function winner(performed: readonly Performed<Op>[]): Performed<Op> | undefined {
  return performed.reduce<Performed<Op> | undefined>((best, p) => {
    if (best === undefined) return p;
    const order = compareHlc(p.ts, best.ts) || (p.region > best.region ? 1 : p.region < best.region ? -1 : 0);
    return order > 0 ? p : best;
  }, undefined);
}

describe('LwwRegister', () => {
  crdtLaws<LwwRegisterState, Op>({
    type: LwwRegister,
    op: fc.record({ value: fc.oneof(fc.integer(), fc.string({ maxLength: 4 }), fc.constant(null), fc.dictionary(fc.string({ maxLength: 2 }), fc.boolean())), ttlMs: fc.option(fc.integer({ min: 1, max: 100 })) }),
    apply: (state, { value, ttlMs }, region, ts) => LwwRegister.set(state, value, ts, region, ttlMs === null ? null : hlcAfter(ts, ttlMs)),
    expectedValue: (performed) => winner(performed)?.op.value,
  });

  const write = (value: JsonValue, ts: Hlc, region: string, expiresAt: Hlc | null = null): LwwRegisterState =>
    LwwRegister.set(LwwRegister.empty(), value, ts, region, expiresAt);

  it('the later HLC wins; equal HLCs are broken by region id in every region', () => {
    const early = write('a', { wallMs: 10, logical: 0 }, 'us');
    const late = write('b', { wallMs: 10, logical: 1 }, 'ap');
    expect(LwwRegister.value(LwwRegister.merge(early, late))).toBe('b');
    const tieEu = write('eu-value', { wallMs: 10, logical: 0 }, 'eu');
    expect(LwwRegister.value(LwwRegister.merge(early, tieEu))).toBe('a');
    expect(LwwRegister.value(LwwRegister.merge(tieEu, early))).toBe('a');
  });

  it('an expired winner still beats an older write (no resurrection)', () => {
    const old = write('old', { wallMs: 1, logical: 0 }, 'eu');
    const ts = { wallMs: 5, logical: 0 };
    const merged = LwwRegister.merge(old, write('new', ts, 'us', hlcAfter(ts, 10)));
    expect(LwwRegister.valueAt(merged, { wallMs: 14, logical: 99 })).toBe('new');
    expect(LwwRegister.valueAt(merged, { wallMs: 15, logical: 0 })).toBeUndefined();
    expect(LwwRegister.value(merged)).toBe('new');
  });

  it('regions with different wall clocks agree on expiry given the same HLC inputs', () => {
    // Two regions exchange messages; each region's physical clock is skewed
    // differently. Every event is stamped by its region's HLC, and a read
    // event decides expiry by its own stamp: the decision must be the same
    // function of the HLC stamp in both regions, and after the regions have
    // exchanged a message they agree on the order of expiry relative to it.
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 400 }),
        fc.integer({ min: 0, max: 400 }),
        fc.integer({ min: 1, max: 300 }),
        fc.array(fc.record({ region: fc.constantFrom(0, 1), advanceMs: fc.integer({ min: 0, max: 80 }) }), { maxLength: 20 }),
        (skewA, skewB, ttlMs, events) => {
          const skews = [skewA, skewB];
          const physical = [0, 0];
          const clocks: Hlc[] = [HLC_ZERO, HLC_ZERO];
          const wallOf = (r: number): number => (physical[r] ?? 0) + (skews[r] ?? 0);
          const stamp = (r: number): Hlc => (clocks[r] = hlcSend(clocks[r] ?? HLC_ZERO, wallOf(r)));
          const ts = stamp(0);
          let replicas: LwwRegisterState[] = [write('v', ts, 'a', hlcAfter(ts, ttlMs)), LwwRegister.empty()];
          // Region 1 receives the write (and its HLC).
          clocks[1] = hlcReceive(clocks[1] ?? HLC_ZERO, ts, wallOf(1), 1000);
          replicas = [replicas[0] ?? null, LwwRegister.merge(replicas[1] ?? null, replicas[0] ?? null)];
          for (const { region, advanceMs } of events) {
            physical[region] = (physical[region] ?? 0) + advanceMs;
            const now = stamp(region);
            const decisions = replicas.map((state) => LwwRegister.isExpired(state, now));
            // Same HLC instant, same answer in both regions, whatever their wall clocks.
            expect(decisions[0]).toBe(decisions[1]);
            expect(decisions[0]).toBe(now.wallMs >= ts.wallMs + ttlMs);
            // And the other region, once it has received this event's stamp, sees the same.
            const other = 1 - region;
            const seen = (clocks[other] = hlcReceive(clocks[other] ?? HLC_ZERO, now, wallOf(other), 1000));
            if (decisions[0] === true) expect(LwwRegister.isExpired(replicas[other] ?? null, seen)).toBe(true);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('rejects an expiry not after the write and malformed peer state, naming the field', () => {
    const ts = { wallMs: 5, logical: 2 };
    expect(() => LwwRegister.set(null, 1, ts, 'eu', ts)).toThrow(/expiresAt/);
    expect(() => LwwRegister.set(null, 1, ts, '', null)).toThrow(/region/);
    const good = LwwRegister.encode(write({ a: [1, 2] }, ts, 'eu', hlcAfter(ts, 5)));
    expect(LwwRegister.decode(JSON.parse(JSON.stringify(good)))).toEqual({ value: { a: [1, 2] }, ts, region: 'eu', expiresAt: { wallMs: 10, logical: 0 } });
    expect(LwwRegister.decode(null)).toBeNull();
    const bad = (patch: Record<string, unknown>): unknown => ({ ...(good as Record<string, unknown>), ...patch });
    expect(() => LwwRegister.decode(bad({ ts: { wallMs: -1, logical: 0 } }))).toThrow(/lww-register\.ts\.wallMs/);
    expect(() => LwwRegister.decode(bad({ region: 7 }))).toThrow(/lww-register\.region/);
    expect(() => LwwRegister.decode(bad({ expiresAt: { wallMs: 1 } }))).toThrow(/lww-register\.expiresAt\.logical/);
    expect(() => LwwRegister.decode(bad({ expiresAt: ts }))).toThrow(/lww-register\.expiresAt: must be after ts/);
    expect(() => LwwRegister.decode(bad({ value: undefined }))).toThrow(/lww-register\.value/);
    expect(() => LwwRegister.decode(bad({ value: { deep: [1, { x: Number.NaN }] } }))).toThrow(/lww-register\.value\.deep\[1\]\.x/);
  });
});
