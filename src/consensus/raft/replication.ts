/**
 * A leader's replication machinery: one Progress per other member, and what
 * to send each of them (appends, heartbeats, snapshot chunks) under flow
 * control. It exists only while its node leads one term; the core makes a
 * new one on every election, so nothing here outlives a term.
 *
 * Invariants: exactly the members other than the leader have a Progress;
 * an append is sent only with a prevIndex the leader's log still holds (else
 * the follower is switched to snapshot); nothing is sent past the inflight
 * window or to a paused probe; learners are replicated to exactly like
 * voters, and the callers count only voters (quorum.ts).
 */
import type { RaftLog } from './log.ts';
import { isLearner, members } from './membership.ts';
import { Progress } from './progress.ts';
import { hasQuorum, quorumValue } from './quorum.ts';
import { snapshotChunkAt } from './snapshot-transfer.ts';
import type {
  AppendResponse,
  HeartbeatResponse,
  Membership,
  NodeId,
  Outgoing,
  RaftConfig,
  SnapshotChunkResponse,
} from './types.ts';
import { invariant } from './types.ts';

export interface FollowerStatus {
  readonly match: number;
  readonly next: number;
  readonly state: Progress['state'];
  readonly learner: boolean;
  readonly recentActive: boolean;
}

export interface ReplicationContext {
  readonly id: NodeId;
  readonly log: RaftLog;
  readonly config: RaftConfig;
  send(message: Outgoing): void;
}

export class Replicator {
  readonly #ctx: ReplicationContext;
  readonly #progress = new Map<NodeId, Progress>();

  constructor(ctx: ReplicationContext, membership: Membership) {
    this.#ctx = ctx;
    this.syncMembership(membership);
  }

  match(id: NodeId): number | undefined {
    return this.#progress.get(id)?.match;
  }

  /** Track exactly the members of `membership` (a config entry was appended or truncated). */
  syncMembership(membership: Membership): void {
    const all = members(membership);
    for (const id of all) {
      if (id === this.#ctx.id) continue;
      const pr = this.#progress.get(id);
      if (pr === undefined) this.#progress.set(id, this.#newProgress(isLearner(membership, id)));
      else pr.learner = isLearner(membership, id);
    }
    for (const id of this.#progress.keys()) if (!all.includes(id)) this.#progress.delete(id);
  }

  #newProgress(learner: boolean): Progress {
    const { maxInflightAppends, maxInflightBytes } = this.#ctx.config;
    return new Progress(this.#ctx.log.lastIndex + 1, learner, maxInflightAppends, maxInflightBytes);
  }

  /** Highest index a majority of voters holds, counting the leader's own persisted log. */
  quorumMatch(voters: readonly NodeId[], selfStable: number): number {
    return quorumValue(voters, (id) => (id === this.#ctx.id ? selfStable : (this.#progress.get(id)?.match ?? 0)));
  }

  /** Highest ReadIndex round a majority of voters confirmed (the leader confirms its own rounds). */
  readQuorum(voters: readonly NodeId[], selfSeq: number): number {
    return quorumValue(voters, (id) => (id === this.#ctx.id ? selfSeq : (this.#progress.get(id)?.readAck ?? 0)));
  }

  /** CheckQuorum: did a majority of voters answer since the last call? Starts a new round. */
  checkQuorumActive(voters: readonly NodeId[]): boolean {
    const active = hasQuorum(voters, (id) => id === this.#ctx.id || this.#progress.get(id)?.recentActive === true);
    for (const pr of this.#progress.values()) pr.recentActive = false;
    return active;
  }

  broadcastAppends(sendIfEmpty: boolean): void {
    for (const id of this.#progress.keys()) this.sendAppends(id, sendIfEmpty);
  }

  broadcastHeartbeats(readSeq: number): void {
    const { log } = this.#ctx;
    for (const [to, pr] of this.#progress) {
      this.#ctx.send({ type: 'heartbeat', to, commit: Math.min(pr.match, log.committed), readSeq });
    }
  }

  /** Send as many appends as flow control allows (pipelining in replicate state). */
  sendAppends(to: NodeId, sendIfEmpty: boolean): void {
    if (this.#sendAppend(to, sendIfEmpty)) while (this.#sendAppend(to, false));
  }

  #sendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.#progress.get(to);
    if (pr === undefined || pr.isPaused()) return false;
    const { log, config } = this.#ctx;
    const prevIndex = pr.next - 1;
    invariant(prevIndex <= log.lastIndex, () => `next ${pr.next} for ${to} past last index ${log.lastIndex}`);
    const prevTerm = log.term(prevIndex);
    if (prevTerm === undefined) {
      // The entries this follower needs were compacted away.
      pr.becomeSnapshot(log.snapshot.meta.index);
      this.#sendSnapshotChunk(to, pr);
      return true;
    }
    const { entries, bytes } = log.slice(pr.next, config.maxEntriesPerAppend, config.maxBytesPerAppend);
    if (entries.length === 0 && !sendIfEmpty) return false;
    this.#ctx.send({ type: 'append', to, prevIndex, prevTerm, entries, commit: log.committed });
    pr.sentAppend(prevIndex + entries.length, bytes);
    return true;
  }

  #sendSnapshotChunk(to: NodeId, pr: Progress): void {
    const snapshot = this.#ctx.log.snapshot;
    // Compacted again since the transfer began: start over with the newer snapshot.
    if (pr.snapshot === null || pr.snapshot.index !== snapshot.meta.index) pr.becomeSnapshot(snapshot.meta.index);
    const offset = pr.snapshot?.offset ?? 0;
    if (offset > 0 && offset >= snapshot.data.byteLength) return;
    this.#ctx.send({ type: 'snapshot_chunk', to, ...snapshotChunkAt(snapshot, offset, this.#ctx.config.snapshotChunkBytes) });
  }

  /** Returns true when the follower's match advanced (the caller may commit and send more). */
  onAppendResponse(m: AppendResponse): boolean {
    const pr = this.#progress.get(m.from);
    if (pr === undefined) return false;
    pr.recentActive = true;
    const { log } = this.#ctx;
    if (!m.success) {
      // Fast back-off: skip straight to the last index where our log can match the hint.
      const hint = m.hintTerm > 0 ? log.findConflictByTerm(m.hintIndex, m.hintTerm).index : m.hintIndex;
      if (pr.maybeDecrTo(m.index, hint)) {
        if (pr.state === 'replicate') pr.becomeProbe();
        this.sendAppends(m.from, true);
      }
      return false;
    }
    invariant(m.index <= log.lastIndex, () => `${m.from} acked index ${m.index} past leader's last ${log.lastIndex}`);
    if (!pr.maybeUpdate(m.index)) return false;
    if (pr.state === 'probe') pr.becomeReplicate();
    else if (pr.state === 'snapshot' && pr.match >= (pr.snapshot?.index ?? 0)) {
      pr.becomeProbe();
      pr.becomeReplicate();
    } else if (pr.state === 'replicate') pr.inflights.freeTo(m.index);
    return true;
  }

  /** Returns true when the follower confirmed a newer ReadIndex round. */
  onHeartbeatResponse(m: HeartbeatResponse): boolean {
    const pr = this.#progress.get(m.from);
    if (pr === undefined) return false;
    pr.recentActive = true;
    pr.probeSent = false;
    // Acks may have been lost: let one more append through so the follower can refuse it and reset us.
    if (pr.state === 'replicate' && pr.inflights.full()) pr.inflights.freeFirst();
    if (pr.state === 'snapshot') this.#sendSnapshotChunk(m.from, pr);
    else if (pr.match < this.#ctx.log.lastIndex) this.sendAppends(m.from, true);
    if (m.readSeq <= pr.readAck) return false;
    pr.readAck = m.readSeq;
    return true;
  }

  onSnapshotResponse(m: SnapshotChunkResponse): void {
    const pr = this.#progress.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    const send = pr.snapshot;
    if (pr.state !== 'snapshot' || send === null || send.index !== m.index) return;
    if (m.nextOffset > send.offset) {
      send.offset = m.nextOffset;
      this.#sendSnapshotChunk(m.from, pr);
    } else if (m.nextOffset < send.offset) {
      // The follower lost its partial copy (or this answer is stale): rewind; the next heartbeat resends.
      send.offset = m.nextOffset;
    }
  }

  status(): Map<NodeId, FollowerStatus> {
    const out = new Map<NodeId, FollowerStatus>();
    for (const [id, pr] of this.#progress) {
      out.set(id, { match: pr.match, next: pr.next, state: pr.state, learner: pr.learner, recentActive: pr.recentActive });
    }
    return out;
  }
}
