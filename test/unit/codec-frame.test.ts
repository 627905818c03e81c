/**
 * The frame format and codecs: round trips for every codec and level, and
 * every hostile input (declared size over the limit, real zstd and lz4 bombs,
 * lengths that disagree, bad checksum, unknown codec, truncation, bad
 * header fields) refused with a CodecError naming the values.
 */
import { compress as zstdLibraryCompress } from '@mongodb-js/zstd';
import { compress as lz4Compress } from 'lz4-napi';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { CodecError, codecById, codecFor, CODEC_IDS, type CodecErrorReason, type CodecSpec } from '../../src/codec/codecs.ts';
import { decompressFrame, compressFrame, FRAME_HEADER_BYTES, frameFromPayload, frameHeader, readFrameHeader } from '../../src/codec/frame.ts';
import { vmImageLike } from '../../bench/codec.ts';

const GIB = 1024 ** 3;
const MIB = 1024 ** 2;
const LIMIT = 64 * MIB;

const SPECS: CodecSpec[] = [{ name: 'none' }, { name: 'lz4' }, { name: 'zstd', level: 1 }, { name: 'zstd', level: 3 }, { name: 'zstd', level: 9 }];

async function refusal(work: Promise<unknown>): Promise<CodecError> {
  const err: unknown = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof CodecError)) throw new Error(`expected a CodecError, got ${String(err)}`);
  return err;
}

async function expectRefused(work: Promise<unknown>, reason: CodecErrorReason, ...named: string[]): Promise<void> {
  const err = await refusal(work);
  expect(err.reason, err.message).toBe(reason);
  for (const text of named) expect(err.message).toContain(text);
}

/** A copy of `frame` with header byte `offset` set to `value` (checksum left stale: header checks come first). */
function withHeaderByte(frame: Uint8Array, offset: number, value: number): Uint8Array {
  const copy = frame.slice();
  copy[offset] = value;
  return copy;
}

/** A zstd payload with its Frame_Content_Size set to `size` (the library writes none; we insert 8 bytes). */
function zstdWithContentSize(libraryFrame: Uint8Array, size: number): Uint8Array {
  expect(libraryFrame[4]).toBe(0); // no FCS, not single-segment, no dictionary: window descriptor at 5
  const out = new Uint8Array(libraryFrame.byteLength + 8);
  out.set(libraryFrame.subarray(0, 6));
  out[4] = 0xc0;
  new DataView(out.buffer).setBigUint64(6, BigInt(size), true);
  out.set(libraryFrame.subarray(6), 14);
  return out;
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe('frame round trips', () => {
  const data = vmImageLike(1 * MIB, 7);

  it.each(SPECS)('$name $level: decodes to the same bytes, with its codec id, level and raw length in the header', async (spec) => {
    const frame = await compressFrame(data, spec);
    const header = readFrameHeader(frame);
    expect(header).toMatchObject({ version: 1, codecId: CODEC_IDS[spec.name], level: spec.level ?? 0, rawLength: data.byteLength, flags: 0 });
    if (spec.name !== 'none') expect(frame.byteLength).toBeLessThan(data.byteLength * 0.6);
    const decoded = await decompressFrame(frame);
    expect(Buffer.from(decoded.raw).equals(Buffer.from(data))).toBe(true);
    expect(decoded.codec.name).toBe(spec.name);
  });

  it.each(SPECS)('$name $level: an empty value round-trips', async (spec) => {
    const decoded = await decompressFrame(await compressFrame(new Uint8Array(0), spec));
    expect(decoded.raw.byteLength).toBe(0);
  });

  it('a header built for a payload in parts heads the same frame as the payload in one array', async () => {
    const payload = vmImageLike(300_000, 3);
    const parts = [payload.subarray(0, 1), payload.subarray(1, 4096), payload.subarray(4096)];
    const header = frameHeader(codecFor({ name: 'none' }), payload.byteLength, parts);
    const whole = frameFromPayload(codecFor({ name: 'none' }), payload.byteLength, payload);
    expect(Buffer.from(header).equals(Buffer.from(whole.subarray(0, FRAME_HEADER_BYTES)))).toBe(true);
    const decoded = await decompressFrame(Buffer.concat([header, ...parts]));
    expect(Buffer.from(decoded.raw).equals(Buffer.from(payload))).toBe(true);
  });

  it('zstd levels really differ: level 9 is smaller than level 1 on the same data', async () => {
    const one = await compressFrame(data, { name: 'zstd', level: 1 });
    const nine = await compressFrame(data, { name: 'zstd', level: 9 });
    expect(nine.byteLength).toBeLessThan(one.byteLength);
  });

  it('refuses zstd levels outside 1..22 by value', () => {
    expect(() => codecFor({ name: 'zstd', level: 0 })).toThrow(/zstd level .* got 0/);
    expect(() => codecFor({ name: 'zstd', level: 23 })).toThrow(/got 23/);
  });
});

describe('decompression bombs', () => {
  let zstdBomb: Uint8Array; // 1 GiB of zeros, as the library emits it (no content size)
  let lz4Bomb: Uint8Array; // 1 GiB of zeros, lz4-napi block with its size prefix

  beforeAll(async () => {
    const zeros = Buffer.alloc(GIB);
    [zstdBomb, lz4Bomb] = await Promise.all([zstdLibraryCompress(zeros), lz4Compress(zeros)]);
    expect(zstdBomb.byteLength).toBeLessThan(MIB);
    expect(lz4Bomb.byteLength).toBeLessThan(8 * MIB);
  }, 20_000);

  it.each(['lz4', 'zstd'] as const)('%s: a frame declaring 1 GiB is refused before the codec runs, naming size and limit', async (name) => {
    const codec = codecFor({ name });
    const payload = name === 'lz4' ? lz4Bomb : zstdWithContentSize(zstdBomb, GIB);
    const frame = frameFromPayload(codec, GIB, payload);
    const decompress = vi.spyOn(codecById(codec.id) as typeof codec, 'decompress');
    await expectRefused(decompressFrame(frame, LIMIT), 'too-large', String(GIB), String(LIMIT));
    expect(decompress).not.toHaveBeenCalled();
  });

  it('lz4: a bomb in a frame declaring 1 MiB is refused on its size prefix', async () => {
    await expectRefused(decompressFrame(frameFromPayload(codecFor({ name: 'lz4' }), MIB, lz4Bomb), LIMIT), 'length-mismatch', 'size prefix', String(GIB), String(MIB));
  });

  it('zstd: a bomb without a content size is refused undecoded', async () => {
    await expectRefused(decompressFrame(frameFromPayload(codecFor({ name: 'zstd' }), MIB, zstdBomb), LIMIT), 'corrupt', 'no content size');
  });

  it('zstd: a bomb whose content size disagrees with the frame is refused undecoded', async () => {
    const frame = frameFromPayload(codecFor({ name: 'zstd' }), MIB, zstdWithContentSize(zstdBomb, GIB));
    await expectRefused(decompressFrame(frame, LIMIT), 'length-mismatch', 'content size', String(GIB), String(MIB));
  });

  it('zstd: a bomb that lies about its content size stops at that size inside libzstd', async () => {
    const frame = frameFromPayload(codecFor({ name: 'zstd' }), MIB, zstdWithContentSize(zstdBomb, MIB));
    const before = process.memoryUsage().arrayBuffers;
    await expectRefused(decompressFrame(frame, LIMIT), 'corrupt', 'zstd');
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(256 * MIB);
  });
});

describe('hostile frames', () => {
  const data = vmImageLike(64 * 1024, 3);

  it('a frame whose payload decompresses to other than the declared length is refused with both values', async () => {
    const none = codecFor({ name: 'none' });
    await expectRefused(decompressFrame(frameFromPayload(none, 100, new Uint8Array(90))), 'length-mismatch', '90', '100');
    const lz4 = codecFor({ name: 'lz4' });
    const payload = await lz4.compress(data);
    await expectRefused(decompressFrame(frameFromPayload(lz4, data.byteLength - 1, payload)), 'length-mismatch', String(data.byteLength));
  });

  it('zstd: a content size larger than what the blocks hold is refused', async () => {
    const library = await zstdLibraryCompress(Buffer.from(data));
    const frame = frameFromPayload(codecFor({ name: 'zstd' }), data.byteLength + 10, zstdWithContentSize(library, data.byteLength + 10));
    const err = await refusal(decompressFrame(frame));
    expect(['corrupt', 'length-mismatch']).toContain(err.reason);
  });

  it('zstd: bytes after the zstd frame (a second frame) are refused', async () => {
    const zstd = codecFor({ name: 'zstd' });
    const one = await zstd.compress(data);
    const two = new Uint8Array(one.byteLength * 2);
    two.set(one);
    two.set(one, one.byteLength);
    await expectRefused(decompressFrame(frameFromPayload(zstd, data.byteLength, two)), 'corrupt', 'after the frame');
  });

  it('a flipped payload byte fails the checksum, naming both checksums, before the codec runs', async () => {
    const frame = await compressFrame(data, { name: 'lz4' });
    const decompress = vi.spyOn(codecById(CODEC_IDS.lz4) as ReturnType<typeof codecFor>, 'decompress');
    const last = frame.byteLength - 1;
    const corrupted = withHeaderByte(frame, last, (frame[last] as number) ^ 0x01);
    await expectRefused(decompressFrame(corrupted), 'bad-checksum', 'checksum is 0x');
    expect(decompress).not.toHaveBeenCalled();
  });

  it('refuses an unknown codec id, a bad magic, another version and unknown flags, naming the value', async () => {
    const frame = await compressFrame(data, { name: 'zstd', level: 3 });
    await expectRefused(decompressFrame(withHeaderByte(frame, 5, 9)), 'unknown-codec', 'id 9');
    await expectRefused(decompressFrame(withHeaderByte(frame, 0, 0)), 'bad-magic', 'DWCF');
    await expectRefused(decompressFrame(withHeaderByte(frame, 4, 2)), 'unsupported-version', 'version 2');
    await expectRefused(decompressFrame(withHeaderByte(frame, 6, 0x80)), 'bad-flags', '0x80');
  });

  it('refuses truncated frames at every cut, and trailing bytes', async () => {
    const frame = await compressFrame(data, { name: 'zstd', level: 1 });
    for (const cut of [0, 10, FRAME_HEADER_BYTES - 1, FRAME_HEADER_BYTES, frame.byteLength - 1]) {
      await expectRefused(decompressFrame(frame.subarray(0, cut)), 'truncated', String(cut));
    }
    const longer = new Uint8Array(frame.byteLength + 1);
    longer.set(frame);
    await expectRefused(decompressFrame(longer), 'length-mismatch', String(longer.byteLength));
  });

  it('zstd: a payload truncated inside the frame (checksum made valid) is refused, not half-decoded', async () => {
    const zstd = codecFor({ name: 'zstd' });
    const payload = await zstd.compress(data);
    await expectRefused(decompressFrame(frameFromPayload(zstd, data.byteLength, payload.subarray(0, payload.byteLength - 5))), 'truncated');
    await expectRefused(decompressFrame(frameFromPayload(zstd, data.byteLength, payload.subarray(0, 3))), 'truncated');
  });

  it('lz4: a garbled block (checksum made valid) is a CodecError, not a crash', async () => {
    const lz4 = codecFor({ name: 'lz4' });
    const payload = (await lz4.compress(data)).slice();
    payload.fill(0xff, 4, 64);
    const err = await refusal(decompressFrame(frameFromPayload(lz4, data.byteLength, payload)));
    expect(['corrupt', 'length-mismatch']).toContain(err.reason);
  });
});
