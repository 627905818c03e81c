/**
 * The leader's queue of ReadIndex requests (Raft dissertation §6.4).
 *
 * A read is linearizable if it is served after the state machine applies the
 * leader's commit index as of the moment the read arrived, provided the node
 * was still the leader at that moment. The leader proves the latter by a
 * heartbeat round: each request gets the next round number `seq`, heartbeats
 * carry the latest round, followers echo it, and a request is confirmed once
 * a quorum of voters has echoed a round >= its own (echoing a later round
 * proves leadership after an earlier request arrived too).
 *
 * Invariants: seqs are strictly increasing along the queue, so confirmed
 * requests are always a prefix; a leader that has not yet committed an entry
 * of its own term does not know the commit index, so its requests wait in
 * `deferred` without an index; the queue and deferral list share one bound.
 * Lease-based reads (skipping the round while a lease holds) are not
 * implemented: they trade safety for clock-drift assumptions.
 */
import type { NodeId } from './types.ts';
import { invariant } from './types.ts';

export interface PendingRead {
  readonly ctx: string;
  /** Who asked: this leader itself, or a follower that forwarded the read. */
  readonly from: NodeId;
  readonly index: number;
  readonly seq: number;
}

export class ReadIndexQueue {
  #queue: PendingRead[] = [];
  #deferred: { ctx: string; from: NodeId }[] = [];
  #seq = 0;

  get size(): number {
    return this.#queue.length + this.#deferred.length;
  }

  /** Latest round; heartbeats carry it. */
  get lastSeq(): number {
    return this.#seq;
  }

  add(ctx: string, from: NodeId, index: number): PendingRead {
    const read = { ctx, from, index, seq: ++this.#seq };
    this.#queue.push(read);
    return read;
  }

  defer(ctx: string, from: NodeId): void {
    this.#deferred.push({ ctx, from });
  }

  /** Give the deferred requests the now-known commit index; returns how many were queued. */
  undefer(index: number): number {
    const deferred = this.#deferred;
    this.#deferred = [];
    for (const { ctx, from } of deferred) this.add(ctx, from, index);
    return deferred.length;
  }

  /** Remove and return the requests whose round a quorum has confirmed. */
  release(confirmedSeq: number): PendingRead[] {
    let n = 0;
    while (n < this.#queue.length && (this.#queue[n] as PendingRead).seq <= confirmedSeq) n++;
    const released = this.#queue.splice(0, n);
    invariant(
      released.every((r, i) => i === 0 || r.seq > (released[i - 1] as PendingRead).seq),
      () => 'read index queue out of order',
    );
    return released;
  }

  clear(): void {
    this.#queue = [];
    this.#deferred = [];
    this.#seq = 0;
  }
}
