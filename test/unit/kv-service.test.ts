/**
 * The admin edge of the KV store and the Raft group: how state machine
 * results become Kv responses (src/admin/kv-service.ts writeResponse) and how
 * each kind of failure becomes the gRPC status and one-line detail dwcpctl
 * shows (src/admin/call.ts, src/admin/status.ts). Operators and scripts key
 * on these: the dwcp-retryable trailer says whether to try again, and the
 * details are the operator's message alone.
 */
import { describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { Writable } from 'node:stream';
import { writeResponse } from '../../src/admin/kv-service.ts';
import { asyncUnary, requireTimeout } from '../../src/admin/call.ts';
import { fromStatus, grpcStatusOf } from '../../src/admin/status.ts';
import { DwcpError } from '../../src/errors.ts';
import { RaftClientError, type RaftClientErrorCode } from '../../src/consensus/raft/node.ts';
import type { KvResult } from '../../src/kv/command.ts';
import { createLogger } from '../../src/log.ts';

const meta = (revision: number, createRevision = revision) => ({ revision, createRevision });

describe('writeResponse', () => {
  const base = { ok: true, reason: '', current_revision: 0, prev: null, leader: 'a', consistency: 'strong', regions_acked: 0, regions_total: 0 };

  it('answers puts, swaps and deletes with the new revision and the previous item', () => {
    const at = (result: KvResult) => writeResponse('k', { result, leader: 'a' });
    expect(at({ ok: true, op: 'put', revision: 9, prev: null })).toEqual({ ...base, revision: 9 });
    expect(at({ ok: true, op: 'cas', revision: 9, prev: meta(4, 2) })).toEqual({
      ...base,
      revision: 9,
      prev: { key: 'k', value: new Uint8Array(0), revision: 4, create_revision: 2, region: '', hlc: '' },
    });
    expect(at({ ok: true, op: 'delete', revision: 9, deleted: true, prev: meta(4) })).toMatchObject({ ...base, revision: 9, prev: { key: 'k', revision: 4 } });
    // A delete that found nothing created no revision.
    expect(at({ ok: true, op: 'delete', revision: 9, deleted: false, prev: null })).toEqual({ ...base, revision: 0 });
  });

  it('answers a compare-and-swap mismatch as a result, with the current revision', () => {
    expect(writeResponse('k', { result: { ok: false, reason: 'cas_mismatch', currentRevision: 12 }, leader: 'b' })).toEqual({
      ...base,
      ok: false,
      revision: 0,
      reason: 'cas_mismatch',
      current_revision: 12,
      leader: 'b',
    });
  });

  it('turns the other refusals into errors a client can act on', () => {
    const refusal = (result: KvResult) => {
      try {
        writeResponse('k', { result, leader: 'a' });
      } catch (err) {
        return err instanceof DwcpError ? [grpc.status[grpcStatusOf(err.code)], err.message] : err;
      }
      return 'no error';
    };
    expect(refusal({ ok: false, reason: 'quota_exceeded', stateBytes: 900, limitBytes: 1000 })).toEqual([
      'RESOURCE_EXHAUSTED',
      'the store holds 900 bytes; the write would pass its 1000-byte limit',
    ]);
    expect(refusal({ ok: false, reason: 'stale_request', lastSeq: 7 })).toEqual(['INVALID_ARGUMENT', 'options.seq: this client id already applied seq 7; use a higher seq']);
    expect(refusal({ ok: false, reason: 'invalid_command', message: 'key: empty' })).toEqual(['INVALID_ARGUMENT', 'key: empty']);
    expect(refusal({ ok: true, op: 'get', revision: 3, entry: null })).toEqual(['INTERNAL', 'a write returned a get result']);
  });
});

describe('admin call errors', () => {
  /** Runs one handler to its callback; the lines it logged come back too. */
  async function outcome(fn: () => Promise<object>): Promise<{ error: Partial<grpc.StatusObject> | null; logged: string[] }> {
    const logged: string[] = [];
    const sink = new Writable({ write: (chunk: Buffer, _enc, done) => void (logged.push(chunk.toString()), done()) });
    const handler = asyncUnary(createLogger('info', sink), 'Put', fn);
    const call = { request: {} } as grpc.ServerUnaryCall<object, object>;
    const error = await new Promise<Partial<grpc.StatusObject> | null>((resolve) => handler(call, (err) => resolve(err ? (err as Partial<grpc.StatusObject>) : null)));
    return { error, logged };
  }

  it('maps each Raft client error to the status a retry decision keys on, marking the retryable ones', async () => {
    const codes: RaftClientErrorCode[] = ['not_leader', 'no_leader', 'timeout', 'dropped', 'lost', 'rejected', 'stopped'];
    const mapped = await Promise.all(
      codes.map(async (code) => {
        const { error } = await outcome(async () => {
          throw new RaftClientError(code, `${code} happened`);
        });
        const status = error?.code === undefined ? 'none' : grpc.status[error.code];
        const retryable = error?.code === undefined ? null : fromStatus({ code: error.code, ...(error.metadata ? { metadata: error.metadata } : {}) }).retryable;
        return [code, status, error?.details, retryable];
      }),
    );
    expect(mapped).toEqual([
      ['not_leader', 'FAILED_PRECONDITION', 'not_leader happened', true],
      ['no_leader', 'UNAVAILABLE', 'no_leader happened', true],
      ['timeout', 'UNAVAILABLE', 'timeout happened', true],
      ['dropped', 'UNAVAILABLE', 'dropped happened', true],
      ['lost', 'UNAVAILABLE', 'lost happened', true],
      ['rejected', 'FAILED_PRECONDITION', 'rejected happened', false],
      ['stopped', 'UNAVAILABLE', 'stopped happened', false],
    ]);
  });

  it('sends the leader a not_leader error names as structured details', async () => {
    const { error } = await outcome(async () => {
      throw new RaftClientError('not_leader', 'b is not the leader', 'a');
    });
    expect(error?.metadata === undefined ? null : fromStatus({ code: grpc.status.FAILED_PRECONDITION, metadata: error.metadata })).toEqual({
      code: 'not_leader',
      retryable: true,
      details: { leader: 'a' },
    });
  });

  it('passes typed errors through with their status, and logs anything else as INTERNAL', async () => {
    const typed = await outcome(async () => {
      throw new DwcpError('invalid', 'key: required');
    });
    expect(typed.error).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: 'key: required' });
    expect(typed.logged).toEqual([]);
    const surprise = await outcome(async () => {
      throw new TypeError('boom');
    });
    expect(surprise.error).toMatchObject({ code: grpc.status.INTERNAL, details: 'Put: boom' });
    expect(surprise.logged.map((l) => JSON.parse(l) as Record<string, unknown>)).toEqual([expect.objectContaining({ msg: 'admin call failed', method: 'Put', err: 'boom' })]);
    expect((await outcome(async () => ({ ok: true }))).error).toBeNull();
  });

  it('takes 0 as the default timeout and refuses one outside 1..3600000 ms, naming the field', () => {
    expect(requireTimeout(0, 5000)).toBe(5000);
    expect(requireTimeout(1, 5000)).toBe(1);
    expect(requireTimeout(3_600_000, 5000)).toBe(3_600_000);
    expect(() => requireTimeout(3_600_001, 5000)).toThrow('timeout_ms must be from 1 to 3600000, got 3600001');
  });
});
