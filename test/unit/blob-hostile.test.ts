/**
 * Hostile input on /dwcp/blob/1.0.0 from an authenticated member: a test
 * client speaks the protocol by hand over a real libp2p connection and
 * sends, in a batch of an otherwise valid transfer, a frame with an unknown
 * codec, a bad checksum, a declared length above the limit (a bomb), a
 * length other than the chunks', a truncated frame, or chunks whose bytes do
 * not match their hashes; or a chunk list that does not hash to the offered
 * version. Each is a typed refusal counted under its reason, the stream is
 * reset, and nothing is applied: the key stays absent and a later honest
 * transfer works.
 */
import { randomBytes } from 'node:crypto';
import { peerIdFromString } from '@libp2p/peer-id';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { vmImageLike } from '../../bench/codec.ts';
import { codecFor } from '../../src/codec/codecs.ts';
import { compressFrame, frameFromPayload, FRAME_HEADER_BYTES } from '../../src/codec/frame.ts';
import { chunkingForAverage } from '../../src/blob/chunker.ts';
import { buildManifest, type Manifest } from '../../src/blob/manifest.ts';
import { blobChannel, type BlobChannel } from '../../src/blob/transfer.ts';
import { BLOB_PROTOCOL, encodeManifest, setBits, type BlobMessageIn } from '../../src/blob/wire.ts';
import type { BlobRejectReason } from '../../src/blob/metrics.ts';
import { metricValue } from '../integration/harness.ts';
import { blobPair, type BlobPair } from './blob-pair.ts';

const KIB = 1024;
const CHUNK_AVG = 4 * KIB;

let pair: BlobPair;
let value: Uint8Array;
let manifest: Manifest;

beforeAll(async () => {
  pair = await blobPair({ settings: { chunkAvgBytes: CHUNK_AVG } });
  value = vmImageLike(256 * KIB, 77);
  manifest = buildManifest('hostile', 'v', value, chunkingForAverage(CHUNK_AVG));
});
afterAll(async () => {
  await pair?.close();
});

async function open(): Promise<BlobChannel> {
  return blobChannel(await pair.a.mesh.host.dialProtocol(peerIdFromString(pair.b.peerId), BLOB_PROTOCOL), undefined);
}

async function next(ch: BlobChannel): Promise<BlobMessageIn | undefined> {
  return ch.read({ signal: AbortSignal.timeout(10_000) });
}

/** Offers `m` (a full transfer) and returns the control stream, the transfer id and the chunk indices b asked for. */
async function offer(m: Manifest, list: Uint8Array = encodeManifest(m, undefined).bytes): Promise<{ control: BlobChannel; transferId: string; need: number[]; answer: BlobMessageIn | undefined }> {
  const control = await open();
  const transferId = randomBytes(16).toString('hex');
  await control.write({
    kind: 'offer',
    offer: { transferId, attempt: 1, key: m.key, version: m.hash, size: m.size, chunking: m.chunking, chunkCount: m.chunks.length, baselineVersion: '', manifestBytes: list.byteLength },
  });
  await control.write({ kind: 'manifestPart', manifestPart: { data: list } });
  const answer = await next(control).catch(() => undefined);
  const need = answer?.kind === 'accept' ? setBits(answer.accept.need, m.chunks.length) : [];
  return { control, transferId, need, answer };
}

function rejected(reason: BlobRejectReason): Promise<number> {
  return pair.b.metrics.registry.metrics().then((text) => metricValue(text, 'dwcp_blob_rejected_total', { reason }) ?? NaN);
}

/** The raw bytes of need-list chunks first..first+count, concatenated. */
function rawOf(need: number[], first: number, count: number): Uint8Array {
  return Buffer.concat(need.slice(first, first + count).map((i) => value.subarray(manifest.chunks[i]!.offset, manifest.chunks[i]!.offset + manifest.chunks[i]!.length)));
}

/** Sends one batch with `frame` for the first `count` needed chunks and expects b to refuse it under `reason`. */
async function expectRefused(reason: BlobRejectReason, frameFor: (raw: Uint8Array) => Promise<Uint8Array> | Uint8Array, count = 2): Promise<void> {
  const before = await rejected(reason);
  const { control, transferId, need } = await offer(manifest);
  expect(need.length).toBeGreaterThan(count);
  const data = await open();
  await data.write({ kind: 'join', join: { transferId, attempt: 1 } });
  await data.write({ kind: 'batch', batch: { first: 0, count, frame: await frameFor(rawOf(need, 0, count)) } });
  // The refusal resets the data stream and fails the control stream: neither ever acknowledges or commits.
  await expect(next(data)).rejects.toThrow();
  const answer = await next(control).catch((err: unknown) => err);
  if (!(answer instanceof Error)) expect(answer).toMatchObject({ kind: 'failed' });
  expect(await rejected(reason)).toBe(before + 1);
  expect(pair.b.service.store.current('hostile')).toBeUndefined();
  expect((await pair.b.service.status()).transfers[0]).toMatchObject({ state: 'failed', key: 'hostile' });
}

describe('hostile batches are refused, counted and never applied', () => {
  it('an unknown codec id', async () => {
    await expectRefused('unknown-codec', async (raw) => {
      const frame = (await compressFrame(raw, { name: 'lz4' })).slice();
      frame[5] = 9;
      return frame;
    });
  });

  // A none frame's checksum and chunks are checked on the receiver's verifier thread, a compressed one's checksum before decompressing.
  it.each(['lz4', 'none'] as const)('a bad checksum (%s), refused as that even when the chunk bytes are wrong too', async (codec) => {
    await expectRefused('bad-checksum', async (raw) => {
      const frame = (await compressFrame(raw, { name: codec })).slice();
      frame[frame.byteLength - 1] = (frame[frame.byteLength - 1] as number) ^ 0xff;
      return frame;
    });
  });

  it('a declared raw length above the batch limit (a decompression bomb), refused before decompressing', async () => {
    await expectRefused('too-large', async () => frameFromPayload(codecFor({ name: 'lz4' }), 1024 ** 3, await codecFor({ name: 'lz4' }).compress(new Uint8Array(64 * KIB))));
  });

  it('a declared raw length other than the chunks it carries', async () => {
    await expectRefused('length-mismatch', async (raw) => compressFrame(raw.subarray(0, raw.byteLength - 1), { name: 'zstd', level: 3 }));
  });

  it('a truncated frame', async () => {
    await expectRefused('truncated', async (raw) => (await compressFrame(raw, { name: 'none' })).subarray(0, FRAME_HEADER_BYTES + 10));
  });

  it.each(['lz4', 'none'] as const)('chunk bytes that do not match their hashes (%s)', async (codec) => {
    await expectRefused('chunk-hash', async (raw) => {
      const wrong = raw.slice();
      wrong[wrong.byteLength - 1] = (wrong[wrong.byteLength - 1] as number) ^ 0x01;
      return compressFrame(wrong, { name: codec });
    });
  });

  it('a chunk list that does not hash to the offered version is refused before anything is asked for', async () => {
    const before = await rejected('manifest');
    const forged: Manifest = { ...manifest, hash: 'f'.repeat(64), version: 'f'.repeat(64) };
    const { answer } = await offer(forged, encodeManifest(manifest, undefined).bytes);
    expect(answer?.kind === 'accept').toBe(false);
    expect(await rejected('manifest')).toBe(before + 1);
    expect(pair.b.service.store.current('hostile')).toBeUndefined();
  });

  it('after all that, an honest transfer of the same key works', async () => {
    await pair.a.service.store.ingestBytes('hostile', value);
    const out = await pair.a.service.send('hostile', 'b');
    expect(out.kind).toBe('full');
    expect(pair.b.service.store.current('hostile')?.version).toBe(out.version);
  });
});
