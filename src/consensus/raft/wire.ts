/**
 * The Raft transport's wire schema (protocol /dwcp/raft/1.0.0, proto in
 * src/net/proto/raft.proto): how the messages one Ready produced for one peer
 * become frames, and how a received frame becomes messages the core may step.
 * Each frame is a RaftBatch: sender and receiver once, then the messages in
 * the order the core emitted them, each with its own term (a vote grant
 * carries the candidate's term, not the voter's).
 *
 * Invariants:
 * - decodeBatch returns only messages that passed validateMessage for this
 *   node, whose `from` is the authenticated sender, with every count, list and
 *   string within the bounds below; anything else is a FrameError('schema')
 *   naming the field. Indices, terms and sizes are uint64 on the wire and are
 *   refused above 2^53 - 1 rather than rounded.
 * - Encoding runs the receiver's checks first, so we never send a frame a
 *   correct peer must refuse; encodeBatches keeps the messages' order across
 *   the frames it splits them into.
 * - Decoded byte fields (entry data, snapshot chunks) are copies: an entry kept
 *   in the log pins at most the data of the append it arrived in, never the
 *   frame or the muxer's buffer.
 */
import protobuf from 'protobufjs';
import { FrameError } from '../../net/framing.ts';
import { WireCursor, WireWriter, varintBytes } from '../../net/wire-cursor.ts';
import type { MessageSchema } from '../../net/schema.ts';
import {
  FieldError,
  decodeProto,
  encodeProto,
  loadProto,
  requireBool,
  requireBytes,
  requireEnum,
  requireMessage,
  requireMessages,
  requireString,
  requireStrings,
  requireUint64,
} from '../../net/schema.ts';
import type { Entry, Membership, Message, MessageType, NodeId, RaftConfig, SnapshotMeta } from './types.ts';
import { RaftInputError } from './types.ts';
import { validateMessage } from './validate.ts';

export const RAFT_PROTOCOL = '/dwcp/raft/1.0.0';

/**
 * 4 MiB. The largest message a core with default settings sends is an append
 * of maxBytesPerAppend (1 MiB, or one entry of up to maxProposalBytes, 1 MiB)
 * plus at most 2 bytes per entry beyond what entryBytes already counts, or a
 * snapshot chunk of 512 KiB plus its membership. Twice that leaves room for
 * config entries (whose member names count once in entryBytes but cost a tag
 * and length each here) and for the heartbeats and acks sharing the frame,
 * while one frame still crosses a 100 Mbit/s link in about a third of a
 * second. checkRaftConfigForWire holds a config to half of it.
 */
export const RAFT_MAX_FRAME_BYTES = 4 * 1024 * 1024;
/** Bounds the decode work of one frame; a Ready with more messages for one peer is split. */
export const RAFT_MAX_MESSAGES_PER_BATCH = 4096;
/** Four times the default maxEntriesPerAppend; checkRaftConfigForWire refuses configs above it. */
export const RAFT_MAX_ENTRIES_PER_APPEND = 4096;
/** Member names are DNS labels of at most 63 characters; this only bounds hostile input. */
export const RAFT_MAX_NODE_ID = 256;
export const RAFT_MAX_MEMBERS = 1024;
export const RAFT_MAX_CTX = 256;

export interface RaftBatch {
  messages: Message[];
}

const proto = loadProto(new URL('../../net/proto/raft.proto', import.meta.url));
const BatchProto = proto.lookupType('dwcp.raft.v1.RaftBatch');
const MessageProto = proto.lookupType('dwcp.raft.v1.RaftMessage');
const BATCH_NAME = BatchProto.fullName.replace(/^\./, '');
const MESSAGE_NAME = MessageProto.fullName.replace(/^\./, '');

/** Each core message type and the name of its member of RaftMessage's `body` oneof. */
const WIRE_NAME = {
  vote_request: 'voteRequest',
  vote_response: 'voteResponse',
  append: 'append',
  append_response: 'appendResponse',
  heartbeat: 'heartbeat',
  heartbeat_response: 'heartbeatResponse',
  snapshot_chunk: 'snapshotChunk',
  snapshot_response: 'snapshotResponse',
  timeout_now: 'timeoutNow',
  read_index: 'readIndex',
  read_index_response: 'readIndexResponse',
} as const satisfies Record<MessageType, string>;
const MESSAGE_TYPES = Object.keys(WIRE_NAME) as MessageType[];
const WIRE_NAMES = MESSAGE_TYPES.map((type) => WIRE_NAME[type]);
const TYPE_OF = new Map<string, MessageType>(MESSAGE_TYPES.map((type) => [WIRE_NAME[type], type]));

const bodyOneof = MessageProto.oneofs['body'];
for (const name of WIRE_NAMES) {
  if (bodyOneof?.oneof.includes(name) !== true) throw new Error(`raft.proto: RaftMessage.body has no member ${name}`);
}

function fieldTag(type: protobuf.Type, field: string, wireType: number): number {
  const f = type.fields[field];
  if (f === undefined) throw new Error(`raft.proto: ${type.name} has no field ${field}`);
  return (f.id << 3) | wireType;
}
const LENGTH_DELIMITED = 2;
const TAG = {
  from: fieldTag(BatchProto, 'from', LENGTH_DELIMITED),
  to: fieldTag(BatchProto, 'to', LENGTH_DELIMITED),
  message: fieldTag(BatchProto, 'messages', LENGTH_DELIMITED),
};

// ------------------------------------------------------------ wire -> core

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** Up to 15 decimal digits is below 2^53: such a value needs no BigInt detour (the common case, and the hot path). */
const SAFE_DIGITS = /^\d{1,15}$/;

/** A uint64 index, term or size, refused (not rounded) if a double cannot hold it exactly. */
function requireCounter(o: Record<string, unknown>, field: string): number {
  const text = o[field];
  if (typeof text === 'string' && SAFE_DIGITS.test(text)) return Number(text);
  const value = requireUint64(o, field);
  if (value > MAX_SAFE) throw new FieldError(field, `is ${value}, above 2^53 - 1, the largest index, term or size a node can hold`);
  return Number(value);
}

function requireData(o: Record<string, unknown>, field: string): Uint8Array {
  return requireBytes(o, field, { max: RAFT_MAX_FRAME_BYTES, optional: true });
}

const nodeId = { max: RAFT_MAX_NODE_ID };

/**
 * Names and read contexts must survive UTF-8 unchanged: a lone surrogate
 * would arrive as U+FFFD, a different member or a read no one waits for.
 * Only our own encoder can meet one; decoded strings are always well-formed.
 */
function wellFormed(field: string, value: string): string {
  if (!value.isWellFormed()) throw new FieldError(field, 'is not well-formed UTF-16 (it holds a lone surrogate)');
  return value;
}

function requireCtx(o: Record<string, unknown>): string {
  return wellFormed('ctx', requireString(o, 'ctx', { max: RAFT_MAX_CTX, optional: true }));
}

function validateMembership(o: Record<string, unknown>): Membership {
  const membership = {
    voters: requireStrings(o, 'voters', { ...nodeId, maxItems: RAFT_MAX_MEMBERS }),
    learners: requireStrings(o, 'learners', { ...nodeId, maxItems: RAFT_MAX_MEMBERS }),
  };
  // A repeated member would count twice toward a quorum.
  const seen = new Set<NodeId>();
  for (const list of ['voters', 'learners'] as const) {
    for (const [i, id] of membership[list].entries()) {
      wellFormed(`${list}[${i}]`, id);
      if (seen.has(id)) throw new FieldError(`${list}[${i}]`, `repeats member "${id}"`);
      seen.add(id);
    }
  }
  return membership;
}

function validateEntry(o: Record<string, unknown>): Entry {
  const index = requireCounter(o, 'index');
  const term = requireCounter(o, 'term');
  return requireEnum(o, 'kind', ['normal', 'config']) === 'normal'
    ? { kind: 'normal', index, term, data: requireData(o, 'normal') }
    : { kind: 'config', index, term, membership: requireMessage(o, 'config', validateMembership) };
}

function validateSnapshotMeta(o: Record<string, unknown>): SnapshotMeta {
  return { index: requireCounter(o, 'index'), term: requireCounter(o, 'term'), membership: requireMessage(o, 'membership', validateMembership) };
}

interface Envelope {
  from: NodeId;
  to: NodeId;
  term: number;
}

function validateBody(type: MessageType, o: Record<string, unknown>, env: Envelope): Message {
  switch (type) {
    case 'vote_request':
      return {
        type,
        ...env,
        preVote: requireBool(o, 'preVote'),
        transfer: requireBool(o, 'transfer'),
        lastIndex: requireCounter(o, 'lastIndex'),
        lastTerm: requireCounter(o, 'lastTerm'),
      };
    case 'vote_response':
      return { type, ...env, preVote: requireBool(o, 'preVote'), granted: requireBool(o, 'granted') };
    case 'append':
      return {
        type,
        ...env,
        prevIndex: requireCounter(o, 'prevIndex'),
        prevTerm: requireCounter(o, 'prevTerm'),
        entries: requireMessages(o, 'entries', validateEntry, { maxItems: RAFT_MAX_ENTRIES_PER_APPEND }),
        commit: requireCounter(o, 'commit'),
      };
    case 'append_response':
      return {
        type,
        ...env,
        success: requireBool(o, 'success'),
        index: requireCounter(o, 'index'),
        hintIndex: requireCounter(o, 'hintIndex'),
        hintTerm: requireCounter(o, 'hintTerm'),
      };
    case 'heartbeat':
      return { type, ...env, commit: requireCounter(o, 'commit'), readSeq: requireCounter(o, 'readSeq') };
    case 'heartbeat_response':
      return { type, ...env, readSeq: requireCounter(o, 'readSeq') };
    case 'snapshot_chunk':
      return {
        type,
        ...env,
        meta: requireMessage(o, 'meta', validateSnapshotMeta),
        offset: requireCounter(o, 'offset'),
        totalBytes: requireCounter(o, 'totalBytes'),
        data: requireData(o, 'data'),
      };
    case 'snapshot_response':
      return { type, ...env, index: requireCounter(o, 'index'), nextOffset: requireCounter(o, 'nextOffset') };
    case 'timeout_now':
      return { type, ...env };
    case 'read_index':
      return { type, ...env, ctx: requireCtx(o) };
    case 'read_index_response':
      return { type, ...env, ctx: requireCtx(o), index: requireCounter(o, 'index') };
  }
}

/** One RaftMessage, checked first by its schema and then by the core's own validateMessage. */
function validateRaftMessage(o: Record<string, unknown>, from: NodeId, to: NodeId): Message {
  const wireName = requireEnum(o, 'body', WIRE_NAMES);
  const type = TYPE_OF.get(wireName) as MessageType;
  const env = { from, to, term: requireCounter(o, 'term') };
  const message = requireMessage(o, wireName, (body) => validateBody(type, body, env));
  try {
    validateMessage(message, to);
  } catch (err) {
    if (err instanceof RaftInputError) throw new FieldError(wireName, `fails the core's check (${err.message})`);
    throw err;
  }
  return message;
}

interface Expected {
  from: NodeId;
  to: NodeId;
}

/** from and to of a batch: bounded names, and when `expect` is given, the authenticated ones. */
function validateEnvelope(o: Record<string, unknown>, expect?: Expected): Expected {
  const from = wellFormed('from', requireString(o, 'from', nodeId));
  const to = wellFormed('to', requireString(o, 'to', nodeId));
  if (expect !== undefined && from !== expect.from) throw new FieldError('from', `is "${from}", but the authenticated sender is "${expect.from}"`);
  if (expect !== undefined && to !== expect.to) throw new FieldError('to', `is "${to}", but this node is "${expect.to}"`);
  if (from === to) throw new FieldError('from', `is "${from}", the same node as to`);
  return { from, to };
}

function validateBatch(o: Record<string, unknown>, expect?: Expected): RaftBatch {
  const { from, to } = validateEnvelope(o, expect);
  const messages = requireMessages(o, 'messages', (m) => validateRaftMessage(m, from, to), { maxItems: RAFT_MAX_MESSAGES_PER_BATCH });
  if (messages.length === 0) throw new FieldError('messages', 'is empty: a batch carries at least one message');
  return { messages };
}

/**
 * The message with its byte fields copied out of the frame, so what the core
 * keeps does not pin the frame (or the muxer chunk it is a view of). An
 * append's entries share one new buffer: one allocation per append rather than
 * per entry (small allocations took most of the decode time of small
 * entries), and those entries sit next to each other in the log.
 */
function ownData(m: Message): Message {
  if (m.type === 'snapshot_chunk') return { ...m, data: copyOf(m.data, new Uint8Array(m.data.byteLength), 0) };
  if (m.type !== 'append' || m.entries.length === 0) return m;
  let total = 0;
  for (const e of m.entries) if (e.kind === 'normal') total += e.data.byteLength;
  const slab = new Uint8Array(total);
  let at = 0;
  const entries = m.entries.map((e): Entry => {
    if (e.kind === 'config') return e;
    const data = copyOf(e.data, slab, at);
    at += data.byteLength;
    return { ...e, data };
  });
  return { ...m, entries };
}

/** Copies `view` into `into` at `at` and returns the copy. */
function copyOf(view: Uint8Array, into: Uint8Array, at: number): Uint8Array {
  into.set(view, at);
  return into.subarray(at, at + view.byteLength);
}

/** A hot message's body at the cursor (which ends where the body does), as validateBody builds it, or null. */
function decodeHotBody(tag: number, c: WireCursor, env: Envelope): Message | null {
  switch (tag) {
    case 0x22: {
      const prevIndex = c.count(0x08);
      const prevTerm = c.count(0x10);
      const entries: Entry[] = [];
      while (c.tag(0x1a)) {
        const n = c.length();
        if (n < 0 || entries.length === RAFT_MAX_ENTRIES_PER_APPEND) return null;
        const entryEnd = c.at + n;
        const outer = c.end;
        c.end = entryEnd;
        const index = c.count(0x08);
        const term = c.count(0x10);
        // A normal entry's data ends the entry; a config entry (or anything else) is the schema path's.
        const size = c.tag(0x1a) ? c.length() : -1;
        if (index < 0 || term < 0 || size < 0 || c.at + size !== entryEnd) return null;
        entries.push({ kind: 'normal', index, term, data: c.bytes.subarray(c.at, entryEnd) });
        c.at = entryEnd;
        c.end = outer;
      }
      const commit = c.count(0x20);
      if (prevIndex < 0 || prevTerm < 0 || commit < 0) return null;
      return { type: 'append', ...env, prevIndex, prevTerm, entries, commit };
    }
    case 0x2a: {
      const flag = c.count(0x08);
      const index = c.count(0x10);
      const hintIndex = c.count(0x18);
      const hintTerm = c.count(0x20);
      if (flag < 0 || flag > 1 || index < 0 || hintIndex < 0 || hintTerm < 0) return null;
      return { type: 'append_response', ...env, success: flag === 1, index, hintIndex, hintTerm };
    }
    case 0x32: {
      const commit = c.count(0x08);
      const readSeq = c.count(0x10);
      return commit < 0 || readSeq < 0 ? null : { type: 'heartbeat', ...env, commit, readSeq };
    }
    case 0x3a: {
      const readSeq = c.count(0x08);
      return readSeq < 0 ? null : { type: 'heartbeat_response', ...env, readSeq };
    }
    default:
      return null;
  }
}

/**
 * The steady state's frames read by hand: a batch of hot messages (see
 * encodeHotMessage) in the layout encodeBatches writes, every check of the
 * schema path passed, gives what the schema path gives (the same messages,
 * fields in the same order, data still views of the frame until ownData).
 * Anything else (another message type, a field out of order, repeated or
 * unknown, a bound or a check failed) is null, and the schema path decides,
 * with strictFields, and names the error: so the frames accepted and the
 * errors given are the schema path's alone. A follower decodes every append;
 * the schema path's toObject with decimal-string uint64s and its second,
 * strict pass were ~2.5 % of the members' CPU at 64 clients. Exported, with
 * decodeSchemaBatch, for raft-wire.test.ts, which holds the two to one answer.
 */
export function decodeHotBatch(bytes: Uint8Array, expect?: Expected): RaftBatch | null {
  const c = new WireCursor(bytes);
  const from = c.tag(TAG.from) ? c.text(3 * RAFT_MAX_NODE_ID) : null;
  const to = c.tag(TAG.to) ? c.text(3 * RAFT_MAX_NODE_ID) : null;
  if (from === null || to === null || from.length > RAFT_MAX_NODE_ID || to.length > RAFT_MAX_NODE_ID || from === to) return null;
  if (expect !== undefined && (from !== expect.from || to !== expect.to)) return null;
  const messages: Message[] = [];
  while (!c.done) {
    if (!c.tag(TAG.message) || messages.length === RAFT_MAX_MESSAGES_PER_BATCH) return null;
    const n = c.length();
    if (n < 0) return null;
    const messageEnd = c.at + n;
    c.end = messageEnd;
    const term = c.count(0x08);
    const tag = c.done ? -1 : (c.bytes[c.at++] as number);
    const bodyLength = c.length();
    if (term < 0 || bodyLength < 0 || c.at + bodyLength !== messageEnd) return null;
    const message = decodeHotBody(tag, c, { from, to, term });
    if (message === null || !c.done) return null;
    try {
      validateMessage(message, to);
    } catch {
      return null;
    }
    messages.push(message);
    c.end = bytes.byteLength;
  }
  return messages.length === 0 ? null : { messages };
}

/** The schema path: every frame, strictly. */
export function decodeSchemaBatch(bytes: Uint8Array, expect?: Expected): RaftBatch {
  return decodeProto(BatchProto, bytes, (o) => validateBatch(o, expect), { strictFields: true });
}

function decodeRaftBatch(bytes: Uint8Array, expect?: Expected): RaftBatch {
  if (bytes.byteLength > RAFT_MAX_FRAME_BYTES) {
    throw new FrameError('oversized', `${BATCH_NAME} of ${bytes.byteLength} bytes exceeds the ${RAFT_MAX_FRAME_BYTES}-byte limit`);
  }
  const { messages } = decodeHotBatch(bytes, expect) ?? decodeSchemaBatch(bytes, expect);
  return { messages: messages.map(ownData) };
}

/**
 * Decode and validate one frame; `from` must equal the authenticated sender's
 * member name and `to` this node's, else FrameError('schema', ...) naming the
 * field and both values.
 */
export function decodeBatch(bytes: Uint8Array, expect: Expected): Message[] {
  return decodeRaftBatch(bytes, expect).messages;
}

// ------------------------------------------------------------ core -> wire

function schemaError(detail: string): FrameError {
  return new FrameError('schema', `${BATCH_NAME}: ${detail}`);
}

function entryToWire(entry: Entry): Record<string, unknown> {
  return entry.kind === 'normal'
    ? { index: entry.index, term: entry.term, normal: entry.data }
    : { index: entry.index, term: entry.term, config: entry.membership };
}

function messageToWire(m: Message): Record<string, unknown> {
  const { type, from: _from, to: _to, term, ...body } = m;
  const wireBody = m.type === 'append' ? { ...body, entries: m.entries.map(entryToWire) } : body;
  return { term, [WIRE_NAME[type]]: wireBody };
}

// The steady state's messages (appends of normal entries, their acks,
// heartbeats and theirs) are written by hand: the leader encodes every append
// once per follower, and protobufjs' fromObject/toObject round trip with
// decimal-string uint64s took ~3 % of the members' CPU at 64 clients. The
// bytes are protobufjs' own (fields in number order, proto3 zeros left out, a
// oneof's member written even when empty); raft-wire.test.ts compares the two.

/** Byte length of the body fields of a hot message (without the RaftMessage wrapper), or -1 when it is not one. */
function hotBodyLength(m: Message): number {
  const field = (tag: number, n: number) => (n === 0 ? 0 : varintBytes(tag) + varintBytes(n));
  switch (m.type) {
    case 'append': {
      if (m.entries.length > RAFT_MAX_ENTRIES_PER_APPEND) return -1;
      let size = field(0x08, m.prevIndex) + field(0x10, m.prevTerm) + field(0x20, m.commit);
      for (const e of m.entries) {
        if (e.kind !== 'normal' || e.data.byteLength > RAFT_MAX_FRAME_BYTES) return -1;
        const entry = field(0x08, e.index) + field(0x10, e.term) + 1 + varintBytes(e.data.byteLength) + e.data.byteLength;
        size += 1 + varintBytes(entry) + entry;
      }
      return size;
    }
    case 'append_response':
      if (typeof m.success !== 'boolean') return -1;
      return (m.success ? 2 : 0) + field(0x10, m.index) + field(0x18, m.hintIndex) + field(0x20, m.hintTerm);
    case 'heartbeat':
      return field(0x08, m.commit) + field(0x10, m.readSeq);
    case 'heartbeat_response':
      return field(0x08, m.readSeq);
    default:
      return -1;
  }
}

const HOT_TAG = { append: 0x22, append_response: 0x2a, heartbeat: 0x32, heartbeat_response: 0x3a } as const;

/**
 * The RaftMessage bytes of a hot message that validateMessage accepted, or
 * null for any other (the schema path encodes it). What the receiver's
 * validator checks beyond validateMessage (entry count, data size, kinds,
 * booleans) is checked here, so the guarantee of encodeMessage holds.
 * Exported for raft-wire.test.ts, which checks the steady state takes it.
 */
export function encodeHotMessage(m: Message): Uint8Array | null {
  const body = hotBodyLength(m);
  if (body < 0) return null;
  const tag = HOT_TAG[m.type as keyof typeof HOT_TAG];
  const total = (m.term === 0 ? 0 : 1 + varintBytes(m.term)) + 1 + varintBytes(body) + body;
  const out = new Uint8Array(total);
  const w = new WireWriter(out);
  // protobufjs leaves a proto3 zero out.
  const count = (fieldTag: number, n: number) => {
    if (n !== 0) w.count(fieldTag, n);
  };
  count(0x08, m.term);
  w.count(tag, body);
  switch (m.type) {
    case 'append':
      count(0x08, m.prevIndex);
      count(0x10, m.prevTerm);
      for (const e of m.entries) {
        if (e.kind !== 'normal') return null;
        const n = e.data.byteLength;
        w.count(0x1a, (e.index === 0 ? 0 : 1 + varintBytes(e.index)) + (e.term === 0 ? 0 : 1 + varintBytes(e.term)) + 1 + varintBytes(n) + n);
        count(0x08, e.index);
        count(0x10, e.term);
        w.bytes(0x1a, e.data);
      }
      count(0x20, m.commit);
      break;
    case 'append_response':
      if (m.success) w.count(0x08, 1);
      count(0x10, m.index);
      count(0x18, m.hintIndex);
      count(0x20, m.hintTerm);
      break;
    case 'heartbeat':
      count(0x08, m.commit);
      count(0x10, m.readSeq);
      break;
    case 'heartbeat_response':
      count(0x08, m.readSeq);
      break;
    default:
      return null;
  }
  return w.at === total ? out : null;
}

/**
 * One RaftMessage's bytes. validateMessage runs on the core's values first
 * because protobufjs would silently turn a negative or fractional number into
 * a valid uint64; then the receiver's own validator runs on what was encoded
 * (the hot messages: the checks it makes beyond validateMessage, made on the
 * values, see encodeHotMessage).
 */
function encodeMessage(m: Message, i: number): Uint8Array {
  const where = ` (messages[${i}] of the batch to ${m.to})`;
  try {
    validateMessage(m, m.to);
    return encodeHotMessage(m) ?? encodeProto(MessageProto, messageToWire(m), (o) => validateRaftMessage(o, m.from, m.to));
  } catch (err) {
    if (err instanceof RaftInputError) throw new FrameError('schema', `${MESSAGE_NAME}: ${err.message}${where}`);
    if (err instanceof FrameError) throw new FrameError(err.reason, `${err.detail}${where}`);
    throw err;
  }
}

/** The envelope every message shares, checked as the receiver will check it. */
function envelopeOf(messages: readonly Message[]): Expected {
  const first = messages[0];
  if (first === undefined) throw schemaError('field messages is empty: a batch carries at least one message');
  for (const [i, m] of messages.entries()) {
    if (m.from !== first.from) throw schemaError(`field messages[${i}].from is "${m.from}", but the batch is from "${first.from}"`);
    if (m.to !== first.to) throw schemaError(`field messages[${i}].to is "${m.to}", but the batch goes to "${first.to}"`);
  }
  try {
    return validateEnvelope({ from: first.from, to: first.to });
  } catch (err) {
    if (err instanceof FieldError) throw schemaError(`field ${err.field} ${err.problem}`);
    throw err;
  }
}

/** A RaftBatch built from already-encoded RaftMessages: the same bytes protobufjs would write for the whole batch. */
function assemble(env: Expected, parts: readonly Uint8Array[]): Uint8Array {
  const writer = protobuf.Writer.create().uint32(TAG.from).string(env.from).uint32(TAG.to).string(env.to);
  for (const part of parts) writer.uint32(TAG.message).bytes(part);
  return writer.finish();
}

function headerBytes(env: Expected): number {
  return protobuf.Writer.create().uint32(TAG.from).string(env.from).uint32(TAG.to).string(env.to).len;
}

/**
 * Encode the messages one Ready produced for one peer, splitting into several
 * batches (in order) when they would exceed the frame limit or
 * RAFT_MAX_MESSAGES_PER_BATCH. All messages must share from and to. A message
 * too large for a frame of its own is a FrameError('oversized') naming its size
 * and the limit.
 */
export function encodeBatches(messages: readonly Message[], maxFrameBytes: number = RAFT_MAX_FRAME_BYTES): Uint8Array[] {
  if (messages.length === 0) return [];
  const env = envelopeOf(messages);
  const header = headerBytes(env);
  const frames: Uint8Array[] = [];
  let batch: Uint8Array[] = [];
  let size = header;
  for (const [i, m] of messages.entries()) {
    const part = encodeMessage(m, i);
    const cost = varintBytes(TAG.message) + varintBytes(part.byteLength) + part.byteLength;
    if (header + cost > maxFrameBytes) {
      throw new FrameError(
        'oversized',
        `raft ${m.type} to ${m.to} (messages[${i}]) needs a ${header + cost}-byte frame, above the ${maxFrameBytes}-byte limit`,
        RAFT_PROTOCOL,
      );
    }
    if (size + cost > maxFrameBytes || batch.length === RAFT_MAX_MESSAGES_PER_BATCH) {
      frames.push(assemble(env, batch));
      batch = [];
      size = header;
    }
    batch.push(part);
    size += cost;
  }
  frames.push(assemble(env, batch));
  return frames;
}

/**
 * One batch as one frame, with no splitting (the frame limit is the framing
 * layer's to enforce). Decoding checks the batch against its own `to` only;
 * a transport that knows the authenticated sender uses decodeBatch.
 */
export const RaftBatchSchema: MessageSchema<RaftBatch> = {
  name: BATCH_NAME,
  encode(batch) {
    if (batch.messages.length > RAFT_MAX_MESSAGES_PER_BATCH) {
      throw schemaError(`field messages has ${batch.messages.length} entries, above the ${RAFT_MAX_MESSAGES_PER_BATCH}-entry limit`);
    }
    const env = envelopeOf(batch.messages);
    return assemble(env, batch.messages.map(encodeMessage));
  },
  decode: (bytes) => decodeRaftBatch(bytes),
};

/**
 * Refuses a RaftConfig whose appends or snapshot chunks might not fit a frame,
 * rather than let replication to a peer stall on encode errors. Half the frame
 * is kept for wire overhead and the messages sharing it.
 */
export function checkRaftConfigForWire(config: RaftConfig, maxFrameBytes: number = RAFT_MAX_FRAME_BYTES): void {
  if (config.maxEntriesPerAppend > RAFT_MAX_ENTRIES_PER_APPEND) {
    throw new RaftInputError(`raft config maxEntriesPerAppend (${config.maxEntriesPerAppend}) exceeds the wire limit of ${RAFT_MAX_ENTRIES_PER_APPEND}`);
  }
  const half = Math.floor(maxFrameBytes / 2);
  for (const field of ['maxBytesPerAppend', 'maxProposalBytes', 'snapshotChunkBytes'] as const) {
    if (config[field] > half) {
      throw new RaftInputError(`raft config ${field} (${config[field]}) exceeds ${half} bytes, half the ${maxFrameBytes}-byte raft frame limit`);
    }
  }
}
