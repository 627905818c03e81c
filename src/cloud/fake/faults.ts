/**
 * Fault injection and call accounting for the fake cloud servers: a test says
 * "the next K calls of action A fail with fault F" and later asks how many calls
 * of A the server saw, which is how SDK retries become visible.
 *
 * Invariants: faults are consumed in the order they were injected, one per
 * call; the call log is bounded (oldest entries dropped) so a long-running
 * development server does not grow without limit.
 */

export class FaultPlan<F> {
  readonly #queues = new Map<string, F[]>();

  /** The next `count` calls of `action` fail with `fault` (after any faults already queued). */
  inject(action: string, fault: F, count = 1): void {
    if (!Number.isInteger(count) || count < 1) throw new RangeError(`fault count must be a positive integer, got ${count}`);
    const queue = this.#queues.get(action) ?? [];
    for (let i = 0; i < count; i++) queue.push(fault);
    this.#queues.set(action, queue);
  }

  /** The fault for this call of `action`, if one is queued; consumes it. */
  take(action: string): F | undefined {
    const queue = this.#queues.get(action);
    const fault = queue?.shift();
    if (queue && queue.length === 0) this.#queues.delete(action);
    return fault;
  }

  pending(action: string): number {
    return this.#queues.get(action)?.length ?? 0;
  }

  clear(): void {
    this.#queues.clear();
  }
}

export interface CallRecord {
  action: string;
  status: number;
  /** Error code returned, if the call failed. */
  code?: string;
}

export const CALL_LOG_LIMIT = 10_000;

export class CallLog {
  readonly #entries: CallRecord[] = [];

  record(entry: CallRecord): void {
    this.#entries.push(entry);
    if (this.#entries.length > CALL_LOG_LIMIT) this.#entries.splice(0, this.#entries.length - CALL_LOG_LIMIT);
  }

  /** Calls of `action` (all actions when omitted), optionally only those answered with `status`. */
  count(action?: string, status?: number): number {
    return this.#entries.filter((e) => (action === undefined || e.action === action) && (status === undefined || e.status === status)).length;
  }

  entries(): readonly CallRecord[] {
    return [...this.#entries];
  }

  clear(): void {
    this.#entries.length = 0;
  }
}

/**
 * Timers for the servers' asynchronous state transitions, all cancelled on
 * close. A newer transition of the same resource replaces the older one, as a
 * terminate overtakes a pending start in a real cloud.
 */
export class TransitionTimers {
  readonly #timers = new Map<string, NodeJS.Timeout>();

  after(key: string, delayMs: number, complete: () => void): void {
    this.cancel(key);
    const timer = setTimeout(() => {
      this.#timers.delete(key);
      complete();
    }, delayMs);
    timer.unref();
    this.#timers.set(key, timer);
  }

  cancel(key: string): void {
    const timer = this.#timers.get(key);
    if (timer) clearTimeout(timer);
    this.#timers.delete(key);
  }

  clear(): void {
    for (const timer of this.#timers.values()) clearTimeout(timer);
    this.#timers.clear();
  }
}
