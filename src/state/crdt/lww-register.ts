/**
 * Last-writer-wins register: the write with the greatest HLC timestamp wins,
 * ties broken by region id, so every region picks the same winner without
 * coordination. A write may carry an expiry in HLC time (TTL), so whether it
 * has expired is decided by the same HLC order everywhere rather than by each
 * region's wall clock.
 *
 * Invariants:
 * - Writes are totally ordered by (ts, region, canonical value, expiresAt);
 *   merge keeps the greater, so it is a join. A region's HLC never issues the
 *   same timestamp twice, so in practice (ts, region) alone identifies a write
 *   and the later keys only keep merge deterministic on malformed input.
 * - `null` is the never-written register, below every write.
 * - Expiry does not affect merge: an expired winner still beats older writes
 *   (otherwise a resurrected older value would appear once the winner expired).
 */
import { compareHlc, decodeHlc, encodeHlc, type Hlc } from '../clock/hlc.ts';
import { assertRegion, readJson, readObject, readRegion, StateDecodeError } from './decode.ts';
import { canonicalJson, compareStrings, type CrdtModule, type JsonValue, type RegionId } from './types.ts';

export interface LwwWrite {
  readonly value: JsonValue;
  readonly ts: Hlc;
  readonly region: RegionId;
  /** First HLC instant at which the write no longer reads; null = never expires. */
  readonly expiresAt: Hlc | null;
}

export type LwwRegisterState = LwwWrite | null;

/** Never-expiring sorts first; only reached for two different writes claiming one (ts, region). */
function compareExpiry(a: Hlc | null, b: Hlc | null): number {
  if (a === null || b === null) return a === b ? 0 : a === null ? -1 : 1;
  return compareHlc(a, b);
}

export function compareWrites(a: LwwWrite, b: LwwWrite): number {
  return (
    compareHlc(a.ts, b.ts) ||
    compareStrings(a.region, b.region) ||
    compareStrings(canonicalJson(a.value), canonicalJson(b.value)) ||
    compareExpiry(a.expiresAt, b.expiresAt)
  );
}

function merge(a: LwwRegisterState, b: LwwRegisterState): LwwRegisterState {
  if (a === null) return b;
  if (b === null) return a;
  return compareWrites(a, b) >= 0 ? a : b;
}

function isExpired(state: LwwRegisterState, now: Hlc): boolean {
  return state !== null && state.expiresAt !== null && compareHlc(now, state.expiresAt) >= 0;
}

export const LwwRegister = {
  name: 'lww-register',
  empty: (): LwwRegisterState => null,
  merge,
  /** The winning value regardless of expiry (undefined if never written). */
  value: (state: LwwRegisterState): JsonValue | undefined => state?.value,
  encode(state: LwwRegisterState): JsonValue {
    if (state === null) return null;
    return {
      value: state.value,
      ts: encodeHlc(state.ts),
      region: state.region,
      expiresAt: state.expiresAt === null ? null : encodeHlc(state.expiresAt),
    };
  },
  decode(raw: unknown, field = 'lww-register'): LwwRegisterState {
    if (raw === null) return null;
    const record = readObject(raw, field, ['value', 'ts', 'region', 'expiresAt']);
    const write: LwwWrite = {
      value: readJson(record.value, `${field}.value`),
      ts: decodeHlc(record.ts, `${field}.ts`),
      region: readRegion(record.region, `${field}.region`),
      expiresAt: record.expiresAt === null ? null : decodeHlc(record.expiresAt, `${field}.expiresAt`),
    };
    if (write.expiresAt !== null && compareHlc(write.expiresAt, write.ts) <= 0) {
      throw new StateDecodeError(`${field}.expiresAt`, 'must be after ts');
    }
    return write;
  },
  /**
   * Delta for a write of `value` by `region` at HLC `ts` (from hlcSend on the
   * writer's clock, which has received the current winner's ts, so it wins).
   */
  set(state: LwwRegisterState, value: JsonValue, ts: Hlc, region: RegionId, expiresAt: Hlc | null = null): LwwRegisterState {
    assertRegion(region);
    if (expiresAt !== null && compareHlc(expiresAt, ts) <= 0) throw new RangeError('expiresAt: must be after the write timestamp');
    // The validated copy, so the caller mutating its object later cannot change a replicated write.
    return { value: readJson(value, 'value'), ts, region, expiresAt };
  },
  isExpired,
  /** The value as read at HLC instant `now`: undefined if never written or expired. */
  valueAt: (state: LwwRegisterState, now: Hlc): JsonValue | undefined => (isExpired(state, now) ? undefined : state?.value),
} satisfies CrdtModule<LwwRegisterState, JsonValue | undefined>;
