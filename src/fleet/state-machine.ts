/**
 * FleetStateMachine: the fleet's desired state, replicated by the federation
 * log (Raft or PBFT). Every replica applies the same fleet commands in the
 * same order and reaches the same state and the same results.
 *
 * What it holds: the region catalogue (each region's declared providers,
 * capacity or quota, prices, labels, jurisdiction, compliance, trust,
 * registered by register-region), the VMs (spec, desired power, current
 * assignment, the highest generation ever assigned, deleted or not), the
 * migrations under way and a bounded history of ended ones (migrations.ts
 * has their rules), the capacity ledger, per-group counts for anti-affinity
 * and spread, and the policy set (its version, its policies, and their
 * compiled evaluator).
 *
 * Rules enforced at apply (each refusal has a FleetRejectCode and a sentence):
 * - VM names are unique among live VMs; a create over a deleted VM's
 *   tombstone starts a new incarnation that keeps the generation, so
 *   generations of one name only grow and a stale copy stays fenced.
 * - An assignment names a registered region and provider, a generation above
 *   every generation the VM had, satisfies the spec's declared-state
 *   constraints (regions, providers, jurisdictions, labels, compliance, spot,
 *   max $/h), keeps its anti-affinity group to one VM per region, and fits the
 *   ledger (declared limits minus what is assigned there, the VM's own current
 *   reservation given back first). So the ledger never over-commits.
 * - Policy: every assignment (a first placement or a move) is re-checked
 *   against the current policy set at apply, whatever its proposer
 *   evaluated: an assignment an enforced (deny) rule refuses is rejected
 *   policy_denied with the rule's message, so no path that picks a region
 *   can bypass the policies. The assignment's operation (create, place,
 *   burst, migrate, failover, failback) is the command's, checked against
 *   the VM's state, or derived (src/fleet/policy-check.ts). Audit and warn
 *   rules never refuse. A policy set that tightens later does not touch
 *   VMs already assigned (continuous audit reports those).
 * - set-policy: the version must be above the current one (versions only
 *   grow); the policies must compile (invalid_policy names policy, rule and
 *   position). Compiled once here, per version, never per command.
 * - A re-registration may not drop a provider that has VMs assigned nor
 *   shrink a limit below current usage.
 * - A migration reserves the side its VM is not assigned to (the target
 *   before cutover, the source after) until it ends; while a VM migrates, it
 *   cannot be assigned or have its power changed, and deleting it ends the
 *   migration failed. Every choice of a region (assign, migration-start,
 *   migration-cutover) passes the same constraint, policy and anti-affinity
 *   checks (#choiceRefusal); a migration is checked as operation `migrate`,
 *   at its start and again at its cutover.
 * - DR (protection.ts): protect checks the DR region as policy operation
 *   failover; failover moves a protected VM to its DR region at generation
 *   + 1 and only from the generation its proposer saw (one proposal per loss
 *   wins); a failback is a migration with purpose failback (operation
 *   failback); any move clears the failover record.
 * - Bounds: limits.maxVms VM records (tombstones included), limits.maxRegions
 *   regions, FLEET_MAX_PROVIDERS_PER_REGION providers per region.
 *
 * Determinism: no clock, no randomness; maps are only iterated where order
 * does not matter, or after sorting (snapshots, read API lists). apply never
 * throws for a command's content; it throws FleetInvariantError only if the
 * state is already broken.
 *
 * Snapshot: FLEET_SNAPSHOT_MAGIC then canonical JSON of the limits, the
 * regions (as register-region commands, by name), the VMs (by name) and the
 * migrations (the next id, the active ones and the history, by id; absent
 * until a migration was started, read as none). The same state gives
 * the same bytes on every replica; restore validates every record and
 * rebuilds the ledger, group counts and migration indexes, refusing a
 * snapshot whose assignments or reservations would over-commit.
 */
import { DwcpError } from '../errors.ts';
import { z } from 'zod';
import { formatIssue, pathString } from '../config/issues.ts';
import {
  FLEET_MAX_GENERATION,
  FLEET_MAX_MESSAGE,
  FleetCommandSchema,
  POWER_STATES,
  canonicalJson,
  decodeFleetCommand,
  parseFleetCommand,
  type FleetCommand,
  type FleetProviderKind,
  type FleetRejectCode,
  type FleetResult,
  type PowerState,
  type ProviderPrices,
  type RegisterRegionCommand,
  type SetPolicyCommand,
  type AssignCommand,
} from './commands.ts';
import type { ProviderFacts, RegionFacts, ResourceAmounts, ResourceLimits } from './ledger.ts';
import { CapacityLedger, RESOURCES, ZERO_AMOUNTS, demandOf, describeShortfall, formatAmount, hourlyUsd, invariant, limitsOf, providerConstraintProblem, regionConstraintProblem } from './ledger.ts';
import { FleetVmSpecSchema, fleetName, normaliseSpec, type FleetVmSpec } from './spec.ts';
import { EMPTY_POLICY_SET, PoliciesSchema, normalisePolicies, type PolicySpec } from '../policy/document.ts';
import { PolicyCompileError, compilePolicySet } from '../policy/compile.ts';
import { NO_POLICY, type PolicyEvaluator } from '../policy/evaluate.ts';
import { assignmentOperation, describeDenial, policyRegionOf, policyVmOf } from './policy-check.ts';
import { BudgetSpecSchema, MAX_BUDGETS, hardBudgetDenial, type FleetBudget } from './budgets.ts';
import { BurstGroupSpecSchema, MAX_BURST_GROUPS, type BurstGroupSpec } from '../burst/group.ts';
import type { PolicyOperation } from '../policy/document.ts';
import {
  DEFAULT_MAX_MIGRATIONS_PER_REGION,
  FleetMigrationSchema,
  MIGRATION_HISTORY,
  compareMigrations,
  endProblem,
  isCutOver,
  migrationNumber,
  migrationSupportProblem,
  progressProblem,
  reservedAt,
  type FleetMigration,
  type MigrationFacts,
  type MigrationResult,
  type MigrationStartCommand,
} from './migrations.ts';
import { FleetProtectionSchema, resolveDrProvider, type BackupCommand, type FailoverCommand, type FleetProtection, type ProtectCommand } from './protection.ts';

export const FLEET_DEFAULT_MAX_VMS = 1_048_576;
export const FLEET_DEFAULT_MAX_REGIONS = 4096;
/** 0x00 'f' 'l' 's' and the snapshot format version. */
export const FLEET_SNAPSHOT_MAGIC: Uint8Array = Uint8Array.of(0x00, 0x66, 0x6c, 0x73, 0x01);

export interface FleetLimits {
  readonly maxVms: number;
  readonly maxRegions: number;
}

export interface FleetRegionProvider extends ProviderFacts {
  readonly name: string;
  readonly kind: FleetProviderKind;
  readonly spot: boolean;
  readonly prices: ProviderPrices;
  readonly limits: ResourceLimits;
}

export interface FleetRegion extends RegionFacts {
  /** The node's trust level as declared; null for a declaration from before trust was declared. */
  readonly trust: 'trusted' | 'untrusted' | null;
  /** Sorted by name. */
  readonly providers: readonly FleetRegionProvider[];
  /** Migrations that may touch this region at once (as source or target). */
  readonly maxMigrations: number;
}

/** The fleet's current policy set. */
export interface FleetPolicy {
  /** 0 until a set-policy is applied; only grows. */
  readonly version: number;
  /** The policies of that version, normalised, in evaluation order. */
  readonly policies: readonly PolicySpec[];
  /** Compiled once when the version was applied or restored; what every check evaluates. */
  readonly evaluator: PolicyEvaluator;
}

const NO_FLEET_POLICY: FleetPolicy = Object.freeze({ version: 0, policies: EMPTY_POLICY_SET.policies, evaluator: NO_POLICY });

export interface FleetAssignment {
  readonly region: string;
  readonly provider: string;
  readonly generation: number;
}

export interface FleetVm {
  readonly name: string;
  readonly spec: FleetVmSpec;
  readonly power: PowerState;
  /** Where the VM should run; null until placed. Kept on a tombstone: it says where the copy to terminate is. */
  readonly assignment: FleetAssignment | null;
  /** The highest generation ever assigned to this name (0: never); the next assignment must exceed it. */
  readonly generation: number;
  /** Deleted: reserves nothing; the region's reconciler terminates the copy, then a purge drops the record. */
  readonly deleted: boolean;
  /** DR protection (protection.ts); null when unprotected. */
  readonly protection: FleetProtection | null;
}

export type FleetGroupKind = 'anti-affinity' | 'spread';

/**
 * The read API over desired state, for placement views, the reconciler,
 * `fleet status` and simulators. Every answer is a copy or immutable.
 */
export interface FleetState {
  readonly limits: FleetLimits;
  readonly regionCount: number;
  /** VM records, tombstones included. */
  readonly vmCount: number;
  /**
   * Fleet commands applied by this machine (accepted or refused) since it was
   * made or restored: a driver that sees it change knows desired state may
   * have, without diffing it. Not replicated state: a restored machine starts
   * again from 0.
   */
  readonly applied: number;
  /** The policy set every assignment is checked against (version 0: none). */
  readonly policy: FleetPolicy;
  /** Budgets in the log, by name, with their spent mark (src/fleet/budgets.ts). */
  budgets(): readonly FleetBudget[];
  /** Burst groups in the log, sorted by name (src/burst/group.ts). */
  burstGroups(): readonly BurstGroupSpec[];
  /** Sorted by name. */
  regions(): readonly FleetRegion[];
  region(name: string): FleetRegion | undefined;
  /** Sorted by name; O(n log n): for listings, not per decision. */
  vms(): readonly FleetVm[];
  vm(name: string): FleetVm | undefined;
  /**
   * The VMs whose assignment names this region, live and deleted (a
   * tombstone keeps its assignment: the copy there is to be terminated),
   * sorted by name: what one region's reconciler works through, without
   * scanning the whole fleet.
   */
  vmsAssignedTo(region: string): readonly FleetVm[];
  /** Live protected VMs (protection.ts), by name: what the DR controller works through. */
  protectedVms(): readonly FleetVm[];
  /** Usage of one provider of a region; undefined when not registered. */
  usage(region: string, provider: string): ResourceAmounts | undefined;
  /** Usage summed over a region's providers. */
  regionUsage(region: string): ResourceAmounts;
  /**
   * Live assigned VMs of a group per region (regions with none are absent).
   * Not a copy: read it before the next apply (placement reads one group's
   * map per decision instead of copying it).
   */
  groupCounts(kind: FleetGroupKind, group: string): ReadonlyMap<string, number>;
  /** Migrations under way, oldest first. */
  migrations(): readonly FleetMigration[];
  /** Ended migrations the log remembers (at most MIGRATION_HISTORY), oldest first. */
  migrationHistory(): readonly FleetMigration[];
  /** A migration under way or remembered, by id. */
  migration(id: string): FleetMigration | undefined;
  /** The migration of this VM under way, if any. */
  migrationOf(vm: string): FleetMigration | undefined;
  /** Migrations under way whose target is this region, oldest first: what its reconciler prepares copies for. */
  migrationsInto(region: string): readonly FleetMigration[];
  /** What migration-start would answer on this state, changing nothing: the refusal, or null when it would be accepted (a dry run). */
  migrationStartRefusal(cmd: MigrationStartCommand): Refusal | null;
}

const NO_GROUP: ReadonlyMap<string, number> = new Map();

type MutableVm = { -readonly [K in keyof FleetVm]: FleetVm[K] };

/** A refusal: nothing changed, with a code and a sentence. */
type Refusal = Extract<FleetResult, { ok: false }>;

function reject(code: FleetRejectCode, message: string): Refusal {
  return { ok: false, code, message: message.length > FLEET_MAX_MESSAGE ? `${message.slice(0, FLEET_MAX_MESSAGE - 1)}…` : message };
}

function regionFromCommand(cmd: RegisterRegionCommand): FleetRegion {
  return {
    name: cmd.region,
    jurisdiction: cmd.jurisdiction ?? null,
    trust: cmd.trust ?? null,
    compliance: [...cmd.compliance],
    labels: { ...cmd.labels },
    providers: cmd.providers.map((p) => ({ name: p.name, kind: p.kind, spot: p.spot, prices: { ...p.prices }, limits: limitsOf(p) })),
    maxMigrations: cmd.maxMigrations ?? DEFAULT_MAX_MIGRATIONS_PER_REGION,
  };
}

function copyVm(vm: MutableVm): FleetVm {
  return { name: vm.name, spec: vm.spec, power: vm.power, assignment: vm.assignment, generation: vm.generation, deleted: vm.deleted, protection: vm.protection };
}

export class FleetStateMachine implements FleetState {
  readonly limits: FleetLimits;
  #regions = new Map<string, FleetRegion>();
  /** The register-region command each region was last declared by (normalised): what snapshots store. */
  #declarations = new Map<string, RegisterRegionCommand>();
  #sortedRegions: FleetRegion[] | null = null;
  #vms = new Map<string, MutableVm>();
  /** Names of the VMs whose assignment is in each region (tombstones included). */
  #byRegion = new Map<string, Set<string>>();
  /** Names of the live VMs with protection set. */
  #protected = new Set<string>();
  #ledger = new CapacityLedger();
  #applied = 0;
  #policy: FleetPolicy = NO_FLEET_POLICY;
  #budgets = new Map<string, FleetBudget>();
  #sortedBudgets: FleetBudget[] | null = null;
  #burstGroups = new Map<string, BurstGroupSpec>();
  #sortedBurstGroups: BurstGroupSpec[] | null = null;
  #groups: Record<FleetGroupKind, Map<string, Map<string, number>>> = { 'anti-affinity': new Map(), spread: new Map() };
  /** Migrations under way by id, and by VM. */
  #migrations = new Map<string, FleetMigration>();
  #migrationOfVm = new Map<string, string>();
  /** Region → ids of the migrations under way that touch it (as source or target). */
  #migrationsByRegion = new Map<string, Set<string>>();
  /** Ended migrations, oldest first, at most MIGRATION_HISTORY. */
  #history: FleetMigration[] = [];
  #nextMigration = 1;

  constructor(limits: Partial<FleetLimits> = {}) {
    const resolved = { maxVms: limits.maxVms ?? FLEET_DEFAULT_MAX_VMS, maxRegions: limits.maxRegions ?? FLEET_DEFAULT_MAX_REGIONS };
    for (const [key, value] of Object.entries(resolved)) {
      if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`fleet limits: ${key} must be a positive integer, got ${value}`);
    }
    this.limits = resolved;
  }

  get regionCount(): number {
    return this.#regions.size;
  }

  get vmCount(): number {
    return this.#vms.size;
  }

  get applied(): number {
    return this.#applied;
  }

  get policy(): FleetPolicy {
    return this.#policy;
  }

  budgets(): readonly FleetBudget[] {
    this.#sortedBudgets ??= [...this.#budgets.values()].sort((a, b) => (a.spec.name < b.spec.name ? -1 : a.spec.name > b.spec.name ? 1 : 0));
    return this.#sortedBudgets;
  }

  burstGroups(): readonly BurstGroupSpec[] {
    this.#sortedBurstGroups ??= [...this.#burstGroups.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return this.#sortedBurstGroups;
  }

  regions(): readonly FleetRegion[] {
    this.#sortedRegions ??= [...this.#regions.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return this.#sortedRegions;
  }

  region(name: string): FleetRegion | undefined {
    return this.#regions.get(name);
  }

  vms(): readonly FleetVm[] {
    return [...this.#vms.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map(copyVm);
  }

  vm(name: string): FleetVm | undefined {
    const vm = this.#vms.get(name);
    return vm === undefined ? undefined : copyVm(vm);
  }

  vmsAssignedTo(region: string): readonly FleetVm[] {
    const names = [...(this.#byRegion.get(region) ?? [])].sort();
    return names.map((name) => {
      const vm = this.#vms.get(name);
      invariant(vm !== undefined, () => `fleet: the region index of ${region} names ${name}, which has no record`);
      return copyVm(vm);
    });
  }

  protectedVms(): readonly FleetVm[] {
    return [...this.#protected].sort().map((name) => {
      const vm = this.#vms.get(name);
      invariant(vm !== undefined && !vm.deleted && vm.protection !== null, () => `fleet: the protected index names ${name}, which is not a live protected VM`);
      return copyVm(vm);
    });
  }

  usage(region: string, provider: string): ResourceAmounts | undefined {
    return this.#ledger.usage(region, provider);
  }

  regionUsage(region: string): ResourceAmounts {
    return this.#ledger.regionUsage(region);
  }

  groupCounts(kind: FleetGroupKind, group: string): ReadonlyMap<string, number> {
    return this.#groups[kind].get(group) ?? NO_GROUP;
  }

  migrations(): readonly FleetMigration[] {
    return [...this.#migrations.values()].sort(compareMigrations);
  }

  migrationHistory(): readonly FleetMigration[] {
    return [...this.#history];
  }

  migration(id: string): FleetMigration | undefined {
    return this.#migrations.get(id) ?? this.#history.find((m) => m.id === id);
  }

  migrationOf(vm: string): FleetMigration | undefined {
    const id = this.#migrationOfVm.get(vm);
    return id === undefined ? undefined : this.#migrations.get(id);
  }

  migrationsInto(region: string): readonly FleetMigration[] {
    const out: FleetMigration[] = [];
    for (const id of this.#migrationsByRegion.get(region) ?? []) {
      const m = this.#migrations.get(id);
      if (m !== undefined && m.target.region === region) out.push(m);
    }
    return out.sort(compareMigrations);
  }

  /** Applies one log entry: decodes it (an undecodable entry is refused as invalid_command) and applies it. */
  applyEntry(bytes: Uint8Array): FleetResult {
    let cmd: FleetCommand;
    try {
      cmd = decodeFleetCommand(bytes);
    } catch (err) {
      return reject('invalid_command', err instanceof Error ? err.message : String(err));
    }
    return this.apply(cmd);
  }

  /**
   * Applies a command that came through decodeFleetCommand or
   * parseFleetCommand (schema-valid and normalised); semantic rules are
   * checked here. Nothing changes when the result is a refusal.
   */
  apply(cmd: FleetCommand): FleetResult {
    this.#applied++;
    switch (cmd.kind) {
      case 'register-region':
        return this.#registerRegion(cmd);
      case 'create':
        return this.#create(cmd.spec, cmd.power);
      case 'assign':
        return this.#assign(cmd);
      case 'set-policy':
        return this.#setPolicy(cmd);
      case 'set-budget': {
        const old = this.#budgets.get(cmd.budget.name);
        if (old === undefined && this.#budgets.size >= MAX_BUDGETS) return reject('limit_reached', `the fleet holds ${this.#budgets.size} budgets, its limit; delete one first`);
        this.#budgets.set(cmd.budget.name, { spec: cmd.budget, spentMonth: null });
        this.#sortedBudgets = null;
        return { ok: true, kind: cmd.kind, budget: cmd.budget.name };
      }
      case 'delete-budget': {
        // Deleting twice is a retry, not a mistake.
        this.#budgets.delete(cmd.name);
        this.#sortedBudgets = null;
        return { ok: true, kind: cmd.kind, budget: cmd.name };
      }
      case 'budget-spent': {
        const b = this.#budgets.get(cmd.name);
        if (b === undefined) return reject('unknown_budget', `no budget named ${cmd.name}`);
        this.#budgets.set(cmd.name, { spec: b.spec, spentMonth: cmd.month });
        this.#sortedBudgets = null;
        return { ok: true, kind: cmd.kind, budget: cmd.name };
      }
      case 'set-burst-group': {
        if (!this.#burstGroups.has(cmd.group.name) && this.#burstGroups.size >= MAX_BURST_GROUPS) return reject('limit_reached', `the fleet holds ${this.#burstGroups.size} burst groups, its limit; delete one first`);
        this.#burstGroups.set(cmd.group.name, cmd.group);
        this.#sortedBurstGroups = null;
        return { ok: true, kind: cmd.kind, burstGroup: cmd.group.name };
      }
      case 'delete-burst-group': {
        if (!this.#burstGroups.delete(cmd.name)) return reject('unknown_burst_group', `no burst group named ${cmd.name}`);
        this.#sortedBurstGroups = null;
        return { ok: true, kind: cmd.kind, burstGroup: cmd.name };
      }
      case 'set-power': {
        const vm = this.#live(cmd.vm);
        if ('code' in vm) return vm;
        const migrating = this.#migratingRefusal(vm.name, 'its desired power cannot change');
        if (migrating !== null) return migrating;
        vm.power = cmd.power;
        return { ok: true, kind: cmd.kind, vm: vm.name };
      }
      case 'delete':
        return this.#delete(cmd.vm);
      case 'purge': {
        const vm = this.#vms.get(cmd.vm);
        if (vm === undefined) return reject('unknown_vm', `no VM named ${cmd.vm}`);
        if (!vm.deleted) return reject('not_deleted', `${cmd.vm} is not deleted; delete it before purging its record`);
        if (vm.assignment !== null) this.#index(vm.name, vm.assignment.region, -1);
        this.#vms.delete(cmd.vm);
        return { ok: true, kind: cmd.kind, vm: cmd.vm };
      }
      case 'migration-start':
        return this.#startMigration(cmd);
      case 'migration-progress': {
        const m = this.#activeMigration(cmd.id);
        if ('code' in m) return m;
        if (cmd.from !== undefined && cmd.from !== m.phase) return reject('migration_phase', `${m.id} (${m.vm}) is in ${m.phase}, not ${cmd.from} as the proposer of ${cmd.phase} saw it`);
        const problem = progressProblem(m.phase, cmd.phase);
        if (problem !== null) return reject('migration_phase', `${m.id} (${m.vm}) cannot go to ${cmd.phase}: ${problem}`);
        const reason = cmd.phase === 'rolling-back' ? (m.phase === 'rolling-back' ? m.reason : (cmd.reason ?? null)) : m.reason;
        this.#migrations.set(m.id, { ...m, phase: cmd.phase, facts: mergeFacts(m.facts, cmd.facts), reason, updatedAt: cmd.at });
        return { ok: true, kind: cmd.kind, vm: m.vm, migration: m.id };
      }
      case 'migration-cutover':
        return this.#cutover(cmd.id, cmd.facts, cmd.at);
      case 'protect':
        return this.#protect(cmd);
      case 'unprotect': {
        const vm = this.#live(cmd.vm);
        if ('code' in vm) return vm;
        // Unprotecting twice is a retry, not a mistake.
        vm.protection = null;
        this.#protected.delete(vm.name);
        return { ok: true, kind: cmd.kind, vm: vm.name };
      }
      case 'failover':
        return this.#failover(cmd);
      case 'backup':
        return this.#backup(cmd);
      case 'migration-end': {
        const ended = this.#history.find((h) => h.id === cmd.id);
        if (ended !== undefined) {
          // The same end again is a restarted coordinator repeating itself; another is a mistake.
          if (ended.result === cmd.result) return { ok: true, kind: cmd.kind, vm: ended.vm, migration: ended.id };
          return reject('migration_phase', `${cmd.id} (${ended.vm}) already ended ${ended.result ?? ''}`);
        }
        const m = this.#activeMigration(cmd.id);
        if ('code' in m) return m;
        const problem = endProblem(m.phase, cmd.result);
        if (problem !== null) return reject('migration_phase', `${m.id} (${m.vm}) cannot end ${cmd.result}: ${problem}`);
        this.#endMigration(m, cmd.result, cmd.reason ?? (cmd.result === 'completed' ? m.reason : null), mergeFacts(m.facts, cmd.facts), cmd.at);
        return { ok: true, kind: cmd.kind, vm: m.vm, migration: m.id };
      }
    }
  }

  #live(name: string): MutableVm | Refusal {
    const vm = this.#vms.get(name);
    if (vm === undefined) return { ok: false, code: 'unknown_vm', message: `no VM named ${name}` };
    if (vm.deleted) return { ok: false, code: 'vm_deleted', message: `${name} is deleted` };
    return vm;
  }

  #registerRegion(cmd: RegisterRegionCommand): FleetResult {
    const existing = this.#regions.get(cmd.region);
    if (existing === undefined && this.#regions.size >= this.limits.maxRegions) {
      return reject('limit_reached', `the fleet holds ${this.#regions.size} regions, its limit; ${cmd.region} cannot be added`);
    }
    const region = regionFromCommand(cmd);
    const declared = new Map(region.providers.map((p) => [p.name, p]));
    for (const old of existing?.providers ?? []) {
      const used = this.#ledger.usage(cmd.region, old.name) ?? ZERO_AMOUNTS;
      const next = declared.get(old.name);
      if (next === undefined) {
        if (used.instances > 0) return reject('provider_in_use', `${cmd.region}/${old.name} has ${used.instances} VMs assigned or migrating there and cannot be dropped from the region`);
        continue;
      }
      for (const r of RESOURCES) {
        const limit = next.limits[r];
        if (limit !== null && used[r] > limit) {
          return reject('capacity_below_usage', `${cmd.region}/${old.name} would declare ${formatAmount(r, limit)} but ${formatAmount(r, used[r])} are assigned there`);
        }
      }
    }
    for (const old of existing?.providers ?? []) if (!declared.has(old.name)) this.#ledger.remove(cmd.region, old.name);
    for (const p of region.providers) this.#ledger.declare(cmd.region, p.name, p.limits);
    this.#regions.set(cmd.region, region);
    this.#declarations.set(cmd.region, cmd);
    this.#sortedRegions = null;
    return { ok: true, kind: 'register-region', region: cmd.region };
  }

  #create(spec: FleetVmSpec, power: PowerState): FleetResult {
    const old = this.#vms.get(spec.name);
    if (old !== undefined && !old.deleted) return reject('name_taken', `a VM named ${spec.name} already exists`);
    if (old === undefined && this.#vms.size >= this.limits.maxVms) return reject('limit_reached', `the fleet holds ${this.#vms.size} VM records, its limit; purge deleted VMs or raise the limit`);
    // A new incarnation over a tombstone keeps the generation floor, so a copy of the old one is still fenced off.
    if (old !== undefined && old.assignment !== null) this.#index(old.name, old.assignment.region, -1);
    this.#vms.set(spec.name, { name: spec.name, spec, power, assignment: null, generation: old?.generation ?? 0, deleted: false, protection: null });
    return { ok: true, kind: 'create', vm: spec.name };
  }

  /** The registered provider a command names, or the refusal naming what is missing. */
  #provider(regionName: string, providerName: string): { region: FleetRegion; provider: FleetRegionProvider } | Refusal {
    const region = this.#regions.get(regionName);
    if (region === undefined) return { ok: false, code: 'unknown_region', message: `no region named ${regionName} is registered` };
    const provider = region.providers.find((p) => p.name === providerName);
    if (provider === undefined) return { ok: false, code: 'unknown_provider', message: `region ${regionName} has no provider ${providerName} (it has ${region.providers.map((p) => p.name).join(', ')})` };
    return { region, provider };
  }

  /**
   * Whether the VM may be put in (region, provider) for `operation`: the
   * spec's declared-state constraints, the policy set (enforced rules), and
   * its anti-affinity group (the VM itself not counted where it is assigned
   * now). Every path that picks a region (assign, migration-start,
   * migration-cutover) asks this. Null: allowed.
   */
  #choiceRefusal(vm: MutableVm, region: FleetRegion, provider: FleetRegionProvider, operation: PolicyOperation): Refusal | null {
    const problem = regionConstraintProblem(vm.spec, region) ?? providerConstraintProblem(vm.spec, provider)?.reason ?? null;
    if (problem !== null) return { ok: false, code: 'constraint_violated', message: `${vm.name} may not run in ${region.name}: ${problem}` };
    const { evaluator } = this.#policy;
    if (evaluator.ruleCount > 0) {
      const verdict = evaluator.evaluate({ vm: policyVmOf(vm.spec), region: policyRegionOf(region, provider), cost: hourlyUsd(vm.spec, provider.prices), operation });
      if (!verdict.allowed) return { ok: false, code: 'policy_denied', message: `${vm.name} may not go to ${region.name}/${provider.name} (${operation}): ${describeDenial(verdict)}` };
    }
    if (this.#budgets.size > 0) {
      const spent = hardBudgetDenial(this.budgets(), operation, { region: region.name, provider: provider.name, labels: vm.spec.labels });
      if (spent !== null) return { ok: false, code: 'budget_spent', message: `${vm.name} may not go to ${region.name}/${provider.name} (${operation}): ${spent}` };
    }
    const group = vm.spec.constraints.antiAffinityGroup;
    if (group !== undefined) {
      const others = (this.groupCounts('anti-affinity', group).get(region.name) ?? 0) - (vm.assignment?.region === region.name && !vm.deleted ? 1 : 0);
      if (others > 0) return { ok: false, code: 'anti_affinity', message: `${region.name} already holds ${others} VM${others === 1 ? '' : 's'} of anti-affinity group ${group}` };
    }
    return null;
  }

  #assign(cmd: AssignCommand): FleetResult {
    const { vm: name, region: regionName, provider: providerName, generation } = cmd;
    const vm = this.#live(name);
    if ('code' in vm) return vm;
    const migrating = this.#migratingRefusal(name, 'it cannot be reassigned');
    if (migrating !== null) return migrating;
    const current = vm.assignment;
    const operation = assignmentOperation(vm.spec, current !== null, cmd.operation);
    if (!operation.ok) return reject('invalid_command', operation.problem);
    if (generation <= vm.generation) return reject('stale_generation', `generation ${generation} is not above ${name}'s current generation ${vm.generation}`);
    const found = this.#provider(regionName, providerName);
    if ('code' in found) return found;
    const refused = this.#choiceRefusal(vm, found.region, found.provider, operation.operation);
    if (refused !== null) return refused;
    const short = this.#move(vm, regionName, providerName, generation);
    if (short !== null) return short;
    return { ok: true, kind: 'assign', vm: name, region: regionName, generation };
  }

  /** Moves a live VM's assignment (the caller checked everything but capacity): the refusal when it does not fit. Clears a failover record: the VM is no longer where the failover put it. */
  #move(vm: MutableVm, regionName: string, providerName: string, generation: number): Refusal | null {
    const current = vm.assignment;
    const demand = demandOf(vm.spec);
    const credit = current !== null && current.region === regionName && current.provider === providerName ? demand : ZERO_AMOUNTS;
    const short = this.#ledger.check(regionName, providerName, demand, credit);
    if (short !== null) return reject('insufficient_capacity', `${regionName}/${providerName} cannot take ${vm.name}: ${describeShortfall(short)}`);
    if (current !== null) {
      this.#unassign(vm, current);
      this.#index(vm.name, current.region, -1);
    }
    this.#index(vm.name, regionName, +1);
    this.#ledger.reserve(regionName, providerName, demand);
    this.#count(vm.spec, regionName, +1);
    vm.assignment = { region: regionName, provider: providerName, generation };
    vm.generation = generation;
    if (vm.protection?.failedOver != null) vm.protection = { ...vm.protection, failedOver: null };
    return null;
  }

  // DR protection (protection.ts).

  #protect(cmd: ProtectCommand): FleetResult {
    const vm = this.#live(cmd.vm);
    if ('code' in vm) return vm;
    const region = this.#regions.get(cmd.drRegion);
    if (region === undefined) return reject('unknown_region', `no region named ${cmd.drRegion} is registered (the DR region of ${vm.name})`);
    const a = vm.assignment;
    const failedOver = vm.protection?.failedOver ?? null;
    if (failedOver !== null && vm.protection?.drRegion !== cmd.drRegion) return reject('invalid_command', `${vm.name} is failed over to ${vm.protection?.drRegion}; fail it back before choosing another DR region`);
    if (failedOver === null && a?.region === cmd.drRegion) return reject('invalid_command', `${vm.name} runs in ${cmd.drRegion}; its DR region must be another region`);
    const currentKind = a === null ? undefined : this.#regions.get(a.region)?.providers.find((p) => p.name === a.provider)?.kind;
    const drProvider = resolveDrProvider(region.providers, cmd.drProvider, currentKind);
    const provider = region.providers.find((p) => p.name === drProvider);
    if (provider === undefined) return reject('unknown_provider', `region ${cmd.drRegion} has no provider ${cmd.drProvider ?? ''} (it has ${region.providers.map((p) => p.name).join(', ')})`);
    // Asked now, so a failover the policies would refuse is refused before the disaster, not during it.
    const refused = this.#choiceRefusal(vm, region, provider, 'failover');
    if (refused !== null) return refused;
    // The backups are in the DR region's blob store: a new DR region has none of them.
    const lastBackup = vm.protection?.drRegion === cmd.drRegion ? vm.protection.lastBackup : undefined;
    vm.protection = { drRegion: cmd.drRegion, drProvider: provider.name, rpoMs: cmd.rpoMs, rtoMs: cmd.rtoMs, retentionMs: cmd.retentionMs, failback: cmd.failback, failedOver, ...(lastBackup === undefined ? {} : { lastBackup }) };
    this.#protected.add(vm.name);
    return { ok: true, kind: 'protect', vm: vm.name, region: cmd.drRegion };
  }

  #failover(cmd: FailoverCommand): FleetResult {
    const vm = this.#live(cmd.vm);
    if ('code' in vm) return vm;
    const p = vm.protection;
    if (p === null) return reject('not_protected', `${vm.name} is not protected; it has no DR region to fail over to`);
    const a = vm.assignment;
    if (a === null) return reject('not_assigned', `${vm.name} is not placed; there is nothing to fail over`);
    // The losers of a race, and proposals made on stale state: the VM already moved on.
    if (a.region !== cmd.region || a.generation !== cmd.generation) return reject('stale_generation', `${vm.name} is assigned to ${a.region} at generation ${a.generation}, not ${cmd.region} at ${cmd.generation} (failed over already, or moved)`);
    if (a.region === p.drRegion) return reject('invalid_command', `${vm.name} already runs in its DR region ${p.drRegion}`);
    const found = this.#provider(p.drRegion, p.drProvider);
    if ('code' in found) return found;
    const refused = this.#choiceRefusal(vm, found.region, found.provider, 'failover');
    if (refused !== null) return refused;
    const short = this.#ledger.check(p.drRegion, p.drProvider, demandOf(vm.spec));
    if (short !== null) return reject('insufficient_capacity', `${p.drRegion}/${p.drProvider} cannot take ${vm.name} on failover: ${describeShortfall(short)}`);
    if (vm.generation >= FLEET_MAX_GENERATION) return reject('stale_generation', `${vm.name} has used every generation`);
    // A migration under way cannot finish with its source lost: ended first, releasing its reservation.
    const migration = this.migrationOf(vm.name);
    if (migration !== undefined) this.#endMigration(migration, 'failed', `${vm.name} failed over to ${p.drRegion}`, migration.facts, cmd.at);
    const from = vm.assignment;
    invariant(from !== null, () => `fleet: ${vm.name} lost its assignment while failing over`);
    const generation = vm.generation + 1;
    const moved = this.#move(vm, p.drRegion, p.drProvider, generation);
    invariant(moved === null, () => `fleet: failover of ${vm.name} was checked to fit ${p.drRegion}/${p.drProvider}`);
    vm.protection = { ...p, failedOver: { from: { region: from.region, provider: from.provider }, generation, reason: cmd.reason, since: cmd.since, at: cmd.at, ...(p.lastBackup === undefined ? {} : { restore: p.lastBackup }) } };
    return { ok: true, kind: 'failover', vm: vm.name, region: p.drRegion, generation };
  }

  #backup(cmd: BackupCommand): FleetResult {
    const vm = this.#live(cmd.vm);
    if ('code' in vm) return vm;
    const p = vm.protection;
    if (p === null) return reject('not_protected', `${vm.name} is not protected; its backups are not recorded`);
    const a = vm.assignment;
    const b = cmd.backup;
    if (a === null || a.region !== b.region || a.generation !== b.generation) return reject('stale_generation', `${vm.name} is assigned to ${a?.region ?? 'no region'} at generation ${a?.generation ?? 0}, not ${b.region} at ${b.generation}: the backup is not of its current copy`);
    if (a.region === p.drRegion) return reject('invalid_command', `${vm.name} runs in its DR region ${p.drRegion}; it has no backups there`);
    // A retry or a late proposal: the newer backup stands.
    if (p.lastBackup !== undefined && p.lastBackup.takenAt >= b.takenAt) return { ok: true, kind: 'backup', vm: vm.name, region: p.drRegion };
    vm.protection = { ...p, lastBackup: b };
    return { ok: true, kind: 'backup', vm: vm.name, region: p.drRegion };
  }

  #setPolicy(cmd: SetPolicyCommand): FleetResult {
    const current = this.#policy.version;
    if (cmd.version <= current) return reject('stale_policy_version', `policy version ${cmd.version} is not above the current version ${current}`);
    let evaluator: PolicyEvaluator;
    try {
      evaluator = compilePolicySet({ version: cmd.version, policies: cmd.policies });
    } catch (err) {
      if (err instanceof PolicyCompileError) return reject('invalid_policy', err.message);
      throw err;
    }
    this.#policy = Object.freeze({ version: cmd.version, policies: cmd.policies, evaluator });
    return { ok: true, kind: 'set-policy', policyVersion: cmd.version };
  }

  #delete(name: string): FleetResult {
    const vm = this.#vms.get(name);
    if (vm === undefined) return reject('unknown_vm', `no VM named ${name}`);
    // Deleting twice is a retry, not a mistake.
    if (vm.deleted) return { ok: true, kind: 'delete', vm: name };
    const migration = this.migrationOf(name);
    // Ended first, releasing its reservation: every copy of a deleted VM is then stale everywhere, the incoming one included.
    if (migration !== undefined) this.#endMigration(migration, 'failed', `${name} was deleted`, migration.facts, migration.updatedAt);
    if (vm.assignment !== null) this.#unassign(vm, vm.assignment);
    vm.deleted = true;
    this.#protected.delete(name);
    return { ok: true, kind: 'delete', vm: name };
  }

  /** Gives back a live VM's reservation and group counts (its assignment record is the caller's to change). */
  #unassign(vm: MutableVm, at: FleetAssignment): void {
    this.#ledger.release(at.region, at.provider, demandOf(vm.spec));
    this.#count(vm.spec, at.region, -1);
  }

  // Migrations.

  #migratingRefusal(vm: string, what: string): Refusal | null {
    const m = this.migrationOf(vm);
    return m === undefined ? null : { ok: false, code: 'migration_active', message: `${vm} is migrating (${m.id}, ${m.phase}) and ${what}; cancel the migration or wait for it to end` };
  }

  #activeMigration(id: string): FleetMigration | Refusal {
    const m = this.#migrations.get(id);
    if (m !== undefined) return m;
    const ended = this.#history.find((h) => h.id === id);
    if (ended !== undefined) return { ok: false, code: 'migration_phase', message: `${id} (${ended.vm}) already ended ${ended.result ?? ''}` };
    return { ok: false, code: 'unknown_migration', message: `no migration ${id} is under way or remembered` };
  }

  migrationStartRefusal(cmd: MigrationStartCommand): Refusal | null {
    const checked = this.#checkMigrationStart(cmd);
    return 'code' in checked ? checked : null;
  }

  /** Every rule of migration-start; the VM and its assignment when they all hold. */
  #checkMigrationStart(cmd: MigrationStartCommand): { vm: MutableVm; a: FleetAssignment } | Refusal {
    const vm = this.#live(cmd.vm);
    if ('code' in vm) return vm;
    const a = vm.assignment;
    if (a === null) return { ok: false, code: 'not_assigned', message: `${vm.name} is not placed; there is nothing to migrate` };
    const migrating = this.#migratingRefusal(vm.name, 'cannot start another migration');
    if (migrating !== null) return migrating;
    if (a.generation !== cmd.generation) return reject('stale_generation', `${vm.name} is assigned at generation ${a.generation}, not ${cmd.generation}: plan the migration again on fresh state`);
    if (cmd.purpose === 'failback') {
      const f = vm.protection?.failedOver ?? null;
      if (f === null || a.generation !== f.generation) return reject('not_protected', `${vm.name} is not failed over, so there is nothing to fail back`);
      if (f.from.region !== cmd.region) return reject('invalid_command', `${vm.name} failed over from ${f.from.region}; a failback goes there, not to ${cmd.region}`);
    }
    const found = this.#provider(cmd.region, cmd.provider);
    if ('code' in found) return found;
    if (cmd.region === a.region) return reject('migration_unsupported', `${vm.name} already runs in ${a.region}; migrate it to another region`);
    const source = this.#regions.get(a.region)?.providers.find((p) => p.name === a.provider);
    invariant(source !== undefined, () => `fleet: ${vm.name} is assigned to ${a.region}/${a.provider}, which is not registered`);
    const unsupported = migrationSupportProblem(cmd.mode, source.kind, found.provider.kind);
    if (unsupported !== null) return reject('migration_unsupported', `${vm.name}: ${unsupported}`);
    const refused = this.#choiceRefusal(vm, found.region, found.provider, cmd.purpose ?? 'migrate');
    if (refused !== null) return refused;
    for (const name of [a.region, cmd.region]) {
      const under = this.#migrationsByRegion.get(name)?.size ?? 0;
      const limit = this.#regions.get(name)?.maxMigrations ?? DEFAULT_MAX_MIGRATIONS_PER_REGION;
      if (under >= limit) return reject('migration_limit', `${name} has ${under} migration${under === 1 ? '' : 's'} under way, its limit (fleet.migration.maxConcurrentPerRegion ${limit}); wait for one to end`);
    }
    const short = this.#ledger.check(cmd.region, cmd.provider, demandOf(vm.spec));
    if (short !== null) return reject('insufficient_capacity', `${cmd.region}/${cmd.provider} cannot take ${vm.name} during its migration: ${describeShortfall(short)}`);
    if (vm.generation >= FLEET_MAX_GENERATION) return reject('stale_generation', `${vm.name} has used every generation`);
    return { vm, a };
  }

  #startMigration(cmd: MigrationStartCommand): FleetResult {
    const checked = this.#checkMigrationStart(cmd);
    if ('code' in checked) return checked;
    const { vm, a } = checked;
    const id = `m${this.#nextMigration++}`;
    const generation = vm.generation + 1;
    // The migration takes the next generation now: an incoming copy tagged with it can belong to nothing else.
    vm.generation = generation;
    const m: FleetMigration = {
      id,
      vm: vm.name,
      mode: cmd.mode,
      source: { region: a.region, provider: a.provider, generation: a.generation },
      target: { region: cmd.region, provider: cmd.provider, generation },
      maxDowntimeMs: cmd.maxDowntimeMs ?? null,
      ...(cmd.purpose === undefined ? {} : { purpose: cmd.purpose }),
      phase: 'prepare',
      facts: {},
      reason: null,
      result: null,
      startedAt: cmd.at,
      updatedAt: cmd.at,
      endedAt: null,
    };
    this.#track(m);
    return { ok: true, kind: 'migration-start', vm: vm.name, region: cmd.region, generation, migration: id };
  }

  /** Records an active migration: the indexes and its reservation (the caller checked that it fits). */
  #track(m: FleetMigration): void {
    const vm = this.#vms.get(m.vm);
    invariant(vm !== undefined, () => `fleet: migration ${m.id} names ${m.vm}, which has no record`);
    const at = reservedAt(m);
    this.#ledger.reserve(at.region, at.provider, demandOf(vm.spec));
    this.#migrations.set(m.id, m);
    this.#migrationOfVm.set(m.vm, m.id);
    for (const region of new Set([m.source.region, m.target.region])) {
      let ids = this.#migrationsByRegion.get(region);
      if (ids === undefined) this.#migrationsByRegion.set(region, (ids = new Set()));
      ids.add(m.id);
    }
  }

  #cutover(id: string, facts: MigrationFacts | undefined, at: number): FleetResult {
    const m = this.#activeMigration(id);
    if ('code' in m) return m;
    // A repeat from a coordinator that did not hear the first answer.
    if (isCutOver(m.phase)) return { ok: true, kind: 'migration-cutover', vm: m.vm, region: m.target.region, generation: m.target.generation, migration: m.id };
    if (m.phase !== 'cutover') return reject('migration_phase', `${m.id} (${m.vm}) is in ${m.phase}; it cuts over only from the cutover phase`);
    const vm = this.#vms.get(m.vm);
    invariant(vm !== undefined && !vm.deleted && vm.assignment !== null, () => `fleet: migration ${m.id} of ${m.vm} is under way but the VM is not live and assigned`);
    const from = vm.assignment;
    invariant(from.region === m.source.region && from.provider === m.source.provider && from.generation === m.source.generation, () => `fleet: ${m.vm} moved while migration ${m.id} was under way`);
    const found = this.#provider(m.target.region, m.target.provider);
    invariant(!('code' in found), () => `fleet: the target of migration ${m.id} is no longer registered`);
    // The target may have been re-declared (labels, jurisdiction) or the policy changed since the start.
    const refused = this.#choiceRefusal(vm, found.region, found.provider, m.purpose ?? 'migrate');
    if (refused !== null) return refused;
    // The ledger's sums do not move: the target's reservation becomes the assignment, the source's assignment the reservation.
    this.#count(vm.spec, from.region, -1);
    this.#index(vm.name, from.region, -1);
    this.#index(vm.name, m.target.region, +1);
    this.#count(vm.spec, m.target.region, +1);
    vm.assignment = { region: m.target.region, provider: m.target.provider, generation: m.target.generation };
    // Failed back (or moved on by an operator): no longer where the failover put it.
    if (vm.protection?.failedOver != null) vm.protection = { ...vm.protection, failedOver: null };
    this.#migrations.set(m.id, { ...m, phase: 'verify', facts: mergeFacts(m.facts, facts), updatedAt: at });
    return { ok: true, kind: 'migration-cutover', vm: vm.name, region: m.target.region, generation: m.target.generation, migration: m.id };
  }

  /** Ends a migration: releases its reservation, drops it from the indexes and keeps it in the history. */
  #endMigration(m: FleetMigration, result: MigrationResult, reason: string | null, facts: MigrationFacts, at: number): void {
    const vm = this.#vms.get(m.vm);
    invariant(vm !== undefined, () => `fleet: migration ${m.id} names ${m.vm}, which has no record`);
    const held = reservedAt(m);
    this.#ledger.release(held.region, held.provider, demandOf(vm.spec));
    this.#migrations.delete(m.id);
    this.#migrationOfVm.delete(m.vm);
    for (const region of new Set([m.source.region, m.target.region])) {
      const ids = this.#migrationsByRegion.get(region);
      ids?.delete(m.id);
      if (ids?.size === 0) this.#migrationsByRegion.delete(region);
    }
    this.#history.push({ ...m, result, reason, facts, updatedAt: at, endedAt: at });
    if (this.#history.length > MIGRATION_HISTORY) this.#history.shift();
  }

  #index(name: string, region: string, delta: 1 | -1): void {
    let names = this.#byRegion.get(region);
    if (delta === 1) {
      if (names === undefined) {
        names = new Set();
        this.#byRegion.set(region, names);
      }
      names.add(name);
      return;
    }
    invariant(names?.delete(name) === true, () => `fleet: ${name} was not in the region index of ${region}`);
    if (names.size === 0) this.#byRegion.delete(region);
  }

  #count(spec: FleetVmSpec, region: string, delta: 1 | -1): void {
    const { antiAffinityGroup, spreadGroup } = spec.constraints;
    if (antiAffinityGroup !== undefined) this.#bump('anti-affinity', antiAffinityGroup, region, delta);
    if (spreadGroup !== undefined) this.#bump('spread', spreadGroup, region, delta);
  }

  #bump(kind: FleetGroupKind, group: string, region: string, delta: 1 | -1): void {
    const groups = this.#groups[kind];
    let regions = groups.get(group);
    if (regions === undefined) {
      regions = new Map();
      groups.set(group, regions);
    }
    const next = (regions.get(region) ?? 0) + delta;
    invariant(next >= 0, () => `fleet: ${kind} group ${group} count in ${region} went negative`);
    if (next === 0) regions.delete(region);
    else regions.set(region, next);
    if (regions.size === 0) groups.delete(group);
  }

  // Snapshots.

  snapshot(): Uint8Array {
    const regions = [...this.#declarations.keys()].sort().map((name) => this.#declarations.get(name));
    // protection only when set: a fleet without DR snapshots as it did before DR existed.
    const vms = [...this.#vms.keys()].sort().map((name) => {
      const vm = this.#vms.get(name) as MutableVm;
      return vm.protection === null ? { ...vm, protection: undefined } : vm;
    });
    // The policy and migrations fields only once set: a fleet without them snapshots as it did before they existed.
    const policy = this.#policy.version === 0 ? undefined : { version: this.#policy.version, policies: this.#policy.policies };
    const migrations = this.#nextMigration === 1 ? undefined : { next: this.#nextMigration, active: this.migrations(), history: this.#history };
    const budgets = this.#budgets.size === 0 ? undefined : this.budgets().map((b) => ({ spec: b.spec, spentMonth: b.spentMonth }));
    const burstGroups = this.#burstGroups.size === 0 ? undefined : this.burstGroups();
    const body = new TextEncoder().encode(canonicalJson({ limits: this.limits, regions, vms, policy, migrations, budgets, burstGroups }));
    const bytes = new Uint8Array(FLEET_SNAPSHOT_MAGIC.byteLength + body.byteLength);
    bytes.set(FLEET_SNAPSHOT_MAGIC, 0);
    bytes.set(body, FLEET_SNAPSHOT_MAGIC.byteLength);
    return bytes;
  }

  /** Throws FleetSnapshotError naming what is wrong with `bytes`. */
  static restore(bytes: Uint8Array): FleetStateMachine {
    for (let i = 0; i < FLEET_SNAPSHOT_MAGIC.byteLength; i++) {
      if (bytes[i] !== FLEET_SNAPSHOT_MAGIC[i]) throw new FleetSnapshotError('does not start with the fleet snapshot magic 00 66 6c 73 01');
    }
    let raw: unknown;
    try {
      raw = JSON.parse(new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes.subarray(FLEET_SNAPSHOT_MAGIC.byteLength)));
    } catch (err) {
      throw new FleetSnapshotError(`is not UTF-8 JSON (${err instanceof Error ? err.message : String(err)})`);
    }
    const parsed = SnapshotSchema.safeParse(raw, { reportInput: true });
    if (!parsed.success) throw new FleetSnapshotError(parsed.error.issues.map((issue) => formatIssue(issue, (path) => pathString(['snapshot', ...path]))).join('; '));
    const { limits, regions, vms, policy, migrations, budgets, burstGroups } = parsed.data;
    const machine = new FleetStateMachine(limits);
    if (policy !== undefined) {
      try {
        machine.#policy = Object.freeze({ version: policy.version, policies: normalisePolicies(policy.policies), evaluator: compilePolicySet({ version: policy.version, policies: normalisePolicies(policy.policies) }) });
      } catch (err) {
        if (err instanceof PolicyCompileError) throw new FleetSnapshotError(`policy version ${policy.version}: ${err.message}`);
        throw err;
      }
    }
    if (regions.length > limits.maxRegions || vms.length > limits.maxVms) throw new FleetSnapshotError(`holds ${regions.length} regions and ${vms.length} VMs, above its own limits`);
    for (const region of regions) {
      const result = machine.#registerRegion(parseFleetCommand(region) as RegisterRegionCommand);
      if (!result.ok) throw new FleetSnapshotError(`region ${region.region}: ${result.message}`);
    }
    let previous = '';
    for (const record of vms) {
      if (record.name <= previous) throw new FleetSnapshotError(`VM ${record.name} is out of order or repeated`);
      previous = record.name;
      if (record.spec.name !== record.name) throw new FleetSnapshotError(`VM ${record.name} holds the spec of ${record.spec.name}`);
      const spec = normaliseSpec(record.spec);
      const vm: MutableVm = { name: record.name, spec, power: record.power, assignment: null, generation: record.generation, deleted: record.deleted, protection: record.protection ?? null };
      const f = vm.protection?.failedOver ?? null;
      if (f !== null && (record.assignment?.region !== vm.protection?.drRegion || record.assignment?.generation !== f.generation)) throw new FleetSnapshotError(`VM ${record.name} is recorded failed over at generation ${f.generation} but is assigned elsewhere`);
      if (record.assignment !== null) {
        if (record.assignment.generation > record.generation) throw new FleetSnapshotError(`VM ${record.name} is assigned at generation ${record.assignment.generation}, above its generation ${record.generation}`);
        vm.assignment = { ...record.assignment };
        machine.#index(record.name, record.assignment.region, +1);
        if (!record.deleted) {
          const { region, provider } = record.assignment;
          if (!machine.#ledger.has(region, provider)) throw new FleetSnapshotError(`VM ${record.name} is assigned to ${region}/${provider}, which is not registered`);
          const short = machine.#ledger.check(region, provider, demandOf(spec));
          if (short !== null) throw new FleetSnapshotError(`VM ${record.name} over-commits ${region}/${provider}: ${describeShortfall(short)}`);
          machine.#ledger.reserve(region, provider, demandOf(spec));
          machine.#count(spec, region, +1);
        }
      }
      machine.#vms.set(record.name, vm);
      if (vm.protection !== null && !vm.deleted) machine.#protected.add(vm.name);
    }
    if (migrations !== undefined) machine.#restoreMigrations(migrations);
    for (const b of budgets ?? []) {
      if (machine.#budgets.has(b.spec.name)) throw new FleetSnapshotError(`budget ${b.spec.name} is listed twice`);
      machine.#budgets.set(b.spec.name, { spec: b.spec, spentMonth: b.spentMonth });
    }
    for (const g of burstGroups ?? []) {
      if (machine.#burstGroups.has(g.name)) throw new FleetSnapshotError(`burst group ${g.name} is listed twice`);
      machine.#burstGroups.set(g.name, g);
    }
    return machine;
  }

  /** Rebuilds the migrations of a snapshot, checking each against the VMs and the ledger. */
  #restoreMigrations(snapshot: { next: number; active: FleetMigration[]; history: FleetMigration[] }): void {
    const ids = new Set<string>();
    for (const m of [...snapshot.active, ...snapshot.history]) {
      if (ids.has(m.id)) throw new FleetSnapshotError(`migration ${m.id} is listed twice`);
      ids.add(m.id);
      if (migrationNumber(m.id) >= snapshot.next) throw new FleetSnapshotError(`migration ${m.id} is not below the next id m${snapshot.next}`);
      if ((m.result === null) !== snapshot.active.includes(m)) throw new FleetSnapshotError(`migration ${m.id} is ${m.result === null ? 'unended in the history' : 'ended among the active ones'}`);
    }
    if (snapshot.history.length > MIGRATION_HISTORY) throw new FleetSnapshotError(`holds ${snapshot.history.length} ended migrations, above ${MIGRATION_HISTORY}`);
    for (const m of snapshot.active) {
      const vm = this.#vms.get(m.vm);
      if (vm === undefined || vm.deleted || vm.assignment === null) throw new FleetSnapshotError(`migration ${m.id} names ${m.vm}, which is not a live assigned VM`);
      if (this.#migrationOfVm.has(m.vm)) throw new FleetSnapshotError(`${m.vm} has two migrations under way`);
      const assignedAt = isCutOver(m.phase) ? m.target : m.source;
      const a = vm.assignment;
      if (a.region !== assignedAt.region || a.provider !== assignedAt.provider || a.generation !== assignedAt.generation || vm.generation < m.target.generation) {
        throw new FleetSnapshotError(`migration ${m.id} (${m.phase}) does not match ${m.vm}'s assignment ${a.region}/${a.provider} at generation ${a.generation}`);
      }
      const held = reservedAt(m);
      if (!this.#ledger.has(held.region, held.provider)) throw new FleetSnapshotError(`migration ${m.id} reserves on ${held.region}/${held.provider}, which is not registered`);
      const short = this.#ledger.check(held.region, held.provider, demandOf(vm.spec));
      if (short !== null) throw new FleetSnapshotError(`migration ${m.id} over-commits ${held.region}/${held.provider}: ${describeShortfall(short)}`);
      this.#track(m);
    }
    this.#history = [...snapshot.history];
    this.#nextMigration = snapshot.next;
  }
}

export class FleetSnapshotError extends DwcpError<'corrupt'> {
  constructor(problem: string) {
    super('corrupt', `fleet snapshot ${problem}`);
  }
}

const SnapshotVmSchema = z.strictObject({
  name: fleetName,
  spec: FleetVmSpecSchema,
  power: z.enum(POWER_STATES),
  assignment: z.strictObject({ region: fleetName, provider: fleetName, generation: z.number().int().min(1).max(FLEET_MAX_GENERATION) }).nullable(),
  generation: z.number().int().min(0).max(FLEET_MAX_GENERATION),
  deleted: z.boolean(),
  /** Absent in snapshots written before DR existed, and for unprotected VMs. */
  protection: FleetProtectionSchema.optional(),
});

const SnapshotSchema = z.strictObject({
  limits: z.strictObject({ maxVms: z.number().int().min(1), maxRegions: z.number().int().min(1) }),
  regions: z.array(FleetCommandSchema.refine((c) => c.kind === 'register-region', { message: 'a register-region declaration' })).transform((list) => list as RegisterRegionCommand[]),
  vms: z.array(SnapshotVmSchema),
  policy: z.strictObject({ version: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER), policies: PoliciesSchema }).optional(),
  /** Absent in snapshots written before migrations existed. */
  migrations: z
    .strictObject({
      next: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
      active: z.array(FleetMigrationSchema),
      history: z.array(FleetMigrationSchema),
    })
    .optional(),
  /** Absent in snapshots written before budgets existed, or with none. */
  budgets: z.array(z.strictObject({ spec: BudgetSpecSchema, spentMonth: z.string().nullable() })).max(MAX_BUDGETS).optional(),
  /** Absent in snapshots written before burst groups existed, or with none. */
  burstGroups: z.array(BurstGroupSpecSchema).max(MAX_BURST_GROUPS).optional(),
});

/** Facts of a migration with the given ones replacing what was recorded. */
function mergeFacts(recorded: MigrationFacts, given: MigrationFacts | undefined): MigrationFacts {
  return given === undefined ? recorded : { ...recorded, ...given };
}
