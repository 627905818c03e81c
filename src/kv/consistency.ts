/**
 * The words a key-value request names its target with, defined once: the
 * scope (which consensus log) and the consistency level (which keyspace, and
 * how fresh). The CLI, the admin adapter, the router and the geo store all
 * import these lists; kv.proto's comments repeat them for readers of the wire,
 * but nothing validates against anything else.
 *
 * Two keyspaces (docs/state.md), one vocabulary:
 * - consensus levels: `strong` is the consensus log of the scope (a read
 *   waits for the leader's barrier, or is ordered through PBFT);
 *   `serializable` (reads only) is this node's replica of that same log,
 *   without the barrier: possibly stale, but served with no leader.
 * - geo levels: `quorum`, `local` and `eventual` are the geo-distributed
 *   store's last-writer-wins keys, a separate keyspace. `local` never means
 *   "this node's replica of the log": that is `serializable`.
 *
 * A leaf module with no imports, so the geo store (src/state) and the CLI can
 * use it without depending on the rest of src/kv.
 */

/** Which consensus log serves a request: the trusted members' Raft log, or the whole federation's (PBFT when any member is untrusted). */
export const KV_SCOPES = ['datacenter', 'federation'] as const;
export type KvScope = (typeof KV_SCOPES)[number];

/** Levels of the consensus log's keyspace. */
export const CONSENSUS_LEVELS = ['strong', 'serializable'] as const;
export type ConsensusLevel = (typeof CONSENSUS_LEVELS)[number];

/** Levels of the geo-distributed store's keyspace (also the State service's levels). */
export const GEO_LEVELS = ['quorum', 'local', 'eventual'] as const;
export type GeoLevel = (typeof GEO_LEVELS)[number];

/** What a read may name. */
export const KV_READ_LEVELS = [...CONSENSUS_LEVELS, ...GEO_LEVELS] as const;
export type KvReadLevel = (typeof KV_READ_LEVELS)[number];

/** What a write may name: serializable is a way of reading the log, not of writing it. */
export const KV_WRITE_LEVELS = ['strong', ...GEO_LEVELS] as const;
export type KvWriteLevel = (typeof KV_WRITE_LEVELS)[number];

export function isGeoLevel(level: string): level is GeoLevel {
  return (GEO_LEVELS as readonly string[]).includes(level);
}
