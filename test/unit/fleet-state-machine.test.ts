/**
 * The fleet state machine: every refusal code, the ledger's accounting,
 * snapshots, and a property test that no sequence of commands over-commits.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FLEET_REJECT_CODES, encodeFleetCommand, parseFleetCommand, type FleetCommand, type FleetRejectCode, type FleetResult } from '../../src/fleet/commands.ts';
import { RESOURCES } from '../../src/fleet/ledger.ts';
import { FleetSnapshotError, FleetStateMachine } from '../../src/fleet/state-machine.ts';
import { DemandSums, GIB, assign, create, localProvider, machineWith, registerRegion, setPolicy, spec } from './fleet-fixtures.ts';

function refused(result: FleetResult, code: FleetRejectCode, message?: string): void {
  expect(result).toMatchObject({ ok: false, code });
  if (message !== undefined && !result.ok) expect(result.message).toContain(message);
}

const euWest = registerRegion('eu-west', [localProvider(8, 16)], { jurisdiction: 'eu', compliance: ['gdpr'], labels: { tier: 'gold' } });
const usEast = registerRegion('us-east', [localProvider(8, 16), { name: 'aws', kind: 'aws', spot: true, quota: { vcpus: 4, instances: 2 }, prices: { vcpuHourUsd: 0.01, memoryGiBHourUsd: 0.001 } }], {
  jurisdiction: 'us',
});

describe('fleet state machine rules', () => {
  it('creates, assigns and reports usage and the read API', () => {
    const m = machineWith(euWest, usEast);
    expect(m.apply(create(spec('web1')))).toEqual({ ok: true, kind: 'create', vm: 'web1' });
    expect(m.apply(assign('web1', 'eu-west', 1))).toEqual({ ok: true, kind: 'assign', vm: 'web1', region: 'eu-west', generation: 1 });
    expect(m.usage('eu-west', 'local')).toEqual({ vcpus: 2, memoryBytes: 4 * GIB, diskBytes: 0, instances: 1 });
    expect(m.regionUsage('us-east')).toEqual({ vcpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0 });
    expect(m.vm('web1')).toMatchObject({ power: 'running', assignment: { region: 'eu-west', provider: 'local', generation: 1 }, generation: 1, deleted: false });
    expect(m.regions().map((r) => r.name)).toEqual(['eu-west', 'us-east']);
    expect(m.vmsAssignedTo('eu-west').map((vm) => vm.name)).toEqual(['web1']);
    expect(m.vmsAssignedTo('us-east')).toEqual([]);
    expect(m.region('us-east')?.providers.map((p) => [p.name, p.limits])).toEqual([
      ['aws', { vcpus: 4, memoryBytes: null, diskBytes: null, instances: 2 }],
      ['local', { vcpus: 8, memoryBytes: 16 * GIB, diskBytes: 1000 * GIB, instances: null }],
    ]);
    expect(m.apply(parseFleetCommand({ kind: 'set-power', vm: 'web1', power: 'stopped' }))).toMatchObject({ ok: true });
    expect(m.vm('web1')?.power).toBe('stopped');
  });

  it('name_taken: names are unique among live VMs', () => {
    const m = machineWith(euWest);
    m.apply(create(spec('web1')));
    refused(m.apply(create(spec('web1', { vcpus: 1 }))), 'name_taken', 'web1 already exists');
  });

  it('unknown_vm, unknown_region, unknown_provider', () => {
    const m = machineWith(euWest);
    refused(m.apply(assign('ghost', 'eu-west', 1)), 'unknown_vm');
    refused(m.apply(parseFleetCommand({ kind: 'set-power', vm: 'ghost', power: 'running' })), 'unknown_vm');
    refused(m.apply(parseFleetCommand({ kind: 'delete', vm: 'ghost' })), 'unknown_vm');
    m.apply(create(spec('web1')));
    refused(m.apply(assign('web1', 'mars', 1)), 'unknown_region', 'mars');
    refused(m.apply(assign('web1', 'eu-west', 1, 'aws')), 'unknown_provider', 'has no provider aws (it has local)');
  });

  it('stale_generation: generations only grow, across reassignments and re-creation', () => {
    const m = machineWith(euWest, usEast);
    m.apply(create(spec('web1')));
    m.apply(assign('web1', 'eu-west', 5));
    refused(m.apply(assign('web1', 'us-east', 5)), 'stale_generation', 'generation 5 is not above web1\'s current generation 5');
    refused(m.apply(assign('web1', 'us-east', 4)), 'stale_generation');
    expect(m.apply(assign('web1', 'us-east', 6))).toMatchObject({ ok: true });
    // Moving gives the old region its capacity back.
    expect(m.usage('eu-west', 'local')?.vcpus).toBe(0);
    expect(m.usage('us-east', 'local')?.vcpus).toBe(2);
    m.apply(parseFleetCommand({ kind: 'delete', vm: 'web1' }));
    m.apply(create(spec('web1')));
    expect(m.vm('web1')).toMatchObject({ generation: 6, assignment: null, deleted: false });
    refused(m.apply(assign('web1', 'eu-west', 6)), 'stale_generation');
    expect(m.apply(assign('web1', 'eu-west', 7))).toMatchObject({ ok: true });
  });

  it('insufficient_capacity: the ledger refuses with the numbers; a VM re-assigned in place is credited its own use', () => {
    const m = machineWith(euWest);
    m.apply(create(spec('a', { vcpus: 6, memoryBytes: 4 * GIB })));
    m.apply(create(spec('b', { vcpus: 4, memoryBytes: 4 * GIB })));
    m.apply(assign('a', 'eu-west', 1));
    refused(m.apply(assign('b', 'eu-west', 1)), 'insufficient_capacity', 'eu-west/local cannot take b: needs 4 vCPUs, 2 vCPUs free of 8 vCPUs');
    expect(m.apply(assign('a', 'eu-west', 2))).toMatchObject({ ok: true });
    expect(m.usage('eu-west', 'local')?.vcpus).toBe(6);
    m.apply(create(spec('c', { vcpus: 1, memoryBytes: 13 * GIB })));
    refused(m.apply(assign('c', 'eu-west', 1)), 'insufficient_capacity', 'needs 13 GiB of memory, 12 GiB of memory free of 16 GiB of memory');
  });

  it('insufficient_capacity: a cloud quota bounds vCPUs and instances', () => {
    const m = machineWith(usEast);
    for (const name of ['s1', 's2', 's3']) m.apply(create(spec(name, { vcpus: 1, spot: true })));
    expect(m.apply(assign('s1', 'us-east', 1, 'aws'))).toMatchObject({ ok: true });
    expect(m.apply(assign('s2', 'us-east', 1, 'aws'))).toMatchObject({ ok: true });
    refused(m.apply(assign('s3', 'us-east', 1, 'aws')), 'insufficient_capacity', 'needs 1 instance, 0 instances free of 2 instances');
  });

  it('anti_affinity: no two of a group in one region; the VM itself does not count against a move in place', () => {
    const m = machineWith(euWest, usEast);
    m.apply(create(spec('a', { vcpus: 1, constraints: { antiAffinityGroup: 'db' } })));
    m.apply(create(spec('b', { vcpus: 1, constraints: { antiAffinityGroup: 'db' } })));
    m.apply(assign('a', 'eu-west', 1));
    refused(m.apply(assign('b', 'eu-west', 1)), 'anti_affinity', 'eu-west already holds 1 VM of anti-affinity group db');
    expect(m.apply(assign('b', 'us-east', 1))).toMatchObject({ ok: true });
    expect(m.apply(assign('a', 'eu-west', 2))).toMatchObject({ ok: true });
    expect(m.groupCounts('anti-affinity', 'db')).toEqual(new Map([['eu-west', 1], ['us-east', 1]]));
    m.apply(parseFleetCommand({ kind: 'delete', vm: 'a' }));
    expect(m.groupCounts('anti-affinity', 'db')).toEqual(new Map([['us-east', 1]]));
  });

  it.each([
    [{ regions: ['us-east'] }, 'eu-west', 'local', 'not among the allowed regions (us-east)'],
    [{ jurisdictions: ['us'] }, 'eu-west', 'local', 'jurisdiction eu is not among the allowed ones (us)'],
    [{ regionLabels: { tier: 'silver' } }, 'eu-west', 'local', 'label tier=silver required, the region has tier=gold'],
    [{ compliance: ['hipaa'] }, 'eu-west', 'local', 'lacks compliance hipaa (has gdpr)'],
    [{ providers: ['aws'] }, 'eu-west', 'local', 'provider local (local) is not among the allowed ones (aws)'],
    [{ maxHourlyUsd: 0.01 }, 'eu-west', 'local', 'costs $0.048/h, above the limit $0.01/h'],
    [{}, 'us-east', 'aws', 'spot capacity and the spec does not allow spot'],
  ])('constraint_violated: %j in %s/%s', (constraints, region, provider, message) => {
    const m = machineWith(euWest, usEast);
    m.apply(create(spec('web1', { constraints })));
    refused(m.apply(assign('web1', region, 1, provider)), 'constraint_violated', message);
  });

  it('limit_reached: VM records and regions are bounded', () => {
    const m = new FleetStateMachine({ maxVms: 2, maxRegions: 1 });
    expect(m.apply(euWest)).toMatchObject({ ok: true });
    refused(m.apply(usEast), 'limit_reached', 'holds 1 regions');
    m.apply(create(spec('a')));
    m.apply(create(spec('b')));
    refused(m.apply(create(spec('c'))), 'limit_reached', 'holds 2 VM records');
    // A tombstone still counts, and a new incarnation of its name does not need a new record.
    m.apply(parseFleetCommand({ kind: 'delete', vm: 'a' }));
    refused(m.apply(create(spec('c'))), 'limit_reached');
    expect(m.apply(create(spec('a')))).toMatchObject({ ok: true });
  });

  it('capacity_below_usage and provider_in_use: a re-registration cannot strand assigned VMs', () => {
    const m = machineWith(euWest);
    m.apply(create(spec('a', { vcpus: 6 })));
    m.apply(assign('a', 'eu-west', 1));
    refused(m.apply(registerRegion('eu-west', [localProvider(4, 16)])), 'capacity_below_usage', 'would declare 4 vCPUs but 6 vCPUs are assigned there');
    refused(
      m.apply(registerRegion('eu-west', [{ name: 'other', kind: 'local', capacity: { vcpus: 8, memoryBytes: 8 * GIB, diskBytes: 0 }, prices: { vcpuHourUsd: 0, memoryGiBHourUsd: 0 } }])),
      'provider_in_use',
      'eu-west/local has 1 VMs assigned',
    );
    expect(m.region('eu-west')?.providers[0]?.limits.vcpus).toBe(8);
    expect(m.apply(registerRegion('eu-west', [localProvider(6, 16)]))).toMatchObject({ ok: true });
    expect(m.region('eu-west')?.providers[0]?.limits.vcpus).toBe(6);
  });

  it('vm_deleted, not_deleted and purge', () => {
    const m = machineWith(euWest);
    m.apply(create(spec('a')));
    m.apply(assign('a', 'eu-west', 1));
    refused(m.apply(parseFleetCommand({ kind: 'purge', vm: 'a' })), 'not_deleted');
    expect(m.apply(parseFleetCommand({ kind: 'delete', vm: 'a' }))).toMatchObject({ ok: true });
    // A retried delete is accepted again.
    expect(m.apply(parseFleetCommand({ kind: 'delete', vm: 'a' }))).toMatchObject({ ok: true });
    expect(m.vm('a')).toMatchObject({ deleted: true, assignment: { region: 'eu-west', generation: 1 } });
    expect(m.usage('eu-west', 'local')?.instances).toBe(0);
    refused(m.apply(assign('a', 'eu-west', 2)), 'vm_deleted');
    refused(m.apply(parseFleetCommand({ kind: 'set-power', vm: 'a', power: 'stopped' })), 'vm_deleted');
    expect(m.apply(parseFleetCommand({ kind: 'purge', vm: 'a' }))).toMatchObject({ ok: true });
    expect(m.vm('a')).toBeUndefined();
    refused(m.apply(parseFleetCommand({ kind: 'purge', vm: 'a' })), 'unknown_vm');
  });

  it('invalid_command: an undecodable entry changes nothing', () => {
    const m = machineWith(euWest);
    const before = m.snapshot();
    refused(m.applyEntry(new Uint8Array([0, 0x66, 0x6c, 0x74, 0x01, 0x7b])), 'invalid_command', 'not UTF-8 JSON');
    expect(m.snapshot()).toEqual(before);
    expect(m.applyEntry(encodeFleetCommand({ kind: 'create', spec: { name: 'a', vcpus: 1, memoryBytes: GIB, image: 'b' } }))).toMatchObject({ ok: true });
  });

  it('policy_denied: every assignment is re-checked against the policy set at apply, whatever was proposed', () => {
    const m = machineWith(euWest, usEast);
    expect(m.apply(setPolicy(1, [{ selector: { labels: { 'data-class': 'personal' } }, condition: "region.jurisdiction == 'eu'", message: 'personal data stays in the EU' }]))).toEqual({ ok: true, kind: 'set-policy', policyVersion: 1 });
    m.apply(create(spec('pii', { labels: { 'data-class': 'personal' } })));
    refused(m.apply(assign('pii', 'us-east', 1)), 'policy_denied', 'pii may not go to us-east/local (place): denied by policy p rule r1: personal data stays in the EU');
    // Nothing changed: the refused assignment reserved nothing and did not use up the generation.
    expect(m.vm('pii')).toMatchObject({ assignment: null, generation: 0 });
    expect(m.usage('us-east', 'local')?.instances).toBe(0);
    expect(m.apply(assign('pii', 'eu-west', 1))).toMatchObject({ ok: true, region: 'eu-west' });
    // A move is checked too (derived as migrate when the command does not say).
    refused(m.apply(assign('pii', 'us-east', 2)), 'policy_denied', '(migrate)');
    // A VM the selector does not match goes anywhere.
    m.apply(create(spec('web')));
    expect(m.apply(assign('web', 'us-east', 1))).toMatchObject({ ok: true });
  });

  it('policy_denied: the operation is the command\'s when it fits the VM, and a rule can key on it', () => {
    const m = machineWith(euWest, usEast);
    m.apply(setPolicy(1, [{ condition: "operation != 'failover' || region.jurisdiction == 'eu'", message: 'fail over within the EU only' }]));
    m.apply(create(spec('db')));
    expect(m.apply(parseFleetCommand({ kind: 'assign', vm: 'db', region: 'us-east', provider: 'local', generation: 1, operation: 'place' }))).toMatchObject({ ok: true });
    refused(m.apply(parseFleetCommand({ kind: 'assign', vm: 'db', region: 'us-east', provider: 'local', generation: 2, operation: 'failover' })), 'policy_denied', 'fail over within the EU only');
    expect(m.apply(parseFleetCommand({ kind: 'assign', vm: 'db', region: 'eu-west', provider: 'local', generation: 2, operation: 'failover' }))).toMatchObject({ ok: true });
  });

  it('invalid_command: an operation that contradicts the VM\'s state cannot dodge a rule', () => {
    const m = machineWith(euWest, usEast);
    m.apply(create(spec('web')));
    m.apply(create(spec('pinned', { constraints: { regions: ['us-east'] } })));
    const op = (vm: string, generation: number, operation: string): FleetCommand => parseFleetCommand({ kind: 'assign', vm, region: 'us-east', provider: 'local', generation, operation });
    refused(m.apply(op('web', 1, 'failover')), 'invalid_command', 'failover moves an assigned VM, and web is not assigned yet');
    refused(m.apply(op('web', 1, 'create')), 'invalid_command', 'a first assignment is create when the spec pins exactly one region, else place (here: place)');
    refused(m.apply(op('pinned', 1, 'place')), 'invalid_command', '(here: create)');
    expect(m.apply(op('pinned', 1, 'create'))).toMatchObject({ ok: true });
    refused(m.apply(op('pinned', 2, 'place')), 'invalid_command', 'pinned is assigned already');
    expect(m.apply(op('web', 1, 'burst'))).toMatchObject({ ok: true });
  });

  it('policy_denied: a deny rule that cannot be evaluated denies; audit and warn rules never refuse', () => {
    const m = machineWith(euWest, usEast);
    m.apply(setPolicy(1, [
      { condition: "vm.labels['owner'] != ''", message: 'needs an owner' },
      { condition: 'cost <= 0.0001', effect: 'audit', message: 'dear' },
      { condition: 'false', effect: 'warn', message: 'always warns' },
    ]));
    m.apply(create(spec('anon')));
    refused(m.apply(assign('anon', 'eu-west', 1)), 'policy_denied', 'needs an owner (the condition could not be evaluated: No such key: owner)');
    m.apply(create(spec('owned', { labels: { owner: 'ops' } })));
    expect(m.apply(assign('owned', 'eu-west', 1))).toMatchObject({ ok: true });
  });

  it('invalid_policy and stale_policy_version: a set-policy must compile and raise the version', () => {
    const m = machineWith(euWest);
    expect(m.policy.version).toBe(0);
    refused(m.apply(setPolicy(1, [{ condition: "regoin.name == 'x'" }])), 'invalid_policy', 'policy p rule r1: condition 1:1: Unknown variable: regoin');
    expect(m.policy.version).toBe(0);
    m.apply(setPolicy(3, [{ condition: 'true' }]));
    refused(m.apply(setPolicy(3, [{ condition: 'true' }])), 'stale_policy_version', 'policy version 3 is not above the current version 3');
    refused(m.apply(setPolicy(2, [])), 'stale_policy_version');
    expect(m.apply(setPolicy(4, []))).toMatchObject({ ok: true, policyVersion: 4 });
    expect(m.policy).toMatchObject({ version: 4, policies: [] });
    expect(m.policy.evaluator.ruleCount).toBe(0);
  });

  it('region.trust is the declared trust, unknown for a declaration without it', () => {
    const m = machineWith(registerRegion('own', [localProvider(8, 16)], { trust: 'trusted' }), registerRegion('old', [localProvider(8, 16)]));
    expect(m.region('own')?.trust).toBe('trusted');
    expect(m.region('old')?.trust).toBe(null);
    m.apply(setPolicy(1, [{ condition: "region.trust == 'trusted'", message: 'trusted regions only' }]));
    m.apply(create(spec('web')));
    refused(m.apply(assign('web', 'old', 1)), 'policy_denied', 'trusted regions only');
    expect(m.apply(assign('web', 'own', 1))).toMatchObject({ ok: true });
  });

  it('budget_spent: a spent hard budget refuses new placements in its scope (create, place, burst), not moves; unknown_budget', () => {
    const m = machineWith(euWest, usEast);
    const budget = (name: string, scope: string, hard: boolean): FleetCommand => parseFleetCommand({ kind: 'set-budget', budget: { name, limitUsd: 100, scope, hard } });
    expect(m.apply(budget('web', 'label:team=web', true))).toEqual({ ok: true, kind: 'set-budget', budget: 'web' });
    m.apply(budget('soft', 'all', false));
    m.apply(create(spec('w1', { labels: { team: 'web' } })));
    expect(m.apply(assign('w1', 'eu-west', 1))).toMatchObject({ ok: true });
    refused(m.apply(parseFleetCommand({ kind: 'budget-spent', name: 'nope', month: '2026-12' })), 'unknown_budget', 'no budget named nope');
    expect(m.apply(parseFleetCommand({ kind: 'budget-spent', name: 'web', month: '2026-12' }))).toMatchObject({ ok: true });
    expect(m.apply(parseFleetCommand({ kind: 'budget-spent', name: 'soft', month: '2026-12' }))).toMatchObject({ ok: true });
    m.apply(create(spec('w2', { labels: { team: 'web' } })));
    refused(m.apply(assign('w2', 'eu-west', 1)), 'budget_spent', 'w2 may not go to eu-west/local (place): hard budget web ($100.00/month, scope label:team=web) is spent for 2026-12');
    refused(m.apply(parseFleetCommand({ kind: 'assign', vm: 'w2', region: 'eu-west', provider: 'local', generation: 1, operation: 'burst' })), 'budget_spent');
    // A move of a VM already running adds no VM: allowed. A VM outside the scope is placed; a soft budget refuses nothing.
    expect(m.apply(assign('w1', 'us-east', 2))).toMatchObject({ ok: true });
    m.apply(create(spec('db1', { labels: { team: 'db' } })));
    expect(m.apply(assign('db1', 'eu-west', 1))).toMatchObject({ ok: true });
    // Raising the budget (a new set-budget) clears the mark until the driver sees it spent again.
    m.apply(budget('web', 'label:team=web', true));
    expect(m.apply(assign('w2', 'eu-west', 1))).toMatchObject({ ok: true });
    // Budgets and marks survive a snapshot.
    m.apply(parseFleetCommand({ kind: 'budget-spent', name: 'web', month: '2026-12' }));
    const restored = FleetStateMachine.restore(m.snapshot());
    expect(restored.budgets()).toEqual(m.budgets());
    expect(restored.snapshot()).toEqual(m.snapshot());
    expect(m.apply(parseFleetCommand({ kind: 'delete-budget', name: 'web' }))).toMatchObject({ ok: true });
    expect(m.budgets().map((b) => b.spec.name)).toEqual(['soft']);
  });

  it('burst groups: set, replace, survive a snapshot, delete; unknown_burst_group', () => {
    const m = machineWith(euWest);
    const group = { name: 'web', home: 'eu-west', template: { vcpus: 1, memoryBytes: GIB, image: 'base' }, min: 2, max: 6 };
    expect(m.apply(parseFleetCommand({ kind: 'set-burst-group', group }))).toMatchObject({ ok: true, burstGroup: 'web' });
    expect(m.apply(parseFleetCommand({ kind: 'set-burst-group', group: { ...group, max: 8 } }))).toMatchObject({ ok: true });
    expect(m.burstGroups()).toMatchObject([{ name: 'web', max: 8, template: { labels: {}, spot: false } }]);
    const restored = FleetStateMachine.restore(m.snapshot());
    expect(restored.burstGroups()).toEqual(m.burstGroups());
    expect(restored.snapshot()).toEqual(m.snapshot());
    expect(m.apply(parseFleetCommand({ kind: 'delete-burst-group', name: 'web' }))).toMatchObject({ ok: true });
    refused(m.apply(parseFleetCommand({ kind: 'delete-burst-group', name: 'web' })), 'unknown_burst_group', 'no burst group named web');
    // A group the schema refuses names the field.
    expect(() => parseFleetCommand({ kind: 'set-burst-group', group: { ...group, max: 1 } })).toThrow('command.group.max: 1 is below min (2)');
    expect(() => parseFleetCommand({ kind: 'set-burst-group', group: { ...group, template: { ...group.template, constraints: { regions: ['x'] } } } })).toThrow('command.group.template.constraints.regions');
  });

  it('every reject code is exercised by this file, fleet-migrations.test.ts or fleet-protection.test.ts', async () => {
    const fs = await import('node:fs/promises');
    const read = (name: string) => fs.readFile(new URL(name, import.meta.url), 'utf8');
    const source = (await fs.readFile(new URL(import.meta.url), 'utf8')) + (await read('./fleet-migrations.test.ts')) + (await read('./fleet-protection.test.ts'));
    for (const code of FLEET_REJECT_CODES) expect(source, code).toContain(`'${code}'`);
  });
});

describe('fleet snapshots', () => {
  function busyMachine(): FleetStateMachine {
    const m = machineWith(usEast, euWest);
    m.apply(create(spec('b', { constraints: { antiAffinityGroup: 'g', spreadGroup: 's' } })));
    m.apply(create(spec('a', { labels: { z: '1', a: '2' } })));
    m.apply(create(spec('c', { vcpus: 1, spot: true })));
    m.apply(assign('a', 'eu-west', 1));
    m.apply(assign('b', 'us-east', 3));
    m.apply(assign('c', 'us-east', 1, 'aws'));
    m.apply(parseFleetCommand({ kind: 'delete', vm: 'c' }));
    return m;
  }

  it('restores to the same state and the same bytes', () => {
    const m = busyMachine();
    const bytes = m.snapshot();
    const restored = FleetStateMachine.restore(bytes);
    expect(restored.snapshot()).toEqual(bytes);
    expect(restored.vms()).toEqual(m.vms());
    expect(restored.regions()).toEqual(m.regions());
    for (const r of ['eu-west', 'us-east']) for (const p of ['local', 'aws']) expect(restored.usage(r, p)).toEqual(m.usage(r, p));
    expect(restored.groupCounts('anti-affinity', 'g')).toEqual(new Map([['us-east', 1]]));
    expect(restored.groupCounts('spread', 's')).toEqual(new Map([['us-east', 1]]));
    // The restored machine keeps enforcing the rules.
    refused(restored.apply(assign('b', 'eu-west', 3)), 'stale_generation');
  });

  it('carries the policy set: restored, it has the same version and denies the same way; none set, no policy field', () => {
    const m = busyMachine();
    expect(new TextDecoder().decode(m.snapshot())).not.toContain('"policy"');
    m.apply(setPolicy(7, [{ condition: "region.jurisdiction == 'eu'", message: 'EU only' }]));
    m.apply(create(spec('d')));
    const restored = FleetStateMachine.restore(m.snapshot());
    expect(restored.snapshot()).toEqual(m.snapshot());
    expect(restored.policy.version).toBe(7);
    expect(restored.policy.policies).toEqual(m.policy.policies);
    refused(restored.apply(assign('d', 'us-east', 1)), 'policy_denied', 'EU only');
    refused(restored.apply(setPolicy(7, [])), 'stale_policy_version');
  });

  it('refuses a snapshot whose policy set does not compile, naming the rule', () => {
    const m = busyMachine();
    m.apply(setPolicy(2, [{ condition: "region.jurisdiction == 'eu'" }]));
    const body = new TextDecoder().decode(m.snapshot().subarray(5)).replace("region.jurisdiction == 'eu'", "region.jurisdictoin == 'eu'");
    const bytes = new Uint8Array([...m.snapshot().subarray(0, 5), ...new TextEncoder().encode(body)]);
    expect(() => FleetStateMachine.restore(bytes)).toThrow(FleetSnapshotError);
    expect(() => FleetStateMachine.restore(bytes)).toThrow('policy version 2: policy set does not compile: policy p rule r1: condition 1:8: No such key: jurisdictoin');
  });

  it('gives the same bytes for the same state reached in a different order', () => {
    const a = machineWith(euWest, usEast);
    const b = machineWith(usEast, euWest);
    a.apply(create(spec('x')));
    a.apply(create(spec('y')));
    b.apply(create(spec('y')));
    b.apply(create(spec('x')));
    expect(a.snapshot()).toEqual(b.snapshot());
  });

  it.each([
    ['bad magic', (s: string) => s, new Uint8Array([1, 2, 3]), 'magic'],
    ['not JSON', () => '{', null, 'not UTF-8 JSON'],
    ['unknown field', (s: string) => s.replace('"limits":', '"extra":1,"limits":'), null, 'snapshot.extra: unknown key'],
    ['bad spec', (s: string) => s.replace('"vcpus":2', '"vcpus":0'), null, 'snapshot.vms[0].spec.vcpus'],
    ['over-commit', (s: string) => s.replace('"vcpus":2', '"vcpus":900'), null, 'over-commits eu-west/local'],
    ['unregistered region', (s: string) => s.replace('"provider":"local","region":"eu-west"}', '"provider":"local","region":"mars"}'), null, 'assigned to mars/local, which is not registered'],
  ])('refuses a snapshot: %s', (_what, edit, raw, message) => {
    const m = busyMachine();
    const body = new TextDecoder().decode(m.snapshot().subarray(5));
    const bytes = raw ?? new Uint8Array([...m.snapshot().subarray(0, 5), ...new TextEncoder().encode(edit(body))]);
    expect(() => FleetStateMachine.restore(bytes)).toThrow(FleetSnapshotError);
    expect(() => FleetStateMachine.restore(bytes)).toThrow(message);
  });
});

describe('the ledger never over-commits (property)', () => {
  const regions = ['r1', 'r2', 'r3'];
  const vmNames = ['v0', 'v1', 'v2', 'v3', 'v4', 'v5', 'v6', 'v7'];
  const commandArb: fc.Arbitrary<FleetCommand> = fc.oneof(
    fc.record({ region: fc.constantFrom(...regions), vcpus: fc.integer({ min: 0, max: 12 }), mem: fc.integer({ min: 0, max: 24 }), quota: fc.integer({ min: 0, max: 4 }) }).map(({ region, vcpus, mem, quota }) =>
      registerRegion(region, [localProvider(vcpus, mem), { name: 'cloud', kind: 'aws', quota: { vcpus: 8, instances: quota }, prices: { vcpuHourUsd: 0.01, memoryGiBHourUsd: 0 } }]),
    ),
    fc
      .record({ name: fc.constantFrom(...vmNames), vcpus: fc.integer({ min: 1, max: 6 }), mem: fc.integer({ min: 1, max: 8 }), group: fc.option(fc.constantFrom('g1', 'g2'), { nil: undefined }) })
      .map(({ name, vcpus, mem, group }) => create(spec(name, { vcpus, memoryBytes: mem * GIB, constraints: group === undefined ? {} : { antiAffinityGroup: group } }))),
    fc
      .record({ vm: fc.constantFrom(...vmNames), region: fc.constantFrom(...regions, 'r9'), provider: fc.constantFrom('local', 'cloud'), generation: fc.integer({ min: 1, max: 20 }) })
      .map(({ vm, region, provider, generation }) => assign(vm, region, generation, provider)),
    fc.constantFrom(...vmNames).map((vm) => parseFleetCommand({ kind: 'delete', vm })),
    fc.constantFrom(...vmNames).map((vm) => parseFleetCommand({ kind: 'purge', vm })),
  );

  it('holds after every command, and a snapshot at any point restores the same state', () => {
    fc.assert(
      fc.property(fc.array(commandArb, { minLength: 1, maxLength: 80 }), (commands) => {
        const m = new FleetStateMachine();
        const lastGeneration = new Map<string, number>();
        for (const cmd of commands) {
          const result = m.apply(cmd);
          // Independent accounting from the VM records: the sum of live assigned specs per (region, provider).
          const sums = new DemandSums();
          const groupRegions = new Set<string>();
          for (const vm of m.vms()) {
            if (vm.deleted || vm.assignment === null) continue;
            sums.add(vm.assignment.region, vm.assignment.provider, vm.spec);
            const group = vm.spec.constraints.antiAffinityGroup;
            if (group !== undefined) {
              const at = `${group}@${vm.assignment.region}`;
              expect(groupRegions.has(at), `two VMs of ${group} in ${vm.assignment.region}`).toBe(false);
              groupRegions.add(at);
            }
          }
          sums.expectLedger(m);
          if (result.ok && cmd.kind === 'assign') {
            expect(cmd.generation).toBeGreaterThan(lastGeneration.get(cmd.vm) ?? 0);
            lastGeneration.set(cmd.vm, cmd.generation);
          }
        }
        // The per-region index agrees with the records.
        for (const region of [...regions, 'r9']) {
          expect(m.vmsAssignedTo(region).map((vm) => vm.name)).toEqual(m.vms().filter((vm) => vm.assignment?.region === region).map((vm) => vm.name));
        }
        const bytes = m.snapshot();
        const restored = FleetStateMachine.restore(bytes);
        expect(restored.snapshot()).toEqual(bytes);
        for (const region of regions) expect(restored.vmsAssignedTo(region)).toEqual(m.vmsAssignedTo(region));
      }),
      { numRuns: 300 },
    );
  });
});

describe('applied', () => {
  it('counts every command applied, refusals included, and starts again from 0 on a restored machine', async () => {
    const { FleetStateMachine } = await import('../../src/fleet/state-machine.ts');
    const { registerRegion, localProvider, create, spec } = await import('./fleet-fixtures.ts');
    const m = new FleetStateMachine();
    expect(m.applied).toBe(0);
    m.apply(registerRegion('a', [localProvider(4, 8)]));
    m.apply(create(spec('web1')));
    m.apply(create(spec('web1')));
    expect(m.applied).toBe(3);
    expect(FleetStateMachine.restore(m.snapshot()).applied).toBe(0);
  });
});
