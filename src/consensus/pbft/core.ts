/**
 * PbftCore: one PBFT replica (Castro & Liskov) as a pure state machine.
 *
 * Inputs are tick(), step(message) and request(clientRequest); the only
 * output is the PbftReady batch (see types.ts for the persist-then-send-then-
 * execute contract), acknowledged by advance(ready, results). No clock,
 * randomness, disk or network inside: signatures come from the injected
 * sign/verify, digests from SHA-256 (a pure function), and the state machine
 * is the driver's: the core hands out committed batches and gets results and
 * canonical snapshots back.
 *
 * Protocol: a request goes from the replica that took it to the primary
 * (everyone, while no view is active); the client's retransmission brings it
 * to every replica, so every backup can time a primary that sits on it; the primary of view v (members[v mod
 * n]) batches pending requests into pre-prepares numbered within the
 * watermarks (h, h + L]; backups prepare; 2f matching prepares from backups
 * make a slot prepared, 2f + 1 commits make it committed; committed slots run
 * in sequence order, deduplicated by (client, timestamp), and each replica
 * replies to the client, who accepts f + 1 matching replies (ReplyCollector).
 * Every K sequence numbers a replica signs its state digest; 2f + 1 matching
 * make the checkpoint stable, move h and garbage-collect the log. A backup
 * whose pending requests see no execution for T * 2^k ticks (k: successive
 * view changes) moves to view v + 1 with a view-change carrying its stable
 * checkpoint and prepared certificates; the new primary's new-view carries
 * 2f + 1 of them and the O set every replica recomputes, so a request
 * prepared in an old view keeps its sequence number. A replica that stalls
 * retransmits its own votes and fetches commit certificates; one behind a
 * stable checkpoint fetches the checkpoint state, verified against 2f + 1
 * signed checkpoint messages, plus the commit certificates after it.
 *
 * Read-only requests are ordered exactly like writes (no read-only
 * optimisation): one code path, linearizable by construction, at the cost
 * of a full round for reads.
 *
 * Hostile input is dropped and counted by kind (drops()); nothing a peer
 * sends can throw. Memory is bounded per peer: one vote per (peer, slot) in a
 * window of L slots, maxCheckpointVotesPerPeer checkpoint votes, one
 * view-change, maxBufferedPerPeer future-view messages, and answers to
 * fetches and state requests are rate-limited per peer.
 *
 * Invariants, asserted (PbftInvariantError): the view and h never decrease;
 * execution is gap-free in sequence order; a slot never commits two
 * digests; this replica's checkpoint digest equals any stable digest for the
 * same seq; a valid new view never contradicts what this replica committed;
 * the primary never pre-prepares a seq twice in a view nor outside the window.
 */
import { Authenticator } from './certificates.ts';
import type { NewViewOrder, Verify } from './certificates.ts';
import { CheckpointVotes } from './checkpoint-votes.ts';
import { ClientTable } from './client-table.ts';
import { batchDigest, requestBytes, seal, stateDigest } from './encoding.ts';
import { Slot } from './slot.ts';
import type {
  Checkpoint,
  CheckpointState,
  ClientId,
  ClientRequest,
  Commit,
  CommitCertificate,
  Committed,
  Digest,
  DropKind,
  ExecuteBatch,
  ExecutionResult,
  Fetch,
  NewView,
  NewViewRequest,
  Outbound,
  PbftConfig,
  PbftMessage,
  PbftPersistedState,
  PbftReady,
  PrePrepare,
  Prepare,
  Reply,
  ReplicaId,
  RequestMessage,
  RequestResult,
  SignedMessage,
  SlotRecord,
  SoftState,
  StateMessage,
  StateRequest,
  ViewChange,
} from './types.ts';
import { DROP_KINDS, FORWARDED_TYPES, PbftInputError, invariant, maxFaulty, membersNeeded, resolvePbftConfig } from './types.ts';
import { clientRequestProblem, messageProblem } from './validate.ts';

export interface PbftCoreOptions {
  readonly id: ReplicaId;
  /** Every member, in the same order on every replica (it fixes who is primary of which view). */
  readonly members: readonly ReplicaId[];
  /** Byzantine members tolerated; default the largest n allows. Needs n >= 3f + 1 and f >= 1. */
  readonly f?: number;
  readonly sign: (bytes: Uint8Array) => Uint8Array;
  /** Checks a replica's or a client's signature. */
  readonly verify: Verify;
  readonly config?: Partial<PbftConfig>;
  /** What the driver persisted; omit for a fresh replica. */
  readonly storage?: PbftPersistedState;
  /** The state machine's canonical genesis snapshot (identical on every replica). */
  readonly initialSnapshot?: Uint8Array;
}

export interface PbftStatus {
  readonly id: ReplicaId;
  readonly view: number;
  /** False while a view change is in progress. */
  readonly active: boolean;
  readonly primary: ReplicaId;
  readonly lastExecuted: number;
  /** h, the low watermark. */
  readonly stableCheckpoint: number;
  readonly highWatermark: number;
  readonly pendingRequests: number;
  readonly slots: number;
  /** Successive view changes without an execution (the back-off exponent). */
  readonly viewChangeAttempts: number;
  readonly viewChangesStarted: number;
  readonly signatureVerifications: number;
}

interface OwnCheckpoint {
  readonly digest: Digest;
  readonly state: CheckpointState;
  readonly message: Checkpoint;
}

interface Stable {
  readonly seq: number;
  readonly digest: Digest;
  readonly proof: readonly Checkpoint[];
  /** Null while this replica is behind its stable checkpoint (state transfer pending). */
  state: CheckpointState | null;
}

type Agreement = PrePrepare | Prepare | Commit;

/**
 * Votes counted on the word of the channel they came on (the sender is
 * authenticated, so it did cast them); their signatures are checked only
 * when they become evidence (#provenVotes). A relayed request has no
 * signature at all (its client's, inside, is checked on admission).
 */
const CHANNEL_VOUCHED: ReadonlySet<PbftMessage['type']> = new Set(['prepare', 'commit']);

const EMPTY = new Uint8Array(0);

function validateMembers(id: ReplicaId, members: readonly ReplicaId[], f: number | undefined): number {
  if (!Array.isArray(members) || members.some((m) => typeof m !== 'string' || m.length === 0)) {
    throw new PbftInputError('pbft members must be a list of non-empty replica ids');
  }
  if (new Set(members).size !== members.length) throw new PbftInputError('pbft members must not repeat');
  if (!members.includes(id)) throw new PbftInputError(`pbft replica ${id} is not among the members ${members.join(', ')}`);
  const n = members.length;
  const faulty = f ?? maxFaulty(n);
  if (!Number.isSafeInteger(faulty) || faulty < 1) {
    throw new PbftInputError(
      `pbft needs at least ${membersNeeded(1)} members to tolerate one Byzantine member (n >= 3f + 1), got ${n}`,
    );
  }
  if (n < membersNeeded(faulty)) {
    throw new PbftInputError(
      `pbft with f = ${faulty} needs at least ${membersNeeded(faulty)} members (n >= 3f + 1), got ${n}`,
    );
  }
  return faulty;
}

export class PbftCore {
  readonly id: ReplicaId;
  readonly f: number;
  readonly #config: PbftConfig;
  readonly #auth: Authenticator;
  readonly #sign: (bytes: Uint8Array) => Uint8Array;
  readonly #n: number;

  #view: number;
  #active: boolean;
  #stable: Stable;
  #lastExecuted: number;
  /** Highest seq handed to the driver for execution (>= lastExecuted). */
  #handedOut: number;
  readonly #slots = new Map<number, Slot>();
  /** Primary only: the next sequence number to assign. */
  #nextSeq = 1;

  /** Requests not yet executed, one per client, in arrival order. */
  readonly #pending = new Map<ClientId, ClientRequest>();
  /** The subset of #pending not in a pre-prepare of this view (what a primary batches). */
  #unbatched = new Map<ClientId, ClientRequest>();
  readonly #clients: ClientTable;

  readonly #checkpointVotes: CheckpointVotes;
  readonly #ownCheckpoints = new Map<number, OwnCheckpoint>();

  /** Per peer, its latest view-change (ours included). */
  readonly #viewChanges = new Map<ReplicaId, ViewChange>();
  #ownViewChange: ViewChange | null = null;
  /** The new-view that started the current view (null in view 0). */
  #newView: NewView | null = null;
  /** Per peer, agreement messages for views this replica has not entered yet. */
  readonly #future = new Map<ReplicaId, Agreement[]>();
  /** Per peer, the highest view seen in its valid messages. */
  readonly #peerViews = new Map<ReplicaId, number>();
  /** Highest seq in the window seen in a valid agreement message: a hint there is work to catch up on. */
  #highestSeen = 0;

  #ticks = 0;
  #progressTicks = 0;
  #viewChangeTicks = 0;
  #viewChangeTimerRunning = false;
  #attempts = 0;
  #retransmitElapsed = 0;
  #beaconElapsed = 0;
  #beaconMessage: Checkpoint | null = null;
  #lastRoundExecuted = 0;
  #stateRequests = 0;
  readonly #served = new Map<string, number>();

  readonly #drops = new Map<DropKind, number>(DROP_KINDS.map((k) => [k, 0]));
  #viewChangesStarted = 0;

  // Output waiting for the next Ready.
  #messages: Outbound[] = [];
  #replies: Reply[] = [];
  #install: { seq: number; snapshot: Uint8Array } | null = null;
  #dirtySlots = new Set<number>();
  #viewDirty = false;
  #stableDirty = false;
  #reported: SoftState | null = null;
  #outstanding: PbftReady | null = null;

  constructor(options: PbftCoreOptions) {
    this.id = options.id;
    this.f = validateMembers(options.id, options.members, options.f);
    this.#n = options.members.length;
    this.#config = resolvePbftConfig(options.config);
    this.#sign = options.sign;
    const genesis: CheckpointState = { snapshot: options.initialSnapshot ?? EMPTY, clients: [] };
    this.#auth = new Authenticator([...options.members], this.f, options.verify, this.#config, genesis);
    this.#checkpointVotes = new CheckpointVotes(this.#config.maxCheckpointVotesPerPeer);

    const storage = options.storage;
    const stable = storage?.stableCheckpoint ?? null;
    this.#stable =
      stable === null
        ? { seq: 0, digest: this.#auth.genesis.digest, proof: [], state: genesis }
        : { seq: stable.seq, digest: stable.digest, proof: stable.proof, state: stable.state };
    if (stable !== null && stateDigest(stable.state) !== stable.digest) {
      throw new PbftInputError(`persisted stable checkpoint ${stable.seq}: state does not match its digest`);
    }
    this.#clients = new ClientTable(this.#config.maxClients, this.#stable.state?.clients ?? []);
    this.#lastExecuted = this.#stable.seq;
    this.#handedOut = this.#stable.seq;
    this.#lastRoundExecuted = this.#stable.seq;
    this.#install = stable === null ? null : { seq: stable.seq, snapshot: stable.state.snapshot };
    this.#view = storage?.view.view ?? 0;
    this.#active = storage?.view.active ?? true;
    const newView = storage?.view.newView ?? null;
    if (this.#active && newView?.view === this.#view) this.#newView = newView;
    this.#nextSeq = this.#stable.seq + 1;
    for (const record of storage?.slots ?? []) this.#restoreSlot(record);
    if (!this.#active) {
      this.#ownViewChange = this.#buildViewChange();
      this.#viewChanges.set(this.id, this.#ownViewChange);
    }
    this.#assertState();
  }

  #restoreSlot(record: SlotRecord): void {
    if (record.seq <= this.#stable.seq || record.seq > this.#stable.seq + this.#config.logWindow) return;
    invariant(record.view <= this.#view, () => `persisted slot ${record.seq} is of view ${record.view}, past view ${this.#view}`);
    const slot = Slot.fromRecord(record);
    const pp = slot.prePrepare;
    if (pp !== null && slot.view === this.#view) {
      // Our own votes are re-signed from their content: identical statements, so nothing is contradicted.
      if (slot.sentPrepare) slot.prepares.set(this.id, this.#vote('prepare', pp));
      if (slot.sentCommit) slot.commits.set(this.id, this.#vote('commit', pp));
      if (pp.from === this.id) this.#nextSeq = Math.max(this.#nextSeq, pp.seq + 1);
    }
    this.#slots.set(record.seq, slot);
  }

  // ---------------------------------------------------------------- inputs

  /** One unit of time: drives the view-change timers and retransmission. */
  tick(): void {
    this.#ticks++;
    if (this.#active) {
      if (this.#waitingOnPrimary()) {
        if (++this.#progressTicks >= this.#timeout()) this.#startViewChange(this.#view + 1);
      } else {
        this.#progressTicks = 0;
      }
    } else if (this.#viewChangeTimerRunning && ++this.#viewChangeTicks >= this.#timeout()) {
      this.#startViewChange(this.#view + 1);
    }
    if (++this.#retransmitElapsed >= this.#config.retransmitTicks) {
      this.#retransmitElapsed = 0;
      this.#retransmitRound();
    }
    if (++this.#beaconElapsed >= this.#config.checkpointBeaconTicks) {
      this.#beaconElapsed = 0;
      this.#beacon();
    }
    this.#assertState();
  }

  /**
   * Announces this replica's stable checkpoint now and then. Without it a
   * replica that was down while the checkpoint formed (its checkpoint votes
   * lost) hears of it only when requests flow again; with it, 2f + 1 beacons
   * make the checkpoint stable there too and it fetches the state at once.
   */
  #beacon(): void {
    const { seq, digest, state } = this.#stable;
    if (seq === 0 || state === null) return;
    if (this.#beaconMessage?.seq !== seq) this.#beaconMessage = this.#seal<Checkpoint>({ type: 'checkpoint', seq, digest });
    this.#broadcast(this.#beaconMessage);
  }

  /**
   * A message from peer `sender`, the member its channel authenticated (the
   * driver's transport knows; a simulator must model it). Returns why it was
   * dropped (also counted in drops()), or null if used.
   */
  step(message: PbftMessage, sender: ReplicaId): DropKind | null {
    const drop = this.#receive(message, sender);
    if (drop !== null) this.#count(drop);
    this.#assertState();
    return drop;
  }

  /** A client request arriving at this replica (the daemon proxying a client). */
  request(request: ClientRequest): RequestResult {
    if (clientRequestProblem(request) !== null) return this.#refuse('malformed');
    const outcome = this.#admit(request);
    if (outcome === 'accepted') {
      // First to the primary alone, as Castro–Liskov's client sends it: the backups get it inside the
      // pre-prepare, so each request crosses the network and is decoded and admitted there once, not twice.
      // If the primary sits on it, the client's retransmission (PbftClient's relay, every retryMs) brings it
      // to every replica, which then times the primary on it. While no view is active, everyone gets it.
      if (!this.#active) this.#broadcast(this.#relay(request));
      else if (!this.isPrimary) this.#sendTo(this.primary, this.#relay(request));
      return { kind: 'accepted' };
    }
    if (outcome === 'replied') return { kind: 'replied' };
    return this.#refuse(outcome);
  }

  #refuse(reason: DropKind): RequestResult {
    this.#count(reason);
    return { kind: 'dropped', reason };
  }

  // ---------------------------------------------------------------- output

  hasReady(): boolean {
    if (this.#outstanding !== null) return false;
    return (
      this.#messages.length > 0 ||
      this.#replies.length > 0 ||
      this.#install !== null ||
      this.#dirtySlots.size > 0 ||
      this.#viewDirty ||
      (this.#stableDirty && this.#stable.state !== null) ||
      this.#canBatch() ||
      this.#slots.get(this.#handedOut + 1)?.committed != null ||
      !this.#sameSoftState()
    );
  }

  /** The next batch of work, or null if there is none or the previous one is not advanced yet. */
  ready(): PbftReady | null {
    if (!this.hasReady()) return null;
    this.#flushBatches();
    const execute = this.#nextExecutable();
    const soft = this.#softState();
    const stable = this.#stable;
    const ready: PbftReady = {
      persist: {
        view: this.#viewDirty ? { view: this.#view, active: this.#active, newView: this.#active ? this.#newView : null } : null,
        stableCheckpoint:
          this.#stableDirty && stable.state !== null
            ? { seq: stable.seq, digest: stable.digest, proof: stable.proof, state: stable.state }
            : null,
        slots: [...this.#dirtySlots]
          .map((seq) => this.#slots.get(seq)?.toRecord())
          .filter((r): r is SlotRecord => r !== undefined),
      },
      messages: this.#messages,
      replies: this.#replies,
      install: this.#install,
      execute,
      softState: this.#sameSoftState() ? null : soft,
    };
    invariant(
      ready.messages.length + ready.replies.length + ready.execute.length + ready.persist.slots.length > 0 ||
        ready.install !== null ||
        ready.softState !== null ||
        ready.persist.view !== null ||
        ready.persist.stableCheckpoint !== null,
      () => `${this.id} produced an empty Ready`,
    );
    this.#messages = [];
    this.#replies = [];
    this.#install = null;
    this.#dirtySlots = new Set();
    this.#viewDirty = false;
    if (ready.persist.stableCheckpoint !== null) this.#stableDirty = false;
    this.#reported = soft;
    this.#outstanding = ready;
    return ready;
  }

  /** The driver persisted, sent and executed everything `ready` asked for; `results` has one entry per batch. */
  advance(ready: PbftReady, results: readonly ExecutionResult[]): void {
    invariant(ready === this.#outstanding, () => 'advance() with a Ready that is not the outstanding one');
    if (results.length !== ready.execute.length) {
      throw new PbftInputError(`advance: ${results.length} execution results for ${ready.execute.length} batches`);
    }
    ready.execute.forEach((batch, i) => this.#executed(batch, results[i] as ExecutionResult));
    this.#outstanding = null;
    this.#gc();
    this.#assertState();
  }

  #executed(batch: ExecuteBatch, result: ExecutionResult): void {
    if (result.seq !== batch.seq) throw new PbftInputError(`advance: result for seq ${result.seq} where batch ${batch.seq} was`);
    if (result.results.length !== batch.requests.length) {
      throw new PbftInputError(`advance: seq ${batch.seq} has ${batch.requests.length} requests but ${result.results.length} results`);
    }
    if ((result.snapshot !== null) !== batch.checkpoint) {
      throw new PbftInputError(`advance: seq ${batch.seq} ${batch.checkpoint ? 'is a checkpoint and needs' : 'is no checkpoint and takes no'} snapshot`);
    }
    // A state transfer installed while this batch was out supersedes it.
    if (batch.seq <= this.#lastExecuted) return;
    invariant(batch.seq === this.#lastExecuted + 1, () => `executed seq ${batch.seq} after ${this.#lastExecuted}`);
    batch.requests.forEach((request, i) => {
      const record = { client: request.client, timestamp: request.timestamp, seq: batch.seq, result: result.results[i] as Uint8Array };
      this.#clients.record(record);
      this.#forgetPending(request.client, request.timestamp);
      this.#reply(record.client, record.timestamp, record.result);
    });
    this.#lastExecuted = batch.seq;
    this.#progressTicks = 0;
    if (this.#active) this.#attempts = 0;
    if (result.snapshot !== null) this.#checkpointAt(batch.seq, result.snapshot);
  }

  // ---------------------------------------------------------------- status

  get view(): number {
    return this.#view;
  }

  get active(): boolean {
    return this.#active;
  }

  get primary(): ReplicaId {
    return this.#auth.primary(this.#view);
  }

  get isPrimary(): boolean {
    return this.primary === this.id;
  }

  get lastExecuted(): number {
    return this.#lastExecuted;
  }

  get stableCheckpoint(): number {
    return this.#stable.seq;
  }

  /** Dropped inputs by kind since start. */
  drops(): ReadonlyMap<DropKind, number> {
    return this.#drops;
  }

  /** What this replica holds on behalf of one peer (for the flood bound tests and metrics). */
  heldFor(peer: ReplicaId): { readonly futureMessages: number; readonly checkpointVotes: number } {
    return { futureMessages: this.#future.get(peer)?.length ?? 0, checkpointVotes: this.#checkpointVotes.countFor(peer) };
  }

  status(): PbftStatus {
    return {
      id: this.id,
      view: this.#view,
      active: this.#active,
      primary: this.primary,
      lastExecuted: this.#lastExecuted,
      stableCheckpoint: this.#stable.seq,
      highWatermark: this.#high,
      pendingRequests: this.#pending.size,
      slots: this.#slots.size,
      viewChangeAttempts: this.#attempts,
      viewChangesStarted: this.#viewChangesStarted,
      signatureVerifications: this.#auth.verifications,
    };
  }

  // ---------------------------------------------------------------- receive

  get #h(): number {
    return this.#stable.seq;
  }

  get #high(): number {
    return this.#stable.seq + this.#config.logWindow;
  }

  #count(kind: DropKind): void {
    this.#drops.set(kind, (this.#drops.get(kind) ?? 0) + 1);
  }

  #oversized(m: PbftMessage): boolean {
    const c = this.#config;
    switch (m.type) {
      case 'view_change':
        return m.prepared.length > c.logWindow || m.checkpointProof.length > this.#n;
      case 'new_view':
        return m.viewChanges.length > this.#n || m.prePrepares.length > c.logWindow;
      case 'state':
        return (
          m.proof.length > this.#n ||
          m.entries.length > c.maxStateTransferEntries ||
          m.state.clients.length > c.maxClients ||
          m.state.snapshot.length > c.maxSnapshotBytes
        );
      case 'committed':
        return m.certificate.commits.length > this.#n;
      default:
        return false;
    }
  }

  #receive(m: PbftMessage, sender: ReplicaId): DropKind | null {
    if (messageProblem(m) !== null) return 'malformed';
    if (!this.#auth.isMember(m.from) || !this.#auth.isMember(sender)) return 'non_member';
    if (m.from !== sender && !FORWARDED_TYPES.has(m.type)) return 'wrong_sender';
    if (this.#oversized(m)) return 'too_large';
    if (m.type !== 'request' && !CHANNEL_VOUCHED.has(m.type) && !this.#auth.signed(m)) return 'bad_signature';
    if (m.from === this.id) return 'duplicate';
    switch (m.type) {
      case 'request':
        return this.#dropUnlessUsed(this.#admit(m.request));
      case 'pre_prepare':
      case 'prepare':
      case 'commit':
        return this.#onAgreement(m);
      case 'checkpoint':
        return this.#onCheckpoint(m);
      case 'view_change':
        return this.#onViewChange(m);
      case 'new_view':
        return this.#onNewView(m);
      case 'fetch':
        return this.#onFetch(m);
      case 'committed':
        return this.#onCommitted(m.certificate);
      case 'state_request':
        return this.#onStateRequest(m);
      case 'state':
        return this.#onState(m);
      case 'new_view_request':
        return this.#onNewViewRequest(m);
    }
  }

  #dropUnlessUsed(outcome: 'accepted' | 'replied' | DropKind): DropKind | null {
    return outcome === 'accepted' || outcome === 'replied' ? null : outcome;
  }

  // ---------------------------------------------------------------- requests

  #admit(r: ClientRequest): 'accepted' | 'replied' | DropKind {
    if (requestBytes(r) > this.#config.maxRequestBytes) return 'too_large';
    if (!this.#auth.request(r)) return 'bad_request';
    const done = this.#clients.get(r.client);
    if (done !== undefined && r.timestamp <= done.timestamp) {
      if (r.timestamp < done.timestamp) return 'duplicate';
      // The client missed our reply: send it again, once per retransmission period.
      if (!this.#allow('reply', r.client)) return 'rate_limited';
      this.#reply(done.client, done.timestamp, done.result);
      return 'replied';
    }
    const waiting = this.#pending.get(r.client);
    if (waiting !== undefined && waiting.timestamp >= r.timestamp) return 'duplicate';
    if (waiting === undefined && this.#pending.size >= this.#config.maxPendingRequests) return 'buffer_full';
    this.#pending.delete(r.client);
    this.#pending.set(r.client, r);
    this.#unbatched.delete(r.client);
    this.#unbatched.set(r.client, r);
    return 'accepted';
  }

  #forgetPending(client: ClientId, timestamp: number): void {
    if ((this.#pending.get(client)?.timestamp ?? Infinity) <= timestamp) this.#pending.delete(client);
    if ((this.#unbatched.get(client)?.timestamp ?? Infinity) <= timestamp) this.#unbatched.delete(client);
  }

  #reply(client: ClientId, timestamp: number, result: Uint8Array): void {
    this.#replies.push({ type: 'reply', from: this.id, view: this.#view, client, timestamp, result });
  }

  #relay(request: ClientRequest): RequestMessage {
    return { type: 'request', from: this.id, request };
  }

  /** A backup with requests the primary has not got executed. */
  #waitingOnPrimary(): boolean {
    return !this.isPrimary && this.#pending.size > 0;
  }

  #canBatch(): boolean {
    return (
      this.#active &&
      this.isPrimary &&
      this.#unbatched.size > 0 &&
      this.#nextSeq <= this.#high &&
      this.#nextSeq - 1 - this.#lastExecuted < this.#config.maxInflightBatches
    );
  }

  /** Primary: cut pending requests into pre-prepares while the window and the in-flight bound allow. */
  #flushBatches(): void {
    while (this.#canBatch()) {
      const batch: ClientRequest[] = [];
      let bytes = 0;
      for (const r of this.#unbatched.values()) {
        const size = requestBytes(r);
        if (batch.length >= this.#config.maxBatchRequests || bytes + size > this.#config.maxBatchBytes) break;
        batch.push(r);
        bytes += size;
      }
      const seq = this.#nextSeq++;
      const slot = this.#slot(seq);
      invariant(slot.prePrepare === null, () => `primary ${this.id} pre-prepares seq ${seq} twice in view ${this.#view}`);
      const pp = this.#seal<PrePrepare>({ type: 'pre_prepare', view: this.#view, seq, digest: batchDigest(batch), batch });
      this.#broadcast(pp);
      this.#accept(slot, pp);
    }
  }

  // ---------------------------------------------------------------- agreement

  #slot(seq: number): Slot {
    let slot = this.#slots.get(seq);
    if (slot === undefined) {
      slot = new Slot(seq, this.#view);
      this.#slots.set(seq, slot);
    }
    slot.align(this.#view);
    return slot;
  }

  #inWindow(seq: number): boolean {
    return seq > this.#h && seq <= this.#high;
  }

  #onAgreement(m: Agreement): DropKind | null {
    if (this.#inWindow(m.seq)) this.#highestSeen = Math.max(this.#highestSeen, m.seq);
    if (m.view > (this.#peerViews.get(m.from) ?? -1)) this.#peerViews.set(m.from, m.view);
    if (m.view < this.#view) return 'stale_view';
    if (m.view > this.#view || !this.#active) return this.#buffer(m);
    return this.#agree(m);
  }

  #buffer(m: Agreement): DropKind | null {
    const queue = this.#future.get(m.from) ?? [];
    if (queue.length >= this.#config.maxBufferedPerPeer) return 'buffer_full';
    queue.push(m);
    this.#future.set(m.from, queue);
    return null;
  }

  /** An agreement message of the current, active view. */
  #agree(m: Agreement): DropKind | null {
    if (!this.#inWindow(m.seq)) return 'outside_watermarks';
    const slot = this.#slot(m.seq);
    switch (m.type) {
      case 'pre_prepare':
        return this.#onPrePrepare(slot, m);
      case 'prepare': {
        if (m.from === this.primary) return 'not_primary';
        const outcome = slot.addVote(slot.prepares, m);
        if (outcome !== 'added') return outcome;
        this.#checkPrepared(slot);
        return null;
      }
      case 'commit': {
        const outcome = slot.addVote(slot.commits, m);
        if (outcome !== 'added') return outcome;
        this.#checkCommitted(slot);
        return null;
      }
    }
  }

  #onPrePrepare(slot: Slot, pp: PrePrepare): DropKind | null {
    if (pp.from !== this.primary) return 'not_primary';
    const problem = this.#auth.prePrepareBody(pp);
    if (problem !== null) return problem;
    if (slot.prePrepare !== null) {
      if (slot.prePrepare.digest === pp.digest) return 'duplicate';
      // Two signed pre-prepares for one (view, seq): proof the primary is faulty.
      this.#startViewChange(this.#view + 1);
      return 'equivocation';
    }
    if (slot.committed !== null && slot.committed.prePrepare.digest !== pp.digest) return 'equivocation';
    this.#accept(slot, pp);
    return null;
  }

  /** Take `pp` as the slot's pre-prepare of this view (from the primary, or from a new-view's O set). */
  #accept(slot: Slot, pp: PrePrepare): void {
    slot.prePrepare = pp;
    this.#dirtySlots.add(slot.seq);
    for (const r of pp.batch) {
      if ((this.#unbatched.get(r.client)?.timestamp ?? Infinity) <= r.timestamp) this.#unbatched.delete(r.client);
    }
    if (pp.from !== this.id && !slot.sentPrepare) {
      const prepare = this.#vote('prepare', pp);
      slot.prepares.set(this.id, prepare);
      slot.sentPrepare = true;
      this.#broadcast(prepare);
    }
    this.#checkPrepared(slot);
  }

  #vote<T extends 'prepare' | 'commit'>(type: T, pp: PrePrepare): T extends 'prepare' ? Prepare : Commit {
    return this.#seal({ type, view: pp.view, seq: pp.seq, digest: pp.digest } as Omit<Prepare | Commit, 'from' | 'signature'>) as T extends 'prepare'
      ? Prepare
      : Commit;
  }

  #checkPrepared(slot: Slot): void {
    const pp = slot.prePrepare;
    if (pp === null) return;
    if (!slot.preparedHere) {
      // Our commit says we hold a prepared certificate a view change can show: its prepares must verify.
      const prepares = this.#provenVotes(slot.prepares, slot.matchingPrepares(), 2 * this.f);
      if (prepares === null) return;
      slot.prepared = { prePrepare: pp, prepares };
      this.#dirtySlots.add(slot.seq);
    }
    if (!slot.sentCommit) {
      const commit = this.#vote('commit', pp);
      slot.commits.set(this.id, commit);
      slot.sentCommit = true;
      this.#dirtySlots.add(slot.seq);
      this.#broadcast(commit);
    }
    this.#checkCommitted(slot);
  }

  /**
   * `count` of `votes` whose signatures verify, checking no more than it
   * takes; null if there are not that many. Votes are counted on their
   * channel's word as they arrive, and their signatures checked only here,
   * where they become evidence: a vote that fails is forgotten (its sender
   * may vote again) and counted as Byzantine.
   */
  #provenVotes<V extends Prepare | Commit>(held: Map<ReplicaId, V>, votes: readonly V[], count: number): V[] | null {
    if (votes.length < count) return null;
    const proven: V[] = [];
    for (const vote of votes) {
      if (proven.length === count) break;
      if (this.#auth.signed(vote)) {
        proven.push(vote);
      } else {
        if (held.get(vote.from) === vote) held.delete(vote.from);
        this.#count('bad_signature');
      }
    }
    return proven.length === count ? proven : null;
  }

  #checkCommitted(slot: Slot): void {
    const pp = slot.prePrepare;
    if (slot.committed !== null || pp === null || !slot.preparedHere) return;
    const commits = slot.matchingCommits();
    if (commits.length < this.#auth.quorum) return;
    slot.commit({ prePrepare: pp, commits: commits.slice(0, this.#auth.quorum) });
    this.#dirtySlots.add(slot.seq);
  }

  #nextExecutable(): ExecuteBatch[] {
    const batches: ExecuteBatch[] = [];
    // Dedup against the table as it will be after the earlier batches of this same Ready.
    const executed = new Map<ClientId, number>();
    while (batches.length < this.#config.maxExecutePerReady) {
      const seq = this.#handedOut + 1;
      const certificate = this.#slots.get(seq)?.committed;
      if (certificate == null) break;
      const requests: ClientRequest[] = [];
      for (const r of certificate.prePrepare.batch) {
        if (r.timestamp <= (executed.get(r.client) ?? this.#clients.timestamp(r.client))) continue;
        executed.set(r.client, r.timestamp);
        requests.push(r);
      }
      batches.push({ seq, requests, checkpoint: seq % this.#config.checkpointInterval === 0 });
      this.#handedOut = seq;
    }
    return batches;
  }

  // ---------------------------------------------------------------- checkpoints

  #checkpointAt(seq: number, snapshot: Uint8Array): void {
    const state: CheckpointState = { snapshot, clients: this.#clients.records() };
    const digest = stateDigest(state);
    if (seq <= this.#h) {
      // We caught up to a checkpoint the others already made stable.
      if (seq === this.#h) {
        invariant(digest === this.#stable.digest, () => `${this.id} state at ${seq} is ${digest}, stable digest ${this.#stable.digest}`);
        if (this.#stable.state === null) {
          this.#stable.state = state;
          this.#stableDirty = true;
        }
      }
      return;
    }
    const message = this.#seal<Checkpoint>({ type: 'checkpoint', seq, digest });
    this.#ownCheckpoints.set(seq, { digest, state, message });
    this.#broadcast(message);
    this.#checkpointVotes.add(message);
    this.#checkStable();
  }

  #onCheckpoint(m: Checkpoint): DropKind | null {
    if (m.seq === 0 || m.seq % this.#config.checkpointInterval !== 0) return 'malformed';
    // A beacon for the checkpoint we hold as stable agrees with us: nothing to do, nothing wrong.
    if (m.seq === this.#h && m.digest === this.#stable.digest) return null;
    if (m.seq <= this.#h) return 'outside_watermarks';
    const outcome = this.#checkpointVotes.add(m);
    if (outcome !== 'added') return outcome;
    this.#checkStable();
    return null;
  }

  #checkStable(): void {
    const best = this.#checkpointVotes.highestQuorum(this.#auth.quorum);
    if (best !== null && best.seq > this.#h) this.#makeStable(best.seq, best.digest, best.proof);
  }

  #makeStable(seq: number, digest: Digest, proof: readonly Checkpoint[]): void {
    invariant(seq > this.#h, () => `stable checkpoint moving back from ${this.#h} to ${seq}`);
    const own = this.#ownCheckpoints.get(seq);
    invariant(
      own === undefined || own.digest === digest,
      () => `${this.id} state at ${seq} is ${own?.digest}, but 2f + 1 replicas signed ${digest}`,
    );
    this.#stable = { seq, digest, proof, state: own?.state ?? null };
    this.#stableDirty = true;
    // Only a primary cut off from a newer view can be this far behind (its
    // view's sequence numbers were settled elsewhere); never reuse them.
    this.#nextSeq = Math.max(this.#nextSeq, seq + 1);
    this.#checkpointVotes.discardThrough(seq);
    for (const s of [...this.#ownCheckpoints.keys()]) if (s <= seq) this.#ownCheckpoints.delete(s);
    // Slots at or below h only matter if they can still run here; a replica too far behind must fetch the state.
    const farBehind = this.#lastExecuted < seq - this.#config.logWindow;
    for (const [s, slot] of this.#slots) if (s <= seq && (slot.committed === null || farBehind)) this.#slots.delete(s);
    this.#gc();
    if (this.#stable.state === null && this.#missingCommitted(seq)) this.#requestState();
  }

  /** Some seq in (handedOut, upTo] is not committed here. */
  #missingCommitted(upTo: number): boolean {
    for (let s = this.#handedOut + 1; s <= upTo; s++) if (this.#slots.get(s)?.committed == null) return true;
    return false;
  }

  #gc(): void {
    const below = Math.min(this.#h, this.#lastExecuted);
    for (const s of this.#slots.keys()) if (s <= below) this.#slots.delete(s);
  }

  // ---------------------------------------------------------------- view change

  #timeout(): number {
    return this.#config.viewChangeTicks * 2 ** Math.min(this.#attempts, this.#config.maxBackoffShift);
  }

  #buildViewChange(): ViewChange {
    const prepared = [...this.#slots.values()]
      .filter((s) => s.seq > this.#h && s.prepared !== null)
      .sort((a, b) => a.seq - b.seq)
      .map((s) => s.prepared)
      .filter((c) => c !== null);
    return this.#seal<ViewChange>({
      type: 'view_change',
      view: this.#view,
      checkpoint: { seq: this.#stable.seq, digest: this.#stable.digest },
      checkpointProof: this.#stable.proof,
      prepared,
    });
  }

  #startViewChange(view: number): void {
    invariant(view > this.#view, () => `view change to ${view} from view ${this.#view}`);
    this.#view = view;
    this.#active = false;
    this.#viewDirty = true;
    this.#attempts++;
    this.#viewChangesStarted++;
    this.#viewChangeTicks = 0;
    this.#viewChangeTimerRunning = false;
    this.#progressTicks = 0;
    this.#ownViewChange = this.#buildViewChange();
    this.#viewChanges.set(this.id, this.#ownViewChange);
    this.#broadcast(this.#ownViewChange);
    this.#afterViewChange();
  }

  #onViewChange(vc: ViewChange): DropKind | null {
    if (!this.#auth.viewChange(vc)) return 'invalid_certificate';
    if (vc.view < this.#view || (vc.view === this.#view && this.#active)) {
      // The sender is behind: our new-view brings it into this view.
      if (this.#active && this.#newView !== null && this.#allow('new_view', vc.from)) this.#sendTo(vc.from, this.#newView);
      return 'stale_view';
    }
    const known = this.#viewChanges.get(vc.from);
    if (known !== undefined && known.view >= vc.view) return 'duplicate';
    this.#viewChanges.set(vc.from, vc);
    this.#afterViewChange();
    return null;
  }

  #afterViewChange(): void {
    // f + 1 replicas beyond our view include an honest one: join the highest view f + 1 of them reached.
    const ahead = [...this.#viewChanges.values()]
      .filter((vc) => vc.from !== this.id && vc.view > this.#view)
      .map((vc) => vc.view)
      .sort((a, b) => b - a);
    const join = ahead[this.f];
    if (join !== undefined) return this.#startViewChange(join);
    if (this.#active) return;
    // The paper starts the new-view timer only once a quorum is moving, so a
    // lone replica does not race ahead. Replicas already beyond our view count
    // as moving: they will not send a view-change for ours again, and without
    // them honest replicas split over two views could wait on each other forever.
    const moving = [...this.#viewChanges.values()].filter((vc) => vc.view >= this.#view);
    if (moving.length < this.#auth.quorum) return;
    this.#viewChangeTimerRunning = true;
    const forView = moving.filter((vc) => vc.view === this.#view);
    if (forView.length >= this.#auth.quorum && this.isPrimary && this.#newView?.view !== this.#view) this.#sendNewView(forView);
  }

  #sendNewView(forView: readonly ViewChange[]): void {
    const own = this.#viewChanges.get(this.id);
    invariant(own !== undefined && own.view === this.#view, () => `primary ${this.id} of view ${this.#view} has no view-change of its own`);
    const others = forView.filter((vc) => vc.from !== this.id).sort((a, b) => (a.from < b.from ? -1 : 1));
    const chosen = [own, ...others].slice(0, this.#auth.quorum);
    const order = this.#auth.newViewOrder(chosen);
    const prePrepares = order.entries.map((e) =>
      this.#seal<PrePrepare>({ type: 'pre_prepare', view: this.#view, seq: e.seq, digest: e.digest, batch: e.batch }),
    );
    const nv = this.#seal<NewView>({ type: 'new_view', view: this.#view, viewChanges: chosen, prePrepares });
    this.#broadcast(nv);
    this.#enterView(nv, order);
  }

  #onNewView(nv: NewView): DropKind | null {
    if (nv.view < this.#view || (nv.view === this.#view && this.#active)) return 'stale_view';
    if (nv.from !== this.#auth.primary(nv.view)) return 'not_primary';
    const order = this.#auth.newView(nv);
    if (order === null) return 'invalid_certificate';
    this.#enterView(nv, order);
    return null;
  }

  #enterView(nv: NewView, order: NewViewOrder): void {
    invariant(nv.view >= this.#view, () => `entering view ${nv.view} from view ${this.#view}`);
    this.#view = nv.view;
    this.#active = true;
    this.#viewDirty = true;
    this.#newView = nv;
    this.#ownViewChange = null;
    this.#progressTicks = 0;
    this.#viewChangeTicks = 0;
    this.#viewChangeTimerRunning = false;
    for (const [peer, vc] of this.#viewChanges) if (vc.view <= nv.view) this.#viewChanges.delete(peer);
    if (order.checkpoint.seq > this.#h) this.#makeStable(order.checkpoint.seq, order.checkpoint.digest, order.checkpointProof);
    const inO = new Map<ClientId, number>();
    let maxS = order.checkpoint.seq;
    for (const pp of nv.prePrepares) {
      maxS = Math.max(maxS, pp.seq);
      for (const r of pp.batch) inO.set(r.client, Math.max(inO.get(r.client) ?? -1, r.timestamp));
      if (pp.seq <= this.#h) continue;
      const slot = this.#slot(pp.seq);
      invariant(
        slot.committed === null || slot.committed.prePrepare.digest === pp.digest,
        () => `new view ${nv.view} orders ${pp.digest} at seq ${pp.seq}, which committed ${slot.committed?.prePrepare.digest} here`,
      );
      this.#accept(slot, pp);
    }
    this.#nextSeq = Math.max(maxS, this.#h) + 1;
    invariant(
      this.#nextSeq > this.#handedOut || !this.isPrimary,
      () => `new view ${nv.view} ends at ${maxS}, below seq ${this.#handedOut} executed by its primary`,
    );
    this.#unbatched = new Map([...this.#pending].filter(([client, r]) => r.timestamp > (inO.get(client) ?? -1)));
    this.#replayFuture();
  }

  #replayFuture(): void {
    for (const [peer, queue] of [...this.#future]) {
      const now = queue.filter((m) => m.view === this.#view);
      const later = queue.filter((m) => m.view > this.#view);
      if (later.length > 0) this.#future.set(peer, later);
      else this.#future.delete(peer);
      for (const m of now) {
        const drop = this.#agree(m);
        if (drop !== null) this.#count(drop);
      }
    }
  }

  #onNewViewRequest(m: NewViewRequest): DropKind | null {
    if (this.#newView === null || this.#newView.view < m.view) return null;
    if (!this.#allow('new_view', m.from)) return 'rate_limited';
    this.#sendTo(m.from, this.#newView);
    return null;
  }

  // ---------------------------------------------------------------- catching up

  #onFetch(m: Fetch): DropKind | null {
    if (!this.#allow('fetch', m.from)) return 'rate_limited';
    if (m.seq <= this.#h) {
      // Collected already: show the stable checkpoint, which sends the fetcher to state transfer.
      for (const c of this.#stable.proof) this.#sendTo(m.from, c);
      return null;
    }
    for (const certificate of this.#committedFrom(m.seq, this.#config.maxRetransmitSlots)) {
      this.#sendTo(m.from, this.#seal<Committed>({ type: 'committed', certificate }));
    }
    return null;
  }

  #committedFrom(seq: number, limit: number): CommitCertificate[] {
    const certificates: CommitCertificate[] = [];
    for (let s = seq; certificates.length < limit; s++) {
      const c = this.#provenCommit(s);
      if (c === null) break;
      certificates.push(c);
    }
    return certificates;
  }

  /**
   * The commit certificate of `seq` as evidence for a peer: every signature
   * in it checked. This replica committed on its channels' word (the commits
   * of its own certificate are unchecked); if one of them fails, the
   * certificate is rebuilt from the commits that verify, or not shown at all.
   */
  #provenCommit(seq: number): CommitCertificate | null {
    const slot = this.#slots.get(seq);
    const certificate = slot?.committed;
    if (slot === undefined || certificate == null) return null;
    if (this.#auth.commitCertificate(certificate)) return certificate;
    const pp = certificate.prePrepare;
    const candidates = new Map<ReplicaId, Commit>();
    for (const c of [...certificate.commits, ...slot.commits.values()]) {
      if (c.view === pp.view && c.digest === pp.digest && !candidates.has(c.from)) candidates.set(c.from, c);
    }
    const commits = this.#provenVotes(slot.commits, [...candidates.values()], this.#auth.quorum);
    if (commits === null) return null;
    const proven = { prePrepare: pp, commits };
    if (!this.#auth.commitCertificate(proven)) return null;
    slot.replaceCommitted(proven);
    this.#dirtySlots.add(seq);
    return proven;
  }

  #onCommitted(certificate: CommitCertificate): DropKind | null {
    const seq = certificate.prePrepare.seq;
    if (seq <= this.#handedOut) return 'duplicate';
    if (seq > this.#high || seq <= this.#h - this.#config.logWindow) return 'outside_watermarks';
    if (!this.#auth.commitCertificate(certificate)) return 'invalid_certificate';
    const slot = this.#slot(seq);
    if (slot.committed !== null) {
      invariant(slot.committed.prePrepare.digest === certificate.prePrepare.digest, () => `two commit certificates for seq ${seq}`);
      return 'duplicate';
    }
    // Its primary signed a different pre-prepare for the same view and seq than the one it sent us: proof of equivocation.
    const ours = slot.prePrepare;
    const theirs = certificate.prePrepare;
    if (ours !== null && ours.from === theirs.from && ours.view === theirs.view && ours.digest !== theirs.digest) this.#count('equivocation');
    slot.commit(certificate);
    this.#dirtySlots.add(seq);
    return null;
  }

  #requestState(): void {
    // One peer at a time, rotating, so a silent Byzantine responder only costs one retry.
    const peers = this.#auth.members.filter((m) => m !== this.id);
    const to = peers[this.#stateRequests++ % peers.length] as ReplicaId;
    this.#sendTo(to, this.#seal<StateRequest>({ type: 'state_request', seq: this.#h }));
  }

  #onStateRequest(m: StateRequest): DropKind | null {
    const stable = this.#stable;
    if (stable.state === null || stable.seq === 0 || stable.seq < m.seq) return null;
    if (!this.#allow('state', m.from)) return 'rate_limited';
    this.#sendTo(
      m.from,
      this.#seal<StateMessage>({
        type: 'state',
        checkpoint: { seq: stable.seq, digest: stable.digest },
        proof: stable.proof,
        state: stable.state,
        entries: this.#committedFrom(stable.seq + 1, this.#config.maxStateTransferEntries),
      }),
    );
    return null;
  }

  #onState(m: StateMessage): DropKind | null {
    const ref = m.checkpoint;
    // Nothing here we lack: skip the proof and the (snapshot-sized) digest.
    if (ref.seq <= this.#handedOut && !m.entries.some((c) => c.prePrepare.seq > this.#handedOut)) return 'duplicate';
    if (ref.seq === 0 || !this.#auth.checkpointProof(ref, m.proof)) return 'invalid_certificate';
    if (stateDigest(m.state) !== ref.digest) return 'digest_mismatch';
    let used = false;
    if (ref.seq > this.#handedOut) {
      this.#installState(ref.seq, ref.digest, m.proof, m.state);
      used = true;
    }
    for (const certificate of m.entries) {
      const drop = this.#onCommitted(certificate);
      if (drop === null) used = true;
      else if (drop !== 'duplicate') return drop;
    }
    return used ? null : 'duplicate';
  }

  #installState(seq: number, digest: Digest, proof: readonly Checkpoint[], state: CheckpointState): void {
    this.#lastExecuted = seq;
    this.#handedOut = seq;
    this.#clients.replace(state.clients);
    this.#install = { seq, snapshot: state.snapshot };
    for (const [client, r] of [...this.#pending]) if (r.timestamp <= this.#clients.timestamp(client)) this.#forgetPending(client, r.timestamp);
    this.#progressTicks = 0;
    if (seq > this.#h) {
      this.#ownCheckpoints.set(seq, { digest, state, message: this.#seal<Checkpoint>({ type: 'checkpoint', seq, digest }) });
      this.#makeStable(seq, digest, proof);
    } else if (seq === this.#h && this.#stable.state === null) {
      this.#stable.state = state;
      this.#stableDirty = true;
    }
    for (const s of [...this.#ownCheckpoints.keys()]) if (s <= seq) this.#ownCheckpoints.delete(s);
    this.#gc();
  }

  /** Every retransmitTicks: resend what a lossy network may have eaten, and ask for what we miss. */
  #retransmitRound(): void {
    const stalled = this.#lastExecuted === this.#lastRoundExecuted;
    this.#lastRoundExecuted = this.#lastExecuted;
    if (!this.#active && this.#ownViewChange !== null) this.#broadcast(this.#ownViewChange);
    this.#askForNewView();
    const work = this.#pending.size > 0 || this.#highestSeen > this.#lastExecuted || this.#h > this.#lastExecuted;
    if (!stalled || !work || this.#handedOut > this.#lastExecuted) return;
    if (this.#h > this.#lastExecuted && this.#stable.state === null && this.#missingCommitted(this.#h)) this.#requestState();
    else if (this.#slots.get(this.#lastExecuted + 1)?.committed == null) {
      this.#broadcast(this.#seal<Fetch>({ type: 'fetch', seq: this.#lastExecuted + 1 }));
    }
    const latest = [...this.#ownCheckpoints.values()].at(-1);
    if (latest !== undefined) this.#broadcast(latest.message);
    if (!this.#active) return;
    for (let s = this.#lastExecuted + 1; s <= this.#lastExecuted + this.#config.maxRetransmitSlots; s++) {
      const slot = this.#slots.get(s);
      if (slot === undefined || slot.view !== this.#view) continue;
      if (slot.prePrepare?.from === this.id) this.#broadcast(slot.prePrepare);
      const prepare = slot.sentPrepare ? slot.prepares.get(this.id) : undefined;
      if (prepare !== undefined) this.#broadcast(prepare);
      const commit = slot.sentCommit ? slot.commits.get(this.id) : undefined;
      if (commit !== undefined) this.#broadcast(commit);
    }
    if (!this.isPrimary) {
      let n = 0;
      for (const request of this.#pending.values()) {
        if (n++ >= this.#config.maxRetransmitSlots) break;
        this.#sendTo(this.primary, this.#relay(request));
      }
    }
  }

  /** f + 1 peers are in views above ours (so an honest one is): ask them for the new-view we missed. */
  #askForNewView(): void {
    const ahead = [...this.#peerViews].filter(([, v]) => v > this.#view).sort((a, b) => b[1] - a[1]);
    const target = ahead[this.f]?.[1];
    if (target === undefined) return;
    for (const [peer, v] of ahead) {
      if (v >= target) this.#sendTo(peer, this.#seal<NewViewRequest>({ type: 'new_view_request', view: target }));
    }
  }

  /** Rate limit for answers that cost us more than the question cost the asker. */
  #allow(kind: string, peer: string): boolean {
    const key = `${kind}\u0000${peer}`;
    const last = this.#served.get(key);
    if (last !== undefined && this.#ticks - last < this.#config.retransmitTicks) return false;
    if (this.#served.size > 64 * this.#n) this.#served.clear();
    this.#served.set(key, this.#ticks);
    return true;
  }

  // ---------------------------------------------------------------- plumbing

  #seal<M extends SignedMessage>(body: Omit<M, 'from' | 'signature'>): M {
    const message = seal<M>({ ...body, from: this.id } as Omit<M, 'signature'>, this.#sign);
    this.#auth.vouch(message);
    return message;
  }

  #broadcast(message: PbftMessage): void {
    this.#messages.push({ to: null, message });
  }

  #sendTo(to: ReplicaId, message: PbftMessage): void {
    this.#messages.push({ to, message });
  }

  #softState(): SoftState {
    return { view: this.#view, primary: this.primary, active: this.#active };
  }

  #sameSoftState(): boolean {
    const r = this.#reported;
    return r !== null && r.view === this.#view && r.active === this.#active;
  }

  #assertState(): void {
    const c = this.#config;
    invariant(this.#h % c.checkpointInterval === 0, () => `stable checkpoint ${this.#h} is not a multiple of ${c.checkpointInterval}`);
    invariant(this.#lastExecuted <= this.#handedOut, () => `executed ${this.#lastExecuted} past handed out ${this.#handedOut}`);
    invariant(
      this.#stable.state === null || this.#lastExecuted >= this.#h,
      () => `holds the state of checkpoint ${this.#h} but executed only ${this.#lastExecuted}`,
    );
    invariant(this.#nextSeq <= this.#high + 1, () => `next seq ${this.#nextSeq} beyond high watermark ${this.#high}`);
    invariant(this.#slots.size <= 2 * c.logWindow, () => `${this.#slots.size} slots held, bound ${2 * c.logWindow}`);
    invariant(this.#pending.size <= c.maxPendingRequests, () => `${this.#pending.size} pending requests, bound ${c.maxPendingRequests}`);
    invariant(this.#viewChanges.size <= this.#n, () => `${this.#viewChanges.size} view-changes held for ${this.#n} members`);
  }
}

export type { Verify } from './certificates.ts';
