/**
 * Review (issue 19): the hand-written codecs of the write path (write-command-wire.ts,
 * raft wire.ts decodeHotBatch, admin kv-write-wire.ts) against their schema paths, on
 * protobuf built field by field rather than byte-mutated: varints padded to non-minimal
 * length or past 2^53, explicit proto3 zeros and empty bytes, repeated, reordered,
 * unknown and wrong-wire-type fields, lengths past the end, keys at and past the bounds,
 * invalid UTF-8 (a surrogate's 3-byte form, a truncated sequence) and a BOM. A decoder
 * that is handed these must answer exactly what the schema path answers.
 */
import { Buffer } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { KvCommand } from '../../src/kv/command.ts';
import { KvCommandSchema, decodeKvCommand } from '../../src/kv/command.ts';
import { decodeHotBatch, decodeSchemaBatch } from '../../src/consensus/raft/wire.ts';
import { decodeWriteCommand } from '../../src/kv/write-command-wire.ts';
import type { MethodDefinition } from '@grpc/proto-loader';
import { KV_SERVICE, loadAdminPackage, serviceDefinition } from '../../src/admin/schema.ts';
import { decodePutRequest } from '../../src/admin/kv-write-wire.ts';
import type { Message } from '../../src/consensus/raft/types.ts';
import { varint } from '../support/wire-fuzz.ts';

/** One protobuf field: a varint (value, extra padding bytes) or length-delimited bytes. */
type Field = { n: number; kind: 'varint'; value: bigint; pad: number } | { n: number; kind: 'bytes'; bytes: Uint8Array } | { n: number; kind: 'fixed32' };


function encodeFields(fields: readonly Field[]): Uint8Array {
  const out: Uint8Array[] = [];
  for (const f of fields) {
    if (f.kind === 'varint') out.push(Uint8Array.from([...varint(BigInt(f.n << 3)), ...varint(f.value, f.pad)]));
    else if (f.kind === 'bytes') out.push(Uint8Array.from([...varint(BigInt((f.n << 3) | 2)), ...varint(BigInt(f.bytes.byteLength))]), f.bytes);
    else out.push(Uint8Array.from([...varint(BigInt((f.n << 3) | 5)), 1, 2, 3, 4]));
  }
  return Uint8Array.from(Buffer.concat(out));
}

const number = fc.oneof(
  fc.constantFrom(0n, 1n, 127n, 128n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  fc.nat({ max: 300 }).map(BigInt),
);
const pad = fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 4 }) });
const utf8 = (s: string) => Uint8Array.from(Buffer.from(s, 'utf8'));
const text = fc.oneof(
  { weight: 12, arbitrary: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 8 }).map(utf8) },
  fc.constant(new Uint8Array(0)),
  fc.constant(Uint8Array.from([0xed, 0xa0, 0x80])), // U+D800 as CESU-8: not UTF-8
  fc.constant(Uint8Array.from([0xef, 0xbb, 0xbf, 0x61])), // BOM then 'a'
  fc.constant(Uint8Array.from([0xe2, 0x82])), // truncated
  fc.constant(utf8('k'.repeat(1024))),
  fc.constant(utf8('k'.repeat(1025))),
  fc.constant(utf8('\u{1F600}'.repeat(256))),
  fc.constant(utf8('€'.repeat(128))),
  fc.constant(utf8('€'.repeat(129))),
);
const blob = fc.oneof(
  { weight: 40, arbitrary: fc.uint8Array({ maxLength: 16 }) },
  { weight: 10, arbitrary: fc.constant(new Uint8Array(0)) },
  { weight: 1, arbitrary: fc.constant(new Uint8Array(1024 * 1024)) },
  { weight: 1, arbitrary: fc.constant(new Uint8Array(1024 * 1024 + 1)) },
);

/** Fields of field numbers `ns` of every wire type, shuffled and repeated at times. */
function fieldsOf(ns: readonly number[], nested: fc.Arbitrary<Uint8Array> | null): fc.Arbitrary<Field[]> {
  const one: fc.Arbitrary<Field> = fc.oneof(
    fc.record({ n: fc.constantFrom(...ns), kind: fc.constant('varint' as const), value: number, pad }),
    fc.record({ n: fc.constantFrom(...ns), kind: fc.constant('bytes' as const), bytes: nested === null ? fc.oneof(text, blob) : fc.oneof(text, blob, nested) }),
    fc.record({ n: fc.constantFrom(...ns), kind: fc.constant('fixed32' as const) }),
  );
  return fc.array(one, { maxLength: 6 });
}

/** Canonical-looking fields, then perturbed: most inputs are near-valid, which is where the two paths could part. */
function nearValid(base: fc.Arbitrary<Field[]>, ns: readonly number[], nested: fc.Arbitrary<Uint8Array> | null): fc.Arbitrary<Uint8Array> {
  return fc.oneof(
    { weight: 3, arbitrary: base.map(encodeFields) },
    { weight: 2, arbitrary: fc.tuple(base, fieldsOf(ns, nested), fc.nat()).map(([b, extra, at]) => encodeFields([...b.slice(0, at % (b.length + 1)), ...extra.slice(0, 1), ...b.slice(at % (b.length + 1))])) },
    { weight: 1, arbitrary: fc.tuple(base, fc.nat()).map(([b, i]) => encodeFields(b.length < 2 ? b : [...b.slice(0, i % b.length), ...b.slice((i % b.length) + 1), b[i % b.length] as Field])) },
    { weight: 1, arbitrary: fc.tuple(base, fc.nat()).map(([b, i]) => encodeFields(b.length === 0 ? b : [...b, b[i % b.length] as Field])) },
    { weight: 1, arbitrary: fc.tuple(base.map(encodeFields), fc.nat()).map(([bytes, cut]) => bytes.subarray(0, cut % (bytes.length + 1))) },
    { weight: 1, arbitrary: fieldsOf(ns, nested).map(encodeFields) },
  );
}

function answer<T>(run: () => T): unknown {
  try {
    const value = run();
    if (value === null) return { ok: null };
    // Key order at every level, and each byte field's type and bytes.
    return { ok: JSON.parse(JSON.stringify(value, (_k, v: unknown) => (v instanceof Uint8Array ? `${v.constructor.name}:${Buffer.from(v).toString('hex')}` : v))), text: JSON.stringify(value, (_k, v: unknown) => (v instanceof Uint8Array ? v.byteLength : v)) };
  } catch (err) {
    return { error: err instanceof Error ? `${err.constructor.name}: ${err.message}` : String(err) };
  }
}

describe('KvCommand: structured fuzz, direct codec against the schema', () => {
  const key = text;
  const v = (n: number, value: fc.Arbitrary<bigint>) => fc.record({ n: fc.constant(n), kind: fc.constant('varint' as const), value, pad });
  const b = (n: number, bytes: fc.Arbitrary<Uint8Array>) => fc.record({ n: fc.constant(n), kind: fc.constant('bytes' as const), bytes });
  const opBody = fc.oneof(
    fc.tuple(b(1, key), b(2, blob)).map((fs) => fs as Field[]),
    fc.tuple(b(1, key)).map((fs) => fs as Field[]),
    fc.tuple(b(1, key), v(2, number), b(3, blob)).map((fs) => fs as Field[]),
    fc.tuple(b(1, key), b(3, blob)).map((fs) => fs as Field[]),
  );
  const opBytes = nearValid(opBody, [1, 2, 3], null);
  const command = fc
    .tuple(b(1, text), v(2, fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 1000 }).map(BigInt) }, { weight: 1, arbitrary: number })), fc.oneof({ weight: 6, arbitrary: fc.constantFrom(3, 4, 5) }, { weight: 1, arbitrary: fc.constantFrom(6, 7, 8) }), fc.oneof({ weight: 2, arbitrary: opBody.map(encodeFields) }, { weight: 1, arbitrary: opBytes }))
    .map(([id, seq, op, body]) => [id, seq, { n: op, kind: 'bytes' as const, bytes: body }] as Field[]);
  it('decodeKvCommand answers what KvCommandSchema.decode answers', () => {
    let direct = 0;
    fc.assert(
      fc.property(nearValid(command, [1, 2, 3, 4, 5, 9], opBytes), (bytes) => {
        if (decodeWriteCommand(bytes) !== null) direct++;
        for (const input of [bytes, Buffer.from(bytes)]) {
          expect(answer<KvCommand>(() => decodeKvCommand(input))).toEqual(answer<KvCommand>(() => KvCommandSchema.decode(input)));
        }
      }),
      { numRuns: 2000 },
    );
    // The direct path did answer often enough for the comparison to mean something.
    expect(direct).toBeGreaterThan(30);
  }, 120_000);
});

describe('RaftBatch: structured fuzz, decodeHotBatch against the schema path', () => {
  const v = (n: number, value: fc.Arbitrary<bigint>) => fc.record({ n: fc.constant(n), kind: fc.constant('varint' as const), value, pad });
  const b = (n: number, bytes: fc.Arbitrary<Uint8Array>) => fc.record({ n: fc.constant(n), kind: fc.constant('bytes' as const), bytes });
  const small = fc.oneof(fc.nat({ max: 20 }).map(BigInt), number);
  const entry = nearValid(fc.tuple(v(1, small), v(2, small), b(3, blob)).map((fs) => fs as Field[]), [1, 2, 3, 4], null);
  const bodies = fc.oneof(
    fc.tuple(v(1, small), v(2, small), fc.array(entry, { maxLength: 3 }), v(4, small)).map(([pi, pt, es, c]) => [pi, pt, ...es.map((e) => ({ n: 3, kind: 'bytes' as const, bytes: e })), c] as Field[]),
    fc.tuple(v(1, fc.constantFrom(0n, 1n, 2n)), v(2, small), v(3, small), v(4, small)).map((fs) => fs as Field[]),
    fc.tuple(v(1, small), v(2, small)).map((fs) => fs as Field[]),
    fc.tuple(v(1, small)).map((fs) => fs as Field[]),
  );
  const message = fc
    .tuple(v(1, small), fc.constantFrom(4, 5, 6, 7, 2, 10), nearValid(bodies, [1, 2, 3, 4, 5], entry))
    .map(([term, n, body]) => encodeFields([term, { n, kind: 'bytes', bytes: body }]));
  const name = (s: string) => ({ n: 0, kind: 'bytes' as const, bytes: utf8(s) });
  const batch = fc
    .tuple(fc.array(nearValid(fc.tuple(message).map(([m]) => [{ n: 3, kind: 'bytes', bytes: m }] as Field[]), [1, 2, 3], null), { minLength: 1, maxLength: 3 }))
    .map(([ms]) => Uint8Array.from(Buffer.concat([encodeFields([{ ...name('a'), n: 1 }, { ...name('b'), n: 2 }]), ...ms])));
  it('decodeHotBatch, when it answers, answers what decodeSchemaBatch answers', () => {
    let hot = 0;
    fc.assert(
      fc.property(batch, (bytes) => {
        const direct = answer<{ messages: Message[] } | null>(() => decodeHotBatch(bytes, { from: 'a', to: 'b' }));
        if ((direct as { ok?: unknown }).ok === null) return;
        hot++;
        expect(direct).toEqual(answer(() => decodeSchemaBatch(bytes, { from: 'a', to: 'b' })));
      }),
      { numRuns: 3000 },
    );
    expect(hot).toBeGreaterThan(10);
  }, 120_000);
});

describe('admin Kv.Put request: structured fuzz, decodePutRequest against proto-loader', () => {
  const put = serviceDefinition(loadAdminPackage(), KV_SERVICE)['Put'] as MethodDefinition<object, object>;
  const v = (n: number, value: fc.Arbitrary<bigint>) => fc.record({ n: fc.constant(n), kind: fc.constant('varint' as const), value, pad });
  const b = (n: number, bytes: fc.Arbitrary<Uint8Array>) => fc.record({ n: fc.constant(n), kind: fc.constant('bytes' as const), bytes });
  const options = nearValid(
    fc.tuple(b(1, text), b(2, text), v(3, number), v(4, number), b(5, text), v(6, number)).map((fs) => fs as Field[]),
    [1, 2, 3, 4, 5, 6, 7],
    null,
  );
  const request = fc.tuple(b(1, text), b(2, blob), b(3, options)).map((fs) => fs as Field[]);
  it('decodePutRequest, when it answers, answers what requestDeserialize answers (key order, types, values)', () => {
    let direct = 0;
    fc.assert(
      fc.property(nearValid(request, [1, 2, 3, 4], options), (bytes) => {
        const input = Buffer.from(bytes);
        const mine = answer(() => decodePutRequest(input));
        if ((mine as { ok?: unknown }).ok === null) return;
        direct++;
        expect(mine).toEqual(answer(() => put.requestDeserialize(input)));
      }),
      { numRuns: 3000 },
    );
    expect(direct).toBeGreaterThan(30);
  }, 120_000);
});
