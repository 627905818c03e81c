import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { batchDigest, seal, signingBytes, stateDigest } from '../../src/consensus/pbft/encoding.ts';
import type {
  Checkpoint,
  ClientRequest,
  Commit,
  Committed,
  Fetch,
  NewView,
  PbftConfig,
  PbftMessage,
  PrePrepare,
  Prepare,
  SignedMessage,
  StateMessage,
  ViewChange,
} from '../../src/consensus/pbft/types.ts';
import { LockstepCluster, SMALL_PBFT_CONFIG, deliver, makeRequest } from '../sim/pbft-harness.ts';

const SMALL: Partial<PbftConfig> = { ...SMALL_PBFT_CONFIG, maxBufferedPerPeer: 16 };

const ZERO = '0'.repeat(64);

function sealFetch(c: LockstepCluster, from: string, seq: number): Fetch {
  return seal<Fetch>({ type: 'fetch', from, seq }, c.keys.signer(from));
}

/** A cluster with one request executed (seq 1) and helpers to speak as any member. */
function setup() {
  const c = new LockstepCluster(4, SMALL);
  c.request('a', { op: 'add', key: 'x', by: 1 }, 'r1');
  c.stabilize();
  const as = <M extends SignedMessage>(from: string, body: Omit<M, 'from' | 'signature'>): M =>
    seal<M>({ ...body, from } as Omit<M, 'signature'>, c.keys.signer(from));
  const prePrepare = (from: string, view: number, seq: number, batch: ClientRequest[]): PrePrepare =>
    as<PrePrepare>(from, { type: 'pre_prepare', view, seq, digest: batchDigest(batch), batch });
  const vote = <T extends 'prepare' | 'commit'>(type: T, from: string, pp: PrePrepare) =>
    as<Prepare | Commit>(from, { type, view: pp.view, seq: pp.seq, digest: pp.digest } as Omit<Prepare | Commit, 'from' | 'signature'>);
  const request = (client: string, timestamp: number) => {
    c.clients.add(client);
    return makeRequest(c.keys, client, timestamp, { op: 'add', key: 'x', by: 1 });
  };
  return { c, as, prePrepare, vote, request };
}

describe('pbft core: hostile input is dropped and counted by kind', () => {
  it('bad signature, wrong sender, non-member, malformed, duplicate', () => {
    const { c, as, prePrepare, vote, request } = setup();
    const r1 = c.core('r1');
    const pp = prePrepare('r0', 0, 2, [request('b', 1)]);
    expect(r1.step({ ...pp, signature: c.keys.signer('r2')(new Uint8Array([1])) }, 'r0')).toBe('bad_signature');
    // The channel is r2's: r2 cannot speak for r3, signed or not, nor relay a request as r3.
    expect(r1.step(vote('prepare', 'r3', pp), 'r2')).toBe('wrong_sender');
    expect(r1.step({ type: 'request', from: 'r3', request: request('b', 1) }, 'r2')).toBe('wrong_sender');
    c.clients.add('mallory');
    expect(deliver(r1, as<Prepare>('mallory', { type: 'prepare', view: 0, seq: 2, digest: pp.digest }))).toBe('non_member');
    expect(r1.step(vote('prepare', 'r3', pp), 'mallory')).toBe('non_member');
    expect(deliver(r1, { ...vote('prepare', 'r3', pp), seq: -1 } as Prepare)).toBe('malformed');
    expect(deliver(r1, { type: 'gossip', from: 'r3' } as unknown as PbftMessage)).toBe('malformed');
    expect(deliver(r1, pp)).toBeNull();
    expect(deliver(r1, pp)).toBe('duplicate');
    const prepare = vote('prepare', 'r3', pp);
    expect(deliver(r1, prepare)).toBeNull();
    expect(deliver(r1, prepare)).toBe('duplicate');
    // Our own message played back to us.
    expect(deliver(r1, vote('prepare', 'r1', pp))).toBe('duplicate');
    expect(r1.drops().get('bad_signature')).toBe(1);
    expect(r1.drops().get('wrong_sender')).toBe(2);
    expect(r1.drops().get('non_member')).toBe(2);
    expect(r1.drops().get('malformed')).toBe(2);
  });

  it('counts votes on their channel\'s word and catches a forged signature where the vote becomes evidence', () => {
    const { c, prePrepare, vote, request } = setup();
    const r1 = c.core('r1');
    const d1 = c.driver('r1');
    const verify = c.keys.verifier((id) => c.ids.includes(id) || c.clients.has(id));
    const forge = <V extends Prepare | Commit>(v: V): V => ({ ...v, signature: c.keys.signer('r3')(new Uint8Array([9])) });
    const sent = () => d1.pump().messages.map((o) => o.message);
    const pp = prePrepare('r0', 0, 2, [request('b', 1)]);
    expect(deliver(r1, pp)).toBeNull();
    sent();
    // r3's prepare arrives on r3's channel with a signature r3 did not make: counted, no check yet.
    expect(deliver(r1, forge(vote('prepare', 'r3', pp)))).toBeNull();
    // With ours it makes 2f, but a prepared certificate must convince a view change: it is checked, and fails.
    expect(r1.drops().get('bad_signature')).toBe(1);
    expect(sent().some((m) => m.type === 'commit')).toBe(false);
    // The forged vote was forgotten, so r3 may vote again; a good one completes the certificate.
    expect(deliver(r1, vote('prepare', 'r3', pp))).toBeNull();
    expect(sent().filter((m) => m.type === 'commit').map((m) => m.from)).toEqual(['r1']);
    // Commits are not checked to commit: a forged one from r3 counts (r3 did send it, over its channel)...
    expect(deliver(r1, forge(vote('commit', 'r3', pp)))).toBeNull();
    expect(deliver(r1, vote('commit', 'r0', pp))).toBeNull();
    sent();
    expect(r1.lastExecuted).toBe(2);
    expect(r1.drops().get('bad_signature')).toBe(1);
    expect(deliver(r1, vote('commit', 'r2', pp))).toBeNull();
    // ...but the certificate r1 shows a peer that fetches seq 2 holds only commits that verify.
    expect(deliver(r1, sealFetch(c, 'r2', 2))).toBeNull();
    const answers = sent().filter((m): m is Committed => m.type === 'committed');
    expect(answers).toHaveLength(1);
    const commits = answers[0]?.certificate.commits ?? [];
    expect(commits.map((m) => m.from).sort()).toEqual(['r0', 'r1', 'r2']);
    for (const m of commits) expect(verify(m.from, signingBytes(m), m.signature)).toBe(true);
    expect(r1.drops().get('bad_signature')).toBe(2);
  });

  it('outside the watermarks, stale view, not from the primary', () => {
    const { c, prePrepare, vote, request } = setup();
    const r1 = c.core('r1');
    const far = prePrepare('r0', 0, 9, [request('b', 1)]); // h = 0, L = 8
    expect(deliver(r1, far)).toBe('outside_watermarks');
    expect(deliver(r1, vote('commit', 'r2', far))).toBe('outside_watermarks');
    expect(deliver(r1, prePrepare('r2', 0, 2, [request('b', 1)]))).toBe('not_primary');
    expect(deliver(r1, vote('prepare', 'r0', prePrepare('r0', 0, 2, [request('b', 2)])))).toBe('not_primary');
    // Move everyone to view 1; a view-0 message is stale afterwards.
    c.down.add('r0');
    c.request('a', { op: 'add', key: 'x', by: 1 }, 'r1');
    c.stabilize();
    c.tickAll(13);
    expect(r1.view).toBe(1);
    expect(deliver(r1, vote('prepare', 'r3', prePrepare('r0', 0, 3, [request('b', 3)])))).toBe('stale_view');
  });

  it('a pre-prepare whose digest does not match its batch, or with a forged client request', () => {
    const { c, as, request } = setup();
    const r1 = c.core('r1');
    const batch = [request('b', 1)];
    const lying = as<PrePrepare>('r0', { type: 'pre_prepare', view: 0, seq: 2, digest: batchDigest([request('b', 2)]), batch });
    expect(deliver(r1, lying)).toBe('digest_mismatch');
    const forgedRequest = { ...request('b', 1), signature: new Uint8Array(32) };
    const withForgery = as<PrePrepare>('r0', {
      type: 'pre_prepare',
      view: 0,
      seq: 2,
      digest: batchDigest([forgedRequest]),
      batch: [forgedRequest],
    });
    expect(deliver(r1, withForgery)).toBe('bad_request');
    expect(r1.request(forgedRequest)).toEqual({ kind: 'dropped', reason: 'bad_request' });
    // A genuine signature does not vouch for other content, even once its request was verified.
    const genuine = request('d', 1);
    expect(r1.request(genuine)).toEqual({ kind: 'accepted' });
    const tampered = { ...genuine, operation: new TextEncoder().encode('{"op":"put","key":"x","value":"evil"}') };
    expect(r1.request(tampered)).toEqual({ kind: 'dropped', reason: 'bad_request' });
    expect(c.core('r1').lastExecuted).toBe(1);
  });

  it('detects an equivocating primary (two pre-prepares for one view and seq) and starts a view change', () => {
    const { c, prePrepare, request } = setup();
    const r1 = c.core('r1');
    expect(deliver(r1, prePrepare('r0', 0, 2, [request('b', 1)]))).toBeNull();
    expect(deliver(r1, prePrepare('r0', 0, 2, [request('c', 1)]))).toBe('equivocation');
    expect(r1.drops().get('equivocation')).toBe(1);
    expect(r1.view).toBe(1);
    expect(r1.active).toBe(false);
  });

  it('refuses certificates that do not prove what they claim', () => {
    const { c, as, prePrepare, vote, request } = setup();
    const r2 = c.core('r2');
    const pp = prePrepare('r0', 0, 2, [request('b', 1)]);
    // A prepared certificate whose 2f prepares are one replica's, twice.
    const fakePrepared = { prePrepare: pp, prepares: [vote('prepare', 'r3', pp) as Prepare, vote('prepare', 'r3', pp) as Prepare] };
    const genesis = stateDigest({ snapshot: new Uint8Array(0), clients: [] });
    const viewChange = (prepared: ViewChange['prepared']) =>
      as<ViewChange>('r3', { type: 'view_change', view: 1, checkpoint: { seq: 0, digest: genesis }, checkpointProof: [], prepared });
    expect(deliver(r2, viewChange([fakePrepared]))).toBe('invalid_certificate');
    const realPrepared = { prePrepare: pp, prepares: [vote('prepare', 'r3', pp) as Prepare, vote('prepare', 'r1', pp) as Prepare] };
    expect(deliver(r2, viewChange([realPrepared]))).toBeNull();
    // A commit certificate two commits short of 2f + 1.
    const committed = as<Committed>('r3', {
      type: 'committed',
      certificate: { prePrepare: pp, commits: [vote('commit', 'r3', pp) as Commit, vote('commit', 'r0', pp) as Commit] },
    });
    expect(deliver(r2, committed)).toBe('invalid_certificate');
    // A new-view from the right primary but with no view-changes behind it.
    const nv = as<NewView>('r1', { type: 'new_view', view: 1, viewChanges: [], prePrepares: [] });
    expect(deliver(r2, nv)).toBe('invalid_certificate');
    expect(deliver(r2, as<NewView>('r3', { type: 'new_view', view: 1, viewChanges: [], prePrepares: [] }))).toBe('not_primary');
    expect(r2.view).toBe(0);
    expect(r2.lastExecuted).toBe(1);
  });

  it('refuses transferred state that does not match 2f + 1 signed checkpoints', () => {
    const { c, as } = setup();
    c.down.add('r3'); // behind, so it would take a state
    for (let i = 0; i < 4; i++) {
      c.request('a', { op: 'add', key: 'x', by: 1 }, 'r1');
      c.stabilize();
    }
    const r1 = c.core('r1');
    expect(r1.stableCheckpoint).toBe(4);
    const stable = c.driver('r1').disk.stableCheckpoint;
    if (stable === null) throw new Error('no stable checkpoint persisted');
    const r3 = c.core('r3');
    const tampered = as<StateMessage>('r1', {
      type: 'state',
      checkpoint: { seq: 8, digest: stable.digest },
      proof: stable.proof,
      state: stable.state,
      entries: [],
    });
    expect(deliver(r3, tampered)).toBe('invalid_certificate');
    const wrongState = as<StateMessage>('r1', {
      type: 'state',
      checkpoint: { seq: 4, digest: stable.digest },
      proof: stable.proof,
      state: { ...stable.state, snapshot: new TextEncoder().encode('[["x","1000"]]') },
      entries: [],
    });
    expect(deliver(r3, wrongState)).toBe('digest_mismatch');
    const selfProved = as<StateMessage>('r1', {
      type: 'state',
      checkpoint: { seq: 4, digest: ZERO },
      proof: [as<Checkpoint>('r1', { type: 'checkpoint', seq: 4, digest: ZERO })],
      state: stable.state,
      entries: [],
    });
    expect(deliver(r3, selfProved)).toBe('invalid_certificate');
    expect(r3.lastExecuted).toBe(1);
    const genuine = as<StateMessage>('r1', { type: 'state', checkpoint: { seq: 4, digest: stable.digest }, proof: stable.proof, state: stable.state, entries: [] });
    expect(deliver(r3, genuine)).toBeNull();
    expect(r3.lastExecuted).toBe(4);
    expect(deliver(r3, genuine)).toBe('duplicate');
  });

  it('never throws on arbitrary input, only counts it', () => {
    const { c } = setup();
    const r1 = c.core('r1');
    fc.assert(
      fc.property(fc.anything(), fc.constantFrom('request', 'pre_prepare', 'prepare', 'view_change', 'new_view', 'state', 'committed'), (junk, type) => {
        const m = { ...(typeof junk === 'object' && junk !== null ? junk : { junk }), type, from: 'r2' } as unknown as PbftMessage;
        expect(deliver(r1, m)).toBeTypeOf('string');
      }),
      { numRuns: 300 },
    );
    expect(r1.drops().get('malformed')).toBeGreaterThan(0);
  });
});

describe('pbft core: flooding cannot grow memory past the per-peer bounds', () => {
  it('a member flooding future-view votes, checkpoint votes and view-changes is held to its quota', () => {
    const { c, as, prePrepare, vote, request } = setup();
    const r1 = c.core('r1');
    const pp = prePrepare('r0', 0, 2, [request('b', 1)]);
    for (let i = 0; i < 5000; i++) {
      deliver(r1, as<Prepare>('r3', { type: 'prepare', view: 2 + (i % 50), seq: 1 + (i % 8), digest: pp.digest }));
      deliver(r1, as<Checkpoint>('r3', { type: 'checkpoint', seq: 4 * (1 + i), digest: ZERO }));
      deliver(r1, vote('commit', 'r3', { ...pp, seq: 1 + (i % 200) }));
    }
    const held = r1.heldFor('r3');
    expect(held.futureMessages).toBe(SMALL.maxBufferedPerPeer);
    expect(held.checkpointVotes).toBe(SMALL.maxCheckpointVotesPerPeer);
    expect(r1.drops().get('buffer_full')).toBeGreaterThan(4000);
    expect(r1.drops().get('outside_watermarks')).toBeGreaterThan(0);
    expect(r1.status().slots).toBeLessThanOrEqual(2 * (SMALL.logWindow as number));
    // The cluster still works for everyone else.
    const next = c.request('a', { op: 'add', key: 'x', by: 1 }, 'r2');
    c.stabilize();
    expect(c.result(next)).toBe('{"value":"2"}');
  });

  it('fetch, state and new-view answers are rate-limited per peer', () => {
    const { c, as } = setup();
    const r1 = c.core('r1');
    expect(deliver(r1, as<Fetch>('r3', { type: 'fetch', seq: 1 }))).toBeNull();
    for (let i = 0; i < 100; i++) {
      deliver(r1, as<Fetch>('r3', { type: 'fetch', seq: 1 }));
    }
    expect(r1.drops().get('rate_limited')).toBe(100);
    const answers = r1.ready()?.messages.filter((m) => m.to === 'r3') ?? [];
    expect(answers).toHaveLength(1);
  });
});
