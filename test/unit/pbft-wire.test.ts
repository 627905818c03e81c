/**
 * The PBFT wire: every message type and replies round-trip byte for byte
 * (so decoded messages still verify), frames split at the byte and item
 * limits without reordering, the largest state transfer the driver's config
 * allows fits one frame, and hostile frames (truncated, trailing bytes, wrong
 * types, unknown type, spoofed sender, too deep, too many items, oversized)
 * are refused as a FrameError naming the field.
 */
import { describe, expect, it } from 'vitest';
import { batchDigest, decodeCanonical, encodeCanonical, seal, sha256, signingBytes, stateDigest, type Canonical } from '../../src/consensus/pbft/encoding.ts';
import type {
  Checkpoint,
  ClientRecord,
  ClientRequest,
  Commit,
  CommitCertificate,
  Committed,
  Fetch,
  NewView,
  NewViewRequest,
  PbftMessage,
  PrePrepare,
  Prepare,
  Reply,
  RequestMessage,
  StateMessage,
  SignedMessage,
  StateRequest,
  ViewChange,
} from '../../src/consensus/pbft/types.ts';
import { DEFAULT_PBFT_CONFIG, PbftInputError, resolvePbftConfig } from '../../src/consensus/pbft/types.ts';
import {
  PBFT_MAX_DEPTH,
  PBFT_MAX_FRAME_BYTES,
  PBFT_MAX_FRAME_ITEMS,
  PBFT_MAX_FRAME_VALUES,
  PBFT_MAX_SNAPSHOT_BYTES,
  checkPbftConfigForWire,
  decodePbftFrame,
  encodePbftFrames,
  pbftStateMessageBytes,
  type PbftFrame,
} from '../../src/consensus/pbft/wire.ts';
import { replyProblem } from '../../src/consensus/pbft/validate.ts';
import { FakeKeys, encodeOp, type KvOp } from '../sim/pbft-harness.ts';
import { frameErrorOf } from '../support/frame-error.ts';

const keys = new FakeKeys('wire');
const verify = keys.verifier(() => true);
const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
/** FakeKeys signs into Buffers; decoding yields plain Uint8Arrays, which toEqual tells apart. */
const signer = (id: string): ((b: Uint8Array) => Uint8Array) => {
  const sign = keys.signer(id);
  return (b) => new Uint8Array(sign(b));
};

function as<M extends SignedMessage>(from: string, body: Omit<M, 'from' | 'signature'>): M {
  return seal<M>({ ...body, from } as Omit<M, 'signature'>, signer(from));
}
function clientRequest(client: string, timestamp: number, op: KvOp): ClientRequest {
  return seal<ClientRequest>({ client, timestamp, operation: encodeOp(op), readOnly: op.op === 'get' }, signer(client));
}

const request = clientRequest('client-1', 7, { op: 'put', key: 'k', value: 'v ✓' });
const readRequest = clientRequest('client-2', 1, { op: 'get', key: 'k' });
const batch = [request, readRequest];
const prePrepare = as<PrePrepare>('r0', { type: 'pre_prepare', view: 0, seq: 1, digest: batchDigest(batch), batch });
const nullPrePrepare = as<PrePrepare>('r1', { type: 'pre_prepare', view: 1, seq: 2, digest: batchDigest([]), batch: [] });
const vote = <T extends 'prepare' | 'commit'>(type: T, from: string): Prepare | Commit =>
  as<Prepare | Commit>(from, { type, view: 0, seq: 1, digest: prePrepare.digest } as Omit<Prepare | Commit, 'from' | 'signature'>);
const checkpoint = (from: string): Checkpoint => as<Checkpoint>(from, { type: 'checkpoint', seq: 64, digest: sha256(bytes('state')) });
const certificate: CommitCertificate = { prePrepare, commits: ['r0', 'r1', 'r2'].map((r) => vote('commit', r) as Commit) };
const viewChange = (from: string): ViewChange =>
  as<ViewChange>(from, {
    type: 'view_change',
    view: 1,
    checkpoint: { seq: 64, digest: sha256(bytes('state')) },
    checkpointProof: ['r0', 'r1', 'r2'].map(checkpoint),
    prepared: [{ prePrepare, prepares: ['r1', 'r2'].map((r) => vote('prepare', r) as Prepare) }],
  });
const clients: ClientRecord[] = [{ client: 'client-1', timestamp: 7, seq: 1, result: bytes('{"before":null}') }];
const snapshot = Uint8Array.from({ length: 3000 }, (_, i) => (i * 13) % 256);

/** Every message type, all from r1 (the sender a frame is decoded for). */
const everyType: PbftMessage[] = [
  { type: 'request', from: 'r1', request } satisfies RequestMessage,
  as<PrePrepare>('r1', { type: 'pre_prepare', view: 1, seq: 2, digest: batchDigest([]), batch: [] }),
  as<PrePrepare>('r1', { type: 'pre_prepare', view: 1, seq: 3, digest: batchDigest(batch), batch }),
  vote('prepare', 'r1'),
  vote('commit', 'r1'),
  checkpoint('r1'),
  viewChange('r1'),
  as<ViewChange>('r1', { type: 'view_change', view: 3, checkpoint: { seq: 0, digest: sha256(bytes('')) }, checkpointProof: [], prepared: [] }),
  as<NewView>('r1', { type: 'new_view', view: 1, viewChanges: ['r0', 'r1', 'r2'].map(viewChange), prePrepares: [nullPrePrepare] }),
  as<Fetch>('r1', { type: 'fetch', seq: 9 }),
  as<Committed>('r1', { type: 'committed', certificate }),
  as<StateRequest>('r1', { type: 'state_request', seq: 64 }),
  as<StateMessage>('r1', {
    type: 'state',
    checkpoint: { seq: 64, digest: stateDigest({ snapshot, clients }) },
    proof: ['r0', 'r1', 'r2'].map(checkpoint),
    state: { snapshot, clients },
    entries: [certificate],
  }),
  as<StateMessage>('r1', { type: 'state', checkpoint: { seq: 64, digest: sha256(bytes('')) }, proof: [], state: { snapshot: new Uint8Array(0), clients: [] }, entries: [] }),
  as<NewViewRequest>('r1', { type: 'new_view_request', view: 4 }),
];
const reply = (from: string, timestamp: number): Reply =>
  ({ type: 'reply', from, view: 1, client: 'client-1', timestamp, result: bytes(`result ${timestamp}`) });

/** A frame's canonical bytes, built by hand: what a hostile peer could send. */
function raw(value: unknown): Uint8Array {
  return encodeCanonical(value as Canonical);
}

function schemaError(value: unknown, from = 'r1'): string {
  return frameErrorOf(() => decodePbftFrame(raw(value), { from }), 'schema').message;
}

describe('pbft wire: round trip', () => {
  it('carries every message type and replies byte for byte, signatures still verifying', () => {
    const frame: PbftFrame = { messages: everyType, replies: [reply('r1', 1), reply('r1', 2)] };
    const frames = encodePbftFrames(frame);
    expect(frames).toHaveLength(1);
    const only = frames[0] as Uint8Array;
    // The wire format is the canonical encoding itself.
    expect(only).toEqual(encodeCanonical(frame as unknown as Canonical));
    const decoded = decodePbftFrame(only, { from: 'r1' });
    expect(decoded).toEqual(frame);
    expect(encodeCanonical(decoded as unknown as Canonical)).toEqual(only);
    for (const [i, m] of decoded.messages.entries()) {
      const original = frame.messages[i];
      if (m.type === 'request' || original === undefined || original.type === 'request') continue; // unsigned: compared whole above
      expect(signingBytes(m), m.type).toEqual(signingBytes(original));
      expect(verify(m.from, signingBytes(m), m.signature), m.type).toBe(true);
    }
    // Nested evidence verifies too (the core checks it by signature, not by sender).
    const newView = decoded.messages.find((m): m is NewView => m.type === 'new_view');
    const nested = newView?.viewChanges[2]?.prepared[0]?.prePrepare;
    expect(nested === undefined ? false : verify('r0', signingBytes(nested), nested.signature)).toBe(true);
  });

  it('decodes byte fields into copies that do not alias the frame', () => {
    const [frame] = encodePbftFrames({ messages: [everyType[0] as PbftMessage], replies: [] });
    if (frame === undefined) throw new Error('no frame');
    const decoded = decodePbftFrame(frame, { from: 'r1' }).messages[0];
    if (decoded?.type !== 'request') throw new Error('not a request');
    const before = new Uint8Array(decoded.request.operation);
    frame.fill(0);
    expect(decoded.request.operation).toEqual(before);
  });

  it('encodes nothing for an empty frame, and replies-only frames', () => {
    expect(encodePbftFrames({ messages: [], replies: [] })).toEqual([]);
    const [only] = encodePbftFrames({ messages: [], replies: [reply('r2', 5)] });
    expect(decodePbftFrame(only as Uint8Array, { from: 'r2' }).replies.map((r) => r.timestamp)).toEqual([5]);
  });

  it('measures the nesting limit on the deepest legitimate message: new_view > view_change > certificate > pre-prepare > request', () => {
    const newView = everyType.find((m) => m.type === 'new_view') as NewView;
    const [frame] = encodePbftFrames({ messages: [newView], replies: [] });
    if (frame === undefined) throw new Error('no frame');
    expect(decodePbftFrame(frame, { from: 'r1' }).messages[0]).toEqual(newView);
    expect(() => decodeCanonical(frame, PBFT_MAX_DEPTH - 1)).toThrow(`nesting deeper than ${PBFT_MAX_DEPTH - 1}`);
  });
});

describe('pbft wire: splitting', () => {
  const prepares = Array.from({ length: 40 }, (_, i) => as<Prepare>('r1', { type: 'prepare', view: 0, seq: i + 1, digest: prePrepare.digest }));
  const decodeAll = (frames: Uint8Array[]): PbftFrame => {
    const parts = frames.map((f) => decodePbftFrame(f, { from: 'r1' }));
    return { messages: parts.flatMap((p) => p.messages), replies: parts.flatMap((p) => p.replies) };
  };

  it('splits at the byte limit, keeping order, each frame within the limit', () => {
    const frame: PbftFrame = { messages: prepares, replies: [reply('r1', 1), reply('r1', 2)] };
    const limit = 2000;
    const frames = encodePbftFrames(frame, limit);
    expect(frames.length).toBeGreaterThan(4);
    for (const f of frames) expect(f.byteLength).toBeLessThanOrEqual(limit);
    // Greedy: each frame is full, i.e. the next frame's first item would not have fitted in it.
    for (const [i, f] of frames.slice(0, -1).entries()) {
      const next = decodePbftFrame(frames[i + 1] as Uint8Array, { from: 'r1' });
      const first = next.messages[0] ?? next.replies[0];
      expect(f.byteLength + raw(first).byteLength).toBeGreaterThan(limit);
    }
    expect(decodeAll(frames)).toEqual(frame);
  });

  it('splits at the item limit', () => {
    const many = Array.from({ length: PBFT_MAX_FRAME_ITEMS + 10 }, (_, i) =>
      as<Prepare>('r1', { type: 'prepare', view: 0, seq: i + 1, digest: prePrepare.digest }),
    );
    const frames = encodePbftFrames({ messages: many, replies: [] });
    expect(frames).toHaveLength(2);
    const decoded = decodeAll(frames);
    expect(decoded.messages.map((m) => (m as Prepare).seq)).toEqual(many.map((m) => m.seq));
  });

  it('refuses a single message larger than a frame with a RangeError naming its type and size', () => {
    const state = everyType.find((m) => m.type === 'state') as StateMessage;
    const size = encodeCanonical(state as unknown as Canonical).byteLength;
    const err = (() => {
      try {
        encodePbftFrames({ messages: [vote('prepare', 'r1'), state], replies: [] }, 2000);
      } catch (e) {
        return e;
      }
      return null;
    })();
    expect(err).toBeInstanceOf(RangeError);
    expect((err as Error).message).toBe(`pbft state (messages[1]) encodes to ${size} bytes and cannot fit the 2000-byte frame limit`);
  });

  it('refuses to encode what the receiver would refuse: a bad shape or two senders', () => {
    const bad = { ...vote('prepare', 'r1'), view: -1 } as Prepare;
    expect(frameErrorOf(() => encodePbftFrames({ messages: [bad], replies: [] }), 'schema').message).toBe(
      'PbftFrame: field messages[0]: prepare.view must be a non-negative integer',
    );
    expect(frameErrorOf(() => encodePbftFrames({ messages: [vote('prepare', 'r1')], replies: [reply('r2', 1)] }), 'schema').message).toBe(
      'PbftFrame: field replies[0].from is "r2", but the frame is from "r1"',
    );
  });
});

describe('pbft wire: the largest state transfer of the driver config fits one frame', () => {
  const config = resolvePbftConfig({ maxSnapshotBytes: PBFT_MAX_SNAPSHOT_BYTES });

  it('by the bound, and checkPbftConfigForWire refuses configs beyond it naming the fields', () => {
    expect(pbftStateMessageBytes(config)).toBeLessThanOrEqual(PBFT_MAX_FRAME_BYTES);
    expect(() => checkPbftConfigForWire(config)).not.toThrow();
    expect(() => checkPbftConfigForWire(DEFAULT_PBFT_CONFIG)).toThrow(PbftInputError);
    expect(() => checkPbftConfigForWire(resolvePbftConfig({ ...config, maxStateTransferEntries: 128 }))).toThrow(
      /maxStateTransferEntries 128 .* above the 117440512-byte pbft frame limit/,
    );
  });

  it('by measurement: 32 MiB snapshot, 64 certificates of full batches with 100 commits, 10,000 clients', () => {
    // Ed25519-sized signatures and 63-character member names, the sizes the bound assumes.
    const sign = (): Uint8Array => new Uint8Array(64).fill(7);
    const member = (i: number): string => `m${String(i).padStart(62, '0')}`;
    const client = (i: number): string => `c${String(i).padStart(127, '0')}`;
    const perRequest = config.maxBatchBytes / config.maxBatchRequests;
    const fullBatch: ClientRequest[] = Array.from({ length: config.maxBatchRequests }, (_, i) =>
      seal<ClientRequest>({ client: client(i), timestamp: i + 1, operation: new Uint8Array(perRequest - 64 - 128 - 64), readOnly: false }, sign),
    );
    const pp = seal<PrePrepare>({ type: 'pre_prepare', from: member(0), view: 0, seq: 1, digest: batchDigest(fullBatch), batch: fullBatch }, sign);
    const commits = Array.from({ length: 100 }, (_, i) => seal<Commit>({ type: 'commit', from: member(i), view: 0, seq: 1, digest: pp.digest }, sign));
    const records: ClientRecord[] = Array.from({ length: config.maxClients }, (_, i) => ({
      client: client(i),
      timestamp: i,
      seq: i,
      result: new Uint8Array(512 - 73 - 128),
    }));
    const state = seal<StateMessage>(
      {
        type: 'state',
        from: member(1),
        checkpoint: { seq: 64, digest: sha256(bytes('x')) },
        proof: Array.from({ length: 100 }, (_, i) => seal<Checkpoint>({ type: 'checkpoint', from: member(i), seq: 64, digest: sha256(bytes('x')) }, sign)),
        state: { snapshot: new Uint8Array(PBFT_MAX_SNAPSHOT_BYTES), clients: records },
        entries: Array.from({ length: config.maxStateTransferEntries }, () => ({ prePrepare: pp, commits })),
      },
      sign,
    );
    const frames = encodePbftFrames({ messages: [state], replies: [] });
    expect(frames).toHaveLength(1);
    const frame = frames[0] as Uint8Array;
    expect(frame.byteLength).toBeLessThanOrEqual(pbftStateMessageBytes(config));
    const decoded = decodePbftFrame(frame, { from: member(1) });
    expect(Buffer.from(encodeCanonical(decoded as unknown as Canonical)).equals(frame)).toBe(true);
  });
});

describe('pbft wire: hostile frames', () => {
  const [good] = encodePbftFrames({ messages: [vote('prepare', 'r1')], replies: [reply('r1', 1)] });
  if (good === undefined) throw new Error('no frame');

  it('refuses bytes that are not a canonical encoding as malformed, naming the offset', () => {
    expect(frameErrorOf(() => decodePbftFrame(good.subarray(0, good.byteLength - 3), { from: 'r1' }), 'malformed').message).toMatch(
      /^PbftFrame: canonical decoding: \d+ bytes needed, \d+ left at byte \d+$/,
    );
    const trailing = Uint8Array.from([...good, 0]);
    expect(frameErrorOf(() => decodePbftFrame(trailing, { from: 'r1' }), 'malformed').message).toMatch(/1 trailing bytes at byte/);
    expect(frameErrorOf(() => decodePbftFrame(Uint8Array.from([9]), { from: 'r1' }), 'malformed').message).toMatch(/unknown tag 9/);
    expect(frameErrorOf(() => decodePbftFrame(new Uint8Array(0), { from: 'r1' }), 'malformed').message).toMatch(/1 bytes needed, 0 left/);
  });

  it('refuses nesting beyond the deepest legitimate message', () => {
    let deep: unknown = [];
    for (let i = 0; i < PBFT_MAX_DEPTH; i++) deep = [deep];
    expect(frameErrorOf(() => decodePbftFrame(raw({ messages: deep, replies: [] }), { from: 'r1' }), 'malformed').message).toMatch(
      new RegExp(`nesting deeper than ${PBFT_MAX_DEPTH}`),
    );
  });

  it('stops decoding a frame of cheap values at the value budget, before building it all', () => {
    // {messages: [null × (budget + 1)], replies: []}: six bytes of header per field, one byte per null.
    const count = PBFT_MAX_FRAME_VALUES + 1;
    const header = raw({ messages: [], replies: [] });
    const nulls = encodeCanonical(new Array<null>(count).fill(null));
    const messagesAt = header.indexOf(6); // the empty list's tag: replace it by the long one
    const frame = Uint8Array.from([...header.subarray(0, messagesAt), ...nulls, ...header.subarray(messagesAt + 5)]);
    expect(frameErrorOf(() => decodePbftFrame(frame, { from: 'r1' }), 'malformed').message).toMatch(
      new RegExp(`more than ${PBFT_MAX_FRAME_VALUES} values`),
    );
  });

  it('refuses the wrong frame shape, naming the field', () => {
    expect(schemaError([])).toBe('PbftFrame: the frame must be an object {messages, replies}');
    expect(schemaError({ messages: [], replies: [], extra: 1 })).toBe('PbftFrame: field "extra" is not part of a frame (only messages and replies are)');
    expect(schemaError({ messages: {}, replies: [] })).toBe('PbftFrame: field messages must be a list');
    expect(schemaError({ messages: [] })).toBe('PbftFrame: field replies must be a list');
    expect(schemaError({ messages: [], replies: [] })).toBe('PbftFrame: fields messages and replies are both empty: a frame carries at least one item');
  });

  it('refuses wrong field types and unknown message types, naming the field', () => {
    const prepare = vote('prepare', 'r1');
    expect(schemaError({ messages: [{ ...prepare, view: 'one' }], replies: [] })).toBe(
      'PbftFrame: field messages[0]: prepare.view must be a non-negative integer',
    );
    expect(schemaError({ messages: [{ ...prepare, signature: 'sig' }], replies: [] })).toBe('PbftFrame: field messages[0]: prepare.signature must be bytes');
    // A relay is vouched for by its channel and carries no signature of its own (its client request does).
    const relay = { type: 'request', from: 'r1', request };
    expect(schemaError({ messages: [{ ...relay, signature: new Uint8Array(64) }], replies: [] })).toBe(
      'PbftFrame: field messages[0]: request carries a signature, which a request does not have',
    );
    expect(schemaError({ messages: [prepare, { ...prepare, type: 'gossip' }], replies: [] })).toBe('PbftFrame: field messages[1]: unknown message type "gossip"');
    expect(schemaError({ messages: [null], replies: [] })).toBe('PbftFrame: field messages[0]: message must be an object');
    const nested = { ...prePrepare, from: 'r1', batch: [{ ...request, timestamp: 1.5 }] };
    expect(schemaError({ messages: [nested], replies: [] })).toBe('PbftFrame: field messages[0]: pre_prepare.batch[0].timestamp must be a non-negative integer');
    const r = reply('r1', 1);
    expect(schemaError({ messages: [], replies: [{ ...r, result: 'text' }] })).toBe('PbftFrame: field replies[0]: reply.result must be bytes');
    expect(schemaError({ messages: [], replies: [{ ...r, type: 'prepare' }] })).toBe('PbftFrame: field replies[0]: reply.type must be reply');
    expect(schemaError({ messages: [], replies: [{ ...r, client: '' }] })).toBe(
      'PbftFrame: field replies[0]: reply.client must be a non-empty string of at most 256 characters',
    );
  });

  it('checks every reply field', () => {
    const r = reply('r1', 1) as unknown as Record<string, unknown>;
    expect(replyProblem(r)).toBeNull();
    const wrong: [string, unknown, string][] = [
      ['from', 7, 'reply.from must be a non-empty string of at most 256 characters'],
      ['signature', new Uint8Array(64), 'reply carries a signature, which a reply does not have'],
      ['view', -1, 'reply.view must be a non-negative integer'],
      ['client', 'x'.repeat(257), 'reply.client must be a non-empty string of at most 256 characters'],
      ['timestamp', Number.MAX_SAFE_INTEGER + 1, 'reply.timestamp must be a non-negative integer'],
      ['result', undefined, 'reply.result must be bytes'],
    ];
    for (const [field, value, problem] of wrong) expect(replyProblem({ ...r, [field]: value }), field).toBe(problem);
    expect(replyProblem(new Uint8Array(1))).toBe('reply must be an object');
  });

  it('refuses a top-level message or reply that speaks for another member', () => {
    expect(schemaError({ messages: [vote('prepare', 'r1'), vote('commit', 'r2')], replies: [] })).toBe(
      'PbftFrame: field messages[1].from is "r2", but the authenticated sender is "r1"',
    );
    expect(schemaError({ messages: [], replies: [reply('r3', 1)] })).toBe('PbftFrame: field replies[0].from is "r3", but the authenticated sender is "r1"');
    // Evidence from others nested in a certificate is the core's to verify by signature.
    expect(decodePbftFrame(raw({ messages: [as<Committed>('r1', { type: 'committed', certificate })], replies: [] }), { from: 'r1' }).messages).toHaveLength(1);
  });

  it('lets a member forward a new-view made by another (a peer that missed it gets it from whoever holds it)', () => {
    const newView = everyType.find((m): m is NewView => m.type === 'new_view') as NewView;
    expect(newView.from).toBe('r1');
    const forwarded = { messages: [vote('prepare', 'r3'), newView], replies: [] };
    expect(decodePbftFrame(raw(forwarded), { from: 'r3' }).messages.map((m) => [m.type, m.from])).toEqual([['prepare', 'r3'], ['new_view', 'r1']]);
    expect(encodePbftFrames(forwarded)).toHaveLength(1);
  });

  it("lets a member forward the checkpoints proving its stable checkpoint (the answer to a fetch below it), in one frame with its own messages", () => {
    // Seen in a real 4-daemon run: every replica failed to encode this answer to a restarted primary ("messages[2].from is r1, but the frame is from r3").
    const answer = { messages: [checkpoint('r3'), checkpoint('r2'), checkpoint('r1'), vote('prepare', 'r1')], replies: [] };
    const frames = encodePbftFrames(answer);
    expect(frames).toHaveLength(1);
    expect(decodePbftFrame(frames[0]!, { from: 'r1' }).messages.map((m) => [m.type, m.from])).toEqual([
      ['checkpoint', 'r3'],
      ['checkpoint', 'r2'],
      ['checkpoint', 'r1'],
      ['prepare', 'r1'],
    ]);
  });

  it('refuses more items than a frame may carry', () => {
    const prepare = vote('prepare', 'r1');
    const over = { messages: Array.from({ length: PBFT_MAX_FRAME_ITEMS }, () => prepare), replies: [reply('r1', 1)] };
    expect(schemaError(over)).toBe(`PbftFrame: fields messages and replies hold ${PBFT_MAX_FRAME_ITEMS + 1} items, above the ${PBFT_MAX_FRAME_ITEMS}-item limit`);
  });

  it('refuses a frame above the byte limit before decoding it', () => {
    const huge = new Uint8Array(PBFT_MAX_FRAME_BYTES + 1);
    expect(frameErrorOf(() => decodePbftFrame(huge, { from: 'r1' }), 'oversized').message).toBe(
      `PbftFrame of ${PBFT_MAX_FRAME_BYTES + 1} bytes exceeds the ${PBFT_MAX_FRAME_BYTES}-byte limit`,
    );
  });
});
