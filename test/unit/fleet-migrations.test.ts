/**
 * Migrations in the fleet state machine: each command's validation (every
 * refusal with its code), the reservation rule (the VM counts at both
 * regions during a migration, once after it, whatever the result), the
 * cutover, repeats, interplay with assign / set-power / delete, the bounded
 * history, snapshots, and a property test that no sequence of fleet and
 * migration commands over-commits or leaks a reservation.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FleetCommandError, decodeFleetCommand, encodeFleetCommand, parseFleetCommand, type FleetCommand, type FleetCommandInput, type FleetRejectCode, type FleetResult } from '../../src/fleet/commands.ts';
import { RESOURCES } from '../../src/fleet/ledger.ts';
import { MIGRATION_HISTORY, endProblem, migrationSupportProblem, progressProblem, reservedAt, type MigrationMode } from '../../src/fleet/migrations.ts';
import { FleetSnapshotError, FleetStateMachine } from '../../src/fleet/state-machine.ts';
import { DemandSums, GIB, assign, create, localProvider, machineWith, registerRegion, setPolicy, spec } from './fleet-fixtures.ts';

function refused(result: FleetResult, code: FleetRejectCode, message?: string): void {
  expect(result).toMatchObject({ ok: false, code });
  if (message !== undefined && !result.ok) expect(result.message).toContain(message);
}

const cmd = (input: FleetCommandInput): FleetCommand => parseFleetCommand(input);
const start = (vm: string, region: string, generation = 1, mode: MigrationMode = 'cold', provider = 'local'): FleetCommand =>
  cmd({ kind: 'migration-start', vm, generation, region, provider, mode, at: 1000 });
const progress = (id: string, phase: 'prepare' | 'transfer' | 'cutover' | 'cleanup' | 'rolling-back', reason?: string): FleetCommand =>
  cmd({ kind: 'migration-progress', id, phase, at: 2000, ...(reason === undefined ? {} : { reason }) });
const cutover = (id: string): FleetCommand => cmd({ kind: 'migration-cutover', id, at: 3000, facts: { bytes: 10, downtimeMs: 5 } });
const end = (id: string, result: 'completed' | 'rolled-back' | 'failed', reason?: string): FleetCommand => cmd({ kind: 'migration-end', id, result, at: 4000, ...(reason === undefined ? {} : { reason }) });

const euWest = registerRegion('eu-west', [localProvider(8, 16)], { jurisdiction: 'eu' });
const euNorth = registerRegion('eu-north', [localProvider(8, 16)], { jurisdiction: 'eu', labels: { tier: 'gold' } });
const usEast = registerRegion('us-east', [localProvider(8, 16), { name: 'aws', kind: 'aws', quota: { vcpus: 8, instances: 4 }, prices: { vcpuHourUsd: 0.01, memoryGiBHourUsd: 0 } }], { jurisdiction: 'us' });

/** eu-west holds web1 (2 vCPUs, 4 GiB) at generation 1. */
function placed(...more: FleetCommand[]): FleetStateMachine {
  const m = machineWith(euWest, euNorth, usEast, ...more);
  expect(m.apply(create(spec('web1')))).toMatchObject({ ok: true });
  expect(m.apply(assign('web1', 'eu-west', 1))).toMatchObject({ ok: true });
  return m;
}

const USED = { vcpus: 2, memoryBytes: 4 * GIB, diskBytes: 0, instances: 1 };
const FREE = { vcpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0 };

describe('migration-start', () => {
  it('validates, reserves the target (the VM counts at both regions) and takes the next generation', () => {
    const m = placed();
    expect(m.apply(start('web1', 'eu-north'))).toEqual({ ok: true, kind: 'migration-start', vm: 'web1', region: 'eu-north', generation: 2, migration: 'm1' });
    expect(m.usage('eu-west', 'local')).toEqual(USED);
    expect(m.usage('eu-north', 'local')).toEqual(USED);
    expect(m.vm('web1')).toMatchObject({ generation: 2, assignment: { region: 'eu-west', generation: 1 } });
    const record = m.migration('m1');
    expect(record).toMatchObject({ id: 'm1', vm: 'web1', mode: 'cold', phase: 'prepare', source: { region: 'eu-west', provider: 'local', generation: 1 }, target: { region: 'eu-north', provider: 'local', generation: 2 }, result: null, startedAt: 1000 });
    expect(m.migrationOf('web1')?.id).toBe('m1');
    expect(m.migrationsInto('eu-north').map((x) => x.id)).toEqual(['m1']);
    expect(m.migrationsInto('eu-west')).toEqual([]);
    expect(m.migrations().map((x) => x.id)).toEqual(['m1']);
    // The generation the migration took is gone for every other plan.
    refused(m.apply(assign('web1', 'us-east', 2)), 'migration_active', 'web1 is migrating (m1, prepare)');
  });

  it('refuses what cannot migrate, each with its code and the numbers', () => {
    const m = placed(registerRegion('tiny', [localProvider(1, 16)]));
    refused(m.apply(start('ghost', 'eu-north')), 'unknown_vm');
    m.apply(create(spec('idle')));
    refused(m.apply(start('idle', 'eu-north')), 'not_assigned', 'idle is not placed');
    refused(m.apply(start('web1', 'eu-north', 7)), 'stale_generation', 'assigned at generation 1, not 7');
    refused(m.apply(start('web1', 'mars')), 'unknown_region', 'mars');
    refused(m.apply(start('web1', 'eu-north', 1, 'cold', 'gpu')), 'unknown_provider', 'has no provider gpu');
    refused(m.apply(start('web1', 'eu-west')), 'migration_unsupported', 'already runs in eu-west');
    refused(m.apply(start('web1', 'us-east', 1, 'cold', 'aws')), 'migration_unsupported', 'from provider local to provider aws');
    refused(m.apply(start('web1', 'eu-north', 1, 'live')), 'migration_unsupported', 'live migration is not supported for provider local');
    refused(m.apply(start('web1', 'tiny')), 'insufficient_capacity', 'tiny/local cannot take web1 during its migration: needs 2 vCPUs, 1 vCPU free of 1');
    m.apply(cmd({ kind: 'delete', vm: 'idle' }));
    refused(m.apply(start('idle', 'eu-north')), 'vm_deleted');
    // Nothing was reserved by the refusals.
    expect(m.usage('eu-north', 'local')).toEqual(FREE);
    expect(m.migrations()).toEqual([]);
  });

  it('constraint_violated and anti_affinity: the spec rules hold for the target as for an assignment', () => {
    const m = machineWith(euWest, euNorth, usEast);
    m.apply(create(spec('eu1', { constraints: { jurisdictions: ['eu'], antiAffinityGroup: 'g' } })));
    m.apply(create(spec('eu2', { constraints: { antiAffinityGroup: 'g' } })));
    m.apply(assign('eu1', 'eu-west', 1));
    m.apply(assign('eu2', 'eu-north', 1));
    refused(m.apply(start('eu1', 'us-east')), 'constraint_violated', 'jurisdiction us is not among the allowed ones (eu)');
    refused(m.apply(start('eu1', 'eu-north')), 'anti_affinity', 'eu-north already holds 1 VM of anti-affinity group g');
  });

  it('migration_limit: a region takes at most its declared number of migrations at once, as source or target', () => {
    const bounded = parseFleetCommand({ ...registerRegion('eu-north', [localProvider(32, 64)], { jurisdiction: 'eu' }), maxMigrations: 1 });
    const m = machineWith(euWest, bounded, usEast);
    expect(m.region('eu-north')?.maxMigrations).toBe(1);
    expect(m.region('eu-west')?.maxMigrations).toBe(3);
    for (const name of ['a', 'b', 'c', 'd']) {
      m.apply(create(spec(name, { vcpus: 1, memoryBytes: GIB })));
      m.apply(assign(name, 'eu-west', 1));
    }
    expect(m.apply(start('a', 'eu-north'))).toMatchObject({ ok: true });
    refused(m.apply(start('b', 'eu-north')), 'migration_limit', 'eu-north has 1 migration under way, its limit (fleet.migration.maxConcurrentPerRegion 1)');
    expect(m.apply(start('b', 'us-east'))).toMatchObject({ ok: true });
    expect(m.apply(start('c', 'us-east'))).toMatchObject({ ok: true });
    // eu-west is the source of three now.
    refused(m.apply(start('d', 'us-east')), 'migration_limit', 'eu-west has 3 migrations under way');
    m.apply(progress('m1', 'rolling-back', 'test'));
    m.apply(end('m1', 'rolled-back', 'test'));
    expect(m.apply(start('d', 'eu-north'))).toMatchObject({ ok: true, migration: 'm4' });
  });

  it('policy_denied: the policy set is asked (operation migrate) at start, and again at cutover', () => {
    const m = machineWith(euWest, euNorth);
    m.apply(create(spec('web1', { labels: { tier: 'web' } })));
    m.apply(assign('web1', 'eu-west', 1));
    m.apply(setPolicy(1, [{ condition: "operation != 'migrate' || region.name != 'eu-north'", message: 'nothing moves to eu-north' }]));
    refused(m.apply(start('web1', 'eu-north')), 'policy_denied', 'web1 may not go to eu-north/local (migrate): denied by policy p rule r1: nothing moves to eu-north');
    expect(m.usage('eu-north', 'local')).toEqual(FREE);
    m.apply(setPolicy(2, []));
    expect(m.apply(start('web1', 'eu-north'))).toMatchObject({ ok: true });
    m.apply(progress('m1', 'transfer'));
    m.apply(progress('m1', 'cutover'));
    // A policy that tightens while the migration runs stops it at the cutover.
    m.apply(setPolicy(3, [{ selector: { labels: { tier: 'web' } }, condition: "region.name == 'eu-west'", message: 'web stays in eu-west' }]));
    refused(m.apply(cutover('m1')), 'policy_denied', 'web stays in eu-west');
    expect(m.vm('web1')?.assignment?.region).toBe('eu-west');
  });

  it('the support matrix: live qemu → qemu only; warm and cold qemu → qemu and local → local', () => {
    expect(migrationSupportProblem('live', 'qemu', 'qemu')).toBeNull();
    expect(migrationSupportProblem('warm', 'qemu', 'qemu')).toBeNull();
    expect(migrationSupportProblem('cold', 'local', 'local')).toBeNull();
    expect(migrationSupportProblem('warm', 'local', 'local')).toBeNull();
    expect(migrationSupportProblem('live', 'local', 'local')).toMatch(/live migration is not supported for provider local/);
    expect(migrationSupportProblem('cold', 'aws', 'aws')).toMatch(/not supported provider aws/);
    expect(migrationSupportProblem('cold', 'qemu', 'local')).toMatch(/from provider qemu to provider local/);
  });
});

describe('migration-progress, cutover and end', () => {
  it('goes forward one step at a time; a repeat changes nothing; rolling back needs a reason and is possible only before cutover', () => {
    const m = placed();
    m.apply(start('web1', 'eu-north'));
    refused(m.apply(progress('m1', 'cutover')), 'migration_phase', 'prepare → cutover is not a step forward');
    expect(m.apply(progress('m1', 'transfer'))).toEqual({ ok: true, kind: 'migration-progress', vm: 'web1', migration: 'm1' });
    expect(m.apply(progress('m1', 'transfer'))).toMatchObject({ ok: true });
    refused(m.apply(progress('m1', 'prepare')), 'migration_phase');
    m.apply(progress('m1', 'cutover'));
    refused(m.apply(progress('m1', 'cleanup')), 'migration_phase', 'only migration-cutover (or rolling-back) leaves that phase');
    expect(() => cmd({ kind: 'migration-progress', id: 'm1', phase: 'rolling-back', at: 1 })).toThrow(/command.reason: missing — rolling back needs a reason/);
    expect(() => cmd({ kind: 'migration-progress', id: 'm1', phase: 'verify' as never, at: 1 })).toThrow(/command.phase/);
    refused(m.apply(progress('m9', 'transfer')), 'unknown_migration', 'no migration m9');
    expect(progressProblem('verify', 'rolling-back')).toMatch(/already cut over/);
    expect(progressProblem('rolling-back', 'rolling-back')).toBeNull();
  });

  it('a progress that names the phase it was decided in applies only while the migration is still there (a target refusal that raced the move to transfer is refused)', () => {
    const m = placed();
    m.apply(start('web1', 'eu-north'));
    const refusal = cmd({ kind: 'migration-progress', id: 'm1', phase: 'rolling-back', from: 'prepare', reason: 'eu-north could not prepare a copy of web1: disk full', at: 2500 });
    // The round trip through the log's encoding keeps the condition.
    expect(decodeFleetCommand(encodeFleetCommand(refusal))).toEqual(refusal);
    m.apply(progress('m1', 'transfer'));
    refused(m.apply(refusal), 'migration_phase', 'm1 (web1) is in transfer, not prepare as the proposer of rolling-back saw it');
    expect(m.migration('m1')).toMatchObject({ phase: 'transfer', reason: null });
    // Where it was decided, it applies as any rolling back does.
    const n = placed();
    n.apply(start('web1', 'eu-north'));
    expect(n.apply(refusal)).toMatchObject({ ok: true });
    expect(n.migration('m1')).toMatchObject({ phase: 'rolling-back', reason: 'eu-north could not prepare a copy of web1: disk full' });
    expect(() => cmd({ kind: 'migration-progress', id: 'm1', phase: 'transfer', from: 'nowhere' as never, at: 1 })).toThrow(/command.from/);
  });

  it('cutover moves the assignment to the target at the taken generation in one command; the ledger sums do not move; the reservation is now at the source', () => {
    const m = placed();
    m.apply(start('web1', 'eu-north'));
    refused(m.apply(cutover('m1')), 'migration_phase', 'it cuts over only from the cutover phase');
    m.apply(progress('m1', 'transfer'));
    m.apply(progress('m1', 'cutover'));
    expect(m.apply(cutover('m1'))).toEqual({ ok: true, kind: 'migration-cutover', vm: 'web1', region: 'eu-north', generation: 2, migration: 'm1' });
    expect(m.vm('web1')?.assignment).toEqual({ region: 'eu-north', provider: 'local', generation: 2 });
    expect(m.vmsAssignedTo('eu-north').map((v) => v.name)).toEqual(['web1']);
    expect(m.vmsAssignedTo('eu-west')).toEqual([]);
    expect(m.usage('eu-west', 'local')).toEqual(USED);
    expect(m.usage('eu-north', 'local')).toEqual(USED);
    const record = m.migration('m1');
    expect(record).toMatchObject({ phase: 'verify', facts: { bytes: 10, downtimeMs: 5 } });
    expect(record && reservedAt(record)).toMatchObject({ region: 'eu-west' });
    // A repeat (the coordinator did not hear the answer) is accepted and changes nothing.
    expect(m.apply(cutover('m1'))).toMatchObject({ ok: true, generation: 2 });
    refused(m.apply(progress('m1', 'rolling-back', 'too late')), 'migration_phase', 'already cut over');
    refused(m.apply(end('m1', 'completed')), 'migration_phase', 'only a migration in cleanup ends completed');
    m.apply(progress('m1', 'cleanup'));
    expect(m.apply(end('m1', 'completed'))).toMatchObject({ ok: true, migration: 'm1' });
    expect(m.usage('eu-west', 'local')).toEqual(FREE);
    expect(m.usage('eu-north', 'local')).toEqual(USED);
    expect(m.migration('m1')).toMatchObject({ result: 'completed', endedAt: 4000, phase: 'cleanup' });
    expect(m.migrationOf('web1')).toBeUndefined();
    expect(m.migrationHistory().map((x) => x.id)).toEqual(['m1']);
    // The same end again is a repeat; another is a mistake.
    expect(m.apply(end('m1', 'completed'))).toMatchObject({ ok: true });
    refused(m.apply(end('m1', 'failed', 'no')), 'migration_phase', 'already ended completed');
    refused(m.apply(progress('m1', 'cleanup')), 'migration_phase', 'already ended');
  });

  it('cutover re-checks the constraints: a target re-declared out of the spec refuses it, and the migration rolls back', () => {
    const m = machineWith(euWest, euNorth);
    m.apply(create(spec('gold', { constraints: { regionLabels: { tier: 'gold' } } })));
    m.apply(registerRegion('eu-west', [localProvider(8, 16)], { labels: { tier: 'gold' } }));
    m.apply(assign('gold', 'eu-west', 1));
    m.apply(start('gold', 'eu-north'));
    m.apply(progress('m1', 'transfer'));
    m.apply(progress('m1', 'cutover'));
    expect(m.apply(registerRegion('eu-north', [localProvider(8, 16)], { labels: { tier: 'bronze' } }))).toMatchObject({ ok: true });
    refused(m.apply(cutover('m1')), 'constraint_violated', 'label tier=gold required, the region has tier=bronze');
    expect(m.apply(progress('m1', 'rolling-back', 'cutover refused'))).toMatchObject({ ok: true });
    expect(m.apply(end('m1', 'rolled-back', 'cutover refused'))).toMatchObject({ ok: true });
    expect(m.usage('eu-north', 'local')).toEqual(FREE);
    expect(m.migration('m1')).toMatchObject({ result: 'rolled-back', reason: 'cutover refused' });
    // The generation the rolled-back migration took stays taken: the next one takes the one above.
    expect(m.apply(start('gold', 'eu-west'))).toMatchObject({ ok: false });
    m.apply(registerRegion('eu-north', [localProvider(8, 16)], { labels: { tier: 'gold' } }));
    expect(m.apply(start('gold', 'eu-north'))).toMatchObject({ ok: true, generation: 3, migration: 'm2' });
  });

  it('end rules: rolled-back only from rolling-back, failed from rolling-back or after cutover, and each releases the side it reserved', () => {
    expect(endProblem('transfer', 'failed')).toMatch(/rolls back first/);
    expect(endProblem('prepare', 'rolled-back')).toMatch(/only a migration rolling back/);
    expect(endProblem('verify', 'failed')).toBeNull();
    expect(() => cmd({ kind: 'migration-end', id: 'm1', result: 'failed', at: 1 })).toThrow(/command.reason: missing — a migration that ends failed needs a reason/);

    const m = placed();
    m.apply(start('web1', 'eu-north'));
    refused(m.apply(end('m1', 'failed', 'x')), 'migration_phase', 'rolls back first');
    m.apply(progress('m1', 'rolling-back', 'transfer failed: connection reset'));
    // The first reason stays: a second rolling-back (the operator's cancel, racing) does not overwrite why.
    m.apply(progress('m1', 'rolling-back', 'cancelled'));
    expect(m.migration('m1')?.reason).toBe('transfer failed: connection reset');
    m.apply(end('m1', 'failed', 'the source copy is gone'));
    expect(m.usage('eu-north', 'local')).toEqual(FREE);
    expect(m.usage('eu-west', 'local')).toEqual(USED);

    const after = placed();
    after.apply(start('web1', 'eu-north'));
    after.apply(progress('m1', 'transfer'));
    after.apply(progress('m1', 'cutover'));
    after.apply(cutover('m1'));
    after.apply(end('m1', 'failed', 'the target did not report web1 running'));
    // Failed after cutover: the VM stays at the target, the source's share is given back.
    expect(after.vm('web1')?.assignment?.region).toBe('eu-north');
    expect(after.usage('eu-west', 'local')).toEqual(FREE);
    expect(after.usage('eu-north', 'local')).toEqual(USED);
  });

  it('while a VM migrates, assign and set-power are refused; delete ends the migration failed and releases everything', () => {
    const m = placed();
    m.apply(start('web1', 'eu-north'));
    refused(m.apply(cmd({ kind: 'set-power', vm: 'web1', power: 'stopped' })), 'migration_active', 'its desired power cannot change');
    refused(m.apply(start('web1', 'us-east')), 'migration_active', 'cannot start another migration');
    expect(m.apply(cmd({ kind: 'delete', vm: 'web1' }))).toMatchObject({ ok: true });
    expect(m.migration('m1')).toMatchObject({ result: 'failed', reason: 'web1 was deleted' });
    expect(m.usage('eu-north', 'local')).toEqual(FREE);
    expect(m.usage('eu-west', 'local')).toEqual(FREE);
    expect(m.migrationsInto('eu-north')).toEqual([]);
  });

  it('a re-declaration cannot drop a provider a migration reserves on', () => {
    const m = placed();
    m.apply(start('web1', 'us-east'));
    refused(m.apply(registerRegion('us-east', [{ name: 'aws', kind: 'aws', prices: { vcpuHourUsd: 0.01, memoryGiBHourUsd: 0 } }], { jurisdiction: 'us' })), 'provider_in_use', 'us-east/local has 1 VMs assigned or migrating there');
  });

  it(`keeps the last ${MIGRATION_HISTORY} ended migrations, oldest dropped first`, () => {
    const m = placed();
    for (let i = 0; i < MIGRATION_HISTORY + 5; i++) {
      const id = `m${i + 1}`;
      expect(m.apply(start('web1', 'eu-north', 1))).toMatchObject({ ok: true, migration: id });
      m.apply(progress(id, 'rolling-back', 'cancelled by the test'));
      m.apply(end(id, 'rolled-back', 'cancelled by the test'));
    }
    const history = m.migrationHistory();
    expect(history).toHaveLength(MIGRATION_HISTORY);
    expect(history[0]?.id).toBe('m6');
    expect(m.migration('m1')).toBeUndefined();
    refused(m.apply(end('m1', 'rolled-back', 'late')), 'unknown_migration');
    expect(m.vm('web1')?.generation).toBe(MIGRATION_HISTORY + 6);
  });

  it('encodes every migration command canonically', () => {
    for (const c of [start('web1', 'eu-north', 1, 'live'), progress('m1', 'rolling-back', 'why'), cutover('m1'), end('m1', 'completed')]) {
      expect(decodeFleetCommand(encodeFleetCommand(c))).toEqual(c);
    }
    expect(() => encodeFleetCommand({ kind: 'migration-start', vm: 'web1', generation: 1, region: 'x', provider: 'local', mode: 'hot', at: 1 } as never)).toThrow(FleetCommandError);
    expect(() => encodeFleetCommand({ kind: 'migration-progress', id: 'x1', phase: 'transfer', at: 1 })).toThrow(/command.id: .*migration id/);
  });
});

describe('migration snapshots', () => {
  function migrating(): FleetStateMachine {
    const m = placed();
    m.apply(create(spec('db1', { vcpus: 1 })));
    m.apply(assign('db1', 'eu-west', 1));
    m.apply(create(spec('old', { vcpus: 1 })));
    m.apply(assign('old', 'us-east', 1));
    m.apply(start('web1', 'eu-north', 1, 'warm'));
    m.apply(start('db1', 'us-east'));
    m.apply(progress('m2', 'transfer'));
    m.apply(progress('m2', 'cutover'));
    m.apply(cutover('m2'));
    m.apply(start('old', 'eu-north'));
    m.apply(progress('m3', 'rolling-back', 'cancelled'));
    m.apply(end('m3', 'rolled-back', 'cancelled'));
    return m;
  }

  it('restores active migrations (before and after cutover) and the history, with their reservations', () => {
    const m = migrating();
    const bytes = m.snapshot();
    const restored = FleetStateMachine.restore(bytes);
    expect(restored.snapshot()).toEqual(bytes);
    expect(restored.migrations()).toEqual(m.migrations());
    expect(restored.migrationHistory()).toEqual(m.migrationHistory());
    for (const r of ['eu-west', 'eu-north', 'us-east']) expect(restored.usage(r, 'local')).toEqual(m.usage(r, 'local'));
    expect(restored.migrationsInto('us-east').map((x) => x.id)).toEqual(['m2']);
    expect(restored.apply(start('old', 'eu-north'))).toMatchObject({ ok: true, migration: 'm4' });
  });

  it('snapshots a fleet that never migrated as before migrations existed, and reads it back', () => {
    const m = placed();
    const body = new TextDecoder().decode(m.snapshot().subarray(5));
    expect(body).not.toContain('migrations');
    const restored = FleetStateMachine.restore(m.snapshot());
    expect(restored.vm('web1')).toEqual(m.vm('web1'));
    expect(restored.apply(start('web1', 'eu-north'))).toMatchObject({ ok: true, migration: 'm1' });
  });

  it.each([
    ['a migration of an unknown VM', (s: string) => s.replace('"vm":"web1"', '"vm":"ghost"'), 'names ghost, which is not a live assigned VM'],
    ['a migration that does not match its VM', (s: string) => s.replace('"source":{"generation":1,"provider":"local","region":"eu-west"},"startedAt":1000,"target":{"generation":2,"provider":"local","region":"eu-north"}', '"source":{"generation":1,"provider":"local","region":"us-east"},"startedAt":1000,"target":{"generation":2,"provider":"local","region":"eu-north"}'), 'does not match web1'],
    ['an id at or above next', (s: string) => s.replace('"next":4', '"next":2'), 'is not below the next id m2'],
  ])('refuses a snapshot with %s', (_what, edit, message) => {
    const m = migrating();
    const body = new TextDecoder().decode(m.snapshot().subarray(5));
    const edited = edit(body);
    expect(edited).not.toBe(body);
    const bytes = new Uint8Array([...m.snapshot().subarray(0, 5), ...new TextEncoder().encode(edited)]);
    expect(() => FleetStateMachine.restore(bytes)).toThrow(FleetSnapshotError);
    expect(() => FleetStateMachine.restore(bytes)).toThrow(message);
  });
});

describe('migrations never over-commit nor leak a reservation (property)', () => {
  const regions = ['r1', 'r2', 'r3'];
  const vmNames = ['v0', 'v1', 'v2', 'v3'];
  const ids = ['m1', 'm2', 'm3', 'm4', 'm5', 'm6'];
  const commandArb: fc.Arbitrary<FleetCommand> = fc.oneof(
    fc.record({ region: fc.constantFrom(...regions), vcpus: fc.integer({ min: 0, max: 12 }), max: fc.integer({ min: 1, max: 3 }) }).map(({ region, vcpus, max }) =>
      parseFleetCommand({ ...registerRegion(region, [localProvider(vcpus, 64)]), maxMigrations: max }),
    ),
    fc.record({ name: fc.constantFrom(...vmNames), vcpus: fc.integer({ min: 1, max: 4 }), group: fc.option(fc.constant('g'), { nil: undefined }) }).map(({ name, vcpus, group }) => create(spec(name, { vcpus, memoryBytes: GIB, constraints: group === undefined ? {} : { antiAffinityGroup: group } }))),
    fc.record({ vm: fc.constantFrom(...vmNames), region: fc.constantFrom(...regions), generation: fc.integer({ min: 1, max: 8 }) }).map(({ vm, region, generation }) => assign(vm, region, generation)),
    fc.constantFrom(...vmNames).map((vm) => cmd({ kind: 'delete', vm })),
    fc.constantFrom(...vmNames).map((vm) => cmd({ kind: 'purge', vm })),
    fc.record({ vm: fc.constantFrom(...vmNames), region: fc.constantFrom(...regions), generation: fc.integer({ min: 1, max: 8 }) }).map(({ vm, region, generation }) => start(vm, region, generation)),
    fc.record({ id: fc.constantFrom(...ids), phase: fc.constantFrom('transfer' as const, 'cutover' as const, 'cleanup' as const, 'rolling-back' as const) }).map(({ id, phase }) => progress(id, phase, 'why')),
    fc.constantFrom(...ids).map((id) => cutover(id)),
    fc.record({ id: fc.constantFrom(...ids), result: fc.constantFrom('completed' as const, 'rolled-back' as const, 'failed' as const) }).map(({ id, result }) => end(id, result, 'why')),
  );

  it('usage = assignments + active reservations, within limits, after every command; every migration has one reservation; snapshots restore', () => {
    fc.assert(
      fc.property(fc.array(commandArb, { minLength: 1, maxLength: 100 }), (commands) => {
        const m = new FleetStateMachine();
        for (const c of commands) {
          const result = m.apply(c);
          const sums = new DemandSums();
          for (const vm of m.vms()) if (!vm.deleted && vm.assignment !== null) sums.add(vm.assignment.region, vm.assignment.provider, vm.spec);
          for (const mig of m.migrations()) {
            const vm = m.vm(mig.vm);
            expect(vm !== undefined && !vm.deleted, `${mig.id} of a live VM`).toBe(true);
            const at = reservedAt(mig);
            expect(vm?.assignment?.region, `${mig.id} reserves the side the VM is not assigned to`).not.toBe(at.region);
            if (vm !== undefined) sums.add(at.region, at.provider, vm.spec);
          }
          sums.expectLedger(m);
          if (result.ok && c.kind === 'migration-start') {
            // Accepted: both regions were below their bound (a later re-declaration may lower it under the count).
            for (const name of [m.migration(result.migration ?? '')?.source.region, c.region]) {
              const touching = m.migrations().filter((x) => x.source.region === name || x.target.region === name).length;
              expect(touching).toBeLessThanOrEqual(m.region(name ?? '')?.maxMigrations ?? 0);
            }
          }
        }
        const bytes = m.snapshot();
        const restored = FleetStateMachine.restore(bytes);
        expect(restored.snapshot()).toEqual(bytes);
        for (const region of regions) expect(restored.migrationsInto(region)).toEqual(m.migrationsInto(region));
      }),
      { numRuns: 400 },
    );
  });
});
