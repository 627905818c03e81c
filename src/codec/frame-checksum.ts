/**
 * The frame format's CRC-32 (frame.ts): over the header's first 20 bytes and
 * then the payload. Its own module, importing nothing but node:zlib, so the
 * blob chunk verifier's worker thread can check batch frames without loading
 * the codecs.
 */
import zlib from 'node:zlib';

/** Where the checksum lies in the header; it covers the bytes before it. */
export const CHECKSUM_OFFSET = 20;

export function frameChecksum(frame: Uint8Array, payload: Uint8Array | readonly Uint8Array[]): number {
  let crc = zlib.crc32(frame.subarray(0, CHECKSUM_OFFSET));
  for (const part of payload instanceof Uint8Array ? [payload] : payload) crc = zlib.crc32(part, crc);
  return crc;
}
