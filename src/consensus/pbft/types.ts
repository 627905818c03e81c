/**
 * The vocabulary of the pure PBFT core (Castro & Liskov, OSDI '99): client
 * requests, the signed protocol messages, the certificates built from them,
 * the Ready batch handed to a driver, and the tunables with their limits.
 *
 * Invariants the types carry (checked where messages arrive, see core.ts):
 * - Every message is immutable once built and names its sender in `from`.
 *   Messages that may be shown to a third party as evidence (everything but
 *   a relayed request and a reply) are signed by `from` over
 *   signingBytes(message) (encoding.ts), so anyone may forward them inside a
 *   certificate or in answer to a fetch. A relayed request and a reply are
 *   never forwarded: the channel they arrive on (Noise, keyed by the
 *   member's libp2p key) authenticates `from`, and they carry no signature.
 *   docs/consensus.md gives the safety argument.
 * - A digest is the lowercase hex SHA-256 of a canonical encoding, so equal
 *   digests mean equal content on every replica.
 * - Sequence numbers start at 1; 0 is the genesis checkpoint every replica
 *   shares without proof. Views start at 0; the primary of view v is
 *   members[v mod n].
 * - Every queue, buffer and batch has an explicit bound in PbftConfig.
 */
import { DwcpError } from '../../errors.ts';

export type ReplicaId = string;
export type ClientId = string;
/** Lowercase hex SHA-256. */
export type Digest = string;

/**
 * A client's operation, signed by the client. (client, timestamp) identifies
 * it: timestamps of one client increase, and a replica executes each at most
 * once. Read-only requests are ordered like writes (see core.ts).
 *
 * Two ways to sign: without `path`, `signature` covers signingBytes(request)
 * (the request alone); with `path`, it covers the root of a client batch
 * (encoding.ts sealClientBatch), which the request's leaf and `path` fold up
 * to, so one signature serves every request the client sent in one turn.
 */
export interface ClientRequest {
  readonly client: ClientId;
  readonly timestamp: number;
  readonly operation: Uint8Array;
  readonly readOnly: boolean;
  readonly signature: Uint8Array;
  /** Sibling hashes (32 bytes each) from this request's leaf to its client batch's signed root. */
  readonly path?: readonly Uint8Array[];
}

/** A message only its sender's authenticated channel vouches for: never evidence, never forwarded. */
interface FromPeer {
  readonly from: ReplicaId;
}

/** A message that may become evidence: signed by `from`, so a third party can check it. */
interface Signed extends FromPeer {
  readonly signature: Uint8Array;
}

/**
 * A client request relayed between replicas, so every backup can time the
 * primary on it. Unsigned: the request inside carries the client's signature,
 * which is what a pre-prepare later shows as evidence.
 */
export interface RequestMessage extends FromPeer {
  readonly type: 'request';
  readonly request: ClientRequest;
}

export interface PrePrepare extends Signed {
  readonly type: 'pre_prepare';
  readonly view: number;
  readonly seq: number;
  /** batchDigest(batch); an empty batch is the null request of a new view. */
  readonly digest: Digest;
  readonly batch: readonly ClientRequest[];
}

export interface Prepare extends Signed {
  readonly type: 'prepare';
  readonly view: number;
  readonly seq: number;
  readonly digest: Digest;
}

export interface Commit extends Signed {
  readonly type: 'commit';
  readonly view: number;
  readonly seq: number;
  readonly digest: Digest;
}

/** The replica's state digest right after executing `seq` (a multiple of the checkpoint interval). */
export interface Checkpoint extends Signed {
  readonly type: 'checkpoint';
  readonly seq: number;
  readonly digest: Digest;
}

/** A pre-prepare and 2f matching prepares from distinct backups: the request was prepared in that view. */
export interface PreparedCertificate {
  readonly prePrepare: PrePrepare;
  readonly prepares: readonly Prepare[];
}

/** A pre-prepare and 2f + 1 matching commits from distinct replicas: the request is committed for good. */
export interface CommitCertificate {
  readonly prePrepare: PrePrepare;
  readonly commits: readonly Commit[];
}

export interface CheckpointRef {
  readonly seq: number;
  readonly digest: Digest;
}

export interface ViewChange extends Signed {
  readonly type: 'view_change';
  /** The view the sender moves to. */
  readonly view: number;
  /** The sender's stable checkpoint and its proof (2f + 1 checkpoint messages; none for genesis). */
  readonly checkpoint: CheckpointRef;
  readonly checkpointProof: readonly Checkpoint[];
  /** For each sequence number above the checkpoint, the sender's highest-view prepared certificate. */
  readonly prepared: readonly PreparedCertificate[];
}

export interface NewView extends Signed {
  readonly type: 'new_view';
  readonly view: number;
  /** 2f + 1 view-change messages for `view` from distinct replicas. */
  readonly viewChanges: readonly ViewChange[];
  /** The O set: one pre-prepare of `view` per sequence number in (min-s, max-s]. */
  readonly prePrepares: readonly PrePrepare[];
}

/** A replica that stalled asks for the commit certificate of `seq`. */
export interface Fetch extends Signed {
  readonly type: 'fetch';
  readonly seq: number;
}

export interface Committed extends Signed {
  readonly type: 'committed';
  readonly certificate: CommitCertificate;
}

/** A replica that fell behind asks for a stable checkpoint at or after `seq`. */
export interface StateRequest extends Signed {
  readonly type: 'state_request';
  readonly seq: number;
}

/** The execution state at a checkpoint: what its digest covers. */
export interface CheckpointState {
  /** The state machine's canonical snapshot: equal states must encode to equal bytes. */
  readonly snapshot: Uint8Array;
  /** The reply cache, sorted by client: dedup must survive state transfer. */
  readonly clients: readonly ClientRecord[];
}

export interface StateMessage extends Signed {
  readonly type: 'state';
  readonly checkpoint: CheckpointRef;
  readonly proof: readonly Checkpoint[];
  readonly state: CheckpointState;
  /** Commit certificates of the entries right after the checkpoint, so the fetcher can go on executing. */
  readonly entries: readonly CommitCertificate[];
}

/** Asked by a replica that sees f + 1 peers in views above its own and missed the new-view. */
export interface NewViewRequest extends Signed {
  readonly type: 'new_view_request';
  readonly view: number;
}

export type PbftMessage =
  | RequestMessage
  | PrePrepare
  | Prepare
  | Commit
  | Checkpoint
  | ViewChange
  | NewView
  | Fetch
  | Committed
  | StateRequest
  | StateMessage
  | NewViewRequest;

export type PbftMessageType = PbftMessage['type'];

/**
 * Top-level messages a replica passes on in another member's name, each
 * signed by its author and checked against the author's key, not the
 * sender's:
 * - a new-view is sent on to peers that missed it by whoever holds it
 *   (carrying the 2f + 1 view-changes that justify it);
 * - checkpoints: a replica asked to fetch a slot it has already collected
 *   answers with the 2f + 1 checkpoints that prove its stable checkpoint,
 *   which sends the asker to state transfer.
 * Every other top-level message is the sender's own: the wire and the core
 * refuse one whose `from` is not the member its channel authenticated.
 */
export const FORWARDED_TYPES: ReadonlySet<PbftMessageType> = new Set<PbftMessageType>(['new_view', 'checkpoint']);

/** The messages that carry a signature (see the invariants above). */
export type SignedMessage = Exclude<PbftMessage, RequestMessage>;

/**
 * A replica's answer to a client; the client accepts a result once f + 1
 * replicas agree on it. Unsigned: it reaches the client's member over the
 * replica's authenticated channel (or from the member's own replica) and is
 * never shown to anyone else.
 */
export interface Reply extends FromPeer {
  readonly type: 'reply';
  readonly view: number;
  readonly client: ClientId;
  readonly timestamp: number;
  readonly result: Uint8Array;
}

/** The last executed request of a client, where it executed, and its result (the reply cache). */
export interface ClientRecord {
  readonly client: ClientId;
  readonly timestamp: number;
  /** Sequence number it executed at: orders evictions identically on every replica. */
  readonly seq: number;
  readonly result: Uint8Array;
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
/** A message as the core composes it; sender and signature are added when it is queued. */
export type Unsigned<M extends { readonly from: ReplicaId }> = DistributiveOmit<M, 'from' | 'signature'>;

/** A message to send: to one replica, or (to = null) to every other member. */
export interface Outbound {
  readonly to: ReplicaId | null;
  readonly message: PbftMessage;
}

/** Committed requests for the state machine, in sequence order, duplicates already removed. */
export interface ExecuteBatch {
  readonly seq: number;
  readonly requests: readonly ClientRequest[];
  /** seq is a checkpoint: hand back the state machine's snapshot right after executing this batch. */
  readonly checkpoint: boolean;
}

/** What the driver reports for an ExecuteBatch. */
export interface ExecutionResult {
  readonly seq: number;
  /** One result per request of the batch, in order. */
  readonly results: readonly Uint8Array[];
  /** The canonical snapshot after the batch; required iff the batch is a checkpoint. */
  readonly snapshot: Uint8Array | null;
}

/** A stable checkpoint with what proves it (2f + 1 signed checkpoint messages) and the state itself. */
export interface StableCheckpoint {
  readonly seq: number;
  readonly digest: Digest;
  readonly proof: readonly Checkpoint[];
  readonly state: CheckpointState;
}

/**
 * The durable record of one sequence number: what this replica accepted and
 * voted for, so that after a restart it neither contradicts its own votes nor
 * forgets a prepared certificate a view change must carry.
 */
export interface SlotRecord {
  readonly seq: number;
  /** The view of prePrepare and of this replica's votes. */
  readonly view: number;
  readonly prePrepare: PrePrepare | null;
  readonly sentPrepare: boolean;
  readonly sentCommit: boolean;
  /** Highest-view prepared certificate (may be of an older view than `view`). */
  readonly prepared: PreparedCertificate | null;
  readonly committed: CommitCertificate | null;
}

export interface ViewState {
  readonly view: number;
  /** False between sending a view-change for `view` and accepting its new-view. */
  readonly active: boolean;
  /**
   * The new-view that started `view` (null in view 0 or while changing): a
   * replica forwards it to peers that missed it, also after a restart.
   */
  readonly newView: NewView | null;
}

/** What a driver loads to (re)start a core; all empty/null for a fresh replica. */
export interface PbftPersistedState {
  readonly view: ViewState;
  readonly stableCheckpoint: StableCheckpoint | null;
  readonly slots: readonly SlotRecord[];
}

export interface PersistDelta {
  readonly view: ViewState | null;
  /** A new stable checkpoint: it replaces the previous one; slots at or below it may be deleted. */
  readonly stableCheckpoint: StableCheckpoint | null;
  /** Upserts, by seq. */
  readonly slots: readonly SlotRecord[];
}

export interface SoftState {
  readonly view: number;
  readonly primary: ReplicaId;
  readonly active: boolean;
}

/**
 * One batch of work for the driver. The contract (storage writes may be
 * pipelined, as Raft's are):
 *  1. hand `persist` to storage as one write; writes land whole and in the
 *     order their Readys were handed out, and a crash loses a suffix of them;
 *  2. send `messages` and `replies` (reply.client names the client) only once
 *     this Ready's write, and so every earlier one, is durable: a vote sent
 *     and forgotten could be contradicted after a restart. A relayed client
 *     request (type 'request') may leave at once: it is the client's signed
 *     statement, not the replica's, and says nothing of the replica's state
 *     (the client's own retransmission, PbftNode.relay, never waited either);
 *  3. if `install` is set, restore the state machine from its snapshot (state
 *     transfer, or the stable checkpoint on restart); then execute `execute`
 *     in order, snapshotting after each batch marked `checkpoint`. This may
 *     run before the write is durable: it changes only volatile state;
 *  4. call advance(ready, results) with one ExecutionResult per batch before
 *     asking for the next Ready; the next Ready may be taken while earlier
 *     writes are still syncing.
 * Why that is as safe as persisting each Ready before the next: nothing
 * leaves a replica ahead of its disk, so after a crash the world has seen
 * exactly what it could have seen had the replica crashed, in the strict
 * order, between persisting the last durable Ready and sending its messages
 * (docs/consensus.md).
 */
export interface PbftReady {
  readonly persist: PersistDelta;
  readonly messages: readonly Outbound[];
  readonly replies: readonly Reply[];
  readonly install: { readonly seq: number; readonly snapshot: Uint8Array } | null;
  readonly execute: readonly ExecuteBatch[];
  /** Set when view, primary or view-change status changed since the previous Ready. */
  readonly softState: SoftState | null;
}

/**
 * Why an input was dropped. The Byzantine-evidence kinds (a faulty member
 * must have produced them) are listed in BYZANTINE_DROPS.
 */
export type DropKind =
  | 'malformed'
  | 'bad_signature'
  | 'non_member'
  | 'outside_watermarks'
  | 'stale_view'
  | 'duplicate'
  | 'digest_mismatch'
  | 'equivocation'
  | 'not_primary'
  | 'bad_request'
  | 'invalid_certificate'
  | 'buffer_full'
  | 'rate_limited'
  | 'too_large'
  /** A message naming a sender other than the member whose channel it came on (and not forwarded evidence). */
  | 'wrong_sender';

export const DROP_KINDS: readonly DropKind[] = [
  'malformed',
  'bad_signature',
  'non_member',
  'outside_watermarks',
  'stale_view',
  'duplicate',
  'digest_mismatch',
  'equivocation',
  'not_primary',
  'bad_request',
  'invalid_certificate',
  'buffer_full',
  'rate_limited',
  'too_large',
  'wrong_sender',
];

/** Drops no correct member causes (network faults and lagging peers explain the others). */
export const BYZANTINE_DROPS: ReadonlySet<DropKind> = new Set<DropKind>([
  'bad_signature',
  'digest_mismatch',
  'equivocation',
  'not_primary',
  'bad_request',
  'invalid_certificate',
  'wrong_sender',
]);

export type RequestResult =
  | { readonly kind: 'accepted' }
  /** Already executed: the cached reply goes out in the next Ready. */
  | { readonly kind: 'replied' }
  | { readonly kind: 'dropped'; readonly reason: DropKind };

export interface PbftConfig {
  /** K: a checkpoint every K sequence numbers. */
  readonly checkpointInterval: number;
  /** L: sequence numbers accepted in (h, h + L], h the stable checkpoint; a multiple of K. */
  readonly logWindow: number;
  readonly maxBatchRequests: number;
  readonly maxBatchBytes: number;
  readonly maxRequestBytes: number;
  /**
   * Batches the primary keeps pre-prepared but not yet executed. Past it,
   * requests wait and the next batch takes them all (up to
   * maxBatchRequests), so batches grow with the load: with pipelined writes
   * the primary cuts one per Ready, and 16 in flight left ~5 requests per
   * batch at 64 clients where 4 gives ~9.5, fewer verifications and less
   * CPU per request (bench/RESULTS.md, pbft).
   */
  readonly maxInflightBatches: number;
  /** Requests waiting to be ordered, over all clients (one per client). */
  readonly maxPendingRequests: number;
  /** Base view-change timeout T in ticks; the k-th successive view change waits T * 2^k. */
  readonly viewChangeTicks: number;
  /** Cap on k above. */
  readonly maxBackoffShift: number;
  /** A stalled replica retransmits and fetches every this many ticks. */
  readonly retransmitTicks: number;
  /** Every this many ticks a replica re-announces its stable checkpoint (see PbftCore's beacon). */
  readonly checkpointBeaconTicks: number;
  /** Sequence numbers above the last executed one retransmitted per stall. */
  readonly maxRetransmitSlots: number;
  /** Messages for a view this replica has not entered yet, buffered per peer. */
  readonly maxBufferedPerPeer: number;
  /** Checkpoint votes above the stable checkpoint kept per peer. */
  readonly maxCheckpointVotesPerPeer: number;
  readonly maxSnapshotBytes: number;
  /** Commit certificates sent along with a state transfer. */
  readonly maxStateTransferEntries: number;
  /** Batches handed out per Ready. */
  readonly maxExecutePerReady: number;
  /** Reply-cache entries; the least recently served client is forgotten first. */
  readonly maxClients: number;
}

export const DEFAULT_PBFT_CONFIG: PbftConfig = {
  checkpointInterval: 64,
  logWindow: 128,
  maxBatchRequests: 64,
  maxBatchBytes: 1024 * 1024,
  maxRequestBytes: 256 * 1024,
  maxInflightBatches: 4,
  maxPendingRequests: 4096,
  viewChangeTicks: 20,
  maxBackoffShift: 5,
  retransmitTicks: 5,
  checkpointBeaconTicks: 50,
  maxRetransmitSlots: 8,
  maxBufferedPerPeer: 256,
  maxCheckpointVotesPerPeer: 4,
  maxSnapshotBytes: 256 * 1024 * 1024,
  maxStateTransferEntries: 64,
  maxExecutePerReady: 64,
  maxClients: 10_000,
};

/** A broken internal invariant: the core's state can no longer be trusted. */
export class PbftInvariantError extends DwcpError<'internal'> {
  constructor(message: string) {
    super('internal', message);
  }
}

/** Input that no correct caller produces (a bad argument, a bad configuration). */
export class PbftInputError extends DwcpError<'invalid'> {
  constructor(message: string) {
    super('invalid', message);
  }
}

export function invariant(condition: boolean, message: () => string): asserts condition {
  if (!condition) throw new PbftInvariantError(message());
}

export function resolvePbftConfig(overrides: Partial<PbftConfig> = {}): PbftConfig {
  const config: PbftConfig = { ...DEFAULT_PBFT_CONFIG, ...overrides };
  for (const [field, value] of Object.entries(config)) {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
      throw new PbftInputError(`pbft config ${field} must be a positive integer, got ${String(value)}`);
    }
  }
  if (config.logWindow % config.checkpointInterval !== 0 || config.logWindow < config.checkpointInterval) {
    throw new PbftInputError(
      `pbft config logWindow (${config.logWindow}) must be a positive multiple of checkpointInterval (${config.checkpointInterval})`,
    );
  }
  if (config.maxInflightBatches > config.logWindow) {
    throw new PbftInputError(
      `pbft config maxInflightBatches (${config.maxInflightBatches}) must not exceed logWindow (${config.logWindow})`,
    );
  }
  if (config.maxCheckpointVotesPerPeer < config.logWindow / config.checkpointInterval + 1) {
    throw new PbftInputError(
      `pbft config maxCheckpointVotesPerPeer (${config.maxCheckpointVotesPerPeer}) must be at least logWindow / checkpointInterval + 1 (${config.logWindow / config.checkpointInterval + 1})`,
    );
  }
  if (config.maxRequestBytes > config.maxBatchBytes) {
    throw new PbftInputError(
      `pbft config maxRequestBytes (${config.maxRequestBytes}) must not exceed maxBatchBytes (${config.maxBatchBytes})`,
    );
  }
  return config;
}

/** Largest f that n members tolerate. */
export function maxFaulty(n: number): number {
  return Math.floor((n - 1) / 3);
}

/** The members needed to tolerate f Byzantine ones. */
export function membersNeeded(f: number): number {
  return 3 * f + 1;
}
