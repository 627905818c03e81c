/**
 * Anti-entropy planning: which keys two regions must exchange, found without
 * listing every key. Keys fall into NUM_BUCKETS buckets by a hash of the key;
 * a bucket's digest is the XOR of its entries' hashes (so it is kept up to
 * date in O(1) per change and does not depend on insertion order). One round:
 *
 *   initiator -> digest (every bucket digest, 4 KiB)
 *   responder -> summaries: (key, clock, hash, Yjs state vector) of its entries
 *                in the buckets that differ, as many buckets as fit the budget
 *   initiator -> want: keys the responder has something of that we lack
 *             -> updates: entries the responder lacks (Yjs records as a diff
 *                against its state vector)
 *   responder -> updates: what was wanted
 *
 * Invariants:
 * - A key is wanted when the responder's clock is not dominated by ours, and
 *   sent when ours is not dominated by theirs; equal clocks with different
 *   hashes (impossible while clocks are honest) are exchanged both ways, so a
 *   round never leaves two copies different and both sides content.
 * - Pure functions and one index object; no I/O, no time.
 */
import { createHash } from 'node:crypto';
import { compareClocks, dominates, type VectorClock } from './clock/vector-clock.ts';
import { ENTRY_HASH_BYTES } from './entry.ts';
import type { EntrySummary } from './messages.ts';

export const NUM_BUCKETS = 256;
export const DIGEST_BYTES = NUM_BUCKETS * ENTRY_HASH_BYTES;

export function bucketOf(key: string): number {
  return createHash('sha256').update(key).digest()[0] as number;
}

function xorInto(target: Uint8Array, offset: number, hash: Uint8Array): void {
  for (let i = 0; i < ENTRY_HASH_BYTES; i++) target[offset + i] = (target[offset + i] as number) ^ (hash[i] as number);
}

/** One byte per character: the cheapest way V8 holds 16 bytes per key (see BucketIndex). */
function hashText(hash: Uint8Array): string {
  return Buffer.from(hash.buffer, hash.byteOffset, ENTRY_HASH_BYTES).toString('latin1');
}

function hashBytes(text: string): Uint8Array {
  return Buffer.from(text, 'latin1');
}

/**
 * Per-bucket XOR digests and key sets of one store.
 *
 * Memory: an index holds one hash per entry of the store, so its per-entry
 * cost is paid by every member for every key. A hash is kept as a 16-char
 * latin1 string (≈ 40 bytes of heap) rather than the Uint8Array view
 * createHash returns (≈ 200 bytes of heap for the view and its ArrayBuffer,
 * plus a separately malloc'd backing store, several hundred bytes of RSS
 * each: bench/fleet-records.ts measured it). hash() rebuilds bytes on demand,
 * only for the keys a round or a merge looks at.
 */
export class BucketIndex {
  readonly #digests = new Uint8Array(DIGEST_BYTES);
  readonly #keys: Set<string>[] = Array.from({ length: NUM_BUCKETS }, () => new Set<string>());
  readonly #hashes = new Map<string, string>();

  /** Records `key`'s new hash (null: the key is gone). */
  set(key: string, hash: Uint8Array | null): void {
    const bucket = bucketOf(key);
    const old = this.#hashes.get(key);
    if (old !== undefined) xorInto(this.#digests, bucket * ENTRY_HASH_BYTES, hashBytes(old));
    if (hash === null) {
      this.#hashes.delete(key);
      this.#keys[bucket]?.delete(key);
      return;
    }
    xorInto(this.#digests, bucket * ENTRY_HASH_BYTES, hash);
    this.#hashes.set(key, hashText(hash));
    this.#keys[bucket]?.add(key);
  }

  hash(key: string): Uint8Array | undefined {
    const text = this.#hashes.get(key);
    return text === undefined ? undefined : hashBytes(text);
  }

  /** A copy of every bucket digest, bucket 0 first. */
  digests(): Uint8Array {
    return this.#digests.slice();
  }

  /** Buckets whose digest differs from `theirs` (which must be DIGEST_BYTES long). */
  differing(theirs: Uint8Array): number[] {
    const out: number[] = [];
    for (let b = 0; b < NUM_BUCKETS; b++) {
      const at = b * ENTRY_HASH_BYTES;
      for (let i = 0; i < ENTRY_HASH_BYTES; i++) {
        if (this.#digests[at + i] !== theirs[at + i]) {
          out.push(b);
          break;
        }
      }
    }
    return out;
  }

  keysIn(bucket: number): ReadonlySet<string> {
    return this.#keys[bucket] ?? new Set();
  }

  get size(): number {
    return this.#hashes.size;
  }

  /** SHA-256 of all bucket digests: one value that two regions compare to see whether they agree. */
  storeDigest(): Uint8Array {
    return createHash('sha256').update(this.#digests).digest();
  }
}

export interface LocalCopy {
  readonly clock: VectorClock;
  readonly hash: Uint8Array;
}

export interface RoundPlan {
  /** Keys to send, with the responder's clock and state vector when it has a copy. */
  readonly send: readonly { key: string; theirs: EntrySummary | null }[];
  /** Keys to ask for. */
  readonly want: readonly string[];
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/**
 * The initiator's side of a round: compares the responder's summaries with
 * our copies of every key in the covered buckets.
 */
export function planRound(summaries: readonly EntrySummary[], ourKeys: Iterable<string>, ours: (key: string) => LocalCopy | undefined): RoundPlan {
  const theirs = new Map(summaries.map((s) => [s.key, s]));
  const send: { key: string; theirs: EntrySummary | null }[] = [];
  const want: string[] = [];
  for (const key of ourKeys) if (!theirs.has(key)) send.push({ key, theirs: null });
  for (const summary of summaries) {
    const mine = ours(summary.key);
    if (mine === undefined) {
      want.push(summary.key);
      continue;
    }
    if (sameBytes(mine.hash, summary.hash)) continue;
    const order = compareClocks(mine.clock, summary.clock);
    if (order !== 'before') send.push({ key: summary.key, theirs: summary });
    if (!dominates(mine.clock, summary.clock) || order === 'equal') want.push(summary.key);
  }
  return { send, want };
}
