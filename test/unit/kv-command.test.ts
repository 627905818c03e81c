/**
 * The key-value wire schemas: commands, results and the forward exchange
 * round-trip in their flat TypeScript shapes; every bound is enforced on
 * encode and on decode with an error naming the field (KvDecodeError for
 * commands and results, which are not frames; a schema FrameError for the
 * forward exchange, which is); hostile bytes never escape as anything but
 * that error; key order is UTF-8 byte order.
 */
import { Buffer } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { FrameError } from '../../src/net/framing.ts';
import { KvDecodeError } from '../../src/kv/decode-error.ts';
import type { KvCommand, KvForwardResponse, KvResult } from '../../src/kv/command.ts';
import {
  KV_FORWARD_MAX_FRAME_BYTES,
  KV_MAX_COMMAND_BYTES,
  KV_MAX_KEY_BYTES,
  KV_MAX_VALUE_BYTES,
  KV_RANGE_MAX_LIMIT,
  KvForwardRequestsSchema,
  KvForwardResponsesSchema,
  KV_FORWARD_MAX_BATCH,
  forwardRequestBytes,
  forwardResponseBytes,
  KvResultSchema,
  compareKeys,
  decodeKvCommand,
  encodeKvCommand,
  kvProto,
} from '../../src/kv/command.ts';

/** Decoded bytes fields are Buffers (see src/net/schema.ts), so fixtures are too, for toEqual. */
const bytes = (text: string): Uint8Array => Buffer.from(text);
const meta = { revision: 7, createRevision: 3 };

/** Encodes a KvCommand-shaped protobuf object without any validation, as a hostile or buggy peer could. */
function rawCommand(wire: object): Uint8Array {
  const type = kvProto.lookupType('dwcp.kv.v1.KvCommand');
  return type.encode(type.fromObject(wire)).finish();
}

function schemaError(run: () => unknown): FrameError {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(FrameError);
    expect((err as FrameError).reason).toBe('schema');
    return err as FrameError;
  }
  throw new Error('expected a schema FrameError, nothing was thrown');
}

function decodeError(run: () => unknown): KvDecodeError {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(KvDecodeError);
    return err as KvDecodeError;
  }
  throw new Error('expected a KvDecodeError, nothing was thrown');
}

describe('KvCommand schema', () => {
  const commands: KvCommand[] = [
    { clientId: 'c1', seq: 1, op: 'put', key: 'a/b', value: bytes('v') },
    { clientId: 'c1', seq: 2, op: 'put', key: 'empty', value: bytes('') },
    { clientId: 'c1', seq: 3, op: 'delete', key: 'a/b' },
    { clientId: 'c1', seq: 4, op: 'cas', key: 'k', expectedRevision: 0, value: bytes('new') },
    { clientId: 'c1', seq: Number.MAX_SAFE_INTEGER, op: 'cas', key: 'k', expectedRevision: Number.MAX_SAFE_INTEGER, value: bytes('x') },
    { clientId: 'ü-client', seq: 5, op: 'get', key: '鍵' },
    { clientId: 'c1', seq: 6, op: 'range', prefix: '', limit: 1, after: '' },
    { clientId: 'c1', seq: 7, op: 'range', prefix: 'vm/', limit: KV_RANGE_MAX_LIMIT, after: 'vm/7' },
  ];

  it.each(commands)('round-trips $op (seq $seq)', (cmd) => {
    expect(decodeKvCommand(encodeKvCommand(cmd))).toEqual(cmd);
  });

  it.each([
    [{ clientId: 'c', seq: 1, op: 'put', key: '', value: bytes('v') }, /field put\.key is required/],
    [{ clientId: 'c', seq: 1, op: 'put', key: 'x'.repeat(KV_MAX_KEY_BYTES + 1), value: bytes('v') }, /field put\.key is 1025 bytes of UTF-8, above the 1024-byte limit/],
    // 342 characters, but 1026 bytes: the bound is on bytes.
    [{ clientId: 'c', seq: 1, op: 'delete', key: '€'.repeat(342) }, /field delete\.key is 1026 bytes of UTF-8/],
    [{ clientId: 'c', seq: 1, op: 'get', key: 'a\ud800' }, /field get\.key is not well-formed Unicode/],
    [{ clientId: 'c', seq: 1, op: 'put', key: 'k', value: new Uint8Array(KV_MAX_VALUE_BYTES + 1) }, /field put\.value is 1048577 bytes long, above the 1048576-byte limit/],
    [{ clientId: '', seq: 1, op: 'delete', key: 'k' }, /field clientId is required/],
    [{ clientId: 'c'.repeat(129), seq: 1, op: 'delete', key: 'k' }, /field clientId is 129 characters long, above the 128-character limit/],
    [{ clientId: 'c', seq: 0, op: 'delete', key: 'k' }, /field seq is 0, outside 1\.\./],
    [{ clientId: 'c', seq: 1, op: 'range', prefix: 'p', limit: 0, after: '' }, /field range\.limit is 0, outside 1\.\.10000/],
    [{ clientId: 'c', seq: 1, op: 'range', prefix: 'p', limit: KV_RANGE_MAX_LIMIT + 1, after: '' }, /field range\.limit is 10001/],
  ] as [KvCommand, RegExp][])('refuses to encode an out-of-bounds command (%#)', (cmd, message) => {
    expect(decodeError(() => encodeKvCommand(cmd)).message).toMatch(message);
  });

  it.each([
    [{ clientId: 'c', seq: 1, put: { key: 'k'.repeat(2000), value: bytes('v') } }, /field put\.key is 2000 bytes of UTF-8/],
    [{ clientId: 'c', seq: 1, put: { key: 'k', value: new Uint8Array(KV_MAX_VALUE_BYTES + 1) } }, /field put\.value is 1048577 bytes long/],
    [{ clientId: 'c', seq: '18446744073709551615', delete: { key: 'k' } }, /field seq is 18446744073709551615, outside 1\.\.9007199254740991/],
    [{ clientId: 'c', seq: 1, cas: { key: 'k', expectedRevision: '9007199254740992', value: bytes('v') } }, /field cas\.expectedRevision is 9007199254740992/],
    [{ clientId: 'c', seq: 1 }, /field op is required \(one of put, delete, cas, fleet, get, range\)/],
    [{ seq: 1, delete: { key: 'k' } }, /field clientId is required/],
    [{ clientId: 'c', seq: 1, delete: {} }, /field delete\.key is required/],
  ])('rejects a hostile encoding naming the field (%#)', (wire, message) => {
    expect(decodeError(() => decodeKvCommand(rawCommand(wire))).message).toMatch(message);
  });

  it('rejects a key that is not valid UTF-8', () => {
    // KvCommand{client_id: "c", seq: 1, delete: {key: 0xff 0xfe}}
    const wire = Uint8Array.from([0x0a, 0x01, 0x63, 0x10, 0x01, 0x22, 0x04, 0x0a, 0x02, 0xff, 0xfe]);
    expect(decodeError(() => decodeKvCommand(wire)).message).toMatch(/KvCommand: not a valid protobuf encoding/);
    expect(decodeError(() => decodeKvCommand(Buffer.from(wire))).message).toMatch(/not valid for encoding utf-8/);
  });

  it('decodes random bytes into a command that round-trips, or a KvDecodeError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (input) => {
        let cmd: KvCommand;
        try {
          cmd = decodeKvCommand(input);
        } catch (err) {
          expect(err).toBeInstanceOf(KvDecodeError);
          return;
        }
        expect(decodeKvCommand(encodeKvCommand(cmd))).toEqual(cmd);
      }),
      { numRuns: 2000 },
    );
  });

  it('fits the largest valid command in KV_MAX_COMMAND_BYTES and its forward request in a frame', () => {
    const largest: KvCommand = {
      clientId: '\u0800'.repeat(128),
      seq: Number.MAX_SAFE_INTEGER,
      op: 'cas',
      key: '\u0800'.repeat(KV_MAX_KEY_BYTES / 4) + 'x'.repeat(KV_MAX_KEY_BYTES / 4),
      expectedRevision: Number.MAX_SAFE_INTEGER,
      value: new Uint8Array(KV_MAX_VALUE_BYTES).fill(0xff),
    };
    const command = encodeKvCommand(largest);
    expect(command.byteLength).toBeGreaterThan(KV_MAX_VALUE_BYTES + 1400);
    expect(command.byteLength).toBeLessThanOrEqual(KV_MAX_COMMAND_BYTES);
    const request = { command, timeoutMs: 60_000, id: 2 ** 32 - 1 };
    const frame = KvForwardRequestsSchema.encode([request]);
    expect(frame.byteLength).toBeLessThanOrEqual(KV_FORWARD_MAX_FRAME_BYTES);
    expect(frame.byteLength).toBeLessThanOrEqual(forwardRequestBytes(request));
  });
});

describe('KvResult schema', () => {
  const results: KvResult[] = [
    { ok: true, op: 'put', revision: 9, prev: null },
    { ok: true, op: 'put', revision: 9, prev: meta },
    { ok: true, op: 'cas', revision: 9, prev: meta },
    { ok: true, op: 'delete', revision: 9, deleted: true, prev: meta },
    { ok: true, op: 'delete', revision: 9, deleted: false, prev: null },
    { ok: true, op: 'get', revision: 9, entry: { key: 'k', value: bytes('v'), ...meta } },
    { ok: true, op: 'get', revision: 9, entry: null },
    { ok: true, op: 'range', revision: 9, entries: [{ key: 'a', value: bytes('1'), ...meta }, { key: 'b', value: bytes(''), revision: 1, createRevision: 1 }], more: true },
    { ok: true, op: 'range', revision: 9, entries: [], more: false },
    { ok: true, op: 'noop', revision: 1 },
    { ok: false, reason: 'cas_mismatch', currentRevision: 0 },
    { ok: false, reason: 'cas_mismatch', currentRevision: 12 },
    { ok: false, reason: 'stale_request', lastSeq: 4 },
    { ok: false, reason: 'quota_exceeded', stateBytes: 100, limitBytes: 120 },
    { ok: false, reason: 'invalid_command', message: 'field put.key is required' },
  ];

  it.each(results)('round-trips %o', (result) => {
    expect(KvResultSchema.decode(KvResultSchema.encode(result))).toEqual(result);
  });

  it.each([
    [{ ok: true, op: 'delete', revision: 9, deleted: true, prev: null }, /field delete\.prev must be set exactly when deleted is true/],
    [{ ok: true, op: 'put', revision: 0, prev: null }, /field put\.revision is 0, outside 1\.\./],
    [{ ok: true, op: 'cas', revision: 5, prev: { revision: 3, createRevision: 4 } }, /field cas\.prev\.createRevision is 4, after the revision 3/],
    [{ ok: true, op: 'range', revision: 5, entries: [{ key: '', value: bytes('v'), ...meta }], more: false }, /field range\.entries\[0\]\.key is required/],
  ] as [KvResult, RegExp][])('refuses an inconsistent result (%#)', (result, message) => {
    expect(decodeError(() => KvResultSchema.encode(result)).message).toMatch(message);
  });
});

describe('KvForward schemas', () => {
  const command = encodeKvCommand({ clientId: 'c', seq: 1, op: 'put', key: 'k', value: bytes('v') });

  it('round-trips a frame of requests in order, keeping the command bytes as they are', () => {
    const decoded = KvForwardRequestsSchema.decode(KvForwardRequestsSchema.encode([{ command, timeoutMs: 2500, id: 1 }, { command, timeoutMs: 10, id: 2 }]));
    expect(decoded.map((r) => [r.id, r.timeoutMs])).toEqual([[1, 2500], [2, 10]]);
    expect(Buffer.compare(Buffer.from(decoded[0]?.command ?? []), Buffer.from(command))).toBe(0);
  });

  it('rejects a request whose command does not decode, or without a timeout, naming it; and an empty or oversized frame', () => {
    expect(schemaError(() => KvForwardRequestsSchema.encode([{ command, timeoutMs: 10, id: 1 }, { command: Uint8Array.from([1, 2, 3]), timeoutMs: 10, id: 2 }])).message).toMatch(
      /KvForwardRequests: field requests\[1\]\.command is not a valid command \(dwcp\.kv\.v1\.KvCommand: /,
    );
    expect(schemaError(() => KvForwardRequestsSchema.encode([{ command: new Uint8Array(), timeoutMs: 10, id: 1 }])).message).toMatch(/field requests\[0\]\.command is required/);
    expect(schemaError(() => KvForwardRequestsSchema.encode([{ command, timeoutMs: 0, id: 1 }])).message).toMatch(/field requests\[0\]\.timeoutMs is 0, outside 1\.\.60000/);
    expect(schemaError(() => KvForwardRequestsSchema.decode(new Uint8Array())).message).toMatch(/field requests is empty/);
    const many = Array.from({ length: KV_FORWARD_MAX_BATCH + 1 }, (_, id) => ({ command, timeoutMs: 10, id }));
    expect(schemaError(() => KvForwardRequestsSchema.encode(many)).message).toMatch(/field requests has 1025 entries, above the 1024-entry limit/);
  });

  const responses: KvForwardResponse[] = [
    { id: 7, kind: 'result', result: { ok: true, op: 'put', revision: 3, prev: meta } },
    { id: 8, kind: 'result', result: { ok: false, reason: 'stale_request', lastSeq: 2 } },
    { id: 9, kind: 'error', error: { code: 'not_leader', message: 'leader is elsewhere', leaderHint: '12D3KooWabc' } },
    { id: 10, kind: 'error', error: { code: 'timeout', message: '', leaderHint: '' } },
  ];

  it('round-trips a frame of responses', () => {
    expect(KvForwardResponsesSchema.decode(KvForwardResponsesSchema.encode(responses))).toEqual(responses);
  });

  it('estimates each request and response at no less than its encoded size, so batches stay under the frame limit', () => {
    for (const response of responses) expect(KvForwardResponsesSchema.encode([response]).byteLength).toBeLessThanOrEqual(forwardResponseBytes(response));
    const longest: KvForwardResponse = { id: 2 ** 32 - 1, kind: 'error', error: { code: 'dropped', message: '\u0800'.repeat(1024), leaderHint: '\u0800'.repeat(256) } };
    expect(KvForwardResponsesSchema.encode([longest]).byteLength).toBeLessThanOrEqual(forwardResponseBytes(longest));
  });

  it('rejects an unknown error code and an empty response, naming the field', () => {
    const type = kvProto.lookupType('dwcp.kv.v1.KvForwardResponses');
    const raw = (wire: object): Uint8Array => type.encode(type.fromObject({ responses: [wire] })).finish();
    expect(schemaError(() => KvForwardResponsesSchema.decode(raw({ error: { code: 'teapot' } }))).message).toMatch(/field responses\[0\]\.error\.code is "teapot", not one of not_leader/);
    expect(schemaError(() => KvForwardResponsesSchema.decode(raw({}))).message).toMatch(/field responses\[0\]\.kind is required/);
    expect(schemaError(() => KvForwardResponsesSchema.decode(raw({ result: {} }))).message).toMatch(/field responses\[0\]\.result\.outcome is required/);
  });

  it('fits the largest range or get result in a frame of its own', () => {
    const largest = { key: 'k'.repeat(KV_MAX_KEY_BYTES), value: new Uint8Array(KV_MAX_VALUE_BYTES), revision: Number.MAX_SAFE_INTEGER, createRevision: Number.MAX_SAFE_INTEGER };
    for (const result of [
      { ok: true, op: 'range', revision: Number.MAX_SAFE_INTEGER, entries: [largest], more: true },
      { ok: true, op: 'get', revision: Number.MAX_SAFE_INTEGER, entry: largest },
    ] as KvResult[]) {
      expect(KvForwardResponsesSchema.encode([{ id: 2 ** 32 - 1, kind: 'result', result }]).byteLength).toBeLessThanOrEqual(KV_FORWARD_MAX_FRAME_BYTES);
    }
  });
});

describe('compareKeys', () => {
  it('orders keys as their UTF-8 bytes', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), fc.string({ unit: 'binary' }), (a, b) => {
        expect(Math.sign(compareKeys(a, b))).toBe(Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8')));
      }),
      { numRuns: 500 },
    );
    // UTF-16 order would put the astral character first.
    expect(compareKeys('\uffff', '\u{10000}')).toBeLessThan(0);
  });
});
