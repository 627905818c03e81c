/**
 * Group commit on one LMDB environment: the writes queued in one event-loop
 * turn, and those arriving while a commit is in flight, share one transaction
 * and one fsync, and each write's promise resolves only once that transaction
 * is on disk (the environment must come from openEnvironment, which turns off
 * overlappingSync).
 *
 * Invariants (the queueing is commit-queue.ts's, shared with the WAL):
 * - Writes apply, commit and resolve in the order they were queued; a barrier
 *   resolves only after every write queued before it is durable.
 * - At most one transaction is in flight.
 * - After a failed commit every later write is refused: what reached the disk
 *   is then unknown, and a consensus node must not go on acknowledging on top
 *   of it.
 */
import { CommitQueue } from './commit-queue.ts';

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
  readonly #queue: CommitQueue<W>;

  constructor(options: GroupCommitOptions<W>) {
    this.#options = options;
    this.#queue = new CommitQueue({ label: options.label, commit: (writes) => this.#commit(writes) });
  }

  /** Resolves once `write` is durable. */
  enqueue(write: W): Promise<void> {
    return this.#queue.push(write);
  }

  /** Resolves once every write queued before it is durable (at once when none is outstanding). */
  barrier(): Promise<void> {
    return this.#queue.barrier();
  }

  /** Refuses later writes and resolves once the queued ones have settled. */
  close(): Promise<void> {
    return this.#queue.close();
  }

  /** One transaction for the group: apply every write inside it, then its commit (the fsync). */
  async #commit(writes: W[]): Promise<void> {
    let applySeconds = 0;
    let appliedAt = 0;
    await this.#options.env.childTransaction(() => {
      const started = performance.now();
      for (const write of writes) this.#options.apply(write);
      appliedAt = performance.now();
      applySeconds = (appliedAt - started) / 1000;
    });
    this.#options.onCommit?.(writes, { applySeconds, syncSeconds: (performance.now() - appliedAt) / 1000 });
  }
}
