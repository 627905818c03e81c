/**
 * KvGeoKeyspace: the geo levels of the key-value API (quorum, local,
 * eventual) over the geo-distributed store's last-writer-wins registers
 * (GeoState), replicated between regions without consensus.
 *
 * A separate keyspace from the consensus log's (docs/state.md): a value put
 * at a geo level is read at a geo level. The KV value encoding lives here and
 * only here: registers hold JSON, so a KV value is stored as its bytes in
 * base64; a register written as other JSON through the State service reads
 * back as that JSON's canonical UTF-8 text. A delete is a tombstone write. A
 * geo value has no revision, no compare-and-swap and no scope; it may carry a
 * TTL.
 *
 * Failures of the store itself are GeoStateErrors (src/state/geo-state.ts);
 * requests this keyspace cannot serve are KvServiceErrors.
 */
import { canonicalJson } from '../state/crdt/types.ts';
import { entryKey, splitKey, type Entry } from '../state/entry.ts';
import type { GeoState } from '../state/geo-state.ts';
import { registerWinner } from '../state/ops.ts';
import { KV_MAX_VALUE_BYTES } from './command.ts';
import type { GeoLevel } from './consistency.ts';
import type { KvKeyRead } from './read.ts';
import { KvServiceError } from './service.ts';

const REGISTER = 'lww-register' as const;

export interface KvGeoItem {
  /** The KV key (without the store's type prefix). */
  key: string;
  value: Uint8Array;
  /** The region whose write this value is, and its hybrid logical clock stamp; null for a value with no single writer. */
  written: { region: string; wallMs: number; logical: number } | null;
}

export interface KvGeoWriteOutcome {
  level: GeoLevel;
  /** Regions holding the write durably when it returned (0 for eventual), of all regions. */
  acked: number;
  total: number;
}

export interface KvGeoReadOutcome {
  items: KvGeoItem[];
  /** Regions whose copies the answer merges, of all regions. */
  answered: number;
  total: number;
}

export class KvGeoKeyspace {
  readonly #geo: GeoState;

  constructor(geo: GeoState) {
    this.#geo = geo;
  }

  /** A put (value) or a delete (value null); ttlMs null: the value never expires. */
  async write(key: string, value: Uint8Array | null, level: GeoLevel, opts: { ttlMs: number | null; timeoutMs: number }): Promise<KvGeoWriteOutcome> {
    if (value !== null && value.byteLength > KV_MAX_VALUE_BYTES) throw new KvServiceError('invalid', `value: ${value.byteLength} bytes, above the ${KV_MAX_VALUE_BYTES}-byte limit`);
    const op = value === null ? ({ op: 'delete' } as const) : ({ op: 'put', value: Buffer.from(value).toString('base64') } as const);
    const out = await this.#geo.update(key, REGISTER, op, level, opts);
    return { level, acked: out.acked, total: out.total };
  }

  /** One key at any geo level, or (local and eventual only) up to `limit` keys under a prefix. */
  async read(req: KvKeyRead & { level: GeoLevel; timeoutMs: number }): Promise<KvGeoReadOutcome> {
    const geo = this.#geo;
    if (req.prefix) {
      if (req.level === 'quorum') throw new KvServiceError('invalid', 'prefix: a prefix read is local or eventual at geo levels (a quorum read names one key)');
      // Deleted and expired keys are skipped after the limit is applied, so a page may come back short.
      const items = geo.list(entryKey(REGISTER, req.key), req.limit).flatMap(([key, entry]) => this.#item(key, entry) ?? []);
      return { items, answered: 1, total: geo.regions };
    }
    const key = entryKey(REGISTER, req.key);
    const read = await geo.read([key], req.level, req.timeoutMs);
    const entry = read.entries.get(key);
    const item = entry === undefined ? null : this.#item(key, entry);
    return { items: item === null ? [] : [item], answered: read.answered, total: read.total };
  }

  /** A register's value as KV bytes, or null when deleted or expired. */
  #item(storeKey: string, entry: Entry): KvGeoItem | null {
    const value = this.#geo.valueOf(entry);
    if (value === undefined) return null;
    const winner = registerWinner(entry);
    return {
      key: splitKey(storeKey).name,
      value: typeof value === 'string' ? Buffer.from(value, 'base64') : Buffer.from(canonicalJson(value), 'utf8'),
      written: winner === null ? null : { region: winner.region, wallMs: winner.ts.wallMs, logical: winner.ts.logical },
    };
  }
}
