/**
 * How one end of a live channel (migrate-service.ts `pipe`) compresses the
 * Data frames it sends: `none`, or `lz4`: each frame LZ4-compressed when
 * that makes it at least an eighth smaller, else sent as it is (each frame
 * says which, so the two ends may be configured differently).
 *
 * Why not every frame: QEMU's stream is guest memory, which comes in runs.
 * A guest's first pass (kernel, page cache) compresses ~3× here, while the
 * pages a busy guest dirties are often incompressible (the test guest
 * writes random bytes), and compressing those is pure cost on a relay that
 * is CPU-bound. So after a frame that did not pay, the next frames go
 * uncompressed without trying, a run that doubles with each further miss
 * (up to MAX_SKIP_FRAMES, 16 MiB at 256 KiB frames) and ends with the next
 * frame that pays: a stream that turns compressible again is caught within
 * one run. The LZ4 work runs on libuv's threads (lz4-napi's async
 * compress), so the sender starts compressing the next frames while the
 * previous ones are written (`pipe` keeps a few in flight).
 *
 * Invariants: a frame is sent compressed only if its compressed form is at
 * most 7/8 of its raw bytes; the skip run is bounded; `pack` never changes
 * the arrays it is given (an uncompressed frame is sent from them).
 */
import { codecFor, type CodecName } from '../codec/codecs.ts';

/** How this end compresses the live channels' frames. */
export type LiveCodec = Extract<CodecName, 'lz4' | 'none'>;

/** Longest run of frames sent without trying to compress them. */
export const MAX_SKIP_FRAMES = 64;

/** A Data frame's payload: the chunk as arrays (sent where they lie) or compressed, with its raw length (0: not compressed). */
export interface PackedData {
  readonly chunk: Uint8Array | readonly Uint8Array[];
  readonly rawLength: number;
}

/** The skip rule, pure: after a frame's verdict, how many frames to send without trying. */
export class SkipRun {
  #run = 0;
  #left = 0;

  /** Whether to try compressing the next frame (counts a skipped one). */
  tryNext(): boolean {
    if (this.#left === 0) return true;
    this.#left--;
    return false;
  }

  /** A tried frame paid (true) or not. */
  verdict(paid: boolean): void {
    this.#run = paid ? 0 : Math.min(MAX_SKIP_FRAMES, this.#run === 0 ? 1 : this.#run * 2);
    this.#left = this.#run;
  }
}

export class LivePacker {
  readonly #lz4 = codecFor({ name: 'lz4' });
  readonly #codec: LiveCodec;
  readonly #skip = new SkipRun();

  constructor(codec: LiveCodec) {
    this.#codec = codec;
  }

  /** The frame for `parts` (`size` bytes in all); compression, when tried, runs off the event loop. */
  async pack(parts: readonly Buffer[], size: number): Promise<PackedData> {
    if (this.#codec === 'none' || !this.#skip.tryNext()) return { chunk: parts, rawLength: 0 };
    const packed = await this.#lz4.compress(parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, size));
    const paid = packed.byteLength <= size - size / 8;
    this.#skip.verdict(paid);
    return paid ? { chunk: packed, rawLength: size } : { chunk: parts, rawLength: 0 };
  }

  /** The bytes of a received frame. */
  async unpack(chunk: Uint8Array, rawLength: number): Promise<Uint8Array> {
    return rawLength === 0 ? chunk : this.#lz4.decompress(chunk, rawLength);
  }
}
