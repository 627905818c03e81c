/**
 * What a client can do to an entry (put or delete a value, count up or down,
 * add or remove an element, set or clear a record field) and what a read
 * shows. Each operation becomes the delta its type's mutator returns; the
 * replica merges the delta into the entry and ships it to peers.
 *
 * Invariants:
 * - An operation is valid only on the types that have it (`decr` on a
 *   g-counter, `remove` on a g-set are refused with a message naming both), so
 *   the delta is always a state of the entry's type.
 * - An LWW write is stamped above the entry's current winner, so a region's
 *   own write always wins over what it has already seen (read-your-writes),
 *   whatever its HLC says.
 * - Pure: the HLC timestamp and the writing region are arguments.
 */
import { compareHlc, hlcAfter, maxHlc, type Hlc } from './clock/hlc.ts';
import { GCounter, type GCounterState } from './crdt/g-counter.ts';
import { GSet, type GSetState } from './crdt/g-set.ts';
import { LwwRegister, type LwwRegisterState } from './crdt/lww-register.ts';
import { OrSet, type OrSetState } from './crdt/or-set.ts';
import { PNCounter, type PNCounterState } from './crdt/pn-counter.ts';
import type { JsonValue } from './crdt/types.ts';
import { YjsRecord, type YjsRecordState } from './crdt/yjs-record.ts';
import { isExpired, type CrdtType, type Entry, type ReplicaId } from './entry.ts';
import { DwcpError } from '../errors.ts';

export type CrdtOp =
  | { readonly op: 'put'; readonly value: JsonValue }
  | { readonly op: 'delete' }
  | { readonly op: 'incr'; readonly by: number }
  | { readonly op: 'decr'; readonly by: number }
  | { readonly op: 'add'; readonly element: string }
  | { readonly op: 'remove'; readonly element: string }
  | { readonly op: 'set-field'; readonly field: string; readonly value: JsonValue }
  | { readonly op: 'delete-field'; readonly field: string };

export type CrdtOpName = CrdtOp['op'];

/** The types each operation applies to; the first is the one a new entry gets when the caller names none. */
export const OP_TYPES: Readonly<Record<CrdtOpName, readonly CrdtType[]>> = {
  put: ['lww-register'],
  delete: ['lww-register'],
  incr: ['pn-counter', 'g-counter'],
  decr: ['pn-counter'],
  add: ['or-set', 'g-set'],
  remove: ['or-set'],
  'set-field': ['yjs-record'],
  'delete-field': ['yjs-record'],
};

/** Counters move by at most this per operation, so a sum over a few regions stays exact below 2^53. */
export const MAX_STEP = 2 ** 40;

export class OpError extends DwcpError<'invalid'> {
  constructor(message: string) {
    super('invalid', message);
  }
}

/** Throws OpError unless `op` may be applied to an entry of `type`. */
export function checkOp(type: CrdtType, op: CrdtOp): void {
  const types = OP_TYPES[op.op];
  if (!types.includes(type)) throw new OpError(`${op.op} applies to ${types.join(' or ')}, not to a ${type}`);
  if ((op.op === 'incr' || op.op === 'decr') && !(Number.isSafeInteger(op.by) && op.by >= 1 && op.by <= MAX_STEP)) {
    throw new OpError(`${op.op}: amount must be a whole number from 1 to ${MAX_STEP}, got ${op.by}`);
  }
}

/**
 * The delta `op` makes at `region` on `state` (of `type`), stamped `ts`, and
 * the write's own expiry (`ttlMs` after ts; null = none).
 */
export function opDelta(type: CrdtType, state: unknown, op: CrdtOp, region: ReplicaId, ts: Hlc, ttlMs: number | null): { delta: unknown; expiresAt: Hlc | null } {
  checkOp(type, op);
  const expiresAt = ttlMs === null ? null : hlcAfter(ts, ttlMs);
  switch (op.op) {
    case 'put':
    case 'delete': {
      const current = state as LwwRegisterState;
      // Above the current winner even if our HLC is behind it (a remote far ahead that our clock refused to follow).
      const stamp = current !== null && compareHlc(ts, current.ts) <= 0 ? { wallMs: current.ts.wallMs, logical: current.ts.logical + 1 } : ts;
      const expiry = ttlMs === null ? null : hlcAfter(maxHlc(stamp, ts), ttlMs);
      return { delta: LwwRegister.set(current, op.op === 'put' ? op.value : null, stamp, region, expiry), expiresAt: expiry };
    }
    case 'incr':
      return {
        delta: type === 'g-counter' ? GCounter.increment(state as GCounterState, region, op.by) : PNCounter.increment(state as PNCounterState, region, op.by),
        expiresAt,
      };
    case 'decr':
      return { delta: PNCounter.decrement(state as PNCounterState, region, op.by), expiresAt };
    case 'add':
      return { delta: type === 'g-set' ? GSet.add(state as GSetState, op.element) : OrSet.add(state as OrSetState, region, op.element), expiresAt };
    case 'remove':
      return { delta: OrSet.remove(state as OrSetState, op.element), expiresAt };
    case 'set-field':
      return { delta: YjsRecord.set(state as YjsRecordState, region, op.field, op.value), expiresAt };
    case 'delete-field':
      return { delta: YjsRecord.delete(state as YjsRecordState, region, op.field), expiresAt };
  }
}

/**
 * What a read shows at HLC instant `now`: undefined for an absent, expired or
 * deleted entry; a register's value; a counter's number; a set's sorted
 * elements; a record's fields.
 */
export function entryValue(entry: Entry | undefined, now: Hlc): JsonValue | undefined {
  if (entry === undefined || isExpired(entry, now)) return undefined;
  switch (entry.type) {
    case 'lww-register': {
      const value = LwwRegister.valueAt(entry.state as LwwRegisterState, now);
      return value === null ? undefined : value;
    }
    case 'g-counter':
      return GCounter.value(entry.state as GCounterState);
    case 'pn-counter':
      return PNCounter.value(entry.state as PNCounterState);
    case 'g-set':
      return GSet.value(entry.state as GSetState);
    case 'or-set':
      return OrSet.value(entry.state as OrSetState);
    case 'yjs-record':
      return YjsRecord.value(entry.state as YjsRecordState);
  }
}

/** The region whose write a register shows and its HLC stamp (for `kv get` output); null for other types or none. */
export function registerWinner(entry: Entry | undefined): { region: ReplicaId; ts: Hlc } | null {
  if (entry === undefined || entry.type !== 'lww-register') return null;
  const write = entry.state as LwwRegisterState;
  return write === null ? null : { region: write.region, ts: write.ts };
}
