/**
 * ChunkVerifier: chunks come back only when they hash to their names, from
 * its worker thread or, once that is gone, from the event loop; a batch
 * frame's checksum is checked before any chunk; copies are reused.
 */
import { createHash, randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { ChunkVerifier } from '../../src/blob/chunk-verifier.ts';
import { BlobStoreError } from '../../src/blob/store.ts';
import { CodecError } from '../../src/codec/codecs.ts';
import { compressFrame, FRAME_HEADER_BYTES, readFrameHeader } from '../../src/codec/frame.ts';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function batch(lengths: number[]): { bytes: Uint8Array; refs: { hash: string; length: number }[] } {
  const bytes = randomBytes(lengths.reduce((a, b) => a + b, 0));
  let at = 0;
  const refs = lengths.map((length) => {
    const ref = { hash: sha(bytes.subarray(at, at + length)), length };
    at += length;
    return ref;
  });
  return { bytes, refs };
}

let verifier: ChunkVerifier;
afterEach(() => verifier?.close());

describe.each(['worker', 'event loop'] as const)('ChunkVerifier on its %s', (where) => {
  const fresh = (): ChunkVerifier => {
    verifier = new ChunkVerifier();
    // A closed verifier hashes on the event loop: the fallback after a worker failure.
    if (where === 'event loop') verifier.close();
    return verifier;
  };

  it('hands back the chunks, as copies the caller may change its bytes under', async () => {
    const v = fresh();
    const { bytes, refs } = batch([4096, 1000, 16384, 1]);
    const { chunks, buffer } = await v.verify(bytes, refs);
    const original = Buffer.from(bytes);
    bytes.fill(0);
    expect(v.threaded).toBe(where === 'worker');
    expect(chunks.map((c) => c.hash)).toEqual(refs.map((r) => r.hash));
    expect(Buffer.concat(chunks.map((c) => c.bytes)).equals(original)).toBe(true);
    v.release(buffer);
    // A reused copy holds the next batch's bytes only.
    const next = batch([10, 20]);
    const again = await v.verify(next.bytes, next.refs);
    expect(Buffer.concat(again.chunks.map((c) => c.bytes)).equals(Buffer.from(next.bytes))).toBe(true);
  });

  it('refuses a batch at its first chunk that does not match, naming it', async () => {
    const v = fresh();
    const { bytes, refs } = batch([100, 200, 300]);
    bytes[150] = (bytes[150] as number) ^ 1;
    const err = await v.verify(bytes, refs).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlobStoreError);
    expect((err as BlobStoreError).reason).toBe('corrupt');
    expect((err as Error).message).toContain(`chunk ${refs[1]?.hash} (200 bytes) hashes to `);
  });

  it("checks a none frame's checksum before its chunks", async () => {
    const v = fresh();
    const { bytes, refs } = batch([512, 512]);
    const frame = (await compressFrame(bytes, { name: 'none' })).slice();
    const { checksum } = readFrameHeader(frame);
    const ok = await v.verify(frame, refs, { chunksAt: FRAME_HEADER_BYTES, checksum });
    expect(Buffer.concat(ok.chunks.map((c) => c.bytes)).equals(Buffer.from(bytes))).toBe(true);
    frame[FRAME_HEADER_BYTES] = (frame[FRAME_HEADER_BYTES] as number) ^ 1;
    const err = await v.verify(frame, refs, { chunksAt: FRAME_HEADER_BYTES, checksum }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CodecError);
    expect((err as CodecError).reason).toBe('bad-checksum');
  });
});
