/**
 * RaftNode: the driver that runs one RaftCore against real time, a durable
 * log store, a transport and a state machine, and turns the core's batches
 * into answers for clients (a proposal's result, a linearizable read).
 *
 * Storage writes are asynchronous and pipelined (the core's contract,
 * types.ts Ready): a Ready's write is queued and the driver moves on at once,
 * so the next Ready's work (replicating new proposals, applying what
 * committed, answering followers) overlaps the fsync. The store commits the
 * writes queued while one is syncing together (group commit), in order; when
 * one lands the driver tells the core (persisted(), which may let a leader
 * commit on its own copy) and releases the messages that waited for it (acks,
 * votes). Committed entries are applied as soon as a Ready names them: they
 * are durable on a majority already.
 *
 * Client-facing invariants:
 * - Every wait is bounded by the caller's deadline and ends in a result or a
 *   RaftClientError whose code says whether a retry can help.
 * - A proposal resolves only when the entry it created is applied with the
 *   term it was proposed in; an entry overwritten by another leader is
 *   reported `lost` (retry with the same client id and sequence: the state
 *   machine deduplicates).
 * - A read resolves only after the state machine has applied the index the
 *   leader confirmed (ReadIndex), so it reflects every write acknowledged
 *   before the read began.
 * - A storage failure is fatal: the node stops rather than send what it
 *   could not persist.
 * - stop() waits for every queued write, so everything acknowledged is on disk.
 */
import type { Logger } from '../../log.ts';
import type { ProposalResult, RaftMetrics } from '../../metrics/metrics.ts';
import type { ConfigChangeResult, RaftStatus } from './core.ts';
import { RaftCore } from './core.ts';
import type {
  ConfigChange,
  DropReason,
  Membership,
  Message,
  NodeId,
  PersistedState,
  ProposeResult,
  RaftConfig,
  Ready,
  Role,
  Snapshot,
  SnapshotMeta,
  SnapshotSource,
} from './types.ts';
import { RaftInputError, RaftInvariantError, snapshotBytes } from './types.ts';
import { ReadyLoop } from '../../driver/ready-loop.ts';
import { DwcpError, type DwcpErrorCode } from '../../errors.ts';

/** The replicated state machine; must be deterministic. */
export interface RaftStateMachine<R> {
  /** Applies a committed command (never the leader's empty no-op). */
  apply(index: number, data: Uint8Array): R;
  /** The state as of now, encoded lazily: its pieces are written while later entries apply (SnapshotSource). */
  snapshot(): SnapshotSource;
  restore(data: Uint8Array): void;
}

/** The durable half of the driver (RaftStorage). */
export interface RaftLogStore {
  persist(ready: Pick<Ready, 'hardState' | 'snapshot' | 'entries' | 'mustSync'>): Promise<void>;
  /** Writes a snapshot's file from its source, alongside the log's writes; resolves once it is durable, with the snapshot reading from it. */
  writeSnapshot(meta: SnapshotMeta, source: SnapshotSource): Promise<Snapshot>;
  /** Names a written snapshot in the log, after every earlier write: the entries it covers are compacted. */
  saveSnapshot(snapshot: Snapshot): Promise<void>;
}

/** Best-effort delivery of one Ready's messages for one peer; Raft tolerates loss. Must not throw. */
export interface RaftSender {
  send(to: NodeId, messages: readonly Message[]): void;
}

export type RaftClientErrorCode = Extract<DwcpErrorCode, 'not_leader' | 'no_leader' | 'timeout' | 'dropped' | 'lost' | 'rejected' | 'stopped'>;

/** Whether a retry can help is the code's (errors.ts): the same request may succeed later with the same client id and sequence, so it applies once. */
export class RaftClientError extends DwcpError<RaftClientErrorCode> {
  readonly leaderHint: NodeId | null;
  /** A `dropped` proposal this node's core refused for a reason that clears by itself: the caller waits it out under retry() (an Attempt marked `refused`). */
  readonly refusedForNow: boolean;

  constructor(code: RaftClientErrorCode, message: string, leaderHint: NodeId | null = null, refusedForNow = false) {
    super(code, message, leaderHint === null ? {} : { details: { leader: leaderHint } });
    this.leaderHint = leaderHint;
    this.refusedForNow = refusedForNow;
  }
}

export interface RaftNodeOptions<R> {
  readonly id: NodeId;
  readonly persisted: PersistedState;
  readonly store: RaftLogStore;
  readonly sender: RaftSender;
  readonly machine: RaftStateMachine<R>;
  readonly random: () => number;
  readonly config?: Partial<RaftConfig>;
  /** Wall-clock length of one core tick. */
  readonly tickMs: number;
  /** Take a snapshot and compact the log once this many entries were applied since the last one. */
  readonly snapshotEntries: number;
  readonly metrics?: RaftMetrics;
  readonly log: Logger;
  /** Called once if the node stops on its own (storage or invariant failure); the daemon exits so it is restarted. */
  readonly onFatal?: (err: Error) => void;
}

export interface RaftNodeStatus extends RaftStatus {
  readonly tickMs: number;
  readonly pendingProposals: number;
  readonly pendingReads: number;
}

/**
 * One try of a request under RaftNode.retry: its outcome, or why to try again
 * at the next change. `refused`: this node's core refused the proposal for a
 * reason that clears by itself; a request whose deadline passes on such a
 * refusal is counted once as a proposal timeout (result="timeout").
 */
export type Attempt<T> = { readonly done: T } | { readonly retry: string; readonly refused?: boolean };

interface PendingProposal<R> {
  readonly term: number;
  resolve(result: R): void;
  reject(err: RaftClientError): void;
}

interface PendingRead {
  resolve(): void;
  reject(err: RaftClientError): void;
}

/** Drop reasons that clear up by themselves (a new leader settling, a transfer or config change ending). */
const TRANSIENT_DROPS: ReadonlySet<DropReason> = new Set([
  'leader_not_ready',
  'transferring',
  'config_change_in_flight',
  'uncommitted_limit',
  'pending_read_limit',
  'learner_behind',
]);

/**
 * The log keeps a proposal until the next compaction: one that is a view into
 * a larger buffer (a forwarded command inside its frame, a slice of a pooled
 * slab) is copied, so it does not pin that buffer. (Entries a follower
 * receives are copied per append by the wire decoder.)
 */
function ownBytes(data: Uint8Array): Uint8Array {
  return data.byteOffset === 0 && data.byteLength === data.buffer.byteLength ? data : new Uint8Array(data);
}

/**
 * Whether a member whose latest snapshot is at `snapshotIndex` takes the next
 * one at `applied`: once per `every` entries, at indices k·every + phase, and
 * not within every/2 entries of the last (so the gap is every/2 to every, and
 * `every` once in step). Each member of a group has a phase of its own
 * (compactionPhase), so they encode their states one after another instead
 * of all at the same index: an encoding costs a member CPU and disk in
 * proportion to the whole state, and three at once on shared cores held up
 * every put in flight.
 */
export function compactionDue(applied: number, snapshotIndex: number, every: number, phase: number): boolean {
  if (applied - snapshotIndex < every / 2) return false;
  return Math.floor((applied - phase) / every) > Math.floor((snapshotIndex - phase) / every);
}

/** `id`'s phase for compactionDue: its place among the group's members, spread evenly over `every`. */
export function compactionPhase(id: NodeId, members: readonly NodeId[], every: number): number {
  const sorted = [...new Set(members)].sort();
  const rank = sorted.indexOf(id);
  return rank < 0 ? 0 : Math.floor((rank * every) / sorted.length);
}

function deadlineError(what: string, ms: number, leader: NodeId | null): RaftClientError {
  const state = leader === null ? 'no leader is known (no quorum reachable?)' : `the leader is ${leader}`;
  return new RaftClientError('timeout', `${what} did not complete within ${ms} ms; ${state}`, leader);
}

export class RaftNode<R> {
  readonly id: NodeId;
  readonly #core: RaftCore;
  readonly #opts: RaftNodeOptions<R>;
  readonly #log: Logger;
  readonly #metrics: RaftMetrics | undefined;
  readonly #proposals = new Map<number, PendingProposal<R>>();
  readonly #reads = new Map<string, PendingRead>();
  /** Confirmed reads waiting for the state machine to reach their index. */
  readonly #readsToServe: { index: number; read: PendingRead }[] = [];
  #readSeq = 0;
  #applied: number;
  #ticker: NodeJS.Timeout | undefined;
  #stopped = false;
  #failure: Error | null = null;
  /** Resolved (and replaced) whenever something a waiting client may care about changed. */
  #progress = Promise.withResolvers<void>();
  #role: Role = 'follower';
  #leader: NodeId | null = null;
  /** The last storage write queued (it settles after every earlier one); null once it landed. */
  #lastWrite: Promise<void> | null = null;
  /** A snapshot being saved; the next is not taken before it lands. */
  #snapshotting: Promise<void> | null = null;
  #phase: { membership: Membership; phase: number } | null = null;

  constructor(opts: RaftNodeOptions<R>) {
    this.id = opts.id;
    this.#opts = opts;
    this.#log = opts.log;
    this.#metrics = opts.metrics;
    this.#core = new RaftCore({ id: opts.id, storage: opts.persisted, random: opts.random, config: opts.config });
    const snapshot = opts.persisted.snapshot;
    if (snapshot.meta.index > 0) opts.machine.restore(snapshotBytes(snapshot.data));
    this.#applied = Math.max(snapshot.meta.index, opts.persisted.applied ?? 0);
    this.#metrics?.term.set(this.#core.term);
    this.#metrics?.isLeader.set(0);
  }

  start(): void {
    if (this.#ticker !== undefined || this.#stopped) return;
    this.#ticker = setInterval(() => {
      this.#core.tick();
      this.#schedule();
      // Waiters re-check once per tick too: some conditions they wait on
      // (a learner catching up, a transfer target's log) show no other event here.
      this.#signalProgress();
    }, this.#opts.tickMs);
    this.#schedule();
  }

  get role(): Role {
    return this.#role;
  }

  get leader(): NodeId | null {
    return this.#leader;
  }

  get isLeader(): boolean {
    return this.#role === 'leader';
  }

  get applied(): number {
    return this.#applied;
  }

  status(): RaftNodeStatus {
    return {
      ...this.#core.status(),
      tickMs: this.#opts.tickMs,
      pendingProposals: this.#proposals.size,
      pendingReads: this.#reads.size + this.#readsToServe.length,
    };
  }

  /** Messages from `from`, already authenticated and schema-checked by the transport. */
  receive(messages: readonly Message[]): void {
    if (this.#stopped) return;
    for (const m of messages) {
      try {
        this.#core.step(m);
      } catch (err) {
        if (err instanceof RaftInputError) {
          this.#log.warn({ peer: m.from, type: m.type, err: err.message }, 'raft message refused');
          continue;
        }
        this.#fail(err);
        return;
      }
    }
    this.#schedule();
  }

  /**
   * Proposes a command once and resolves with the state machine's result
   * once it is applied. Only the leader takes proposals; others fail
   * `not_leader` (with the leader to forward to) or `no_leader`. A proposal
   * the leader refuses for now (a transfer or config change in flight, a full
   * uncommitted tail) fails `dropped` at once: the caller retries it under
   * retry(), which also follows the leader when it moves. A caller that has
   * a deadline of its own passes it (one timer per request, not two);
   * timeoutMs then only words the error.
   */
  async propose(data: Uint8Array, timeoutMs: number, deadline: AbortSignal = AbortSignal.timeout(timeoutMs)): Promise<R> {
    this.#throwIfStopped();
    const offered = this.#offer('proposal', this.#core.propose(ownBytes(data)));
    if ('retry' in offered) throw new RaftClientError('dropped', `proposal refused for now: ${offered.retry}`, this.#leader, true);
    this.#schedule();
    return this.#awaitApplied(offered.done, deadline, 'proposal', timeoutMs);
  }

  /**
   * The one retry loop of the Raft client path: runs `attempt`, and again at
   * each change a waiting client may care about (see waitForChange), until it
   * is done or throws; once `deadline` passes, throws onTimeout(the last
   * reason to retry). It lives here, beside the change signal it waits on, and
   * callers pass single attempts (propose does not retry on its own): a write
   * retried by two nested loops, one here for the leader's own refusals and
   * one above for leader changes, waited twice on the same signal and could
   * time out in either with a different story. A request that times out on
   * this node's own refusal (`refused`) is counted here, once, not per attempt.
   */
  async retry<T>(deadline: AbortSignal, attempt: () => Attempt<T> | Promise<Attempt<T>>, onTimeout: (reason: string) => Error): Promise<T> {
    for (;;) {
      const outcome = await attempt();
      if ('done' in outcome) return outcome.done;
      if (!(await this.waitForChange(deadline))) {
        if (outcome.refused === true) this.#countProposal('timeout');
        throw onTimeout(outcome.retry);
      }
    }
  }

  /**
   * Waits until this node's state machine reflects every write committed
   * before the call (ReadIndex through the leader), then returns; the caller
   * reads its state machine directly afterwards.
   */
  async readBarrier(timeoutMs: number): Promise<void> {
    const deadline = AbortSignal.timeout(timeoutMs);
    for (;;) {
      this.#throwIfStopped();
      const ctx = `${this.id}:${++this.#readSeq}`;
      const result = this.#core.readIndex(ctx);
      this.#schedule();
      if (result.kind === 'not_leader') {
        await this.#waitForProgress(deadline, () => deadlineError('read', timeoutMs, this.#leader));
        continue;
      }
      if (result.kind === 'dropped') {
        if (!TRANSIENT_DROPS.has(result.reason)) throw new RaftClientError('dropped', `read refused: ${result.reason}`);
        await this.#waitForProgress(deadline, () => deadlineError('read', timeoutMs, this.#leader));
        continue;
      }
      const confirmed = await this.#awaitRead(ctx, deadline, timeoutMs);
      if (confirmed) return;
      // The leader never answered this round (it was lost with a leader change): ask again.
    }
  }

  /** Proposes a membership change, waiting out refusals that clear by themselves (a learner catching up, another change in flight). */
  async changeMembership(change: ConfigChange, timeoutMs: number): Promise<void> {
    const deadline = AbortSignal.timeout(timeoutMs);
    const what = `${change.type} ${change.node}`;
    const submitted = await this.retry(
      deadline,
      () => {
        this.#throwIfStopped();
        return this.#offer(what, this.#core.proposeConfigChange(change));
      },
      (reason) => new RaftClientError('timeout', `${what} not accepted within ${timeoutMs} ms (${reason})`, this.#leader),
    );
    this.#schedule();
    await this.#awaitApplied(submitted, deadline, what, timeoutMs);
  }

  /** Hands leadership to `to` (or the most caught-up voter) and resolves with the new leader once this node follows it. */
  async transferLeadership(to: NodeId | null, timeoutMs: number): Promise<NodeId> {
    const deadline = AbortSignal.timeout(timeoutMs);
    const target = to ?? this.#bestTransferee();
    if (target === null) throw new RaftClientError('rejected', 'no other voter to transfer leadership to');
    const result = this.#core.transferLeadership(target);
    this.#schedule();
    if (result.kind === 'not_leader') throw this.#notLeader(result.leaderHint);
    if (result.kind === 'rejected') throw new RaftClientError('rejected', result.reason);
    // Done once this node has heard from a new leader (normally the target),
    // not merely stepped down: the caller is told who actually leads.
    while (this.#role === 'leader' || this.#leader === null) {
      await this.#waitForProgress(deadline, () => deadlineError(`leadership transfer to ${target}`, timeoutMs, this.#leader));
    }
    return this.#leader;
  }

  /**
   * Stops ticking and taking input, lets the Ready being persisted finish
   * (so what it acknowledged is on disk), and fails every waiting client.
   * With `transferMs`, a leader first hands leadership to a caught-up voter.
   */
  async stop(opts: { transferMs?: number } = {}): Promise<void> {
    if (opts.transferMs !== undefined && this.#role === 'leader' && !this.#stopped) {
      try {
        const to = await this.transferLeadership(null, opts.transferMs);
        this.#log.info({ to }, 'raft leadership transferred for shutdown');
      } catch (err) {
        this.#log.warn({ err: err instanceof Error ? err.message : String(err) }, 'raft leadership transfer on shutdown failed');
      }
    }
    this.#stopped = true;
    clearInterval(this.#ticker);
    await this.#loop.idle();
    // What was acknowledged waits on these writes; let them land (a failure already stopped the node).
    await Promise.allSettled([this.#lastWrite, this.#snapshotting]);
    this.#failAll(new RaftClientError('stopped', 'raft node is stopping'));
  }

  // ---------------------------------------------------------------- clients

  /** The core's answer to one proposal: its place in the log, a refusal that clears by itself (retry), or a RaftClientError. */
  #offer(what: string, result: ProposeResult | ConfigChangeResult): Attempt<{ index: number; term: number }> {
    switch (result.kind) {
      case 'accepted':
        return { done: result };
      case 'not_leader':
        this.#countProposal(result.leaderHint === null ? 'no_leader' : 'not_leader');
        throw this.#notLeader(result.leaderHint);
      case 'rejected':
        throw new RaftClientError('rejected', `${what} rejected: ${result.reason}`);
      case 'dropped':
        if (TRANSIENT_DROPS.has(result.reason)) return { retry: result.reason, refused: true };
        this.#countProposal('dropped');
        throw new RaftClientError('dropped', `${what} refused: ${result.reason}`);
    }
  }

  #awaitApplied(submitted: { index: number; term: number }, deadline: AbortSignal, what: string, timeoutMs: number): Promise<R> {
    const { promise, resolve, reject } = Promise.withResolvers<R>();
    const onTimeout = () => {
      if (this.#proposals.get(submitted.index) !== pending) return;
      this.#proposals.delete(submitted.index);
      this.#countProposal('timeout');
      reject(deadlineError(what, timeoutMs, this.#leader));
    };
    const pending: PendingProposal<R> = {
      term: submitted.term,
      resolve: (r) => {
        deadline.removeEventListener('abort', onTimeout);
        resolve(r);
      },
      reject: (err) => {
        deadline.removeEventListener('abort', onTimeout);
        reject(err);
      },
    };
    this.#proposals.get(submitted.index)?.reject(this.#lost(submitted.index));
    this.#proposals.set(submitted.index, pending);
    deadline.addEventListener('abort', onTimeout, { once: true });
    return promise;
  }

  /** True once served; false if the round went unanswered until the leader changed. */
  #awaitRead(ctx: string, deadline: AbortSignal, timeoutMs: number): Promise<boolean> {
    const { promise, resolve, reject } = Promise.withResolvers<boolean>();
    const cleanup = () => {
      deadline.removeEventListener('abort', onTimeout);
      this.#reads.delete(ctx);
    };
    const onTimeout = () => {
      cleanup();
      reject(deadlineError('read', timeoutMs, this.#leader));
    };
    this.#reads.set(ctx, {
      resolve: () => {
        cleanup();
        resolve(true);
      },
      reject: (err) => {
        cleanup();
        if (err.code === 'lost') resolve(false);
        else reject(err);
      },
    });
    deadline.addEventListener('abort', onTimeout, { once: true });
    return promise;
  }

  async #waitForProgress(deadline: AbortSignal, onTimeout: () => RaftClientError): Promise<void> {
    if (!(await this.waitForChange(deadline))) throw onTimeout();
    this.#throwIfStopped();
  }

  /**
   * Resolves true at the next change a waiting client may care about (an
   * applied entry, a leader change, a confirmed read, or the next tick), false
   * once `deadline` aborts. For callers above the node that retry across
   * leader changes (forwarding) without polling on a timer of their own.
   */
  waitForChange(deadline: AbortSignal): Promise<boolean> {
    if (deadline.aborted) return Promise.resolve(false);
    const { promise, resolve } = Promise.withResolvers<boolean>();
    const abort = () => resolve(false);
    deadline.addEventListener('abort', abort, { once: true });
    void this.#progress.promise.then(() => {
      deadline.removeEventListener('abort', abort);
      resolve(true);
    });
    return promise;
  }

  #notLeader(hint: NodeId | null): RaftClientError {
    if (hint === null) return new RaftClientError('no_leader', `${this.id} is not the leader and knows of none (election in progress or no quorum)`);
    return new RaftClientError('not_leader', `${this.id} is not the leader; the leader is ${hint}`, hint);
  }

  #lost(index: number): RaftClientError {
    return new RaftClientError('lost', `the entry at index ${index} was replaced by another leader's; the outcome is unknown, retry`, this.#leader);
  }

  #throwIfStopped(): void {
    if (this.#failure !== null) throw new RaftClientError('stopped', `raft node failed: ${this.#failure.message}`);
    if (this.#stopped) throw new RaftClientError('stopped', 'raft node is stopping');
  }

  #countProposal(result: ProposalResult): void {
    this.#metrics?.proposals.inc({ result });
  }

  #bestTransferee(): NodeId | null {
    const status = this.#core.status();
    let best: { id: NodeId; match: number } | null = null;
    for (const [id, p] of status.progress ?? []) {
      if (id === this.id || !status.membership.voters.includes(id)) continue;
      if (best === null || p.match > best.match) best = { id, match: p.match };
    }
    return best?.id ?? null;
  }

  #signalProgress(): void {
    const previous = this.#progress;
    this.#progress = Promise.withResolvers<void>();
    previous.resolve();
  }

  // ---------------------------------------------------------------- the loop

  readonly #loop = new ReadyLoop<Ready>({
    next: () => (this.#batching() ? null : this.#core.ready()),
    handle: (ready) => this.#handle(ready),
    afterBatch: () => this.#maybeSnapshot(),
    pending: () => !this.#batching() && this.#core.hasReady(),
    halted: () => this.#stopped || this.#failure !== null,
    failed: () => this.#failure !== null,
    fail: (err) => this.#fail(err),
  });

  #schedule(): void {
    this.#loop.schedule();
  }

  /**
   * A follower holds its next Ready while its own write is syncing, unless
   * something in it is urgent (core.hasUrgentReady): its new entries would
   * queue behind that write anyway and its acks wait for it, so one Ready (one
   * write, one ack) when it lands does what several would. A leader does not:
   * its Readys carry the appends that let followers write in parallel with it.
   */
  #batching(): boolean {
    return this.#lastWrite !== null && this.#role !== 'leader' && !this.#core.hasUrgentReady();
  }

  async #handle(ready: Ready): Promise<void> {
    if (ready.softState !== null) this.#onSoftState(ready.softState.role, ready.softState.leader);
    // A Ready without mustSync is not written: its hard state differs only in
    // the commit index, which may be lost in a crash (it is relearned from the
    // leader, or from the applied index). It reaches disk with the next write.
    if (ready.mustSync) this.#queueWrite(ready);
    // A leader's appends and heartbeats go out while its own write syncs (Raft
    // thesis 10.2.1): the followers' fsyncs overlap the leader's.
    this.#sendAll(ready.messages);
    this.#sendAfterWrites(ready.persistMessages);
    if (ready.snapshot !== null) this.#install(ready.snapshot);
    for (const entry of ready.committed) {
      if (entry.kind === 'normal' && entry.data.length > 0) {
        const result = this.#opts.machine.apply(entry.index, entry.data);
        this.#settle(entry.index, entry.term, result);
      } else {
        this.#settle(entry.index, entry.term, undefined);
      }
      this.#applied = entry.index;
    }
    for (const rs of ready.readStates) {
      const read = this.#reads.get(rs.ctx);
      if (read !== undefined) this.#readsToServe.push({ index: rs.index, read });
    }
    this.#core.advance(ready);
    this.#serveReads();
    const m = this.#metrics;
    if (m !== undefined) {
      m.term.set(this.#core.term);
      m.commitIndex.set(this.#core.commitIndex);
      m.appliedIndex.set(this.#applied);
    }
    if (ready.committed.length > 0 || ready.softState !== null || ready.readStates.length > 0) this.#signalProgress();
  }

  /** Queues the Ready's write; once it lands (after every earlier one) the core hears of it. */
  #queueWrite(ready: Ready): void {
    const write = this.#opts.store.persist(ready).then(() => {
      if (this.#lastWrite === write) this.#lastWrite = null;
      if (this.#failure !== null) return;
      try {
        this.#core.persisted(ready);
      } catch (err) {
        this.#fail(err);
        return;
      }
      this.#schedule();
    });
    write.catch((err: unknown) => this.#fail(err));
    this.#lastWrite = write;
  }

  /** Sends once every write queued so far is durable (at once if none is pending). */
  #sendAfterWrites(messages: readonly Message[]): void {
    if (messages.length === 0) return;
    const pending = this.#lastWrite;
    if (pending === null) {
      this.#sendAll(messages);
      return;
    }
    // A failed write stops the node: nothing that waited for it leaves.
    pending.then(() => {
      if (this.#failure === null) this.#sendAll(messages);
    }, () => {});
  }

  #onSoftState(role: Role, leader: NodeId | null): void {
    if (leader !== this.#leader) {
      this.#metrics?.leaderChanges.inc();
      this.#log.info({ term: this.#core.term, leader, role }, leader === null ? 'raft leader lost' : 'raft leader elected');
      // A read round sent to a leader that is gone will never be answered.
      for (const [ctx, read] of this.#reads) {
        if (!this.#readsToServe.some((r) => r.read === read)) {
          this.#reads.delete(ctx);
          read.reject(new RaftClientError('lost', 'leader changed during the read'));
        }
      }
    }
    this.#role = role;
    this.#leader = leader;
    this.#metrics?.isLeader.set(role === 'leader' ? 1 : 0);
  }

  #sendAll(messages: readonly Message[]): void {
    if (messages.length === 0) return;
    const byPeer = new Map<NodeId, Message[]>();
    for (const m of messages) {
      if (m.type === 'snapshot_chunk' && m.offset === 0) this.#metrics?.snapshotsSent.inc();
      let list = byPeer.get(m.to);
      if (list === undefined) byPeer.set(m.to, (list = []));
      list.push(m);
    }
    for (const [to, list] of byPeer) this.#opts.sender.send(to, list);
  }

  #install(snapshot: Snapshot): void {
    this.#opts.machine.restore(snapshotBytes(snapshot.data));
    this.#applied = snapshot.meta.index;
    this.#metrics?.snapshotsInstalled.inc();
    this.#log.info({ index: snapshot.meta.index, term: snapshot.meta.term, bytes: snapshot.data.byteLength }, 'raft snapshot installed');
    // Proposals the snapshot covers were decided elsewhere; their results are unknown here.
    for (const [index, p] of this.#proposals) {
      if (index > snapshot.meta.index) continue;
      this.#proposals.delete(index);
      this.#countProposal('lost');
      p.reject(this.#lost(index));
    }
  }

  #settle(index: number, term: number, result: R | undefined): void {
    const p = this.#proposals.get(index);
    if (p === undefined) return;
    this.#proposals.delete(index);
    if (p.term !== term) {
      this.#countProposal('lost');
      p.reject(this.#lost(index));
      return;
    }
    this.#countProposal('committed');
    // Config changes and no-ops have no state machine result; their callers ignore it.
    p.resolve(result as R);
  }

  #serveReads(): void {
    for (let i = this.#readsToServe.length - 1; i >= 0; i--) {
      const r = this.#readsToServe[i];
      if (r === undefined || r.index > this.#applied) continue;
      this.#readsToServe.splice(i, 1);
      r.read.resolve();
    }
  }

  /**
   * Once per snapshotEntries applied entries, at this member's own phase
   * (compactionDue): the state machine's snapshot is
   * written to its file (encoded a piece at a time while the node goes on),
   * and once that is durable the core compacts onto it and the log names it.
   * The core reads the snapshot from its file when a follower needs it, so
   * no whole-state encoding is held in memory, and the log is compacted only
   * onto a snapshot already on disk.
   */
  async #maybeSnapshot(): Promise<void> {
    const applied = this.#applied;
    if (this.#snapshotting !== null) return;
    if (!compactionDue(applied, this.#core.snapshotIndex, this.#opts.snapshotEntries, this.#compactionPhase())) return;
    // A follower may apply entries its own disk does not hold yet (they are
    // durable on a majority); a snapshot at such an index would drop them
    // from storage before they landed. The next batch tries again.
    if (applied > this.#core.stableIndex) return;
    const meta = this.#core.snapshotMeta(applied);
    const source = this.#opts.machine.snapshot();
    const saving = (async () => {
      const snapshot = await this.#opts.store.writeSnapshot(meta, source);
      // A leader's newer snapshot installed meanwhile covers this one: the
      // file stays unnamed and goes with the next snapshot the log names.
      if (this.#stopped || this.#core.snapshotIndex >= meta.index) return;
      this.#core.compact(meta.index, snapshot.data);
      // Queued behind the log writes (storage keeps order); the Ready loop goes on meanwhile.
      await this.#opts.store.saveSnapshot(snapshot);
      this.#log.info({ index: meta.index, term: meta.term, bytes: source.byteLength }, 'raft snapshot taken; log compacted');
    })();
    saving.then(
      () => (this.#snapshotting = null),
      (err: unknown) => this.#fail(err),
    );
    this.#snapshotting = saving;
  }

  /** This member's compactionPhase under the membership in force (recomputed when it changes). */
  #compactionPhase(): number {
    const membership = this.#core.membership;
    if (this.#phase?.membership !== membership) {
      const every = this.#opts.snapshotEntries;
      this.#phase = { membership, phase: compactionPhase(this.id, [...membership.voters, ...membership.learners], every) };
    }
    return this.#phase.phase;
  }

  #fail(err: unknown): void {
    const error = err instanceof Error ? err : new Error(String(err));
    if (this.#failure !== null) return;
    this.#failure = error;
    this.#stopped = true;
    clearInterval(this.#ticker);
    const kind = error instanceof RaftInvariantError ? 'invariant broken' : 'storage or state machine failure';
    this.#log.error({ err: error.message, stack: error.stack }, `raft node stopped: ${kind}`);
    this.#failAll(new RaftClientError('stopped', `raft node failed: ${error.message}`));
    this.#signalProgress();
    this.#opts.onFatal?.(error);
  }

  #failAll(err: RaftClientError): void {
    for (const p of this.#proposals.values()) p.reject(err);
    this.#proposals.clear();
    for (const r of this.#reads.values()) r.reject(err);
    this.#reads.clear();
    for (const r of this.#readsToServe) r.read.reject(err);
    this.#readsToServe.length = 0;
    this.#signalProgress();
  }

  /** Set after a fatal error; the daemon reports it and exits. */
  get failure(): Error | null {
    return this.#failure;
  }
}
