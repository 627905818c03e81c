/**
 * The ChaCha20-Poly1305 behind the daemon's Noise channels, handed to
 * `@chainsafe/libp2p-noise` through its `crypto` option. The handshake
 * primitives (X25519, SHA-256, HKDF) are the library's own defaults; only the
 * AEAD is replaced, because it runs once per Noise message in each direction
 * and the library's default spends more time around the cipher than in it.
 *
 * The AEAD is libsodium's (`sodium-native`, a prebuilt native package) rather
 * than node:crypto's, for two reasons measured in bench/RESULTS.md (transport,
 * "fewer buffers per byte"): it seals and opens in place, into memory the
 * caller owns, so a Noise message costs no output buffer of its own (with
 * node:crypto every message allocated a ciphertext or plaintext, and buffer
 * volume is what drives V8's full collections on this path); and its fixed
 * cost per message is ~0.6 µs against node:crypto's ~5 µs (a Cipheriv object
 * and four calls), so small messages need no second, WASM implementation.
 *
 * Invariants:
 * - Wire-identical to the stock implementation: RFC 8439 ChaCha20-Poly1305
 *   (IETF, 96-bit nonce) with a 16-byte tag, same nonce, key and associated
 *   data as Noise passes in; only where the work is done differs, so a node
 *   using this interoperates with one using the library default (tested both
 *   ways).
 * - Decryption authenticates before it returns: libsodium checks the tag
 *   before it writes any plaintext and throws on a mismatch, so no plaintext
 *   of a tampered message escapes (libsodium zeroes the destination; the
 *   caller drops the connection).
 * - Nonces and keys stay in the library's cipher states: this module is
 *   handed them per message and keeps nothing. Keys are never logged.
 * - Sealing in place (sealInPlace) is only ever asked for synchronously by
 *   the one caller that set it up, on memory that caller owns; every other
 *   encryption (the handshake's) gets a fresh output array.
 */
import sodium from 'sodium-native';
import { defaultCrypto } from '@chainsafe/libp2p-noise/crypto';
import type { ICryptoInterface } from '@chainsafe/libp2p-noise';

/** The library's byte types: its Uint8ArrayList is v2 of the package (ours is v3; lists of either are recognised by both at run time). */
type Bytes = Parameters<ICryptoInterface['chaCha20Poly1305Encrypt']>[0];
type Sealed = ReturnType<ICryptoInterface['chaCha20Poly1305Encrypt']>;

export const TAG_BYTES = 16;

/** The plaintext the next encrypt() may seal where it lies (see sealInPlace). */
let inPlace: Uint8Array | undefined;

/**
 * Seals `plaintext` in place through `encrypt` (a Noise cipher state's, which
 * supplies the nonce and key): the ciphertext overwrites the plaintext and the
 * tag goes into the TAG_BYTES that follow it in the same ArrayBuffer, which
 * the caller must own and have reserved. Returns the ciphertext and tag as
 * one view.
 */
export function sealInPlace(plaintext: Uint8Array, encrypt: (plaintext: Uint8Array) => Uint8Array | { byteLength: number }): Uint8Array {
  if (plaintext.byteOffset + plaintext.byteLength + TAG_BYTES > plaintext.buffer.byteLength) {
    throw new RangeError(`sealInPlace: no room for the ${TAG_BYTES}-byte tag after a ${plaintext.byteLength}-byte plaintext`);
  }
  inPlace = plaintext;
  try {
    const sealed = encrypt(plaintext);
    if (!(sealed instanceof Uint8Array) || sealed.buffer !== plaintext.buffer || sealed.byteOffset !== plaintext.byteOffset) {
      throw new Error('sealInPlace: the Noise cipher state did not seal through this module (is noiseCrypto its crypto?)');
    }
    return sealed;
  } finally {
    inPlace = undefined;
  }
}

function contiguous(data: Bytes): Uint8Array {
  return data instanceof Uint8Array ? data : data.subarray();
}

function encrypt(plaintext: Bytes, nonce: Uint8Array, ad: Uint8Array, k: Uint8Array): Sealed {
  if (plaintext === inPlace) {
    inPlace = undefined;
    const sealed = new Uint8Array(plaintext.buffer, plaintext.byteOffset, plaintext.byteLength + TAG_BYTES);
    // libsodium encrypts in place when the message and the ciphertext start at the same address.
    sodium.crypto_aead_chacha20poly1305_ietf_encrypt(sealed, plaintext, ad, null, nonce, k);
    return sealed;
  }
  const sealed = new Uint8Array(plaintext.byteLength + TAG_BYTES);
  sodium.crypto_aead_chacha20poly1305_ietf_encrypt(sealed, contiguous(plaintext), ad, null, nonce, k);
  return sealed;
}

/** Opens `ciphertext` into `dst` when given (which may be the ciphertext's own first bytes: in place), else into a fresh array. */
function decrypt(ciphertext: Bytes, nonce: Uint8Array, ad: Uint8Array, k: Uint8Array, dst?: Uint8Array): Sealed {
  if (ciphertext.byteLength < TAG_BYTES) throw new Error(`Noise message of ${ciphertext.byteLength} bytes is shorter than its ${TAG_BYTES}-byte tag`);
  const bodyLength = ciphertext.byteLength - TAG_BYTES;
  const plaintext = dst === undefined ? new Uint8Array(bodyLength) : dst.subarray(0, bodyLength);
  if (plaintext.byteLength !== bodyLength) throw new RangeError(`Noise decrypt: destination of ${dst?.byteLength} bytes is shorter than the ${bodyLength}-byte plaintext`);
  // Throws "could not verify data" on a bad tag, before any plaintext is written.
  sodium.crypto_aead_chacha20poly1305_ietf_decrypt(plaintext, null, contiguous(ciphertext), ad, nonce, k);
  return plaintext;
}

/** Noise's crypto: the library's handshake primitives, this module's AEAD. */
export const noiseCrypto: ICryptoInterface = {
  ...defaultCrypto,
  chaCha20Poly1305Encrypt: encrypt,
  chaCha20Poly1305Decrypt: decrypt,
};
