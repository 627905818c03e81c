/**
 * The Raft wire schema: every message type round-trips (by hand and as a
 * fast-check property), batches split at the frame and count limits without
 * reordering, and hostile frames (random bytes, mutated frames, wrong
 * sender, values beyond 2^53, duplicated, missing or mistyped fields, lists
 * over their bounds) are refused as FrameError('schema') naming the field.
 */
import { Buffer } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import protobuf from 'protobufjs';
import { FrameError } from '../../src/net/framing.ts';
import type { FrameRejectReason } from '../../src/metrics/metrics.ts';
import { loadProto } from '../../src/net/schema.ts';
import type { Entry, Membership, Message } from '../../src/consensus/raft/types.ts';
import { DEFAULT_RAFT_CONFIG, RaftInputError, resolveRaftConfig } from '../../src/consensus/raft/types.ts';
import { validateMessage } from '../../src/consensus/raft/validate.ts';
import {
  RAFT_MAX_CTX,
  RAFT_MAX_ENTRIES_PER_APPEND,
  RAFT_MAX_FRAME_BYTES,
  RAFT_MAX_MEMBERS,
  RAFT_MAX_MESSAGES_PER_BATCH,
  RAFT_MAX_NODE_ID,
  RAFT_PROTOCOL,
  RaftBatchSchema,
  checkRaftConfigForWire,
  decodeBatch,
  decodeHotBatch,
  decodeSchemaBatch,
  encodeBatches,
  encodeHotMessage,
} from '../../src/consensus/raft/wire.ts';
import { frameErrorOf } from '../support/frame-error.ts';

const AB = { from: 'a', to: 'b' };
const BATCH = 'dwcp.raft.v1.RaftBatch';


function roundTrip(messages: readonly Message[]): Message[] {
  const frames = encodeBatches(messages);
  expect(frames).toHaveLength(1);
  return decodeBatch(frames[0] as Uint8Array, { from: messages[0]?.from ?? '', to: messages[0]?.to ?? '' });
}

const membership: Membership = { voters: ['a', 'b', 'c'], learners: ['d'] };
const env = { from: 'a', to: 'b', term: 7 } as const;

const everyType: Message[] = [
  { ...env, type: 'vote_request', preVote: true, transfer: false, lastIndex: 41, lastTerm: 6 },
  { ...env, type: 'vote_response', preVote: false, granted: true },
  {
    ...env,
    type: 'append',
    prevIndex: 40,
    prevTerm: 6,
    commit: 39,
    entries: [
      { kind: 'normal', index: 41, term: 6, data: new Uint8Array(0) },
      { kind: 'config', index: 42, term: 7, membership },
      { kind: 'config', index: 43, term: 7, membership: { voters: ['a'], learners: [] } },
      { kind: 'normal', index: 44, term: 7, data: Uint8Array.from({ length: 300 }, (_, i) => i % 256) },
    ],
  },
  { ...env, type: 'append', prevIndex: 0, prevTerm: 0, commit: 0, entries: [] },
  { ...env, type: 'append_response', success: false, index: 40, hintIndex: 38, hintTerm: 5 },
  { ...env, type: 'heartbeat', commit: 39, readSeq: 12 },
  { ...env, type: 'heartbeat_response', readSeq: 12 },
  {
    ...env,
    type: 'snapshot_chunk',
    meta: { index: 100, term: 6, membership },
    offset: 4096,
    totalBytes: 9000,
    data: Uint8Array.from({ length: 4096 }, (_, i) => (i * 7) % 256),
  },
  { ...env, type: 'snapshot_chunk', meta: { index: 0, term: 0, membership: { voters: [], learners: [] } }, offset: 0, totalBytes: 0, data: new Uint8Array(0) },
  { ...env, type: 'snapshot_response', index: 100, nextOffset: 8192 },
  { ...env, type: 'timeout_now' },
  { ...env, type: 'read_index', ctx: 'read-1 ✓ €' },
  { ...env, type: 'read_index', ctx: '' },
  { ...env, type: 'read_index_response', ctx: 'read-1', index: 39 },
  { ...env, type: 'heartbeat', term: Number.MAX_SAFE_INTEGER, commit: Number.MAX_SAFE_INTEGER, readSeq: 0 },
];

describe('round trips', () => {
  it('carries every message type, in order, in one frame', () => {
    const types = new Set(everyType.map((m) => m.type));
    expect(types.size).toBe(11);
    expect(roundTrip(everyType)).toEqual(everyType);
    for (const m of everyType) expect(roundTrip([m])).toEqual([m]);
  });

  it('round-trips through RaftBatchSchema, which checks the batch against its own to', () => {
    expect(RaftBatchSchema.name).toBe(BATCH);
    expect(RaftBatchSchema.decode(RaftBatchSchema.encode({ messages: everyType }))).toEqual({ messages: everyType });
    // The same bytes as encodeBatches, so either side may use either.
    expect(Buffer.from(RaftBatchSchema.encode({ messages: everyType })).equals(encodeBatches(everyType)[0] as Uint8Array)).toBe(true);
  });

  it('keeps an empty no-op entry a normal entry with empty data', () => {
    const [m] = roundTrip([{ ...env, type: 'append', prevIndex: 0, prevTerm: 0, commit: 0, entries: [{ kind: 'normal', index: 1, term: 7, data: new Uint8Array(0) }] }]);
    expect(m?.type === 'append' && m.entries[0]).toEqual({ kind: 'normal', index: 1, term: 7, data: new Uint8Array(0) });
  });

  it('gives decoded bytes their own memory, so a kept entry pins only the data of its append, not the frame', () => {
    const append = everyType[2] as Message;
    const chunk = everyType[7] as Message;
    const [frame] = encodeBatches([append, chunk]);
    const [a, c] = decodeBatch(frame as Uint8Array, AB);
    (frame as Uint8Array).fill(0);
    expect([a, c]).toEqual([append, chunk]);
    // The append's two normal entries (0 and 300 bytes) share one 300-byte buffer; the chunk has its own.
    const data = a?.type === 'append' ? a.entries.flatMap((e) => (e.kind === 'normal' ? [e.data.buffer.byteLength] : [])) : [];
    expect(data).toEqual([300, 300]);
    expect(c?.type === 'snapshot_chunk' && c.data.buffer.byteLength).toBe(4096);
  });

  const names = fc.string({ unit: 'grapheme', minLength: 1, maxLength: 12 });
  const counter = fc.maxSafeNat();
  const bytes = fc.uint8Array({ maxLength: 64 });
  const arbMembership: fc.Arbitrary<Membership> = fc
    .tuple(fc.uniqueArray(names, { maxLength: 6 }), fc.nat(6))
    .map(([ids, split]) => ({ voters: ids.slice(0, split), learners: ids.slice(split) }));
  const ctx = fc.string({ unit: 'grapheme', maxLength: 40 });
  const ordered = fc.tuple(counter, counter).map(([x, y]) => [Math.min(x, y), Math.max(x, y)] as const);
  const append = fc
    .record({
      terms: ordered,
      prevIndex: fc.nat({ max: Number.MAX_SAFE_INTEGER - 10 }),
      commit: counter,
      entries: fc.array(fc.record({ pick: counter, config: fc.option(arbMembership), data: bytes }), { maxLength: 5 }),
    })
    .map(({ terms: [prevTerm, term], prevIndex, commit, entries }) => {
      const entryTerms = entries.map((e) => prevTerm + (e.pick % (term - prevTerm + 1))).sort((x, y) => x - y);
      return {
        type: 'append' as const,
        term,
        prevIndex,
        prevTerm,
        commit,
        entries: entries.map((e, i): Entry => {
          const at = { index: prevIndex + i + 1, term: entryTerms[i] as number };
          return e.config === null ? { kind: 'normal', ...at, data: e.data } : { kind: 'config', ...at, membership: e.config };
        }),
      };
    });
  type Body = Message extends infer M ? (M extends Message ? Omit<M, 'from' | 'to'> : never) : never;
  const body: fc.Arbitrary<Body> = fc.oneof(
    fc.record({ type: fc.constant('vote_request' as const), term: counter, preVote: fc.boolean(), transfer: fc.boolean(), lastIndex: counter, lastTerm: counter }),
    fc.record({ type: fc.constant('vote_response' as const), term: counter, preVote: fc.boolean(), granted: fc.boolean() }),
    append,
    fc.record({ type: fc.constant('append_response' as const), term: counter, success: fc.boolean(), index: counter, hintIndex: counter, hintTerm: counter }),
    fc.record({ type: fc.constant('heartbeat' as const), term: counter, commit: counter, readSeq: counter }),
    fc.record({ type: fc.constant('heartbeat_response' as const), term: counter, readSeq: counter }),
    fc.record({
      type: fc.constant('snapshot_chunk' as const),
      term: counter,
      meta: fc.record({ index: counter, term: counter, membership: arbMembership }),
      offset: counter,
      totalBytes: counter,
      data: bytes,
    }),
    fc.record({ type: fc.constant('snapshot_response' as const), term: counter, index: counter, nextOffset: counter }),
    fc.record({ type: fc.constant('timeout_now' as const), term: counter }),
    fc.record({ type: fc.constant('read_index' as const), term: counter, ctx }),
    fc.record({ type: fc.constant('read_index_response' as const), term: counter, ctx, index: counter }),
  );
  const batch = fc
    .record({ ends: fc.uniqueArray(names, { minLength: 2, maxLength: 2 }), bodies: fc.array(body, { minLength: 1, maxLength: 8 }) })
    .map(({ ends: [from = '', to = ''], bodies }) => bodies.map((b): Message => ({ ...b, from, to })));

  it('decode ∘ encode is the identity on arbitrary valid messages', () => {
    fc.assert(
      fc.property(batch, (messages) => {
        const from = messages[0]?.from ?? '';
        const to = messages[0]?.to ?? '';
        expect(encodeBatches(messages).flatMap((f) => decodeBatch(f, { from, to }))).toEqual(messages);
      }),
      { numRuns: 300 },
    );
  });

  /** The batch as protobufjs encodes it from the wire shape: what the hand-written encoding of the hot messages must equal. */
  const raftProto = loadProto(new URL('../../src/net/proto/raft.proto', import.meta.url));
  const BatchType = raftProto.lookupType('dwcp.raft.v1.RaftBatch');
  const camel = (type: string) => type.replace(/_(.)/g, (_, c: string) => c.toUpperCase());
  function protobufjsBatch(messages: readonly Message[]): Uint8Array {
    const wire = messages.map((m) => {
      const { type, from: _f, to: _t, term, ...rest } = m;
      const body = m.type === 'append' ? { ...rest, entries: m.entries.map((e) => (e.kind === 'normal' ? { index: e.index, term: e.term, normal: e.data } : { index: e.index, term: e.term, config: e.membership })) } : rest;
      return { term, [camel(type)]: body };
    });
    return BatchType.encode(BatchType.fromObject({ from: messages[0]?.from, to: messages[0]?.to, messages: wire })).finish();
  }

  it('writes the very bytes protobufjs writes, for every message type (the hot ones are encoded by hand)', () => {
    expect(Buffer.from(encodeBatches(everyType)[0] as Uint8Array).toString('hex')).toBe(Buffer.from(protobufjsBatch(everyType)).toString('hex'));
    fc.assert(
      fc.property(batch, (messages) => {
        expect(Buffer.from(encodeBatches(messages)[0] as Uint8Array).toString('hex')).toBe(Buffer.from(protobufjsBatch(messages)).toString('hex'));
        // The steady state's messages take the hand-written path (else it would be a silent no-op).
        for (const m of messages) {
          const hot = m.type === 'append_response' || m.type === 'heartbeat' || m.type === 'heartbeat_response' || (m.type === 'append' && m.entries.every((e) => e.kind === 'normal'));
          expect(encodeHotMessage(m) !== null).toBe(hot);
        }
      }),
      { numRuns: 500 },
    );
  });

  /** What a decoder answers, comparably: the messages, or the error's text. */
  function answer(decode: () => { messages: Message[] } | null): unknown {
    try {
      const batch = decode();
      return batch === null ? null : { messages: batch.messages.map((m) => ({ keys: Object.keys(m).join(), m })) };
    } catch (err) {
      return { error: String(err) };
    }
  }

  it('reads hot frames by hand with the schema path\'s answer, and leaves every other frame to it', () => {
    const hotOnly = batch.map((ms) => ms.filter((m) => encodeHotMessage(m) !== null)).filter((ms) => ms.length > 0);
    const framed = fc.tuple(fc.oneof(hotOnly, batch), fc.boolean()).map(([ms, mutate]) => ({ ms, frame: encodeBatches(ms)[0] as Uint8Array, mutate }));
    const edits = fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 3 });
    let hot = 0;
    fc.assert(
      fc.property(framed, edits, fc.nat(), ({ ms, frame, mutate }, changes, cut) => {
        const bytes = Uint8Array.from(frame);
        if (mutate) for (const [at, b] of changes) bytes[at % bytes.length] = b;
        const input = mutate && cut % 3 === 0 ? bytes.subarray(0, cut % bytes.length) : bytes;
        const ends = { from: ms[0]?.from ?? '', to: ms[0]?.to ?? '' };
        const direct = answer(() => decodeHotBatch(input, ends));
        if (direct !== null) {
          hot++;
          expect(direct).toEqual(answer(() => decodeSchemaBatch(input, ends)));
        }
        if (!mutate) expect(direct !== null).toBe(ms.every((m) => encodeHotMessage(m) !== null));
      }),
      { numRuns: 1500 },
    );
    expect(hot).toBeGreaterThan(300);
  });

  it('keeps order and identity when arbitrary messages are split over small frames', () => {
    fc.assert(
      fc.property(batch, fc.integer({ min: 2000, max: 6000 }), (messages, limit) => {
        const ends = { from: messages[0]?.from ?? '', to: messages[0]?.to ?? '' };
        const frames = encodeBatches(messages, limit);
        for (const f of frames) expect(f.byteLength).toBeLessThanOrEqual(limit);
        expect(frames.flatMap((f) => decodeBatch(f, ends))).toEqual(messages);
      }),
      { numRuns: 100 },
    );
  });
});

describe('batch splitting', () => {
  const appendOf = (i: number, size: number): Message => ({
    ...env,
    type: 'append',
    prevIndex: i,
    prevTerm: 7,
    commit: 0,
    entries: [{ kind: 'normal', index: i + 1, term: 7, data: new Uint8Array(size).fill(i) }],
  });

  it('packs greedily up to the frame limit, in order', () => {
    const messages = Array.from({ length: 20 }, (_, i) => appendOf(i, 1000));
    const frames = encodeBatches(messages, 4096);
    // Each append costs about 1020 bytes on the wire, so four share a 4096-byte frame (with its 6-byte header), a fifth does not.
    expect(frames.map((f) => decodeBatch(f, AB).length)).toEqual([4, 4, 4, 4, 4]);
    for (const f of frames) expect(f.byteLength).toBeLessThanOrEqual(4096);
    expect(frames.flatMap((f) => decodeBatch(f, AB))).toEqual(messages);
    // Without a limit in the way, it is one frame.
    expect(encodeBatches(messages)).toHaveLength(1);
  });

  it(`splits at ${RAFT_MAX_MESSAGES_PER_BATCH} messages however small they are`, () => {
    const beats = Array.from({ length: RAFT_MAX_MESSAGES_PER_BATCH + 1 }, (_, i): Message => ({ ...env, type: 'heartbeat', commit: i, readSeq: i }));
    const frames = encodeBatches(beats);
    expect(frames.map((f) => decodeBatch(f, AB).length)).toEqual([RAFT_MAX_MESSAGES_PER_BATCH, 1]);
    expect(frames.flatMap((f) => decodeBatch(f, AB))).toEqual(beats);
  });

  it('refuses a message too large for any frame, naming its size and the limit', () => {
    const err = frameErrorOf(() => encodeBatches([everyType[5] as Message, appendOf(0, 5000)], 4096), 'oversized');
    expect(err.message).toMatch(new RegExp(`^${RAFT_PROTOCOL}: raft append to b \\(messages\\[1\\]\\) needs a 50\\d\\d-byte frame, above the 4096-byte limit$`));
    const huge = frameErrorOf(() => encodeBatches([appendOf(0, RAFT_MAX_FRAME_BYTES)]), 'oversized');
    expect(huge.message).toMatch(/needs a 41943\d\d-byte frame, above the 4194304-byte limit/);
  });

  it('fits the largest messages a default-config core sends into one frame', () => {
    const cfg = DEFAULT_RAFT_CONFIG;
    const names = (n: number, prefix: string): string[] => Array.from({ length: n }, (_, i) => `${prefix}${String(i).padStart(60, '0')}`);
    const wide: Membership = { voters: names(RAFT_MAX_MEMBERS, 'v'), learners: names(RAFT_MAX_MEMBERS, 'l') };
    const largest: Message[] = [
      // One proposal of maxProposalBytes (the slice always takes at least one entry).
      { ...appendOf(0, cfg.maxProposalBytes) },
      // maxEntriesPerAppend tiny entries: the most per-entry overhead.
      {
        ...env,
        type: 'append',
        prevIndex: 0,
        prevTerm: 7,
        commit: 0,
        entries: Array.from({ length: cfg.maxEntriesPerAppend }, (_, i): Entry => ({ kind: 'normal', index: i + 1, term: 7, data: new Uint8Array((cfg.maxBytesPerAppend >> 10) - 24) })),
      },
      { ...env, type: 'snapshot_chunk', meta: { index: 9, term: 7, membership: wide }, offset: 0, totalBytes: 1 << 30, data: new Uint8Array(cfg.snapshotChunkBytes) },
    ];
    for (const m of largest) expect(encodeBatches([m])).toHaveLength(1);
    expect(() => checkRaftConfigForWire(cfg)).not.toThrow();
  });

  it('refuses a batch whose messages do not share one sender and receiver', () => {
    const mixed: Message[] = [everyType[5] as Message, { ...(everyType[5] as Message), to: 'c' }];
    expect(frameErrorOf(() => encodeBatches(mixed), 'schema').message).toBe(`${BATCH}: field messages[1].to is "c", but the batch goes to "b"`);
    const fromTwo: Message[] = [everyType[5] as Message, { ...(everyType[5] as Message), from: 'c' }];
    expect(frameErrorOf(() => RaftBatchSchema.encode({ messages: fromTwo }), 'schema').message).toBe(
      `${BATCH}: field messages[1].from is "c", but the batch is from "a"`,
    );
    expect(encodeBatches([])).toEqual([]);
    expect(frameErrorOf(() => RaftBatchSchema.encode({ messages: [] }), 'schema').message).toMatch(/messages is empty/);
  });

  it('refuses on the sending side what the receiver would refuse or misread', () => {
    const hb = everyType[5] as Message & { type: 'heartbeat' };
    // protobufjs alone would turn these into valid uint64s (0 and 2).
    expect(frameErrorOf(() => encodeBatches([{ ...hb, commit: -1 }]), 'schema').message).toBe(
      'dwcp.raft.v1.RaftMessage: raft heartbeat from a: commit must be a non-negative integer, got -1 (messages[0] of the batch to b)',
    );
    expect(frameErrorOf(() => encodeBatches([{ ...hb, term: 2.5 }]), 'schema').message).toMatch(/term must be a non-negative integer, got 2.5/);
    expect(frameErrorOf(() => encodeBatches([{ ...env, type: 'read_index', ctx: 'x'.repeat(RAFT_MAX_CTX + 1) }]), 'schema').message).toBe(
      `dwcp.raft.v1.RaftMessage: field readIndex.ctx is 257 characters long, above the 256-character limit (messages[0] of the batch to b)`,
    );
    // A lone surrogate would arrive as U+FFFD: a read no one waits for.
    expect(frameErrorOf(() => encodeBatches([{ ...env, type: 'read_index', ctx: 'r\uD800' }]), 'schema').message).toMatch(
      /field readIndex\.ctx is not well-formed UTF-16/,
    );
    expect(frameErrorOf(() => encodeBatches([{ ...hb, to: 'a' }]), 'schema').message).toBe(`${BATCH}: field from is "a", the same node as to`);
  });
});

// Frames built with the same .proto (or by hand) bypassing every check.
const raftProto = loadProto(new URL('../../src/net/proto/raft.proto', import.meta.url));
const RawBatch = raftProto.lookupType('dwcp.raft.v1.RaftBatch');
const RawMessage = raftProto.lookupType('dwcp.raft.v1.RaftMessage');
const raw = (fields: Record<string, unknown>): Uint8Array => RawBatch.encode(RawBatch.fromObject(fields)).finish();
const rawAB = (...messages: Record<string, unknown>[]): Uint8Array => raw({ from: 'a', to: 'b', messages });
const beat = { term: 7, heartbeat: { commit: 1, readSeq: 2 } };
/** A batch from a to b around hand-written RaftMessage bytes. */
function handBatch(...messages: ((w: protobuf.Writer) => protobuf.Writer)[]): Uint8Array {
  const w = protobuf.Writer.create().uint32(0x0a).string('a').uint32(0x12).string('b');
  for (const write of messages) w.uint32(0x1a).bytes(write(protobuf.Writer.create()).finish());
  return w.finish();
}
const heartbeatBody = (w: protobuf.Writer): protobuf.Writer => w.uint32((6 << 3) | 2).uint32(0);

describe('hostile frames', () => {
  it('refuses random bytes with a schema error, never anything else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
        frameErrorOf(() => decodeBatch(bytes, AB), 'schema');
      }),
      { numRuns: 2000 },
    );
  });

  it('turns a mutated valid frame into either valid messages from the sender or a schema error', () => {
    const [frame] = encodeBatches(everyType);
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), fc.nat(), (edits, cut) => {
        const bytes = Uint8Array.from(frame as Uint8Array);
        for (const [at, value] of edits) bytes[at % bytes.length] = value;
        let messages: Message[];
        try {
          messages = decodeBatch(bytes.subarray(0, bytes.length - (cut % 8)), AB);
        } catch (err) {
          expect(err).toBeInstanceOf(FrameError);
          expect((err as FrameError).reason).toBe('schema');
          return;
        }
        for (const m of messages) {
          expect(m.from).toBe('a');
          validateMessage(m, 'b');
        }
      }),
      { numRuns: 2000 },
    );
  });

  it.each([
    ['a wrong sender', rawAB(beat), { from: 'c', to: 'b' }, `${BATCH}: field from is "a", but the authenticated sender is "c"`],
    ['a wrong receiver', rawAB(beat), { from: 'a', to: 'z' }, `${BATCH}: field to is "b", but this node is "z"`],
    ['a missing sender', raw({ to: 'b', messages: [beat] }), AB, `${BATCH}: field from is required`],
    ['a sender that is the receiver', raw({ from: 'b', to: 'b', messages: [beat] }), { from: 'b', to: 'b' }, `${BATCH}: field from is "b", the same node as to`],
    ['an overlong node id', raw({ from: 'a'.repeat(RAFT_MAX_NODE_ID + 1), to: 'b', messages: [beat] }), AB, `${BATCH}: field from is 257 characters long, above the 256-character limit`],
    ['an empty batch', rawAB(), AB, `${BATCH}: field messages is empty: a batch carries at least one message`],
    ['a message with no body (an empty or unknown oneof)', rawAB({ term: 7 }), AB, `${BATCH}: field messages[0].body is required (one of voteRequest, voteResponse, append, appendResponse, heartbeat, heartbeatResponse, snapshotChunk, snapshotResponse, timeoutNow, readIndex, readIndexResponse)`],
    ['a term of 2^53', rawAB({ ...beat, term: '9007199254740992' }), AB, `${BATCH}: field messages[0].term is 9007199254740992, above 2^53 - 1, the largest index, term or size a node can hold`],
    ['an index of 2^64 - 1', rawAB({ term: 7, appendResponse: { index: '18446744073709551615' } }), AB, `${BATCH}: field messages[0].appendResponse.index is 18446744073709551615, above 2^53 - 1, the largest index, term or size a node can hold`],
    ['a snapshot chunk without meta', rawAB({ term: 7, snapshotChunk: { offset: 0 } }), AB, `${BATCH}: field messages[0].snapshotChunk.meta is required`],
    ['a config entry without its oneof', rawAB({ term: 7, append: { entries: [{ index: 1, term: 7 }] } }), AB, `${BATCH}: field messages[0].append.entries[0].kind is required (one of normal, config)`],
    ['a member listed twice', rawAB({ term: 7, append: { entries: [{ index: 1, term: 7, config: { voters: ['a', 'b'], learners: ['b'] } }] } }), AB, `${BATCH}: field messages[0].append.entries[0].config.learners[0] repeats member "b"`],
    ['too many members', rawAB({ term: 7, snapshotChunk: { meta: { membership: { voters: Array.from({ length: RAFT_MAX_MEMBERS + 1 }, (_, i) => `n${i}`) } } } }), AB, `${BATCH}: field messages[0].snapshotChunk.meta.membership.voters has 1025 entries, above the 1024-entry limit`],
    ['an overlong ctx', rawAB({ term: 7, readIndex: { ctx: 'c'.repeat(RAFT_MAX_CTX + 1) } }), AB, `${BATCH}: field messages[0].readIndex.ctx is 257 characters long, above the 256-character limit`],
    ['too many entries', rawAB({ term: 7, append: { entries: Array.from({ length: RAFT_MAX_ENTRIES_PER_APPEND + 1 }, (_, i) => ({ index: i + 1, term: 7, normal: new Uint8Array(0) })) } }), AB, `${BATCH}: field messages[0].append.entries has 4097 entries, above the 4096-entry limit`],
    ['entries that skip an index', rawAB({ term: 7, append: { prevIndex: 3, entries: [{ index: 5, term: 7, normal: new Uint8Array(0) }] } }), AB, `${BATCH}: field messages[0].append fails the core's check (raft append from a: entries[0].index must be 4, got 5)`],
  ])('refuses %s, naming the field', (_, bytes, expect_, message) => {
    expect(frameErrorOf(() => decodeBatch(bytes, expect_), 'schema').message).toBe(message);
  });

  it(`refuses more than ${RAFT_MAX_MESSAGES_PER_BATCH} messages in a batch`, () => {
    const bytes = rawAB(...Array.from({ length: RAFT_MAX_MESSAGES_PER_BATCH + 1 }, () => beat));
    expect(frameErrorOf(() => decodeBatch(bytes, AB), 'schema').message).toBe(`${BATCH}: field messages has 4097 entries, above the 4096-entry limit`);
  });

  const aboveSafe = 'is 18446744073709551615, above 2^53 - 1, the largest index, term or size a node can hold';
  it.each([
    ['a negative term written as int64', handBatch((w) => heartbeatBody(w.uint32(0x08).int64(-1))), `field messages[0].term ${aboveSafe}`],
    ['a duplicated term', handBatch((w) => heartbeatBody(w.uint32(0x08).uint64(1).uint32(0x08).uint64(9))), 'field messages[0].term occurs more than once'],
    ['two members of the body oneof', handBatch((w) => heartbeatBody(w.uint32(0x08).uint64(1)).uint32((10 << 3) | 2).uint32(0)), 'field messages[0].body sets both heartbeat and timeoutNow'],
    ['a term sent as bytes', handBatch((w) => heartbeatBody(w.uint32(0x0a).bytes(Uint8Array.of(1)))), 'field messages[0].term has wire type 2, expected 0'],
    ['a duplicated nested field', handBatch((w) => w.uint32(0x08).uint64(1).uint32((6 << 3) | 2).bytes(Uint8Array.of(0x08, 1, 0x08, 2))), 'field messages[0].heartbeat.commit occurs more than once'],
  ])('refuses %s, naming the field', (_, bytes, message) => {
    expect(frameErrorOf(() => decodeBatch(bytes, AB), 'schema').message).toBe(`${BATCH}: ${message}`);
  });

  it('refuses a duplicated sender, even when both copies agree', () => {
    const bytes = new Uint8Array([...rawAB(beat), 0x0a, 1, 0x61]);
    expect(frameErrorOf(() => decodeBatch(bytes, AB), 'schema').message).toBe(`${BATCH}: field from occurs more than once`);
  });

  it('skips unknown fields, so a later version may add some', () => {
    const msg = RawMessage.encode(RawMessage.fromObject(beat)).finish();
    const unknownInMessage = protobuf.Writer.create().uint32((15 << 3) | 2).string('future').finish();
    const frame = protobuf.Writer.create()
      .uint32(0x0a)
      .string('a')
      .uint32(0x12)
      .string('b')
      .uint32(0x1a)
      .bytes(new Uint8Array([...msg, ...unknownInMessage]))
      .uint32(9 << 3)
      .uint64(5)
      .finish();
    expect(decodeBatch(frame, AB)).toEqual([{ ...env, type: 'heartbeat', commit: 1, readSeq: 2 }]);
  });

  it('refuses bytes that are not protobuf, and a frame over the limit', () => {
    expect(frameErrorOf(() => decodeBatch(Uint8Array.of(0x0a, 0x05, 0x61), AB), 'schema').message).toMatch(/^dwcp\.raft\.v1\.RaftBatch: not a valid protobuf encoding/);
    const elevenByteVarint = handBatch((w) => heartbeatBody(w.uint32(0x08)).uint32(0xffffffff).uint32(0xffffffff).uint32(0x01));
    expect(frameErrorOf(() => decodeBatch(elevenByteVarint, AB), 'schema').message).toMatch(/not a valid protobuf encoding|has wire type/);
    expect(frameErrorOf(() => decodeBatch(new Uint8Array(RAFT_MAX_FRAME_BYTES + 1), AB), 'oversized').message).toMatch(/exceeds the 4194304-byte limit/);
  });
});

describe('checkRaftConfigForWire', () => {
  it('refuses settings whose messages might not fit a frame, naming the setting and the limit', () => {
    expect(() => checkRaftConfigForWire(resolveRaftConfig({ maxEntriesPerAppend: RAFT_MAX_ENTRIES_PER_APPEND + 1 }))).toThrow(
      new RaftInputError('raft config maxEntriesPerAppend (4097) exceeds the wire limit of 4096'),
    );
    expect(() => checkRaftConfigForWire(resolveRaftConfig({ snapshotChunkBytes: 3 * 1024 * 1024 }))).toThrow(
      'raft config snapshotChunkBytes (3145728) exceeds 2097152 bytes, half the 4194304-byte raft frame limit',
    );
    expect(() => checkRaftConfigForWire(resolveRaftConfig({ maxBytesPerAppend: 2 * 1024 * 1024 }))).not.toThrow();
  });
});
