/** The per-region reconciler core: each action kind, fencing first, back-off, giving up with the provider's reason, orphans, determinism. */
import { describe, expect, it } from 'vitest';
import { parseFleetCommand } from '../../src/fleet/commands.ts';
import {
  EMPTY_RECONCILER_MEMORY,
  GENERATION_TAG,
  MANAGED_BY_TAG,
  DESIRED_VM_TAG,
  actionKey,
  backoffMs,
  copyKey,
  copyTags,
  createToken,
  observedFromTags,
  reconcile,
  type ActionOutcome,
  type ObservedVm,
  type ReconcileAction,
  type ReconcileInput,
  type ReconcilerMemory,
  type ReconcilerOptions,
} from '../../src/fleet/reconciler.ts';
import type { FleetStateMachine } from '../../src/fleet/state-machine.ts';
import { assign, create, localProvider, machineWith, registerRegion, spec } from './fleet-fixtures.ts';

const OPTIONS: ReconcilerOptions = { maxAttempts: 3, backoffBaseMs: 1_000, backoffCapMs: 5_000 };

function fleet(): FleetStateMachine {
  return machineWith(registerRegion('eu', [localProvider(16, 64)]), registerRegion('us', [localProvider(16, 64)]));
}

function ok(m: FleetStateMachine, ...commands: ReturnType<typeof create>[]): FleetStateMachine {
  for (const c of commands) {
    const result = m.apply(c);
    if (!result.ok) throw new Error(result.message);
  }
  return m;
}

/** A fleet with web1 assigned to eu at generation 1. */
function withWeb1(): FleetStateMachine {
  return ok(fleet(), create(spec('web1')), assign('web1', 'eu', 1));
}

function copy(id: string, state: ObservedVm['state'], vmName: string | undefined, generation: number | undefined, extra: Partial<ObservedVm> = {}): ObservedVm {
  return { provider: 'local', id, name: vmName ?? id, state, managed: true, ...(vmName === undefined ? {} : { vmName }), ...(generation === undefined ? {} : { generation }), ...extra };
}

function pass(m: FleetStateMachine, observed: readonly ObservedVm[], extra: Partial<ReconcileInput> = {}) {
  return reconcile({ region: 'eu', desired: m, observed, memory: EMPTY_RECONCILER_MEMORY, inFlight: new Set(), now: 0, options: OPTIONS, ...extra });
}

function kinds(actions: readonly ReconcileAction[]): string[] {
  return actions.map((a) => (a.kind === 'status' ? `status:${a.vm}:${a.status}` : a.kind === 'orphan' ? `orphan:${a.id}` : `${a.kind}:${a.vm}${'id' in a ? `:${a.id}` : ''}`));
}

function failure(action: ReconcileAction, at: number, error = 'InsufficientInstanceCapacity: no room'): ActionOutcome {
  return { action, ok: false, error, at };
}

describe('reconciler: actions', () => {
  it('creates a VM assigned here with a token from its name and generation, and reports it pending', () => {
    const { actions } = pass(withWeb1(), []);
    expect(kinds(actions)).toEqual(['create:web1', 'status:web1:pending']);
    const created = actions[0];
    expect(created).toMatchObject({ kind: 'create', provider: 'local', vm: 'web1', generation: 1, token: createToken('web1', 1) });
    if (created?.kind !== 'create') throw new Error('not a create');
    expect(created.spec.name).toBe('web1');
    expect(created.tags).toEqual(copyTags('web1', 1));
    expect(created.tags[MANAGED_BY_TAG]).toBe('dwcp');
    expect(createToken('web1', 1)).toBe(createToken('web1', 1));
    expect(createToken('web1', 2)).not.toBe(createToken('web1', 1));
    expect(createToken('a'.repeat(63), 2 ** 52).length).toBeLessThanOrEqual(64);
  });

  it('reports running once, and stays quiet while nothing changes', () => {
    const m = withWeb1();
    const first = pass(m, [copy('i-1', 'running', 'web1', 1)]);
    expect(kinds(first.actions)).toEqual(['status:web1:running']);
    const second = pass(m, [copy('i-1', 'running', 'web1', 1)], { memory: first.memory });
    expect(second.actions).toEqual([]);
  });

  it('starts a stopped copy when desired running, stops a running one when desired stopped', () => {
    const m = withWeb1();
    expect(kinds(pass(m, [copy('i-1', 'stopped', 'web1', 1)]).actions)).toEqual(['start:web1:i-1', 'status:web1:pending']);
    ok(m, parseFleetCommand({ kind: 'set-power', vm: 'web1', power: 'stopped' }));
    const { actions } = pass(m, [copy('i-1', 'running', 'web1', 1)]);
    expect(kinds(actions)).toEqual(['stop:web1:i-1', 'status:web1:running']);
    expect(actions[0]).toMatchObject({ kind: 'stop', generation: 1 });
    expect(actions[0]).not.toHaveProperty('fence');
    // Desired stopped and no copy: nothing to create.
    expect(kinds(pass(m, []).actions)).toEqual(['status:web1:stopped']);
  });

  it('waits on transitional states instead of acting on them', () => {
    const m = withWeb1();
    expect(kinds(pass(m, [copy('i-1', 'pending', 'web1', 1)]).actions)).toEqual(['status:web1:pending']);
    expect(kinds(pass(m, [copy('i-1', 'stopping', 'web1', 1)]).actions)).toEqual(['status:web1:pending']);
  });

  it('terminates the copies of a deleted VM', () => {
    const m = ok(withWeb1(), parseFleetCommand({ kind: 'delete', vm: 'web1' }));
    const { actions } = pass(m, [copy('i-1', 'running', 'web1', 1)]);
    expect(actions).toEqual([expect.objectContaining({ kind: 'terminate', id: 'i-1', reason: 'deleted' })]);
  });

  it('ignores terminated copies and unmanaged instances', () => {
    const m = withWeb1();
    const { actions } = pass(m, [copy('i-0', 'terminated', 'web1', 1), copy('i-9', 'running', undefined, undefined, { managed: false, name: 'by-hand' })]);
    expect(kinds(actions)).toEqual(['create:web1', 'status:web1:pending']);
  });

  it('reports managed copies with no desired VM as orphans, every pass, and never acts on them', () => {
    const m = withWeb1();
    const observed = [copy('i-1', 'running', 'web1', 1), copy('i-7', 'running', 'ghost', 4), copy('i-8', 'stopped', undefined, undefined)];
    const first = pass(m, observed);
    expect(kinds(first.actions)).toEqual(['orphan:i-7', 'orphan:i-8', 'status:web1:running']);
    expect(first.actions[0]).toEqual({ kind: 'orphan', provider: 'local', id: 'i-7', name: 'ghost', state: 'running', vmName: 'ghost', generation: 4 });
    const second = pass(m, observed, { memory: first.memory });
    expect(kinds(second.actions)).toEqual(['orphan:i-7', 'orphan:i-8']);
  });

  it('keeps one copy of a (VM, generation) launched twice and terminates the other', () => {
    const { actions } = pass(withWeb1(), [copy('i-1', 'stopped', 'web1', 1), copy('i-2', 'running', 'web1', 1)]);
    expect(actions).toEqual([expect.objectContaining({ kind: 'terminate', id: 'i-1', reason: 'duplicate' }), expect.objectContaining({ kind: 'status', status: 'running' })]);
  });

  it('reads copies from provider tags', () => {
    const tags = { ...copyTags('web1', 7), other: 'x' };
    expect(observedFromTags({ provider: 'aws', id: 'i-1', name: 'web1', state: 'running' }, tags)).toEqual({ provider: 'aws', id: 'i-1', name: 'web1', state: 'running', managed: true, vmName: 'web1', generation: 7 });
    const bad = observedFromTags({ provider: 'aws', id: 'i-2', name: 'x', state: 'running' }, { [MANAGED_BY_TAG]: 'dwcp', [DESIRED_VM_TAG]: 'web1', [GENERATION_TAG]: '07' });
    expect(bad).not.toHaveProperty('generation');
    expect(observedFromTags({ provider: 'aws', id: 'i-3', name: 'x', state: 'running' }, {}).managed).toBe(false);
  });
});

describe('reconciler: fencing', () => {
  it('stops a running copy whose VM was reassigned to another region, and does nothing else for it', () => {
    const m = ok(withWeb1(), assign('web1', 'us', 2));
    const { actions } = pass(m, [copy('i-1', 'running', 'web1', 1)]);
    expect(actions).toEqual([{ kind: 'stop', provider: 'local', id: 'i-1', vm: 'web1', generation: 1, fence: 'reassigned' }]);
    // Once stopped, terminated.
    expect(pass(m, [copy('i-1', 'stopped', 'web1', 1)]).actions).toEqual([expect.objectContaining({ kind: 'terminate', id: 'i-1', reason: 'reassigned' })]);
    // The region that holds the assignment now.
    expect(kinds(reconcile({ region: 'us', desired: m, observed: [], memory: EMPTY_RECONCILER_MEMORY, inFlight: new Set(), now: 0, options: OPTIONS }).actions)).toEqual(['create:web1', 'status:web1:pending']);
  });

  it('fences a stale copy before creating the new generation in the same region', () => {
    const m = ok(withWeb1(), assign('web1', 'eu', 2));
    const first = pass(m, [copy('i-1', 'running', 'web1', 1)]);
    expect(kinds(first.actions)).toEqual(['stop:web1:i-1', 'status:web1:pending']);
    expect(first.actions[0]).toMatchObject({ fence: 'stale-generation' });
    // Stopping: still nothing new.
    expect(kinds(pass(m, [copy('i-1', 'stopping', 'web1', 1)]).actions)).toEqual(['status:web1:pending']);
    // Stopped: terminated, and now the new generation may be created.
    expect(kinds(pass(m, [copy('i-1', 'stopped', 'web1', 1)]).actions)).toEqual(['terminate:web1:i-1', 'create:web1', 'status:web1:pending']);
  });

  it('never starts a copy whose generation it does not hold, older or newer', () => {
    const m = ok(withWeb1(), assign('web1', 'eu', 2));
    for (const generation of [1, 3, undefined]) {
      const { actions } = pass(m, [copy('i-1', 'stopped', 'web1', generation)]);
      expect(actions.some((a) => a.kind === 'start')).toBe(false);
      expect(actions[0]).toMatchObject({ kind: 'terminate', id: 'i-1', reason: 'stale-generation' });
    }
  });

  it('terminates a pending stale copy at once (a pending instance cannot be stopped)', () => {
    const m = ok(withWeb1(), assign('web1', 'us', 2));
    expect(pass(m, [copy('i-1', 'pending', 'web1', 1)]).actions).toEqual([expect.objectContaining({ kind: 'terminate', id: 'i-1', reason: 'reassigned' })]);
  });

  it('a copy of a VM moved to another provider of this region is stale too', () => {
    const m = ok(
      machineWith(registerRegion('eu', [localProvider(16, 64), { name: 'cloud', kind: 'aws', quota: { vcpus: 100, instances: 10 }, prices: { vcpuHourUsd: 0.05, memoryGiBHourUsd: 0.005 } }])),
      create(spec('web1')),
      assign('web1', 'eu', 1),
      assign('web1', 'eu', 2, 'cloud'),
    );
    expect(kinds(pass(m, [copy('i-1', 'running', 'web1', 1)]).actions)).toEqual(['stop:web1:i-1', 'status:web1:pending']);
  });
});

describe('reconciler: in flight, back-off and giving up', () => {
  it('does not repeat an action in flight', () => {
    const m = withWeb1();
    const first = pass(m, []);
    const create = first.actions[0] as ReconcileAction;
    const again = pass(m, [], { memory: first.memory, inFlight: new Set([actionKey(create) as string]) });
    expect(again.actions).toEqual([]);
    // A copy with an operation in flight gets no other.
    const stopped = [copy('i-1', 'stopped', 'web1', 1)];
    expect(kinds(pass(m, stopped, { inFlight: new Set([copyKey('local', 'i-1')]) }).actions)).toEqual(['status:web1:pending']);
  });

  it('backs off exponentially with a cap, with time as input', () => {
    expect([1, 2, 3, 4, 5, 40].map((n) => backoffMs(n, OPTIONS))).toEqual([1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
    const m = withWeb1();
    const first = pass(m, [], { now: 0 });
    const create = first.actions[0] as ReconcileAction;
    // Failed at t=100: no retry before 1 100.
    const waiting = pass(m, [], { memory: first.memory, outcomes: [failure(create, 100)], now: 1_099 });
    expect(kinds(waiting.actions)).toEqual([]);
    // The driver is told when to pass again: when the back-off runs out.
    expect(waiting.wakeAt).toBe(1_100);
    expect(first.wakeAt).toBe(Number.POSITIVE_INFINITY);
    const retry = pass(m, [], { memory: waiting.memory, now: 1_100 });
    expect(kinds(retry.actions)).toEqual(['create:web1']);
    // Second failure at 1 200: 2 s.
    const second = pass(m, [], { memory: retry.memory, outcomes: [failure(create, 1_200)], now: 3_199 });
    expect(second.actions).toEqual([]);
    expect(kinds(pass(m, [], { memory: second.memory, now: 3_200 }).actions)).toEqual(['create:web1']);
  });

  it('marks the VM failed with the provider\'s last reason after maxAttempts, and stops retrying', () => {
    const m = withWeb1();
    let memory: ReconcilerMemory = EMPTY_RECONCILER_MEMORY;
    let now = 0;
    const create = pass(m, []).actions[0] as ReconcileAction;
    for (let attempt = 1; attempt <= OPTIONS.maxAttempts; attempt++) {
      now += 10_000;
      // Failed 9 s ago: any back-off is over by now.
      const result = pass(m, [], { memory, outcomes: [failure(create, now - 9_000, `InternalError: attempt ${attempt}`)], now });
      memory = result.memory;
      if (attempt < OPTIONS.maxAttempts) expect(kinds(result.actions)).toContain('create:web1');
      else expect(result.actions).toEqual([{ kind: 'status', vm: 'web1', generation: 1, status: 'failed', reason: 'InternalError: attempt 3' }]);
    }
    expect(pass(m, [], { memory, now: now + 1_000_000 }).actions).toEqual([]);
    // A new assignment starts afresh.
    ok(m, assign('web1', 'eu', 2));
    expect(kinds(pass(m, [], { memory, now: now + 1_000_001 }).actions)).toEqual(['create:web1', 'status:web1:pending']);
  });

  it('a copy that keeps failing to start is failed with the reason', () => {
    const m = withWeb1();
    const stopped = [copy('i-1', 'stopped', 'web1', 1)];
    const start = pass(m, stopped).actions[0] as ReconcileAction;
    let memory: ReconcilerMemory = EMPTY_RECONCILER_MEMORY;
    for (let i = 1; i <= OPTIONS.maxAttempts; i++) memory = pass(m, stopped, { memory, outcomes: [failure(start, i * 10_000, 'IncorrectInstanceState')], now: i * 10_000 }).memory;
    const last = pass(m, stopped, { now: 100_000, memory: { ...memory, reported: new Map() } });
    expect(last.actions).toEqual([{ kind: 'status', vm: 'web1', generation: 1, status: 'failed', reason: 'IncorrectInstanceState' }]);
  });

  it('never gives up fencing: a refused stop is retried at the capped back-off', () => {
    const m = ok(withWeb1(), assign('web1', 'us', 2));
    const running = [copy('i-1', 'running', 'web1', 1)];
    const stop = pass(m, running).actions[0] as ReconcileAction;
    let memory: ReconcilerMemory = EMPTY_RECONCILER_MEMORY;
    for (let i = 1; i <= 10; i++) {
      const at = i * 100_000;
      memory = pass(m, running, { memory, outcomes: [failure(stop, at, 'InternalError')], now: at }).memory;
      expect(pass(m, running, { memory, now: at + OPTIONS.backoffCapMs }).actions).toEqual([stop]);
    }
  });

  it('a success clears the failures', () => {
    const m = withWeb1();
    const create = pass(m, []).actions[0] as ReconcileAction;
    const failed = pass(m, [], { outcomes: [failure(create, 0)], now: 0 });
    const cleared = pass(m, [], { memory: failed.memory, outcomes: [{ action: create, ok: true, at: 10 }], now: 10 });
    expect(kinds(cleared.actions)).toEqual(['create:web1']);
    expect(cleared.memory.attempts.size).toBe(0);
  });

  it('forgets VMs and copies that are gone (bounded memory)', () => {
    const m = withWeb1();
    const create = pass(m, []).actions[0] as ReconcileAction;
    const failed = pass(m, [], { outcomes: [failure(create, 0)], now: 0 });
    expect(failed.memory.attempts.size).toBe(1);
    ok(m, assign('web1', 'us', 2));
    const gone = pass(m, [], { memory: failed.memory, now: 1 });
    expect(gone.memory.attempts.size).toBe(0);
    expect(gone.memory.reported.size).toBe(0);
  });
});

describe('reconciler: lease', () => {
  const LEASED: ReconcilerOptions = { ...OPTIONS, lease: { leaseMs: 3_000, handoffMs: 10_000 } };

  it('a region whose view of the log is older than the lease stops what it runs and starts nothing', () => {
    const m = ok(withWeb1(), create(spec('db1')), assign('db1', 'eu', 1));
    const observed = [copy('i-1', 'running', 'web1', 1)];
    const fresh = pass(m, observed, { options: LEASED, now: 10_000, logSeenAt: 7_000 });
    expect(kinds(fresh.actions)).toEqual(['create:db1', 'status:db1:pending', 'status:web1:running']);
    const expired = pass(m, observed, { options: LEASED, now: 10_001, logSeenAt: 7_000 });
    expect(kinds(expired.actions)).toEqual(['status:db1:pending', 'stop:web1:i-1', 'status:web1:running']);
    expect(expired.actions[1]).toMatchObject({ kind: 'stop', fence: 'lease-expired' });
    expect(kinds(pass(m, [copy('i-1', 'stopped', 'web1', 1)], { options: LEASED, now: 10_001, logSeenAt: 7_000 }).actions)).toEqual(['status:db1:pending', 'status:web1:pending']);
  });

  it('holds the start of a VM that had a holder before for handoffMs after it first saw the generation', () => {
    const m = ok(withWeb1(), assign('web1', 'eu', 2));
    const first = pass(m, [], { options: LEASED, now: 1_000 });
    expect(kinds(first.actions)).toEqual(['status:web1:pending']);
    expect(first.memory.firstSeen.get('web1')).toEqual({ generation: 2, at: 1_000 });
    // The pass that holds it says when the hold ends, so the create comes then, not at the driver's next interval.
    expect(first.wakeAt).toBe(11_000);
    expect(pass(m, [], { options: LEASED, memory: first.memory, now: 10_999 }).actions).toEqual([]);
    expect(kinds(pass(m, [], { options: LEASED, memory: first.memory, now: 11_000 }).actions)).toEqual(['create:web1']);
    // A first assignment (generation 1) has no previous holder: no wait.
    expect(kinds(pass(withWeb1(), [], { options: LEASED, now: 0 }).actions)).toEqual(['create:web1', 'status:web1:pending']);
  });
});

describe('reconciler: determinism', () => {
  it('the same inputs give the same actions, whatever the inventory order', () => {
    const m = ok(withWeb1(), create(spec('db1')), assign('db1', 'eu', 1), create(spec('old1')), assign('old1', 'eu', 1), assign('old1', 'us', 2));
    const observed = [copy('i-3', 'running', 'old1', 1), copy('i-9', 'running', 'ghost', 1), copy('i-1', 'stopped', 'web1', 1)];
    const a = pass(m, observed, { now: 5 });
    const b = pass(m, [...observed].reverse(), { now: 5 });
    expect(b).toEqual(a);
    expect(kinds(a.actions)).toEqual(['orphan:i-9', 'create:db1', 'status:db1:pending', 'stop:old1:i-3', 'start:web1:i-1', 'status:web1:pending']);
  });
});
