/**
 * The codecs a frame can carry: none, LZ4 (lz4-napi) and Zstandard
 * (@mongodb-js/zstd) at a chosen level, behind one narrow `Codec` interface,
 * and `CodecError`, the one error every refused payload becomes.
 *
 * Invariants:
 * - A zstd codec compresses at its own level (see ZstdBinding below for why
 *   we bypass the library's wrapper).
 * - `decompress(payload, rawLength)` never produces more than `rawLength`
 *   bytes of work, and returns exactly `rawLength` bytes or throws. The caller
 *   (frame.ts) has already refused a `rawLength` above its limit, so the bound
 *   here is what makes that limit a bound on memory and CPU.
 * - LZ4 payloads are lz4-napi blocks: a 4-byte little-endian output size, then
 *   one LZ4 block. lz4_flex allocates exactly that size and fails on a block
 *   that would write past it, so checking the prefix against `rawLength`
 *   before the call bounds the work.
 * - Zstandard: @mongodb-js/zstd 1.2.x `decompress(data)` takes no output
 *   bound and decodes every concatenated frame it is given, and its
 *   `compress` writes no Frame_Content_Size. So our zstd payload is exactly
 *   one zstd frame whose header carries the content size: the encoder writes
 *   it into the header it got from the library, and the decoder walks the
 *   frame header and block headers (no decoding) and refuses a payload without
 *   a content size, with one different from `rawLength`, with a dictionary,
 *   with reserved bits or block types, or with anything after the frame.
 *   libzstd then stops with an error as soon as a block would take the output
 *   past the declared content size, so the output is bounded by `rawLength`
 *   plus at most one block (128 KiB).
 */
import { compress as lz4Compress, uncompress as lz4Uncompress } from 'lz4-napi';
import { createRequire } from 'node:module';
import { DwcpError } from '../errors.ts';

/**
 * @mongodb-js/zstd 1.2.2's index.js drops the `level` argument before calling
 * its native binding (every level compresses at zstd's default, 3), so we call
 * the binding it wraps, whose signatures are those of its index.d.ts.
 */
interface ZstdBinding {
  compress(data: Buffer, level: number): Promise<Buffer>;
  decompress(data: Buffer): Promise<Buffer>;
}
const zstdBinding = createRequire(import.meta.url)('@mongodb-js/zstd/bindings.js') as ZstdBinding;

export const CODEC_NAMES = ['none', 'lz4', 'zstd'] as const;
export type CodecName = (typeof CODEC_NAMES)[number];

/** Wire ids; never renumber, frames on disk and in flight carry them. */
export const CODEC_IDS: Readonly<Record<CodecName, number>> = { none: 0, lz4: 1, zstd: 2 };

export const ZSTD_MIN_LEVEL = 1;
export const ZSTD_MAX_LEVEL = 22;

/** What to compress with: a codec and, for zstd, a level (ignored by none and lz4, which have one). */
export interface CodecSpec {
  name: CodecName;
  level?: number;
}

export interface Codec {
  readonly name: CodecName;
  readonly id: number;
  /** The zstd level; 0 for codecs without levels. */
  readonly level: number;
  compress(raw: Uint8Array): Promise<Uint8Array>;
  /** `rawLength` is the caller's already-checked bound and the exact expected size. */
  decompress(payload: Uint8Array, rawLength: number): Promise<Uint8Array>;
}

export const CODEC_ERROR_REASONS = [
  'truncated',
  'bad-magic',
  'unsupported-version',
  'unknown-codec',
  'bad-flags',
  'too-large',
  'bad-checksum',
  'length-mismatch',
  'corrupt',
] as const;
export type CodecErrorReason = (typeof CODEC_ERROR_REASONS)[number];

/** A refused frame or payload; `reason` is a fixed label (metrics use it), the message names the values. */
export class CodecError extends DwcpError<'corrupt'> {
  readonly reason: CodecErrorReason;
  constructor(reason: CodecErrorReason, message: string, options?: { cause?: unknown }) {
    super('corrupt', message, options);
    this.reason = reason;
  }
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Library failures on hostile payloads become CodecErrors, so callers handle one error type. */
async function nativeCall(codec: CodecName, what: string, call: () => Promise<Buffer>): Promise<Buffer> {
  try {
    return await call();
  } catch (err) {
    throw new CodecError('corrupt', `${codec}: ${what} failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

/** Refuses a decompressed length other than the frame's declared raw length (for `none`, the payload's own length). */
export function expectRawLength(codec: CodecName, actual: number, rawLength: number): void {
  if (actual !== rawLength) throw new CodecError('length-mismatch', `${codec}: decompressed to ${actual} bytes, the frame declared ${rawLength}`);
}

function expectLength(codec: CodecName, out: Uint8Array, rawLength: number): Uint8Array {
  expectRawLength(codec, out.byteLength, rawLength);
  return out;
}

const noneCodec: Codec = {
  name: 'none',
  id: CODEC_IDS.none,
  level: 0,
  compress: async (raw) => raw,
  decompress: async (payload, rawLength) => expectLength('none', payload, rawLength),
};

const LZ4_SIZE_PREFIX = 4;

const lz4Codec: Codec = {
  name: 'lz4',
  id: CODEC_IDS.lz4,
  level: 0,
  compress: (raw) => lz4Compress(raw),
  async decompress(payload, rawLength) {
    if (payload.byteLength < LZ4_SIZE_PREFIX) throw new CodecError('truncated', `lz4: payload of ${payload.byteLength} bytes has no size prefix`);
    const prefixed = new DataView(payload.buffer, payload.byteOffset, LZ4_SIZE_PREFIX).getUint32(0, true);
    if (prefixed !== rawLength) {
      throw new CodecError('length-mismatch', `lz4: block size prefix says ${prefixed} bytes, the frame declared ${rawLength}`);
    }
    return expectLength('lz4', await nativeCall('lz4', 'decompress', () => lz4Uncompress(payload)), rawLength);
  },
};

const ZSTD_MAGIC = 0xfd2fb528;
const ZSTD_MAX_BLOCK = 128 * 1024;
const FCS_BYTES = [0, 2, 4, 8] as const;
const DICT_ID_BYTES = [0, 1, 2, 4] as const;

interface ZstdHeader {
  /** Bytes of the frame header, magic included. */
  headerBytes: number;
  /** Where the Frame_Content_Size field is, or would be inserted when absent. */
  fcsOffset: number;
  fcsBytes: number;
  contentSize: number | undefined;
  hasChecksum: boolean;
}

function zstdHeader(p: Uint8Array): ZstdHeader {
  if (p.byteLength < 6) throw new CodecError('truncated', `zstd: payload of ${p.byteLength} bytes is shorter than a frame header`);
  const view = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const magic = view.getUint32(0, true);
  if (magic !== ZSTD_MAGIC) throw new CodecError('corrupt', `zstd: payload starts with 0x${magic.toString(16)}, not one zstd frame (0x${ZSTD_MAGIC.toString(16)})`);
  const fhd = view.getUint8(4);
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  if ((fhd >> 3) & 1) throw new CodecError('corrupt', 'zstd: reserved frame header bit is set');
  const dictIdFlag = fhd & 3;
  if (dictIdFlag !== 0) throw new CodecError('corrupt', 'zstd: frame needs a dictionary; dwcp uses none');
  const fcsOffset = 5 + (singleSegment ? 0 : 1) + DICT_ID_BYTES[dictIdFlag];
  const fcsBytes = fcsFlag === 0 ? singleSegment : (FCS_BYTES[fcsFlag as 1 | 2 | 3] as number);
  const headerBytes = fcsOffset + fcsBytes;
  if (p.byteLength < headerBytes) throw new CodecError('truncated', `zstd: frame header needs ${headerBytes} bytes, payload has ${p.byteLength}`);
  let contentSize: number | undefined;
  if (fcsBytes === 1) contentSize = view.getUint8(fcsOffset);
  else if (fcsBytes === 2) contentSize = view.getUint16(fcsOffset, true) + 256;
  else if (fcsBytes === 4) contentSize = view.getUint32(fcsOffset, true);
  else if (fcsBytes === 8) contentSize = Number(view.getBigUint64(fcsOffset, true));
  return { headerBytes, fcsOffset, fcsBytes, contentSize, hasChecksum: ((fhd >> 2) & 1) === 1 };
}

/** Walks the block headers (decoding nothing) and refuses reserved block types, oversize blocks and trailing bytes. */
function checkZstdBlocks(p: Uint8Array, header: ZstdHeader): void {
  let pos = header.headerBytes;
  for (;;) {
    if (pos + 3 > p.byteLength) throw new CodecError('truncated', `zstd: block header at byte ${pos} runs past the ${p.byteLength}-byte payload`);
    const bits = (p[pos] as number) | ((p[pos + 1] as number) << 8) | ((p[pos + 2] as number) << 16);
    pos += 3;
    const last = bits & 1;
    const type = (bits >> 1) & 3;
    const size = bits >>> 3;
    if (type === 3) throw new CodecError('corrupt', `zstd: reserved block type at byte ${pos - 3}`);
    if (size > ZSTD_MAX_BLOCK) throw new CodecError('corrupt', `zstd: block of ${size} bytes exceeds the format's ${ZSTD_MAX_BLOCK}`);
    pos += type === 1 ? 1 : size; // an RLE block stores one byte however many it stands for
    if (last) break;
  }
  if (header.hasChecksum) pos += 4;
  if (pos > p.byteLength) throw new CodecError('truncated', `zstd: frame needs ${pos} bytes, payload has ${p.byteLength}`);
  if (pos < p.byteLength) throw new CodecError('corrupt', `zstd: ${p.byteLength - pos} bytes after the frame; exactly one zstd frame is accepted`);
}

/** The library's frame with an 8-byte Frame_Content_Size written into its header, so receivers can bound the output. */
function withContentSize(frame: Buffer, rawLength: number): Uint8Array {
  const header = zstdHeader(frame);
  if (header.contentSize !== undefined) return frame;
  const out = new Uint8Array(frame.byteLength + 8);
  out.set(frame.subarray(0, header.fcsOffset), 0);
  out[4] = (out[4] as number) | (3 << 6);
  new DataView(out.buffer).setBigUint64(header.fcsOffset, BigInt(rawLength), true);
  out.set(frame.subarray(header.fcsOffset), header.fcsOffset + 8);
  return out;
}

function zstdCodec(level: number): Codec {
  return {
    name: 'zstd',
    id: CODEC_IDS.zstd,
    level,
    async compress(raw) {
      return withContentSize(await zstdBinding.compress(asBuffer(raw), level), raw.byteLength);
    },
    async decompress(payload, rawLength) {
      const header = zstdHeader(payload);
      if (header.contentSize === undefined) {
        throw new CodecError('corrupt', 'zstd: frame has no content size, so its output cannot be bounded before decoding; refused');
      }
      if (header.contentSize !== rawLength) {
        throw new CodecError('length-mismatch', `zstd: frame content size says ${header.contentSize} bytes, the frame declared ${rawLength}`);
      }
      checkZstdBlocks(payload, header);
      return expectLength('zstd', await nativeCall('zstd', 'decompress', () => zstdBinding.decompress(asBuffer(payload))), rawLength);
    },
  };
}

const zstdByLevel = new Map<number, Codec>();

export const DEFAULT_ZSTD_LEVEL = 3;

/** The codec for a spec; zstd levels outside 1..22 are refused by name. */
export function codecFor(spec: CodecSpec): Codec {
  if (spec.name === 'none') return noneCodec;
  if (spec.name === 'lz4') return lz4Codec;
  const level = spec.level ?? DEFAULT_ZSTD_LEVEL;
  if (!Number.isInteger(level) || level < ZSTD_MIN_LEVEL || level > ZSTD_MAX_LEVEL) {
    throw new RangeError(`zstd level must be a whole number from ${ZSTD_MIN_LEVEL} to ${ZSTD_MAX_LEVEL}, got ${level}`);
  }
  let codec = zstdByLevel.get(level);
  if (codec === undefined) {
    codec = zstdCodec(level);
    zstdByLevel.set(level, codec);
  }
  return codec;
}

/** The codec a frame's id names, for decoding (the level does not matter to a decoder). */
export function codecById(id: number): Codec | undefined {
  if (id === CODEC_IDS.none) return noneCodec;
  if (id === CODEC_IDS.lz4) return lz4Codec;
  if (id === CODEC_IDS.zstd) return codecFor({ name: 'zstd' });
  return undefined;
}

/** `zstd-9`, `lz4`, `none`: one label per spec, for metrics and tables. */
export function codecLabel(spec: CodecSpec): string {
  return spec.name === 'zstd' ? `zstd-${spec.level ?? DEFAULT_ZSTD_LEVEL}` : spec.name;
}
