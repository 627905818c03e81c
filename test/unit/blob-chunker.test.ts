/**
 * FastCDC chunking: chunks tile the value, respect min/max, are deterministic,
 * and a small insert near the start leaves almost every chunk unchanged.
 */
import { describe, expect, it } from 'vitest';
import { chunkingForAverage, chunkValue, DEFAULT_CHUNKING, type Chunk, type ChunkingOptions } from '../../src/blob/chunker.ts';
import { sha256Hex } from '../../src/blob/manifest.ts';
import { Prng, vmImageLike } from '../../bench/codec.ts';

const MIB = 1024 ** 2;

function expectTiling(chunks: readonly Chunk[], size: number, o: ChunkingOptions): void {
  let offset = 0;
  for (const [i, c] of chunks.entries()) {
    expect(c.offset).toBe(offset);
    expect(c.length).toBeLessThanOrEqual(o.maxSize);
    if (i < chunks.length - 1) expect(c.length).toBeGreaterThanOrEqual(o.minSize);
    offset += c.length;
  }
  expect(offset).toBe(size);
}

function chunkHashes(data: Uint8Array, o: ChunkingOptions = DEFAULT_CHUNKING): string[] {
  return chunkValue(data, o).map((c) => sha256Hex(data.subarray(c.offset, c.offset + c.length)));
}

function randomBytes(size: number, seed: number): Uint8Array {
  const rng = new Prng(seed);
  return Uint8Array.from({ length: size }, () => rng.below(256));
}

describe('chunkValue', () => {
  const image = vmImageLike(8 * MIB, 11);

  it('tiles the value with every chunk within min/max, for several option sets', () => {
    const sets: ChunkingOptions[] = [DEFAULT_CHUNKING, { minSize: 512, avgSize: 2048, maxSize: 8192 }, { minSize: 16384, avgSize: 65536, maxSize: 262144 }];
    for (const o of sets) expectTiling(chunkValue(image, o), image.byteLength, o);
  });

  it('averages near the configured size on random data', () => {
    const data = randomBytes(4 * MIB, 5);
    const chunks = chunkValue(data);
    const mean = data.byteLength / chunks.length;
    expect(mean).toBeGreaterThan(DEFAULT_CHUNKING.avgSize * 0.6);
    expect(mean).toBeLessThan(DEFAULT_CHUNKING.avgSize * 1.6);
  });

  it('is deterministic: same bytes, same boundaries; a fixed value has fixed boundaries', () => {
    expect(chunkValue(image)).toEqual(chunkValue(image.slice()));
    // Pins the gear table and algorithm: a change here changes every manifest ever written.
    expect(chunkValue(randomBytes(64 * 1024, 1)).map((c) => c.length)).toEqual([8426, 11597, 8393, 9959, 4780, 3330, 4206, 10729, 3335, 781]);
  });

  it('cuts max-size chunks through a run of zeros, and handles empty and tiny values', () => {
    const zeros = new Uint8Array(1 * MIB);
    const chunks = chunkValue(zeros);
    expect(chunks.every((c) => c.length === DEFAULT_CHUNKING.maxSize)).toBe(true);
    expect(chunkValue(new Uint8Array(0))).toEqual([]);
    expect(chunkValue(new Uint8Array(10))).toEqual([{ offset: 0, length: 10 }]);
  });

  it('keeps ≥ 90 % of chunks after inserting 100 bytes near the start of 8 MiB of VM-image-like data', () => {
    const insertAt = 1000;
    const edited = new Uint8Array(image.byteLength + 100);
    edited.set(image.subarray(0, insertAt));
    edited.set(randomBytes(100, 99), insertAt);
    edited.set(image.subarray(insertAt), insertAt + 100);
    const before = chunkHashes(image);
    const after = new Set(chunkHashes(edited));
    const shared = before.filter((h) => after.has(h)).length;
    expect(before.length).toBeGreaterThan(200);
    expect(shared / before.length).toBeGreaterThanOrEqual(0.9);
  });

  it('window by window (final: false, re-feeding the left-over bytes) gives the same chunks as the whole value at once', () => {
    for (const window of [4096, 65_537, 1024 * 1024]) {
      const chunks: Chunk[] = [];
      let carried = new Uint8Array(0);
      let offset = 0;
      for (let pos = 0; ; pos += window) {
        const fresh = image.subarray(pos, pos + window);
        const buf = new Uint8Array(carried.byteLength + fresh.byteLength);
        buf.set(carried);
        buf.set(fresh, carried.byteLength);
        const eof = pos + window >= image.byteLength;
        const cuts = chunkValue(buf, DEFAULT_CHUNKING, eof);
        for (const c of cuts) chunks.push({ offset: offset + c.offset, length: c.length });
        const used = cuts.reduce((sum, c) => sum + c.length, 0);
        carried = buf.slice(used);
        offset += used;
        if (eof) break;
      }
      expect(chunks).toEqual(chunkValue(image));
    }
    expect(chunkValue(new Uint8Array(100), DEFAULT_CHUNKING, false)).toEqual([]);
  });

  it('derives min (avg / 4, at least 64) and max (avg × 4) from an average', () => {
    expect(chunkingForAverage(4096)).toEqual({ minSize: 1024, avgSize: 4096, maxSize: 16384 });
    expect(chunkingForAverage(128)).toEqual({ minSize: 64, avgSize: 128, maxSize: 512 });
  });

  it('refuses inconsistent options by name', () => {
    expect(() => chunkValue(image, { minSize: 4096, avgSize: 2048, maxSize: 8192 })).toThrow(/minSize < avgSize < maxSize.*4096 \/ 2048 \/ 8192/);
    expect(() => chunkValue(image, { minSize: 16, avgSize: 2048, maxSize: 8192 })).toThrow(/minSize must be at least 64/);
    expect(() => chunkValue(image, { minSize: 1024, avgSize: 2048.5, maxSize: 8192 })).toThrow(/avgSize/);
  });
});
