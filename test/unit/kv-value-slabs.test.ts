import { describe, expect, it } from 'vitest';
import { NO_SLAB, SLABBED_MAX_BYTES, ValueSlabs, valueView, type ValuePlace } from '../../src/kv/value-slabs.ts';

const bytes = (n: number, fill: number): Uint8Array => new Uint8Array(n).fill(fill);

/** Places `value` in `slabs` and returns its place. */
function placed(slabs: ValueSlabs, value: Uint8Array): ValuePlace {
  const place: ValuePlace = { slab: NO_SLAB, offset: 0, length: value.byteLength };
  slabs.place(value, place);
  return place;
}

describe('ValueSlabs', () => {
  it('copies small values into shared slabs and large ones into buffers of their own', () => {
    const slabs = new ValueSlabs();
    const a = placed(slabs, bytes(256, 1));
    const b = placed(slabs, bytes(256, 2));
    expect(a.slab).toBe(b.slab);
    expect(a.slab.byteLength).toBeGreaterThan(512);
    expect(b.offset).toBe(256);
    const big = placed(slabs, bytes(SLABBED_MAX_BYTES + 1, 3));
    expect(big.slab.byteLength).toBe(SLABBED_MAX_BYTES + 1);
    expect([valueView(a)[0], valueView(a)[255], valueView(b)[0], valueView(b)[255], valueView(big)[0]]).toEqual([1, 1, 2, 2, 3]);
    expect([valueView(a).byteLength, valueView(big).byteLength]).toEqual([256, SLABBED_MAX_BYTES + 1]);
    expect(slabs.stats.live).toBe(512);
  });

  it('never changes a copy it handed out, and copies rather than views the input', () => {
    const slabs = new ValueSlabs();
    const input = bytes(100, 7);
    const copies = Array.from({ length: 2000 }, (_, i) => placed(slabs, bytes(100, i % 256)));
    const kept = placed(slabs, input);
    input.fill(0);
    expect(valueView(kept).every((x) => x === 7)).toBe(true);
    copies.forEach((c, i) => expect(valueView(c).every((x) => x === i % 256)).toBe(true));
  });

  it('refuses a value that does not fit its place', () => {
    const slabs = new ValueSlabs();
    expect(() => slabs.place(bytes(10, 1), { slab: NO_SLAB, offset: 0, length: 9 })).toThrow(RangeError);
  });

  it('asks for a repack once the holes outweigh half the live bytes; a repack moves each value in place, leaving the old bytes as they were', () => {
    const slabs = new ValueSlabs();
    const kept = Array.from({ length: 1000 }, () => placed(slabs, bytes(256, 1)));
    expect(slabs.repackDue).toBe(false);
    // Overwrites at random (a fixed LCG): slabs keep a few live values each long after most are gone.
    let seed = 1;
    for (let i = 0; i < 20_000 && !slabs.repackDue; i++) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      const at = seed % kept.length;
      const next = placed(slabs, bytes(256, 2));
      slabs.release(kept[at] as ValuePlace);
      kept[at] = next;
    }
    expect(slabs.repackDue).toBe(true);
    // Due once the waste passed half the live bytes and four slabs, not before.
    expect(slabs.stats.waste).toBeGreaterThan(256 * 1000 / 2 + 4 * 65536);
    expect(slabs.stats.waste).toBeLessThan(256 * 1000 / 2 + 5 * 65536);
    const before = kept.map((p) => valueView(p));
    const oldSlab = (kept[0] as ValuePlace).slab;
    slabs.restart();
    for (const p of kept) slabs.place(valueView(p), p);
    expect(slabs.stats).toEqual({ live: 256 * 1000, waste: 4 * 65536 - 256 * 1000, slabs: 4 });
    expect(slabs.repackDue).toBe(false);
    expect((kept[0] as ValuePlace).slab).not.toBe(oldSlab);
    kept.forEach((p, i) => expect(valueView(p)).toEqual(before[i]));
  });

  it('lets go of a slab once its last value is released, so overwrites in written order never call for a repack', () => {
    const slabs = new ValueSlabs();
    const kept = Array.from({ length: 1000 }, () => placed(slabs, bytes(256, 1)));
    for (let i = 0; i < 20_000; i++) {
      const at = i % kept.length;
      const next = placed(slabs, bytes(256, 3));
      slabs.release(kept[at] as ValuePlace);
      kept[at] = next;
      expect(slabs.repackDue).toBe(false);
    }
    // The live values' slabs, the one being filled and the one being emptied.
    expect(slabs.stats.live).toBe(256 * 1000);
    expect(slabs.stats.slabs).toBeLessThanOrEqual(6);
  });

  it('refuses to release a place it does not hold: another one\'s, or one whose slab it let go', () => {
    const slabs = new ValueSlabs();
    expect(() => slabs.release(placed(new ValueSlabs(), bytes(100, 1)))).toThrow(RangeError);
    const full = Array.from({ length: 16 }, () => placed(slabs, bytes(4096, 1))); // one whole slab
    for (const p of full) slabs.release(p);
    placed(slabs, bytes(1, 2)); // a new current slab; the empty one is let go
    expect(slabs.stats).toEqual({ live: 1, waste: 65535, slabs: 1 });
    expect(() => slabs.release(full[0] as ValuePlace)).toThrow(RangeError);
  });

  it('does not count large values, which hold no slab space', () => {
    const slabs = new ValueSlabs();
    const big = placed(slabs, bytes(SLABBED_MAX_BYTES * 2, 1));
    slabs.release(big);
    expect(slabs.stats).toEqual({ live: 0, waste: 0, slabs: 0 });
  });

  it('keeps no slab for an empty value, so releasing it never meets a slab already let go', () => {
    const slabs = new ValueSlabs();
    const a = placed(slabs, bytes(4000, 1));
    const empty = placed(slabs, bytes(0, 0));
    const fillers = Array.from({ length: 16 }, () => placed(slabs, bytes(4000, 2)));
    // Every non-empty value of a's slab released: the slab is let go.
    for (const p of [a, ...fillers.filter((f) => f.slab === a.slab)]) slabs.release(p);
    expect(slabs.stats.slabs).toBe(1);
    expect(() => slabs.release(empty)).not.toThrow();
    expect(valueView(empty).byteLength).toBe(0);
    expect(slabs.stats).toEqual({ live: 4000, waste: 65536 - 4000, slabs: 1 });
  });
});
