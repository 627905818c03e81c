/**
 * Building blocks of the wire fuzz tests (hand codecs checked against their
 * schema paths): protobuf varints built by hand, non-minimal ones included,
 * and byte-level mutations of valid encodings.
 */
import fc from 'fast-check';

/** `value` as a protobuf varint, padded with `pad` extra continuation bytes (non-minimal; at most 10 bytes in all). */
export function varint(value: number | bigint, pad = 0): number[] {
  const out: number[] = [];
  let v = BigInt(value);
  do {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  } while (v > 0n);
  for (let i = 0; i < pad && out.length < 10; i++) out.push(0x80);
  out[out.length - 1] = (out[out.length - 1] as number) & 0x7f;
  return out;
}

/** Encodings from `encoded` with up to 3 bytes overwritten and, half the time, cut short. */
export function mutatedBytes(encoded: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  return fc.tuple(encoded, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 3 }), fc.nat(), fc.boolean()).map(([bytes, edits, cut, doCut]) => {
    const out = Uint8Array.from(bytes);
    for (const [at, b] of edits) if (out.length > 0) out[at % out.length] = b;
    return doCut && out.length > 0 ? out.subarray(0, cut % out.length) : out;
  });
}
