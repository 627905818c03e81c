/**
 * The contract every CRDT type in dwcp's geo-distributed state meets, plus the
 * canonical encoding that makes two regions' states cheap to compare.
 *
 * Invariants:
 * - `merge` is a join (commutative, associative, idempotent) over the states a
 *   type can reach, so replicas converge whatever order, grouping or repetition
 *   merges arrive in. Mutators return a *delta*: a small state of the same type
 *   that the caller merges locally and ships to peers (delta-state CRDTs), so
 *   the anti-entropy layer only ever moves states and never needs op replay.
 * - `encode` is JSON-safe and canonical: equal states encode to the same bytes
 *   under `canonicalJson`, so `digest` equality is state equality (up to
 *   SHA-256 collisions). `decode` accepts untrusted peer input and throws a
 *   StateDecodeError naming the offending field.
 * - Everything here is pure: no clock, no randomness, no I/O.
 */
import { createHash } from 'node:crypto';

/** A value that survives JSON.stringify/JSON.parse unchanged (finite numbers only). */
export type JsonValue = null | boolean | number | string | readonly JsonValue[] | { readonly [key: string]: JsonValue };

/** A region (datacenter or cloud region) id: the replica identity of every CRDT. */
export type RegionId = string;

export interface Crdt<S, V> {
  /** Stable type name, also the default root of field paths in decode errors. */
  readonly name: string;
  empty(): S;
  merge(a: S, b: S): S;
  value(state: S): V;
  encode(state: S): JsonValue;
  /** `field` is where `raw` sits in a larger message, for error paths (default: the type name). */
  decode(raw: unknown, field?: string): S;
}

/** A CRDT type object that also carries its mutators (each returns a delta) and queries. */
export type CrdtModule<S, V> = Crdt<S, V> & Readonly<Record<string, unknown>>;

/**
 * JSON with object keys sorted by UTF-16 code unit at every level, so the text
 * depends only on the value, never on insertion order.
 */
export function canonicalJson(value: JsonValue): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new RangeError(`canonicalJson: ${value} is not a finite number`);
    return JSON.stringify(value);
  }
  if (isJsonArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const keys = Object.keys(value).sort();
  return `{${keys.map((key) => `${JSON.stringify(key)}:${canonicalJson(value[key] ?? null)}`).join(',')}}`;
}

function isJsonArray(value: JsonValue): value is readonly JsonValue[] {
  return Array.isArray(value);
}

/** UTF-16 code-unit order, the one order every canonical encoding sorts by (as Array#sort does by default). */
export function compareStrings(a: string, b: string): -1 | 0 | 1 {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function sortedStrings(values: Iterable<string>): string[] {
  return [...values].sort(compareStrings);
}

/** Entries sorted by key, for canonical maps. */
export function sortedEntries<T>(entries: Iterable<readonly [string, T]>): [string, T][] {
  return [...entries].map(([key, value]): [string, T] => [key, value]).sort(([x], [y]) => compareStrings(x, y));
}

/** SHA-256 (hex) of the canonical encoding: what two regions exchange to see whether they agree. */
export function digest<S>(type: Crdt<S, unknown>, state: S): string {
  return createHash('sha256').update(`${type.name}\n${canonicalJson(type.encode(state))}`).digest('hex');
}

/** State equality by canonical encoding (exact, no hashing). */
export function sameState<S>(type: Crdt<S, unknown>, a: S, b: S): boolean {
  return canonicalJson(type.encode(a)) === canonicalJson(type.encode(b));
}
