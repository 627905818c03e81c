/**
 * The scheduling half of group commit, shared by the stores that do it (the
 * LMDB group commit in group-commit.ts, the write-ahead log in wal.ts): items
 * queued in one event-loop turn, and those arriving while a commit is in
 * flight, go to the store's `commit` together, and each item's promise
 * settles with that commit. What a commit does with its group (one LMDB
 * transaction, one O_DSYNC write) is the store's.
 *
 * Invariants:
 * - Groups commit, and their items resolve, in queue order; at most one
 *   commit is in flight.
 * - A barrier (an item of null) resolves only after every item queued before
 *   it has committed; a group of barriers alone resolves without a commit.
 * - After a failed commit the group, everything queued behind it, and every
 *   later item are refused: what reached the disk is then unknown, and a
 *   consensus node must not go on acknowledging on top of it.
 * - close() refuses later items and resolves once the queued ones settled.
 */

export interface CommitQueueOptions<T> {
  /** Names the store in errors, e.g. "raft storage /var/lib/dwcp/raft". */
  readonly label: string;
  /** Commits one group (never empty), resolving once it is durable. */
  readonly commit: (items: T[]) => Promise<void>;
}

interface Queued<T> {
  /** null for a barrier. */
  readonly item: T | null;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

export class CommitQueue<T> {
  readonly #options: CommitQueueOptions<T>;
  #pending: Queued<T>[] = [];
  #flushScheduled = false;
  #inFlight = false;
  #drained: (() => void)[] = [];
  #failure: Error | null = null;
  #closed = false;

  constructor(options: CommitQueueOptions<T>) {
    this.#options = options;
  }

  /** Why an item would be refused now, or null when it would be queued. */
  refusal(): Error | null {
    const { label } = this.#options;
    if (this.#closed) return new Error(`${label} is closed`);
    if (this.#failure !== null) return new Error(`${label} refuses writes after a failed commit: ${this.#failure.message}`);
    return null;
  }

  /** Resolves once `item` is committed. */
  push(item: T): Promise<void> {
    return this.#queue(item);
  }

  /** Resolves once every item queued before it is committed (at once when none is outstanding). */
  barrier(): Promise<void> {
    if (this.#closed || this.#failure !== null || this.busy) return this.#queue(null);
    return Promise.resolve();
  }

  /** Refuses later items and resolves once the queued ones have settled. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.busy) await new Promise<void>((resolve) => this.#drained.push(resolve));
  }

  get busy(): boolean {
    return this.#pending.length > 0 || this.#inFlight || this.#flushScheduled;
  }

  #queue(item: T | null): Promise<void> {
    const refused = this.refusal();
    if (refused !== null) return Promise.reject(refused);
    return new Promise<void>((resolve, reject) => {
      this.#pending.push({ item, resolve, reject });
      this.#scheduleFlush();
    });
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#inFlight) return;
    this.#flushScheduled = true;
    // setImmediate, not a microtask: items queued anywhere in this turn, including after awaits
    // that resolve within it, join the same group.
    setImmediate(() => {
      this.#flushScheduled = false;
      void this.#flush();
    });
  }

  async #flush(): Promise<void> {
    const group = this.#pending;
    this.#pending = [];
    const items: T[] = [];
    for (const queued of group) if (queued.item !== null) items.push(queued.item);
    if (items.length === 0) {
      // Only barriers: everything before them has committed already.
      for (const queued of group) queued.resolve();
      return this.#settle();
    }
    this.#inFlight = true;
    try {
      await this.#options.commit(items);
    } catch (error) {
      this.#failure = error instanceof Error ? error : new Error(String(error));
      for (const queued of [...group, ...this.#pending.splice(0)]) queued.reject(this.#failure);
      this.#inFlight = false;
      return this.#settle();
    }
    for (const queued of group) queued.resolve();
    this.#inFlight = false;
    if (this.#pending.length > 0) this.#scheduleFlush();
    else this.#settle();
  }

  #settle(): void {
    if (this.busy) return;
    for (const resolve of this.#drained.splice(0)) resolve();
  }
}
