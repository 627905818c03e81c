/**
 * The sync protocol's wire schema: every message kind survives encode and
 * decode (states of every CRDT type included), hostile frames are refused
 * with a schema error naming the field, and the codec frame around each
 * message follows the link mode (none for small frames) and refuses damage.
 */
import { describe, expect, it } from 'vitest';
import protobuf from 'protobufjs';
import { fileURLToPath } from 'node:url';
import { FrameError } from '../../src/net/framing.ts';
import { readFrameHeader } from '../../src/codec/frame.ts';
import { CODEC_IDS } from '../../src/codec/codecs.ts';
import { entryHash } from '../../src/state/entry.ts';
import type { SyncMessage } from '../../src/state/messages.ts';
import { StateReplica, type ReplicaLimits } from '../../src/state/replica.ts';
import { DIGEST_BYTES } from '../../src/state/reconcile.ts';
import { decodeSyncMessage, encodeSyncMessage, openSyncFrame, sealSyncFrame, type SyncFrame } from '../../src/state/wire.ts';

const LIMITS: ReplicaLimits = {
  maxBatchEntries: 64,
  maxBatchBytes: 1 << 20,
  maxInFlightBytes: 1 << 20,
  maxRoundBytes: 1 << 20,
  pushTimeoutMs: 1000,
  sessionTimeoutMs: 1000,
  gcGraceMs: 1000,
  maxClockOffsetMs: 500,
};
const T0 = 1_700_000_000_000;

/** A push of one full entry of every type, and one delta, from a real replica. */
function samplePush(): Extract<SyncMessage, { kind: 'push' }> {
  const r = new StateReplica({ self: 'eu', peers: ['eu', 'us'], limits: LIMITS });
  const opts = { ttlMs: null, timeoutMs: 1000 };
  r.update('reg', null, { op: 'put', value: { nested: ['x', 1.5, null, true] } }, 'eventual', T0, { ttlMs: 60_000, timeoutMs: 1000 });
  r.update('pn', null, { op: 'decr', by: 3 }, 'eventual', T0, opts);
  r.update('g', 'g-counter', { op: 'incr', by: 2 }, 'eventual', T0, opts);
  r.update('gs', 'g-set', { op: 'add', element: 'e' }, 'eventual', T0, opts);
  r.update('or', null, { op: 'add', element: 'e' }, 'eventual', T0, opts);
  r.update('rec', null, { op: 'set-field', field: 'f', value: 'v' }, 'eventual', T0, opts);
  const ready = r.ready(T0);
  const push = ready.messages[0]?.message;
  if (push?.kind !== 'push') throw new Error('expected a push');
  return push;
}

function roundTrip(frame: SyncFrame): SyncFrame {
  return decodeSyncMessage(encodeSyncMessage(frame));
}

const proto = protobuf.loadSync(fileURLToPath(new URL('../../src/state/proto/sync.proto', import.meta.url)));
const FrameProto = proto.lookupType('dwcp.state.v1.SyncFrame');

/** Bytes of a hand-made (possibly hostile) SyncFrame. */
function raw(obj: Record<string, unknown>): Uint8Array {
  return FrameProto.encode(FrameProto.fromObject(obj)).finish();
}

function refusal(bytes: Uint8Array): string {
  try {
    decodeSyncMessage(bytes);
  } catch (err) {
    expect(err).toBeInstanceOf(FrameError);
    expect((err as FrameError).reason).toBe('schema');
    return (err as FrameError).message;
  }
  throw new Error('decoded without complaint');
}

describe('sync wire schema', () => {
  it('carries updates of every CRDT type, full and delta, unchanged', () => {
    const push = samplePush();
    expect(push.updates).toHaveLength(6);
    const back = roundTrip(push);
    expect(back.kind).toBe('push');
    if (back.kind !== 'push') return;
    back.updates.forEach((u, i) => {
      const sent = push.updates[i]!;
      expect([u.key, u.type, u.since, u.expiresAt]).toEqual([sent.key, sent.type, sent.since, sent.expiresAt]);
      expect(u.clock).toEqual(sent.clock);
      const asEntry = (x: typeof u) => ({ type: x.type, state: x.state, clock: x.clock, expiresAt: x.expiresAt });
      expect(Buffer.from(entryHash(u.key, asEntry(u)))).toEqual(Buffer.from(entryHash(sent.key, asEntry(sent))));
    });
    const delta = { ...push.updates[1]!, since: new Map([['us', 4]]) };
    const again = roundTrip({ kind: 'updates', session: 9, reply: true, updates: [delta], done: true, truncated: false });
    expect(again).toMatchObject({ kind: 'updates', session: 9, reply: true, done: true, truncated: false });
    expect(again.kind === 'updates' ? again.updates[0]?.since : null).toEqual(new Map([['us', 4]]));
  });

  it('carries every other message kind', () => {
    const clock = new Map([['eu', 3], ['us', 1]]);
    const frames: SyncFrame[] = [
      { kind: 'heartbeat', intervalMs: 1000 },
      { kind: 'push-ack', id: 7, behind: ['or-set:x'] },
      { kind: 'read', id: 8, keys: ['pn-counter:a', 'g-set:b'] },
      { kind: 'read-reply', id: 8, updates: [] },
      { kind: 'digest', session: 4_000_000_000, buckets: new Uint8Array(DIGEST_BYTES).fill(7) },
      { kind: 'summaries', session: 1, summaries: [{ key: 'yjs-record:r', clock, hash: new Uint8Array(16).fill(1), stateVector: Uint8Array.of(1, 2, 3) }], buckets: [0, 255], done: true, truncated: true },
      { kind: 'want', session: 1, wants: [{ key: 'g-counter:c', clock, stateVector: new Uint8Array(0) }], done: false },
      { kind: 'status-request', id: 3 },
      { kind: 'status-reply', id: 3, status: { digest: new Uint8Array(32).fill(9), entries: 12, clock } },
    ];
    for (const f of frames) expect(roundTrip(f)).toEqual(f);
  });

  it('refuses hostile frames, naming the field', () => {
    const update = (over: Record<string, unknown>) => raw({ push: { id: 1, updates: [{ key: 'pn-counter:k', state: Buffer.from('{"inc":{},"dec":{}}'), clock: [{ region: 'eu', count: 1 }], ...over }] } });
    expect(decodeSyncMessage(update({})).kind).toBe('push');
    expect(refusal(update({ key: 'counter:k' }))).toMatch(/field push\.updates\[0\]\.key "counter:k" does not start with a CRDT type/);
    expect(refusal(update({ key: 'pn-counter:' }))).toMatch(/field push\.updates\[0\]\.key name must not be empty/);
    expect(refusal(update({ state: Buffer.from('{"inc":{"eu":-1},"dec":{}}') }))).toMatch(/field push\.updates\[0\]\.state\.inc\.eu must be a non-negative safe integer, got number -1/);
    expect(refusal(update({ state: Buffer.from('not json') }))).toMatch(/field push\.updates\[0\]\.state is not JSON of a pn-counter/);
    expect(refusal(update({ key: 'yjs-record:r', state: Buffer.from('garbage') }))).toMatch(/field push\.updates\[0\]\.state (must be base64|is not a Yjs update)/);
    expect(refusal(update({ clock: [{ region: 'eu', count: 1 }, { region: 'eu', count: 2 }] }))).toMatch(/field push\.updates\[0\]\.clock\[1\]\.region repeats region "eu"/);
    expect(refusal(update({ clock: [{ region: 'eu', count: 0 }] }))).toMatch(/clock\[0\]\.count must be at least 1/);
    expect(refusal(update({ clock: [{ region: 'eu', count: '9007199254740993' }] }))).toMatch(/count is 9007199254740993, above 2\^53 - 1/);
    expect(refusal(raw({ digest: { session: 1, buckets: new Uint8Array(10) } }))).toMatch(/field digest\.buckets is 10 bytes, expected 4096/);
    expect(refusal(raw({ summaries: { session: 1, summaries: [{ key: 'g-set:s', clock: [], hash: new Uint8Array(8) }], buckets: [] } }))).toMatch(/summaries\.summaries\[0\]\.hash is 8 bytes, expected 16/);
    expect(refusal(raw({ summaries: { session: 1, summaries: [], buckets: [256] } }))).toMatch(/summaries\.buckets\[0\] must be a bucket number from 0 to 255, got 256/);
    expect(refusal(raw({ pushAck: { id: 1, behind: ['nope'] } }))).toMatch(/field pushAck\.behind\[0\] "nope" does not start with a CRDT type/);
    expect(refusal(raw({}))).toMatch(/field kind is required/);
  });
});

describe('sync codec frames', () => {
  it('leaves small frames uncompressed and compresses larger ones by link mode', async () => {
    const small = await sealSyncFrame({ kind: 'heartbeat', intervalMs: 1000 }, 'internet');
    expect(readFrameHeader(small.bytes).codecId).toBe(CODEC_IDS.none);
    const big: SyncFrame = { kind: 'read', id: 1, keys: Array.from({ length: 200 }, (_, i) => `lww-register:some/fairly/long/key/${i}`) };
    const dc = await sealSyncFrame(big, 'datacenter');
    const wan = await sealSyncFrame(big, 'internet');
    expect(readFrameHeader(dc.bytes).codecId).toBe(CODEC_IDS.lz4);
    expect(readFrameHeader(wan.bytes).codecId).toBe(CODEC_IDS.zstd);
    expect(wan.bytes.byteLength).toBeLessThan(wan.rawBytes / 3);
    for (const sealed of [small, dc, wan]) expect((await openSyncFrame(sealed.bytes)).rawBytes).toBe(sealed.rawBytes);
    expect((await openSyncFrame(wan.bytes)).frame).toEqual(big);
  });

  it('refuses a damaged codec frame as malformed', async () => {
    const sealed = await sealSyncFrame({ kind: 'status-request', id: 5 }, 'datacenter');
    const damaged = Uint8Array.from(sealed.bytes);
    damaged[damaged.length - 1] = (damaged[damaged.length - 1] as number) ^ 0xff;
    await expect(openSyncFrame(damaged)).rejects.toMatchObject({ name: 'FrameError', reason: 'malformed', message: expect.stringContaining('checksum') });
  });
});
