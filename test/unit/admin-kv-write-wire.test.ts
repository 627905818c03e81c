/**
 * The hand-written Kv.Put request reader and write response writer
 * (src/admin/kv-write-wire.ts) never disagree with @grpc/proto-loader's own
 * deserializer and serializer: the same object (fields, order, value type)
 * for every request it reads, including mutated and truncated ones, the same
 * bytes for every response it writes, and both take the common shapes.
 */
import { Buffer } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { MethodDefinition } from '@grpc/proto-loader';
import { KV_SERVICE, loadAdminPackage, serviceDefinition, type KvWriteResponse } from '../../src/admin/schema.ts';
import { decodePutRequest, encodeWriteResponse } from '../../src/admin/kv-write-wire.ts';

const put = serviceDefinition(loadAdminPackage(), KV_SERVICE)['Put'] as MethodDefinition<object, KvWriteResponse>;

function shape(run: () => unknown): unknown {
  try {
    const v = run();
    return JSON.stringify(v, (_k, x: unknown) => (x instanceof Uint8Array ? `${x.constructor.name}:${Buffer.from(x).toString('hex')}` : x));
  } catch (err) {
    return { error: String(err) };
  }
}

const text = fc.oneof(fc.constant(''), fc.string({ unit: 'grapheme', maxLength: 20 }));
const count = fc.oneof(fc.constant(0), fc.nat(), fc.maxSafeNat());
const options = fc.option(
  fc.record(
    { scope: text, client_id: text, seq: count.map(String), timeout_ms: fc.nat({ max: 2 ** 32 - 1 }), consistency: text, ttl_ms: count.map(String) },
    { requiredKeys: [] },
  ),
);
const request = fc.record({ key: text, value: fc.uint8Array({ maxLength: 300 }), options }, { requiredKeys: [] });

describe('admin kv-write-wire', () => {
  it('reads a Put request as proto-loader does, or leaves it to proto-loader', () => {
    let direct = 0;
    const edits = fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 3 });
    fc.assert(
      fc.property(request, fc.boolean(), edits, fc.nat(), (req, mutate, changes, cut) => {
        const bytes = Buffer.from(put.requestSerialize(req));
        if (mutate && bytes.length > 0) for (const [at, b] of changes) bytes[at % bytes.length] = b;
        const input = mutate && cut % 3 === 0 ? bytes.subarray(0, cut % (bytes.length + 1)) : bytes;
        const mine = decodePutRequest(input);
        if (!mutate) expect(mine).not.toBeNull();
        if (mine === null) return;
        direct++;
        expect(shape(() => mine)).toEqual(shape(() => put.requestDeserialize(input)));
      }),
      { numRuns: 3000 },
    );
    expect(direct).toBeGreaterThan(1000);
  });

  const item = fc.record({ key: text, value: fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)), revision: count, create_revision: count, region: text, hlc: text });
  const response: fc.Arbitrary<KvWriteResponse> = fc.record({
    ok: fc.boolean(),
    revision: count,
    reason: text,
    current_revision: count,
    prev: fc.option(item),
    leader: text,
    consistency: text,
    regions_acked: fc.nat({ max: 2 ** 32 - 1 }),
    regions_total: fc.nat({ max: 2 ** 32 - 1 }),
  });

  it('writes a write response with the bytes proto-loader writes', () => {
    fc.assert(
      fc.property(response, (r) => {
        const mine = encodeWriteResponse(r);
        expect(mine).not.toBeNull();
        expect(mine?.toString('hex')).toBe(Buffer.from(put.responseSerialize(r)).toString('hex'));
      }),
      { numRuns: 2000 },
    );
  });

  it('leaves a response it cannot write exactly to proto-loader', () => {
    const base: KvWriteResponse = { ok: true, revision: 1, reason: '', current_revision: 0, prev: null, leader: 'a', consistency: 'strong', regions_acked: 0, regions_total: 0 };
    expect(encodeWriteResponse({ ...base, revision: 2 ** 53 })).toBeNull();
    expect(encodeWriteResponse({ ...base, leader: '\uD800' })).toBeNull();
    expect(encodeWriteResponse(base)).not.toBeNull();
  });
});
