/**
 * The regional baseline cache: per remote region, for each key, the last
 * version both sides are known to hold (its manifest, or whatever the caller
 * stores), so the next sync of that key sends only what changed.
 *
 * Invariants:
 * - LRU per region: each region holds at most `capacity` keys, so one busy
 *   region cannot evict every other region's baselines. Reads and writes both
 *   make an entry most recently used.
 * - An entry expires `ttlMs` after it was last stored (confirmed), not after
 *   it was last read: it records what a remote held at that time, and a read
 *   does not make that knowledge fresher. An expired entry is never returned.
 * - Time is an argument (`nowMs`), never read here, so tests and the daemon
 *   decide the clock.
 * - The cache is only an optimisation: a miss means a full transfer, so
 *   dropping an entry is always safe.
 * - Counters are plain numbers that only grow; the daemon maps them to metrics.
 * - `snapshot` and `restore` carry entries across a restart with the time
 *   each was stored, so a restored entry expires when it would have; restoring
 *   counts nothing and respects capacity (the most recently used win).
 */

export interface BaselineCacheOptions {
  /** Keys kept per remote region. */
  capacity: number;
  ttlMs: number;
}

export const DEFAULT_BASELINE_CACHE: Readonly<BaselineCacheOptions> = { capacity: 1000, ttlMs: 5 * 60 * 1000 };

export interface BaselineCacheStats {
  hits: number;
  misses: number;
  /** Entries dropped to stay within capacity. */
  evictions: number;
  /** Entries found or pruned past their TTL. */
  expiries: number;
  /** Bytes not sent thanks to a baseline, as reported by `recordSaved`. */
  bytesSaved: number;
  /** Hits the receiver then refuted (it no longer held the baseline), each followed by a full transfer. */
  refuted: number;
  /** Entries held now, over all regions. */
  entries: number;
}

interface Entry<V> {
  value: V;
  storedAtMs: number;
}

/** One entry as `snapshot` exports it, least recently used first within its region. */
export interface BaselineCacheEntry<V> {
  region: string;
  key: string;
  value: V;
  storedAtMs: number;
}

export class BaselineCache<V> {
  readonly capacity: number;
  readonly ttlMs: number;
  readonly #regions = new Map<string, Map<string, Entry<V>>>();
  #hits = 0;
  #misses = 0;
  #evictions = 0;
  #expiries = 0;
  #bytesSaved = 0;
  #refuted = 0;
  #entries = 0;

  constructor(options: Partial<BaselineCacheOptions> = {}) {
    const { capacity, ttlMs } = { ...DEFAULT_BASELINE_CACHE, ...options };
    if (!Number.isSafeInteger(capacity) || capacity < 1) throw new RangeError(`baseline cache capacity must be a whole number of at least 1, got ${capacity}`);
    if (!(ttlMs > 0)) throw new RangeError(`baseline cache ttlMs must be positive, got ${ttlMs}`);
    this.capacity = capacity;
    this.ttlMs = ttlMs;
  }

  #expired(entry: Entry<V>, nowMs: number): boolean {
    return nowMs - entry.storedAtMs >= this.ttlMs;
  }

  #drop(region: string, entries: Map<string, Entry<V>>, key: string): void {
    entries.delete(key);
    this.#entries--;
    if (entries.size === 0) this.#regions.delete(region);
  }

  /** The baseline `region` holds for `key`, counting a hit, a miss or an expiry (which is also a miss). */
  get(region: string, key: string, nowMs: number): V | undefined {
    const entries = this.#regions.get(region);
    const entry = entries?.get(key);
    if (entries === undefined || entry === undefined) {
      this.#misses++;
      return undefined;
    }
    if (this.#expired(entry, nowMs)) {
      this.#expiries++;
      this.#misses++;
      this.#drop(region, entries, key);
      return undefined;
    }
    this.#hits++;
    entries.delete(key);
    entries.set(key, entry);
    return entry.value;
  }

  /** Records that `region` now holds `value` for `key`; evicts that region's least recently used key when full. */
  set(region: string, key: string, value: V, nowMs: number): void {
    let entries = this.#regions.get(region);
    if (entries === undefined) {
      entries = new Map();
      this.#regions.set(region, entries);
    }
    if (entries.delete(key)) this.#entries--;
    entries.set(key, { value, storedAtMs: nowMs });
    this.#entries++;
    while (entries.size > this.capacity) {
      const oldest = entries.keys().next().value as string;
      this.#drop(region, entries, oldest);
      this.#evictions++;
    }
  }

  /** Forgets a baseline, e.g. when the receiver reports it does not hold it. Not counted as an eviction. */
  delete(region: string, key: string): boolean {
    const entries = this.#regions.get(region);
    if (entries === undefined || !entries.has(key)) return false;
    this.#drop(region, entries, key);
    return true;
  }

  /** A hit turned out wrong: the receiver does not hold the baseline. Forgets it and counts a refutation. */
  refute(region: string, key: string): void {
    this.delete(region, key);
    this.#refuted++;
  }

  /** The live (unexpired) entries, for persisting; within a region least recently used first. */
  snapshot(nowMs: number): BaselineCacheEntry<V>[] {
    const out: BaselineCacheEntry<V>[] = [];
    for (const [region, entries] of this.#regions) {
      for (const [key, entry] of entries) {
        if (!this.#expired(entry, nowMs)) out.push({ region, key, value: entry.value, storedAtMs: entry.storedAtMs });
      }
    }
    return out;
  }

  /** Puts back what `snapshot` exported (in its order), skipping expired entries; counts nothing. Returns how many were kept. */
  restore(entries: readonly BaselineCacheEntry<V>[], nowMs: number): number {
    let kept = 0;
    for (const e of entries) {
      if (nowMs - e.storedAtMs >= this.ttlMs || e.storedAtMs > nowMs) continue;
      const evictions = this.#evictions;
      this.set(e.region, e.key, e.value, e.storedAtMs);
      this.#evictions = evictions;
      kept++;
    }
    return kept;
  }

  /** Every value held, expired or not: what the caller must keep (e.g. the manifests the entries name). */
  *values(): IterableIterator<V> {
    for (const entries of this.#regions.values()) for (const entry of entries.values()) yield entry.value;
  }

  /** Drops every expired entry (counted as expiries); returns how many. */
  prune(nowMs: number): number {
    let dropped = 0;
    for (const [region, entries] of this.#regions) {
      for (const [key, entry] of entries) {
        if (!this.#expired(entry, nowMs)) continue;
        this.#drop(region, entries, key);
        dropped++;
      }
    }
    this.#expiries += dropped;
    return dropped;
  }

  /** Adds bytes a delta transfer did not have to send. */
  recordSaved(bytes: number): void {
    if (bytes > 0) this.#bytesSaved += bytes;
  }

  stats(): BaselineCacheStats {
    return {
      hits: this.#hits,
      misses: this.#misses,
      evictions: this.#evictions,
      expiries: this.#expiries,
      bytesSaved: this.#bytesSaved,
      refuted: this.#refuted,
      entries: this.#entries,
    };
  }
}
