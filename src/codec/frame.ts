/**
 * The one frame format for every compressed payload dwcp sends or stores:
 *
 *   offset  size  field
 *   0       4     magic "DWCF"
 *   4       1     version (1)
 *   5       1     codec id (codecs.ts CODEC_IDS)
 *   6       1     flags (none defined in version 1; any set bit is refused)
 *   7       1     level (zstd level; 0 otherwise; informational)
 *   8       8     declared raw length, little-endian
 *   16      4     payload length, little-endian
 *   20      4     CRC-32 of bytes 0..20 and the payload (zlib.crc32)
 *   24      ...   payload
 *
 * Invariants:
 * - Decoding checks, in order and before any decompression: the frame is
 *   complete, magic, version, codec id, flags, then the declared raw length
 *   against the caller's limit (the decompression-bomb guard), then the
 *   checksum. Only then does the codec run, bounded by the declared length,
 *   and the result must be exactly that long. Every refusal is a CodecError;
 *   nothing partial is ever returned.
 * - The checksum covers the compressed bytes, not the raw ones, so corrupted
 *   or truncated input is refused before a native decoder sees it; end-to-end
 *   integrity of a synced value is the whole-value hash (sync/manifest.ts).
 */
import { CodecError, codecById, codecFor, type Codec, type CodecSpec } from './codecs.ts';
import { CHECKSUM_OFFSET, frameChecksum } from './frame-checksum.ts';
import type { Uint8ArrayList } from 'uint8arraylist';

export const FRAME_MAGIC = 0x46435744; // "DWCF" read little-endian
export const FRAME_VERSION = 1;
export const FRAME_HEADER_BYTES = 24;
const MAX_PAYLOAD_BYTES = 0xffff_ffff;

/** Default bound on a frame's raw length; larger values travel as chunks. */
export const DEFAULT_MAX_RAW_BYTES = 64 * 1024 * 1024;

export interface FrameHeader {
  version: number;
  codecId: number;
  flags: number;
  level: number;
  rawLength: number;
  payloadLength: number;
  checksum: number;
}

export interface DecodedFrame {
  raw: Uint8Array;
  codec: Codec;
  header: FrameHeader;
}

/** The refusal of a frame whose checksum is `actual` where its header says `declared` (also raised off-thread, by the blob chunk verifier). */
export function checksumMismatch(actual: number, declared: number): CodecError {
  return new CodecError('bad-checksum', `frame checksum is 0x${actual.toString(16)}, its header says 0x${declared.toString(16)}`);
}

/** Compresses `raw` with `spec` into a frame. */
export async function compressFrame(raw: Uint8Array, spec: CodecSpec): Promise<Uint8Array> {
  const codec = codecFor(spec);
  return frameFromPayload(codec, raw.byteLength, await codec.compress(raw));
}

/**
 * The 24-byte header of a frame whose payload is `payload` (one array, or
 * parts in order): header and payload together are the frame, so a sender
 * can send the payload where it lies instead of copying it behind a header.
 */
export function frameHeader(codec: Codec, rawLength: number, payload: Uint8Array | readonly Uint8Array[]): Uint8Array {
  const payloadLength = payload instanceof Uint8Array ? payload.byteLength : payload.reduce((sum, p) => sum + p.byteLength, 0);
  if (payloadLength > MAX_PAYLOAD_BYTES) throw new RangeError(`frame payload of ${payloadLength} bytes exceeds ${MAX_PAYLOAD_BYTES}`);
  const header = new Uint8Array(FRAME_HEADER_BYTES);
  const view = new DataView(header.buffer);
  view.setUint32(0, FRAME_MAGIC, true);
  view.setUint8(4, FRAME_VERSION);
  view.setUint8(5, codec.id);
  view.setUint8(6, 0);
  view.setUint8(7, codec.level);
  view.setBigUint64(8, BigInt(rawLength), true);
  view.setUint32(16, payloadLength, true);
  view.setUint32(CHECKSUM_OFFSET, frameChecksum(header, payload), true);
  return header;
}

/** Wraps an already compressed payload into one array; the bench and tests use it to build frames with chosen contents. */
export function frameFromPayload(codec: Codec, rawLength: number, payload: Uint8Array): Uint8Array {
  const header = frameHeader(codec, rawLength, payload);
  const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.byteLength);
  frame.set(header);
  frame.set(payload, FRAME_HEADER_BYTES);
  return frame;
}

/** Parses and checks the header alone: everything that can be refused without touching the payload. */
export function readFrameHeader(frame: Uint8Array | Uint8ArrayList, maxRawBytes: number = DEFAULT_MAX_RAW_BYTES): FrameHeader {
  if (frame.byteLength < FRAME_HEADER_BYTES) {
    throw new CodecError('truncated', `frame of ${frame.byteLength} bytes is shorter than the ${FRAME_HEADER_BYTES}-byte header`);
  }
  // A frame still in the parts it arrived in: only its header is made contiguous (a view, or a copy of 24 bytes).
  const head = frame instanceof Uint8Array ? frame : frame.subarray(0, FRAME_HEADER_BYTES);
  const view = new DataView(head.buffer, head.byteOffset, FRAME_HEADER_BYTES);
  const magic = view.getUint32(0, true);
  if (magic !== FRAME_MAGIC) throw new CodecError('bad-magic', `frame magic is 0x${magic.toString(16)}, expected 0x${FRAME_MAGIC.toString(16)} ("DWCF")`);
  const header: FrameHeader = {
    version: view.getUint8(4),
    codecId: view.getUint8(5),
    flags: view.getUint8(6),
    level: view.getUint8(7),
    rawLength: Number(view.getBigUint64(8, true)),
    payloadLength: view.getUint32(16, true),
    checksum: view.getUint32(CHECKSUM_OFFSET, true),
  };
  if (header.version !== FRAME_VERSION) throw new CodecError('unsupported-version', `frame version ${header.version} is not supported (this node reads ${FRAME_VERSION})`);
  if (codecById(header.codecId) === undefined) throw new CodecError('unknown-codec', `frame codec id ${header.codecId} is unknown`);
  if (header.flags !== 0) throw new CodecError('bad-flags', `frame flags 0x${header.flags.toString(16)} are not defined in version ${FRAME_VERSION}`);
  if (header.rawLength > maxRawBytes) {
    throw new CodecError('too-large', `frame declares ${header.rawLength} raw bytes, above the limit of ${maxRawBytes}; refused before decompression`);
  }
  const expected = FRAME_HEADER_BYTES + header.payloadLength;
  if (frame.byteLength < expected) throw new CodecError('truncated', `frame is ${frame.byteLength} bytes, its header says ${expected}`);
  if (frame.byteLength > expected) throw new CodecError('length-mismatch', `frame is ${frame.byteLength} bytes, its header says ${expected}`);
  return header;
}

/** Checks and decompresses one whole frame; throws a CodecError for anything refused. */
export async function decompressFrame(frame: Uint8Array, maxRawBytes: number = DEFAULT_MAX_RAW_BYTES): Promise<DecodedFrame> {
  const header = readFrameHeader(frame, maxRawBytes);
  const codec = codecById(header.codecId) as Codec;
  const payload = frame.subarray(FRAME_HEADER_BYTES);
  const actual = frameChecksum(frame, payload);
  if (actual !== header.checksum) throw checksumMismatch(actual, header.checksum);
  return { raw: await codec.decompress(payload, header.rawLength), codec, header };
}
