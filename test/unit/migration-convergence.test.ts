/**
 * The live migration's convergence judgement (src/migration/convergence.ts)
 * and the /dwcp/migrate/1.0.0 messages at the edge (migrate-service.ts):
 * what QEMU's query-migrate answers lead to, and what a peer may send.
 */
import { describe, expect, it } from 'vitest';
import type { MigrationInfo } from '../../src/cloud/qemu/migration-qmp.ts';
import { judgeConvergence } from '../../src/migration/convergence.ts';
import { MigrateMessageSchema } from '../../src/migration/migrate-service.ts';

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

describe('/dwcp/migrate/1.0.0 messages', () => {
  it('round-trips an open, a refusal and data', () => {
    const open = { kind: 'open', open: { migration: 'm1', channel: 'state', key: '', version: '' } } as const;
    expect(MigrateMessageSchema.decode(MigrateMessageSchema.encode(open))).toEqual(open);
    const refuse = { kind: 'refuse', refuse: { code: 'invalid', message: 'migration m1 is in cutover, not transferring' } } as const;
    expect(MigrateMessageSchema.decode(MigrateMessageSchema.encode(refuse))).toEqual(refuse);
    const data = MigrateMessageSchema.decode(MigrateMessageSchema.encode({ kind: 'data', data: { chunk: new Uint8Array([1, 2, 3]), rawLength: 0 } }));
    expect(data).toMatchObject({ kind: 'data' });
  });

  it('refuses an unknown channel, a chunk above the limit and a refusal with no error code, naming the field', () => {
    expect(() => MigrateMessageSchema.encode({ kind: 'open', open: { migration: 'm1', channel: 'memory' as 'state', key: '', version: '' } })).toThrow(/channel/);
    expect(() => MigrateMessageSchema.encode({ kind: 'data', data: { chunk: new Uint8Array(256 * 1024 + 1), rawLength: 0 } })).toThrow(/field data.chunk is 262145 bytes long, above the 262144-byte limit/);
    expect(() => MigrateMessageSchema.encode({ kind: 'refuse', refuse: { code: 'nope', message: '' } })).toThrow(/refuse.code is "nope", not an error code/);
  });
});
