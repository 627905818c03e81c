/**
 * The blob transfer's pure parts: the chunk list encoded against a baseline
 * (round trip, size, every refusal), offer bounds, the need bitmap,
 * progress arithmetic, when compression is skipped, the cache counters'
 * move into Prometheus, and dwcpctl's formatting and usage errors.
 */
import { describe, expect, it } from 'vitest';
import { Registry } from 'prom-client';
import { Prng, vmImageLike } from '../../bench/codec.ts';
import { chunkingForAverage } from '../../src/blob/chunker.ts';
import { buildManifest, type Manifest } from '../../src/blob/manifest.ts';
import { Uint8ArrayList } from 'uint8arraylist';
import { BlobMessageInSchema, BlobMessageOutSchema, BlobMessageSchema, bitmapBytes, decodeManifest, encodeManifest, setBit, setBits, type Offer } from '../../src/blob/wire.ts';
import { TransferProgress } from '../../src/blob/progress.ts';
import { CompressionSkip } from '../../src/blob/transfer.ts';
import { createBlobMetrics } from '../../src/blob/metrics.ts';
import { BLOB_COMMAND, describePut, formatBlobStatus, formatBytes, formatCacheStats, formatEta, renderBar, renderProgress } from '../../src/cli/blob.ts';
import { main } from '../../src/cli/main.ts';
import { FrameError } from '../../src/net/framing.ts';
import { ConfigFileSchema } from '../../src/config/schema.ts';
import { formatIssue } from '../../src/config/load.ts';

const KIB = 1024;
const CHUNKING = chunkingForAverage(4 * KIB);

function offerFor(m: Manifest, bytes: Uint8Array, baseline = ''): Offer {
  return { transferId: '0'.repeat(32), attempt: 1, key: m.key, version: m.hash, size: m.size, chunking: m.chunking, chunkCount: m.chunks.length, baselineVersion: baseline, manifestBytes: bytes.byteLength };
}

function rewrite(v: Uint8Array, at: number): Uint8Array {
  const out = v.slice();
  const rng = new Prng(at);
  for (let i = 0; i < 4096; i++) out[at + i] = rng.below(256);
  return out;
}

describe('chunk list encoding', () => {
  const v1 = vmImageLike(512 * KIB, 1);
  const v2 = rewrite(rewrite(v1, 100_000), 300_000);
  const m1 = buildManifest('k', 'v1', v1, CHUNKING);
  const m2 = buildManifest('k', 'v2', v2, CHUNKING);

  it('round-trips against a baseline in a fraction of the full list, and without one, marking the baseline\'s chunks', () => {
    const full = encodeManifest(m2, undefined);
    const delta = encodeManifest(m2, m1);
    expect(full.bytes.byteLength).toBeGreaterThan(m2.chunks.length * 33);
    expect(full.reusedBytes).toBe(0);
    expect(delta.bytes.byteLength).toBeLessThan(full.bytes.byteLength / 5);
    const fromM1 = new Set(m1.chunks.map((c) => c.hash));
    expect(delta.reusedBytes).toBe(m2.chunks.filter((c) => fromM1.has(c.hash)).reduce((sum, c) => sum + c.length, 0));
    for (const [bytes, base] of [
      [full.bytes, undefined],
      [delta.bytes, m1],
    ] as const) {
      const back = decodeManifest(offerFor(m2, bytes, base?.hash ?? ''), bytes, base);
      expect(back.manifest.chunks).toEqual(m2.chunks);
      expect(back.manifest.hash).toBe(m2.hash);
      const marked = setBits(back.fromBaseline, m2.chunks.length).map((i) => m2.chunks[i]!.hash);
      expect(marked.every((h) => fromM1.has(h))).toBe(true);
      expect(marked.length).toBe(base === undefined ? 0 : m2.chunks.filter((c) => fromM1.has(c.hash)).length);
    }
  });

  it('finds baseline chunks that moved (an insert shifts everything after it)', () => {
    const shifted = new Uint8Array(v1.byteLength + 100);
    shifted.set(v1.subarray(0, 50_000));
    shifted.set(v1.subarray(50_000), 50_100);
    const m3 = buildManifest('k', 'v3', shifted, CHUNKING);
    const delta = encodeManifest(m3, m1);
    expect(delta.reusedBytes).toBeGreaterThan(shifted.byteLength * 0.9);
    expect(decodeManifest(offerFor(m3, delta.bytes, m1.hash), delta.bytes, m1).manifest.chunks).toEqual(m3.chunks);
  });

  it('finds content that moved far (halves swapped) once a run of new chunks makes it search the whole baseline', () => {
    const half = v1.byteLength / 2;
    const swapped = new Uint8Array(v1.byteLength);
    swapped.set(v1.subarray(half));
    swapped.set(v1.subarray(0, half), half);
    const m4 = buildManifest('k', 'v4', swapped, CHUNKING);
    const delta = encodeManifest(m4, m1);
    // The 8 chunks before the search starts go as NEW: ~50 KiB of this 512 KiB value.
    expect(delta.reusedBytes).toBeGreaterThan(swapped.byteLength * 0.8);
    expect(delta.reusedBytes).toBeLessThan(swapped.byteLength);
    expect(decodeManifest(offerFor(m4, delta.bytes, m1.hash), delta.bytes, m1).manifest.chunks).toEqual(m4.chunks);
  });

  it('refuses a list that is truncated, points outside the baseline, overruns or falls short, or hashes to another version', () => {
    const delta = encodeManifest(m2, m1).bytes;
    const offer = offerFor(m2, delta, m1.hash);
    expect(() => decodeManifest(offer, delta.subarray(0, delta.byteLength - 3), m1)).toThrow(/truncated|chunks, the offer declares|cover/);
    expect(() => decodeManifest(offer, delta, undefined)).toThrow(/refers to a baseline .* names none/);
    const shortBaseline: Manifest = { ...m1, chunks: m1.chunks.slice(0, 3) };
    expect(() => decodeManifest(offer, delta, shortBaseline)).toThrow(/baseline run .* outside its 3 chunks/);
    expect(() => decodeManifest({ ...offer, chunkCount: offer.chunkCount - 1 }, delta, m1)).toThrow(/more than the/);
    expect(() => decodeManifest({ ...offer, size: offer.size - 1 }, delta, m1)).toThrow(/past the declared|cover/);
    expect(() => decodeManifest({ ...offer, version: m1.hash }, delta, m1)).toThrow(/hashes to .* not the offered version/);
    expect(() => decodeManifest(offer, Uint8Array.from([7]), m1)).toThrow(/unknown op 7/);
    const huge = Uint8Array.from([0, 0xff, 0xff, 0x7f, ...new Uint8Array(32)]);
    expect(() => decodeManifest(offer, huge, m1)).toThrow(/outside 1\.\.16384/);
  });

  it('an offer whose chunk count cannot fit its size is a schema error naming the field', () => {
    const bytes = encodeManifest(m2, undefined).bytes;
    const bad = { ...offerFor(m2, bytes), chunkCount: 1 };
    expect(() => BlobMessageSchema.encode({ kind: 'offer', offer: bad })).toThrow(FrameError);
    expect(() => BlobMessageSchema.encode({ kind: 'offer', offer: bad })).toThrow(/field offer.chunkCount is 1, but a 524288-byte value/);
    const wire = BlobMessageSchema.encode({ kind: 'offer', offer: offerFor(m2, bytes) });
    expect(BlobMessageSchema.decode(wire)).toEqual({ kind: 'offer', offer: offerFor(m2, bytes) });
  });
});

describe('a batch written from parts', () => {
  it.each([
    [0, 1, 30],
    [5, 200, 70_000],
    [127, 128, 100],
    [2 ** 20, 16_384, 1000],
  ])('first %i, count %i, %i frame bytes: the same bytes as the protobuf encoding, and they decode back', (first, count, n) => {
    const rng = new Prng(n);
    const frame = Uint8Array.from({ length: n }, () => rng.below(256));
    const whole = BlobMessageSchema.encode({ kind: 'batch', batch: { first, count, frame } });
    const parts = BlobMessageOutSchema.encodeParts?.({ kind: 'batch', batch: { first, count, frame: [frame.subarray(0, 7), frame.subarray(7)] } }) ?? [];
    expect(Buffer.concat(parts).equals(Buffer.from(whole))).toBe(true);
    // The frame's own parts are sent as they are, not copies.
    expect(parts.at(-1)?.buffer).toBe(frame.buffer);
    expect(BlobMessageSchema.decode(Buffer.concat(parts))).toEqual({ kind: 'batch', batch: { first, count, frame: Buffer.from(frame) } });
  });

  it('is read back from the parts it arrived in (decodeList): the frame a list of views of them, whatever the cuts', () => {
    const rng = new Prng(7);
    const frame = Uint8Array.from({ length: 3000 }, () => rng.below(256));
    for (const first of [0, 300]) {
      const wire = Buffer.concat(BlobMessageOutSchema.encodeParts?.({ kind: 'batch', batch: { first, count: 3, frame } }) ?? []);
      for (const cut of [1, 2, 5, 9, 12, 100, wire.byteLength - 1]) {
        const a = wire.slice(0, cut);
        const b = wire.slice(cut);
        const msg = BlobMessageInSchema.decodeList?.(new Uint8ArrayList(a, b));
        if (msg?.kind !== 'batch') throw new Error(`cut at ${cut}: not a batch`);
        expect({ first: msg.batch.first, count: msg.batch.count }).toEqual({ first, count: 3 });
        expect(Buffer.from(msg.batch.frame.subarray()).equals(Buffer.from(frame)), `cut at ${cut}`).toBe(true);
        // The frame's bytes were not copied: its last part is a view of the chunk it arrived in.
        expect([...msg.batch.frame].at(-1)?.buffer).toBe(b.buffer);
      }
    }
  });

  it('decodeList takes any other shape through the full decode: same message, same refusals', () => {
    const frame = Uint8Array.of(1, 2, 3);
    // A batch's frame as its bytes, so that a list of one Buffer and one of a Uint8Array compare equal.
    const viaList = (bytes: Uint8Array): unknown => {
      const msg = BlobMessageInSchema.decodeList?.(new Uint8ArrayList(bytes.subarray(0, 3), bytes.subarray(3)));
      return msg?.kind === 'batch' ? { ...msg, batch: { ...msg.batch, frame: [...msg.batch.frame.subarray()] } } : msg;
    };
    const batch = (fields: number[]): Uint8Array => Uint8Array.of(0x32, fields.length, ...fields);
    const expected = (first: number, count: number) => ({ kind: 'batch', batch: { first, count, frame: [...frame] } });
    // first written out as 0, fields in another order: protobuf accepts both, so the full decode does.
    expect(viaList(batch([0x08, 0, 0x10, 2, 0x1a, 3, 1, 2, 3]))).toEqual(expected(0, 2));
    expect(viaList(batch([0x10, 2, 0x1a, 3, 1, 2, 3, 0x08, 5]))).toEqual(expected(5, 2));
    // A repeated field is refused by the strict checks, a zero count by the validator, as decode() refuses them.
    const twice = batch([0x10, 2, 0x10, 2, 0x1a, 3, 1, 2, 3]);
    expect(() => viaList(twice)).toThrow(/batch/);
    expect(() => BlobMessageSchema.decode(twice)).toThrow(/batch/);
    expect(() => viaList(batch([0x1a, 3, 1, 2, 3]))).toThrow(/batch\.count/);
    expect(() => viaList(batch([0x10, 2, 0x1a, 0]))).toThrow(/batch\.frame/);
    // A length that overruns the message: not the shape, and not a valid encoding.
    expect(() => viaList(batch([0x10, 2, 0x1a, 9, 1, 2, 3]))).toThrow(/not a valid protobuf encoding/);
    // Any other message, through decode() as before.
    const ack = BlobMessageSchema.encode({ kind: 'ack', ack: { first: 1, count: 2 } });
    expect(viaList(ack)).toEqual({ kind: 'ack', ack: { first: 1, count: 2 } });
  });

  it('refuses what the receiver would refuse, as a schema error naming the field', () => {
    const frame = [new Uint8Array(10)];
    const encode = (batch: { first: number; count: number; frame: Uint8Array[] }) => BlobMessageOutSchema.encodeParts?.({ kind: 'batch', batch });
    expect(() => encode({ first: -1, count: 1, frame })).toThrow(/field batch\.first is -1/);
    expect(() => encode({ first: 0, count: 0, frame })).toThrow(/field batch\.count is 0/);
    expect(() => encode({ first: 0, count: 1, frame: [] })).toThrow(/field batch\.frame is required/);
    expect(() => encode({ first: 0, count: 1, frame: [new Uint8Array(4 * 1024 * 1024 + 25)] })).toThrow(FrameError);
  });
});

describe('need bitmap', () => {
  it('lists set bits in order and refuses bits past the count or a wrong length', () => {
    const map = new Uint8Array(bitmapBytes(20));
    for (const i of [0, 7, 8, 19]) setBit(map, i);
    expect(setBits(map, 20)).toEqual([0, 7, 8, 19]);
    expect(() => setBits(map, 30)).toThrow(/bitmap is 3 bytes, 30 chunks take 4/);
    setBit(map, 23);
    expect(() => setBits(map, 20)).toThrow(/sets bit 23, past the 20 chunks/);
  });
});

describe('TransferProgress', () => {
  it('rate from windows of at least 250 ms, ETA from the rate, 0 when done', () => {
    const p = new TransferProgress(1000, 0);
    expect(p.snapshot(0)).toMatchObject({ bytesDone: 0, rateBytesPerS: null, etaSeconds: null });
    p.add(100, 40, 100);
    expect(p.snapshot(100).rateBytesPerS).toBe(1000); // the average until a window closes
    p.add(150, 60, 500);
    expect(p.snapshot(500)).toMatchObject({ bytesDone: 250, wireBytes: 100, rateBytesPerS: 500, etaSeconds: 1.5 });
    p.retarget(250);
    expect(p.snapshot(600).etaSeconds).toBe(0);
  });
});

describe('CompressionSkip', () => {
  it('skips after two misses in a row, backing off 1, 2, 4 … 16; a batch that shrinks resets', () => {
    const s = new CompressionSkip();
    const skipped = (): number => {
      let n = 0;
      while (!s.worthTrying()) n++;
      return n;
    };
    s.record(false);
    expect(skipped()).toBe(0);
    const seen: number[] = [];
    for (let i = 0; i < 6; i++) {
      s.record(false);
      s.record(false);
      seen.push(skipped());
    }
    expect(seen).toEqual([1, 2, 4, 8, 16, 16]);
    s.record(true);
    s.record(false);
    s.record(false);
    expect(skipped()).toBe(1);
  });
});

describe('blob metrics', () => {
  it('moves the cache counters into Prometheus by difference and exports zero series up front', async () => {
    const registry = new Registry();
    const m = createBlobMetrics([registry]);
    m.syncCache({ hits: 3, misses: 1, evictions: 0, expiries: 2, bytesSaved: 100, refuted: 0, entries: 4 });
    m.syncCache({ hits: 5, misses: 1, evictions: 1, expiries: 2, bytesSaved: 150, refuted: 1, entries: 3 });
    const text = await registry.metrics();
    expect(text).toMatch(/^dwcp_baseline_cache_hits_total 5$/m);
    expect(text).toMatch(/^dwcp_baseline_cache_saved_bytes_total 150$/m);
    expect(text).toMatch(/^dwcp_baseline_cache_entries 3$/m);
    expect(text).toMatch(/^dwcp_blob_rejected_total\{reason="bad-checksum"\} 0$/m);
    expect(text).toMatch(/^dwcp_blob_transfers_resumed_total\{direction="sent"\} 0$/m);
  });
});

describe('blob config', () => {
  it('defaults every field and names a bad one with its path and bound', () => {
    const cfg = ConfigFileSchema.parse({ federation: 'f', node: { name: 'a', region: 'r', provider: 'onprem' } });
    expect(cfg.blob).toEqual({
      maxStreams: 8,
      chunkAvgBytes: 4096,
      batchBytes: 1024 * 1024,
      maxValueBytes: 64 * 1024 ** 3,
      internetZstdLevel: 9,
      maxResumes: 5,
      baselineCache: { capacity: 1000, ttlMs: 300_000, persist: false },
    });
    const bad = ConfigFileSchema.safeParse(
      { federation: 'f', node: { name: 'a', region: 'r', provider: 'onprem' }, blob: { maxStreams: 99, baselineCache: { ttlMs: 0 }, typo: 1 } },
      { reportInput: true },
    );
    expect(bad.success).toBe(false);
    const problems = bad.error?.issues.map((i) => formatIssue(i)) ?? [];
    expect(problems).toContain('blob.maxStreams: 99 is too large: expected at most 16');
    expect(problems).toContain('blob.baselineCache.ttlMs: 0 is too small: expected at least 1');
    expect(problems).toContain('blob.typo: unknown key (not part of the schema)');
  });
});

describe('dwcpctl blob formatting', () => {
  it('bytes, ETA, bars and progress lines', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(1024 ** 3)).toBe('1.0 GiB');
    expect(formatEta(null)).toBe('-');
    expect(formatEta(4.2)).toBe('5s');
    expect(formatEta(125)).toBe('2m05s');
    expect(formatEta(7200)).toBe('2h00m');
    expect(renderBar(1, 4, 8)).toBe('[##......]  25%');
    expect(renderBar(0, 0, 4)).toBe('[####] 100%');
    expect(renderProgress({ phase: 'transfer', bytes_done: 512 * 1024 ** 2, bytes_total: 1024 ** 3, rate_bytes_per_s: 100 * 1024 ** 2, eta_seconds: 5.1 })).toBe(
      'transfer [##########..........]  50%  512.0 MiB / 1.0 GiB  100.0 MiB/s  ETA 6s',
    );
  });

  it('describes a put, the status tables and the cache', () => {
    const put = describePut({
      stored: { key: 'vm', version: 'ab'.repeat(32), size: 1024 ** 3, chunks: 131072, stored_at: 't', source: 'local' },
      ingest_seconds: 4.25,
      sent: {
        transfer_id: 'x',
        member: 'b',
        kind: 'delta',
        needed_bytes: 30 * 1024 ** 2,
        raw_bytes_sent: 30 * 1024 ** 2,
        wire_bytes_sent: 20 * 1024 ** 2,
        manifest_bytes_sent: 100 * 1024,
        reused_bytes: 994 * 1024 ** 2,
        attempts: 1,
        resumed: 0,
        seconds: 0.5,
        baseline_refuted: false,
        codecs: { lz4: 30 * 1024 ** 2 },
        phase_seconds: { plan: 0.01, offer: 0.05, data: 0.4, commit: 0.04 },
      },
    });
    expect(put).toContain('stored vm: version abababababababab, 1.0 GiB in 131072 chunks (4.25 s)');
    expect(put).toContain('sent to b: delta, 30.0 MiB of chunks, 20.1 MiB on the wire (1.96 % of the value), 994.0 MiB reused from the baseline, 0.50 s, 60.0 MiB/s; codecs: lz4 30.0 MiB');
    const status = formatBlobStatus({
      transfers: [
        { transfer_id: '0123456789', direction: 'sent', member: 'b', key: 'vm', version: 'v', kind: 'full', state: 'running', bytes_done: 50, bytes_total: 100, wire_bytes: 20, rate_bytes_per_s: 10, eta_seconds: 5, elapsed_seconds: 5, attempt: 2, resumed: 1, started_at: 't', error: null },
      ],
      values: [],
      pack_bytes: 2048,
      packs: 1,
      chunks: 3,
    });
    expect(status).toMatch(/^ID\s+DIR\s+MEMBER\s+KEY\s+KIND\s+PROGRESS/m);
    expect(status).toContain('01234567  sent  b       vm   full  [#####.....]  50%');
    expect(status).toContain('(no values stored)');
    expect(status).toContain('store: 2.0 KiB in 1 pack files, 3 chunks');
    const cache = formatCacheStats({ hits: 19, misses: 1, evictions: 2, expiries: 3, refuted: 0, bytes_saved: 1024, entries: 5, capacity: 1000, ttl_ms: 300_000, persist: false, hit_ratio: 0.95 });
    expect(cache).toMatch(/Hit ratio:\s+\[###################\.\]  95% \(19 hits, 1 misses\)/);
    expect(cache).toMatch(/TTL:\s+300 s/);
  });

  it('usage mistakes exit 2 naming what is missing, before any daemon is asked', async () => {
    const run = async (...argv: string[]) => {
      let err = '';
      const code = await main(argv, { DWCP_SOCKET: '/nonexistent/dwcp.sock' }, { stdout: () => {}, stderr: (t) => (err += t) });
      return { code, err };
    };
    expect(await run('blob', 'put', 'f')).toMatchObject({ code: 2, err: expect.stringContaining('blob put needs --key') });
    expect(await run('blob', 'get', 'k')).toMatchObject({ code: 2, err: expect.stringContaining('blob get needs --out') });
    expect(await run('blob', 'put', 'f', '--key', 'k', '--streams', '99')).toMatchObject({ code: 2, err: expect.stringContaining('--streams: "99"') });
    expect(await run('blob', 'frob')).toMatchObject({ code: 2, err: expect.stringContaining('put, get or status (got "frob")') });
    expect(await run('cache')).toMatchObject({ code: 2, err: expect.stringContaining('cache needs a subcommand: stats') });
    expect(await run('blob', 'status', '--key', 'k')).toMatchObject({ code: 2, err: expect.stringContaining('--key does not apply to blob status') });
    expect(BLOB_COMMAND.args).toContain('put FILE --key K [--to MEMBER]');
  });
});
