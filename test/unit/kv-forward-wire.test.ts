/**
 * The direct codec of the forward exchange's frames (src/kv/forward-wire.ts)
 * never disagrees with the schema path it shortcuts: for any frame it
 * encodes the schema's bytes or leaves the frame (and its error) to the
 * schema; for any bytes (valid, mutated, truncated, or a hostile encoding)
 * the public schemas answer what the schema path alone answers, the same
 * items (fields, their order, the command's type) or the same error. And the
 * frames the bench sends do take the direct path.
 */
import { Buffer } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  KvForwardRequestsProtoSchema,
  KvForwardRequestsSchema,
  KvForwardResponsesProtoSchema,
  KvForwardResponsesSchema,
  decodeKvCommand,
  encodeKvCommand,
  kvProto,
  type KvForwardRequest,
  type KvForwardResponse,
  type KvResult,
} from '../../src/kv/command.ts';
import { decodeForwardRequests, decodeForwardResponses, encodeForwardRequests, encodeForwardResponses } from '../../src/kv/forward-wire.ts';
import { mutatedBytes } from '../support/wire-fuzz.ts';

const RequestsType = kvProto.lookupType('dwcp.kv.v1.KvForwardRequests');
const ResponsesType = kvProto.lookupType('dwcp.kv.v1.KvForwardResponses');

function commandDecodes(command: Uint8Array): boolean {
  try {
    decodeKvCommand(command);
    return true;
  } catch {
    return false;
  }
}

/** A value made comparable with its fields in order and each byte array's type. */
function shape(v: unknown): unknown {
  if (v instanceof Uint8Array) return { type: v.constructor.name, hex: Buffer.from(v).toString('hex') };
  if (Array.isArray(v)) return v.map(shape);
  if (typeof v === 'object' && v !== null) return Object.entries(v).map(([k, x]) => [k, shape(x)]);
  return v;
}

function outcome(run: () => unknown): unknown {
  try {
    return { ok: shape(run()) };
  } catch (err) {
    return { error: err instanceof Error ? `${err.constructor.name}: ${err.message}` : String(err) };
  }
}

function hexOrError(run: () => Uint8Array): string {
  try {
    return Buffer.from(run()).toString('hex');
  } catch (err) {
    return `error ${err instanceof Error ? `${err.constructor.name}: ${err.message}` : String(err)}`;
  }
}

const count = fc.oneof(fc.nat(), fc.constant(0), fc.constant(1), fc.constant(2 ** 32 - 1), fc.constant(2 ** 32), fc.constant(Number.MAX_SAFE_INTEGER), fc.constant(2 ** 53), fc.constant(1.5), fc.constant(-1), fc.integer({ min: 1, max: 2 ** 40 }));
const command = fc.oneof(
  fc.record({ key: fc.string({ maxLength: 30 }), value: fc.uint8Array({ maxLength: 300 }), seq: fc.integer({ min: 1, max: 2 ** 40 }) }).map(({ key, value, seq }) => {
    try {
      return Uint8Array.from(encodeKvCommand({ clientId: 'c', seq, op: 'put', key: key === '' ? 'k' : key, value }));
    } catch {
      return Uint8Array.from([1, 2, 3]);
    }
  }),
  fc.uint8Array({ maxLength: 20 }),
  fc.constant(new Uint8Array(0)),
);
const request: fc.Arbitrary<KvForwardRequest> = fc.record({ command, timeoutMs: fc.oneof(count, fc.constant(60_000), fc.constant(60_001)), id: count });
const meta = fc.oneof(fc.constant(null), fc.record({ revision: count, createRevision: count }));
const result: fc.Arbitrary<KvResult> = fc.oneof(
  fc.record({ ok: fc.constant(true as const), op: fc.constantFrom('put' as const, 'cas' as const), revision: count, prev: meta }),
  fc.record({ ok: fc.constant(true as const), op: fc.constant('delete' as const), revision: count, deleted: fc.boolean(), prev: meta }),
  fc.record({ ok: fc.constant(false as const), reason: fc.constant('cas_mismatch' as const), currentRevision: count }),
);
const response: fc.Arbitrary<KvForwardResponse> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ id: count, kind: fc.constant('result' as const), result }) },
  { weight: 1, arbitrary: fc.record({ id: count, kind: fc.constant('error' as const), error: fc.record({ code: fc.constantFrom('not_leader' as const, 'timeout' as const), message: fc.string({ maxLength: 10 }), leaderHint: fc.string({ maxLength: 5 }) }) }) },
);
const frame = <T>(item: fc.Arbitrary<T>) => fc.oneof({ weight: 8, arbitrary: fc.array(item, { minLength: 1, maxLength: 5 }) }, { weight: 1, arbitrary: fc.constant([] as T[]) });
/** Frames the direct path should take: every item within bounds (edge values included). */
const revision = fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 2 ** 40 }), fc.constant(Number.MAX_SAFE_INTEGER));
const uint32 = fc.oneof(fc.constant(0), fc.nat(), fc.constant(2 ** 32 - 1));
const validCommand = fc.record({ key: fc.string({ minLength: 1, maxLength: 30 }), value: fc.uint8Array({ minLength: 1, maxLength: 300 }), seq: fc.integer({ min: 1, max: 2 ** 40 }) }).map(({ key, value, seq }) => encodeKvCommand({ clientId: 'c', seq, op: 'put', key, value }));
const validRequest: fc.Arbitrary<KvForwardRequest> = fc.record({ command: validCommand, timeoutMs: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 60_000 }), fc.constant(60_000)), id: uint32 });
const validMeta = fc.oneof(fc.constant(null), fc.tuple(revision, revision).map(([a, b]) => ({ revision: Math.max(a, b), createRevision: Math.min(a, b) })));
const validResponse: fc.Arbitrary<KvForwardResponse> = fc.record({ id: uint32, kind: fc.constant('result' as const), result: fc.record({ ok: fc.constant(true as const), op: fc.constantFrom('put' as const, 'cas' as const), revision, prev: validMeta }) });
const frames = <T>(valid: fc.Arbitrary<T>, any: fc.Arbitrary<T>) => fc.oneof(fc.array(valid, { minLength: 1, maxLength: 5 }), frame(any), frame(fc.oneof(valid, any)));

/** Bytes a peer could send: the schema's encoding of any frame, or (out of bounds) protobufjs' own. */
function encodings<T>(items: fc.Arbitrary<T[]>, encode: (items: T[]) => Uint8Array, raw: (items: T[]) => Uint8Array): fc.Arbitrary<Uint8Array> {
  const encoded = items.map((xs) => {
    try {
      return Uint8Array.from(encode(xs));
    } catch {
      try {
        return Uint8Array.from(raw(xs));
      } catch {
        return new Uint8Array(0);
      }
    }
  });
  const mutated = mutatedBytes(encoded);
  return fc.oneof(encoded, mutated, fc.uint8Array({ maxLength: 40 }));
}

const rawRequests = (xs: KvForwardRequest[]) => RequestsType.encode(RequestsType.fromObject({ requests: xs.map((r) => ({ ...r, id: Math.abs(Math.floor(r.id)) % 2 ** 32, timeoutMs: Math.abs(Math.floor(r.timeoutMs)) % 2 ** 32 })) })).finish();
const rawResponses = (xs: KvForwardResponse[]) =>
  ResponsesType.encode(
    ResponsesType.fromObject({
      responses: xs.map((r) => {
        const id = Math.abs(Math.floor(r.id)) % 2 ** 32;
        if (r.kind === 'error') return { id, error: r.error };
        const res = r.result;
        const clamp = (n: number) => Math.abs(Math.floor(n)) % 2 ** 53;
        const prev = 'prev' in res && res.prev !== null ? { revision: clamp(res.prev.revision), createRevision: clamp(res.prev.createRevision) } : null;
        if (res.ok && (res.op === 'put' || res.op === 'cas')) return { id, result: { [res.op]: { revision: clamp(res.revision), prev } } };
        return { id, result: { casMismatch: { currentRevision: 1 } } };
      }),
    }),
  ).finish();

describe('forward-wire', () => {
  it('encodes requests exactly as the schema does, or leaves the frame (and its error) to the schema', () => {
    let direct = 0;
    fc.assert(
      fc.property(frames(validRequest, request), (requests) => {
        const bytes = encodeForwardRequests(requests, commandDecodes);
        const schema = hexOrError(() => KvForwardRequestsProtoSchema.encode(requests));
        if (bytes !== null) {
          direct++;
          expect(bytes.toString('hex')).toBe(schema);
        }
        expect(hexOrError(() => KvForwardRequestsSchema.encode(requests))).toBe(schema);
      }),
      { numRuns: 3000 },
    );
    expect(direct).toBeGreaterThan(500);
  });

  it('encodes responses exactly as the schema does, or leaves the frame (and its error) to the schema', () => {
    let direct = 0;
    fc.assert(
      fc.property(frames(validResponse, response), (responses) => {
        const bytes = encodeForwardResponses(responses);
        const schema = hexOrError(() => KvForwardResponsesProtoSchema.encode(responses));
        if (bytes !== null) {
          direct++;
          expect(bytes.toString('hex')).toBe(schema);
        }
        expect(hexOrError(() => KvForwardResponsesSchema.encode(responses))).toBe(schema);
      }),
      { numRuns: 3000 },
    );
    expect(direct).toBeGreaterThan(500);
  });

  it('decodes any bytes of a request frame as the schema does, as Buffer and as Uint8Array', () => {
    fc.assert(
      fc.property(encodings(frames(validRequest, request), (xs) => KvForwardRequestsProtoSchema.encode(xs), rawRequests), (bytes) => {
        for (const input of [bytes, Buffer.from(bytes)]) {
          expect(outcome(() => KvForwardRequestsSchema.decode(input))).toEqual(outcome(() => KvForwardRequestsProtoSchema.decode(input)));
        }
      }),
      { numRuns: 5000 },
    );
  });

  it('decodes any bytes of a response frame as the schema does, as Buffer and as Uint8Array', () => {
    fc.assert(
      fc.property(encodings(frames(validResponse, response), (xs) => KvForwardResponsesProtoSchema.encode(xs), rawResponses), (bytes) => {
        for (const input of [bytes, Buffer.from(bytes)]) {
          expect(outcome(() => KvForwardResponsesSchema.decode(input))).toEqual(outcome(() => KvForwardResponsesProtoSchema.decode(input)));
        }
      }),
      { numRuns: 5000 },
    );
  });

  it('takes the direct path both ways for the frames a put makes, and returns views of the input', () => {
    const cmd = encodeKvCommand({ clientId: 'bench-1', seq: 7, op: 'put', key: 'key-00042', value: Buffer.from('v'.repeat(256)) });
    const requests: KvForwardRequest[] = [
      { command: cmd, timeoutMs: 10_000, id: 0 },
      { command: cmd, timeoutMs: 60_000, id: 2 ** 32 - 1 },
    ];
    const reqBytes = encodeForwardRequests(requests, commandDecodes);
    expect(reqBytes).not.toBeNull();
    const decoded = decodeForwardRequests(reqBytes!, commandDecodes);
    expect(shape(decoded)).toEqual(shape(KvForwardRequestsProtoSchema.decode(reqBytes!)));
    expect(decoded![0]!.command.buffer).toBe(reqBytes!.buffer);
    const responses: KvForwardResponse[] = [
      { id: 0, kind: 'result', result: { ok: true, op: 'put', revision: 1, prev: null } },
      { id: 5, kind: 'result', result: { ok: true, op: 'cas', revision: Number.MAX_SAFE_INTEGER, prev: { revision: 300, createRevision: 300 } } },
    ];
    const resBytes = encodeForwardResponses(responses);
    expect(resBytes).not.toBeNull();
    expect(decodeForwardResponses(resBytes!)).not.toBeNull();
    expect(shape(decodeForwardResponses(resBytes!))).toEqual(shape(KvForwardResponsesProtoSchema.decode(resBytes!)));
  });
});

/** A varint's bytes (minimal). */
function varintOf(n: number): number[] {
  const out: number[] = [];
  let rest = n;
  while (rest >= 0x80) {
    out.push((rest % 0x80) | 0x80);
    rest = Math.floor(rest / 0x80);
  }
  out.push(rest);
  return out;
}

/** A length-delimited field whose declared length is off by `delta` from its body's. */
function lengthField(tag: number, body: number[], delta: number): number[] {
  return [tag, ...varintOf(Math.max(0, body.length + delta)), ...body];
}

describe('forward-wire on nested lengths that do not fit their fields (review, issue 19)', () => {
  // Response frames built by hand, every nested length (item, result, outcome, prev) possibly off by a little,
  // so that a varint can run past the end of the message that should hold it.
  const off = fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -3, max: 3 }) });
  const builtResponse = fc
    .record({ op: fc.constantFrom(0x0a, 0x1a), revision: revision, prev: validMeta, id: uint32, deltas: fc.tuple(off, off, off, off) })
    .map(({ op, revision: rev, prev, id, deltas: [dItem, dResult, dBody, dPrev] }) => {
      const prevBody = prev === null ? [] : [0x08, ...varintOf(prev.revision), 0x10, ...varintOf(prev.createRevision)];
      const body = [0x08, ...varintOf(rev), ...(prev === null ? [] : lengthField(0x12, prevBody, dPrev))];
      const item = [...lengthField(0x0a, lengthField(op, body, dBody), dResult), ...(id === 0 ? [] : [0x18, ...varintOf(id)])];
      return lengthField(0x0a, item, dItem);
    });

  const builtRequest = fc
    .record({ command: validCommand, timeoutMs: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 60_000 })), id: uint32, deltas: fc.tuple(off, off) })
    .map(({ command: cmd, timeoutMs, id, deltas: [dItem, dCommand] }) => {
      const item = [...lengthField(0x0a, [...cmd], dCommand), 0x10, ...varintOf(timeoutMs), ...(id === 0 ? [] : [0x18, ...varintOf(id)])];
      return lengthField(0x0a, item, dItem);
    });

  it('decodes any such request frame as the schema does', () => {
    fc.assert(
      fc.property(fc.array(builtRequest, { minLength: 1, maxLength: 3 }), (items) => {
        const bytes = Uint8Array.from(items.flat());
        for (const input of [bytes, Buffer.from(bytes)]) {
          expect(outcome(() => KvForwardRequestsSchema.decode(input))).toEqual(outcome(() => KvForwardRequestsProtoSchema.decode(input)));
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('a revision varint that runs past its WriteResult is refused as the schema refuses it', () => {
    // The WriteResult's length says 1 byte (the revision's tag); its varint (5) lies outside it, inside the item.
    const bytes = Uint8Array.of(0x0a, 6, 0x0a, 3, 0x0a, 1, 0x08, 0x05);
    expect(outcome(() => KvForwardResponsesProtoSchema.decode(bytes))).toEqual({ error: expect.stringMatching(/not a valid protobuf encoding/) });
    expect(decodeForwardResponses(bytes)).toBeNull();
    expect(outcome(() => KvForwardResponsesSchema.decode(bytes))).toEqual(outcome(() => KvForwardResponsesProtoSchema.decode(bytes)));
  });

  it('decodes any such response frame as the schema does', () => {
    fc.assert(
      fc.property(fc.array(builtResponse, { minLength: 1, maxLength: 3 }), (items) => {
        const bytes = Uint8Array.from(items.flat());
        for (const input of [bytes, Buffer.from(bytes)]) {
          expect(outcome(() => KvForwardResponsesSchema.decode(input))).toEqual(outcome(() => KvForwardResponsesProtoSchema.decode(input)));
        }
      }),
      { numRuns: 5000 },
    );
  });
});
