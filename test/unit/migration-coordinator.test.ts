/**
 * The migration coordinator core, phase by phase and mode by mode: what it
 * proposes, when it stops and resumes the source, the transfer steps, the
 * timeouts, rollback (stop the target first for a live migration that may
 * have completed), restarts from the recorded phase alone, in-flight and
 * back-off handling, determinism.
 */
import { describe, expect, it } from 'vitest';
import type { FleetMigration, MigrationMode, MigrationPhase } from '../../src/fleet/migrations.ts';
import {
  DEFAULT_COORDINATOR_OPTIONS,
  EMPTY_COORDINATOR_MEMORY,
  coordinate,
  type CoordinatorEffect,
  type CoordinatorInput,
  type CoordinatorMemory,
  type SourceCopy,
  type TargetCopy,
  type TransferStatus,
} from '../../src/migration/coordinator.ts';

const OPTIONS = { ...DEFAULT_COORDINATOR_OPTIONS, prepareTimeoutMs: 10_000, transferIdleTimeoutMs: 5_000, verifyTimeoutMs: 8_000, cleanupTimeoutMs: 20_000, retryMs: 1_000, maxAttempts: 2 };

function migration(phase: MigrationPhase, mode: MigrationMode = 'cold', extra: Partial<FleetMigration> = {}): FleetMigration {
  return {
    id: 'm1',
    vm: 'web1',
    mode,
    source: { region: 'eu', provider: 'local', generation: 1 },
    target: { region: 'us', provider: 'local', generation: 2 },
    maxDowntimeMs: null,
    phase,
    facts: {},
    reason: phase === 'rolling-back' ? 'cancelled by operator' : null,
    result: null,
    startedAt: 0,
    updatedAt: 0,
    endedAt: null,
    ...extra,
  };
}

const RUNNING: SourceCopy = { state: 'running', paused: false };
const STOPPED: SourceCopy = { state: 'stopped', paused: false };
const PAUSED: SourceCopy = { state: 'running', paused: true };
const PREPARED: TargetCopy = { state: 'stopped', asOf: 0 };
const UNKNOWN: TargetCopy = { state: null, asOf: 0 };

function transfer(step: TransferStatus['step'], status: TransferStatus['status'], extra: Partial<TransferStatus> = {}): TransferStatus {
  return { step, status, bytes: 1000, rounds: step === 'final' ? 1 : 3, progressAt: 0, targetMayRun: false, ...extra };
}

interface Step {
  source?: SourceCopy;
  target?: TargetCopy;
  transfer?: TransferStatus | null;
  now?: number;
  memory?: CoordinatorMemory;
  inFlight?: string[];
  outcomes?: CoordinatorInput['outcomes'];
  power?: 'running' | 'stopped';
}

function step(m: FleetMigration, s: Step = {}) {
  return coordinate({
    migration: m,
    power: s.power ?? 'running',
    observed: { source: s.source ?? RUNNING, target: s.target ?? PREPARED, transfer: s.transfer === undefined ? null : s.transfer },
    memory: s.memory ?? EMPTY_COORDINATOR_MEMORY,
    inFlight: new Set(s.inFlight ?? []),
    now: s.now ?? 0,
    options: OPTIONS,
    ...(s.outcomes === undefined ? {} : { outcomes: s.outcomes }),
  });
}

/** The effects in short: `propose:transfer`, `propose:cutover!`, `propose:end:completed`, `stop-source`, `start-transfer:final`. */
function short(effects: readonly CoordinatorEffect[]): string[] {
  return effects.map((e) => {
    if (e.kind === 'start-transfer') return `start-transfer:${e.step}`;
    if (e.kind !== 'propose') return e.kind;
    const c = e.command;
    if (c.kind === 'migration-progress') return `propose:${c.phase}`;
    if (c.kind === 'migration-cutover') return 'propose:cutover!';
    return `propose:end:${c.result}`;
  });
}

function proposed(effects: readonly CoordinatorEffect[]) {
  const p = effects.find((e) => e.kind === 'propose');
  if (p?.kind !== 'propose') throw new Error(`nothing proposed: ${short(effects).join(', ')}`);
  return p.command;
}

describe('coordinator: prepare', () => {
  it('waits for the target to show its incoming copy, then records the transfer phase', () => {
    const waiting = step(migration('prepare'), { target: { state: 'absent', asOf: 0 } });
    expect(waiting.effects).toEqual([]);
    expect(waiting.waiting).toBe('us to prepare the incoming copy');
    expect(waiting.wakeAt).toBe(10_000);
    expect(short(step(migration('prepare'), { target: PREPARED }).effects)).toEqual(['propose:transfer']);
  });

  it('rolls back when the target prepares nothing in time, saying whether its report was current', () => {
    const first = step(migration('prepare'), { target: UNKNOWN });
    const late = step(migration('prepare'), { target: UNKNOWN, memory: first.memory, now: 10_000 });
    expect(short(late.effects)).toEqual(['propose:rolling-back']);
    expect(proposed(late.effects)).toMatchObject({ reason: 'us/local did not prepare a copy of web1 within 10 s (its report is not current)' });
  });

  it('rolls back when the source copy is gone', () => {
    expect(proposed(step(migration('prepare'), { source: 'absent' }).effects)).toMatchObject({ phase: 'rolling-back', reason: 'the source copy of web1 in eu is gone' });
  });
});

describe('coordinator: transfer', () => {
  it('cold: stops the source first, then one transfer, then records bytes, rounds and when the source stopped on the way to cutover', () => {
    const m = migration('transfer', 'cold');
    expect(short(step(m, { source: RUNNING }).effects)).toEqual(['stop-source']);
    expect(step(m, { source: RUNNING, inFlight: ['source'] }).effects).toEqual([]);
    expect(step(m, { source: { state: 'stopping', paused: false } }).effects).toEqual([]);
    const stopped = step(m, { source: STOPPED, now: 500 });
    expect(short(stopped.effects)).toEqual(['start-transfer:final']);
    const running = step(m, { source: STOPPED, transfer: transfer('final', 'running', { progressAt: 600 }), memory: stopped.memory, now: 700 });
    expect(running.effects).toEqual([]);
    expect(running.wakeAt).toBe(5_600);
    const done = step(m, { source: STOPPED, transfer: transfer('final', 'done', { bytes: 4096 }), memory: running.memory, now: 900 });
    expect(proposed(done.effects)).toEqual({ kind: 'migration-progress', id: 'm1', phase: 'cutover', facts: { bytes: 4096, rounds: 1, pausedAt: 500 }, at: 900 });
  });

  it('warm: pre-copies while the source runs, then stops it, then the final delta; the facts sum both steps', () => {
    const m = migration('transfer', 'warm');
    const a = step(m, { source: RUNNING });
    expect(short(a.effects)).toEqual(['start-transfer:precopy']);
    const b = step(m, { source: RUNNING, transfer: transfer('precopy', 'running'), memory: a.memory });
    expect(b.effects).toEqual([]);
    const c = step(m, { source: RUNNING, transfer: transfer('precopy', 'done'), memory: b.memory });
    expect(short(c.effects)).toEqual(['stop-source']);
    const d = step(m, { source: STOPPED, transfer: transfer('precopy', 'done'), memory: c.memory, now: 100 });
    expect(short(d.effects)).toEqual(['start-transfer:final']);
    const e = step(m, { source: STOPPED, transfer: transfer('final', 'done', { bytes: 50, rounds: 4 }), memory: d.memory, now: 200 });
    // The pre-copy's bytes and rounds count with the final delta's.
    expect(proposed(e.effects)).toMatchObject({ phase: 'cutover', facts: { bytes: 1050, rounds: 7, pausedAt: 100 } });
  });

  it('live: one transfer while the source runs; at its end the hypervisor paused the source; the downtime it measured is recorded', () => {
    const m = migration('transfer', 'live');
    const a = step(m, { source: RUNNING });
    expect(short(a.effects)).toEqual(['start-transfer:live']);
    const b = step(m, { source: RUNNING, transfer: transfer('live', 'running'), memory: a.memory });
    expect(b.waiting).toMatch(/live transfer \(1000 bytes, round 3\)/);
    const c = step(m, { source: PAUSED, transfer: transfer('live', 'done', { downtimeMs: 42, targetMayRun: true }), memory: b.memory, now: 300 });
    expect(proposed(c.effects)).toMatchObject({ phase: 'cutover', facts: { bytes: 1000, rounds: 3, downtimeMs: 42 } });
    expect(c.memory.targetMayRun).toBe(true);
  });

  it('rolls back on a failed transfer, one without progress (cancelling it), a vanished target copy, or a source that will not stop', () => {
    const m = migration('transfer', 'cold');
    expect(proposed(step(m, { source: STOPPED, transfer: transfer('final', 'failed', { error: 'connection reset' }) }).effects)).toMatchObject({ reason: 'the final transfer failed: connection reset' });
    const idle = step(m, { source: STOPPED, transfer: transfer('final', 'running', { progressAt: 0 }), now: 5_000 });
    expect(short(idle.effects)).toEqual(['cancel-transfer', 'propose:rolling-back']);
    expect(proposed(idle.effects)).toMatchObject({ reason: 'the final transfer made no progress for 5 s' });
    expect(proposed(step(m, { target: { state: 'absent', asOf: 0 } }).effects)).toMatchObject({ reason: 'the incoming copy at us is gone' });
    let memory = EMPTY_COORDINATOR_MEMORY;
    for (let i = 0; i < 2; i++) memory = step(m, { memory, outcomes: [{ effect: { kind: 'stop-source' }, result: 'error', error: 'IncorrectInstanceState', at: 0 }], now: 10_000 * (i + 1) }).memory;
    expect(proposed(step(m, { memory, now: 100_000 }).effects)).toMatchObject({ reason: 'the source copy did not stop: IncorrectInstanceState' });
  });

  it('does not stop the source for a target that does not report (its daemon may be gone); rolls back after the prepare timeout', () => {
    const m = migration('transfer', 'cold');
    const waiting = step(m, { source: RUNNING, target: UNKNOWN });
    expect(waiting.effects).toEqual([]);
    expect(waiting.waiting).toBe('us to report again before the source stops');
    expect(waiting.wakeAt).toBe(10_000);
    expect(proposed(step(m, { source: RUNNING, target: UNKNOWN, memory: waiting.memory, now: 10_000 }).effects)).toMatchObject({ phase: 'rolling-back', reason: 'us/local has not reported for 10 s; the source was not stopped' });
  });

  it('after a restart: cold transfers again from the start; live rolls back, treating the target as possibly running', () => {
    expect(short(step(migration('transfer', 'cold'), { source: STOPPED }).effects)).toEqual(['start-transfer:final']);
    expect(short(step(migration('transfer', 'warm'), { source: STOPPED }).effects)).toEqual(['start-transfer:final']);
    const live = step(migration('transfer', 'live'), { source: PAUSED });
    expect(proposed(live.effects)).toMatchObject({ phase: 'rolling-back', reason: expect.stringContaining('live transfer was interrupted') });
    expect(live.memory.targetMayRun).toBe(true);
  });
});

describe('coordinator: a VM desired stopped that never had a copy', () => {
  it('moves only the assignment: nothing to transfer, no rollback for a missing source copy', () => {
    expect(short(step(migration('prepare'), { source: 'absent', power: 'stopped' }).effects)).toEqual(['propose:transfer']);
    expect(proposed(step(migration('transfer'), { source: 'absent', power: 'stopped' }).effects)).toEqual({ kind: 'migration-progress', id: 'm1', phase: 'cutover', facts: { bytes: 0, rounds: 0 }, at: 0 });
    expect(proposed(step(migration('rolling-back'), { source: 'absent', power: 'stopped' }).effects)).toMatchObject({ result: 'rolled-back', reason: 'cancelled by operator' });
  });
});

describe('coordinator: cutover, verify, cleanup', () => {
  it('proposes the cutover; a refusal rolls back with the log\'s reason', () => {
    expect(proposed(step(migration('cutover')).effects)).toEqual({ kind: 'migration-cutover', id: 'm1', at: 0 });
    const refused = step(migration('cutover'), { outcomes: [{ effect: { kind: 'propose', command: { kind: 'migration-cutover', id: 'm1', at: 0 } }, result: 'refused', error: 'policy_denied: rule eu-only', at: 0 }], now: 5_000 });
    expect(proposed(refused.effects)).toMatchObject({ phase: 'rolling-back', reason: 'the cutover was refused: policy_denied: rule eu-only' });
  });

  it('cold and warm cut over only to a target that reports its copy; live cuts over whatever the target\'s daemon reports', () => {
    const first = step(migration('cutover', 'cold'), { source: STOPPED, target: UNKNOWN });
    expect(first.effects).toEqual([]);
    expect(first.waiting).toBe('us to report again before cutting over');
    expect(proposed(step(migration('cutover', 'cold'), { source: STOPPED, target: UNKNOWN, memory: first.memory, now: 10_000 }).effects)).toMatchObject({ phase: 'rolling-back', reason: 'us/local has not reported for 10 s; not cutting over to it' });
    expect(proposed(step(migration('cutover', 'warm'), { source: STOPPED, target: { state: 'absent', asOf: 0 } }).effects)).toMatchObject({ phase: 'rolling-back', reason: 'the incoming copy at us is gone' });
    expect(proposed(step(migration('cutover', 'live'), { source: PAUSED, target: UNKNOWN }).effects)).toMatchObject({ kind: 'migration-cutover' });
  });

  it('verify: the target reports the VM as desired → cleanup with the downtime from the source stopping to that report', () => {
    const m = migration('verify', 'cold', { facts: { pausedAt: 1_000 } });
    expect(step(m, { target: { state: 'stopped', asOf: 2_000 }, now: 2_500 }).effects).toEqual([]);
    expect(proposed(step(m, { target: { state: 'running', asOf: 2_400 }, now: 2_500 }).effects)).toEqual({ kind: 'migration-progress', id: 'm1', phase: 'cleanup', facts: { downtimeMs: 1_400 }, at: 2_500 });
    // Desired stopped: the prepared copy stopped is what is wanted, and there is no downtime to speak of.
    expect(proposed(step(m, { target: { state: 'stopped', asOf: 2_000 }, power: 'stopped' }).effects)).toEqual({ kind: 'migration-progress', id: 'm1', phase: 'cleanup', at: 0 });
    // live: the hypervisor's figure.
    expect(proposed(step(migration('verify', 'live', { facts: { downtimeMs: 42 } }), { target: { state: 'running', asOf: 0 } }).effects)).toMatchObject({ facts: { downtimeMs: 42 } });
  });

  it('verify: not reported in time → ends failed, the VM staying at the target', () => {
    const first = step(migration('verify'), { target: UNKNOWN });
    const late = step(migration('verify'), { target: UNKNOWN, memory: first.memory, now: 8_000 });
    expect(proposed(late.effects)).toMatchObject({ kind: 'migration-end', result: 'failed', reason: 'cut over, but us/local did not report web1 running within 8 s (its report is not current); its reconciler owns the VM now' });
  });

  it('cleanup: ends completed once the old copy is gone, or after the timeout saying so', () => {
    expect(proposed(step(migration('cleanup'), { source: 'absent' }).effects)).toEqual({ kind: 'migration-end', id: 'm1', result: 'completed', at: 0 });
    expect(proposed(step(migration('cleanup'), { source: { state: 'terminated', paused: false } }).effects)).toMatchObject({ result: 'completed' });
    const first = step(migration('cleanup'), { source: STOPPED });
    expect(first.effects).toEqual([]);
    expect(proposed(step(migration('cleanup'), { source: STOPPED, memory: first.memory, now: 20_000 }).effects)).toMatchObject({ result: 'completed', reason: expect.stringContaining('was not confirmed gone within 20 s') });
  });
});

describe('coordinator: rolling back', () => {
  it('cold: resumes the stopped source at once (the target never ran), then ends rolled-back with the recorded reason', () => {
    const m = migration('rolling-back', 'cold');
    expect(short(step(m, { source: STOPPED, target: UNKNOWN }).effects)).toEqual(['resume-source']);
    expect(proposed(step(m, { source: RUNNING, target: UNKNOWN }).effects)).toEqual({ kind: 'migration-end', id: 'm1', result: 'rolled-back', reason: 'cancelled by operator', at: 0 });
    // Desired stopped: nothing to resume.
    expect(proposed(step(m, { source: STOPPED, power: 'stopped' }).effects)).toMatchObject({ result: 'rolled-back' });
    expect(proposed(step(m, { source: 'absent' }).effects)).toMatchObject({ result: 'failed', reason: 'cancelled by operator; and the source copy of web1 in eu is gone (its reconciler creates it again)' });
    // The reason is not repeated when it is why the migration rolled back.
    expect(proposed(step(migration('rolling-back', 'cold', { reason: 'the source copy of web1 in eu is gone' }), { source: 'absent' }).effects)).toMatchObject({ reason: 'the source copy of web1 in eu is gone (its reconciler creates it again)' });
  });

  it('cancels a running transfer', () => {
    expect(short(step(migration('rolling-back', 'warm'), { source: RUNNING, transfer: transfer('precopy', 'running') }).effects)).toEqual(['cancel-transfer', 'propose:end:rolled-back']);
  });

  it('live after the transfer completed: stops the target FIRST (its reconciler fences it), waits for a report taken after the rollback began showing it down, then resumes the source', () => {
    const m = migration('rolling-back', 'live');
    const memory: CoordinatorMemory = { ...EMPTY_COORDINATOR_MEMORY, phase: 'transfer', targetMayRun: true };
    const a = step(m, { source: PAUSED, target: { state: 'running', asOf: 900 }, memory, now: 1_000 });
    expect(a.effects).toEqual([]);
    expect(a.waiting).toMatch(/us to report its copy stopped .* before the source resumes/);
    // An old report (taken before the rollback began) does not count.
    expect(step(m, { source: PAUSED, target: { state: 'stopped', asOf: 999 }, memory: a.memory, now: 1_500 }).effects).toEqual([]);
    expect(step(m, { source: PAUSED, target: UNKNOWN, memory: a.memory, now: 1_500 }).effects).toEqual([]);
    const down = step(m, { source: PAUSED, target: { state: 'stopped', asOf: 1_200 }, memory: a.memory, now: 1_500 });
    expect(short(down.effects)).toEqual(['resume-source']);
    expect(short(step(m, { source: RUNNING, target: { state: 'absent', asOf: 1_300 }, memory: down.memory, now: 1_600 }).effects)).toEqual(['propose:end:rolled-back']);
  });

  it('live, restarted while rolling back: cannot know whether the transfer completed, so waits for the target too', () => {
    const restarted = step(migration('rolling-back', 'live'), { source: PAUSED, target: UNKNOWN });
    expect(restarted.memory.targetMayRun).toBe(true);
    expect(restarted.effects).toEqual([]);
    // A live migration whose transfer never completed: the source still runs, so the target cannot: end at once.
    expect(short(step(migration('rolling-back', 'live'), { source: RUNNING, target: UNKNOWN, memory: { ...EMPTY_COORDINATOR_MEMORY, phase: 'transfer' } }).effects)).toEqual(['propose:end:rolled-back']);
  });

  it('a source that will not resume: after maxAttempts ends rolled-back, its reconciler taking over', () => {
    const m = migration('rolling-back');
    let memory = step(m, { source: STOPPED }).memory;
    for (let i = 0; i < 2; i++) memory = step(m, { source: STOPPED, memory, outcomes: [{ effect: { kind: 'resume-source' }, result: 'error', error: 'no capacity', at: i * 10_000 }], now: i * 10_000 }).memory;
    expect(proposed(step(m, { source: STOPPED, memory, now: 100_000 }).effects)).toMatchObject({ result: 'rolled-back', reason: 'cancelled by operator; the source did not resume (no capacity), its reconciler takes over' });
  });
});

describe('coordinator: effects in flight, back-off, determinism', () => {
  it('one proposal at a time; a failed one backs off and is retried, with a wake-up', () => {
    const m = migration('prepare');
    expect(step(m, { inFlight: ['propose'] }).effects).toEqual([]);
    const failed = step(m, { outcomes: [{ effect: { kind: 'propose', command: { kind: 'migration-progress', id: 'm1', phase: 'transfer', at: 0 } }, result: 'error', error: 'no quorum', at: 100 }], now: 200 });
    expect(failed.effects).toEqual([]);
    expect(failed.wakeAt).toBe(1_100);
    expect(short(step(m, { memory: failed.memory, now: 1_100 }).effects)).toEqual(['propose:transfer']);
  });

  it('the same input gives the same output', () => {
    const input = { source: STOPPED, transfer: transfer('final', 'done'), now: 7 };
    expect(step(migration('transfer'), input)).toEqual(step(migration('transfer'), input));
  });
});
