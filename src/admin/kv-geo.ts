/**
 * The geo levels of the admin Kv service (kv.proto): `kv put|get|delete` at
 * quorum, local or eventual consistency go to the geo-distributed store's
 * last-writer-wins keys (GeoState) instead of the consensus log.
 *
 * The keyspaces are separate (docs/state.md): a value put at a geo level is
 * read at a geo level, one put at strong is read at strong or serializable.
 * A geo value is stored as its bytes in base64 (registers hold JSON), deleted
 * as a tombstone write, and has no revision (0 on the wire), no compare-and-
 * swap and no scope; it may carry a TTL.
 */
import { KV_MAX_VALUE_BYTES, KV_RANGE_MAX_LIMIT } from '../kv/command.ts';
import { canonicalJson } from '../state/crdt/types.ts';
import { entryKey, splitKey, type Entry } from '../state/entry.ts';
import type { GeoState } from '../state/geo-state.ts';
import { registerWinner } from '../state/ops.ts';
import { GEO_LEVELS, type GeoLevel } from '../state/replica.ts';
import { requireTimeout } from './call.ts';
import { geoFailure, invalidArgument, wholeNumber } from './state-service.ts';

/** What a Kv write may name: the consensus log, or a geo level. */
export const KV_WRITE_LEVELS = ['strong', ...GEO_LEVELS] as const;
/** What a Kv read may name; serializable is the consensus keyspace without the leader's barrier. */
export const KV_READ_LEVELS = ['strong', 'serializable', ...GEO_LEVELS] as const;

export function isGeoLevel(level: string): level is GeoLevel {
  return (GEO_LEVELS as readonly string[]).includes(level);
}

export interface GeoWireItem {
  key: string;
  value: Uint8Array;
  revision: number;
  create_revision: number;
  region: string;
  hlc: string;
}

const REGISTER = 'lww-register' as const;

/** Scope belongs to the consensus keyspace; a geo call may leave it empty or at its default. */
function checkNoScope(field: string, scope: string): void {
  if (scope !== '' && scope !== 'datacenter') {
    throw invalidArgument(`${field}: ${scope} is a scope of the consensus log; geo levels have none (for this node's replica of the log, read at consistency serializable)`);
  }
}

export interface KvGeoOptions {
  /** null: this daemon runs no geo store, and geo levels are refused. */
  geo: GeoState | null;
  nodeName: string;
  defaultTimeoutMs: number;
}

export class KvGeo {
  readonly #opts: KvGeoOptions;

  constructor(opts: KvGeoOptions) {
    this.#opts = opts;
  }

  #geo(): GeoState {
    if (this.#opts.geo === null) throw invalidArgument('consistency: this daemon runs no geo-distributed store; use strong');
    return this.#opts.geo;
  }

  #item(key: string, entry: Entry): GeoWireItem | null {
    const value = this.#geo().valueOf(entry);
    if (value === undefined) return null;
    const winner = registerWinner(entry);
    const bytes = typeof value === 'string' ? Buffer.from(value, 'base64') : Buffer.from(canonicalJson(value), 'utf8');
    return {
      key: splitKey(key).name,
      value: bytes,
      revision: 0,
      create_revision: 0,
      region: winner?.region ?? '',
      hlc: winner === null ? '' : `${winner.ts.wallMs}.${winner.ts.logical}`,
    };
  }

  /** A put (value) or delete (value null) at a geo level. */
  async write(
    key: string,
    value: Uint8Array | null,
    level: GeoLevel,
    o: { scope: string; timeout_ms: number; ttl_ms?: string | number },
  ): Promise<Record<string, unknown>> {
    checkNoScope('options.scope', o.scope);
    if (value !== null && value.byteLength > KV_MAX_VALUE_BYTES) throw invalidArgument(`value: ${value.byteLength} bytes, above the ${KV_MAX_VALUE_BYTES}-byte limit`);
    const ttlMs = wholeNumber('options.ttl_ms', o.ttl_ms ?? 0);
    const geo = this.#geo();
    try {
      const out = await geo.update(key, REGISTER, value === null ? { op: 'delete' } : { op: 'put', value: Buffer.from(value).toString('base64') }, level, {
        ttlMs: ttlMs === 0 ? null : ttlMs,
        timeoutMs: requireTimeout(o.timeout_ms, this.#opts.defaultTimeoutMs),
      });
      return { ok: true, revision: 0, reason: '', current_revision: 0, leader: this.#opts.nodeName, consistency: level, regions_acked: out.acked, regions_total: out.total };
    } catch (err) {
      throw geoFailure(err);
    }
  }

  /** A get of one key, or (local and eventual only) of a prefix, at a geo level. */
  async read(r: { key: string; scope: string; prefix: boolean; limit: number; timeout_ms: number }, level: GeoLevel): Promise<Record<string, unknown>> {
    checkNoScope('scope', r.scope);
    const geo = this.#geo();
    try {
      if (r.prefix) {
        if (level === 'quorum') throw invalidArgument('prefix: a prefix read is local or eventual at geo levels (a quorum read names one key)');
        const limit = r.limit === 0 ? KV_RANGE_MAX_LIMIT : r.limit;
        if (limit > KV_RANGE_MAX_LIMIT) throw invalidArgument(`limit ${limit} is above the ${KV_RANGE_MAX_LIMIT}-item maximum`);
        // Deleted and expired keys are skipped after the limit is applied, so a page may come back short.
        const items = geo.list(entryKey(REGISTER, r.key), limit).flatMap(([key, entry]) => this.#item(key, entry) ?? []);
        return { items, applied_index: 0, regions_answered: 1, regions_total: geo.regions };
      }
      const key = entryKey(REGISTER, r.key);
      const read = await geo.read([key], level, requireTimeout(r.timeout_ms, this.#opts.defaultTimeoutMs));
      const entry = read.entries.get(key);
      const item = entry === undefined ? null : this.#item(key, entry);
      return { items: item === null ? [] : [item], applied_index: 0, regions_answered: read.answered, regions_total: read.total };
    } catch (err) {
      throw geoFailure(err);
    }
  }
}
