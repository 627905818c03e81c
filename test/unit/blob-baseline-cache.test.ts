/**
 * The baseline cache: per-region LRU capacity, TTL from the time stored,
 * counters for hits, misses, evictions, expiries and bytes saved, and a miss,
 * expiry or eviction turning into a full transfer that still rebuilds the value.
 */
import { describe, expect, it } from 'vitest';
import { BaselineCache, DEFAULT_BASELINE_CACHE } from '../../src/blob/baseline-cache.ts';
import { assembleValue, buildManifest, chunksOf, planDelta, type Manifest } from '../../src/blob/manifest.ts';
import { vmImageLike } from '../../bench/codec.ts';

const T0 = 1_000_000;

describe('BaselineCache', () => {
  it('defaults to 1000 keys per region and 5 minutes', () => {
    const cache = new BaselineCache<string>();
    expect(cache.capacity).toBe(DEFAULT_BASELINE_CACHE.capacity);
    expect(cache.capacity).toBe(1000);
    expect(cache.ttlMs).toBe(300_000);
  });

  it('counts hits and misses, per region and key', () => {
    const cache = new BaselineCache<string>();
    cache.set('eu', 'k1', 'v1', T0);
    expect(cache.get('eu', 'k1', T0 + 1)).toBe('v1');
    expect(cache.get('us', 'k1', T0 + 1)).toBeUndefined();
    expect(cache.get('eu', 'k2', T0 + 1)).toBeUndefined();
    expect(cache.stats()).toMatchObject({ hits: 1, misses: 2, evictions: 0, expiries: 0, entries: 1 });
  });

  it('evicts the least recently used key of the full region only, reads refreshing recency', () => {
    const cache = new BaselineCache<number>({ capacity: 3 });
    for (const [i, key] of ['a', 'b', 'c'].entries()) cache.set('eu', key, i, T0);
    cache.set('us', 'a', 9, T0);
    cache.get('eu', 'a', T0); // a is now most recent; b is the oldest
    cache.set('eu', 'd', 3, T0);
    expect(cache.get('eu', 'b', T0)).toBeUndefined();
    expect(cache.get('eu', 'a', T0)).toBe(0);
    expect(cache.get('eu', 'c', T0)).toBe(2);
    expect(cache.get('us', 'a', T0)).toBe(9);
    expect(cache.stats()).toMatchObject({ evictions: 1, entries: 4 });
  });

  it('replacing a key does not evict or grow', () => {
    const cache = new BaselineCache<number>({ capacity: 2 });
    cache.set('eu', 'a', 1, T0);
    cache.set('eu', 'b', 1, T0);
    cache.set('eu', 'a', 2, T0);
    expect(cache.stats()).toMatchObject({ evictions: 0, entries: 2 });
    expect(cache.get('eu', 'a', T0)).toBe(2);
  });

  it('expires an entry ttlMs after it was stored, even if read meanwhile; set restarts the clock', () => {
    const cache = new BaselineCache<string>({ ttlMs: 1000 });
    cache.set('eu', 'k', 'v', T0);
    expect(cache.get('eu', 'k', T0 + 999)).toBe('v');
    expect(cache.get('eu', 'k', T0 + 1000)).toBeUndefined();
    expect(cache.stats()).toMatchObject({ hits: 1, misses: 1, expiries: 1, entries: 0 });
    cache.set('eu', 'k', 'v', T0 + 2000);
    expect(cache.get('eu', 'k', T0 + 2999)).toBe('v');
  });

  it('prune drops only expired entries and counts them', () => {
    const cache = new BaselineCache<string>({ ttlMs: 1000 });
    cache.set('eu', 'old', 'v', T0);
    cache.set('us', 'old', 'v', T0);
    cache.set('eu', 'new', 'v', T0 + 800);
    expect(cache.prune(T0 + 1500)).toBe(2);
    expect(cache.stats()).toMatchObject({ expiries: 2, entries: 1 });
    expect(cache.get('eu', 'new', T0 + 1500)).toBe('v');
  });

  it('delete forgets a baseline the receiver lacks without counting an eviction; bytes saved add up', () => {
    const cache = new BaselineCache<string>();
    cache.set('eu', 'k', 'v', T0);
    expect(cache.delete('eu', 'k')).toBe(true);
    expect(cache.delete('eu', 'k')).toBe(false);
    cache.recordSaved(1000);
    cache.recordSaved(24);
    expect(cache.stats()).toMatchObject({ evictions: 0, entries: 0, bytesSaved: 1024 });
  });

  it('refute forgets the entry and counts a refutation, not an eviction', () => {
    const cache = new BaselineCache<string>();
    cache.set('eu', 'k', 'v', T0);
    expect(cache.get('eu', 'k', T0)).toBe('v');
    cache.refute('eu', 'k');
    expect(cache.get('eu', 'k', T0)).toBeUndefined();
    expect(cache.stats()).toMatchObject({ hits: 1, misses: 1, refuted: 1, evictions: 0, entries: 0 });
  });

  it('snapshot and restore carry live entries across a restart with their stored time, counting nothing', () => {
    const cache = new BaselineCache<string>({ capacity: 2, ttlMs: 1000 });
    cache.set('eu', 'old', 'v0', T0);
    cache.set('eu', 'a', 'v1', T0 + 600);
    cache.set('us', 'b', 'v2', T0 + 700);
    const saved = cache.snapshot(T0 + 900);
    expect(saved.map((e) => `${e.region}/${e.key}`)).toEqual(['eu/old', 'eu/a', 'us/b']);
    expect([...cache.values()].sort()).toEqual(['v0', 'v1', 'v2']);
    const after = new BaselineCache<string>({ capacity: 1, ttlMs: 1000 });
    // At T0 + 1100 "old" has expired; capacity 1 keeps eu's most recently used.
    expect(after.restore(saved, T0 + 1100)).toBe(2);
    expect(after.stats()).toMatchObject({ hits: 0, misses: 0, evictions: 0, expiries: 0, entries: 2 });
    expect(after.get('eu', 'a', T0 + 1100)).toBe('v1');
    expect(after.get('us', 'b', T0 + 1100)).toBe('v2');
    // Still expires when it would have: stored at T0 + 600.
    expect(after.get('eu', 'a', T0 + 1600)).toBeUndefined();
    // An entry from the future (the clock went back) is not trusted.
    expect(new BaselineCache<string>().restore([{ region: 'eu', key: 'x', value: 'v', storedAtMs: T0 + 10 }], T0)).toBe(0);
  });

  it('refuses a bad capacity or TTL by name', () => {
    expect(() => new BaselineCache({ capacity: 0 })).toThrow(/capacity .* got 0/);
    expect(() => new BaselineCache({ ttlMs: -1 })).toThrow(/ttlMs .* got -1/);
  });
});

describe('sync through the cache', () => {
  const v1 = vmImageLike(512 * 1024, 21);
  const v2 = v1.slice();
  v2.fill(7, 100_000, 104_096);
  const m1 = buildManifest('img', 'v1', v1);
  const m2 = buildManifest('img', 'v2', v2);

  /** One sender-side sync of v2 to `region`; returns the bytes sent, checking the receiver rebuilds v2. */
  function sync(cache: BaselineCache<Manifest>, region: string, nowMs: number, receiverHasV1: boolean): number {
    const plan = planDelta(m2, cache.get(region, 'img', nowMs));
    const received = new Map(plan.send.map((c) => [c.hash, v2.subarray(c.offset, c.offset + c.length)]));
    const rebuilt = assembleValue(m2, receiverHasV1 ? [received, chunksOf(m1, v1)] : [received]);
    expect(Buffer.from(rebuilt).equals(Buffer.from(v2))).toBe(true);
    cache.recordSaved(plan.reusedBytes);
    return plan.sendBytes;
  }

  it('a hit sends a delta; a miss, an expiry or an eviction sends everything and still rebuilds', () => {
    const full = planDelta(m2, undefined).sendBytes;
    expect(full).toBeGreaterThan(v2.byteLength / 2); // the test data is not one repeated chunk
    const cache = new BaselineCache<Manifest>({ capacity: 1, ttlMs: 1000 });
    expect(sync(cache, 'eu', T0, true)).toBe(full); // miss
    cache.set('eu', 'img', m1, T0);
    const delta = sync(cache, 'eu', T0 + 10, true);
    expect(delta).toBeLessThan(full / 4); // hit
    expect(sync(cache, 'eu', T0 + 5000, true)).toBe(full); // expired
    cache.set('eu', 'img', m1, T0);
    cache.set('eu', 'other', m1, T0); // evicts img
    expect(sync(cache, 'eu', T0 + 10, false)).toBe(full);
    expect(cache.stats()).toMatchObject({ hits: 1, misses: 3, expiries: 1, evictions: 1 });
    expect(cache.stats().bytesSaved).toBe(v2.byteLength - delta);
  });
});
