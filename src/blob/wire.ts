/**
 * The messages of /dwcp/blob/1.0.0 (proto/blob.proto) as typed, bounded
 * values, the chunk-list encoding that travels in ManifestParts, and the
 * need bitmap of an Accept.
 *
 * Invariants:
 * - A message that decodes is well-formed and within the bounds below; what
 *   it claims (sizes that add up, a chunk list that hashes to the version) is
 *   checked by `decodeManifest` and the receiver, before anything is written.
 * - The chunk list is encoded against the baseline the offer names: a run of
 *   chunks the baseline has in the same order is one BASE op (start, count),
 *   any other chunk is a NEW op (length, SHA-256). A 1 GiB value with 1 % of
 *   its blocks rewritten (4 KiB chunks) needs ~0.3 MB of list instead of ~6 MB.
 *   The decoder refuses any op that is truncated, out of the baseline's
 *   range, longer than the chunking's maximum, or that overruns the declared
 *   count or size.
 */
import type { ChunkingOptions } from './chunker.ts';
import { validateChunking } from './chunker.ts';
import { adoptHashList, chunkHashList, type ChunkRef, type Manifest } from './manifest.ts';
import protobuf from 'protobufjs';
import { Uint8ArrayList } from 'uint8arraylist';
import { WireCursor } from '../net/wire-cursor.ts';
import type { MessageSchema } from '../net/schema.ts';
import { FrameError } from '../net/framing.ts';
import { FieldError, loadProto, partsPrefix, partsSchema, protoSchema, requireBool, requireBytes, requireEnum, requireMessage, requireString, requireUint, requireUint64 } from '../net/schema.ts';
import { FRAME_HEADER_BYTES } from '../codec/frame.ts';
import { DwcpError } from '../errors.ts';
import { writeVarint } from '../net/wire-cursor.ts';

export const BLOB_PROTOCOL = '/dwcp/blob/1.0.0';

/** Largest chunk any member may cut (chunking.maxSize); keeps one chunk well inside a batch. */
export const BLOB_MAX_CHUNK_BYTES = 1024 * 1024;
/** Largest raw size of one Batch frame: the decompression-bomb bound on the data streams. */
export const BLOB_MAX_BATCH_RAW_BYTES = 4 * 1024 * 1024;
/** Largest ManifestPart payload. */
export const BLOB_MANIFEST_PART_BYTES = 1024 * 1024;
/** Largest chunk count of one value (a 64 GiB value at 256-byte minimum chunks would need more; the limit says so). */
export const BLOB_MAX_CHUNKS = 64 * 1024 * 1024;
/**
 * Fits the largest message: a Batch of BLOB_MAX_BATCH_RAW_BYTES that did not
 * compress (sent as `none`, so raw + frame header) plus tags and lengths, or
 * an Accept whose need bitmap covers BLOB_MAX_CHUNKS (8 MiB).
 */
export const BLOB_MAX_FRAME_BYTES = 8 * 1024 * 1024 + 64 * 1024;
const MAX_TEXT = 1024;
export const BLOB_REJECT_CODES = ['baseline_missing', 'busy', 'too_large', 'invalid'] as const;
export type BlobRejectCode = (typeof BLOB_REJECT_CODES)[number];

const HEX64 = /^[0-9a-f]{64}$/;
const HEX32 = /^[0-9a-f]{32}$/;

export interface Offer {
  transferId: string;
  attempt: number;
  key: string;
  version: string;
  size: number;
  chunking: ChunkingOptions;
  chunkCount: number;
  /** '' for a full transfer. */
  baselineVersion: string;
  manifestBytes: number;
}

export interface Accept {
  need: Uint8Array;
  resumed: boolean;
  needChunks: number;
  needBytes: number;
}

export type BlobMessage =
  | { kind: 'offer'; offer: Offer }
  | { kind: 'manifestPart'; manifestPart: { data: Uint8Array } }
  | { kind: 'accept'; accept: Accept }
  | { kind: 'reject'; reject: { code: BlobRejectCode; message: string } }
  | { kind: 'join'; join: { transferId: string; attempt: number } }
  | { kind: 'batch'; batch: { first: number; count: number; frame: Uint8Array } }
  | { kind: 'ack'; ack: { first: number; count: number } }
  | { kind: 'finish'; finish: Record<string, never> }
  | { kind: 'committed'; committed: { version: string } }
  | { kind: 'failed'; failed: { code: string; message: string } }
  | { kind: 'keepAlive'; keepAlive: Record<string, never> };

export type BlobMessageKind = BlobMessage['kind'];

const proto = loadProto(new URL('./proto/blob.proto', import.meta.url));

function matching(o: Record<string, unknown>, field: string, pattern: RegExp, what: string, optional = false): string {
  const value = requireString(o, field, { max: 64, optional });
  if (value !== '' && !pattern.test(value)) throw new FieldError(field, `must be ${what}, got ${JSON.stringify(value)}`);
  return value;
}

function safeUint64(o: Record<string, unknown>, field: string): number {
  const value = requireUint64(o, field);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new FieldError(field, `is ${value}, above 2^53`);
  return Number(value);
}

function validateChunkingField(o: Record<string, unknown>): ChunkingOptions {
  const c = { minSize: requireUint(o, 'minSize', { min: 64 }), avgSize: requireUint(o, 'avgSize', { min: 65 }), maxSize: requireUint(o, 'maxSize', { min: 66, max: BLOB_MAX_CHUNK_BYTES }) };
  try {
    validateChunking(c);
  } catch (err) {
    throw new FieldError('minSize', (err as Error).message);
  }
  return c;
}

function validateOffer(o: Record<string, unknown>): Offer {
  const offer: Offer = {
    transferId: matching(o, 'transferId', HEX32, '32 hex digits'),
    attempt: requireUint(o, 'attempt', { min: 1, max: 1_000_000 }),
    key: requireString(o, 'key', { max: MAX_TEXT }),
    version: matching(o, 'version', HEX64, '64 hex digits (a value hash)'),
    size: safeUint64(o, 'size'),
    chunking: requireMessage(o, 'chunking', validateChunkingField),
    chunkCount: requireUint(o, 'chunkCount', { max: BLOB_MAX_CHUNKS }),
    baselineVersion: matching(o, 'baselineVersion', HEX64, '64 hex digits or empty', true),
    manifestBytes: requireUint(o, 'manifestBytes'),
  };
  // Every chunk but the last is at least minSize and none exceeds maxSize, so the count is bounded both ways by the size.
  const { minSize, maxSize } = offer.chunking;
  const fewest = Math.ceil(offer.size / maxSize);
  const most = offer.size === 0 ? 0 : Math.floor(offer.size / minSize) + 1;
  if (offer.chunkCount < fewest || offer.chunkCount > most) {
    throw new FieldError('chunkCount', `is ${offer.chunkCount}, but a ${offer.size}-byte value cut into chunks of ${minSize}..${maxSize} bytes has ${fewest}..${most}`);
  }
  const longest = offer.chunkCount * (1 + 5 + 32);
  if (offer.manifestBytes > longest) throw new FieldError('manifestBytes', `is ${offer.manifestBytes}, above the ${longest} bytes ${offer.chunkCount} chunks can take`);
  return offer;
}

function validateAccept(o: Record<string, unknown>): Accept {
  return {
    need: requireBytes(o, 'need', { max: BLOB_MAX_CHUNKS / 8, optional: true }),
    resumed: requireBool(o, 'resumed'),
    needChunks: requireUint(o, 'needChunks', { max: BLOB_MAX_CHUNKS }),
    needBytes: safeUint64(o, 'needBytes'),
  };
}

function validateBlobMessage(o: Record<string, unknown>): BlobMessage {
  const kind = requireEnum(o, 'kind', ['offer', 'manifestPart', 'accept', 'reject', 'join', 'batch', 'ack', 'finish', 'committed', 'failed', 'keepAlive']);
  switch (kind) {
    case 'offer':
      return { kind, offer: requireMessage(o, kind, validateOffer) };
    case 'manifestPart':
      return { kind, manifestPart: requireMessage(o, kind, (m) => ({ data: requireBytes(m, 'data', { max: BLOB_MANIFEST_PART_BYTES }) })) };
    case 'accept':
      return { kind, accept: requireMessage(o, kind, validateAccept) };
    case 'reject':
      return {
        kind,
        reject: requireMessage(o, kind, (m) => ({ code: requireEnum(m, 'code', BLOB_REJECT_CODES), message: requireString(m, 'message', { max: MAX_TEXT, optional: true }) })),
      };
    case 'join':
      return { kind, join: requireMessage(o, kind, (m) => ({ transferId: matching(m, 'transferId', HEX32, '32 hex digits'), attempt: requireUint(m, 'attempt', { min: 1, max: 1_000_000 }) })) };
    case 'batch':
      return {
        kind,
        batch: requireMessage(o, kind, (m) => ({
          first: requireUint(m, 'first', { max: BLOB_MAX_CHUNKS }),
          count: requireUint(m, 'count', { min: 1, max: BLOB_MAX_CHUNKS }),
          frame: requireBytes(m, 'frame', { max: BLOB_MAX_BATCH_RAW_BYTES + FRAME_HEADER_BYTES }),
        })),
      };
    case 'ack':
      return { kind, ack: requireMessage(o, kind, (m) => ({ first: requireUint(m, 'first', { max: BLOB_MAX_CHUNKS }), count: requireUint(m, 'count', { min: 1, max: BLOB_MAX_CHUNKS }) })) };
    case 'finish':
      return { kind, finish: {} };
    case 'keepAlive':
      return { kind, keepAlive: {} };
    case 'committed':
      return { kind, committed: requireMessage(o, kind, (m) => ({ version: matching(m, 'version', HEX64, '64 hex digits') })) };
    case 'failed':
      return { kind, failed: requireMessage(o, kind, (m) => ({ code: requireString(m, 'code', { max: 64 }), message: requireString(m, 'message', { max: MAX_TEXT, optional: true }) })) };
  }
}

const BLOB_MESSAGE = proto.lookupType('dwcp.blob.v1.BlobMessage');

/** Both directions of both stream kinds share one union; each side checks the kinds it expects where it expects them. */
export const BlobMessageSchema: MessageSchema<BlobMessage> = protoSchema(BLOB_MESSAGE, validateBlobMessage, { strictFields: true });

/**
 * What a member writes: a BlobMessage, except that a batch's frame may be
 * given as parts (the codec frame's header, then its payload as the chunks
 * lie in the store's read buffer), which go to the stream without being
 * copied into one array first. On the wire it is the same Batch.
 */
export type BlobMessageOut = Exclude<BlobMessage, { kind: 'batch' }> | { kind: 'batch'; batch: { first: number; count: number; frame: Uint8Array | readonly Uint8Array[] } };

const MAX_BATCH_FRAME_BYTES = BLOB_MAX_BATCH_RAW_BYTES + FRAME_HEADER_BYTES;
/** Protobuf tags (field number << 3 | wire type) of BlobMessage.batch and Batch's fields. */
const TAG = { batch: (6 << 3) | 2, first: (1 << 3) | 0, count: (2 << 3) | 0, frame: (3 << 3) | 2 } as const;

function batchField(field: string, problem: string): FrameError {
  return new FrameError('schema', `${BLOB_MESSAGE.fullName.replace(/^\./, '')}: field batch.${field} ${problem}`);
}

/**
 * A Batch's encoding as parts: the protobuf tags and lengths (what protobufjs
 * would write, byte for byte: fields in number order, zeros left out), then the
 * frame's parts as given. Checks what validateBlobMessage checks of a batch.
 */
function batchParts(batch: { first: number; count: number; frame: readonly Uint8Array[] }): Uint8Array[] {
  const frameBytes = batch.frame.reduce((sum, part) => sum + part.byteLength, 0);
  if (!Number.isSafeInteger(batch.first) || batch.first < 0 || batch.first > BLOB_MAX_CHUNKS) throw batchField('first', `is ${batch.first}, outside 0..${BLOB_MAX_CHUNKS}`);
  if (!Number.isSafeInteger(batch.count) || batch.count < 1 || batch.count > BLOB_MAX_CHUNKS) throw batchField('count', `is ${batch.count}, outside 1..${BLOB_MAX_CHUNKS}`);
  if (frameBytes === 0) throw batchField('frame', 'is required');
  if (frameBytes > MAX_BATCH_FRAME_BYTES) throw batchField('frame', `is ${frameBytes} bytes long, above the ${MAX_BATCH_FRAME_BYTES}-byte limit`);
  const writer = protobuf.Writer.create();
  // proto3 leaves a field at its default (0) out, as protobufjs does.
  if (batch.first !== 0) writer.uint32(TAG.first).uint32(batch.first);
  const fields = writer.uint32(TAG.count).uint32(batch.count).uint32(TAG.frame).uint32(frameBytes).finish();
  return [partsPrefix(TAG.batch, fields, frameBytes), ...batch.frame];
}

/**
 * What a member reads: a BlobMessage, except that a batch's frame is a list
 * of the parts it arrived in (views of the stream's chunks, nothing copied),
 * which the receiver copies once, into the chunk verifier's buffer.
 */
export type BlobMessageIn = Exclude<BlobMessage, { kind: 'batch' }> | { kind: 'batch'; batch: { first: number; count: number; frame: Uint8ArrayList } };

/** Longest head of a Batch message before its frame's bytes: four tags and four 5-byte varints. */
const MAX_BATCH_HEAD_BYTES = 4 * (1 + 5);

/**
 * A BlobMessage.batch in exactly the shape batchParts writes (first left out
 * when 0), its frame a sublist of `frame`, validated as validateBlobMessage
 * validates a batch; undefined for anything else, which the full decode and
 * its strict checks then accept or refuse as they would any message.
 */
function parseBatch(frame: Uint8ArrayList): BlobMessageIn | undefined {
  // A view when the first part holds the whole head (nearly always); a copy of at most 24 bytes when not.
  const head = frame.subarray(0, Math.min(frame.byteLength, MAX_BATCH_HEAD_BYTES));
  // Tags as single bytes, lengths and numbers as minimal varints (what batchParts writes): protobufjs' uint32()
  // would also take a 6- to 10-byte or overflowing varint that its decode refuses as a length or a tag.
  const c = new WireCursor(head);
  if (!c.tag(TAG.batch) || c.varint() !== frame.byteLength - c.at) return undefined;
  let first = 0;
  if (c.tag(TAG.first)) {
    first = c.varint();
    // batchParts leaves a 0 out: a written-out 0 is not its shape (nor is -1, a varint that is not minimal).
    if (first < 1) return undefined;
  }
  if (!c.tag(TAG.count)) return undefined;
  const count = c.varint();
  if (!c.tag(TAG.frame)) return undefined;
  const frameBytes = c.varint();
  if (frameBytes !== frame.byteLength - c.at) return undefined;
  // A varint past the head's end reads as -1: not the shape; the full decode says what is wrong.
  if (first > BLOB_MAX_CHUNKS || count < 1 || count > BLOB_MAX_CHUNKS || frameBytes < 1 || frameBytes > MAX_BATCH_FRAME_BYTES) return undefined;
  return { kind: 'batch', batch: { first, count, frame: frame.sublist(c.at) } };
}

function asInbound(msg: BlobMessage): BlobMessageIn {
  return msg.kind === 'batch' ? { kind: 'batch', batch: { ...msg.batch, frame: new Uint8ArrayList(msg.batch.frame) } } : msg;
}

/** The inbound schema of a blob channel: BlobMessageSchema, with batches in the shape batchParts writes parsed from their parts. */
export const BlobMessageInSchema: MessageSchema<BlobMessageIn> = partsSchema(BlobMessageSchema, parseBatch, asInbound, (msg): BlobMessage =>
  msg.kind === 'batch' ? { kind: 'batch', batch: { ...msg.batch, frame: msg.batch.frame.subarray() } } : msg,
);

/** The outbound schema of a blob channel: BlobMessageSchema, with batches written from their parts. */
export const BlobMessageOutSchema: MessageSchema<BlobMessageOut> = {
  name: BlobMessageSchema.name,
  decode: (bytes) => BlobMessageSchema.decode(bytes),
  encode: (msg) => Buffer.concat(BlobMessageOutSchema.encodeParts?.(msg) ?? []),
  encodeParts: (msg) => {
    if (msg.kind !== 'batch') return [BlobMessageSchema.encode(msg)];
    const { frame } = msg.batch;
    return batchParts({ ...msg.batch, frame: frame instanceof Uint8Array ? [frame] : frame });
  },
};

// ------------------------------------------------------------------ chunk list encoding

/** How far from where the baseline would continue encodeManifest looks for a chunk. */
const NEAR = 4;
/** NEW chunks in a row after which encodeManifest also searches the whole baseline (content moved, not rewritten). */
const SEARCH_AFTER_MISSES = 8;
const OP_NEW = 0;
const OP_BASE = 1;
const HASH_BYTES = 32;
/** One chunk in a hash list: length u32 | SHA-256. */
const ENTRY_BYTES = 4 + HASH_BYTES;


/** Longest op: tag + two 8-byte varints (BASE) or tag + a 5-byte varint + a hash (NEW). */
const MAX_OP_BYTES = 1 + 5 + HASH_BYTES;

export interface EncodedManifest {
  bytes: Uint8Array;
  /** Value bytes covered by BASE ops: what the receiver takes from its baseline. */
  reusedBytes: number;
}

/**
 * The chunk list of `target` as ops against `baseline` (all NEW without one).
 * Walks both lists side by side, looking a few places around where the
 * baseline would continue (a rewrite or insert resumes the old content
 * nearby); only after SEARCH_AFTER_MISSES new chunks in a row does it index
 * the whole baseline by hash, to find content that moved far. A 1 GiB value
 * with scattered rewrites thus costs a few string comparisons per chunk and
 * no index of 170 000 hashes; a chunk that exists only far away in the
 * baseline may then go as NEW, which costs bytes, never correctness.
 */
export function encodeManifest(target: Manifest, baseline: Manifest | undefined): EncodedManifest {
  const base = baseline?.chunks ?? [];
  let index: Map<string, number> | undefined;
  const find = (hash: string): number | undefined => {
    if (index === undefined) {
      index = new Map();
      for (const [i, c] of base.entries()) if (!index.has(c.hash)) index.set(c.hash, i);
    }
    return index.get(hash);
  };
  /** The baseline chunk with this hash within a few places of `at`, where an edit usually resumes the old content. */
  const near = (at: number, hash: string): number | undefined => {
    for (let d = 0; d <= NEAR; d++) {
      if (at + d < base.length && (base[at + d] as ChunkRef).hash === hash) return at + d;
      if (d > 0 && at - d >= 0 && at - d < base.length && (base[at - d] as ChunkRef).hash === hash) return at - d;
    }
    return undefined;
  };
  const chunks = target.chunks;
  const out = Buffer.allocUnsafe(chunks.length * MAX_OP_BYTES);
  let pos = 0;
  let reusedBytes = 0;
  /** Where the baseline would continue if the target kept following it. */
  let expected = 0;
  let misses = 0;
  for (let i = 0; i < chunks.length; ) {
    const c = chunks[i] as ChunkRef;
    const start = base.length === 0 ? undefined : (near(expected, c.hash) ?? (misses >= SEARCH_AFTER_MISSES ? find(c.hash) : undefined));
    if (start !== undefined) {
      let n = 1;
      reusedBytes += c.length;
      while (i + n < chunks.length && start + n < base.length && (base[start + n] as ChunkRef).hash === (chunks[i + n] as ChunkRef).hash) {
        reusedBytes += (chunks[i + n] as ChunkRef).length;
        n++;
      }
      out[pos++] = OP_BASE;
      pos = writeVarint(out, pos, start);
      pos = writeVarint(out, pos, n);
      i += n;
      expected = start + n;
      misses = 0;
      continue;
    }
    misses++;
    out[pos++] = OP_NEW;
    pos = writeVarint(out, pos, c.length);
    pos += out.write(c.hash, pos, HASH_BYTES, 'hex');
    i++;
    // A rewritten chunk usually replaces one of the same place: look there first for the next.
    expected++;
  }
  return { bytes: out.subarray(0, pos), reusedBytes };
}

export class ManifestDecodeError extends DwcpError<'corrupt'> {
  constructor(message: string) {
    super('corrupt', message);
  }
}

export interface DecodedManifest {
  manifest: Manifest;
  /** Bit i set: chunk i came from a BASE op, i.e. the receiver holds it in its baseline. */
  fromBaseline: Uint8Array;
}

/**
 * Rebuilds and checks the manifest an offer describes; throws
 * ManifestDecodeError naming the problem. The value hash's binary list is
 * built as it goes, from the wire's hashes and the baseline's own list, so
 * checking a 1 GiB value's root converts no hex.
 */
export function decodeManifest(offer: Offer, bytes: Uint8Array, baseline: Manifest | undefined): DecodedManifest {
  const fail = (problem: string): never => {
    throw new ManifestDecodeError(`chunk list of ${offer.key}@${offer.version}: ${problem}`);
  };
  const { maxSize } = offer.chunking;
  const chunks: ChunkRef[] = [];
  const fromBaseline = new Uint8Array(bitmapBytes(offer.chunkCount));
  const list = Buffer.allocUnsafe(8 + offer.chunkCount * ENTRY_BYTES);
  const baseList = baseline === undefined ? undefined : chunkHashList(baseline.size, baseline.chunks).list;
  let pos = 0;
  let offset = 0;
  const varint = (): number => {
    let value = 0;
    for (let i = 0; i < 8; i++) {
      if (pos >= bytes.byteLength) return fail(`truncated inside a number at byte ${pos}`);
      const b = bytes[pos++] as number;
      value += (b & 0x7f) * 2 ** (7 * i);
      if (b < 0x80) return value;
    }
    return fail(`number longer than 8 bytes at byte ${pos}`);
  };
  while (pos < bytes.byteLength) {
    if (chunks.length >= offer.chunkCount) fail(`more than the ${offer.chunkCount} chunks the offer declares`);
    const op = bytes[pos++];
    if (op === OP_NEW) {
      const length = varint();
      if (length < 1 || length > maxSize) fail(`chunk ${chunks.length} is ${length} bytes, outside 1..${maxSize}`);
      if (pos + HASH_BYTES > bytes.byteLength) fail(`truncated inside the hash of chunk ${chunks.length}`);
      const at = 8 + chunks.length * ENTRY_BYTES;
      list.writeUInt32BE(length, at);
      list.set(bytes.subarray(pos, pos + HASH_BYTES), at + 4);
      chunks.push({ offset, length, hash: Buffer.from(bytes.buffer, bytes.byteOffset + pos, HASH_BYTES).toString('hex') });
      pos += HASH_BYTES;
      offset += length;
    } else if (op === OP_BASE) {
      if (baseline === undefined || baseList === undefined) return fail(`refers to a baseline at byte ${pos - 1}, but the offer names none`);
      const start = varint();
      const count = varint();
      if (count < 1 || start + count > baseline.chunks.length) fail(`baseline run ${start}+${count} is outside its ${baseline.chunks.length} chunks`);
      if (chunks.length + count > offer.chunkCount) fail(`more than the ${offer.chunkCount} chunks the offer declares`);
      baseList.copy(list, 8 + chunks.length * ENTRY_BYTES, 8 + start * ENTRY_BYTES, 8 + (start + count) * ENTRY_BYTES);
      for (let k = start; k < start + count; k++) {
        const c = baseline.chunks[k] as ChunkRef;
        setBit(fromBaseline, chunks.length);
        chunks.push({ offset, length: c.length, hash: c.hash });
        offset += c.length;
      }
    } else {
      fail(`unknown op ${op} at byte ${pos - 1}`);
    }
    if (offset > offer.size) fail(`chunks run past the declared ${offer.size} bytes`);
  }
  if (chunks.length !== offer.chunkCount) fail(`${chunks.length} chunks, the offer declares ${offer.chunkCount}`);
  if (offset !== offer.size) fail(`chunks cover ${offset} bytes, the offer declares ${offer.size}`);
  list.writeUInt32BE(Math.floor(offset / 2 ** 32), 0);
  list.writeUInt32BE(offset >>> 0, 4);
  const hash = adoptHashList(offset, chunks, list);
  if (hash !== offer.version) fail(`hashes to ${hash}, not the offered version`);
  return { manifest: { key: offer.key, version: hash, size: offset, hash, chunking: { ...offer.chunking }, chunks }, fromBaseline };
}

// ------------------------------------------------------------------ need bitmap

export function bitmapBytes(bits: number): number {
  return Math.ceil(bits / 8);
}

export function setBit(map: Uint8Array, i: number): void {
  map[i >> 3] = (map[i >> 3] as number) | (1 << (i & 7));
}

/** Whether bit `i` is set (a bit past the map's end reads as clear). */
export function hasBit(map: Uint8Array, i: number): boolean {
  return (((map[i >> 3] ?? 0) >> (i & 7)) & 1) === 1;
}

/** The chunk indices whose bits are set, in order; bits past `count` must be clear. */
export function setBits(map: Uint8Array, count: number): number[] {
  if (map.byteLength !== bitmapBytes(count)) throw new RangeError(`need bitmap is ${map.byteLength} bytes, ${count} chunks take ${bitmapBytes(count)}`);
  const out: number[] = [];
  for (let byte = 0; byte < map.byteLength; byte++) {
    const b = map[byte] as number;
    if (b === 0) continue;
    for (let bit = 0; bit < 8; bit++) {
      if ((b & (1 << bit)) === 0) continue;
      const i = byte * 8 + bit;
      if (i >= count) throw new RangeError(`need bitmap sets bit ${i}, past the ${count} chunks`);
      out.push(i);
    }
  }
  return out;
}
