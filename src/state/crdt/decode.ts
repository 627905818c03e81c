/**
 * Validation of untrusted peer state: every reader takes the raw parsed value
 * and a field path, and either returns a typed value or throws a
 * StateDecodeError whose `field` is that path (e.g. `or-set.entries[3].tags[0]`).
 *
 * Invariants: readers never coerce (a string "3" is not a counter) and objects
 * with unknown keys are rejected, so a decoded state re-encodes to the same
 * canonical bytes a well-behaved peer would have sent.
 */
import type { JsonValue, RegionId } from './types.ts';
import { DwcpError } from '../../errors.ts';

/** Region ids are names from config; anything longer is garbage or an attack. */
export const MAX_REGION_LENGTH = 128;
/** Set elements are keys (VM ids, inventory names), not payloads. */
export const MAX_ELEMENT_LENGTH = 1024;

export class StateDecodeError extends DwcpError<'invalid'> {
  readonly field: string;

  constructor(field: string, problem: string) {
    super('invalid', `${field}: ${problem}`);
    this.field = field;
  }
}

function describe(raw: unknown): string {
  if (raw === null) return 'null';
  if (Array.isArray(raw)) return 'an array';
  if (typeof raw === 'string') return `string ${JSON.stringify(raw.slice(0, 40))}`;
  return typeof raw === 'object' || typeof raw === 'function' ? Object.prototype.toString.call(raw) : `${typeof raw} ${String(raw).slice(0, 40)}`;
}

/** A plain object; with `keys`, one that has no other fields (without, a map with arbitrary keys). */
export function readObject(raw: unknown, field: string, keys?: readonly string[]): Record<string, unknown> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new StateDecodeError(field, `must be an object, got ${describe(raw)}`);
  }
  const record = raw as Record<string, unknown>;
  if (keys === undefined) return record;
  for (const key of Object.keys(record)) {
    if (!keys.includes(key)) throw new StateDecodeError(`${field}.${key}`, `is not a known field (expected ${keys.join(', ')})`);
  }
  return record;
}

export function readArray(raw: unknown, field: string): readonly unknown[] {
  if (!Array.isArray(raw)) throw new StateDecodeError(field, `must be an array, got ${describe(raw)}`);
  return raw;
}

/** A non-negative safe integer: counters, HLC parts. */
export function readCount(raw: unknown, field: string): number {
  if (typeof raw !== 'number' || !Number.isSafeInteger(raw) || raw < 0) {
    throw new StateDecodeError(field, `must be a non-negative safe integer, got ${describe(raw)}`);
  }
  return raw;
}

export function readString(raw: unknown, field: string, maxLength: number): string {
  if (typeof raw !== 'string') throw new StateDecodeError(field, `must be a string, got ${describe(raw)}`);
  if (raw.length > maxLength) throw new StateDecodeError(field, `is ${raw.length} characters, limit ${maxLength}`);
  return raw;
}

export function readRegion(raw: unknown, field: string): RegionId {
  const region = readString(raw, field, MAX_REGION_LENGTH);
  if (region.length === 0) throw new StateDecodeError(field, 'region id must not be empty');
  return region;
}

/** Throws unless `region` is a usable region id; mutators call it on their own input. */
export function assertRegion(region: string, field = 'region'): void {
  if (region.length === 0 || region.length > MAX_REGION_LENGTH) {
    throw new RangeError(`${field}: region id must be 1..${MAX_REGION_LENGTH} characters, got ${region.length}`);
  }
}

/** Deep check that `raw` is JSON (finite numbers, plain objects, arrays); nesting is bounded. */
export function readJson(raw: unknown, field: string, depth = 0): JsonValue {
  if (depth > 64) throw new StateDecodeError(field, 'nesting deeper than 64 levels');
  if (raw === null || typeof raw === 'boolean' || typeof raw === 'string') return raw;
  if (typeof raw === 'number') {
    if (!Number.isFinite(raw)) throw new StateDecodeError(field, `must be a finite number, got ${raw}`);
    return raw;
  }
  if (Array.isArray(raw)) return raw.map((item, i) => readJson(item, `${field}[${i}]`, depth + 1));
  const proto: unknown = typeof raw === 'object' ? Object.getPrototypeOf(raw) : undefined;
  if (typeof raw === 'object' && (proto === Object.prototype || proto === null)) {
    return Object.fromEntries(Object.entries(raw).map(([key, item]) => [key, readJson(item, `${field}.${key}`, depth + 1)]));
  }
  throw new StateDecodeError(field, `must be JSON, got ${describe(raw)}`);
}

/** Rejects a duplicate in a list that encodes a set or map: a canonical encoding never repeats a key. */
export function rejectDuplicate(seen: Set<string>, key: string, field: string): void {
  if (seen.has(key)) throw new StateDecodeError(field, `duplicate ${JSON.stringify(key)}`);
  seen.add(key);
}
