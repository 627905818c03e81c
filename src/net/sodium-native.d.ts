/**
 * The slice of `sodium-native` (libsodium bindings; the package ships no
 * types) that src/net/noise-crypto.ts uses: IETF ChaCha20-Poly1305, combined
 * mode (ciphertext then 16-byte tag). Both throw on failure; decrypt throws
 * when the tag does not verify.
 */
declare module 'sodium-native' {
  interface Sodium {
    crypto_aead_chacha20poly1305_ietf_encrypt(c: Uint8Array, m: Uint8Array, ad: Uint8Array | null, nsec: null, npub: Uint8Array, k: Uint8Array): number;
    crypto_aead_chacha20poly1305_ietf_decrypt(m: Uint8Array, nsec: null, c: Uint8Array, ad: Uint8Array | null, npub: Uint8Array, k: Uint8Array): number;
  }
  const sodium: Sodium;
  export default sodium;
}
