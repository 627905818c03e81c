/**
 * The vocabulary of the pure Raft core: log entries, hard state, snapshots,
 * messages, the Ready batch handed to a driver, and the tunables with their
 * limits.
 *
 * Invariants the types carry (checked where they are built, see core.ts):
 * - Entry indices in a log are contiguous; entry terms never decrease along it.
 * - A config entry carries the whole membership it establishes, not a delta,
 *   so the membership in force at any index is the latest config entry at or
 *   before it (or the snapshot's), and truncating a log reverts it for free.
 * - Every message carries the sender's current term; a message that
 *   promises anything about the sender's disk is sent only once every storage
 *   write handed out up to its Ready is durable (see Ready).
 * - Every queue and batch has an explicit bound in RaftConfig.
 */
import { DwcpError } from '../../errors.ts';

export type NodeId = string;

export interface Membership {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

export interface NormalEntry {
  readonly kind: 'normal';
  readonly index: number;
  readonly term: number;
  /** The state machine's command; empty for the no-op a new leader appends. */
  readonly data: Uint8Array;
}

export interface ConfigEntry {
  readonly kind: 'config';
  readonly index: number;
  readonly term: number;
  /** The membership in force from this entry on (as soon as it is appended). */
  readonly membership: Membership;
}

export type Entry = NormalEntry | ConfigEntry;

/** What must survive a crash besides the log: the vote may be cast once per term. */
export interface HardState {
  readonly term: number;
  readonly vote: NodeId | null;
  readonly commit: number;
}

export interface SnapshotMeta {
  /** Last log index the snapshot covers; the log continues at index + 1. */
  readonly index: number;
  readonly term: number;
  readonly membership: Membership;
}

/**
 * A snapshot's bytes, which the core never looks into: it only slices chunks
 * of them for a follower. A Uint8Array is one (the simulator's, and a
 * snapshot received from a leader); so is a snapshot the driver keeps in its
 * file and reads a chunk at a time (storage.ts), so that a member does not
 * hold its whole state encoded in memory besides the state itself.
 * subarray(start, end) returns bytes [start, end) (a view or a fresh copy)
 * and the same bytes every time it is asked.
 */
export interface SnapshotData {
  readonly byteLength: number;
  subarray(start: number, end: number): Uint8Array;
}

/** All of a snapshot's bytes, for a consumer that needs them at once (a state machine's restore). */
export function snapshotBytes(data: SnapshotData): Uint8Array {
  return data instanceof Uint8Array ? data : data.subarray(0, data.byteLength);
}

/**
 * A state machine's snapshot as the driver writes it: its exact size, then
 * its bytes in order a piece at a time, each piece valid until the next is
 * asked for (so an encoder can reuse one buffer). The pieces are produced
 * while the machine goes on applying entries: they describe the state at the
 * moment the source was taken.
 */
export interface SnapshotSource {
  readonly byteLength: number;
  chunks(): Iterable<Uint8Array>;
}

export interface Snapshot {
  readonly meta: SnapshotMeta;
  /** The state machine's own encoding; opaque to the core. */
  readonly data: SnapshotData;
}

/** What a driver loads from its disk to (re)start a core. */
export interface PersistedState {
  readonly hardState: HardState;
  readonly snapshot: Snapshot;
  /** Entries after snapshot.meta.index, contiguous. */
  readonly entries: readonly Entry[];
  /** Index the state machine already reflects (defaults to the snapshot's). */
  readonly applied?: number;
}

interface Envelope {
  readonly from: NodeId;
  readonly to: NodeId;
  readonly term: number;
}

export interface VoteRequest extends Envelope {
  readonly type: 'vote_request';
  /** A PreVote asks "would you vote for me at `term`?" and changes no state. */
  readonly preVote: boolean;
  /** Set by a transferee told to campaign (TimeoutNow): voters skip their leader lease. */
  readonly transfer: boolean;
  readonly lastIndex: number;
  readonly lastTerm: number;
}

export interface VoteResponse extends Envelope {
  readonly type: 'vote_response';
  readonly preVote: boolean;
  readonly granted: boolean;
}

export interface AppendRequest extends Envelope {
  readonly type: 'append';
  readonly prevIndex: number;
  readonly prevTerm: number;
  readonly entries: readonly Entry[];
  readonly commit: number;
}

export interface AppendResponse extends Envelope {
  readonly type: 'append_response';
  readonly success: boolean;
  /** On success the follower's log matches the leader's up to here; on reject the refused prevIndex. */
  readonly index: number;
  /** On reject: the follower's last index whose term is <= the refused prevTerm, and that term. */
  readonly hintIndex: number;
  readonly hintTerm: number;
}

export interface Heartbeat extends Envelope {
  readonly type: 'heartbeat';
  /** min(leader commit, follower match): never past what the follower is known to hold. */
  readonly commit: number;
  /** Latest ReadIndex round of this leader; echoed back to confirm leadership. */
  readonly readSeq: number;
}

export interface HeartbeatResponse extends Envelope {
  readonly type: 'heartbeat_response';
  readonly readSeq: number;
}

export interface SnapshotChunk extends Envelope {
  readonly type: 'snapshot_chunk';
  readonly meta: SnapshotMeta;
  readonly offset: number;
  readonly totalBytes: number;
  readonly data: Uint8Array;
}

export interface SnapshotChunkResponse extends Envelope {
  readonly type: 'snapshot_response';
  readonly index: number;
  /** The byte offset the follower expects next for the snapshot at `index`. */
  readonly nextOffset: number;
}

export interface TimeoutNow extends Envelope {
  readonly type: 'timeout_now';
}

export interface ReadIndexRequest extends Envelope {
  readonly type: 'read_index';
  readonly ctx: string;
}

export interface ReadIndexResponse extends Envelope {
  readonly type: 'read_index_response';
  readonly ctx: string;
  readonly index: number;
}

export type Message =
  | VoteRequest
  | VoteResponse
  | AppendRequest
  | AppendResponse
  | Heartbeat
  | HeartbeatResponse
  | SnapshotChunk
  | SnapshotChunkResponse
  | TimeoutNow
  | ReadIndexRequest
  | ReadIndexResponse;

export type MessageType = Message['type'];

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
/** A message as the core composes it; the sender and term are stamped on when it is queued. */
export type Outgoing = DistributiveOmit<Message, 'from' | 'term'>;

export type Role = 'follower' | 'pre_candidate' | 'candidate' | 'leader';

/** A confirmed linearizable read: serve it once the state machine has applied `index`. */
export interface ReadState {
  readonly ctx: string;
  readonly index: number;
}

/**
 * One batch of work for the driver. Storage writes are asynchronous: the
 * driver starts a Ready's write and goes on to the next Ready without waiting
 * for it (etcd's AsyncStorageWrites). The contract:
 *  1. if `mustSync`, queue one durable write of `snapshot` (it replaces the
 *     whole stored log), then `entries` (first deleting any stored entry with
 *     index >= entries[0].index), then `hardState`. Writes land whole, in the
 *     order their Readys were handed out (a crash loses a suffix of them).
 *     Without mustSync nothing is written: `hardState` then differs only in
 *     its commit index, which may be lost in a crash (it is relearned);
 *  2. send `messages` now: a leader's appends, heartbeats and the like, which
 *     promise nothing about its own disk;
 *  3. send `persistMessages` only once this Ready's write and every earlier
 *     one are durable (at once if none is pending): a vote, an append ack,
 *     any message at a term the disk may not hold yet;
 *  4. restore the state machine from `snapshot` if set, then apply
 *     `committed` in order (committed entries are durable on a majority, not
 *     necessarily here yet), then serve `readStates` whose index is applied;
 *  5. call advance(ready) before asking for the next Ready, and
 *     persisted(ready) once a mustSync Ready's write is durable, in order.
 * The leader counts its own copy of an entry towards a quorum only once
 * persisted() says it is durable.
 */
export interface Ready {
  readonly hardState: HardState | null;
  readonly snapshot: Snapshot | null;
  readonly entries: readonly Entry[];
  readonly mustSync: boolean;
  readonly committed: readonly Entry[];
  /** May leave at once. */
  readonly messages: readonly Message[];
  /** Leave once every write handed out so far, this Ready's included, is durable. */
  readonly persistMessages: readonly Message[];
  readonly readStates: readonly ReadState[];
  /** Set when role or known leader changed since the previous Ready (for status and metrics). */
  readonly softState: { readonly role: Role; readonly leader: NodeId | null } | null;
}

export type DropReason =
  | 'uncommitted_limit'
  | 'too_large'
  | 'transferring'
  | 'pending_read_limit'
  | 'leader_not_ready'
  | 'config_change_in_flight'
  | 'learner_behind';

export type ProposeResult =
  | { readonly kind: 'accepted'; readonly index: number; readonly term: number }
  | { readonly kind: 'not_leader'; readonly leaderHint: NodeId | null }
  | { readonly kind: 'dropped'; readonly reason: DropReason };

export type ReadIndexResult =
  | { readonly kind: 'pending' }
  | { readonly kind: 'not_leader'; readonly leaderHint: NodeId | null }
  | { readonly kind: 'dropped'; readonly reason: DropReason };

export type TransferResult =
  | { readonly kind: 'started' }
  | { readonly kind: 'not_leader'; readonly leaderHint: NodeId | null }
  | { readonly kind: 'rejected'; readonly reason: string };

export type ConfigChange =
  | { readonly type: 'add_learner'; readonly node: NodeId }
  | { readonly type: 'promote'; readonly node: NodeId }
  | { readonly type: 'remove'; readonly node: NodeId };

export interface RaftConfig {
  /** Election timeout T in ticks; followers wait a random [T, 2T). */
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  readonly preVote: boolean;
  readonly checkQuorum: boolean;
  /** Appends in flight per follower in replicate state (the inflight window). */
  readonly maxInflightAppends: number;
  readonly maxInflightBytes: number;
  readonly maxEntriesPerAppend: number;
  readonly maxBytesPerAppend: number;
  /** Bounds on the leader's uncommitted tail; proposals beyond are dropped. */
  readonly maxUncommittedEntries: number;
  readonly maxUncommittedBytes: number;
  readonly maxProposalBytes: number;
  readonly maxPendingReads: number;
  readonly snapshotChunkBytes: number;
  /** Largest snapshot a follower will buffer while receiving chunks. */
  readonly maxSnapshotBytes: number;
  /** A learner may be promoted once its match is at most this far behind the leader's last index. */
  readonly maxLearnerLag: number;
  /** Bound on committed entry bytes handed out per Ready (at least one entry is). */
  readonly maxApplyBytesPerReady: number;
}

export const DEFAULT_RAFT_CONFIG: RaftConfig = {
  electionTicks: 10,
  heartbeatTicks: 1,
  preVote: true,
  checkQuorum: true,
  maxInflightAppends: 256,
  maxInflightBytes: 32 * 1024 * 1024,
  maxEntriesPerAppend: 1024,
  maxBytesPerAppend: 1024 * 1024,
  maxUncommittedEntries: 16 * 1024,
  maxUncommittedBytes: 64 * 1024 * 1024,
  maxProposalBytes: 1024 * 1024,
  maxPendingReads: 4096,
  snapshotChunkBytes: 512 * 1024,
  maxSnapshotBytes: 1024 * 1024 * 1024,
  maxLearnerLag: 64,
  maxApplyBytesPerReady: 16 * 1024 * 1024,
};

/** A broken internal invariant: the core's state can no longer be trusted. */
export class RaftInvariantError extends DwcpError<'internal'> {
  constructor(message: string) {
    super('internal', message);
  }
}

/** Input that no correct peer or caller produces (a malformed message, a bad argument). */
export class RaftInputError extends DwcpError<'invalid'> {
  constructor(message: string) {
    super('invalid', message);
  }
}

export function invariant(condition: boolean, message: () => string): asserts condition {
  if (!condition) throw new RaftInvariantError(message());
}

export function resolveRaftConfig(overrides: Partial<RaftConfig> = {}): RaftConfig {
  const config: RaftConfig = { ...DEFAULT_RAFT_CONFIG, ...overrides };
  for (const [field, value] of Object.entries(config)) {
    if (typeof value === 'boolean') continue;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
      throw new RaftInputError(`raft config ${field} must be a positive integer, got ${String(value)}`);
    }
  }
  if (config.heartbeatTicks >= config.electionTicks) {
    throw new RaftInputError(
      `raft config heartbeatTicks (${config.heartbeatTicks}) must be below electionTicks (${config.electionTicks})`,
    );
  }
  return config;
}

/** Fixed per-entry overhead counted against byte limits, so empty entries still cost something. */
const ENTRY_OVERHEAD_BYTES = 24;

export function entryBytes(entry: Entry): number {
  if (entry.kind === 'normal') return ENTRY_OVERHEAD_BYTES + entry.data.length;
  let ids = 0;
  for (const id of entry.membership.voters) ids += id.length;
  for (const id of entry.membership.learners) ids += id.length;
  return ENTRY_OVERHEAD_BYTES + ids;
}

export const EMPTY_MEMBERSHIP: Membership = { voters: [], learners: [] };
