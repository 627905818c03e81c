/**
 * /dwcp/blob/1.0.0 between two real libp2p hosts (blob-pair.ts): round trips
 * through the blob path in every link mode and codec, deltas against the
 * cached baseline, and every way the cache can fail to help (miss, expiry,
 * eviction, a receiver that lost the baseline) ending in a full transfer
 * with the right value; a transfer resumed after its connection was cut
 * mid-way, or one of its data streams was reset or lost inside a batch,
 * sends only what was not acknowledged; a member removed from the
 * list is refused on its next stream; the cache survives a restart when
 * persisted.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Prng, vmImageLike } from '../../bench/codec.ts';
import { chooseCodec, CodecMeasurements, DEFAULT_CODEC_CHOICE } from '../../src/codec/choice.ts';
import { codecLabel } from '../../src/codec/codecs.ts';
import type { SendOutcome } from '../../src/blob/service.ts';
import { BLOB_SEND_WINDOW } from '../../src/blob/transfer.ts';
import { BLOB_PROTOCOL } from '../../src/blob/wire.ts';
import { metricValue } from '../integration/harness.ts';
import { cutMidFrame, streamsOf, type CutKind } from '../support/stream-cut.ts';
import { blobPair, type BlobNode, type BlobPair } from './blob-pair.ts';

const KIB = 1024;
const MIB = 1024 * KIB;
const SETTINGS = { chunkAvgBytes: 4 * KIB, batchBytes: 256 * KIB };

function random(size: number, seed: number): Uint8Array {
  const rng = new Prng(seed);
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i += 4) new DataView(out.buffer).setUint32(i, rng.next(), true);
  return out;
}

function rewriteBlocks(image: Uint8Array, fraction: number, seed: number): Uint8Array {
  const rng = new Prng(seed);
  const out = image.slice();
  const blocks = image.byteLength / 4096;
  for (let n = Math.max(1, Math.round(blocks * fraction)); n > 0; n--) out.set(random(4096, rng.next()), rng.below(blocks) * 4096);
  return out;
}

const sha = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

async function held(node: BlobNode, key: string): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const p of node.service.open(key).read()) parts.push(p);
  return Buffer.concat(parts);
}

async function sendAndCheck(pair: BlobPair, key: string, value: Uint8Array, opts: Parameters<BlobNode['service']['send']>[2] = {}): Promise<SendOutcome> {
  await pair.a.service.store.ingestBytes(key, value);
  const out = await pair.a.service.send(key, 'b', opts);
  expect(sha(await held(pair.b, key))).toBe(sha(value));
  expect(pair.b.service.store.current(key)).toMatchObject({ version: out.version, size: value.byteLength, source: 'a' });
  return out;
}

describe('round trips, deltas and the baseline cache', () => {
  let pair: BlobPair;
  const clock = { ms: 1_700_000_000_000 };
  beforeAll(async () => {
    pair = await blobPair({ settings: { ...SETTINGS, baselineCache: { ttlMs: 60_000, persist: true } }, clock });
  });
  afterAll(async () => {
    await pair?.close();
  });

  it('datacenter → LZ4, internet → zstd at the configured level, and back', async () => {
    const image = vmImageLike(2 * MIB, 1);
    pair.a.mode = 'datacenter';
    const dc = await sendAndCheck(pair, 'mode/dc', image);
    // The image's random stretches do not compress: those batches go as none.
    expect(Object.keys(dc.codecs).filter((c) => c !== 'none')).toEqual(['lz4']);
    expect(dc.codecs.lz4).toBeGreaterThan(dc.rawBytesSent / 2);
    // What is left after the zero runs are deduplicated is text, records and random bytes: LZ4 takes ~30 % off.
    expect(dc.wireBytesSent).toBeLessThan(dc.rawBytesSent * 0.8);
    pair.a.mode = 'internet';
    pair.b.mode = 'internet';
    const inet = await sendAndCheck(pair, 'mode/internet', vmImageLike(2 * MIB, 2));
    expect(Object.keys(inet.codecs).filter((c) => c !== 'none')).toEqual(['zstd-9']);
    expect(inet.wireBytesSent).toBeLessThan(inet.rawBytesSent * 0.75);
    const text = await pair.b.metrics.registry.metrics();
    expect(metricValue(text, 'dwcp_blob_raw_bytes_total', { codec: 'zstd-9', link_mode: 'internet', direction: 'received' })).toBe(inet.rawBytesSent);
    expect(metricValue(text, 'dwcp_codec_decompress_duration_seconds_count', { codec: 'lz4' })).toBeGreaterThan(0);
    pair.a.mode = 'datacenter';
    pair.b.mode = 'datacenter';
  });

  it('hybrid picks what minimises compress time + wire / bandwidth: zstd on a slow link, LZ4 before any bandwidth is known', async () => {
    pair.a.mode = 'hybrid';
    // A fresh service has measured no bandwidth yet: one batch (under batchBytes), so one choice, the datacenter one.
    await pair.restartService(pair.a, { baselineCache: { capacity: 1000, ttlMs: 60_000, persist: true } });
    expect(pair.a.service.linkEstimate(pair.b.peerId).bandwidth).toBeNull();
    const first = await sendAndCheck(pair, 'mode/hybrid-unknown', vmImageLike(200 * KIB, 3));
    expect(first.codecs).toEqual({ lz4: expect.any(Number) });
    // Fresh again (codec measurements back to their priors), then a measured 2 MiB/s link: the first choice is the one computed here.
    await pair.restartService(pair.a, { baselineCache: { capacity: 1000, ttlMs: 60_000, persist: true } });
    const link = pair.a.service.linkEstimate(pair.b.peerId);
    for (let i = 0; i < 20; i++) link.observeTransfer(2 * MIB, 1);
    const slow = await sendAndCheck(pair, 'mode/hybrid-slow', vmImageLike(MIB, 4));
    const expected = codecLabel(chooseCodec({ mode: 'hybrid', payloadBytes: SETTINGS.batchBytes, link: { bandwidth: 2 * MIB }, codecs: new CodecMeasurements(), options: DEFAULT_CODEC_CHOICE }));
    expect(expected).toMatch(/^zstd-/);
    // Later batches also weigh what this transfer measured; the first is the computed choice.
    expect(Object.keys(slow.codecs)).toContain(expected);
    pair.a.mode = 'datacenter';
  });

  it('stripes over as many streams as bandwidth × RTT needs (4 MiB windows), 2 before a measurement, at most maxStreams', async () => {
    await pair.restartService(pair.a, { baselineCache: { capacity: 1000, ttlMs: 60_000, persist: true } });
    expect(pair.a.service.streamsFor(pair.b.peerId)).toBe(2);
    const link = pair.a.service.linkEstimate(pair.b.peerId);
    link.observeTransfer(100 * MIB, 1); // the pair's link reports 1 ms: 100 KiB in flight, one stream's worth
    expect(pair.a.service.streamsFor(pair.b.peerId)).toBe(1);
    for (let i = 0; i < 30; i++) link.observeTransfer(12 * 1024 * MIB, 1); // 12 GiB/s × 1 ms = 12 MiB: 1.5 × 12 / 4 → 5
    expect(pair.a.service.streamsFor(pair.b.peerId)).toBe(5);
    for (let i = 0; i < 30; i++) link.observeTransfer(1024 * 1024 * MIB, 1);
    expect(pair.a.service.streamsFor(pair.b.peerId)).toBe(8);
  });

  it('incompressible and tiny values go uncompressed (none) and still round-trip', async () => {
    const noise = await sendAndCheck(pair, 'codec/none-random', random(MIB, 5));
    expect(noise.codecs.none ?? 0).toBeGreaterThan(MIB / 2);
    expect(noise.wireBytesSent).toBeLessThan(noise.rawBytesSent * 1.01);
    const tiny = await sendAndCheck(pair, 'codec/none-tiny', new Uint8Array([1, 2, 3]));
    expect(tiny.codecs).toEqual({ none: 3 });
    const empty = await sendAndCheck(pair, 'codec/empty', new Uint8Array(0));
    expect(empty.rawBytesSent).toBe(0);
  });

  it('a second version goes as a delta against the cached baseline; the same version again sends nothing', async () => {
    const v1 = vmImageLike(4 * MIB, 6);
    const full = await sendAndCheck(pair, 'img', v1);
    expect(full.kind).toBe('full');
    const v2 = rewriteBlocks(v1, 0.01, 7);
    const delta = await sendAndCheck(pair, 'img', v2);
    expect(delta.kind).toBe('delta');
    expect(delta.rawBytesSent).toBeLessThan(v2.byteLength * 0.15);
    expect(delta.reusedBytes).toBeGreaterThan(v2.byteLength * 0.8);
    expect(delta.manifestBytesSent).toBeLessThan(full.manifestBytesSent / 5);
    const again = await pair.a.service.send('img', 'b');
    expect(again).toMatchObject({ kind: 'delta', rawBytesSent: 0 });
    const stats = pair.a.service.cacheStats();
    expect(stats.hits).toBeGreaterThanOrEqual(2);
    expect(stats.bytesSaved).toBeGreaterThan(v2.byteLength);
  });

  it('a series of keys (DR backups) goes as deltas, each against the one before it under its own key (baselineKey)', async () => {
    const v1 = vmImageLike(2 * MIB, 30);
    expect((await sendAndCheck(pair, 'series/1', v1)).kind).toBe('full');
    const v2 = rewriteBlocks(v1, 0.01, 31);
    const delta = await sendAndCheck(pair, 'series/2', v2, { baselineKey: 'series/1' });
    expect(delta.kind).toBe('delta');
    expect(delta.rawBytesSent).toBeLessThan(v2.byteLength * 0.15);
    // Both stay at the receiver, each under its own key.
    expect(pair.b.service.store.current('series/1')).toBeDefined();
    // A baseline key the receiver no longer holds: refuted, sent in full, right.
    await pair.b.service.store.remove('series/2');
    await pair.b.service.store.remove('series/1');
    const out = await sendAndCheck(pair, 'series/3', rewriteBlocks(v2, 0.01, 32), { baselineKey: 'series/2' });
    expect(out).toMatchObject({ kind: 'full', baselineRefuted: true });
  });

  it('an expired baseline means a full transfer, with the right value', async () => {
    const v1 = vmImageLike(MIB, 8);
    await sendAndCheck(pair, 'expiring', v1);
    clock.ms += 61_000;
    const before = pair.a.service.cacheStats().expiries;
    const out = await sendAndCheck(pair, 'expiring', rewriteBlocks(v1, 0.01, 9));
    expect(out.kind).toBe('full');
    expect(pair.a.service.cacheStats().expiries).toBe(before + 1);
  });

  it('a receiver that lost the baseline refutes the hit: the value goes in full and is right', async () => {
    const v1 = vmImageLike(MIB, 10);
    await sendAndCheck(pair, 'lost', v1);
    // b now holds another version of the key (written locally), so the baseline a remembers is gone there.
    await pair.b.service.store.ingestBytes('lost', random(64 * KIB, 11));
    const v2 = rewriteBlocks(v1, 0.01, 12);
    const refutedBefore = pair.a.service.cacheStats().refuted;
    const out = await sendAndCheck(pair, 'lost', v2);
    expect(out).toMatchObject({ kind: 'full', baselineRefuted: true });
    expect(pair.a.service.cacheStats().refuted).toBe(refutedBefore + 1);
    expect(metricValue(await pair.a.metrics.registry.metrics(), 'dwcp_baseline_cache_refuted_total')).toBe(refutedBefore + 1);
  });

  it('an evicted baseline (capacity 1 per region) means a full transfer', async () => {
    await pair.restartService(pair.a, { baselineCache: { capacity: 1, ttlMs: 60_000, persist: false } });
    const v1 = vmImageLike(MIB, 13);
    await sendAndCheck(pair, 'evict/one', v1);
    await sendAndCheck(pair, 'evict/two', vmImageLike(MIB, 14));
    expect(pair.a.service.cacheStats().evictions).toBe(1);
    const out = await sendAndCheck(pair, 'evict/one', rewriteBlocks(v1, 0.01, 15));
    expect(out.kind).toBe('full');
  });

  it('a persisted cache survives a restart: the next version is still a delta', async () => {
    await pair.restartService(pair.a, { baselineCache: { capacity: 1000, ttlMs: 60_000, persist: true } });
    const v1 = vmImageLike(MIB, 16);
    await sendAndCheck(pair, 'persisted', v1);
    await pair.restartService(pair.a, { baselineCache: { capacity: 1000, ttlMs: 60_000, persist: true } });
    expect(pair.a.service.cacheStats().entries).toBeGreaterThanOrEqual(1);
    const out = await sendAndCheck(pair, 'persisted', rewriteBlocks(v1, 0.01, 17));
    expect(out.kind).toBe('delta');
  });

  it('a peer taken off the member list is refused on its next blob stream', async () => {
    await pair.a.service.store.ingestBytes('refused', vmImageLike(64 * KIB, 18));
    const members = pair.b.members.list();
    pair.b.members.replace([]);
    try {
      await expect(pair.a.service.send('refused', 'b')).rejects.toThrow();
      expect(pair.b.service.store.current('refused')).toBeUndefined();
    } finally {
      pair.b.members.replace(members);
    }
  });
});

describe('resuming after the connection is cut mid-transfer', () => {
  let pair: BlobPair;
  beforeAll(async () => {
    pair = await blobPair({ settings: { ...SETTINGS, maxResumes: 5 } });
  });
  afterAll(async () => {
    await pair?.close();
  });

  it('resends only unacknowledged batches, and the value is right', async () => {
    const value = random(16 * MIB, 20);
    await pair.a.service.store.ingestBytes('big', value);
    let acked = 0;
    let cut = false;
    const out = await pair.a.service.send('big', 'b', {
      streams: 3,
      onAck: () => {
        acked++;
        // About a third of the way: kill the TCP connection under every stream.
        if (!cut && acked === 20) {
          cut = true;
          for (const c of pair.a.mesh.host.getConnections()) c.abort(new Error('test cuts the connection'));
        }
      },
    });
    expect(cut).toBe(true);
    expect(out.resumed).toBeGreaterThanOrEqual(1);
    expect(out.attempts).toBeGreaterThanOrEqual(2);
    // 20 batches were acknowledged before the cut and are not sent again; at most the unacknowledged windows (3 streams) are.
    const resent = out.rawBytesSent - out.neededBytes;
    expect(resent).toBeLessThan(out.neededBytes / 2);
    expect(out.rawBytesSent).toBeLessThan(value.byteLength + (3 * BLOB_SEND_WINDOW + 1) * SETTINGS.batchBytes);
    expect(sha(await held(pair.b, 'big'))).toBe(sha(value));
    const text = await pair.b.metrics.registry.metrics();
    expect(metricValue(text, 'dwcp_blob_transfers_resumed_total', { direction: 'received' })).toBeGreaterThanOrEqual(1);
    const status = await pair.b.service.status();
    expect(status.transfers[0]).toMatchObject({ direction: 'received', key: 'big', state: 'done' });
    expect(status.transfers[0]?.resumed).toBeGreaterThanOrEqual(1);
  });

  it.each<[CutKind, 'control' | 'data', number]>([
    ['reset', 'control', 41],
    ['crash', 'control', 42],
    ['reset', 'data', 43],
    ['crash', 'data', 44],
  ])('a %s of the %s stream inside a frame is resumed, not refused: acknowledged batches are not sent again', async (how, which, seed) => {
    const key = `cut-${how}-${which}`;
    // A value of its own: chunks the receiver already holds would not be sent, and there would be nothing to cut.
    const value = random(16 * MIB, seed);
    await pair.a.service.store.ingestBytes(key, value);
    let acked = 0;
    let cut: Promise<unknown> | undefined;
    const out = await pair.a.service.send(key, 'b', {
      streams: 3,
      onAck: () => {
        if (++acked !== 20 || cut !== undefined) return;
        // The attempt's first outbound blob stream is its control stream, the newest a data stream. The control
        // stream's next frame is its finish (the receiver sits reading it all along); a data stream's is a batch.
        // The connection that carries the transfer: after the previous test cut every connection, both ends may have
        // dialled again at once, and the first connection listed need not be the one the attempt's streams are on.
        const carrying = pair.a.mesh.host
          .getConnections(pair.b.mesh.host.peerId)
          .map((connection) => ({ connection, streams: streamsOf(connection, BLOB_PROTOCOL, 'outbound') }))
          .find((c) => c.streams.length > 0);
        const stream = carrying === undefined ? undefined : which === 'control' ? carrying.streams[0] : carrying.streams.at(-1);
        if (carrying === undefined || stream === undefined) throw new Error(`no outbound blob ${which} stream to cut`);
        cut = cutMidFrame(stream, carrying.connection, how);
      },
    });
    expect(await cut).toMatchObject({ sentBytes: expect.any(Number) });
    // The receiver kept the staging of the interrupted attempt and asked only for what it had not acknowledged
    // (nothing at all when the finish was cut).
    expect(out.resumed).toBeGreaterThanOrEqual(1);
    expect(out.rawBytesSent - out.neededBytes).toBeLessThan(which === 'control' ? 1 : out.neededBytes / 2);
    expect(sha(await held(pair.b, key))).toBe(sha(value));
    // A lost stream is not hostile input: nothing refused, no frame counted as rejected.
    const text = await pair.b.metrics.registry.metrics();
    expect(metricValue(text, 'dwcp_frames_rejected_total', { protocol: BLOB_PROTOCOL, reason: 'truncated' })).toBe(0);
    expect(text).not.toMatch(/^dwcp_blob_rejected_total\{[^}]*\} [1-9]/m);
  });
});
