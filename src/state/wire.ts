/**
 * The wire schema of `/dwcp/sync/1.0.0` (proto in ./proto/sync.proto): a
 * SyncMessage (or a heartbeat) as protobuf bytes, and those bytes inside a
 * codec frame (src/codec/frame.ts: LZ4 on datacenter links, zstd on internet
 * ones, none for small frames) as they travel.
 *
 * Invariants:
 * - decodeSyncFrame returns only fully validated messages: every key names a
 *   known type and a valid name, every state decodes as its type (so the core
 *   never merges garbage), clocks list each region once with a positive
 *   count, ids fit 32 bits, lists and byte fields are within the bounds
 *   below; anything else is a FrameError('schema') naming the field.
 * - Encoding does not re-validate the states (they come from our own CRDT
 *   modules, and decoding every state again on the way out would double the
 *   CPU cost of a sync); it does run the bounds a receiver checks on lists.
 * - Decoded byte fields are copies, never views of the frame.
 */
import { FrameError } from '../net/framing.ts';
import {
  FieldError,
  decodeProto,
  loadProto,
  requireBool,
  requireBytes,
  requireEnum,
  requireMessage,
  requireMessages,
  requireString,
  requireStrings,
  requireUint,
  requireUint64,
} from '../net/schema.ts';
import { decompressFrame, compressFrame } from '../codec/frame.ts';
import { CodecError, type CodecSpec } from '../codec/codecs.ts';
import type { LinkMode } from '../federation/link-mode.ts';
import type { Hlc } from './clock/hlc.ts';
import { clockCounters, type VectorClock } from './clock/vector-clock.ts';
import { MAX_REGION_LENGTH, StateDecodeError } from './crdt/decode.ts';
import { ENTRY_HASH_BYTES, MAX_ENTRY_BYTES, readKey, splitKey, stateBytes, stateFromBytes } from './entry.ts';
import type { EntrySummary, EntryUpdate, EntryWant, ReplicaStatus, SyncMessage } from './messages.ts';
import { DIGEST_BYTES, NUM_BUCKETS } from './reconcile.ts';

export const SYNC_PROTOCOL = '/dwcp/sync/1.0.0';

/** Items in one list of one message; the core's batches are far smaller (maxBatchEntries is at most 65536). */
export const SYNC_MAX_ITEMS = 65_536;
/** Regions in one vector clock. */
export const SYNC_MAX_REGIONS = 1024;
const MAX_STATE_VECTOR_BYTES = 64 * 1024;
/**
 * One frame, compressed or not: a batch of the largest configurable size
 * (16 MiB) plus one oversized entry and the per-entry overhead.
 */
export const SYNC_MAX_FRAME_BYTES = 24 * 1024 * 1024;
/** Frames below this go uncompressed: the codec header and CPU would cost more than they save. */
export const SYNC_MIN_COMPRESS_BYTES = 512;

export type SyncFrame = SyncMessage | { readonly kind: 'heartbeat'; readonly intervalMs: number };

const proto = loadProto(new URL('./proto/sync.proto', import.meta.url));
const FrameProto = proto.lookupType('dwcp.state.v1.SyncFrame');

/** Each frame kind and its member of SyncFrame's `kind` oneof. */
const WIRE_NAME = {
  heartbeat: 'heartbeat',
  push: 'push',
  'push-ack': 'pushAck',
  read: 'read',
  'read-reply': 'readReply',
  digest: 'digest',
  summaries: 'summaries',
  want: 'want',
  updates: 'updates',
  'status-request': 'statusRequest',
  'status-reply': 'statusReply',
} as const satisfies Record<SyncFrame['kind'], string>;
type WireName = (typeof WIRE_NAME)[keyof typeof WIRE_NAME];
const WIRE_NAMES = Object.values(WIRE_NAME);

// ------------------------------------------------------------ wire -> core

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

function requireCount(o: Record<string, unknown>, field: string): number {
  const value = requireUint64(o, field);
  if (value > MAX_SAFE) throw new FieldError(field, `is ${value}, above 2^53 - 1`);
  return Number(value);
}

/** A decode error of the state layer (whose field path starts at what `run` was given) as a schema error. */
function asField<T>(run: () => T): T {
  try {
    return run();
  } catch (err) {
    if (!(err instanceof StateDecodeError)) throw err;
    const prefix = `${err.field}: `;
    throw new FieldError(err.field, err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message);
  }
}

/** A plain copy: decoded byte fields are views of the frame (and Buffers, whose slice() is a view too). */
function copied(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes);
}

function requireKey(o: Record<string, unknown>, field: string): string {
  const raw = requireString(o, field, { max: 2048 });
  return asField(() => readKey(raw, field));
}

function validateCounter(o: Record<string, unknown>): [string, number] {
  const region = requireString(o, 'region', { max: MAX_REGION_LENGTH });
  const count = requireCount(o, 'count');
  if (count < 1) throw new FieldError('count', 'must be at least 1 (a region at 0 is left out)');
  return [region, count];
}

function requireClock(o: Record<string, unknown>, field: string): VectorClock {
  const clock = new Map<string, number>();
  requireMessages(o, field, validateCounter, { maxItems: SYNC_MAX_REGIONS }).forEach(([region, count], i) => {
    if (clock.has(region)) throw new FieldError(`${field}[${i}].region`, `repeats region "${region}"`);
    clock.set(region, count);
  });
  return clock;
}

function validateHlc(o: Record<string, unknown>): Hlc {
  return { wallMs: requireCount(o, 'wallMs'), logical: requireCount(o, 'logical') };
}

function validateUpdate(o: Record<string, unknown>): EntryUpdate {
  const key = requireKey(o, 'key');
  const { type } = splitKey(key);
  const bytes = requireBytes(o, 'state', { max: MAX_ENTRY_BYTES, optional: true });
  const state = asField(() => stateFromBytes(type, copied(bytes), 'state'));
  const delta = requireBool(o, 'delta');
  return {
    key,
    type,
    state,
    clock: requireClock(o, 'clock'),
    expiresAt: o.expiresAt === null || o.expiresAt === undefined ? null : requireMessage(o, 'expiresAt', validateHlc),
    since: delta ? requireClock(o, 'since') : null,
  };
}

function requireHash(o: Record<string, unknown>, field: string): Uint8Array {
  const hash = requireBytes(o, field, { max: ENTRY_HASH_BYTES });
  if (hash.byteLength !== ENTRY_HASH_BYTES) throw new FieldError(field, `is ${hash.byteLength} bytes, expected ${ENTRY_HASH_BYTES}`);
  return copied(hash);
}

function requireStateVector(o: Record<string, unknown>): Uint8Array {
  return copied(requireBytes(o, 'stateVector', { max: MAX_STATE_VECTOR_BYTES, optional: true }));
}

function validateSummary(o: Record<string, unknown>): EntrySummary {
  return { key: requireKey(o, 'key'), clock: requireClock(o, 'clock'), hash: requireHash(o, 'hash'), stateVector: requireStateVector(o) };
}

function validateWant(o: Record<string, unknown>): EntryWant {
  return { key: requireKey(o, 'key'), clock: requireClock(o, 'clock'), stateVector: requireStateVector(o) };
}

const items = { maxItems: SYNC_MAX_ITEMS };

function requireUpdates(o: Record<string, unknown>): EntryUpdate[] {
  return requireMessages(o, 'updates', validateUpdate, items);
}

function requireKeys(o: Record<string, unknown>, field: string): string[] {
  return requireStrings(o, field, { max: 2048, maxItems: SYNC_MAX_ITEMS }).map((raw, i) => asField(() => readKey(raw, `${field}[${i}]`)));
}

function requireBuckets(o: Record<string, unknown>): number[] {
  const list = o.buckets;
  if (!Array.isArray(list) || list.length > NUM_BUCKETS) throw new FieldError('buckets', `must be a list of at most ${NUM_BUCKETS} bucket numbers`);
  return list.map((b: unknown, i) => {
    if (typeof b !== 'number' || !Number.isInteger(b) || b < 0 || b >= NUM_BUCKETS) throw new FieldError(`buckets[${i}]`, `must be a bucket number from 0 to ${NUM_BUCKETS - 1}, got ${String(b)}`);
    return b;
  });
}

function requireId(o: Record<string, unknown>, field = 'id'): number {
  return requireUint(o, field);
}

function validateBody(name: WireName, o: Record<string, unknown>): SyncFrame {
  switch (name) {
    case 'heartbeat':
      return { kind: 'heartbeat', intervalMs: requireUint(o, 'intervalMs') };
    case 'push':
      return { kind: 'push', id: requireId(o), updates: requireUpdates(o) };
    case 'pushAck':
      return { kind: 'push-ack', id: requireId(o), behind: requireKeys(o, 'behind') };
    case 'read':
      return { kind: 'read', id: requireId(o), keys: requireKeys(o, 'keys') };
    case 'readReply':
      return { kind: 'read-reply', id: requireId(o), updates: requireUpdates(o) };
    case 'digest': {
      const buckets = requireBytes(o, 'buckets', { max: DIGEST_BYTES });
      if (buckets.byteLength !== DIGEST_BYTES) throw new FieldError('buckets', `is ${buckets.byteLength} bytes, expected ${DIGEST_BYTES} (${NUM_BUCKETS} digests)`);
      return { kind: 'digest', session: requireId(o, 'session'), buckets: copied(buckets) };
    }
    case 'summaries':
      return {
        kind: 'summaries',
        session: requireId(o, 'session'),
        summaries: requireMessages(o, 'summaries', validateSummary, items),
        buckets: requireBuckets(o),
        done: requireBool(o, 'done'),
        truncated: requireBool(o, 'truncated'),
      };
    case 'want':
      return { kind: 'want', session: requireId(o, 'session'), wants: requireMessages(o, 'wants', validateWant, items), done: requireBool(o, 'done') };
    case 'updates':
      return {
        kind: 'updates',
        session: requireId(o, 'session'),
        reply: requireBool(o, 'reply'),
        updates: requireUpdates(o),
        done: requireBool(o, 'done'),
        truncated: requireBool(o, 'truncated'),
      };
    case 'statusRequest':
      return { kind: 'status-request', id: requireId(o) };
    case 'statusReply': {
      const digest = requireBytes(o, 'digest', { max: 32 });
      if (digest.byteLength !== 32) throw new FieldError('digest', `is ${digest.byteLength} bytes, expected 32`);
      const status: ReplicaStatus = { digest: copied(digest), entries: requireCount(o, 'entries'), clock: requireClock(o, 'clock') };
      return { kind: 'status-reply', id: requireId(o), status };
    }
  }
}

function validateFrame(o: Record<string, unknown>): SyncFrame {
  const name = requireEnum(o, 'kind', WIRE_NAMES);
  return requireMessage(o, name, (body) => validateBody(name, body));
}

/** One SyncFrame's protobuf bytes, validated; throws FrameError('schema') naming the field. */
export function decodeSyncMessage(bytes: Uint8Array): SyncFrame {
  return decodeProto(FrameProto, bytes, validateFrame, { strictFields: true });
}

// ------------------------------------------------------------ core -> wire

function updateToWire(u: EntryUpdate): Record<string, unknown> {
  return {
    key: u.key,
    state: stateBytes(u.type, u.state),
    clock: clockCounters(u.clock),
    ...(u.expiresAt === null ? {} : { expiresAt: { wallMs: u.expiresAt.wallMs, logical: u.expiresAt.logical } }),
    delta: u.since !== null,
    since: u.since === null ? [] : clockCounters(u.since),
  };
}

function checkItems(field: string, n: number): void {
  if (n > SYNC_MAX_ITEMS) throw new FrameError('schema', `dwcp.state.v1.SyncFrame: field ${field} has ${n} entries, above the ${SYNC_MAX_ITEMS}-entry limit`);
}

function bodyToWire(frame: SyncFrame): Record<string, unknown> {
  switch (frame.kind) {
    case 'heartbeat':
      return { intervalMs: frame.intervalMs };
    case 'push':
    case 'read-reply':
      checkItems('updates', frame.updates.length);
      return { id: frame.id, updates: frame.updates.map(updateToWire) };
    case 'push-ack':
      checkItems('behind', frame.behind.length);
      return { id: frame.id, behind: frame.behind };
    case 'read':
      checkItems('keys', frame.keys.length);
      return { id: frame.id, keys: frame.keys };
    case 'digest':
      return { session: frame.session, buckets: frame.buckets };
    case 'summaries':
      checkItems('summaries', frame.summaries.length);
      return {
        session: frame.session,
        summaries: frame.summaries.map((s) => ({ key: s.key, clock: clockCounters(s.clock), hash: s.hash, stateVector: s.stateVector })),
        buckets: frame.buckets,
        done: frame.done,
        truncated: frame.truncated,
      };
    case 'want':
      checkItems('wants', frame.wants.length);
      return { session: frame.session, wants: frame.wants.map((w) => ({ key: w.key, clock: clockCounters(w.clock), stateVector: w.stateVector })), done: frame.done };
    case 'updates':
      checkItems('updates', frame.updates.length);
      return { session: frame.session, reply: frame.reply, updates: frame.updates.map(updateToWire), done: frame.done, truncated: frame.truncated };
    case 'status-request':
      return { id: frame.id };
    case 'status-reply':
      return { id: frame.id, digest: frame.status.digest, entries: frame.status.entries, clock: clockCounters(frame.status.clock) };
  }
}

export function encodeSyncMessage(frame: SyncFrame): Uint8Array {
  const wire = FrameProto.fromObject({ [WIRE_NAME[frame.kind]]: bodyToWire(frame) });
  return FrameProto.encode(wire).finish();
}

// ------------------------------------------------------------ codec frames

/** The codec for a frame of `rawBytes` on a link of `mode`. */
export function syncCodecFor(mode: LinkMode, rawBytes: number): CodecSpec {
  if (rawBytes < SYNC_MIN_COMPRESS_BYTES) return { name: 'none' };
  return mode === 'internet' ? { name: 'zstd', level: 3 } : { name: 'lz4' };
}

/** A frame ready for the stream: the message's protobuf inside a codec frame. */
export async function sealSyncFrame(frame: SyncFrame, mode: LinkMode): Promise<{ bytes: Uint8Array; rawBytes: number }> {
  const raw = encodeSyncMessage(frame);
  return { bytes: await compressFrame(raw, syncCodecFor(mode, raw.byteLength)), rawBytes: raw.byteLength };
}

/** Unwraps and decodes one received frame; a bad codec frame is a FrameError('malformed'). */
export async function openSyncFrame(bytes: Uint8Array): Promise<{ frame: SyncFrame; rawBytes: number }> {
  let raw: Uint8Array;
  try {
    raw = (await decompressFrame(bytes, SYNC_MAX_FRAME_BYTES)).raw;
  } catch (err) {
    if (err instanceof CodecError) throw new FrameError('malformed', `codec frame refused: ${err.message}`);
    throw err;
  }
  return { frame: decodeSyncMessage(raw), rawBytes: raw.byteLength };
}
