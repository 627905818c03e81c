/**
 * PassLoop: how a level-triggered driver (the region reconciler, the
 * migrator) runs its passes: one at a time, on `kick()`, at least every
 * `intervalMs`, and no later than a time a pass asked for (`wakeBy`).
 *
 * Invariants: at most one pass runs; kicks during a pass coalesce into one
 * more pass right after it; a pass that throws is reported to `onError` and
 * the loop goes on at the next interval (level-triggered: a missed pass is
 * only a delay); after `stop()` nothing more is scheduled and `stop`
 * resolves once the running pass ended; timers never hold the process open.
 */
export interface PassLoopOptions {
  pass(): Promise<void>;
  readonly intervalMs: number;
  onError(err: unknown): void;
  readonly now?: () => number;
}

export class PassLoop {
  readonly #o: PassLoopOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | null = null;
  #again = false;
  #stopped = true;
  /** The earliest time a pass asked to run again by (epoch ms), for the next timer. */
  #wakeBy = Number.POSITIVE_INFINITY;
  readonly #listeners = new Set<() => void>();

  constructor(options: PassLoopOptions) {
    this.#o = options;
  }

  start(): void {
    this.#stopped = false;
    this.kick();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#running;
  }

  /** Asks for a pass now (coalesced with one already running). */
  kick(): void {
    if (this.#stopped) return;
    if (this.#running !== null) {
      this.#again = true;
      return;
    }
    clearTimeout(this.#timer);
    this.#wakeBy = Number.POSITIVE_INFINITY;
    this.#running = this.#o
      .pass()
      .catch((err: unknown) => this.#o.onError(err))
      .finally(() => {
        this.#running = null;
        for (const listener of this.#listeners) listener();
        if (this.#stopped) return;
        if (this.#again) {
          this.#again = false;
          this.kick();
          return;
        }
        const now = (this.#o.now ?? Date.now)();
        const delay = Math.max(0, Math.min(this.#o.intervalMs, this.#wakeBy - now));
        this.#timer = setTimeout(() => this.kick(), delay);
        this.#timer.unref();
      });
  }

  /** Called by a pass: the next pass comes no later than `at` (epoch ms), if that is before the interval. */
  wakeBy(at: number): void {
    this.#wakeBy = Math.min(this.#wakeBy, at);
  }

  /** Resolves after the next pass that starts after this call has finished. */
  nextPass(): Promise<void> {
    return new Promise((resolve) => {
      let seen = this.#running !== null;
      const listener = () => {
        // A pass already running when we were called may have read state older than the caller's: wait for the one after it.
        if (seen) {
          seen = false;
          return;
        }
        this.#listeners.delete(listener);
        resolve();
      };
      this.#listeners.add(listener);
      this.kick();
    });
  }
}
