/**
 * PBFT signatures with the members' libp2p Ed25519 keys: this node signs
 * with the private key behind its peer ID, and a member's signature is
 * checked against the public key inside that member's configured peer ID
 * (an Ed25519 peer ID embeds its key), so the member list is the PKI.
 *
 * Signer names: a replica signs as its member name; the daemon acting as a
 * PBFT client signs as `<member>/<lane>` (a member runs several client lanes
 * so that it may have several requests in flight, PBFT allowing one per
 * client). Either way the key is the member's.
 *
 * node:crypto is used rather than the libp2p key objects: its sign/verify
 * are synchronous (the core needs that) and run in OpenSSL. Public keys are
 * imported once per peer ID and cached; a peer ID that is not Ed25519 or an
 * unknown name verifies nothing.
 */
import { createPrivateKey, createPublicKey, hash, sign, verify, type KeyObject } from 'node:crypto';
import { peerIdFromString } from '@libp2p/peer-id';
import type { Ed25519PrivateKey } from '@libp2p/interface';
import type { Verify } from './certificates.ts';

/** About 200 bytes each: ~13 MB at most. */
const VERIFIED_CACHE_ENTRIES = 65_536;

const b64url = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64url');

/** The member a signer name belongs to: `name` or `name/lane`. */
export function signerMember(signer: string): string {
  const slash = signer.indexOf('/');
  return slash < 0 ? signer : signer.slice(0, slash);
}

export function ed25519Signer(privateKey: Ed25519PrivateKey): (bytes: Uint8Array) => Uint8Array {
  const raw = privateKey.raw;
  const key = createPrivateKey({
    key: { kty: 'OKP', crv: 'Ed25519', d: b64url(raw.subarray(0, 32)), x: b64url(privateKey.publicKey.raw) },
    format: 'jwk',
  });
  return (bytes) => sign(null, bytes, key);
}

function publicKeyOf(peerId: string): KeyObject | null {
  try {
    const raw = peerIdFromString(peerId).publicKey?.raw;
    if (raw === undefined || raw.length !== 32) return null;
    return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64url(raw) }, format: 'jwk' });
  } catch {
    return null;
  }
}

function memoKey(peerId: string, bytes: Uint8Array, signature: Uint8Array): string {
  return `${peerId}:${hash('sha256', bytes, 'base64')}:${Buffer.from(signature.buffer, signature.byteOffset, 64).toString('base64')}`;
}

/**
 * Verifies signatures of members, looked up by name through `peerIdOf` at
 * each call (so a reloaded member list applies at once); counts and times
 * verifications for metrics.
 *
 * Verified signatures are remembered (bounded, least recently used first
 * out): PBFT forwards messages as evidence, so the same prepare or
 * checkpoint arrives again inside certificates, view-changes, new-views and
 * state transfers, and a SHA-256 of the signed bytes costs a fraction of an
 * Ed25519 verification. Only successes are cached, keyed by signer, digest
 * of the bytes and the signature itself, so a cache hit is exactly a
 * verification that succeeded before.
 */
export class MemberKeys {
  readonly #peerIdOf: (member: string) => string | undefined;
  readonly #keys = new Map<string, KeyObject | null>();
  readonly #observe: ((seconds: number, ok: boolean) => void) | undefined;
  readonly #verified = new Map<string, true>();
  /** Verifications answered from the cache (for tests and status). */
  cacheHits = 0;

  constructor(peerIdOf: (member: string) => string | undefined, observe?: (seconds: number, ok: boolean) => void) {
    this.#peerIdOf = peerIdOf;
    this.#observe = observe;
  }

  readonly verify: Verify = (signer, bytes, signature) => {
    const peerId = this.#peerIdOf(signerMember(signer));
    if (peerId === undefined) return false;
    let key = this.#keys.get(peerId);
    if (key === undefined) {
      key = publicKeyOf(peerId);
      this.#keys.set(peerId, key);
    }
    if (key === null || signature.length !== 64) return false;
    const memo = memoKey(peerId, bytes, signature);
    if (this.#verified.delete(memo)) {
      this.#verified.set(memo, true);
      this.cacheHits++;
      return true;
    }
    const started = this.#observe === undefined ? 0 : performance.now();
    const ok = verify(null, bytes, key, signature);
    this.#observe?.((performance.now() - started) / 1000, ok);
    if (ok) this.#remember(memo);
    return ok;
  };

  /**
   * `sign` for `member` (this node), remembering each signature it makes as
   * verified: the daemon's own client requests reach its own replica at once
   * and come back inside pre-prepares, and a signature this process just
   * made needs no Ed25519 check to be believed here.
   */
  remembering(member: string, sign: (bytes: Uint8Array) => Uint8Array): (bytes: Uint8Array) => Uint8Array {
    return (bytes) => {
      const signature = sign(bytes);
      const peerId = this.#peerIdOf(member);
      if (peerId !== undefined && signature.length === 64) this.#remember(memoKey(peerId, bytes, signature));
      return signature;
    };
  }

  #remember(memo: string): void {
    this.#verified.set(memo, true);
    if (this.#verified.size > VERIFIED_CACHE_ENTRIES) this.#verified.delete(this.#verified.keys().next().value as string);
  }
}
