/**
 * Group commit on one LMDB environment: the writes queued in one event-loop
 * turn, and those arriving while a commit is in flight, share one transaction
 * and one fsync, and each write's promise resolves only once that transaction
 * is on disk (the environment must come from openEnvironment, which turns off
 * overlappingSync).
 *
 * Invariants:
 * - Writes apply, commit and resolve in the order they were queued; a barrier
 *   resolves only after every write queued before it is durable.
 * - At most one transaction is in flight.
 * - After a failed commit every later write is refused: what reached the disk
 *   is then unknown, and a consensus node must not go on acknowledging on top
 *   of it.
 */

export interface CommitTimings {
  /** Running the writes' apply() inside the transaction. */
  readonly applySeconds: number;
  /** Committing the transaction, fsync included, until its promise resolved. */
  readonly syncSeconds: number;
}

/** The part of lmdb-js's RootDatabase a group commit needs. */
export interface TransactionalEnvironment {
  childTransaction<T>(action: () => T): Promise<T>;
}

interface Queued<W> {
  /** null for a barrier. */
  readonly write: W | null;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

export interface GroupCommitOptions<W> {
  readonly env: TransactionalEnvironment;
  /** Names the store in errors, e.g. "raft storage /var/lib/dwcp/raft". */
  readonly label: string;
  /** Puts one write's records; runs inside the transaction, so it must not fail on the write's content. */
  readonly apply: (write: W) => void;
  /** After each committed transaction, with the writes it carried. */
  readonly onCommit?: (writes: readonly W[], timings: CommitTimings) => void;
}

export class GroupCommit<W> {
  readonly #options: GroupCommitOptions<W>;
  #pending: Queued<W>[] = [];
  #flushScheduled = false;
  #inFlight = false;
  #drained: (() => void)[] = [];
  #failure: Error | null = null;
  #closed = false;

  constructor(options: GroupCommitOptions<W>) {
    this.#options = options;
  }

  /** Resolves once `write` is durable. */
  enqueue(write: W): Promise<void> {
    return this.#queue(write);
  }

  /** Resolves once every write queued before it is durable (at once when none is outstanding). */
  barrier(): Promise<void> {
    if (this.#closed || this.#failure !== null || this.#busy()) return this.#queue(null);
    return Promise.resolve();
  }

  /** Refuses later writes and resolves once the queued ones have settled. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#busy()) await new Promise<void>((resolve) => this.#drained.push(resolve));
  }

  #busy(): boolean {
    return this.#pending.length > 0 || this.#inFlight || this.#flushScheduled;
  }

  #queue(write: W | null): Promise<void> {
    const { label } = this.#options;
    if (this.#closed) return Promise.reject(new Error(`${label} is closed`));
    if (this.#failure !== null) {
      return Promise.reject(new Error(`${label} refuses writes after a failed commit: ${this.#failure.message}`));
    }
    return new Promise<void>((resolve, reject) => {
      this.#pending.push({ write, resolve, reject });
      this.#scheduleFlush();
    });
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#inFlight) return;
    this.#flushScheduled = true;
    // setImmediate, not a microtask: writes issued anywhere in this turn, including after awaits
    // that resolve within it, join the same transaction.
    setImmediate(() => {
      this.#flushScheduled = false;
      void this.#flush();
    });
  }

  async #flush(): Promise<void> {
    const group = this.#pending;
    this.#pending = [];
    const writes: W[] = [];
    for (const queued of group) if (queued.write !== null) writes.push(queued.write);
    if (writes.length === 0) {
      // Only barriers: everything before them is already durable.
      for (const queued of group) queued.resolve();
      return this.#settle();
    }
    this.#inFlight = true;
    let applySeconds = 0;
    let appliedAt = 0;
    try {
      await this.#options.env.childTransaction(() => {
        const started = performance.now();
        for (const write of writes) this.#options.apply(write);
        appliedAt = performance.now();
        applySeconds = (appliedAt - started) / 1000;
      });
    } catch (error) {
      this.#failure = error instanceof Error ? error : new Error(String(error));
      for (const queued of [...group, ...this.#pending.splice(0)]) queued.reject(this.#failure);
      this.#inFlight = false;
      this.#settle();
      return;
    }
    const timings: CommitTimings = { applySeconds, syncSeconds: (performance.now() - appliedAt) / 1000 };
    for (const queued of group) queued.resolve();
    this.#inFlight = false;
    if (this.#pending.length > 0) this.#scheduleFlush();
    else this.#settle();
    this.#options.onCommit?.(writes, timings);
  }

  #settle(): void {
    if (this.#busy()) return;
    for (const resolve of this.#drained.splice(0)) resolve();
  }
}
