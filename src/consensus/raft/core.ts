/**
 * RaftCore: one Raft node as a pure state machine (after etcd-io/raft).
 *
 * Inputs are tick(), step(message), propose(), proposeConfigChange(),
 * readIndex(), transferLeadership() and compact(); the only output is the
 * Ready batch (see types.ts for the contract), acknowledged twice: advance()
 * once the driver acted on it (applied, sent or queued its messages), and
 * persisted() once its storage write is durable, which may be several Readys
 * later (storage writes are asynchronous and pipelined, etcd's
 * AsyncStorageWrites). No clock, randomness, disk or network inside: the
 * election jitter comes from the injected `random`.
 *
 * Safety invariants, asserted (RaftInvariantError) rather than hoped for:
 * - the term never decreases and a vote is cast at most once per term;
 * - at most one leader per term is ever seen from inside (an append from a
 *   second leader of our term is a violation);
 * - a leader never truncates its log, and commits only an index whose entry
 *   is of its current term, counted on a majority of the voters in force
 *   (its own share being what it has persisted);
 * - committed entries are never overwritten (log.ts).
 * Liveness devices: PreVote (a node that cannot win does not bump terms),
 * CheckQuorum (a leader that heard from no majority within an election
 * timeout steps down, and followers that heard from a leader that recently
 * ignore vote requests — the leader lease), leadership transfer (TimeoutNow).
 */
import { RaftLog } from './log.ts';
import { applyConfigChange, isVoter } from './membership.ts';
import { voteOutcome } from './quorum.ts';
import { ReadIndexQueue } from './read-index.ts';
import type { FollowerStatus } from './replication.ts';
import { Replicator } from './replication.ts';
import { SnapshotAssembler } from './snapshot-transfer.ts';
import type {
  AppendRequest,
  ConfigChange,
  Entry,
  HardState,
  Heartbeat,
  Membership,
  Message,
  MessageType,
  NodeId,
  Outgoing,
  PersistedState,
  ProposeResult,
  RaftConfig,
  ReadIndexResult,
  ReadState,
  Ready,
  Role,
  SnapshotChunk,
  SnapshotData,
  SnapshotMeta,
  TransferResult,
  VoteRequest,
  VoteResponse,
} from './types.ts';
import { RaftInputError, entryBytes, invariant, resolveRaftConfig } from './types.ts';
import { validateMessage } from './validate.ts';

export interface RaftCoreOptions {
  readonly id: NodeId;
  readonly storage: PersistedState;
  /** Uniform in [0, 1); seeded in tests, crypto-backed or Math.random in a driver. */
  readonly random: () => number;
  readonly config?: Partial<RaftConfig>;
}

export type ConfigChangeResult = ProposeResult | { readonly kind: 'rejected'; readonly reason: string };

export type { FollowerStatus } from './replication.ts';

export interface RaftStatus {
  readonly id: NodeId;
  readonly role: Role;
  readonly term: number;
  readonly vote: NodeId | null;
  readonly leader: NodeId | null;
  readonly commit: number;
  readonly applied: number;
  readonly lastIndex: number;
  readonly lastTerm: number;
  readonly snapshotIndex: number;
  readonly membership: Membership;
  readonly leadTransferee: NodeId | null;
  /** Per follower, on a leader only. */
  readonly progress: ReadonlyMap<NodeId, FollowerStatus> | null;
}

const EMPTY = new Uint8Array(0);

export class RaftCore {
  readonly id: NodeId;
  readonly #config: RaftConfig;
  readonly #random: () => number;
  readonly #log: RaftLog;
  readonly #assembler: SnapshotAssembler;

  #term: number;
  #vote: NodeId | null;
  #role: Role = 'follower';
  #leader: NodeId | null = null;
  #membership: Membership;

  #electionElapsed = 0;
  #heartbeatElapsed = 0;
  #electionTimeout = 0;
  #votes = new Map<NodeId, boolean>();

  // Leader only.
  #replicator: Replicator | null = null;
  #reads = new ReadIndexQueue();
  #transferee: NodeId | null = null;
  #uncommittedBytes = 0;
  /** New entries or a new commit index wait for the next ready() so they go out batched. */
  #appendPending = false;
  #commitPending = false;
  #heartbeatPending = false;

  // Output waiting for the next Ready.
  #messages: Message[] = [];
  #readStates: ReadState[] = [];
  /** The hard state last handed out in a Ready (persisted, or on its way). */
  #handedHardState: HardState;
  #reportedRole: Role | null = null;
  #reportedLeader: NodeId | null = null;
  /** Handed out and not yet advance()d: at most one. */
  #outstanding: Ready | null = null;
  /** Handed out with mustSync and not yet persisted(), in order. */
  readonly #unpersisted: Ready[] = [];

  constructor(options: RaftCoreOptions) {
    const { id, storage } = options;
    if (typeof id !== 'string' || id === '') throw new RaftInputError('raft id must be a non-empty string');
    this.id = id;
    this.#config = resolveRaftConfig(options.config);
    this.#random = options.random;
    const { hardState } = storage;
    for (const field of ['term', 'commit'] as const) {
      const value = hardState[field];
      if (!Number.isSafeInteger(value) || value < 0) {
        throw new RaftInputError(`persisted hard state: ${field} must be a non-negative integer, got ${String(value)}`);
      }
    }
    this.#log = new RaftLog(storage.snapshot, storage.entries, hardState.commit, storage.applied ?? 0);
    if (this.#log.lastTerm > hardState.term) {
      throw new RaftInputError(`persisted hard state: term ${hardState.term} is below the last entry's term ${this.#log.lastTerm}`);
    }
    this.#assembler = new SnapshotAssembler(this.#config.maxSnapshotBytes);
    this.#term = hardState.term;
    this.#vote = hardState.vote;
    this.#handedHardState = { term: hardState.term, vote: hardState.vote, commit: this.#log.committed };
    this.#membership = this.#log.membership;
    this.#becomeFollower(this.#term, null);
  }

  // ---------------------------------------------------------------- inputs

  tick(): void {
    if (this.#role === 'leader') this.#tickLeader();
    else this.#tickElection();
    this.#assertState();
  }

  step(m: Message): void {
    validateMessage(m, this.id);
    if (m.term > this.#term) {
      if (m.type === 'vote_request' && !m.transfer && this.#inLease()) return;
      const keepsTerm =
        (m.type === 'vote_request' && m.preVote) || (m.type === 'vote_response' && m.preVote && m.granted);
      if (!keepsTerm) {
        const fromLeader = m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshot_chunk';
        this.#becomeFollower(m.term, fromLeader ? m.from : null);
      }
    } else if (m.term < this.#term) {
      this.#answerStale(m);
      return;
    }
    this.#dispatch(m);
    this.#assertState();
  }

  propose(data: Uint8Array): ProposeResult {
    if (!(data instanceof Uint8Array)) throw new RaftInputError('propose: command must be a Uint8Array');
    const refused = this.#refuseProposal(data.length);
    if (refused !== null) return refused;
    const index = this.#appendAsLeader({ kind: 'normal', data });
    return { kind: 'accepted', index, term: this.#term };
  }

  proposeConfigChange(change: ConfigChange): ConfigChangeResult {
    const refused = this.#refuseProposal(0);
    if (refused !== null) return refused;
    // The single-server bug fix: no config change before this leader has
    // committed an entry of its own term, and only one uncommitted at a time.
    if (this.#log.term(this.#log.committed) !== this.#term) return { kind: 'dropped', reason: 'leader_not_ready' };
    if (this.#log.membershipIndex > this.#log.committed) return { kind: 'dropped', reason: 'config_change_in_flight' };
    const next = applyConfigChange(this.#membership, change);
    if (typeof next === 'string') return { kind: 'rejected', reason: next };
    if (change.type === 'promote') {
      const match = this.#replicator?.match(change.node);
      if (match === undefined || match + this.#config.maxLearnerLag < this.#log.lastIndex) {
        return { kind: 'dropped', reason: 'learner_behind' };
      }
    }
    const index = this.#appendAsLeader({ kind: 'config', membership: next });
    return { kind: 'accepted', index, term: this.#term };
  }

  /** Ask for a linearizable read; the answer is a ReadState with the same ctx in a later Ready. */
  readIndex(ctx: string): ReadIndexResult {
    if (this.#role === 'leader') return this.#leaderRead(ctx, this.id);
    if (this.#leader === null) return { kind: 'not_leader', leaderHint: null };
    this.#send({ type: 'read_index', to: this.#leader, ctx });
    return { kind: 'pending' };
  }

  /** Hand leadership to a voter (graceful shutdown); proposals are dropped until it ends. */
  transferLeadership(to: NodeId): TransferResult {
    if (this.#role !== 'leader') return { kind: 'not_leader', leaderHint: this.#leader };
    if (to === this.id) return { kind: 'rejected', reason: `node ${to} is already the leader` };
    if (!isVoter(this.#membership, to)) return { kind: 'rejected', reason: `node ${to} is not a voter` };
    this.#transferee = to;
    // The transfer is abandoned after one election timeout (see #tickLeader).
    this.#electionElapsed = 0;
    if (!this.#maybeSendTimeoutNow(to)) this.#replicator?.sendAppends(to, true);
    return { kind: 'started' };
  }

  /**
   * The driver took a state machine snapshot covering the log through
   * `index` (<= applied): entries up to it are dropped and `data` is what a
   * lagging follower will be sent (read a chunk at a time, so it may be the
   * snapshot's file). Returns the snapshot's metadata (term and membership at
   * `index`), which the driver stores with the data. Compacting at or below
   * the current snapshot changes nothing (a newer one was installed meanwhile).
   */
  compact(index: number, data: SnapshotData): SnapshotMeta {
    this.#checkCompactable('compact', index);
    this.#log.compact(index, data);
    return this.#log.snapshot.meta;
  }

  /**
   * The metadata a snapshot at `index` is stored with, for a driver that
   * writes the snapshot's file before it compacts (compact then returns the
   * same). `index` must be applied, persisted, and not compacted yet.
   */
  snapshotMeta(index: number): SnapshotMeta {
    this.#checkCompactable('snapshotMeta', index);
    if (index < this.#log.snapshot.meta.index) throw new RaftInputError(`snapshotMeta: index ${index} is compacted (the snapshot is at ${this.#log.snapshot.meta.index})`);
    return this.#log.metaAt(index);
  }

  #checkCompactable(what: string, index: number): void {
    if (!Number.isSafeInteger(index) || index < 0) throw new RaftInputError(`${what}: index must be a non-negative integer, got ${index}`);
    if (index > this.#log.applied) throw new RaftInputError(`${what}: index ${index} is past applied ${this.#log.applied}`);
    if (index > this.#log.stable) throw new RaftInputError(`${what}: index ${index} is past the persisted log (${this.#log.stable})`);
  }

  // ---------------------------------------------------------------- output

  hasReady(): boolean {
    if (this.#outstanding !== null) return false;
    return (
      this.#messages.length > 0 ||
      this.#readStates.length > 0 ||
      (this.#role === 'leader' && (this.#appendPending || this.#commitPending || this.#heartbeatPending)) ||
      this.#log.hasSnapshotToPersist ||
      this.#log.hasEntriesToPersist ||
      this.#log.applied < this.#log.committed ||
      !sameHardState(this.#hardState(), this.#handedHardState) ||
      this.#role !== this.#reportedRole ||
      this.#leader !== this.#reportedLeader
    );
  }

  /**
   * Whether a Ready now would carry something that should not wait for a
   * storage write under way: committed entries to apply, confirmed reads, a
   * role or leader change, a snapshot to install, or a message that may leave
   * before persisting. What is left (entries to persist, acks and other
   * messages that wait for the writes anyway) loses nothing by waiting for
   * the write in flight to land, and then goes out in one Ready instead of
   * several; a follower's driver uses this to batch (node.ts).
   */
  hasUrgentReady(): boolean {
    if (this.#outstanding !== null) return false;
    return (
      this.#readStates.length > 0 ||
      this.#log.applied < this.#log.committed ||
      this.#log.hasSnapshotToPersist ||
      this.#role !== this.#reportedRole ||
      this.#leader !== this.#reportedLeader ||
      (this.#role === 'leader' && (this.#appendPending || this.#commitPending || this.#heartbeatPending)) ||
      this.#messages.some((m) => sendsBeforePersist(this.#role, m))
    );
  }

  /**
   * The next batch of work, or null if there is none or the previous one is
   * not advanced yet. Earlier Readys may still be being persisted: what this
   * one hands out is only what they did not.
   */
  ready(): Ready | null {
    if (this.#outstanding !== null || !this.hasReady()) return null;
    this.#flush();
    const hardState = this.#hardState();
    const handed = this.#handedHardState;
    const hardChanged = !sameHardState(hardState, handed);
    const softChanged = this.#role !== this.#reportedRole || this.#leader !== this.#reportedLeader;
    const snapshot = this.#log.takeSnapshotToPersist();
    const entries = this.#log.takeEntriesToPersist();
    const messages: Message[] = [];
    const persistMessages: Message[] = [];
    for (const m of this.#messages) (sendsBeforePersist(this.#role, m) ? messages : persistMessages).push(m);
    const ready: Ready = {
      hardState: hardChanged ? hardState : null,
      snapshot,
      entries,
      mustSync: entries.length > 0 || snapshot !== null || hardState.term !== handed.term || hardState.vote !== handed.vote,
      committed: this.#log.nextCommitted(this.#config.maxApplyBytesPerReady),
      messages,
      persistMessages,
      readStates: this.#readStates,
      softState: softChanged ? { role: this.#role, leader: this.#leader } : null,
    };
    this.#messages = [];
    this.#readStates = [];
    this.#reportedRole = this.#role;
    this.#reportedLeader = this.#leader;
    if (hardChanged) this.#handedHardState = hardState;
    this.#outstanding = ready;
    if (ready.mustSync) this.#unpersisted.push(ready);
    return ready;
  }

  /** The driver applied `ready.committed` and sent (or queued behind the storage writes) its messages. */
  advance(ready: Ready): void {
    invariant(ready === this.#outstanding, () => 'advance() with a Ready that is not the outstanding one');
    this.#outstanding = null;
    const applied = ready.committed.at(-1);
    if (applied !== undefined) this.#log.appliedTo(applied.index);
    this.#assertState();
  }

  /**
   * The storage write of `ready` (one handed out with mustSync) is durable.
   * Writes complete in the order their Readys were handed out, and so must
   * these calls come. A Ready without mustSync is never reported.
   */
  persisted(ready: Ready): void {
    invariant(this.#unpersisted[0] === ready, () => 'persisted() out of order, or with a Ready that had nothing to persist');
    this.#unpersisted.shift();
    if (ready.snapshot !== null) this.#log.snapshotPersisted(ready.snapshot.meta.index);
    const last = ready.entries.at(-1);
    if (last !== undefined) this.#log.stableTo(last.index, last.term);
    // A leader's own share of a quorum is what it has persisted.
    if (this.#role === 'leader') this.#maybeCommit();
    this.#assertState();
  }

  /** Readys handed out with mustSync whose write is not yet reported durable. */
  get unpersisted(): number {
    return this.#unpersisted.length;
  }

  /** Highest index this node's storage holds durably (its own share of a quorum when it leads). */
  get stableIndex(): number {
    return this.#log.stable;
  }

  get role(): Role {
    return this.#role;
  }

  get term(): number {
    return this.#term;
  }

  get leader(): NodeId | null {
    return this.#leader;
  }

  get commitIndex(): number {
    return this.#log.committed;
  }

  get lastIndex(): number {
    return this.#log.lastIndex;
  }

  /** The configuration in force (the last one appended, section 4.1 of the thesis). */
  get membership(): Membership {
    return this.#membership;
  }

  get snapshotIndex(): number {
    return this.#log.snapshot.meta.index;
  }

  status(): RaftStatus {
    return {
      id: this.id,
      role: this.#role,
      term: this.#term,
      vote: this.#vote,
      leader: this.#leader,
      commit: this.#log.committed,
      applied: this.#log.applied,
      lastIndex: this.#log.lastIndex,
      lastTerm: this.#log.lastTerm,
      snapshotIndex: this.#log.snapshot.meta.index,
      membership: this.#membership,
      leadTransferee: this.#transferee,
      progress: this.#replicator?.status() ?? null,
    };
  }

  /** Term of the entry at index in this node's log (undefined if absent); for invariant checkers. */
  termAt(index: number): number | undefined {
    return this.#log.term(index);
  }

  /** Entry at index in this node's log (undefined if absent or compacted); for invariant checkers. */
  entryAt(index: number): Entry | undefined {
    return this.#log.entry(index);
  }

  // ---------------------------------------------------------------- roles

  #reset(term: number): void {
    if (term !== this.#term) {
      invariant(term > this.#term, () => `term would go back from ${this.#term} to ${term}`);
      this.#term = term;
      this.#vote = null;
      // Messages of the old term still waiting for a Ready must not leave: an
      // append ack queued in term T may name entries a leader of the new term
      // is about to overwrite, and the old leader would count it (a safety
      // bug the simulator found). Dropping a message is always safe.
      this.#messages = this.#messages.filter((m) => m.term >= term);
    }
    this.#leader = null;
    this.#electionElapsed = 0;
    this.#heartbeatElapsed = 0;
    this.#electionTimeout = this.#randomElectionTimeout();
    this.#votes = new Map();
    this.#replicator = null;
    this.#reads.clear();
    this.#transferee = null;
    this.#uncommittedBytes = 0;
    this.#appendPending = false;
    this.#commitPending = false;
    this.#heartbeatPending = false;
  }

  #randomElectionTimeout(): number {
    const r = this.#random();
    invariant(r >= 0 && r < 1, () => `random() returned ${r}, outside [0, 1)`);
    const t = this.#config.electionTicks;
    return t + Math.floor(r * t);
  }

  #becomeFollower(term: number, leader: NodeId | null): void {
    this.#reset(term);
    this.#role = 'follower';
    this.#leader = leader;
  }

  #becomeLeader(): void {
    invariant(this.#role === 'candidate', () => `${this.#role} cannot become leader`);
    this.#reset(this.#term);
    this.#role = 'leader';
    this.#leader = this.id;
    this.#replicator = new Replicator(
      { id: this.id, log: this.#log, config: this.#config, send: (m) => this.#send(m) },
      this.#membership,
    );
    for (let i = this.#log.committed + 1; i <= this.#log.lastIndex; i++) {
      this.#uncommittedBytes += entryBytes(this.#log.entry(i) as Entry);
    }
    // The entry of its own term through which a new leader learns (and
    // commits) everything before it: old-term entries never commit by count.
    this.#appendAsLeader({ kind: 'normal', data: EMPTY });
  }

  #promotable(): boolean {
    return isVoter(this.#membership, this.id);
  }

  /** Heard from a leader within the election timeout: ignore would-be disruptors. */
  #inLease(): boolean {
    return this.#config.checkQuorum && this.#leader !== null && this.#electionElapsed < this.#config.electionTicks;
  }

  #tickElection(): void {
    this.#electionElapsed++;
    if (this.#promotable() && this.#electionElapsed >= this.#electionTimeout) {
      this.#electionElapsed = 0;
      this.#campaign(this.#config.preVote, false);
    }
  }

  #tickLeader(): void {
    this.#heartbeatElapsed++;
    this.#electionElapsed++;
    if (this.#electionElapsed >= this.#config.electionTicks) {
      this.#electionElapsed = 0;
      if (this.#config.checkQuorum && this.#replicator?.checkQuorumActive(this.#membership.voters) === false) {
        this.#becomeFollower(this.#term, null);
        return;
      }
      this.#transferee = null;
    }
    if (this.#heartbeatElapsed >= this.#config.heartbeatTicks) {
      this.#heartbeatElapsed = 0;
      this.#heartbeatPending = true;
    }
  }

  #campaign(preVote: boolean, transfer: boolean): void {
    if (preVote) {
      // Ask at term + 1 without moving there: a node that cannot win leaves no trace.
      this.#role = 'pre_candidate';
      this.#leader = null;
      this.#votes = new Map();
      this.#electionTimeout = this.#randomElectionTimeout();
    } else {
      this.#reset(this.#term + 1);
      this.#role = 'candidate';
      this.#vote = this.id;
    }
    const term = preVote ? this.#term + 1 : this.#term;
    if (isVoter(this.#membership, this.id)) this.#votes.set(this.id, true);
    if (this.#tally()) return;
    for (const to of this.#membership.voters) {
      if (to === this.id) continue;
      this.#send(
        { type: 'vote_request', to, preVote, transfer, lastIndex: this.#log.lastIndex, lastTerm: this.#log.lastTerm },
        term,
      );
    }
  }

  /** Act on the votes so far; true if the campaign ended. */
  #tally(): boolean {
    const outcome = voteOutcome(this.#membership.voters, this.#votes);
    if (outcome === 'pending') return false;
    if (outcome === 'lost') this.#becomeFollower(this.#term, null);
    else if (this.#role === 'pre_candidate') this.#campaign(false, false);
    else this.#becomeLeader();
    return true;
  }

  // ---------------------------------------------------------------- step

  #send(m: Outgoing, term = this.#term): void {
    this.#messages.push({ ...m, from: this.id, term });
  }

  /**
   * A message from an older term: tell a stale leader or (pre-)candidate our
   * term so it stands down. A candidate must hear it even when we would never
   * ask it for a vote: after a membership change two nodes can hold different
   * configurations (each follows the latest config entry in its own log), and
   * a candidate whose term lags one voter's, and whom that voter does not
   * count as a voter, would otherwise campaign below that term for ever (the
   * simulator found such a run). A refusal promises nothing.
   */
  #answerStale(m: Message): void {
    const fromLeader = m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshot_chunk';
    if (fromLeader && (this.#config.checkQuorum || this.#config.preVote)) {
      this.#send({ type: 'heartbeat_response', to: m.from, readSeq: 0 });
    } else if (m.type === 'vote_request') {
      this.#send({ type: 'vote_response', to: m.from, preVote: m.preVote, granted: false });
    }
  }

  #dispatch(m: Message): void {
    switch (m.type) {
      case 'vote_request':
        return this.#handleVoteRequest(m);
      case 'vote_response':
        return this.#handleVoteResponse(m);
      case 'append':
      case 'heartbeat':
      case 'snapshot_chunk':
        return this.#handleFromLeader(m);
      case 'timeout_now':
        if (this.#role === 'follower' && this.#promotable()) this.#campaign(false, true);
        return;
      case 'read_index':
        if (this.#role === 'leader') this.#leaderRead(m.ctx, m.from);
        return;
      case 'read_index_response':
        if (this.#role !== 'leader') this.#readStates.push({ ctx: m.ctx, index: m.index });
        return;
      case 'append_response':
      case 'heartbeat_response':
      case 'snapshot_response':
        if (this.#role === 'leader') this.#handleFromFollower(m);
        return;
    }
  }

  #handleVoteRequest(m: VoteRequest): void {
    const canVote =
      this.#vote === m.from ||
      (this.#vote === null && this.#leader === null) ||
      (m.preVote && m.term > this.#term);
    if (canVote && this.#log.isUpToDate(m.lastIndex, m.lastTerm)) {
      this.#send({ type: 'vote_response', to: m.from, preVote: m.preVote, granted: true }, m.term);
      if (!m.preVote) {
        invariant(this.#vote === null || this.#vote === m.from, () => `second vote in term ${this.#term}`);
        this.#vote = m.from;
        this.#electionElapsed = 0;
      }
    } else {
      this.#send({ type: 'vote_response', to: m.from, preVote: m.preVote, granted: false });
    }
  }

  #handleVoteResponse(m: VoteResponse): void {
    const counts =
      m.preVote
        ? this.#role === 'pre_candidate' && m.term === (m.granted ? this.#term + 1 : this.#term)
        : this.#role === 'candidate';
    if (!counts) return;
    this.#votes.set(m.from, m.granted);
    this.#tally();
  }

  #handleFromLeader(m: AppendRequest | SnapshotChunk | Heartbeat): void {
    invariant(this.#role !== 'leader', () => `two leaders in term ${this.#term}: ${this.id} and ${m.from}`);
    if (this.#role !== 'follower') this.#becomeFollower(this.#term, m.from);
    invariant(
      this.#leader === null || this.#leader === m.from,
      () => `two leaders in term ${this.#term}: ${String(this.#leader)} and ${m.from}`,
    );
    this.#leader = m.from;
    this.#electionElapsed = 0;
    switch (m.type) {
      case 'append':
        return this.#handleAppend(m);
      case 'heartbeat':
        this.#log.commitTo(Math.min(m.commit, this.#log.lastIndex));
        this.#send({ type: 'heartbeat_response', to: m.from, readSeq: m.readSeq });
        return;
      case 'snapshot_chunk':
        return this.#handleSnapshotChunk(m);
    }
  }

  #handleAppend(m: AppendRequest): void {
    const ack = (index: number): void =>
      this.#send({ type: 'append_response', to: m.from, success: true, index, hintIndex: 0, hintTerm: 0 });
    if (m.prevIndex < this.#log.committed) {
      // Everything up to our commit matches any leader's log; it may be compacted here.
      ack(this.#log.committed);
      return;
    }
    const lastNew = this.#log.maybeAppend(m.prevIndex, m.prevTerm, m.commit, m.entries);
    if (lastNew !== null) {
      this.#syncMembership();
      ack(lastNew);
      return;
    }
    // Fast back-off: point the leader at the last entry that could still match.
    const hint = this.#log.findConflictByTerm(Math.min(m.prevIndex, this.#log.lastIndex), m.prevTerm);
    this.#send({
      type: 'append_response',
      to: m.from,
      success: false,
      index: m.prevIndex,
      hintIndex: hint.index,
      hintTerm: hint.term,
    });
  }

  #handleSnapshotChunk(m: SnapshotChunk): void {
    const ack = (index: number): void =>
      this.#send({ type: 'append_response', to: m.from, success: true, index, hintIndex: 0, hintTerm: 0 });
    if (m.meta.index <= this.#log.committed) {
      ack(this.#log.committed);
      return;
    }
    const { nextOffset, snapshot } = this.#assembler.accept(m);
    if (snapshot === null) {
      this.#send({ type: 'snapshot_response', to: m.from, index: m.meta.index, nextOffset });
      return;
    }
    if (this.#log.matchTerm(snapshot.meta.index, snapshot.meta.term)) {
      // Our log already holds the snapshot's last entry: keep it, just learn the commit.
      this.#log.commitTo(snapshot.meta.index);
    } else {
      this.#log.restore(snapshot);
      this.#syncMembership();
    }
    ack(snapshot.meta.index);
  }

  // ---------------------------------------------------------------- leader

  #refuseProposal(bytes: number): ProposeResult | null {
    if (this.#role !== 'leader') return { kind: 'not_leader', leaderHint: this.#leader };
    if (this.#transferee !== null) return { kind: 'dropped', reason: 'transferring' };
    if (bytes > this.#config.maxProposalBytes) return { kind: 'dropped', reason: 'too_large' };
    const uncommitted = this.#log.lastIndex - this.#log.committed;
    if (
      uncommitted >= this.#config.maxUncommittedEntries ||
      (uncommitted > 0 && this.#uncommittedBytes + bytes > this.#config.maxUncommittedBytes)
    ) {
      return { kind: 'dropped', reason: 'uncommitted_limit' };
    }
    return null;
  }

  #appendAsLeader(
    body: { kind: 'normal'; data: Uint8Array } | { kind: 'config'; membership: Membership },
  ): number {
    const index = this.#log.lastIndex + 1;
    const entry: Entry = { ...body, index, term: this.#term };
    this.#log.append(entry);
    this.#uncommittedBytes += entryBytes(entry);
    if (entry.kind === 'config') this.#syncMembership();
    this.#appendPending = true;
    return index;
  }

  /** Follow the membership in force in the log; a leader tracks exactly its members. */
  #syncMembership(): void {
    const membership = this.#log.membership;
    if (membership === this.#membership) return;
    this.#membership = membership;
    if (this.#replicator === null) return;
    this.#replicator.syncMembership(membership);
    if (this.#transferee !== null && !isVoter(membership, this.#transferee)) this.#transferee = null;
  }

  #flush(): void {
    if (this.#appendPending || this.#commitPending) this.#replicator?.broadcastAppends(this.#commitPending);
    if (this.#heartbeatPending) this.#replicator?.broadcastHeartbeats(this.#reads.lastSeq);
    this.#appendPending = false;
    this.#commitPending = false;
    this.#heartbeatPending = false;
  }

  #handleFromFollower(m: Extract<Message, { type: 'append_response' | 'heartbeat_response' | 'snapshot_response' }>): void {
    const replicator = this.#replicator;
    if (replicator === null) return;
    switch (m.type) {
      case 'append_response':
        if (!replicator.onAppendResponse(m)) return;
        this.#maybeCommit();
        if (this.#role !== 'leader') return; // our own removal just committed
        this.#appendPending = true;
        this.#maybeSendTimeoutNow(m.from);
        return;
      case 'heartbeat_response':
        if (replicator.onHeartbeatResponse(m)) this.#releaseReads();
        return;
      case 'snapshot_response':
        replicator.onSnapshotResponse(m);
        return;
    }
  }

  /** Tell the transferee to campaign once it holds our whole log; true if told. */
  #maybeSendTimeoutNow(to: NodeId): boolean {
    if (this.#transferee !== to || this.#replicator?.match(to) !== this.#log.lastIndex) return false;
    this.#send({ type: 'timeout_now', to });
    return true;
  }

  #maybeCommit(): void {
    if (this.#replicator === null) return;
    const index = this.#replicator.quorumMatch(this.#membership.voters, this.#log.stable);
    if (index <= this.#log.committed || this.#log.term(index) !== this.#term) return;
    const before = this.#log.committed;
    this.#log.commitTo(index);
    for (let i = before + 1; i <= index; i++) this.#uncommittedBytes -= entryBytes(this.#log.entry(i) as Entry);
    invariant(this.#uncommittedBytes >= 0, () => `uncommitted bytes went negative: ${this.#uncommittedBytes}`);
    this.#commitPending = true;
    if (this.#log.term(before) !== this.#term && this.#reads.undefer(index) > 0) {
      // First commit of this term: reads that waited for it can start their round.
      this.#heartbeatPending = true;
      this.#releaseReads();
    }
    if (!isVoter(this.#membership, this.id) && this.#log.membershipIndex <= index) {
      // Our own removal is committed: leave the cluster to the remaining voters.
      this.#becomeFollower(this.#term, null);
    }
  }

  #leaderRead(ctx: string, from: NodeId): ReadIndexResult {
    if (this.#reads.size >= this.#config.maxPendingReads) return { kind: 'dropped', reason: 'pending_read_limit' };
    if (this.#log.term(this.#log.committed) !== this.#term) {
      this.#reads.defer(ctx, from);
      return { kind: 'pending' };
    }
    this.#reads.add(ctx, from, this.#log.committed);
    this.#heartbeatPending = true;
    this.#releaseReads();
    return { kind: 'pending' };
  }

  #releaseReads(): void {
    if (this.#replicator === null) return;
    const confirmed = this.#replicator.readQuorum(this.#membership.voters, this.#reads.lastSeq);
    for (const read of this.#reads.release(confirmed)) {
      if (read.from === this.id) this.#readStates.push({ ctx: read.ctx, index: read.index });
      else this.#send({ type: 'read_index_response', to: read.from, ctx: read.ctx, index: read.index });
    }
  }

  // ---------------------------------------------------------------- state

  #hardState(): HardState {
    return { term: this.#term, vote: this.#vote, commit: this.#log.committed };
  }

  #assertState(): void {
    invariant(this.#term >= this.#log.lastTerm, () => `term ${this.#term} below last log term ${this.#log.lastTerm}`);
    if (this.#role === 'leader') {
      invariant(this.#leader === this.id, () => `leader ${this.id} records leader ${String(this.#leader)}`);
      invariant(this.#log.lastTerm === this.#term, () => `leader's last entry term ${this.#log.lastTerm} is not its term ${this.#term}`);
    }
  }
}

/**
 * Leader messages that carry no promise about the sender's durable state, so
 * they leave while the Ready that made them is still being persisted (Raft
 * thesis 10.2.1: the leader writes its log in parallel with replicating it,
 * and counts its own copy only once durable). A follower's ReadIndex request
 * promises nothing either. Everything else waits for every storage write
 * handed out so far: a vote (granted or asked for oneself), an append or
 * snapshot ack each promise something is on disk, and any other message
 * promises its term is. (A heartbeat answer must wait too: a follower that
 * confirmed a leader of a term its disk does not hold yet could crash back to
 * the older term, help a deposed leader commit there, and leave the newer
 * leader serving a ReadIndex read that misses that write.)
 */
const LEADER_SENDS_BEFORE_PERSIST: ReadonlySet<MessageType> = new Set(['append', 'heartbeat', 'snapshot_chunk', 'timeout_now', 'read_index_response']);

/** Whether a message queued while in `role` may leave before the storage writes handed out so far are durable. */
export function sendsBeforePersist(role: Role, m: Message): boolean {
  return m.type === 'read_index' || (role === 'leader' && LEADER_SENDS_BEFORE_PERSIST.has(m.type));
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}
