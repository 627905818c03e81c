/**
 * The reconciler's migration rules: the target prepares the incoming copy
 * (created stopped, tagged with the migration) and leaves it alone until
 * cutover, then starts it as the current copy; after a rollback it fences it
 * (reason `migration`); the source leaves its copy's power to the migration
 * until cutover, then fences it like any reassigned copy.
 */
import { describe, expect, it } from 'vitest';
import { parseFleetCommand, type FleetCommandInput } from '../../src/fleet/commands.ts';
import { MIGRATION_TAG } from '../../src/fleet/migrations.ts';
import { EMPTY_RECONCILER_MEMORY, actionKey, copyTags, createToken, isIncomingCopy, observedFromTags, reconcile, type ObservedVm, type ReconcileAction, type ReconcileInput } from '../../src/fleet/reconciler.ts';
import type { FleetStateMachine } from '../../src/fleet/state-machine.ts';
import { assign, create, localProvider, machineWith, registerRegion, spec } from './fleet-fixtures.ts';

const OPTIONS = { maxAttempts: 3, backoffBaseMs: 1_000, backoffCapMs: 5_000 };

function apply(m: FleetStateMachine, ...commands: FleetCommandInput[]): FleetStateMachine {
  for (const c of commands) {
    const result = m.apply(parseFleetCommand(c));
    if (!result.ok) throw new Error(`${c.kind}: ${result.message}`);
  }
  return m;
}

/** web1 at eu generation 1, migrating (m1) to us at generation 2, in `phase`. */
function migrating(phase: 'prepare' | 'transfer' | 'cutover' | 'verify' | 'rolling-back' | 'ended'): FleetStateMachine {
  const m = machineWith(registerRegion('eu', [localProvider(16, 64)]), registerRegion('us', [localProvider(16, 64)]));
  m.apply(create(spec('web1')));
  m.apply(assign('web1', 'eu', 1));
  apply(m, { kind: 'migration-start', vm: 'web1', generation: 1, region: 'us', provider: 'local', mode: 'cold', at: 1 });
  if (phase === 'prepare') return m;
  if (phase === 'rolling-back' || phase === 'ended') {
    apply(m, { kind: 'migration-progress', id: 'm1', phase: 'rolling-back', reason: 'cancelled by operator', at: 2 });
    if (phase === 'ended') apply(m, { kind: 'migration-end', id: 'm1', result: 'rolled-back', reason: 'cancelled by operator', at: 3 });
    return m;
  }
  apply(m, { kind: 'migration-progress', id: 'm1', phase: 'transfer', at: 2 });
  if (phase === 'transfer') return m;
  apply(m, { kind: 'migration-progress', id: 'm1', phase: 'cutover', at: 3 });
  if (phase === 'cutover') return m;
  apply(m, { kind: 'migration-cutover', id: 'm1', at: 4 });
  return m;
}

function copy(id: string, state: ObservedVm['state'], generation: number, migration?: string): ObservedVm {
  return { provider: 'local', id, name: 'web1', state, managed: true, vmName: 'web1', generation, ...(migration === undefined ? {} : { migration }) };
}

function pass(region: string, m: FleetStateMachine, observed: readonly ObservedVm[], extra: Partial<ReconcileInput> = {}) {
  return reconcile({ region, desired: m, observed, memory: EMPTY_RECONCILER_MEMORY, inFlight: new Set(), now: 0, options: OPTIONS, ...extra });
}

function kinds(actions: readonly ReconcileAction[]): string[] {
  return actions.map((a) => (a.kind === 'status' ? `status:${a.status}` : a.kind === 'terminate' ? `terminate:${a.id}:${a.reason}` : a.kind === 'stop' ? `stop:${a.id}${a.fence === undefined ? '' : `:${a.fence}`}` : `${a.kind}${'id' in a ? `:${a.id}` : ''}`));
}

const INCOMING = copy('i-in', 'stopped', 2, 'm1');
const SOURCE = copy('i-src', 'running', 1);

describe('reconciler: the target of a migration', () => {
  it('creates the incoming copy prepared (incoming: the migration), tagged with the migration, at the generation it took', () => {
    const { actions } = pass('us', migrating('prepare'), []);
    expect(kinds(actions)).toEqual(['create']);
    expect(actions[0]).toMatchObject({ kind: 'create', vm: 'web1', provider: 'local', generation: 2, incoming: 'm1', token: createToken('web1', 2), tags: copyTags('web1', 2, 'm1') });
    if (actions[0]?.kind !== 'create') throw new Error('not a create');
    expect(actions[0].tags[MIGRATION_TAG]).toBe('m1');
    // In flight: not again.
    expect(pass('us', migrating('prepare'), [], { inFlight: new Set([actionKey(actions[0]) ?? '']) }).actions).toEqual([]);
  });

  it('leaves the incoming copy alone in prepare, transfer and cutover: not fenced, not started, no report', () => {
    for (const phase of ['prepare', 'transfer', 'cutover'] as const) {
      const m = migrating(phase);
      expect(isIncomingCopy('us', m.migrationOf('web1'), INCOMING)).toBe(true);
      expect(pass('us', m, [INCOMING]).actions, phase).toEqual([]);
    }
  });

  it('a copy that looks incoming but is not (another migration id, another generation) is fenced as the migration reason says', () => {
    const m = migrating('transfer');
    const other = copy('i-old', 'stopped', 2, 'm7');
    expect(isIncomingCopy('us', m.migrationOf('web1'), other)).toBe(false);
    const { actions } = pass('us', m, [other, INCOMING]);
    expect(kinds(actions)).toEqual(['terminate:i-old:migration']);
    expect(actions[0]).toMatchObject({ detail: expect.stringContaining('migration m7, which ended without cutting over') });
  });

  it('after cutover the incoming copy is the current one and is started', () => {
    const { actions } = pass('us', migrating('verify'), [INCOMING]);
    expect(kinds(actions)).toEqual(['start:i-in', 'status:pending']);
  });

  it('rolling back or ended without cutover: the incoming copy is stale and torn down (stopped if it runs, then terminated), never started', () => {
    const rolling = pass('us', migrating('rolling-back'), [INCOMING]);
    expect(kinds(rolling.actions)).toEqual(['terminate:i-in:migration']);
    expect(rolling.actions[0]).toMatchObject({ detail: expect.stringContaining('migration m1, which is rolling-back') });
    // A live target that ran before the rollback: stopped first (the fastest fence).
    expect(kinds(pass('us', migrating('rolling-back'), [copy('i-in', 'running', 2, 'm1')]).actions)).toEqual(['stop:i-in:migration']);
    expect(kinds(pass('us', migrating('ended'), [INCOMING]).actions)).toEqual(['terminate:i-in:migration']);
    // Nothing is created for a migration that no longer wants its copy.
    expect(pass('us', migrating('rolling-back'), []).actions).toEqual([]);
  });

  it('a failed incoming create backs off and is retried; after maxAttempts the target refuses the migration with the last reason, every pass while in prepare', () => {
    const m = migrating('prepare');
    const first = pass('us', m, []);
    const action = first.actions[0] as ReconcileAction;
    let memory = first.memory;
    for (let i = 0; i < OPTIONS.maxAttempts - 1; i++) {
      const failed = pass('us', m, [], { memory, outcomes: [{ action, ok: false, error: `no room (${i + 1})`, at: i * 10_000 }], now: i * 10_000 });
      expect(failed.actions, `attempt ${i + 1}`).toEqual([]);
      memory = failed.memory;
      // Backed off, then retried.
      expect(kinds(pass('us', m, [], { memory, now: i * 10_000 + 9_999 }).actions)).toEqual(['create']);
    }
    const last = pass('us', m, [], { memory, outcomes: [{ action, ok: false, error: 'qemu exited: no kernel', at: 50_000 }], now: 50_000 });
    expect(last.actions).toEqual([{ kind: 'refuse-migration', vm: 'web1', migration: 'm1', reason: 'qemu exited: no kernel' }]);
    // Level-triggered: again at the next pass, never another create.
    expect(pass('us', m, [], { memory: last.memory, now: 500_000 }).actions).toEqual([{ kind: 'refuse-migration', vm: 'web1', migration: 'm1', reason: 'qemu exited: no kernel' }]);
    // Not while this daemon's desired state is unconfirmed (it may be mid-replay).
    expect(pass('us', m, [], { memory: last.memory, now: 500_000, logConfirmed: false }).actions).toEqual([]);
    // Once the log says rolling back, nothing: no refusal, no create.
    expect(pass('us', migrating('rolling-back'), [], { memory: last.memory, now: 500_000 }).actions).toEqual([]);
  });
});

describe('reconciler: the source of a migration', () => {
  it('leaves the copy alone until cutover: not restarted when the coordinator stopped it, not stopped, not recreated', () => {
    for (const phase of ['prepare', 'transfer', 'cutover', 'rolling-back'] as const) {
      const m = migrating(phase);
      expect(kinds(pass('eu', m, [SOURCE]).actions), phase).toEqual(['status:running']);
      expect(kinds(pass('eu', m, [copy('i-src', 'stopped', 1)]).actions), phase).toEqual(['status:pending']);
      expect(kinds(pass('eu', m, []).actions), phase).toEqual(['status:pending']);
    }
  });

  it('after cutover the old copy is stale (reassigned) and fenced: the clean-up', () => {
    expect(kinds(pass('eu', migrating('verify'), [SOURCE]).actions)).toEqual(['stop:i-src:reassigned']);
    expect(kinds(pass('eu', migrating('verify'), [copy('i-src', 'stopped', 1)]).actions)).toEqual(['terminate:i-src:reassigned']);
  });

  it('after a rollback the source copy is the VM\'s again: a stopped one is started', () => {
    expect(kinds(pass('eu', migrating('ended'), [copy('i-src', 'stopped', 1)]).actions)).toEqual(['start:i-src', 'status:pending']);
  });

  it('reads the migration tag from the provider', () => {
    const observed = observedFromTags({ provider: 'local', id: 'i-1', name: 'web1', state: 'stopped' }, copyTags('web1', 2, 'm1'));
    expect(observed).toMatchObject({ vmName: 'web1', generation: 2, migration: 'm1', managed: true });
  });
});
