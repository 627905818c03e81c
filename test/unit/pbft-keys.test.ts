/**
 * PBFT signatures with real libp2p keys: what ed25519Signer produces with a
 * node's private key verifies under MemberKeys for that member's name and
 * its client lanes (`name/lane`), and nothing else verifies: another
 * member's signature, an unknown member, a changed byte, a signature of the
 * wrong length, or a member whose peer ID holds no Ed25519 key (false, never
 * an exception, since the core treats a throw as a broken invariant).
 */
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { Ed25519PrivateKey } from '@libp2p/interface';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { beforeAll, describe, expect, it } from 'vitest';
import { Authenticator } from '../../src/consensus/pbft/certificates.ts';
import { sealClientBatch } from '../../src/consensus/pbft/encoding.ts';
import { MemberKeys, ed25519Signer, signerMember } from '../../src/consensus/pbft/keys.ts';
import type { ClientRequest } from '../../src/consensus/pbft/types.ts';
import { resolvePbftConfig } from '../../src/consensus/pbft/types.ts';

const bytes = new TextEncoder().encode('pre_prepare view 0 seq 1');

let alice: Ed25519PrivateKey;
let bob: Ed25519PrivateKey;
let peerIds: Map<string, string>;

beforeAll(async () => {
  alice = await generateKeyPair('Ed25519');
  bob = await generateKeyPair('Ed25519');
  const secp = await generateKeyPair('secp256k1');
  peerIds = new Map([
    ['alice', peerIdFromPrivateKey(alice).toString()],
    ['bob', peerIdFromPrivateKey(bob).toString()],
    ['secp', peerIdFromPrivateKey(secp).toString()],
    // An RSA peer ID (a multihash of the key, no key inside) and text that is no peer ID at all.
    ['rsa', 'QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N'],
    ['garbage', 'not-a-peer-id'],
    ['empty', ''],
  ]);
});

function memberKeys(observe?: (seconds: number, ok: boolean) => void): MemberKeys {
  return new MemberKeys((name) => peerIds.get(name), observe);
}

describe('pbft keys', () => {
  it('names the member behind a signer: the replica itself or one of its client lanes', () => {
    expect(signerMember('alice')).toBe('alice');
    expect(signerMember('alice/3')).toBe('alice');
    expect(signerMember('/3')).toBe('');
  });

  it('signs as libp2p does (Ed25519 is deterministic), and the signature verifies for the member and its lanes', async () => {
    const signature = ed25519Signer(alice)(bytes);
    expect(signature).toHaveLength(64);
    expect(Buffer.from(signature)).toEqual(Buffer.from(await alice.sign(bytes)));
    const keys = memberKeys();
    expect(keys.verify('alice', bytes, signature)).toBe(true);
    expect(keys.verify('alice/3', bytes, signature)).toBe(true);
  });

  it('refuses another member\'s signature, an unknown member, and a tampered message or signature', () => {
    const keys = memberKeys();
    const signature = ed25519Signer(alice)(bytes);
    expect(keys.verify('bob', bytes, signature)).toBe(false);
    expect(keys.verify('bob/0', bytes, signature)).toBe(false);
    expect(keys.verify('alice', bytes, ed25519Signer(bob)(bytes))).toBe(false);
    expect(keys.verify('carol', bytes, signature)).toBe(false);
    for (const i of [0, 17, bytes.length - 1]) {
      const tampered = Uint8Array.from(bytes);
      tampered[i] = (tampered[i] ?? 0) ^ 1;
      expect(keys.verify('alice', tampered, signature), `message byte ${i} flipped`).toBe(false);
    }
    for (const i of [0, 31, 63]) {
      const tampered = Uint8Array.from(signature);
      tampered[i] = (tampered[i] ?? 0) ^ 0x80;
      expect(keys.verify('alice', bytes, tampered), `signature byte ${i} flipped`).toBe(false);
    }
  });

  it.each([0, 32, 63, 65, 128])('refuses a signature of %i bytes without throwing', (length) => {
    const signature = ed25519Signer(alice)(bytes);
    const resized = new Uint8Array(length);
    resized.set(signature.subarray(0, Math.min(length, 64)));
    expect(memberKeys().verify('alice', bytes, resized)).toBe(false);
  });

  it.each(['secp', 'rsa', 'garbage', 'empty'])('verifies nothing for a member whose peer ID holds no Ed25519 key (%s)', (name) => {
    const keys = memberKeys();
    const signature = ed25519Signer(alice)(bytes);
    expect(() => keys.verify(name, bytes, signature)).not.toThrow();
    expect(keys.verify(name, bytes, signature)).toBe(false);
    expect(keys.verify(`${name}/1`, bytes, signature)).toBe(false);
  });

  it('looks the peer ID up at each call, so a changed member list applies at once', () => {
    let aliceId = peerIds.get('alice');
    const keys = new MemberKeys((name) => (name === 'alice' ? aliceId : undefined));
    const signature = ed25519Signer(alice)(bytes);
    expect(keys.verify('alice', bytes, signature)).toBe(true);
    aliceId = peerIds.get('bob');
    expect(keys.verify('alice', bytes, signature)).toBe(false);
    aliceId = undefined;
    expect(keys.verify('alice', bytes, signature)).toBe(false);
  });

  it('believes its own signatures without an Ed25519 check, and only for exactly what it signed', () => {
    const seen: boolean[] = [];
    const keys = memberKeys((_seconds, ok) => seen.push(ok));
    const sign = keys.remembering('alice', ed25519Signer(alice));
    const signature = sign(bytes);
    expect(keys.verify('alice/2', bytes, signature)).toBe(true);
    expect(keys.cacheHits).toBe(1);
    expect(seen).toEqual([]);
    // Anything else is checked as before: another signer's name, other bytes.
    expect(keys.verify('bob', bytes, signature)).toBe(false);
    const other = Uint8Array.from(bytes);
    other[0] = (other[0] ?? 0) ^ 1;
    expect(keys.verify('alice', other, signature)).toBe(false);
    expect(seen).toEqual([false, false]);
  });

  it('reports each verification\'s duration and outcome to observe', () => {
    const seen: Array<[number, boolean]> = [];
    const keys = memberKeys((seconds, ok) => seen.push([seconds, ok]));
    const signature = ed25519Signer(alice)(bytes);
    keys.verify('alice', bytes, signature);
    keys.verify('bob', bytes, signature);
    expect(seen.map(([, ok]) => ok)).toEqual([true, false]);
    for (const [seconds] of seen) {
      expect(seconds).toBeGreaterThanOrEqual(0);
      expect(seconds).toBeLessThan(5);
    }
  });

  it('checks a client batch of all lanes with one Ed25519 verification at a replica, and refuses its requests in another member\'s name', () => {
    const seen: boolean[] = [];
    const keys = memberKeys((_seconds, ok) => seen.push(ok));
    const auth = new Authenticator(['alice', 'bob', 'c', 'd'], 1, keys.verify, resolvePbftConfig(), { snapshot: new Uint8Array(0), clients: [] });
    const lanes = Array.from({ length: 16 }, (_, i) => ({ client: `alice/${i}`, timestamp: 1, operation: bytes, readOnly: false }));
    const requests = sealClientBatch(lanes, ed25519Signer(alice));
    for (const r of requests) expect(auth.request(r), r.client).toBe(true);
    expect(seen).toEqual([true]);
    expect(auth.request({ ...(requests[0] as ClientRequest), client: 'bob/0' })).toBe(false);
  });
});
