/**
 * One entry of the geo-distributed store: a CRDT state of one of six types,
 * the vector clock of the writes it contains, and an optional expiry in HLC
 * time. Also the entry's canonical bytes (disk and wire), its hash (what
 * digests are made of) and its name rules.
 *
 * Keys: an entry is identified by its type and its name (`or-set:vms`), so
 * `kv put x` and `crdt incr x` never collide and two regions can never create
 * one key with two types: merge only ever meets states of one type.
 *
 * Invariants:
 * - An entry's clock counts, per region, that region's writes it contains:
 *   a region's write counter is one sequence across all its keys (so a key
 *   that was dropped and written again never reuses a counter), and a state
 *   only ever absorbs another region's writes through a full state or a delta
 *   whose `since` clock it dominates. So "clock A dominates clock B" implies
 *   "entry A contains every write of entry B", and equal clocks mean equal
 *   states.
 * - `mergeEntries` is a join (the type's merge, mergeClocks, max of expiries
 *   with null = never as the top), so replicas converge whatever the order.
 * - `entryBytes` is canonical: equal entries give equal bytes and equal hashes.
 */
import { createHash } from 'node:crypto';
import { compareHlc, decodeHlc, encodeHlc, type Hlc } from './clock/hlc.ts';
import { decodeClock, encodeClock, mergeClocks, type VectorClock } from './clock/vector-clock.ts';
import { readObject, readString, StateDecodeError } from './crdt/decode.ts';
import { GCounter } from './crdt/g-counter.ts';
import { GSet } from './crdt/g-set.ts';
import { LwwRegister } from './crdt/lww-register.ts';
import { OrSet } from './crdt/or-set.ts';
import { PNCounter } from './crdt/pn-counter.ts';
import { canonicalJson, type Crdt, type JsonValue, type RegionId } from './crdt/types.ts';
import { YjsRecord } from './crdt/yjs-record.ts';

export const CRDT_TYPES = ['lww-register', 'g-counter', 'pn-counter', 'g-set', 'or-set', 'yjs-record'] as const;
export type CrdtType = (typeof CRDT_TYPES)[number];

/** A region (one dwcpd) as a replica: its node name, unique in the federation. */
export type ReplicaId = RegionId;

/** Names are keys (VM ids, counters, config paths); a bound keeps LMDB keys (max 1978 bytes) and frames small. */
export const MAX_NAME_BYTES = 1024;
/** One entry's encoded state; a write that would grow an entry past it is refused. */
export const MAX_ENTRY_BYTES = 2 * 1024 * 1024;

export interface Entry {
  readonly type: CrdtType;
  /** The type's state (LwwRegisterState, GCounterState, ...), treated as opaque outside the type's module. */
  readonly state: unknown;
  readonly clock: VectorClock;
  /** First HLC instant at which the entry reads as absent; null = never. */
  readonly expiresAt: Hlc | null;
}

/** A type's CRDT with its state type erased, so entries of every type share one code path. */
interface ErasedCrdt {
  empty(): unknown;
  merge(a: unknown, b: unknown): unknown;
  encode(state: unknown): JsonValue;
  decode(raw: unknown, field: string): unknown;
}

function erase<S, V>(type: Crdt<S, V>): ErasedCrdt {
  return {
    empty: () => type.empty(),
    merge: (a, b) => type.merge(a as S, b as S),
    encode: (state) => type.encode(state as S),
    decode: (raw, field) => type.decode(raw, field),
  };
}

const TYPES: Readonly<Record<CrdtType, ErasedCrdt>> = {
  'lww-register': erase(LwwRegister),
  'g-counter': erase(GCounter),
  'pn-counter': erase(PNCounter),
  'g-set': erase(GSet),
  'or-set': erase(OrSet),
  'yjs-record': erase(YjsRecord),
};

export function isCrdtType(name: string): name is CrdtType {
  return (CRDT_TYPES as readonly string[]).includes(name);
}

export function emptyState(type: CrdtType): unknown {
  return TYPES[type].empty();
}

export function mergeStates(type: CrdtType, a: unknown, b: unknown): unknown {
  return TYPES[type].merge(a, b);
}

/** null (never) is the latest expiry, so a write without a TTL makes its entry permanent. */
export function laterExpiry(a: Hlc | null, b: Hlc | null): Hlc | null {
  if (a === null || b === null) return null;
  return compareHlc(a, b) >= 0 ? a : b;
}

export function mergeEntries(a: Entry, b: Entry): Entry {
  if (a.type !== b.type) throw new Error(`cannot merge a ${a.type} with a ${b.type}`);
  return { type: a.type, state: mergeStates(a.type, a.state, b.state), clock: mergeClocks(a.clock, b.clock), expiresAt: laterExpiry(a.expiresAt, b.expiresAt) };
}

export function isExpired(entry: Entry, now: Hlc): boolean {
  return entry.expiresAt !== null && compareHlc(now, entry.expiresAt) >= 0;
}

// ---------------------------------------------------------------- keys

const SEPARATOR = ':';

/** The store key of entry `name` of `type`. */
export function entryKey(type: CrdtType, name: string): string {
  return `${type}${SEPARATOR}${name}`;
}

export function splitKey(key: string, field = 'key'): { type: CrdtType; name: string } {
  const at = key.indexOf(SEPARATOR);
  const type = at < 0 ? '' : key.slice(0, at);
  if (!isCrdtType(type)) throw new StateDecodeError(field, `${JSON.stringify(key.slice(0, 60))} does not start with a CRDT type and ":"`);
  return { type, name: key.slice(at + 1) };
}

/** Why `name` cannot name an entry, or null if it can. */
export function nameProblem(name: string): string | null {
  if (name.length === 0) return 'must not be empty';
  if (!name.isWellFormed()) return 'must be well-formed Unicode (no lone surrogates)';
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > MAX_NAME_BYTES) return `is ${bytes} bytes of UTF-8, above the ${MAX_NAME_BYTES}-byte limit`;
  return null;
}

/** A store key received from a peer or read from disk: a known type and a valid name. */
export function readKey(raw: unknown, field: string): string {
  const key = readString(raw, field, MAX_NAME_BYTES + 32);
  const { name } = splitKey(key, field);
  const problem = nameProblem(name);
  if (problem !== null) throw new StateDecodeError(field, `name ${problem}`);
  return key;
}

// ---------------------------------------------------------------- bytes

/**
 * The state as bytes: a Yjs record is its update as is (records are what is
 * large, and base64 would grow them by a third); every other type is its
 * canonical JSON in UTF-8.
 */
export function stateBytes(type: CrdtType, state: unknown): Uint8Array {
  if (type === 'yjs-record') return state as Uint8Array;
  return Buffer.from(canonicalJson(TYPES[type].encode(state)), 'utf8');
}

/** Validates untrusted state bytes of `type`; throws StateDecodeError naming `field`. */
export function stateFromBytes(type: CrdtType, bytes: Uint8Array, field: string): unknown {
  if (bytes.byteLength > MAX_ENTRY_BYTES) throw new StateDecodeError(field, `is ${bytes.byteLength} bytes, above the ${MAX_ENTRY_BYTES}-byte limit`);
  if (type === 'yjs-record') return YjsRecord.decode(Buffer.from(bytes).toString('base64'), field);
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new StateDecodeError(field, `is not JSON of a ${type}`);
  }
  return TYPES[type].decode(raw, field);
}

/** The whole entry as canonical JSON (type, state, clock, expiry), for disk and hashing. */
export function encodeEntry(entry: Entry): JsonValue {
  return {
    type: entry.type,
    state: entry.type === 'yjs-record' ? Buffer.from(entry.state as Uint8Array).toString('base64') : TYPES[entry.type].encode(entry.state),
    clock: encodeClock(entry.clock),
    expiresAt: entry.expiresAt === null ? null : encodeHlc(entry.expiresAt),
  };
}

export function decodeEntry(raw: unknown, field: string): Entry {
  const record = readObject(raw, field, ['type', 'state', 'clock', 'expiresAt']);
  const type = readString(record.type, `${field}.type`, 32);
  if (!isCrdtType(type)) throw new StateDecodeError(`${field}.type`, `${JSON.stringify(type)} is not one of ${CRDT_TYPES.join(', ')}`);
  return {
    type,
    state: TYPES[type].decode(record.state, `${field}.state`),
    clock: decodeClock(record.clock, `${field}.clock`),
    expiresAt: record.expiresAt === null ? null : decodeHlc(record.expiresAt, `${field}.expiresAt`),
  };
}

export function entryBytes(entry: Entry): Uint8Array {
  return Buffer.from(canonicalJson(encodeEntry(entry)), 'utf8');
}

export const ENTRY_HASH_BYTES = 16;

/** 128 bits of SHA-256 over the key and the canonical entry: what bucket digests XOR together. */
export function entryHash(key: string, entry: Entry): Uint8Array {
  return createHash('sha256').update(key).update('\u0000').update(entryBytes(entry)).digest().subarray(0, ENTRY_HASH_BYTES);
}
