/**
 * The key-value state machine's snapshot format, and what a valid state is.
 *
 * Layout: the 4 ASCII bytes "DWKV", a version byte (KV_SNAPSHOT_VERSION), a
 * protobuf KvSnapshot body, and a CRC-32 (little-endian) of everything before
 * it. The checksum catches corruption at rest or in transfer before any
 * parsing; the schema then checks every field and the cross-field invariants:
 * keys unique and in UTF-8 byte order, sessions in eviction order with unique
 * client IDs, no revision after the applied index, the state within its own
 * limits.
 *
 * Invariants: the encoding is canonical (entries by key, sessions by last
 * index, protobuf fields in number order), so equal states give equal bytes
 * and snapshot → restore → snapshot is byte-identical; encode validates too,
 * so a snapshot this code writes is one it can restore.
 *
 * The entries (nearly all of a snapshot) are encoded by hand to the bytes
 * protobufjs would write for them (a property test holds the two to byte
 * equality): through protobufjs' generic path, 100 000 keys took seconds of
 * the event loop and ~90 MB of transient memory per snapshot. The small rest
 * (limits, sessions, fleet) still goes through the schema, validation
 * included. kvSnapshotSource sizes the snapshot when it is called and
 * encodes the entries later, a piece at a time into one reused buffer, so
 * Raft writes a snapshot to disk without ever holding it whole; a state
 * machine that keeps count of its entries' encoded bytes is sized without a
 * pass over them, and each entry is checked as it is encoded.
 */
import zlib from 'node:zlib';
import { Buffer } from 'node:buffer';
import { FieldError, requireBytes, requireMessage, requireMessages, requireUint } from '../net/schema.ts';
import { KvDecodeError, kvCodec } from './decode-error.ts';
import { countFieldBytes, fieldBytes, writeVarint } from '../net/wire-cursor.ts';
import type { KvEntry, KvWriteResult } from './command.ts';
import {
  compareKeys,
  isKvWriteResult,
  KV_MAX_KEY_BYTES,
  KV_MAX_VALUE_BYTES,
  kvEntryFootprint,
  kvProto,
  kvResultToWire,
  requireClientId,
  requireCount,
  reshapedSchema,
  validateKvEntry,
  validateKvResult,
} from './command.ts';
import { DwcpError } from '../errors.ts';
import type { SnapshotSource } from '../consensus/raft/types.ts';

export const KV_SNAPSHOT_VERSION = 1;
/** The fleet's share of a snapshot: about 1 KiB per VM record at the fleet's default limit of a million VMs fits with room. */
export const KV_SNAPSHOT_MAX_FLEET_BYTES = 1024 * 1024 * 1024;
const MAGIC = Buffer.from('DWKV', 'ascii');
const HEADER_BYTES = MAGIC.byteLength + 1;
const CHECKSUM_BYTES = 4;

/**
 * Part of the replicated state machine's definition: every replica must run
 * with the same limits, so they are recorded in the snapshot and a restored
 * replica keeps the ones it was created with.
 */
export interface KvLimits {
  /** Client sessions kept for at-most-once writes; the least recently used is evicted beyond. */
  readonly maxSessions: number;
  /** Bound on the sum of kvEntryFootprint over all keys; a write past it fails with quota_exceeded. */
  readonly maxStateBytes: number;
}

export const DEFAULT_KV_LIMITS: KvLimits = { maxSessions: 10_000, maxStateBytes: 256 * 1024 * 1024 };

/**
 * Caps that keep the largest snapshot (the state plus at most ~512 bytes per
 * session) under RaftConfig.maxSnapshotBytes' default of 1 GiB, and far from
 * protobuf's 2 GiB message limit.
 */
export const KV_LIMIT_CAPS: KvLimits = { maxSessions: 100_000, maxStateBytes: 512 * 1024 * 1024 };

export interface KvSession {
  readonly clientId: string;
  /** The highest seq applied for this client. */
  readonly lastSeq: number;
  /** Log index of the client's last write command: the LRU eviction order. */
  readonly lastIndex: number;
  readonly result: KvWriteResult;
}

export interface KvSnapshotState {
  readonly appliedIndex: number;
  readonly limits: KvLimits;
  /** In compareKeys order. */
  readonly entries: readonly KvEntry[];
  /** In lastIndex order, least recently used first. */
  readonly sessions: readonly KvSession[];
  /** The fleet state machine's snapshot (src/fleet/state-machine.ts); empty when it never applied a fleet command. */
  readonly fleet: Uint8Array;
}

/**
 * The entries a snapshot is encoded from: an array, or a view that builds
 * each entry when asked (a streamed snapshot then holds no KvEntry per key
 * while its pieces are written).
 */
export interface KvEntryList {
  readonly length: number;
  at(index: number): KvEntry | undefined;
  /**
   * What the entries take in the snapshot (the sum of kvSnapshotEntryBytes),
   * when the list's owner keeps that count: the source is then sized at once
   * and each entry is checked as it is encoded, instead of every entry when
   * the source is taken (a pass over the whole state that stalled a member).
   */
  readonly encodedBytes?: number;
  /** Called once, when the source's pieces stop being read (the last one, a failure, or the reader giving up): the list may let go of what it kept for them. */
  release?(): void;
}

export type KvSnapshotInput = Omit<KvSnapshotState, 'entries'> & { readonly entries: KvEntryList };

/** Size of the pieces kvSnapshotSource yields (an entry larger than this gets a piece of its own). */
export const KV_SNAPSHOT_CHUNK_BYTES = 256 * 1024;

export class KvSnapshotError extends DwcpError<'corrupt'> {
  constructor(message: string) {
    super('corrupt', `kv snapshot: ${message}`);
  }
}

/** Throws RangeError naming the limit; fills in DEFAULT_KV_LIMITS. */
export function resolveKvLimits(overrides: Partial<KvLimits> = {}): KvLimits {
  const limits = { ...DEFAULT_KV_LIMITS, ...overrides };
  for (const name of ['maxSessions', 'maxStateBytes'] as const) {
    const value = limits[name];
    if (!Number.isSafeInteger(value) || value < 1 || value > KV_LIMIT_CAPS[name]) {
      throw new RangeError(`kv limits: ${name} must be an integer from 1 to ${KV_LIMIT_CAPS[name]}, got ${value}`);
    }
  }
  return limits;
}

function validateSession(o: Record<string, unknown>): KvSession {
  const session = {
    clientId: requireClientId(o, 'clientId'),
    lastSeq: requireCount(o, 'lastSeq', 1),
    lastIndex: requireCount(o, 'lastIndex', 1),
    result: requireMessage(o, 'result', validateKvResult),
  };
  const { result } = session;
  if (!isKvWriteResult(result)) throw new FieldError('result', `is a ${result.ok ? result.op : result.reason} outcome; a session keeps only write outcomes`);
  if (result.ok && result.revision > session.lastIndex) throw new FieldError('result.revision', `is ${result.revision}, after the session's last index ${session.lastIndex}`);
  return { ...session, result };
}

function checkLimit(value: number, field: string, cap: number): number {
  if (value < 1 || value > cap) throw new FieldError(field, `is ${value}, outside 1..${cap}`);
  return value;
}

function validateSnapshot(o: Record<string, unknown>): KvSnapshotState {
  const appliedIndex = requireCount(o, 'appliedIndex');
  const limits: KvLimits = {
    maxSessions: checkLimit(requireUint(o, 'maxSessions'), 'maxSessions', KV_LIMIT_CAPS.maxSessions),
    maxStateBytes: checkLimit(requireCount(o, 'maxStateBytes'), 'maxStateBytes', KV_LIMIT_CAPS.maxStateBytes),
  };
  const entries = requireMessages(o, 'entries', validateKvEntry, { maxItems: limits.maxStateBytes });
  let stateBytes = 0;
  entries.forEach((entry, i) => {
    const previous = entries[i - 1];
    if (previous !== undefined && compareKeys(previous.key, entry.key) >= 0) {
      throw new FieldError(`entries[${i}].key`, 'is not after the previous key (keys must be unique, in UTF-8 byte order)');
    }
    if (entry.revision > appliedIndex) throw new FieldError(`entries[${i}].revision`, `is ${entry.revision}, after the applied index ${appliedIndex}`);
    stateBytes += kvEntryFootprint(Buffer.byteLength(entry.key, 'utf8'), entry.value.byteLength);
  });
  if (stateBytes > limits.maxStateBytes) throw new FieldError('entries', `take ${stateBytes} bytes, above maxStateBytes ${limits.maxStateBytes}`);
  const sessions = requireMessages(o, 'sessions', validateSession, { maxItems: limits.maxSessions });
  const clientIds = new Set<string>();
  sessions.forEach((session, i) => {
    const previous = sessions[i - 1];
    if (previous !== undefined && previous.lastIndex >= session.lastIndex) {
      throw new FieldError(`sessions[${i}].lastIndex`, `is ${session.lastIndex}, not after the previous session's ${previous.lastIndex}`);
    }
    if (session.lastIndex > appliedIndex) throw new FieldError(`sessions[${i}].lastIndex`, `is ${session.lastIndex}, after the applied index ${appliedIndex}`);
    if (clientIds.has(session.clientId)) throw new FieldError(`sessions[${i}].clientId`, `repeats "${session.clientId}"`);
    clientIds.add(session.clientId);
  });
  // Checked by FleetStateMachine.restore, which knows its format; bounded here.
  const fleet = requireBytes(o, 'fleet', { max: KV_SNAPSHOT_MAX_FLEET_BYTES, optional: true });
  return { appliedIndex, limits, entries, sessions, fleet };
}

function snapshotToWire({ appliedIndex, limits, entries, sessions, fleet }: KvSnapshotState): object {
  return { appliedIndex, ...limits, entries, sessions: sessions.map((session) => ({ ...session, result: kvResultToWire(session.result) })), fleet };
}

const KvSnapshotType = kvProto.lookupType('dwcp.kv.v1.KvSnapshot');
const KvSnapshotSchema = kvCodec(reshapedSchema(KvSnapshotType, snapshotToWire, validateSnapshot));

/** Protobuf tags (field number << 3 | wire type) of KvSnapshot.entries and of KvEntry's fields. */
const TAG = { entries: (4 << 3) | 2, key: (1 << 3) | 2, value: (2 << 3) | 2, revision: 3 << 3, createRevision: 4 << 3 } as const;


function entryAt(entries: KvEntryList, i: number): KvEntry {
  const entry = entries.at(i);
  if (entry === undefined) throw new KvSnapshotError(`entries[${i}] is missing (the list has ${entries.length})`);
  return entry;
}

/** Bytes of a KvEntry's own encoding (without the tag and length that frame it in the snapshot). */
function entrySize(keyBytes: number, valueBytes: number, revision: number, createRevision: number): number {
  // As protobufjs does, an empty value is left out (it decodes to empty bytes all the same).
  return fieldBytes(keyBytes) + (valueBytes === 0 ? 0 : fieldBytes(valueBytes)) + countFieldBytes(revision) + countFieldBytes(createRevision);
}

/** Bytes one entry takes in a snapshot (its tag, length and encoding): what a KvEntryList's encodedBytes sums. */
export function kvSnapshotEntryBytes(keyBytes: number, valueBytes: number, revision: number, createRevision: number): number {
  return fieldBytes(entrySize(keyBytes, valueBytes, revision, createRevision));
}

/** Checks entry i (after `previous`) as validateSnapshot would on the way in; returns its key's UTF-8 length. */
function checkEntry(entry: KvEntry, i: number, previous: KvEntry | undefined, appliedIndex: number): number {
  const { key, value, revision, createRevision } = entry;
  const field = `entries[${i}]`;
  if (key === '' || !key.isWellFormed()) throw new KvSnapshotError(`refusing to write an invalid state: ${field}.key is empty or not well-formed Unicode`);
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes > KV_MAX_KEY_BYTES) throw new KvSnapshotError(`refusing to write an invalid state: ${field}.key is ${bytes} bytes, above ${KV_MAX_KEY_BYTES}`);
  if (value.byteLength > KV_MAX_VALUE_BYTES) throw new KvSnapshotError(`refusing to write an invalid state: ${field}.value is ${value.byteLength} bytes, above ${KV_MAX_VALUE_BYTES}`);
  if (!Number.isSafeInteger(createRevision) || createRevision < 1 || createRevision > revision || !Number.isSafeInteger(revision) || revision > appliedIndex) {
    throw new KvSnapshotError(`refusing to write an invalid state: ${field} has revisions ${createRevision}..${revision} outside 1..${appliedIndex}`);
  }
  if (previous !== undefined && compareKeys(previous.key, key) >= 0) {
    throw new KvSnapshotError(`refusing to write an invalid state: ${field}.key is not after the previous key (keys must be unique, in UTF-8 byte order)`);
  }
  return bytes;
}

function checkStateBytes(stateBytes: number, maxStateBytes: number): void {
  if (stateBytes > maxStateBytes) throw new KvSnapshotError(`refusing to write an invalid state: entries take ${stateBytes} bytes, above maxStateBytes ${maxStateBytes}`);
}

/**
 * Checks the entries as validateSnapshot would on the way in, and sizes
 * them in the same pass: each entry's UTF-8 key length and encoded size,
 * and the total the entries take in the snapshot.
 */
function checkEntries(entries: KvEntryList, appliedIndex: number, maxStateBytes: number): { keyBytes: Uint32Array; entryBytes: Float64Array; total: number } {
  const keyBytes = new Uint32Array(entries.length);
  const entryBytes = new Float64Array(entries.length);
  let total = 0;
  let stateBytes = 0;
  let previous: KvEntry | undefined;
  for (let i = 0; i < entries.length; i++) {
    const entry = entryAt(entries, i);
    const bytes = checkEntry(entry, i, previous, appliedIndex);
    keyBytes[i] = bytes;
    const size = entrySize(bytes, entry.value.byteLength, entry.revision, entry.createRevision);
    entryBytes[i] = size;
    total += fieldBytes(size);
    stateBytes += kvEntryFootprint(bytes, entry.value.byteLength);
    previous = entry;
  }
  checkStateBytes(stateBytes, maxStateBytes);
  return { keyBytes, entryBytes, total };
}

/** Throws KvSnapshotError if `state` breaks an invariant (which is a bug in the caller). */
export function encodeKvSnapshot(state: KvSnapshotInput): Uint8Array {
  const source = kvSnapshotSource(state, Number.POSITIVE_INFINITY);
  // One piece of the exact size: the encoder's own buffer, no copy.
  const [whole, ...more] = [...source.chunks()];
  if (whole === undefined || more.length > 0 || whole.byteLength !== source.byteLength) throw new KvSnapshotError('the encoder did not produce the snapshot in one piece');
  return whole;
}

/**
 * The snapshot of `state`, encoded when its chunks are read, in pieces of
 * about chunkBytes; the entries are read then: `state.entries` must not
 * change until the last piece is out. Everything but the entries is checked
 * now, and the entries now too unless their list keeps its encodedBytes
 * count; then each is checked as it is encoded. Either way an invariant the
 * state breaks (a bug in the caller) throws KvSnapshotError before the last
 * piece, whose checksum completes the snapshot, is handed out.
 */
export function kvSnapshotSource(state: KvSnapshotInput, chunkBytes = KV_SNAPSHOT_CHUNK_BYTES): SnapshotSource {
  const { appliedIndex, limits, entries } = state;
  // Everything but the entries through the schema (validation included); a
  // message's encoding is its fields' encodings in field order, so the
  // entries (field 4) go between the head (fields 1-3) and the rest.
  let rest: Uint8Array;
  try {
    rest = KvSnapshotSchema.encode({ ...state, entries: [] });
  } catch (err) {
    if (err instanceof KvDecodeError) throw new KvSnapshotError(`refusing to write an invalid state: ${err.message}`);
    throw err;
  }
  const head = KvSnapshotType.encode(KvSnapshotType.fromObject({ appliedIndex, ...limits })).finish();
  if (!Buffer.from(rest.buffer, rest.byteOffset, head.byteLength).equals(head)) throw new KvSnapshotError('the encoded head of the snapshot is not where it was expected');
  // Checked and sized now, or (a list that keeps count) checked as encoded.
  const sized = entries.encodedBytes === undefined ? checkEntries(entries, appliedIndex, limits.maxStateBytes) : null;
  const total = sized?.total ?? (entries.encodedBytes as number);
  const byteLength = HEADER_BYTES + rest.byteLength + total + CHECKSUM_BYTES;
  const tail = rest.subarray(head.byteLength);

  function* chunks(): Generator<Uint8Array> {
    try {
      yield* encode();
    } finally {
      entries.release?.();
    }
  }

  function* encode(): Generator<Uint8Array> {
    let out = Buffer.allocUnsafe(Math.min(chunkBytes, byteLength));
    let at = 0;
    let crc = 0;
    let produced = 0;
    // Makes room for `bytes` more: hands out what is filled first, when it must.
    function* room(bytes: number): Generator<Uint8Array> {
      if (at + bytes <= out.length) return;
      if (at > 0) {
        const piece = out.subarray(0, at);
        crc = zlib.crc32(piece, crc);
        produced += at;
        yield piece;
      }
      at = 0;
      if (bytes > out.length) out = Buffer.allocUnsafe(bytes);
    }
    yield* room(HEADER_BYTES + head.byteLength);
    MAGIC.copy(out, at);
    out[at + MAGIC.byteLength] = KV_SNAPSHOT_VERSION;
    at += HEADER_BYTES;
    out.set(head, at);
    at += head.byteLength;
    let previous: KvEntry | undefined;
    let stateBytes = 0;
    let entriesBytes = 0;
    for (let i = 0; i < entries.length; i++) {
      const entry = entryAt(entries, i);
      let keyBytes: number;
      let size: number;
      if (sized !== null) {
        keyBytes = sized.keyBytes[i] as number;
        size = sized.entryBytes[i] as number;
      } else {
        keyBytes = checkEntry(entry, i, previous, appliedIndex);
        size = entrySize(keyBytes, entry.value.byteLength, entry.revision, entry.createRevision);
        stateBytes += kvEntryFootprint(keyBytes, entry.value.byteLength);
        previous = entry;
      }
      const framed = fieldBytes(size);
      entriesBytes += framed;
      yield* room(framed);
      out[at++] = TAG.entries;
      at = writeVarint(out, at, size);
      out[at++] = TAG.key;
      at = writeVarint(out, at, keyBytes);
      at += out.write(entry.key, at, 'utf8');
      if (entry.value.byteLength > 0) {
        out[at++] = TAG.value;
        at = writeVarint(out, at, entry.value.byteLength);
        out.set(entry.value, at);
        at += entry.value.byteLength;
      }
      out[at++] = TAG.revision;
      at = writeVarint(out, at, entry.revision);
      out[at++] = TAG.createRevision;
      at = writeVarint(out, at, entry.createRevision);
    }
    checkStateBytes(stateBytes, limits.maxStateBytes);
    if (entriesBytes !== total) throw new KvSnapshotError(`the entries took ${entriesBytes} bytes, not the ${total} their list counted`);
    yield* room(tail.byteLength);
    out.set(tail, at);
    at += tail.byteLength;
    // The checksum covers everything before it, in whichever pieces it went out.
    const checksum = zlib.crc32(out.subarray(0, at), crc);
    yield* room(CHECKSUM_BYTES);
    out.writeUInt32LE(checksum, at);
    at += CHECKSUM_BYTES;
    if (produced + at !== byteLength) throw new KvSnapshotError(`encoded ${produced + at} bytes, expected ${byteLength}`);
    yield out.subarray(0, at);
  }
  return { byteLength, chunks };
}

/** Throws KvSnapshotError naming what is wrong; entry values are views of `bytes`. */
export function decodeKvSnapshot(bytes: Uint8Array): KvSnapshotState {
  const data = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (data.byteLength < HEADER_BYTES + CHECKSUM_BYTES) {
    throw new KvSnapshotError(`is ${data.byteLength} bytes, shorter than the ${HEADER_BYTES + CHECKSUM_BYTES}-byte envelope`);
  }
  if (!data.subarray(0, MAGIC.byteLength).equals(MAGIC)) throw new KvSnapshotError('does not start with "DWKV": not a key-value snapshot');
  const version = data[MAGIC.byteLength];
  if (version !== KV_SNAPSHOT_VERSION) throw new KvSnapshotError(`version is ${version}; this build reads version ${KV_SNAPSHOT_VERSION}`);
  const end = data.byteLength - CHECKSUM_BYTES;
  const expected = data.readUInt32LE(end);
  const actual = zlib.crc32(data.subarray(0, end));
  if (actual !== expected) {
    throw new KvSnapshotError(`checksum is 0x${actual.toString(16)}, the snapshot says 0x${expected.toString(16)} (corrupted)`);
  }
  try {
    return KvSnapshotSchema.decode(data.subarray(HEADER_BYTES, end));
  } catch (err) {
    if (err instanceof KvDecodeError) throw new KvSnapshotError(err.message);
    throw err;
  }
}
