/**
 * The KV state's keys in compareKeys (UTF-8 byte) order, for ranges and
 * snapshots: a sorted list cut into blocks of at most BLOCK_MAX keys.
 *
 * One flat sorted array made every new key a memmove of the whole list:
 * 5–48 µs per insert at 40 000–100 000 keys (bench/RESULTS.md, raft
 * section), growing with the key count, so a store filled with keys in no
 * particular order (VM names, tenants' paths) would slow every write as it
 * grew. Here an insert or delete searches the blocks' last keys, then one
 * block, and moves at most BLOCK_MAX pointers: O(log n + BLOCK_MAX), and
 * O(n / BLOCK_MAX) to splice a block in or out of the block list.
 *
 * Invariants (checked by `check()` in the tests):
 * - Every block holds 1..BLOCK_MAX keys, sorted; the last key of each block
 *   is before the first key of the next; no key appears twice.
 * - `length` is the sum of the blocks' lengths.
 * - Deterministic: the layout is a function of the operations alone (no
 *   clock, no randomness), though nothing outside this module sees it.
 */
import { compareKeys } from './command.ts';

/** Largest block; a full block splits in two halves. */
const BLOCK_MAX = 512;
/** A block this small after a delete joins a neighbour if both fit in one block. */
const BLOCK_MIN = BLOCK_MAX / 4;

export class SortedKeys {
  #blocks: string[][] = [];
  #length = 0;

  get length(): number {
    return this.#length;
  }

  /** Adds `key`, which must not be present; false (and nothing changes) if it is. */
  insert(key: string): boolean {
    if (this.#blocks.length === 0) {
      this.#blocks.push([key]);
      this.#length = 1;
      return true;
    }
    // The block that holds or would hold `key`: the first whose last key is not before it, else the last block.
    const b = Math.min(this.#blockFor(key), this.#blocks.length - 1);
    const block = this.#blocks[b] as string[];
    const i = bound(block, key, false);
    if (i < block.length && block[i] === key) return false;
    block.splice(i, 0, key);
    this.#length++;
    if (block.length > BLOCK_MAX) this.#blocks.splice(b + 1, 0, block.splice(block.length >>> 1));
    return true;
  }

  /** Removes `key`; false if it was not present. */
  delete(key: string): boolean {
    const b = this.#blockFor(key);
    const block = this.#blocks[b];
    if (block === undefined) return false;
    const i = bound(block, key, false);
    if (block[i] !== key) return false;
    block.splice(i, 1);
    this.#length--;
    if (block.length === 0) this.#blocks.splice(b, 1);
    else if (block.length < BLOCK_MIN) this.#joinNeighbour(b);
    return true;
  }

  /** Appends `key`, which must come after every key present (a snapshot's keys, in order); throws otherwise. */
  append(key: string): void {
    const last = this.#blocks.at(-1);
    const tail = last?.at(-1);
    if (tail !== undefined && compareKeys(tail, key) >= 0) throw new RangeError(`sorted keys: "${key}" is not after the last key "${tail}"`);
    if (last === undefined || last.length >= BLOCK_MAX) this.#blocks.push([key]);
    else last.push(key);
    this.#length++;
  }

  /** The keys from `start` on in order (from just after it when `exclusive`). */
  *from(start: string, exclusive = false): Generator<string, void, undefined> {
    let b = this.#blockFor(start);
    const first = this.#blocks[b];
    if (first === undefined) return;
    let i = bound(first, start, exclusive);
    for (; b < this.#blocks.length; b++, i = 0) {
      const block = this.#blocks[b] as string[];
      for (; i < block.length; i++) yield block[i] as string;
    }
  }

  /** Every key, in order, as a new array. */
  toArray(): string[] {
    return this.#blocks.flat();
  }

  /** Throws naming the first broken invariant (for tests and assertions). */
  check(): void {
    let count = 0;
    let previous: string | undefined;
    for (const [b, block] of this.#blocks.entries()) {
      if (block.length === 0 || block.length > BLOCK_MAX) throw new Error(`sorted keys: block ${b} holds ${block.length} keys (1 to ${BLOCK_MAX} allowed)`);
      for (const key of block) {
        if (previous !== undefined && compareKeys(previous, key) >= 0) throw new Error(`sorted keys: "${key}" in block ${b} is not after "${previous}"`);
        previous = key;
      }
      count += block.length;
    }
    if (count !== this.#length) throw new Error(`sorted keys: length ${this.#length}, but the blocks hold ${count}`);
  }

  /** Index of the first block whose last key is not before `key`; the block count if there is none. */
  #blockFor(key: string): number {
    let lo = 0;
    let hi = this.#blocks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const block = this.#blocks[mid] as string[];
      if (compareKeys(block[block.length - 1] as string, key) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Merges small block `b` into the smaller of its neighbours when the two fit in one block. */
  #joinNeighbour(b: number): void {
    const before = this.#blocks[b - 1];
    const after = this.#blocks[b + 1];
    const block = this.#blocks[b] as string[];
    const into = before !== undefined && (after === undefined || before.length <= after.length) ? b - 1 : b + 1;
    const neighbour = this.#blocks[into];
    if (neighbour === undefined || neighbour.length + block.length > BLOCK_MAX) return;
    if (into < b) neighbour.push(...block);
    else neighbour.unshift(...block);
    this.#blocks.splice(b, 1);
  }
}

/** First position in sorted `keys` whose key is after `key` (`after`), or not before it. */
function bound(keys: readonly string[], key: string, after: boolean): number {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const c = compareKeys(keys[mid] as string, key);
    if (c < 0 || (after && c === 0)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
