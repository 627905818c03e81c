/**
 * Hybrid logical clock: strictly monotonic under any mix of local events and
 * receives with arbitrary (even backwards) physical times, receive-after-send
 * ordering, bounded wall time, and the max-offset guard.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { compareHlc, decodeHlc, HLC_ZERO, hlcAfter, HlcDriftError, hlcReceive, hlcSend, maxHlc, type Hlc } from '../../src/state/clock/hlc.ts';

const MAX_OFFSET = 100;
const hlc: fc.Arbitrary<Hlc> = fc.record({ wallMs: fc.integer({ min: 0, max: 1000 }), logical: fc.integer({ min: 0, max: 5 }) });
type Event = { readonly kind: 'send'; readonly physicalMs: number } | { readonly kind: 'receive'; readonly physicalMs: number; readonly remote: Hlc };
const event: fc.Arbitrary<Event> = fc.oneof(
  fc.record({ kind: fc.constant('send' as const), physicalMs: fc.integer({ min: 0, max: 1000 }) }),
  fc.record({ kind: fc.constant('receive' as const), physicalMs: fc.integer({ min: 0, max: 1000 }), remote: hlc }),
);

describe('HLC', () => {
  it('is strictly monotonic, its wall time bounded by what it has seen, under any events and physical times', () => {
    fc.assert(
      fc.property(fc.array(event, { maxLength: 60 }), (events) => {
        let clock = HLC_ZERO;
        let maxSeen = 0;
        for (const e of events) {
          let next: Hlc;
          if (e.kind === 'send') next = hlcSend(clock, e.physicalMs);
          else {
            try {
              next = hlcReceive(clock, e.remote, e.physicalMs, MAX_OFFSET);
            } catch (err) {
              expect(err).toBeInstanceOf(HlcDriftError);
              expect(e.remote.wallMs - e.physicalMs).toBeGreaterThan(MAX_OFFSET);
              continue;
            }
            expect(compareHlc(next, e.remote)).toBe(1);
            maxSeen = Math.max(maxSeen, e.remote.wallMs);
          }
          maxSeen = Math.max(maxSeen, e.physicalMs);
          expect(compareHlc(next, clock)).toBe(1);
          expect(next.wallMs).toBeLessThanOrEqual(maxSeen);
          expect(next.wallMs).toBeGreaterThanOrEqual(e.physicalMs);
          clock = next;
        }
      }),
      { numRuns: 300 },
    );
  });

  it('respects causality: a receive is after the send, along any chain of messages between skewed regions', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 2 }), fc.integer({ min: 0, max: 2 }), fc.integer({ min: 0, max: 30 })), { maxLength: 40 }),
        fc.tuple(fc.integer({ min: 0, max: 80 }), fc.integer({ min: 0, max: 80 }), fc.integer({ min: 0, max: 80 })),
        (messages, skews) => {
          const clocks: Hlc[] = [HLC_ZERO, HLC_ZERO, HLC_ZERO];
          let physical = 0;
          for (const [from, to, advance] of messages) {
            physical += advance;
            const sent = hlcSend(clocks[from] ?? HLC_ZERO, physical + (skews[from] ?? 0));
            clocks[from] = sent;
            const received = hlcReceive(clocks[to] ?? HLC_ZERO, sent, physical + (skews[to] ?? 0), MAX_OFFSET);
            expect(compareHlc(received, sent)).toBe(1);
            clocks[to] = received;
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('refuses a remote timestamp more than maxOffsetMs ahead, with the figures in the error', () => {
    const clock = { wallMs: 1000, logical: 3 };
    expect(hlcReceive(clock, { wallMs: 1100, logical: 0 }, 1000, 100)).toEqual({ wallMs: 1100, logical: 1 });
    let caught: unknown;
    try {
      hlcReceive(clock, { wallMs: 1101, logical: 0 }, 1000, 100);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(HlcDriftError);
    const drift = caught as HlcDriftError;
    expect(drift.message).toMatch(/101 ms ahead .* max offset is 100 ms/);
    expect([drift.maxOffsetMs, drift.physicalMs, drift.remote.wallMs]).toEqual([100, 1000, 1101]);
    // A remote behind us is never refused, however far.
    expect(hlcReceive(clock, { wallMs: 0, logical: 9 }, 5000, 100)).toEqual({ wallMs: 5000, logical: 0 });
  });

  it('follows the HLC rules on each branch, rejects bad input, and decodes naming the field', () => {
    const c = { wallMs: 50, logical: 2 };
    expect(hlcSend(c, 40)).toEqual({ wallMs: 50, logical: 3 });
    expect(hlcSend(c, 60)).toEqual({ wallMs: 60, logical: 0 });
    expect(hlcReceive(c, { wallMs: 50, logical: 7 }, 10)).toEqual({ wallMs: 50, logical: 8 });
    expect(hlcReceive(c, { wallMs: 55, logical: 7 }, 10)).toEqual({ wallMs: 55, logical: 8 });
    expect(hlcReceive(c, { wallMs: 45, logical: 7 }, 10)).toEqual({ wallMs: 50, logical: 3 });
    expect(maxHlc(c, { wallMs: 50, logical: 1 })).toBe(c);
    expect(hlcAfter(c, 10)).toEqual({ wallMs: 60, logical: 0 });
    expect(() => hlcSend(c, -1)).toThrow(/physicalMs/);
    expect(() => hlcSend(c, 1.5)).toThrow(/physicalMs/);
    expect(() => hlcReceive(c, c, 10, -1)).toThrow(/maxOffsetMs/);
    expect(() => hlcAfter(c, -5)).toThrow(/ttlMs/);
    expect(() => hlcSend({ wallMs: 50, logical: Number.MAX_SAFE_INTEGER }, 1)).toThrow(/overflow/);
    expect(decodeHlc({ wallMs: 1, logical: 2 })).toEqual({ wallMs: 1, logical: 2 });
    expect(() => decodeHlc({ wallMs: 1 })).toThrow(/hlc\.logical/);
    expect(() => decodeHlc({ wallMs: 1, logical: 0, extra: 1 }, 'msg.ts')).toThrow(/msg\.ts\.extra/);
  });
});
