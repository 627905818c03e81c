/**
 * A bound on the garbage a daemon process holds: a full collection once the
 * V8 heap plus the memory its objects own outside it (ArrayBuffers and other
 * external memory) has grown a fixed budget past what the last full
 * collection left.
 *
 * Why: left to itself, V8 starts a full collection only when the old
 * generation reaches a multiple of what survived the last one (up to 4x on a
 * machine with a few GiB) or when external memory has grown 64 MiB since the
 * last; a Raft member under load meets neither for seconds at a time, and
 * meanwhile holds the dead objects of thousands of puts: V8 pages committed
 * at ~2x the live heap and ~64 MiB of dead buffers in malloc's heap, which
 * glibc keeps resident afterwards. Issue 19 bounds a member at 250 MiB RSS;
 * a peak of 390-400 MiB was mostly that garbage (bench/RESULTS.md, raft,
 * "Memory: where a member's RSS is at the peak, and a garbage budget").
 *
 * What it costs: each collection it starts is a full, atomic one (gc() is the
 * only way a program can ask V8 for one), so it pauses the event loop for the
 * whole mark-compact (tens of ms at a member's ~100 MiB) and spends the CPU
 * V8's concurrent marking would have spread over helper threads. The budget
 * sets the trade: smaller is less memory, more pauses. Measured at the
 * issue's load: 48 MiB took ~95-110 MiB off each member's peak for 11 % more
 * CPU per put at 16 clients and 15-22 % at 64 (bench/RESULTS.md). So it is off
 * unless the config's gcBudgetMiB asks for it.
 *
 * Invariants:
 * - The decision (HeapBudget) is pure: the lowest load seen since the last
 *   full collection, whoever started it, plus the budget is the threshold.
 * - Off unless configured (gcBudgetMiB > 0); started by the process's entry
 *   (command.ts), never by a Daemon.
 * - The driver runs only where the process was started with --expose-gc
 *   (DAEMON_NODE_FLAGS); anywhere else (a test process hosting daemons) it
 *   does nothing and says so once, rather than collecting with a borrowed
 *   global. One per process: the heap is the process's, not a daemon's.
 */
import v8 from 'node:v8';
import { PerformanceObserver, constants, type PerformanceEntry } from 'node:perf_hooks';
import type { Logger } from '../log.ts';

/** How often the load is read: a read costs ~0.6 µs; a Raft leader's load grew ~27 KB per put under the bench, so at ~2 000 puts/s 100 ms lets it overshoot the budget by ~5 MiB. */
export const GC_BUDGET_CHECK_MS = 100;

/**
 * The decision: collect once the load has grown `budgetBytes` past the
 * lowest load seen since the last full collection. The lowest, not the one
 * read just after it: V8 frees the ArrayBuffers a full collection found dead
 * on a background thread and counts them gone only at the next minor
 * collection (tens of ms later in a busy daemon), so the load read right
 * after gc() still holds them, and a floor taken there would let the next
 * collection wait for up to twice the budget.
 */
export class HeapBudget {
  readonly budgetBytes: number;
  #floor: number;

  /** `load` is the process's load now (heap used + external), taken as if a collection had just run. */
  constructor(budgetBytes: number, load: number) {
    if (!Number.isSafeInteger(budgetBytes) || budgetBytes < 1) throw new RangeError(`HeapBudget: budgetBytes must be a positive whole number, got ${budgetBytes}`);
    this.budgetBytes = budgetBytes;
    this.#floor = load;
  }

  /** A full collection has just run (ours or V8's own); `load` is the load read after it. */
  collected(load: number): void {
    this.#floor = load;
  }

  /** Whether a full collection is due at `load`, the load now; a load below the floor lowers it. */
  due(load: number): boolean {
    if (load < this.#floor) this.#floor = load;
    return load > this.#floor + this.budgetBytes;
  }
}

/** Heap used plus the external memory V8 accounts to the heap's objects (ArrayBuffers among it): what a full collection can shrink. */
export function heapLoad(): number {
  const s = v8.getHeapStatistics();
  return s.used_heap_size + s.external_memory;
}

export interface HeapBudgetDriver {
  /** Full collections this driver started. */
  readonly collections: number;
  stop(): void;
}

/**
 * Starts keeping this process's garbage within `budgetBytes`; returns null
 * (after one log line) when gc() is not exposed.
 */
export function startHeapBudget(log: Logger, budgetBytes: number, checkMs = GC_BUDGET_CHECK_MS): HeapBudgetDriver | null {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (typeof gc !== 'function') {
    log.warn({ budgetBytes }, 'node was started without --expose-gc: the garbage budget is off, and memory under load is bounded by V8 alone');
    return null;
  }
  const budget = new HeapBudget(budgetBytes, heapLoad());
  let collections = 0;
  // V8's own full collections reset the floor too, so ours only fill the gaps between them. (Entries
  // arrive after the collection, ours included: the floor is read a little late, which due() corrects.)
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      if ((entry as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) budget.collected(heapLoad());
    }
  });
  observer.observe({ entryTypes: ['gc'] });
  const timer = setInterval(() => {
    if (!budget.due(heapLoad())) return;
    gc();
    collections++;
    budget.collected(heapLoad());
  }, checkMs);
  timer.unref();
  return {
    get collections() {
      return collections;
    },
    stop() {
      clearInterval(timer);
      observer.disconnect();
    },
  };
}
