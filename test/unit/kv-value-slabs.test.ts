import { describe, expect, it } from 'vitest';
import { SLABBED_MAX_BYTES, ValueSlabs } from '../../src/kv/value-slabs.ts';

const bytes = (n: number, fill: number): Uint8Array => new Uint8Array(n).fill(fill);

describe('ValueSlabs', () => {
  it('copies small values into shared slabs and large ones into buffers of their own', () => {
    const slabs = new ValueSlabs();
    const a = slabs.copy(bytes(256, 1));
    const b = slabs.copy(bytes(256, 2));
    expect(a.buffer).toBe(b.buffer);
    expect(a.buffer.byteLength).toBeGreaterThan(512);
    const big = slabs.copy(bytes(SLABBED_MAX_BYTES + 1, 3));
    expect(big.buffer.byteLength).toBe(SLABBED_MAX_BYTES + 1);
    expect([a[0], a[255], b[0], b[255], big[0]]).toEqual([1, 1, 2, 2, 3]);
    expect(slabs.stats.live).toBe(512);
  });

  it('never changes a copy it handed out, and copies rather than views the input', () => {
    const slabs = new ValueSlabs();
    const input = bytes(100, 7);
    const copies = Array.from({ length: 2000 }, (_, i) => slabs.copy(bytes(100, i % 256)));
    const kept = slabs.copy(input);
    input.fill(0);
    expect(kept.every((x) => x === 7)).toBe(true);
    copies.forEach((c, i) => expect(c.every((x) => x === i % 256)).toBe(true));
  });

  it('asks for a repack once the released bytes outweigh the live ones, and starts afresh after it', () => {
    const slabs = new ValueSlabs();
    let kept = Array.from({ length: 1000 }, () => slabs.copy(bytes(256, 1)));
    expect(slabs.repackDue).toBe(false);
    for (let i = 0; i < 5000 && !slabs.repackDue; i++) {
      const next = slabs.copy(bytes(256, 2));
      slabs.release(kept[i % kept.length] as Uint8Array);
      kept[i % kept.length] = next;
    }
    expect(slabs.repackDue).toBe(true);
    slabs.restart();
    kept = kept.map((v) => slabs.copy(v));
    expect(slabs.stats).toEqual({ live: 256 * 1000, waste: 0 });
    expect(slabs.repackDue).toBe(false);
  });

  it('does not count large values, which hold no slab space', () => {
    const slabs = new ValueSlabs();
    const big = slabs.copy(bytes(SLABBED_MAX_BYTES * 2, 1));
    slabs.release(big);
    expect(slabs.stats).toEqual({ live: 0, waste: 0 });
  });
});
