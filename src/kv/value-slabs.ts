/**
 * ValueSlabs: where the KV state machine keeps the bytes of its values.
 * Values up to SLABBED_MAX_BYTES are copied into shared 64 KiB slabs, one
 * after another, instead of each into an ArrayBuffer of its own: a small
 * ArrayBuffer costs a backing store, its bookkeeping in V8 and a heap object
 * besides its bytes (~150 bytes per 256-byte value measured with 100 000
 * keys, plus allocator fragmentation: 56 MB more RSS than slabs held). Larger
 * values keep their own buffer, where that overhead is small.
 *
 * A slab stays allocated while any value in it lives, so overwritten and
 * deleted values leave holes. The slabs account for it: `release` counts a
 * value's bytes as waste, and once waste exceeds the live bytes (plus a few
 * slabs), `repackDue` tells the owner to copy every live value into fresh
 * slabs (`restart`, then copy each again), after which the old ones are garbage. Memory held is so at
 * most about twice the live values' bytes, and the copying is amortised: a
 * repack of L live bytes follows at least L bytes of released writes.
 *
 * Invariants: a returned view never changes afterwards (slabs are written
 * only past their fill mark); the caller must release exactly the views it
 * got from copy() and no longer stores.
 */

const SLAB_BYTES = 64 * 1024;
/** Values above this get a buffer of their own. */
export const SLABBED_MAX_BYTES = 4 * 1024;

export class ValueSlabs {
  #slab = new Uint8Array(0);
  #fill = 0;
  /** Bytes of the values this holds in slabs. */
  #live = 0;
  /** Bytes of slabs handed out since the last repack that no live value uses (holes, and the tail of the current slab). */
  #waste = 0;

  /** A copy of `value` the caller may keep (a view into a slab, or its own buffer when large). */
  copy(value: Uint8Array): Uint8Array {
    const n = value.byteLength;
    if (n > SLABBED_MAX_BYTES) return new Uint8Array(value);
    if (this.#fill + n > this.#slab.byteLength) {
      this.#waste += this.#slab.byteLength - this.#fill;
      this.#slab = new Uint8Array(SLAB_BYTES);
      this.#fill = 0;
    }
    const view = this.#slab.subarray(this.#fill, this.#fill + n);
    view.set(value);
    this.#fill += n;
    this.#live += n;
    return view;
  }

  /** A stored copy is no longer kept (overwritten or deleted). */
  release(value: Uint8Array): void {
    const n = value.byteLength;
    if (n > SLABBED_MAX_BYTES) return;
    this.#live -= n;
    this.#waste += n;
  }

  /** Whether the holes outweigh the live values: time to repack. */
  get repackDue(): boolean {
    return this.#waste > this.#live + 4 * SLAB_BYTES;
  }

  /**
   * Starts over with fresh slabs: the owner then copies every value it keeps
   * again (copy) and stores the new views in place of the old ones, whose
   * slabs become garbage once no old view is left.
   */
  restart(): void {
    this.#slab = new Uint8Array(0);
    this.#fill = 0;
    this.#live = 0;
    this.#waste = 0;
  }

  /** For tests and status: live bytes in slabs, and the bytes they waste. */
  get stats(): { live: number; waste: number } {
    return { live: this.#live, waste: this.#waste };
  }
}
