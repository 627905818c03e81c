/**
 * The leader's view of one follower (etcd's tracker.Progress), with its
 * flow control.
 *
 * States:
 * - probe: the leader does not know where the logs match; it sends one append
 *   and waits for the answer (or the next heartbeat answer) before the next.
 * - replicate: the logs match up to `match`; appends are pipelined
 *   optimistically (`next` moves on send) until the inflight window is full.
 * - snapshot: the follower needs entries the leader compacted away; only
 *   snapshot chunks are sent, one at a time, until it reports the install.
 *
 * Invariants: match < next; match never decreases (a follower's ack is durable);
 * the inflight window holds strictly increasing last-indices below next, and
 * never more than its message or byte bound.
 */
import { invariant } from './types.ts';

export type ProgressState = 'probe' | 'replicate' | 'snapshot';

/** Bounded window of appends sent but not yet acknowledged, by last index sent. */
export class Inflights {
  readonly #maxCount: number;
  readonly #maxBytes: number;
  #lastIndices: number[] = [];
  #sizes: number[] = [];
  #bytes = 0;

  constructor(maxCount: number, maxBytes: number) {
    this.#maxCount = maxCount;
    this.#maxBytes = maxBytes;
  }

  get count(): number {
    return this.#lastIndices.length;
  }

  full(): boolean {
    return this.#lastIndices.length >= this.#maxCount || this.#bytes >= this.#maxBytes;
  }

  add(lastIndex: number, bytes: number): void {
    invariant(!this.full(), () => 'inflight window overflow');
    const prev = this.#lastIndices.at(-1);
    invariant(prev === undefined || lastIndex > prev, () => `inflight index ${lastIndex} not above ${String(prev)}`);
    this.#lastIndices.push(lastIndex);
    this.#sizes.push(bytes);
    this.#bytes += bytes;
  }

  /** Forget every append whose last index is <= index (acknowledged). */
  freeTo(index: number): void {
    let n = 0;
    while (n < this.#lastIndices.length && (this.#lastIndices[n] ?? Infinity) <= index) {
      this.#bytes -= this.#sizes[n] ?? 0;
      n++;
    }
    if (n === 0) return;
    this.#lastIndices.splice(0, n);
    this.#sizes.splice(0, n);
  }

  /** Make room for one more send when acks may have been lost (heartbeat answered, window stuck). */
  freeFirst(): void {
    const first = this.#lastIndices[0];
    if (first !== undefined) this.freeTo(first);
  }

  reset(): void {
    this.#lastIndices = [];
    this.#sizes = [];
    this.#bytes = 0;
  }
}

export interface SnapshotSend {
  /** Index of the snapshot being sent; it changes if the leader compacts again. */
  index: number;
  /** Byte offset of the next chunk to send (the follower's last reported position). */
  offset: number;
}

export class Progress {
  match = 0;
  next: number;
  state: ProgressState = 'probe';
  /** In probe: an append is out and unanswered. */
  probeSent = false;
  /** Heard from since the last CheckQuorum round. */
  recentActive = true;
  /** Highest ReadIndex round this follower confirmed the leader in. */
  readAck = 0;
  learner: boolean;
  snapshot: SnapshotSend | null = null;
  readonly inflights: Inflights;

  constructor(next: number, learner: boolean, maxInflight: number, maxInflightBytes: number) {
    this.next = next;
    this.learner = learner;
    this.inflights = new Inflights(maxInflight, maxInflightBytes);
  }

  becomeProbe(): void {
    // Coming back from a snapshot, the follower holds at least the snapshot's index.
    const floor = this.snapshot === null ? this.match : Math.max(this.match, this.snapshot.index);
    this.#reset('probe');
    this.next = floor + 1;
  }

  becomeReplicate(): void {
    this.#reset('replicate');
    this.next = this.match + 1;
  }

  becomeSnapshot(index: number): void {
    this.#reset('snapshot');
    this.snapshot = { index, offset: 0 };
  }

  #reset(state: ProgressState): void {
    this.state = state;
    this.probeSent = false;
    this.snapshot = null;
    this.inflights.reset();
  }

  /** An ack that the follower holds the leader's log up to `index`; false if it taught nothing new. */
  maybeUpdate(index: number): boolean {
    let updated = false;
    if (index > this.match) {
      this.match = index;
      this.probeSent = false;
      updated = true;
    }
    this.next = Math.max(this.next, index + 1);
    return updated;
  }

  /**
   * A follower refused an append at prevIndex `rejected`; `hint` is the last index
   * where the logs may still match. Returns false for a stale refusal.
   */
  maybeDecrTo(rejected: number, hint: number): boolean {
    if (this.state === 'replicate') {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, hint + 1), this.match + 1);
    this.probeSent = false;
    return true;
  }

  isPaused(): boolean {
    switch (this.state) {
      case 'probe':
        return this.probeSent;
      case 'replicate':
        return this.inflights.full();
      case 'snapshot':
        return true;
    }
  }

  /** Record an append just sent carrying entries up to lastIndex (none when lastIndex < next). */
  sentAppend(lastIndex: number, bytes: number): void {
    if (this.state === 'replicate') {
      if (lastIndex >= this.next) {
        this.next = lastIndex + 1;
        this.inflights.add(lastIndex, bytes);
      }
    } else {
      this.probeSent = true;
    }
    this.check();
  }

  check(): void {
    invariant(this.match < this.next, () => `progress match ${this.match} not below next ${this.next}`);
  }
}
