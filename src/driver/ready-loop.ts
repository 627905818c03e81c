/**
 * ReadyLoop: the one-Ready-at-a-time pump both consensus drivers (RaftNode,
 * PbftNode) run their pure cores with. A core accumulates inputs; the loop
 * takes its Readys one by one, awaiting each handler (persist, send, apply)
 * before asking for the next, so inputs that arrive during a handler's fsync
 * leave together in the next Ready: the group commit.
 *
 * Invariants: at most one drive runs at a time; a drive starts on
 * setImmediate, not a microtask, so everything arriving in the current turn
 * (a burst of messages, many proposals) joins the same Ready; a handler's
 * error stops the loop for good and goes to `fail`; `idle` resolves when no
 * drive is running (a stopping driver awaits it).
 */
export interface ReadyLoopOptions<R> {
  /** The core's next Ready, or null when it has none (or one is outstanding). */
  next(): R | null;
  handle(ready: R): Promise<void>;
  /** Work after a run of Readys (e.g. a snapshot check). */
  afterBatch?(): Promise<void>;
  /** Whether the core has a Ready now (checked once a drive ends, to go again). */
  pending(): boolean;
  /** True once the driver stopped or failed: nothing more is scheduled. */
  halted(): boolean;
  /** True once the driver failed: a running drive ends at once (a stopping one finishes its Readys). */
  failed(): boolean;
  fail(err: unknown): void;
}

export class ReadyLoop<R> {
  readonly #opts: ReadyLoopOptions<R>;
  #driving: Promise<void> | null = null;

  constructor(opts: ReadyLoopOptions<R>) {
    this.#opts = opts;
  }

  schedule(): void {
    if (this.#driving !== null || this.#opts.halted()) return;
    this.#driving = new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.#drive());
  }

  /** Resolves when the running drive, if any, has ended. */
  async idle(): Promise<void> {
    await this.#driving;
  }

  async #drive(): Promise<void> {
    try {
      for (;;) {
        if (this.#opts.failed()) return;
        const ready = this.#opts.next();
        if (ready === null) break;
        await this.#opts.handle(ready);
      }
      await this.#opts.afterBatch?.();
    } catch (err) {
      this.#opts.fail(err);
    } finally {
      this.#driving = null;
    }
    if (!this.#opts.halted() && this.#opts.pending()) this.schedule();
  }
}
