/**
 * The live migration's convergence judgement (src/migration/convergence.ts)
 * and the /dwcp/migrate/1.0.0 messages at the edge (migrate-wire.ts):
 * what QEMU's query-migrate answers lead to, and what a peer may send.
 */
import { describe, expect, it } from 'vitest';
import { MIGRATION_EVENTS, QmpEventWatch, type MigrationInfo } from '../../src/cloud/qemu/migration-qmp.ts';
import type { QmpClient, QmpEvent } from '../../src/cloud/qemu/qmp.ts';
import { judgeConvergence } from '../../src/migration/convergence.ts';
import { Uint8ArrayList } from 'uint8arraylist';
import { MigrateInboundSchema, MigrateMessageSchema, MigrateOutboundSchema } from '../../src/migration/migrate-wire.ts';

const MiB = 1024 * 1024;
const info = (over: Partial<MigrationInfo>): MigrationInfo => ({
  status: 'active',
  transferredBytes: 100 * MiB,
  remainingBytes: 20 * MiB,
  totalBytes: 256 * MiB,
  rounds: 1,
  dirtyPagesPerSecond: 2560,
  downtimeMs: null,
  totalTimeMs: null,
  throttlePercent: 0,
  error: null,
  ...over,
});
const options = { armAfterRounds: 5, timeoutMs: 60_000 };

describe('judgeConvergence', () => {
  it('waits while QEMU pre-copies, arms auto-converge once after K rounds, aborts past the timeout with where it stood', () => {
    expect(judgeConvergence(info({ rounds: 4 }), { startedAt: 0, armed: false }, 1_000, options)).toEqual({ kind: 'wait' });
    const arm = judgeConvergence(info({ rounds: 5 }), { startedAt: 0, armed: false }, 1_000, options);
    expect(arm).toMatchObject({ kind: 'arm-throttle', why: expect.stringContaining('not converged after 5 rounds (5 rounds, 20.0 MiB of 256.0 MiB left, 2560 pages/s dirtied, throttle 0%)') });
    expect(judgeConvergence(info({ rounds: 9 }), { startedAt: 0, armed: true }, 1_000, options)).toEqual({ kind: 'wait' });
    expect(judgeConvergence(info({ rounds: 40, throttlePercent: 99 }), { startedAt: 0, armed: true }, 60_001, options)).toMatchObject({ kind: 'abort', why: expect.stringMatching(/^did not converge within 60 s \(40 rounds, .*throttle 99%\)$/) });
  });

  it('completed is done (even past the timeout); failed and cancelled carry QEMU\'s error', () => {
    expect(judgeConvergence(info({ status: 'completed' }), { startedAt: 0, armed: false }, 999_999, options)).toEqual({ kind: 'done' });
    expect(judgeConvergence(info({ status: 'failed', error: 'Unable to write to socket: Broken pipe' }), { startedAt: 0, armed: false }, 0, options)).toEqual({ kind: 'failed', why: "QEMU's migration failed: Unable to write to socket: Broken pipe" });
    expect(judgeConvergence(info({ status: 'cancelled' }), { startedAt: 0, armed: false }, 0, options)).toEqual({ kind: 'failed', why: "QEMU's migration cancelled" });
  });
});

describe('/dwcp/migrate/2.0.0 messages', () => {
  it('round-trips an open (with and without multifd), a refusal and data', () => {
    const open = { kind: 'open', open: { migration: 'm1', channel: 'state', key: '', version: '', stream: 0, multifd: null } } as const;
    expect(MigrateMessageSchema.decode(MigrateMessageSchema.encode(open))).toEqual(open);
    const multifd = { kind: 'open', open: { migration: 'm1', channel: 'state', key: '', version: '', stream: 2, multifd: { channels: 2, compression: 'zstd' } } } as const;
    expect(MigrateMessageSchema.decode(MigrateMessageSchema.encode(multifd))).toEqual(multifd);
    const refuse = { kind: 'refuse', refuse: { code: 'invalid', message: 'migration m1 is in cutover, not transferring' } } as const;
    expect(MigrateMessageSchema.decode(MigrateMessageSchema.encode(refuse))).toEqual(refuse);
    const data = MigrateMessageSchema.decode(MigrateMessageSchema.encode({ kind: 'data', data: { chunk: new Uint8Array([1, 2, 3]), rawLength: 0 } }));
    expect(data).toMatchObject({ kind: 'data' });
  });

  it('refuses an unknown channel, a chunk above the limit and a refusal with no error code, naming the field', () => {
    const open = { migration: 'm1', channel: 'state', key: '', version: '', stream: 0, multifd: null } as const;
    expect(() => MigrateMessageSchema.encode({ kind: 'open', open: { ...open, channel: 'memory' as 'state' } })).toThrow(/channel/);
    expect(() => MigrateMessageSchema.encode({ kind: 'open', open: { ...open, stream: 3, multifd: { channels: 2, compression: 'zstd' } } })).toThrow(/open.stream is 3, outside 0..2/);
    expect(() => MigrateMessageSchema.encode({ kind: 'open', open: { ...open, multifd: { channels: 9, compression: 'zstd' } } })).toThrow(/open.multifdChannels is 9, outside 0..8/);
    expect(() => MigrateMessageSchema.encode({ kind: 'open', open: { ...open, multifd: { channels: 2, compression: 'lzma' as 'zstd' } } })).toThrow(/open.multifdCompression is "lzma", not one of none, zlib, zstd/);
    expect(() => MigrateMessageSchema.encode({ kind: 'open', open: { ...open, channel: 'disk', multifd: { channels: 2, compression: 'zstd' } } })).toThrow(/only the state channel/);
    expect(() => MigrateMessageSchema.encode({ kind: 'open', open: { ...open, stream: 1 } })).toThrow(/open.stream is 1, outside 0..0/);
    expect(() => MigrateMessageSchema.encode({ kind: 'data', data: { chunk: new Uint8Array(256 * 1024 + 1), rawLength: 0 } })).toThrow(/field data.chunk is 262145 bytes long, above the 262144-byte limit/);
    expect(() => MigrateMessageSchema.encode({ kind: 'refuse', refuse: { code: 'nope', message: '' } })).toThrow(/refuse.code is "nope", not an error code/);
  });

  /** What the inbound schema reads, a Data chunk made one Buffer so that it compares with what was written. */
  function inbound(bytes: Uint8Array): unknown {
    const msg = MigrateInboundSchema.decode(bytes);
    return msg.kind === 'data' ? { kind: 'data', data: { chunk: Buffer.from(msg.data.chunk.subarray()), rawLength: msg.data.rawLength } } : msg;
  }

  it('reads a data frame from the parts it arrived in (decodeList), its chunk views of them, wherever they were cut', () => {
    const chunk = Buffer.alloc(5000, 7);
    for (const rawLength of [0, 9000]) {
      const written = Buffer.concat(MigrateOutboundSchema.encodeParts?.({ kind: 'data', data: { chunk: [chunk], rawLength } }) ?? []);
      for (const cut of [1, 2, 3, 4, 6, 100, written.byteLength - 2, written.byteLength - 1]) {
        const a = written.slice(0, cut);
        const b = written.slice(cut);
        const msg = MigrateInboundSchema.decodeList?.(new Uint8ArrayList(a, b));
        if (msg?.kind !== 'data') throw new Error(`cut at ${cut}: not data`);
        expect(msg.data.rawLength).toBe(rawLength);
        expect(Buffer.from(msg.data.chunk.subarray()).equals(chunk), `cut at ${cut}`).toBe(true);
        // Not copied: every part of the chunk lies in one of the arrays it arrived in.
        for (const part of msg.data.chunk) expect([a.buffer, b.buffer]).toContain(part.buffer);
      }
    }
  });

  it('writes a data frame from its parts as the protobuf decoder reads it, and reads protobufjs encodings of it', () => {
    const parts = [new Uint8Array(300).fill(1), new Uint8Array(70_000).fill(2), new Uint8Array([3])];
    const whole = Buffer.concat(parts);
    for (const rawLength of [0, 5, 262_144]) {
      const written = Buffer.concat(MigrateOutboundSchema.encodeParts?.({ kind: 'data', data: { chunk: parts, rawLength } }) ?? []);
      // The strict protobuf path and the direct parse agree on what was written, and on protobufjs's own encoding (raw_length 0 written out).
      expect(MigrateMessageSchema.decode(written)).toEqual({ kind: 'data', data: { chunk: whole, rawLength } });
      expect(inbound(written)).toEqual({ kind: 'data', data: { chunk: whole, rawLength } });
      expect(inbound(MigrateMessageSchema.encode({ kind: 'data', data: { chunk: whole, rawLength } }))).toEqual({ kind: 'data', data: { chunk: whole, rawLength } });
    }
    // The chunk's arrays are sent where they lie: no copy.
    const sent = MigrateOutboundSchema.encodeParts?.({ kind: 'data', data: { chunk: parts, rawLength: 0 } }) ?? [];
    expect(sent.slice(1)).toEqual(parts);
    expect(sent[1]).toBe(parts[0]);
  });

  it('judges data frames of any other shape by the strict protobuf path, and refuses what it refuses', () => {
    const chunk = Buffer.of(9, 9);
    // raw_length before chunk: valid protobuf, decoded by the full path.
    expect(inbound(Uint8Array.of(0x22, 6, 0x10, 2, 0x0a, 2, 9, 9))).toEqual({ kind: 'data', data: { chunk, rawLength: 2 } });
    // chunk twice: protobuf keeps the last, the strict path refuses.
    expect(() => MigrateInboundSchema.decode(Uint8Array.of(0x22, 8, 0x0a, 2, 9, 9, 0x0a, 2, 9, 9))).toThrow(/data.chunk/);
    // an empty chunk, and a declared length past the end.
    expect(() => MigrateInboundSchema.decode(Uint8Array.of(0x22, 2, 0x0a, 0))).toThrow(/data.chunk is required/);
    expect(() => MigrateInboundSchema.decode(Uint8Array.of(0x22, 9, 0x0a, 7, 9, 9))).toThrow(/not a valid protobuf encoding/);
    // a trailing field tag without its value, and an unknown field after the chunk.
    expect(() => MigrateInboundSchema.decode(Uint8Array.of(0x22, 5, 0x0a, 2, 9, 9, 0x18))).toThrow(/not a valid protobuf encoding/);
    expect(inbound(Uint8Array.of(0x22, 6, 0x0a, 2, 9, 9, 0x18, 1))).toEqual({ kind: 'data', data: { chunk, rawLength: 0 } });
    // raw_length (300 000) above the chunk limit.
    expect(() => MigrateInboundSchema.decode(Uint8Array.of(0x22, 8, 0x0a, 2, 9, 9, 0x10, 0xe0, 0x93, 0x12))).toThrow(/data.rawLength/);
    expect(() => MigrateOutboundSchema.encodeParts?.({ kind: 'data', data: { chunk: [new Uint8Array(200_000), new Uint8Array(70_000)], rawLength: 0 } })).toThrow(/field data.chunk is 270000 bytes long, above the 262144-byte limit/);
    expect(() => MigrateOutboundSchema.encodeParts?.({ kind: 'data', data: { chunk: [], rawLength: 0 } })).toThrow(/field data.chunk is required/);
  });
});

describe("waiting for QEMU's next migration event", () => {
  /** A QMP client that only delivers events (all a watch uses). */
  function events(): { qmp: QmpClient; emit(event: string): void; listeners(): number } {
    const listeners = new Set<(e: QmpEvent) => void>();
    const qmp = { subscribe: (l: (e: QmpEvent) => void) => (listeners.add(l), () => listeners.delete(l)) } as unknown as QmpClient;
    return { qmp, emit: (event) => [...listeners].forEach((l) => l({ event, data: {} } as QmpEvent)), listeners: () => listeners.size };
  }

  it('resolves at a named event, not at another', async () => {
    const q = events();
    const watch = new QmpEventWatch(q.qmp, MIGRATION_EVENTS);
    let done = false;
    const waiting = watch.next(60_000).then(() => (done = true));
    q.emit('BLOCK_JOB_READY');
    await Promise.resolve();
    expect(done).toBe(false);
    q.emit('MIGRATION');
    await waiting;
    watch.close();
    expect(q.listeners()).toBe(0);
  });

  it('does not sleep through an event that came before the wait (while the query it follows was in flight)', async () => {
    const q = events();
    const watch = new QmpEventWatch(q.qmp, MIGRATION_EVENTS);
    q.emit('MIGRATION');
    const t0 = performance.now();
    await watch.next(60_000);
    expect(performance.now() - t0).toBeLessThan(1_000);
    // Taken once: the next wait waits again (here for its interval).
    let done = false;
    const waiting = watch.next(60_000).then(() => (done = true));
    await Promise.resolve();
    expect(done).toBe(false);
    watch.close();
    await waiting;
    expect(q.listeners()).toBe(0);
  });

  it('resolves after the interval when no event comes', async () => {
    const q = events();
    const watch = new QmpEventWatch(q.qmp, MIGRATION_EVENTS);
    await watch.next(5);
    watch.close();
    expect(q.listeners()).toBe(0);
  });
});
