/**
 * The direct codec of the forward exchange's frames (/dwcp/kv/2.0.0): a
 * follower's KvForwardRequests and the leader's KvForwardResponses written
 * and read by hand, without protobufjs' fromObject/toObject round trip, the
 * decimal-string uint64s and the generic field validators. Two thirds of the
 * puts at 64 clients are forwarded (clients talk to every member), and each
 * forwarded put's request and response were encoded and decoded once each
 * through the schema path: ~0.5 s of the members' 25 s of CPU in a 10 s
 * run (bench/RESULTS.md, raft, branch raft4).
 *
 * Invariants (the schema path in command.ts stays the definition; this is a
 * shortcut that must never disagree with it):
 * - encodeForwardRequests / encodeForwardResponses return exactly the bytes
 *   the schema path writes for the same frame (fields in field-number order,
 *   a proto3 zero id left out, as protobufjs does), or null for anything they do not handle or that the
 *   receiver would refuse (a bound broken, a command that does not decode, a
 *   response other than a put's or a cas's success); the caller then takes
 *   the schema path, which encodes it or throws the error naming the field.
 *   So, as on the schema path, nothing is sent that the peer must refuse.
 * - decodeForwardRequests / decodeForwardResponses return what the schema
 *   path's decode returns for the same bytes (the same items, fields in the
 *   same order, the command a view of the input of the input's own type), or
 *   null for anything but the layout the encoders write of a frame within
 *   every bound: an unknown, repeated, missing or reordered field, a
 *   non-minimal varint, a length past its message, a bound broken. Null sends
 *   the caller to the schema path, which accepts what protobuf tolerates and
 *   names the error of what it refuses, so the accepted encodings and the
 *   errors are unchanged.
 */
import { Buffer } from 'node:buffer';
import { WireCursor, WireWriter, countFieldBytes, fieldBytes } from '../net/wire-cursor.ts';
import type { KvEntryMeta, KvForwardRequest, KvForwardResponse } from './command.ts';

/** Bounds of command.ts (KV_MAX_COMMAND_BYTES, KV_FORWARD_MAX_TIMEOUT_MS, KV_FORWARD_MAX_BATCH), repeated here to keep this module free of a cycle; command.ts checks they agree. */
export const FORWARD_WIRE_BOUNDS = { commandBytes: 1024 * 1024 + 2048, timeoutMs: 60_000, batch: 1024 } as const;

/** Whether an encoded command decodes (the check both ends make of a forwarded command). */
export type CommandCheck = (command: Uint8Array) => boolean;

// Tags: (field number << 3) | wire type; 2 = length-delimited, 0 = varint.
const TAG_ITEM = 0x0a; // KvForwardRequests.requests, KvForwardResponses.responses
const TAG_COMMAND = 0x0a;
const TAG_TIMEOUT = 0x10;
const TAG_RESULT = 0x0a; // KvForwardResponse.result
const TAG_ID = 0x18; // KvForwardRequest.id, KvForwardResponse.id
const TAG_OUTCOME_PUT = 0x0a; // KvResult.put
const TAG_OUTCOME_CAS = 0x1a; // KvResult.cas
const TAG_REVISION = 0x08; // WriteResult.revision, KvEntryMeta.revision
const TAG_PREV = 0x12; // WriteResult.prev
const TAG_CREATE_REVISION = 0x10; // KvEntryMeta.create_revision

const MAX_UINT32 = 0xffffffff;

function isUint32(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= MAX_UINT32;
}

function isRevision(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 1;
}

/** The id's field: protobufjs leaves a proto3 zero out, so id 0 takes no bytes. */
function idBytes(id: number): number {
  return id === 0 ? 0 : countFieldBytes(id);
}

function writeId(w: WireWriter, id: number): void {
  if (id !== 0) w.count(TAG_ID, id);
}

/** The id at the cursor, ending its message at `end`: 0 when left out, -1 for anything else (an explicit 0 included). */
function readId(c: WireCursor, end: number): number {
  let id = 0;
  if (c.tag(TAG_ID)) {
    id = c.varint();
    if (id < 1) return -1;
  }
  return id > MAX_UINT32 || c.at !== end ? -1 : id;
}

function requestBytes(r: KvForwardRequest): number {
  return fieldBytes(r.command.byteLength) + countFieldBytes(r.timeoutMs) + idBytes(r.id);
}

/** The schema path's bytes for a frame of valid requests; null for anything else. */
export function encodeForwardRequests(requests: readonly KvForwardRequest[], commandOk: CommandCheck): Buffer | null {
  if (!Array.isArray(requests) || requests.length === 0 || requests.length > FORWARD_WIRE_BOUNDS.batch) return null;
  let total = 0;
  for (const r of requests) {
    if (typeof r !== 'object' || r === null) return null;
    const { command, timeoutMs, id } = r;
    if (!(command instanceof Uint8Array) || command.byteLength === 0 || command.byteLength > FORWARD_WIRE_BOUNDS.commandBytes) return null;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > FORWARD_WIRE_BOUNDS.timeoutMs || !isUint32(id)) return null;
    if (!commandOk(command)) return null;
    total += fieldBytes(requestBytes(r));
  }
  const w = new WireWriter(Buffer.allocUnsafe(total));
  for (const r of requests) {
    w.count(TAG_ITEM, requestBytes(r));
    w.bytes(TAG_COMMAND, r.command);
    w.count(TAG_TIMEOUT, r.timeoutMs);
    writeId(w, r.id);
  }
  return w.at === total ? w.out : null;
}

/**
 * The items of a frame (1..batch of them, each a length-delimited field TAG_ITEM), each read by `read` from the
 * cursor up to its item's `end`; null as soon as the frame or an item is not in the layout the encoders write.
 */
function readItems<T>(bytes: Uint8Array, read: (c: WireCursor, end: number) => T | null): T[] | null {
  const c = new WireCursor(bytes);
  const items: T[] = [];
  while (!c.done) {
    if (items.length === FORWARD_WIRE_BOUNDS.batch || !c.tag(TAG_ITEM)) return null;
    const n = c.length();
    if (n < 0) return null;
    const item = read(c, c.at + n);
    if (item === null) return null;
    items.push(item);
  }
  return items.length > 0 ? items : null;
}

/** What the schema path decodes from a frame of requests as encodeForwardRequests writes it; else null. */
export function decodeForwardRequests(bytes: Uint8Array, commandOk: CommandCheck): KvForwardRequest[] | null {
  return readItems(bytes, (c, end) => {
    if (!c.tag(TAG_COMMAND)) return null;
    const size = c.length();
    if (size <= 0 || size > FORWARD_WIRE_BOUNDS.commandBytes) return null;
    const command = bytes.subarray(c.at, c.at + size);
    c.at += size;
    if (!c.tag(TAG_TIMEOUT)) return null;
    const timeoutMs = c.varint();
    if (timeoutMs < 1 || timeoutMs > FORWARD_WIRE_BOUNDS.timeoutMs) return null;
    const id = readId(c, end);
    if (id < 0 || !commandOk(command)) return null;
    return { command, timeoutMs, id };
  });
}

/** A write's success as the direct path carries it: a put's or a cas's revision and the key's previous revisions. */
interface WriteSuccess {
  op: 'put' | 'cas';
  revision: number;
  prev: KvEntryMeta | null;
}

function writeSuccess(response: KvForwardResponse): WriteSuccess | null {
  if (typeof response !== 'object' || response === null || response.kind !== 'result' || !isUint32(response.id)) return null;
  const { result } = response;
  if (typeof result !== 'object' || result === null || !result.ok || (result.op !== 'put' && result.op !== 'cas')) return null;
  const { revision, prev } = result;
  if (!isRevision(revision)) return null;
  if (prev !== null && (typeof prev !== 'object' || !isRevision(prev.revision) || !isRevision(prev.createRevision) || prev.createRevision > prev.revision)) return null;
  return { op: result.op, revision, prev };
}

function prevBytes(prev: KvEntryMeta): number {
  return countFieldBytes(prev.revision) + countFieldBytes(prev.createRevision);
}

function writeResultBytes(s: WriteSuccess): number {
  return countFieldBytes(s.revision) + (s.prev === null ? 0 : fieldBytes(prevBytes(s.prev)));
}

/** KvForwardResponse: the KvResult (one outcome field around the WriteResult), then the id. */
function responseBytes(s: WriteSuccess, id: number): number {
  return fieldBytes(fieldBytes(writeResultBytes(s))) + idBytes(id);
}

/** The schema path's bytes for a frame of put and cas successes; null for a frame holding anything else. */
export function encodeForwardResponses(responses: readonly KvForwardResponse[]): Buffer | null {
  if (!Array.isArray(responses) || responses.length === 0 || responses.length > FORWARD_WIRE_BOUNDS.batch) return null;
  const successes: WriteSuccess[] = [];
  let total = 0;
  for (const response of responses) {
    const s = writeSuccess(response);
    if (s === null) return null;
    successes.push(s);
    total += fieldBytes(responseBytes(s, response.id));
  }
  const w = new WireWriter(Buffer.allocUnsafe(total));
  for (let i = 0; i < successes.length; i++) {
    const s = successes[i] as WriteSuccess;
    const { id } = responses[i] as KvForwardResponse;
    const body = writeResultBytes(s);
    w.count(TAG_ITEM, responseBytes(s, id));
    w.count(TAG_RESULT, fieldBytes(body));
    w.count(s.op === 'put' ? TAG_OUTCOME_PUT : TAG_OUTCOME_CAS, body);
    w.count(TAG_REVISION, s.revision);
    if (s.prev !== null) {
      w.count(TAG_PREV, prevBytes(s.prev));
      w.count(TAG_REVISION, s.prev.revision);
      w.count(TAG_CREATE_REVISION, s.prev.createRevision);
    }
    writeId(w, id);
  }
  return w.at === total ? w.out : null;
}

/** Consumes the tag and length of a length-delimited field `tag` whose body ends exactly at `end`; false if that is not what is next. */
function message(c: WireCursor, tag: number, end: number): boolean {
  if (!c.tag(tag)) return false;
  const n = c.length();
  return n >= 0 && c.at + n === end;
}

/** What the schema path decodes from a frame of put and cas successes as encodeForwardResponses writes it; else null. */
export function decodeForwardResponses(bytes: Uint8Array): KvForwardResponse[] | null {
  return readItems(bytes, (c, end) => {
    if (!c.tag(TAG_RESULT)) return null;
    const resultBytes = c.length();
    if (resultBytes < 0 || c.at + resultBytes > end) return null;
    const resultEnd = c.at + resultBytes;
    const op = c.tag(TAG_OUTCOME_PUT) ? 'put' : c.tag(TAG_OUTCOME_CAS) ? 'cas' : null;
    if (op === null) return null;
    const body = c.length();
    // The WriteResult's fields must lie inside it: an empty one (body 0) or a revision whose varint runs past its
    // end is the schema path's to refuse, not a revision read from the bytes after it.
    if (body < 1 || c.at + body !== resultEnd || !c.tag(TAG_REVISION)) return null;
    const revision = c.varint();
    if (revision < 1 || c.at > resultEnd) return null;
    let prev: KvEntryMeta | null = null;
    if (c.at < resultEnd) {
      if (!message(c, TAG_PREV, resultEnd) || !c.tag(TAG_REVISION)) return null;
      const prevRevision = c.varint();
      if (prevRevision < 1 || !c.tag(TAG_CREATE_REVISION)) return null;
      const createRevision = c.varint();
      if (createRevision < 1 || createRevision > prevRevision || c.at !== resultEnd) return null;
      prev = { revision: prevRevision, createRevision };
    }
    const id = readId(c, end);
    if (id < 0) return null;
    return { id, kind: 'result', result: { ok: true, op, revision, prev } };
  });
}
