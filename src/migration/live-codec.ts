/**
 * How one end of a live channel (relay.ts `pipe`) compresses the
 * Data frames it sends: `none`, or `lz4`: each frame LZ4-compressed when
 * that makes it at least an eighth smaller, else sent as it is (each frame
 * says which, so the two ends may be configured differently).
 *
 * Why not every frame: QEMU's stream is guest memory, which comes in runs.
 * A guest's first pass (kernel, page cache) compresses ~3× here, while the
 * pages a busy guest dirties are often incompressible (the test guest
 * writes random bytes), and compressing those is pure cost on a relay that
 * is CPU-bound. So frames that do not pay start runs of frames sent
 * without trying, the blob transfer's rule (CompressionSkip: after two
 * misses in a row, skip 1, then 2, 4 … up to 16 frames, 4 MiB; a frame that
 * pays resets it): a stream that turns compressible again is caught within
 * one run. The LZ4 work runs on libuv's threads (lz4-napi's async
 * compress), so the sender starts compressing the next frames while the
 * previous ones are written (`pipe` keeps a few in flight).
 *
 * Invariants: a frame is sent compressed only if its compressed form is at
 * most 7/8 of its raw bytes; a skip run is at most 16 frames; `pack` never
 * changes the arrays it is given (an uncompressed frame is sent from them).
 */
import { CompressionSkip } from '../blob/transfer.ts';
import { codecFor, type CodecName } from '../codec/codecs.ts';
import type { MigrateOpen } from './migrate-wire.ts';
import type { Uint8ArrayList } from 'uint8arraylist';

/** How this end compresses the live channels' frames. */
export type LiveCodec = Extract<CodecName, 'lz4' | 'none'>;

/**
 * How an end compresses a channel's frames: a multifd channel QEMU already
 * compressed is sent as it is (LZ4 would only cost the relay CPU).
 */
export function liveCodecFor(open: Pick<MigrateOpen, 'stream' | 'multifd'>, codec: LiveCodec = 'none'): LiveCodec {
  return open.multifd !== null && open.stream > 0 && open.multifd.compression !== 'none' ? 'none' : codec;
}

/** A Data frame's payload: the chunk as arrays (sent where they lie) or compressed, with its raw length (0: not compressed). */
interface PackedData {
  readonly chunk: Uint8Array | readonly Uint8Array[];
  readonly rawLength: number;
}

export class LivePacker {
  readonly #lz4 = codecFor({ name: 'lz4' });
  readonly #codec: LiveCodec;
  readonly #skip = new CompressionSkip();

  constructor(codec: LiveCodec) {
    this.#codec = codec;
  }

  /** The frame for `parts` (`size` bytes in all); compression, when tried, runs off the event loop. */
  async pack(parts: readonly Buffer[], size: number): Promise<PackedData> {
    if (this.#codec === 'none' || !this.#skip.worthTrying()) return { chunk: parts, rawLength: 0 };
    const packed = await this.#lz4.compress(parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, size));
    const paid = packed.byteLength <= size - size / 8;
    this.#skip.record(paid);
    return paid ? { chunk: packed, rawLength: size } : { chunk: parts, rawLength: 0 };
  }

  /** The bytes of a received frame: an uncompressed chunk as the parts it arrived in, a compressed one decompressed. */
  async unpack(chunk: Uint8ArrayList, rawLength: number): Promise<Uint8Array | Uint8ArrayList> {
    return rawLength === 0 ? chunk : this.#lz4.decompress(chunk.subarray(), rawLength);
  }
}
