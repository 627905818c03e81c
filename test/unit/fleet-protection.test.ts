/**
 * DR protection in the fleet state machine (src/fleet/protection.ts): protect
 * and unprotect validation (the DR region, its provider, policy operation
 * failover checked when protection is set), failover (one proposal per loss
 * wins, generation + 1, capacity and policy, a migration under way ended
 * first), failback as a migration with purpose failback (policy operation
 * failback; its cutover clears the failover record), any other move clearing
 * it, and snapshots (a fleet without DR snapshots the same bytes as before).
 */
import { describe, expect, it } from 'vitest';
import { decodeFleetCommand, encodeFleetCommand, parseFleetCommand, FleetCommandError, type FleetCommand, type FleetCommandInput, type FleetRejectCode, type FleetResult } from '../../src/fleet/commands.ts';
import { DR_DEFAULTS } from '../../src/fleet/protection.ts';
import { FleetSnapshotError, FleetStateMachine } from '../../src/fleet/state-machine.ts';
import { GIB, assign, create, localProvider, machineWith, registerRegion, setPolicy, spec } from './fleet-fixtures.ts';

function refused(result: FleetResult, code: FleetRejectCode, message?: string): void {
  expect(result).toMatchObject({ ok: false, code });
  if (message !== undefined && !result.ok) expect(result.message).toContain(message);
}

const cmd = (input: FleetCommandInput): FleetCommand => parseFleetCommand(input);
const protect = (vm: string, drRegion: string, more: Record<string, unknown> = {}): FleetCommand => cmd({ kind: 'protect', vm, drRegion, ...more });
const failover = (vm: string, region: string, generation: number): FleetCommand => cmd({ kind: 'failover', vm, region, generation, reason: `${region} failed 3 consecutive checks`, since: 4000, at: 5000 });
const failback = (vm: string, region: string, generation: number): FleetCommand => cmd({ kind: 'migration-start', vm, region, provider: 'local', generation, mode: 'warm', purpose: 'failback', at: 6000 });

const dc1 = registerRegion('dc1', [localProvider(8, 16)], { jurisdiction: 'eu' });
const dc2 = registerRegion('dc2', [localProvider(8, 16)], { jurisdiction: 'eu' });
const dc3 = registerRegion('dc3', [localProvider(8, 16)], { jurisdiction: 'us' });
const tiny = registerRegion('tiny', [localProvider(1, 16)]);

/** dc1 holds web1 (2 vCPUs, 4 GiB) at generation 1. */
function placed(...more: FleetCommand[]): FleetStateMachine {
  const m = machineWith(dc1, dc2, dc3, tiny, ...more);
  expect(m.apply(create(spec('web1')))).toMatchObject({ ok: true });
  expect(m.apply(assign('web1', 'dc1', 1))).toMatchObject({ ok: true });
  return m;
}

describe('protect and unprotect', () => {
  it('records the DR region, the resolved provider and the targets (defaults filled)', () => {
    const m = placed();
    expect(m.vm('web1')?.protection).toBeNull();
    expect(m.apply(protect('web1', 'dc2'))).toEqual({ ok: true, kind: 'protect', vm: 'web1', region: 'dc2' });
    expect(m.vm('web1')?.protection).toEqual({ drRegion: 'dc2', drProvider: 'local', rpoMs: DR_DEFAULTS.rpoMs, rtoMs: DR_DEFAULTS.rtoMs, retentionMs: DR_DEFAULTS.retentionMs, failback: 'auto', failedOver: null });
    expect(m.apply(protect('web1', 'dc3', { rpoMs: 60_000, rtoMs: 120_000, retentionMs: 86_400_000, failback: 'manual' }))).toMatchObject({ ok: true });
    expect(m.vm('web1')?.protection).toMatchObject({ drRegion: 'dc3', rpoMs: 60_000, rtoMs: 120_000, retentionMs: 86_400_000, failback: 'manual' });
    expect(m.apply(cmd({ kind: 'unprotect', vm: 'web1' }))).toMatchObject({ ok: true });
    expect(m.vm('web1')?.protection).toBeNull();
    // A retry of unprotect is harmless.
    expect(m.apply(cmd({ kind: 'unprotect', vm: 'web1' }))).toMatchObject({ ok: true });
  });

  it('refuses, naming what is wrong: the VM, the DR region, its provider, the policy', () => {
    const m = placed();
    refused(m.apply(protect('ghost', 'dc2')), 'unknown_vm');
    refused(m.apply(protect('web1', 'mars')), 'unknown_region', 'no region named mars is registered (the DR region of web1)');
    refused(m.apply(protect('web1', 'dc1')), 'invalid_command', 'web1 runs in dc1; its DR region must be another region');
    refused(m.apply(protect('web1', 'dc2', { drProvider: 'gpu' })), 'unknown_provider', 'region dc2 has no provider gpu');
    m.apply(setPolicy(1, [{ condition: "operation != 'failover' || region.jurisdiction == 'eu'", message: 'EU data fails over inside the EU' }]));
    refused(m.apply(protect('web1', 'dc3')), 'policy_denied', 'web1 may not go to dc3/local (failover)');
    expect(m.apply(protect('web1', 'dc2'))).toMatchObject({ ok: true });
    refused(m.apply(cmd({ kind: 'failover', vm: 'ghost', region: 'dc1', generation: 1, reason: 'x', since: 1, at: 1 })), 'unknown_vm');
    m.apply(create(spec('db1')));
    m.apply(assign('db1', 'dc1', 1));
    refused(m.apply(failover('db1', 'dc1', 1)), 'not_protected', 'db1 is not protected');
  });

  it('schemas name the field: bounds on the targets, the failback mode', () => {
    expect(() => parseFleetCommand({ kind: 'protect', vm: 'web1', drRegion: 'dc2', rpoMs: 5 })).toThrow(/command\.rpoMs/);
    expect(() => parseFleetCommand({ kind: 'protect', vm: 'web1', drRegion: 'dc2', failback: 'sometimes' })).toThrow(FleetCommandError);
    expect(() => parseFleetCommand({ kind: 'failover', vm: 'web1', region: 'dc1', generation: 0, reason: 'x', since: 0, at: 0 })).toThrow(/command\.generation/);
    const bytes = encodeFleetCommand({ kind: 'protect', vm: 'web1', drRegion: 'dc2' });
    expect(decodeFleetCommand(bytes)).toMatchObject({ kind: 'protect', rpoMs: DR_DEFAULTS.rpoMs, failback: 'auto' });
  });
});

describe('failover', () => {
  it('moves the assignment to the DR region at generation + 1; of two proposals for one loss, one wins', () => {
    const m = placed();
    m.apply(protect('web1', 'dc2'));
    expect(m.apply(failover('web1', 'dc1', 1))).toEqual({ ok: true, kind: 'failover', vm: 'web1', region: 'dc2', generation: 2 });
    refused(m.apply(failover('web1', 'dc1', 1)), 'stale_generation', 'assigned to dc2 at generation 2, not dc1 at 1');
    const vm = m.vm('web1');
    expect(vm?.assignment).toEqual({ region: 'dc2', provider: 'local', generation: 2 });
    expect(vm?.protection?.failedOver).toEqual({ from: { region: 'dc1', provider: 'local' }, generation: 2, reason: 'dc1 failed 3 consecutive checks', since: 4000, at: 5000 });
    expect(m.usage('dc1', 'local')?.vcpus).toBe(0);
    expect(m.usage('dc2', 'local')?.vcpus).toBe(2);
    // Failed over: the DR region cannot change until it fails back.
    refused(m.apply(protect('web1', 'dc3')), 'invalid_command', 'fail it back before choosing another DR region');
    expect(m.apply(protect('web1', 'dc2', { rpoMs: 60_000 }))).toMatchObject({ ok: true });
    expect(m.vm('web1')?.protection?.failedOver).not.toBeNull();
  });

  it('is refused when the DR region is full or the policy changed, and changes nothing', () => {
    const m = placed();
    m.apply(protect('web1', 'tiny'));
    refused(m.apply(failover('web1', 'dc1', 1)), 'insufficient_capacity', 'tiny/local cannot take web1 on failover');
    m.apply(protect('web1', 'dc2'));
    m.apply(setPolicy(1, [{ condition: "operation != 'failover'", message: 'no failovers today' }]));
    refused(m.apply(failover('web1', 'dc1', 1)), 'policy_denied', 'no failovers today');
    expect(m.vm('web1')?.assignment).toEqual({ region: 'dc1', provider: 'local', generation: 1 });
  });

  it('ends a migration under way (failed), releasing its reservation, then moves', () => {
    const m = placed();
    m.apply(protect('web1', 'dc2'));
    expect(m.apply(cmd({ kind: 'migration-start', vm: 'web1', region: 'dc3', provider: 'local', generation: 1, mode: 'cold', at: 1 }))).toMatchObject({ ok: true, generation: 2 });
    expect(m.usage('dc3', 'local')?.vcpus).toBe(2);
    refused(m.apply(failover('web1', 'dc1', 2)), 'stale_generation');
    expect(m.apply(failover('web1', 'dc1', 1))).toMatchObject({ ok: true, region: 'dc2', generation: 3 });
    expect(m.migrations()).toEqual([]);
    expect(m.migration('m1')).toMatchObject({ result: 'failed', reason: 'web1 failed over to dc2' });
    expect(m.usage('dc3', 'local')?.vcpus).toBe(0);
    expect(m.usage('dc1', 'local')?.vcpus).toBe(0);
    expect(m.usage('dc2', 'local')?.vcpus).toBe(2);
  });
});

describe('failback', () => {
  function failedOver(): FleetStateMachine {
    const m = placed();
    m.apply(protect('web1', 'dc2'));
    expect(m.apply(failover('web1', 'dc1', 1))).toMatchObject({ ok: true });
    return m;
  }

  it('is a migration back to the region failed over from, checked as operation failback; its cutover clears the record', () => {
    const m = failedOver();
    refused(m.apply(failback('web1', 'dc3', 2)), 'invalid_command', 'failed over from dc1; a failback goes there, not to dc3');
    m.apply(setPolicy(1, [{ condition: "operation != 'failback' || region.name != 'dc1'", message: 'dc1 is being repaired' }]));
    refused(m.apply(failback('web1', 'dc1', 2)), 'policy_denied', 'dc1 is being repaired');
    m.apply(setPolicy(2, []));
    expect(m.apply(failback('web1', 'dc1', 2))).toMatchObject({ ok: true, migration: 'm1', generation: 3 });
    expect(m.migration('m1')?.purpose).toBe('failback');
    for (const phase of ['transfer', 'cutover'] as const) expect(m.apply(cmd({ kind: 'migration-progress', id: 'm1', phase, at: 7000 }))).toMatchObject({ ok: true });
    expect(m.apply(cmd({ kind: 'migration-cutover', id: 'm1', at: 8000 }))).toMatchObject({ ok: true });
    expect(m.vm('web1')?.assignment).toEqual({ region: 'dc1', provider: 'local', generation: 3 });
    expect(m.vm('web1')?.protection).toMatchObject({ drRegion: 'dc2', failedOver: null });
    m.apply(cmd({ kind: 'migration-progress', id: 'm1', phase: 'cleanup', at: 9000 }));
    expect(m.apply(cmd({ kind: 'migration-end', id: 'm1', result: 'completed', at: 9000 }))).toMatchObject({ ok: true });
    // Home again and still protected: nothing to fail back, and it can fail over again.
    refused(m.apply(failback('web1', 'dc1', 3)), 'not_protected', 'web1 is not failed over');
    expect(m.apply(failover('web1', 'dc1', 3))).toMatchObject({ ok: true, region: 'dc2', generation: 4 });
  });

  it('a VM that is not failed over has nothing to fail back; an operator move clears the record', () => {
    const m = placed();
    m.apply(protect('web1', 'dc2'));
    refused(m.apply(failback('web1', 'dc1', 1)), 'not_protected');
    m.apply(failover('web1', 'dc1', 1));
    expect(m.apply(assign('web1', 'dc3', 3))).toMatchObject({ ok: true });
    expect(m.vm('web1')?.protection?.failedOver).toBeNull();
  });
});

describe('snapshots', () => {
  it('carry protection and failover records; an unprotected fleet snapshots as before (no protection field)', () => {
    const plain = placed();
    expect(new TextDecoder().decode(plain.snapshot())).not.toContain('protection');
    const m = placed();
    m.apply(protect('web1', 'dc2', { failback: 'manual' }));
    m.apply(failover('web1', 'dc1', 1));
    const restored = FleetStateMachine.restore(m.snapshot());
    expect(restored.vm('web1')).toEqual(m.vm('web1'));
    expect(restored.snapshot()).toEqual(m.snapshot());
    expect(restored.usage('dc2', 'local')).toEqual({ vcpus: 2, memoryBytes: 4 * GIB, diskBytes: 0, instances: 1 });
  });

  it('refuses a failover record that does not match the assignment', () => {
    const m = placed();
    m.apply(protect('web1', 'dc2'));
    m.apply(failover('web1', 'dc1', 1));
    const text = new TextDecoder().decode(m.snapshot()).replace('"generation":2,"reason"', '"generation":7,"reason"');
    const bytes = new Uint8Array([...m.snapshot().subarray(0, 5), ...new TextEncoder().encode(text.slice(5))]);
    expect(() => FleetStateMachine.restore(bytes)).toThrow(FleetSnapshotError);
  });
});
