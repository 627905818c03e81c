import { describe, expect, it } from 'vitest';
import { CheckpointVotes } from '../../src/consensus/pbft/checkpoint-votes.ts';
import { ClientTable } from '../../src/consensus/pbft/client-table.ts';
import fc from 'fast-check';
import type { Canonical } from '../../src/consensus/pbft/encoding.ts';
import { batchDigest, decodeCanonical, encodeCanonical, seal, sha256, signingBytes, stateDigest } from '../../src/consensus/pbft/encoding.ts';
import { ReplyCollector } from '../../src/consensus/pbft/reply-collector.ts';
import type { Checkpoint, ClientRecord, PbftMessage, Prepare, Reply } from '../../src/consensus/pbft/types.ts';
import { PbftInvariantError, resolvePbftConfig } from '../../src/consensus/pbft/types.ts';
import { messageProblem } from '../../src/consensus/pbft/validate.ts';
import { FakeKeys, LockstepCluster, makeRequest, replicaIds } from '../sim/pbft-harness.ts';

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

describe('pbft canonical encoding', () => {
  it('does not depend on the order fields were built in, and tells different values apart', () => {
    const a = encodeCanonical({ view: 1, seq: 2, digest: 'ab', extra: undefined });
    const b = encodeCanonical({ digest: 'ab', seq: 2, view: 1 });
    expect(a).toEqual(b);
    expect(encodeCanonical({ view: 1, seq: 2, digest: 'ac' })).not.toEqual(a);
    expect(encodeCanonical(['1'])).not.toEqual(encodeCanonical([1]));
    expect(encodeCanonical(bytes('x'))).not.toEqual(encodeCanonical('x'));
    expect(encodeCanonical(['ab', 'c'])).not.toEqual(encodeCanonical(['a', 'bc']));
    expect(encodeCanonical('é')).not.toEqual(encodeCanonical('e'));
    expect(encodeCanonical(-0)).toEqual(encodeCanonical(0));
    expect(() => encodeCanonical(Number.NaN)).toThrow(/not a finite number/);
  });

  it('encodes long and non-ASCII strings the same whichever path writes them', () => {
    const long = 'ü'.repeat(40) + 'x'.repeat(100);
    const decoded = new TextDecoder().decode(encodeCanonical(long).subarray(5));
    expect(decoded).toBe(long);
    expect(new TextDecoder().decode(encodeCanonical('plain-ascii').subarray(5))).toBe('plain-ascii');
  });

  it('signs everything but the signature, under a PBFT domain, and seal() agrees with signingBytes()', () => {
    const keys = new FakeKeys('enc');
    const prepare = seal<Prepare>({ type: 'prepare', from: 'r1', view: 0, seq: 1, digest: sha256(bytes('b')) }, keys.signer('r1'));
    const copy = { ...prepare, signature: new Uint8Array(32) };
    expect(signingBytes(copy)).toEqual(signingBytes({ ...prepare }));
    expect(new TextDecoder().decode(signingBytes(copy))).toContain('dwcp/pbft/v1');
    expect(signingBytes({ ...prepare, seq: 2 })).not.toEqual(signingBytes(copy));
    expect(keys.verifier(() => true)('r1', signingBytes({ ...prepare }), prepare.signature)).toBe(true);
    expect(keys.verifier(() => true)('r2', signingBytes({ ...prepare }), prepare.signature)).toBe(false);
  });

  it('digests a batch with its client signatures, and a state with its reply cache', () => {
    const keys = new FakeKeys('enc');
    const r = makeRequest(keys, 'c', 1, { op: 'get', key: 'k' });
    expect(batchDigest([r])).not.toBe(batchDigest([{ ...r, signature: new Uint8Array(32) }]));
    expect(batchDigest([])).toMatch(/^[0-9a-f]{64}$/);
    const clients: ClientRecord[] = [{ client: 'c', timestamp: 1, seq: 1, result: bytes('r') }];
    expect(stateDigest({ snapshot: bytes('s'), clients })).not.toBe(stateDigest({ snapshot: bytes('s'), clients: [] }));
  });
});

describe('pbft canonical decoding (a wire format for the transport)', () => {
  it('round-trips real protocol messages, signatures and all, so a decoded message still verifies', () => {
    const c = new LockstepCluster(4, { checkpointInterval: 4, logWindow: 8, maxCheckpointVotesPerPeer: 3, maxInflightBatches: 4, viewChangeTicks: 5 });
    const seen: PbftMessage[] = [];
    c.filter = (e) => {
      const decoded = decodeCanonical(encodeCanonical(e.message as unknown as Canonical)) as unknown as PbftMessage;
      expect(messageProblem(decoded)).toBeNull();
      if (decoded.type !== 'request' && e.message.type !== 'request') expect(signingBytes(decoded)).toEqual(signingBytes({ ...e.message }));
      else expect(encodeCanonical(decoded as unknown as Canonical)).toEqual(encodeCanonical(e.message as unknown as Canonical));
      seen.push(decoded);
      return decoded; // the cluster runs on decoded copies only
    };
    c.request('a', { op: 'put', key: 'k', value: 'v' }, 'r1');
    c.stabilize();
    c.down.add('r0');
    const second = c.request('a', { op: 'put', key: 'k', value: 'w' }, 'r1');
    c.retransmit(second, 'r1');
    c.tickAll(8);
    expect(c.result(second)).toBe('{"before":"v"}');
    expect(new Set(seen.map((m) => m.type))).toEqual(new Set(['request', 'pre_prepare', 'prepare', 'commit', 'view_change', 'new_view']));
  });

  it('refuses anything but the exact canonical encoding, with the byte offset', () => {
    const good = encodeCanonical({ a: 1, b: [bytes('x'), 'y', null, true] });
    expect(decodeCanonical(good)).toEqual({ a: 1, b: [bytes('x'), 'y', null, true] });
    expect(() => decodeCanonical(good.subarray(0, good.length - 1))).toThrow(/canonical decoding: .* at byte/);
    expect(() => decodeCanonical(new Uint8Array([...good, 0]))).toThrow(/1 trailing bytes/);
    const unordered = new Uint8Array([7, 0, 0, 0, 2, 0, 0, 0, 1, 98, 0, 0, 0, 0, 1, 97, 0]);
    expect(() => decodeCanonical(unordered)).toThrow(/key "a" out of order/);
    expect(() => decodeCanonical(new Uint8Array([6, 255, 255, 255, 255]))).toThrow(/bytes needed/);
    let deep: Canonical = null;
    for (let i = 0; i < 20; i++) deep = [deep];
    expect(() => decodeCanonical(encodeCanonical(deep))).toThrow(/nesting deeper than 16/);
    const proto = decodeCanonical(encodeCanonical({ ['__proto__']: 'x' } as unknown as Canonical)) as Record<string, unknown>;
    expect(Object.getPrototypeOf(proto)).toBe(Object.prototype);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (junk) => {
        try {
          decodeCanonical(junk);
        } catch (error) {
          expect(error).toBeInstanceOf(RangeError);
        }
      }),
      { numRuns: 2000 },
    );
  });

  // Review: a TextDecoder strips a leading U+FEFF unless told not to, so a string (or object key) that
  // begins with one decoded as another string, and the bytes with the BOM were accepted as an encoding
  // of the string without it: decode(encode(v)) !== v, and a request or record holding such a key no
  // longer matched its digest and signature once decoded.
  it('keeps a leading U+FEFF in strings and keys: decode(encode(v)) is v', () => {
    for (const v of [{ key: '\uFEFFk' }, { ['\uFEFFa']: 1, b: ['\uFEFF', '\uFEFF\uFEFFx'] }] as Canonical[]) {
      const decoded = decodeCanonical(encodeCanonical(v));
      expect(decoded).toEqual(v);
      expect(encodeCanonical(decoded)).toEqual(encodeCanonical(v));
    }
  });
});

describe('pbft reply collector', () => {
  const keys = new FakeKeys('replies');
  const members = replicaIds(4);
  const reply = (from: string, result: string, timestamp = 7): Reply => ({ type: 'reply', from, view: 0, client: 'c', timestamp, result: bytes(result) });
  const collector = () => new ReplyCollector({ client: 'c', timestamp: 7, members });

  it('accepts a result on f + 1 matching replies from distinct members', () => {
    const c = collector();
    expect(c.accept(reply('r0', 'ok'))).toEqual({ kind: 'pending', matching: 1 });
    const done = c.accept(reply('r2', 'ok'));
    expect(done.kind).toBe('done');
    expect(c.result).toEqual(bytes('ok'));
  });

  it('is not fooled by f liars, a member voting twice, outsiders or other requests', () => {
    const c = collector();
    expect(c.accept(reply('r3', 'lie')).kind).toBe('pending');
    expect(c.accept(reply('r3', 'lie'))).toEqual({ kind: 'ignored', reason: 'duplicate' });
    expect(c.accept(reply('r3', 'ok'))).toEqual({ kind: 'ignored', reason: 'duplicate' });
    expect(c.accept(reply('mallory', 'lie'))).toEqual({ kind: 'ignored', reason: 'non_member' });
    expect(c.accept(reply('r1', 'lie', 8))).toEqual({ kind: 'ignored', reason: 'other_request' });
    expect(c.accept(reply('r0', 'ok'))).toEqual({ kind: 'pending', matching: 1 });
    expect(c.accept(reply('r1', 'ok'))).toEqual({ kind: 'done', result: bytes('ok') });
  });
});

describe('pbft client table', () => {
  const record = (client: string, timestamp: number, seq: number): ClientRecord => ({ client, timestamp, seq, result: bytes('r') });

  it('refuses to move a client backwards and evicts the smallest (seq, client) when full', () => {
    const t = new ClientTable(2);
    t.record(record('b', 1, 1));
    t.record(record('a', 1, 1));
    expect(() => t.record(record('a', 1, 2))).toThrow(PbftInvariantError);
    t.record(record('c', 1, 2));
    expect(t.get('a')).toBeUndefined();
    expect(t.records().map((r) => r.client)).toEqual(['b', 'c']);
    expect(t.timestamp('a')).toBe(-1);
  });

  it('evicts the same client whether its table was built by execution or restored from a checkpoint', () => {
    const executed = new ClientTable(3);
    for (const r of [record('z', 1, 4), record('a', 1, 4), record('m', 1, 5)]) executed.record(r);
    const restored = new ClientTable(3, executed.records());
    executed.record(record('n', 1, 6));
    restored.record(record('n', 1, 6));
    expect(restored.records()).toEqual(executed.records());
    expect(executed.get('a')).toBeUndefined();
  });
});

describe('pbft checkpoint votes', () => {
  const keys = new FakeKeys('votes');
  const vote = (from: string, seq: number, digest = 'd'.repeat(64)): Checkpoint =>
    seal<Checkpoint>({ type: 'checkpoint', from, seq, digest }, keys.signer(from));

  it('finds the highest checkpoint 2f + 1 members agree on', () => {
    const v = new CheckpointVotes(3);
    for (const from of ['r0', 'r1']) v.add(vote(from, 8));
    expect(v.highestQuorum(3)).toBeNull();
    v.add(vote('r2', 8, 'e'.repeat(64)));
    expect(v.highestQuorum(3)).toBeNull();
    v.add(vote('r3', 8));
    expect(v.highestQuorum(3)?.seq).toBe(8);
    expect(v.add(vote('r3', 8, 'f'.repeat(64)))).toBe('equivocation');
    expect(v.add(vote('r3', 8))).toBe('duplicate');
    v.discardThrough(8);
    expect(v.countFor('r3')).toBe(0);
  });

  it('holds at most its bound per peer, keeping the highest', () => {
    const v = new CheckpointVotes(3);
    for (let i = 1; i <= 100; i++) v.add(vote('r3', 4 * i));
    expect(v.countFor('r3')).toBe(3);
    expect(v.add(vote('r3', 4))).toBe('buffer_full');
    for (const from of ['r0', 'r1']) v.add(vote(from, 400));
    expect(v.highestQuorum(3)?.seq).toBe(400);
  });
});

describe('pbft config', () => {
  it('checks the relations between limits, naming them', () => {
    expect(resolvePbftConfig().logWindow).toBe(128);
    expect(() => resolvePbftConfig({ maxInflightBatches: 200 })).toThrow(/maxInflightBatches \(200\) must not exceed logWindow \(128\)/);
    expect(() => resolvePbftConfig({ maxCheckpointVotesPerPeer: 2 })).toThrow(/maxCheckpointVotesPerPeer \(2\) must be at least/);
    expect(() => resolvePbftConfig({ maxRequestBytes: 2 * 1024 * 1024 })).toThrow(/maxRequestBytes .* must not exceed maxBatchBytes/);
    expect(() => resolvePbftConfig({ viewChangeTicks: 1.5 })).toThrow(/viewChangeTicks must be a positive integer, got 1.5/);
  });
});
