/**
 * Client batches (encoding.ts sealClientBatch): one signature over the
 * Merkle root of the requests a PBFT client sends in one turn. Each request
 * must verify on its own with its path, one verification must cover the
 * batch, and nothing a faulty primary or relay can do with a batch's
 * requests (alter one, move one to another client, cut or swap a path,
 * pass off a signed-but-unsent request of another batch position) may
 * verify; the core refuses such a request as 'bad_request' and still takes
 * the genuine ones of the same batch.
 */
import { describe, expect, it } from 'vitest';
import { Authenticator } from '../../src/consensus/pbft/certificates.ts';
import { PbftCore } from '../../src/consensus/pbft/core.ts';
import { MAX_CLIENT_BATCH_DEPTH, clientBatchRoot, decodeCanonical, encodeCanonical, requestBytes, seal, sealClientBatch } from '../../src/consensus/pbft/encoding.ts';
import type { Canonical } from '../../src/consensus/pbft/encoding.ts';
import { signerMember } from '../../src/consensus/pbft/keys.ts';
import type { ClientRequest } from '../../src/consensus/pbft/types.ts';
import { resolvePbftConfig } from '../../src/consensus/pbft/types.ts';
import { clientRequestProblem } from '../../src/consensus/pbft/validate.ts';
import { FakeKeys, replicaIds } from '../sim/pbft-harness.ts';

const keys = new FakeKeys('client-batch');
const MEMBERS = replicaIds(4);
/** As the daemon's MemberKeys: a lane `member/i` signs with its member's key. */
const fakeVerify = keys.verifier((id) => MEMBERS.includes(id));
const verify = (signer: string, bytes: Uint8Array, signature: Uint8Array) => fakeVerify(signerMember(signer), bytes, signature);
const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

function bodies(member: string, count: number) {
  return Array.from({ length: count }, (_, i) => ({ client: `${member}/${i}`, timestamp: 100 + i, operation: bytes(`put k${i}`), readOnly: false }));
}

function counting() {
  let calls = 0;
  const auth = new Authenticator(MEMBERS, 1, (signer, b, sig) => (calls++, verify(signer, b, sig)), resolvePbftConfig(), { snapshot: new Uint8Array(0), clients: [] });
  return { auth, calls: () => calls };
}

describe('pbft client batches', () => {
  it('signs k requests once: each verifies on its own, with a path of at most ceil(log2 k), and one check per lane (one per batch with the daemon\'s keys)', () => {
    for (const k of [1, 2, 3, 5, 8, 13]) {
      let signs = 0;
      const signer = keys.signer('r1');
      const requests = sealClientBatch(bodies('r1', k), (b) => (signs++, signer(b)));
      expect(signs).toBe(1);
      expect(new Set(requests.map((r) => clientBatchRoot(r).toString('hex'))).size).toBe(1);
      const { auth, calls } = counting();
      for (const r of requests) {
        expect(r.path?.length ?? 0).toBeLessThanOrEqual(Math.ceil(Math.log2(k)));
        expect(clientRequestProblem(r)).toBeNull();
        // As a replica sees it: decoded from the wire, a new object.
        const decoded = decodeCanonical(encodeCanonical(r as unknown as Canonical)) as unknown as ClientRequest;
        expect(auth.request(decoded), `request ${r.client} of a batch of ${k}`).toBe(true);
      }
      // One check per client (lane): the cache is by signer name; the daemon's MemberKeys answers the
      // lanes after the first from its memo of the member's signature (pbft-keys.test.ts): one Ed25519 check.
      expect(calls(), `checks for a batch of ${k}`).toBe(k);
      expect(auth.request(requests[0] as ClientRequest), 'again').toBe(true);
      expect(calls()).toBe(k);
    }
  });

  it('refuses an altered request, one moved to another client or member, and a cut, swapped or padded path', () => {
    const requests = sealClientBatch(bodies('r1', 5), keys.signer('r1'));
    const [a, b] = requests as [ClientRequest, ClientRequest];
    const { auth } = counting();
    expect(auth.request(a)).toBe(true);
    const path = a.path ?? [];
    const forgeries: Record<string, ClientRequest> = {
      'altered operation': { ...a, operation: bytes('put k0 forged') },
      'altered timestamp': { ...a, timestamp: a.timestamp + 1 },
      'another lane of the same member': { ...a, client: 'r1/7' },
      'another member': { ...a, client: 'r2/0' },
      'read-only flag flipped': { ...a, readOnly: true },
      'path cut': { ...a, path: path.slice(1) },
      'path of another request': { ...a, path: b.path ?? [] },
      'path padded': { ...a, path: [...path, new Uint8Array(32)] },
      'signature of another batch': { ...a, signature: sealClientBatch(bodies('r1', 2), keys.signer('r1'))[0]?.signature ?? new Uint8Array(0) },
      'signed alone where the batch signed': { ...a, path: undefined },
      'a field added that the leaf would not cover': { ...a, junk: new Uint8Array(1000) } as ClientRequest,
    };
    for (const [what, forged] of Object.entries(forgeries)) expect(auth.request(forged), what).toBe(false);
  });

  it('keeps requests signed alone (no path) valid, as before', () => {
    const alone = seal<ClientRequest>({ client: 'r1/0', timestamp: 1, operation: bytes('put'), readOnly: false }, keys.signer('r1'));
    const { auth } = counting();
    expect(alone.path).toBeUndefined();
    expect(auth.request(alone)).toBe(true);
    expect(auth.request({ ...alone, path: [] }), 'the same signature read as a batch of one').toBe(false);
  });

  it('bounds the path on the wire and counts it in the request size', () => {
    const [r] = sealClientBatch(bodies('r1', 4), keys.signer('r1')) as [ClientRequest];
    expect(requestBytes(r)).toBe(requestBytes({ ...r, path: undefined }) + 9 + 37 * 2);
    expect(clientRequestProblem({ ...r, path: [new Uint8Array(31)] })).toBe('request.path[0] must be 32 bytes');
    expect(clientRequestProblem({ ...r, path: Array.from({ length: MAX_CLIENT_BATCH_DEPTH + 1 }, () => new Uint8Array(32)) })).toBe(
      `request.path must have at most ${MAX_CLIENT_BATCH_DEPTH} entries`,
    );
  });

  it('the core refuses an altered request of a batch as bad_request and orders the genuine ones of the same batch', () => {
    const core = new PbftCore({ id: 'r0', members: MEMBERS, sign: keys.signer('r0'), verify });
    const [a, b, c] = sealClientBatch(bodies('r1', 3), keys.signer('r1')) as [ClientRequest, ClientRequest, ClientRequest];
    const forged = { ...b, operation: bytes('put k1 forged') };
    expect(core.step({ type: 'request', from: 'r1', request: forged }, 'r1')).toBe('bad_request');
    expect(core.drops().get('bad_request')).toBe(1);
    for (const r of [a, b, c]) expect(core.step({ type: 'request', from: 'r1', request: r }, 'r1')).toBeNull();
    const ready = core.ready();
    const pp = ready?.messages.find((m) => m.message.type === 'pre_prepare')?.message;
    expect(pp?.type === 'pre_prepare' ? pp.batch.map((r) => r.client) : []).toEqual(['r1/0', 'r1/1', 'r1/2']);
  });
});
