/**
 * The ChaCha20-Poly1305 behind the daemon's Noise channels, handed to
 * `@chainsafe/libp2p-noise` through its `crypto` option. The handshake
 * primitives (X25519, SHA-256, HKDF) are the library's own defaults; only the
 * AEAD of transport messages is replaced, because it runs once per Noise
 * message in each direction and the library's default spends more time around
 * the cipher than in it: it imports the key into OpenSSL again for every
 * message, and sends everything under 1 200 bytes through a WASM ChaCha that
 * runs at ~100 MB/s.
 *
 * Invariants:
 * - Wire-identical to the stock implementation: RFC 8439 ChaCha20-Poly1305
 *   with a 16-byte tag, same nonce, key and associated data as Noise passes
 *   in; only where the work is done differs, so a node using this interoperates
 *   with one using the library default (tested both ways).
 * - Decryption authenticates before it returns: a tampered ciphertext, tag or
 *   associated data throws (node:crypto's `final()` checks the tag, the WASM
 *   path returns null, which is turned into a throw) and no plaintext escapes.
 * - The key object cached for a Noise key is built from a private copy of its
 *   bytes and used only while the caller's key still holds those bytes, so a
 *   cached key can never encrypt under stale key material. Keys are never
 *   logged; the cache holds them only as long as Noise's cipher state does
 *   (a WeakMap keyed by that state's key array).
 */
import crypto, { type KeyObject } from 'node:crypto';
import { asCrypto, defaultCrypto } from '@chainsafe/libp2p-noise/crypto';
import type { ICryptoInterface } from '@chainsafe/libp2p-noise';
import { Uint8ArrayList } from 'uint8arraylist';

/** The library's byte types: its Uint8ArrayList is v2 of the package (ours is v3; lists of either are recognised by both at run time). */
type Bytes = Parameters<ICryptoInterface['chaCha20Poly1305Encrypt']>[0];
type Sealed = ReturnType<ICryptoInterface['chaCha20Poly1305Encrypt']>;

const ALGORITHM = 'chacha20-poly1305';
const TAG_BYTES = 16;

/**
 * Below this many bytes of plaintext the WASM ChaCha is faster than node:crypto,
 * whose fixed cost per message (a cipher object and four calls into OpenSSL,
 * ~5 µs here) outweighs OpenSSL's per-byte speed; measured in bench/RESULTS.md
 * (transport, "AEAD per message"). Above it node:crypto wins, by 8× at 64 KiB.
 */
export const WASM_BELOW_BYTES = 384;

interface CachedKey {
  bytes: Buffer;
  key: KeyObject;
}

const keys = new WeakMap<Uint8Array, CachedKey>();

/** The OpenSSL key object for Noise key `k`, imported once per key rather than once per message. */
function keyObject(k: Uint8Array): KeyObject {
  const cached = keys.get(k);
  if (cached !== undefined && k.byteLength === cached.bytes.byteLength && crypto.timingSafeEqual(k, cached.bytes)) return cached.key;
  const bytes = Buffer.from(k);
  const key = crypto.createSecretKey(bytes);
  keys.set(k, { bytes, key });
  return key;
}

/**
 * Below this average part size a multi-part plaintext is copied into one array
 * and enciphered with one call: each call into OpenSSL costs about as much as
 * copying a few KiB. Above it each part is enciphered where it lies.
 */
const COPY_PARTS_BELOW_BYTES = 4096;

/** The parts of `data` to feed the cipher, in order. */
function parts(data: Bytes): Iterable<Uint8Array> {
  if (data instanceof Uint8Array) return [data];
  const arrays = [...data];
  return data.byteLength < COPY_PARTS_BELOW_BYTES * arrays.length ? [data.subarray()] : arrays;
}

/**
 * Several arrays as the library's byte type without copying them: a list of
 * our uint8arraylist (v3) where the library's types name its own v2. Both
 * versions recognise each other's lists by a shared Symbol.for brand, which
 * is how the Noise stream appends what this returns.
 */
function asSealed(arrays: Uint8Array[]): Sealed {
  if (arrays.length === 1 && arrays[0] !== undefined) return arrays[0];
  return new Uint8ArrayList(...arrays) as unknown as Sealed;
}

function encrypt(plaintext: Bytes, nonce: Uint8Array, ad: Uint8Array, k: Uint8Array): Sealed {
  if (plaintext.byteLength < WASM_BELOW_BYTES) return asCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k);
  const cipher = crypto.createCipheriv(ALGORITHM, keyObject(k), nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(ad, { plaintextLength: plaintext.byteLength });
  const sealed: Uint8Array[] = [];
  for (const part of parts(plaintext)) sealed.push(cipher.update(part));
  cipher.final();
  // Ciphertext parts and tag stay separate arrays rather than a concatenated copy: the socket takes them as they are.
  sealed.push(cipher.getAuthTag());
  return asSealed(sealed);
}

function decrypt(ciphertext: Bytes, nonce: Uint8Array, ad: Uint8Array, k: Uint8Array, dst?: Uint8Array): Sealed {
  if (ciphertext.byteLength < TAG_BYTES) throw new Error(`Noise message of ${ciphertext.byteLength} bytes is shorter than its ${TAG_BYTES}-byte tag`);
  const bodyLength = ciphertext.byteLength - TAG_BYTES;
  if (bodyLength < WASM_BELOW_BYTES) return asCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst);
  const decipher = crypto.createDecipheriv(ALGORITHM, keyObject(k), nonce, { authTagLength: TAG_BYTES });
  decipher.setAAD(ad, { plaintextLength: bodyLength });
  decipher.setAuthTag(ciphertext.subarray(bodyLength));
  const opened: Uint8Array[] = [];
  for (const part of parts(ciphertext instanceof Uint8Array ? ciphertext.subarray(0, bodyLength) : ciphertext.sublist(0, bodyLength))) opened.push(decipher.update(part));
  // final() throws if the tag does not match: the plaintext above is then dropped unseen.
  decipher.final();
  return asSealed(opened);
}

/** Noise's crypto: the library's handshake primitives, this module's transport AEAD. */
export const noiseCrypto: ICryptoInterface = {
  ...defaultCrypto,
  chaCha20Poly1305Encrypt: encrypt,
  chaCha20Poly1305Decrypt: decrypt,
};
