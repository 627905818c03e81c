/**
 * The messages StateReplica cores exchange (over `/dwcp/sync/1.0.0` in the
 * daemon, over the simulated network in tests), as typed values; wire.ts
 * turns them into bytes.
 *
 * - push / push-ack: changes as they happen. A push carries deltas (each
 *   applies only on a replica whose clock for the key dominates its `since`)
 *   or full entries (always mergeable, used for quorum writes and repairs).
 *   Every push is acknowledged once the receiver has made what it merged
 *   durable; the ack lists keys whose delta did not apply (the receiver was
 *   behind), which the sender then repairs with full entries.
 * - read / read-reply: a quorum read asks every region for its copy.
 * - digest, summaries, want, updates: one anti-entropy round, started by the
 *   initiator with its bucket digests (see reconcile.ts).
 * - status-request / status-reply: `dwcpctl state digest` asks every region
 *   for its digest and clock.
 */
import type { Hlc } from './clock/hlc.ts';
import type { VectorClock } from './clock/vector-clock.ts';
import type { CrdtType } from './entry.ts';

/** An entry, or a delta of one. */
export interface EntryUpdate {
  readonly key: string;
  readonly type: CrdtType;
  readonly state: unknown;
  /** The entry's clock once this update is merged. */
  readonly clock: VectorClock;
  readonly expiresAt: Hlc | null;
  /** null: a full entry. Otherwise a delta, to merge only into an entry whose clock dominates this one. */
  readonly since: VectorClock | null;
}

/** What an anti-entropy round compares per key. */
export interface EntrySummary {
  readonly key: string;
  readonly clock: VectorClock;
  /** entryHash of the sender's copy. */
  readonly hash: Uint8Array;
  /** Yjs state vector for a yjs-record (so the other side sends only the structs it lacks); empty otherwise. */
  readonly stateVector: Uint8Array;
}

/** A key the initiator lacks (in part), with what it has so the answer can be a diff. */
export interface EntryWant {
  readonly key: string;
  readonly clock: VectorClock;
  readonly stateVector: Uint8Array;
}

export type SyncMessage =
  | { readonly kind: 'push'; readonly id: number; readonly updates: readonly EntryUpdate[] }
  | { readonly kind: 'push-ack'; readonly id: number; readonly behind: readonly string[] }
  | { readonly kind: 'read'; readonly id: number; readonly keys: readonly string[] }
  | { readonly kind: 'read-reply'; readonly id: number; readonly updates: readonly EntryUpdate[] }
  | { readonly kind: 'digest'; readonly session: number; readonly buckets: Uint8Array }
  | {
      readonly kind: 'summaries';
      readonly session: number;
      readonly summaries: readonly EntrySummary[];
      /** On the last message of the round: the buckets the summaries cover (the ones that differ, or as many as fit). */
      readonly buckets: readonly number[];
      readonly done: boolean;
      /** Some differing buckets did not fit this round: start another. */
      readonly truncated: boolean;
    }
  | { readonly kind: 'want'; readonly session: number; readonly wants: readonly EntryWant[]; readonly done: boolean }
  | {
      readonly kind: 'updates';
      readonly session: number;
      /** Sent by the responder (answering a want) rather than by the round's initiator. */
      readonly reply: boolean;
      readonly updates: readonly EntryUpdate[];
      readonly done: boolean;
      readonly truncated: boolean;
    }
  | { readonly kind: 'status-request'; readonly id: number }
  | { readonly kind: 'status-reply'; readonly id: number; readonly status: ReplicaStatus };

export type SyncMessageKind = SyncMessage['kind'];

/** One region's view of its own store, for convergence checks. */
export interface ReplicaStatus {
  /** SHA-256 over every bucket digest: equal in two regions iff they hold the same entries (up to collisions). */
  readonly digest: Uint8Array;
  readonly entries: number;
  /** Pointwise max of every entry's clock: the latest write of each region this region holds. */
  readonly clock: VectorClock;
}

export interface Outbound {
  readonly to: string;
  readonly message: SyncMessage;
}
