/**
 * Manifests and delta plans: rebuilding from a baseline plus the sent chunks
 * gives the exact value (whole hash checked), a missing baseline or other
 * chunking means a full transfer, and a wrong baseline is caught, never
 * committed.
 */
import { describe, expect, it } from 'vitest';
import { assembleValue, buildManifest, chunksOf, planDelta, sha256Hex, SyncError, valueHash, type DeltaPlan, type Manifest } from '../../src/blob/manifest.ts';
import { Prng, vmImageLike } from '../../bench/codec.ts';
import { codecFor } from '../../src/codec/codecs.ts';

const MIB = 1024 ** 2;
const BLOCK = 4096;

/** `image` with `fraction` of its 4 KiB blocks overwritten with random bytes. */
function rewriteBlocks(image: Uint8Array, fraction: number, seed: number): Uint8Array {
  const rng = new Prng(seed);
  const out = image.slice();
  const blocks = image.byteLength / BLOCK;
  for (let n = Math.round(blocks * fraction); n > 0; n--) {
    const at = rng.below(blocks) * BLOCK;
    for (let i = 0; i < BLOCK; i++) out[at + i] = rng.below(256);
  }
  return out;
}

/** What the receiver gets on the wire for `plan`: the chunk bytes by hash. */
function sent(plan: DeltaPlan, value: Uint8Array): Map<string, Uint8Array> {
  return new Map(plan.send.map((c) => [c.hash, value.slice(c.offset, c.offset + c.length)]));
}

function expectSame(a: Uint8Array, b: Uint8Array): void {
  expect(a.byteLength).toBe(b.byteLength);
  expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
}

describe('buildManifest', () => {
  it('records size, the value hash (root of the chunk hash list) and chunk hashes that tile the value', () => {
    const value = vmImageLike(1 * MIB, 2);
    const m = buildManifest('vm/disk0', 'v1', value);
    expect(m).toMatchObject({ key: 'vm/disk0', version: 'v1', size: MIB, hash: valueHash(MIB, m.chunks) });
    expect(m.chunks.reduce((sum, c) => sum + c.length, 0)).toBe(MIB);
    const first = m.chunks[0];
    expect(first?.hash).toBe(sha256Hex(value.subarray(0, first?.length)));
  });

  it('the value hash changes with any byte, any boundary and the size, and is fixed for fixed input', () => {
    const value = vmImageLike(256 * 1024, 3);
    const m = buildManifest('k', 'v', value);
    const flipped = value.slice();
    flipped[200_000] = (flipped[200_000] as number) ^ 1;
    expect(buildManifest('k', 'v', flipped).hash).not.toBe(m.hash);
    // Same chunk hashes, boundaries moved: the lengths are in the list.
    const moved = m.chunks.map((c, i) => (i === 0 ? { ...c, length: c.length + 1 } : i === 1 ? { ...c, length: c.length - 1 } : c));
    expect(valueHash(m.size, moved)).not.toBe(m.hash);
    expect(valueHash(m.size + 1, m.chunks)).not.toBe(m.hash);
    // Pins the definition (computed independently: Python hashlib, struct.pack('>Q', 3) + struct.pack('>I', 3) + sha256(1,2,3)).
    expect(valueHash(3, [{ length: 3, hash: sha256Hex(new Uint8Array([1, 2, 3])) }])).toBe('b555fae8fad632d75562880b328f965fcab9015bab0520a3e9c98b3dc3aeb319');
    expect(() => valueHash(1, [{ length: 1, hash: 'nothex' }])).toThrow(/not 32 bytes of hex/);
  });
});

describe('planDelta + assembleValue', () => {
  const v1 = vmImageLike(8 * MIB, 21);
  const v2 = rewriteBlocks(v1, 0.01, 4);
  const m1 = buildManifest('img', 'v1', v1);
  const m2 = buildManifest('img', 'v2', v2);

  it('sends only what the baseline lacks (1 % of blocks rewritten → ~2 % on the wire) and rebuilds the exact value', async () => {
    const plan = planDelta(m2, m1);
    expect(plan.kind).toBe('delta');
    // Raw chunk bytes include whole max-size chunks of zeros around blocks rewritten inside zero runs;
    // what travels is those chunks compressed, and the rewritten blocks themselves are random (1 % of the value).
    expect(plan.sendBytes / v2.byteLength).toBeLessThan(0.15);
    const wire = await codecFor({ name: 'zstd', level: 3 }).compress(Buffer.concat(plan.send.map((c) => v2.subarray(c.offset, c.offset + c.length))));
    expect(wire.byteLength / v2.byteLength).toBeGreaterThan(0.009);
    expect(wire.byteLength / v2.byteLength).toBeLessThan(0.035);
    const rebuilt = assembleValue(m2, [sent(plan, v2), chunksOf(m1, v1)]);
    expectSame(rebuilt, v2);
  });

  it('sends nothing when the baseline is the same version', () => {
    const plan = planDelta(m1, m1);
    expect(plan.send).toEqual([]);
    expect(plan.reusedBytes).toBe(v1.byteLength);
    expectSame(assembleValue(m1, [chunksOf(m1, v1)]), v1);
  });

  it('no baseline → a full transfer that rebuilds from the sent chunks alone, each repeated chunk sent once', () => {
    const plan = planDelta(m2, undefined);
    expect(plan.kind).toBe('full-no-baseline');
    const distinct = new Set(m2.chunks.map((c) => c.hash));
    expect(plan.send.length).toBe(distinct.size);
    expect(plan.sendBytes).toBeLessThanOrEqual(v2.byteLength);
    expectSame(assembleValue(m2, [sent(plan, v2)]), v2);
  });

  it('a baseline chunked with other options → full transfer', () => {
    const other = buildManifest('img', 'v1', v1, { minSize: 4096, avgSize: 16384, maxSize: 131072 });
    const plan = planDelta(m2, other);
    expect(plan.kind).toBe('full-other-chunking');
    expectSame(assembleValue(m2, [sent(plan, v2)]), v2);
  });

  it('a receiver whose baseline bytes differ from the manifest it was planned against gets a SyncError, not a wrong value', () => {
    const plan = planDelta(m2, m1);
    const wrongBaseline = v1.slice();
    const at = m1.chunks[1]?.offset ?? 0;
    wrongBaseline[at] = (wrongBaseline[at] as number) ^ 0xff;
    let err: unknown;
    try {
      assembleValue(m2, [sent(plan, v2), chunksOf(m1, wrongBaseline)]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SyncError);
    expect((err as SyncError).reason).toBe('hash-mismatch');
    expect((err as SyncError).message).toContain(m2.hash);
    expect((err as SyncError).message).toContain(`offset ${at}`);
  });

  it('a chunk neither received nor in the baseline is named in the error', () => {
    const plan = planDelta(m2, m1);
    const missing = plan.send[0];
    const partial = sent(plan, v2);
    if (missing !== undefined) partial.delete(missing.hash);
    expect(() => assembleValue(m2, [partial, chunksOf(m1, v1)])).toThrow(new RegExp(`chunk ${missing?.hash}.*neither in the baseline nor received`));
  });

  it('a manifest whose chunk list does not hash to its value hash is refused before any chunk is used', () => {
    const forged: Manifest = { ...m2, hash: m1.hash };
    expect(() => assembleValue(forged, [chunksOf(m2, v2)])).toThrow(/chunk list hashes to/);
  });

  it('a received chunk of the wrong length is refused', () => {
    const m: Manifest = buildManifest('small', 'v1', v1.subarray(0, 64 * 1024));
    const first = m.chunks[0];
    if (first === undefined) throw new Error('no chunks');
    const bogus = new Map([[first.hash, new Uint8Array(first.length + 1)]]);
    expect(() => assembleValue(m, [bogus])).toThrow(SyncError);
  });
});
