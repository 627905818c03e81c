/**
 * ValueSlabs: where the KV state machine keeps the bytes of its values.
 * Values up to SLABBED_MAX_BYTES are copied into shared 64 KiB slabs, one
 * after another, instead of each into an ArrayBuffer of its own: a small
 * ArrayBuffer costs a backing store, its bookkeeping in V8 and a heap object
 * besides its bytes (~150 bytes per 256-byte value measured with 100 000
 * keys, plus allocator fragmentation: 56 MB more RSS than slabs held). Larger
 * values keep their own buffer, where that overhead is small.
 *
 * A value is not handed back as a view (a Uint8Array object per value is
 * ~100 bytes of V8 heap, 10 MiB at 100 000 keys, which every full collection
 * marks and V8's heap growth multiplies): the owner keeps a ValuePlace
 * (which slab, where in it, how long), usually as fields of its own record,
 * and makes a view with valueView() only when it reads the value.
 *
 * A slab stays allocated while any value in it lives, so overwritten and
 * deleted values leave holes. The slabs account for it per slab: a slab whose
 * last value is released is no longer held (it is garbage once no reader
 * has it), so values that are overwritten in about the order they were
 * written (a sweep over a key range, a batch rewritten together) free whole
 * slabs and never call for a repack. The waste is what the held slabs hold
 * beyond the live values; once it exceeds half the live bytes (plus a few
 * slabs), `repackDue` tells the owner to copy every live value into fresh
 * slabs (`restart`, then `place` each value again), after which the old ones
 * are garbage. Memory held is so at most about 1.5× the live values' bytes
 * (2.5× for the moment of a repack, until the old slabs are collected), and
 * the copying is amortised: a repack of L live bytes follows at least L/2
 * bytes of released writes, so it copies at most 2 bytes per byte written.
 *
 * Invariants: the bytes at a place never change afterwards (slabs are written
 * only past their fill mark), so a reader that took a place's fields (or a
 * view) keeps reading the same value even after a repack moved it; the caller
 * must release exactly the places it filled and no longer stores.
 */

const SLAB_BYTES = 64 * 1024;
/** Values above this get a buffer of their own. */
export const SLABBED_MAX_BYTES = 4 * 1024;

/** Where a value's bytes are: `length` bytes from `offset` of `slab` (a shared slab, or the value's own buffer when large). */
export interface ValuePlace {
  slab: Uint8Array;
  offset: number;
  readonly length: number;
}

/** What a ValuePlace points at before place() fills it. */
export const NO_SLAB = new Uint8Array(0);

/** A view of the value at `place` (no copy). */
export function valueView(place: ValuePlace): Uint8Array {
  return place.slab.subarray(place.offset, place.offset + place.length);
}

export class ValueSlabs {
  #slab = new Uint8Array(0);
  #fill = 0;
  /** Bytes of the values this holds in slabs. */
  #live = 0;
  /** Live bytes per slab that holds any (and the current one): a slab leaves when its last value is released. Every one is SLAB_BYTES long (#held). */
  #slabLive = new Map<Uint8Array, number>();

  /** Copies `value` (of `place.length` bytes) into the slabs, or into a buffer of its own when large, and points `place` at the copy. */
  place(value: Uint8Array, place: ValuePlace): void {
    const n = value.byteLength;
    if (n !== place.length) throw new RangeError(`value slabs: a ${n}-byte value for a place of ${place.length} bytes`);
    if (n === 0) {
      // No bytes to keep, so no slab: one counted in a slab would be released after that slab was let go.
      place.slab = NO_SLAB;
      place.offset = 0;
      return;
    }
    if (n > SLABBED_MAX_BYTES) {
      place.slab = new Uint8Array(value);
      place.offset = 0;
      return;
    }
    if (this.#fill + n > this.#slab.byteLength) {
      if (this.#slabLive.get(this.#slab) === 0) this.#slabLive.delete(this.#slab);
      this.#slab = new Uint8Array(SLAB_BYTES);
      this.#fill = 0;
      this.#slabLive.set(this.#slab, 0);
    }
    this.#slab.set(value, this.#fill);
    this.#slabLive.set(this.#slab, (this.#slabLive.get(this.#slab) as number) + n);
    place.slab = this.#slab;
    place.offset = this.#fill;
    this.#fill += n;
    this.#live += n;
  }

  /** A filled place is no longer kept (overwritten or deleted). */
  release(place: ValuePlace): void {
    const n = place.length;
    if (n === 0 || n > SLABBED_MAX_BYTES) return;
    const left = this.#slabLive.get(place.slab);
    if (left === undefined || left < n) throw new RangeError(`value slabs: releasing ${n} bytes of a slab that holds ${left ?? 'none'} (released twice, or not placed here)`);
    this.#live -= n;
    this.#slabLive.set(place.slab, left - n);
    // A slab no value lives in any more is no longer held.
    if (left === n && place.slab !== this.#slab) this.#slabLive.delete(place.slab);
  }

  /** Whether the holes in the held slabs outweigh half the live values: time to repack. */
  get repackDue(): boolean {
    return this.#held() - this.#live > this.#live / 2 + 4 * SLAB_BYTES;
  }

  /**
   * Starts over with fresh slabs: the owner then places every value it keeps
   * again (in the same place object: the copy is made from the old slab
   * before the place points at the new one), whose old slabs become garbage
   * once nothing else reads them.
   */
  restart(): void {
    this.#slab = new Uint8Array(0);
    this.#fill = 0;
    this.#live = 0;
    this.#slabLive.clear();
  }

  /** For tests and status: live bytes in slabs, and the bytes the held slabs hold beyond them (holes, the current slab's tail). */
  get stats(): { live: number; waste: number; slabs: number } {
    return { live: this.#live, waste: this.#held() - this.#live, slabs: this.#slabLive.size };
  }

  /** Bytes of the held slabs (all of one size). */
  #held(): number {
    return this.#slabLive.size * SLAB_BYTES;
  }
}
