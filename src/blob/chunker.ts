/**
 * Content-defined chunking with FastCDC (Xia et al., USENIX ATC 2016):
 * a gear rolling hash, cut-point skipping below the minimum size and
 * normalized chunking (a stricter mask before the average size, a looser one
 * after it) so chunk sizes cluster around the average.
 *
 * Invariants:
 * - Boundaries depend only on the bytes and the options: the gear table comes
 *   from a fixed seed in this file, so every node, version and restart cuts
 *   the same bytes the same way. Changing GEAR_SEED or the algorithm changes
 *   every manifest; don't, without versioning manifests.
 * - Every chunk is at most `maxSize` bytes and, except the last of a value, at
 *   least `minSize`; the chunks tile the value exactly, in order.
 * - The hash is 32-bit (shift-left gear), so a boundary depends on the last
 *   32 bytes only: an edit moves boundaries only near itself and the chunking
 *   re-synchronises at the first cut point after it.
 */

export interface ChunkingOptions {
  minSize: number;
  /** Target average; rounded to the nearest power of two for the masks. */
  avgSize: number;
  maxSize: number;
}

/** Small enough that rewriting a 4 KiB block dirties ~8 KiB, large enough that a 1 GiB manifest stays ~4 MiB of hashes. */
export const DEFAULT_CHUNKING: Readonly<ChunkingOptions> = { minSize: 2 * 1024, avgSize: 8 * 1024, maxSize: 64 * 1024 };

export interface Chunk {
  offset: number;
  length: number;
}

const GEAR_SEED = 0x64776370; // "dwcp"

/** splitmix32: a fixed, well-mixed sequence, so the gear table is the same everywhere. */
function gearTable(seed: number): Int32Array {
  const table = new Int32Array(256);
  let state = seed | 0;
  for (let i = 0; i < 256; i++) {
    state = (state + 0x9e3779b9) | 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    table[i] = z ^ (z >>> 16);
  }
  return table;
}

const GEAR = gearTable(GEAR_SEED);

/** A mask of the `bits` most significant bits: in a shift-left gear hash those depend on the most bytes. */
function topBits(bits: number): number {
  return bits <= 0 ? 0 : bits >= 32 ? -1 : (-1 << (32 - bits)) | 0;
}

/** FastCDC's normalization level: the masks are this many bits stricter (before avgSize) and looser (after) than the average's. */
const NORMALIZATION = 2;

export function validateChunking(o: ChunkingOptions): void {
  const whole = (name: keyof ChunkingOptions): void => {
    if (!Number.isSafeInteger(o[name]) || o[name] < 1) throw new RangeError(`chunking ${name} must be a whole number of bytes, got ${o[name]}`);
  };
  whole('minSize');
  whole('avgSize');
  whole('maxSize');
  if (o.minSize < 64) throw new RangeError(`chunking minSize must be at least 64 bytes, got ${o.minSize}`);
  if (!(o.minSize < o.avgSize && o.avgSize < o.maxSize)) {
    throw new RangeError(`chunking needs minSize < avgSize < maxSize, got ${o.minSize} / ${o.avgSize} / ${o.maxSize}`);
  }
}

/** Length of the first chunk of `data[start..end)`. */
function cutPoint(data: Uint8Array, start: number, end: number, o: ChunkingOptions, maskS: number, maskL: number): number {
  const remaining = end - start;
  if (remaining <= o.minSize) return remaining;
  const limit = start + Math.min(remaining, o.maxSize);
  const normal = start + Math.min(remaining, o.avgSize);
  let hash = 0;
  let i = start + o.minSize;
  for (; i < normal; i++) {
    hash = ((hash << 1) + (GEAR[data[i] as number] as number)) | 0;
    if ((hash & maskS) === 0) return i + 1 - start;
  }
  for (; i < limit; i++) {
    hash = ((hash << 1) + (GEAR[data[i] as number] as number)) | 0;
    if ((hash & maskL) === 0) return i + 1 - start;
  }
  return limit - start;
}

/**
 * The chunks of `data`, in order, tiling it exactly; an empty value has no chunks.
 *
 * `final: false` says more bytes follow (a value read from a file or socket
 * a window at a time): the last chunk, which the end of the window may have
 * cut, is left out, so the caller passes its bytes again at the start of the
 * next window. Since a cut depends only on the bytes since the chunk's start,
 * windows of any size give the same chunks as the whole value at once.
 */
export function chunkValue(data: Uint8Array, options: ChunkingOptions = DEFAULT_CHUNKING, final = true): Chunk[] {
  validateChunking(options);
  const bits = Math.round(Math.log2(options.avgSize));
  const maskS = topBits(bits + NORMALIZATION);
  const maskL = topBits(bits - NORMALIZATION);
  const chunks: Chunk[] = [];
  for (let offset = 0; offset < data.byteLength; ) {
    const length = cutPoint(data, offset, data.byteLength, options, maskS, maskL);
    chunks.push({ offset, length });
    offset += length;
  }
  if (!final) chunks.pop();
  return chunks;
}

/**
 * Chunking options from an average size alone: min = avg / 4 as in FastCDC,
 * max = avg × 4 rather than FastCDC's × 8, because a run of zeros (common in
 * disk images) cuts only at the maximum, and a 4 KiB block rewritten inside
 * it dirties a whole maximum-size chunk: with 4 KiB chunks that halves the
 * raw bytes a 1 %-rewritten VM image resends (bench/RESULTS.md, delta).
 */
export function chunkingForAverage(avgSize: number): ChunkingOptions {
  return { minSize: Math.max(64, Math.floor(avgSize / 4)), avgSize, maxSize: avgSize * 4 };
}
