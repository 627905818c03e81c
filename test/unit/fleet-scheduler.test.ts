/** The scheduler core: plans from placement's choice, the re-plan rule on refusals, failure with every reason. */
import { describe, expect, it } from 'vitest';
import type { FleetResult } from '../../src/fleet/commands.ts';
import { DEFAULT_SCHEDULER_OPTIONS, judgePlan, planCreate, resolveSchedulerOptions, startScheduling, type SchedulePlan } from '../../src/fleet/scheduler.ts';
import { assign, create, localProvider, machineWith, registerRegion, spec } from './fleet-fixtures.ts';

function twoRegions() {
  // eu is cheaper: placement's choice while it has room.
  return machineWith(registerRegion('eu', [localProvider(4, 16, 0.01)]), registerRegion('us', [localProvider(4, 16, 0.05)]));
}

function propose(plan: SchedulePlan): Extract<SchedulePlan, { kind: 'propose' }> {
  if (plan.kind !== 'propose') throw new Error(`expected a plan, got ${plan.kind}: ${plan.kind === 'failed' ? plan.reasons.join('; ') : plan.region}`);
  return plan;
}

function applyAll(m: ReturnType<typeof twoRegions>, plan: Extract<SchedulePlan, { kind: 'propose' }>): FleetResult[] {
  return plan.commands.map((c) => m.apply(c));
}

describe('scheduler', () => {
  it('plans create + assign at placement\'s choice, generation 1', () => {
    const m = twoRegions();
    const plan = propose(planCreate(startScheduling({ spec: spec('web1'), power: 'running' }), m));
    expect(plan.commands).toEqual([
      { kind: 'create', spec: spec('web1'), power: 'running' },
      { kind: 'assign', vm: 'web1', region: 'eu', provider: 'local', generation: 1, operation: 'place' },
    ]);
    expect(plan.decision.choice.region).toBe('eu');
    expect(judgePlan(plan, applyAll(m, plan))).toEqual({ kind: 'placed', vm: 'web1', region: 'eu', provider: 'local', generation: 1 });
  });

  it('re-plans on fresh state when another scheduler took the capacity, planning the assign alone', () => {
    const m = twoRegions();
    const mine = propose(planCreate(startScheduling({ spec: spec('web1', { vcpus: 4, memoryBytes: 8 * 1024 ** 3 }), power: 'running' }), m));
    // Another scheduler's plan for the same capacity commits first.
    const theirs = propose(planCreate(startScheduling({ spec: spec('web2', { vcpus: 4, memoryBytes: 8 * 1024 ** 3 }), power: 'running' }), m));
    expect(applyAll(m, theirs).every((r) => r.ok)).toBe(true);
    const verdict = judgePlan(mine, applyAll(m, mine));
    expect(verdict.kind).toBe('replan');
    if (verdict.kind !== 'replan') return;
    expect(verdict.progress.reasons[0]).toMatch(/^plan 1 \(eu\/local\): insufficient_capacity: /);
    const again = propose(planCreate(verdict.progress, m));
    expect(again.commands).toEqual([{ kind: 'assign', vm: 'web1', region: 'us', provider: 'local', generation: 1, operation: 'place' }]);
    expect(judgePlan(again, applyAll(m, again))).toMatchObject({ kind: 'placed', region: 'us' });
  });

  it('picks among the best `choices` candidates by the caller\'s draw', () => {
    const m = machineWith(registerRegion('a', [localProvider(8, 32, 0.01)]), registerRegion('b', [localProvider(8, 32, 0.02)]), registerRegion('c', [localProvider(8, 32, 0.03)]));
    const progress = startScheduling({ spec: spec('web1'), power: 'running' });
    const regionFor = (choices: number, draw: number): string => propose(planCreate(progress, m, {}, resolveSchedulerOptions({ choices }), draw)).region;
    expect([0, 0.5, 0.99].map((d) => regionFor(1, d))).toEqual(['a', 'a', 'a']);
    expect([0, 0.4, 0.99].map((d) => regionFor(3, d))).toEqual(['a', 'b', 'c']);
    expect(() => resolveSchedulerOptions({ choices: 4 })).toThrow(/choices/);
  });

  it('fails with every attempt\'s reason once the attempts are spent', () => {
    const m = twoRegions();
    const options = resolveSchedulerOptions({ maxAttempts: 1 });
    const plan = propose(planCreate(startScheduling({ spec: spec('web1'), power: 'running' }), m, {}, options));
    const refused: FleetResult = { ok: false, code: 'insufficient_capacity', message: 'eu/local cannot take web1: needs 2 vCPUs, 0 vCPUs free of 4' };
    const verdict = judgePlan(plan, [{ ok: true, kind: 'create', vm: 'web1' }, refused], options);
    expect(verdict).toEqual({
      kind: 'failed',
      code: 'attempts_exhausted',
      reasons: ['plan 1 (eu/local): insufficient_capacity: eu/local cannot take web1: needs 2 vCPUs, 0 vCPUs free of 4', 'web1: gave up after 1 plans'],
    });
  });

  it('fails at once on a refusal no re-plan can change, and when nothing fits', () => {
    const m = twoRegions();
    const plan = propose(planCreate(startScheduling({ spec: spec('web1'), power: 'running' }), m));
    expect(judgePlan(plan, [{ ok: false, code: 'limit_reached', message: 'full' }])).toMatchObject({ kind: 'failed', code: 'limit_reached' });
    const huge = planCreate(startScheduling({ spec: spec('big', { vcpus: 64 }), power: 'running' }), m);
    expect(huge).toMatchObject({ kind: 'failed', code: 'too_large' });
    if (huge.kind === 'failed') expect(huge.reasons[0]).toContain('largest');
  });

  it('refuses a name another VM holds, is done when a retry finds its VM placed, and counts a missing answer as a refusal to re-plan', () => {
    const m = twoRegions();
    for (const c of [create(spec('web1')), assign('web1', 'us', 1)]) m.apply(c);
    expect(planCreate(startScheduling({ spec: spec('web1', { vcpus: 1 }), power: 'running' }), m)).toMatchObject({ kind: 'failed', code: 'name_taken' });
    expect(planCreate(startScheduling({ spec: spec('web1'), power: 'running' }), m)).toEqual({ kind: 'placed', vm: 'web1', region: 'us', provider: 'local', generation: 1 });
    const plan = propose(planCreate(startScheduling({ spec: spec('web2'), power: 'running' }), m));
    expect(judgePlan(plan, [])).toMatchObject({ kind: 'replan' });
    expect(() => resolveSchedulerOptions({ maxAttempts: 0 })).toThrow(/maxAttempts/);
    expect(DEFAULT_SCHEDULER_OPTIONS.maxAttempts).toBeGreaterThan(1);
  });
});
