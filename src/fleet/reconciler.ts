/**
 * The per-region reconciler as a pure core: given this region's name, the
 * desired state (the fleet log's state machine, through DesiredFleetView),
 * this region's observed provider inventory, the reconciler's own memory
 * (failures and back-off per VM and per copy, the status last reported),
 * the outcomes of actions that finished since the last pass, which actions
 * are still in flight, and the time, it returns the actions that move the
 * region toward desired state, and its updated memory. A driver runs the
 * actions against the providers and the log; a simulator runs them against
 * simulated ones.
 *
 * Invariants (each one a rule of `reconcile`):
 * - Level-triggered and deterministic: the same input gives the same actions
 *   in the same order (VMs by name, copies by provider then id), whatever
 *   happened before; the memory is an input, not hidden state.
 * - Nothing is duplicated: an action whose key (actionKey) is in flight is
 *   not emitted again, and a copy with an operation in flight gets no other.
 * - Fencing first. A copy here is *current* only when desired state assigns
 *   its VM to exactly (this region, its provider, its generation) and the VM
 *   is not deleted. Every other managed copy of a known VM is *stale* (its
 *   assignment moved to another region or provider, to a newer generation,
 *   or - when the copy's generation is newer than this region's view - the
 *   view is behind: a region runs only the generation it holds). A stale
 *   copy is stopped (terminated when pending: a pending instance cannot be
 *   stopped), then terminated; while any stale copy of a VM is not yet
 *   stopped, no create or start is emitted for that VM. A deleted VM's copies
 *   are terminated.
 * - A region never starts or creates a copy at a generation it does not hold:
 *   start and create are only emitted for the current assignment, with one
 *   exception that is never started: the incoming copy of a migration.
 * - Migrations (migrations.ts). While a migration of VM v into this region is
 *   in prepare, transfer or cutover, a managed copy of v here at the
 *   migration's target provider and generation, tagged dwcp-migration=<id>,
 *   is *incoming*: it is neither current nor stale, so it is not fenced and
 *   not started; if there is none, it is created prepared and not booted
 *   (create with `incoming`, the provider leaves it stopped). Once the
 *   migration cuts over, that copy is simply the current one (same region,
 *   provider, generation) and is started like any other; once it rolls back
 *   or ends without cutover, it is stale and fenced (reason `migration`): the
 *   target's teardown. In the source region, while the migration has not
 *   cut over, the current copy's power belongs to the migration: nothing is
 *   started, stopped toward desired power or created for that VM (the
 *   coordinator stops and resumes it); after cutover it is stale here and
 *   fenced like any reassigned copy: that is the source's clean-up.
 * - Failures back off exponentially (base × 2^(n-1), capped), with time as
 *   input. After maxAttempts failed creates/starts for one assignment the VM
 *   is reported failed with the provider's last reason and never retried for
 *   that generation (a new assignment starts afresh); after maxAttempts
 *   failed creates of a migration's incoming copy the target refuses the
 *   migration (it rolls back with that reason). Fencing operations are
 *   never given up (safety first): they retry at the capped back-off forever.
 * - Managed copies (tag managed-by=dwcp) with no desired VM are reported as
 *   orphans every pass and never touched. Unmanaged instances are ignored.
 * - With options.lease (ReconcilerLease): a region whose view of the log is
 *   older than leaseMs stops its copies and starts nothing, and a VM whose
 *   generation is above 1 is started only handoffMs after the region first
 *   saw that generation; with a watchdog at the provider for a crashed
 *   daemon, never two running copies even across partitions. Without it, a
 *   cut-off region keeps running what it has (availability first).
 * - With options.dr (ReconcilerDrFence), the same for protected VMs only:
 *   a region cut off from the log longer than fenceAfterMs stops their
 *   copies (fence reason self-fence) and starts none; a failed-over copy
 *   starts only fenceHoldMs after the region first saw the failover.
 * - A daemon that has not yet proven its view of the log current since it
 *   started (input.logConfirmed false) changes nothing but self-fencing: a
 *   restart must neither fence a copy on a half-replayed state nor start one
 *   a failover it missed made stale.
 * - Memory stays bounded by the region's VMs and copies: entries for VMs and
 *   copies that are gone are dropped each pass.
 */
import { createHash } from 'node:crypto';
import { CREATE_TOKEN_TAG, MANAGED_BY_TAG } from '../cloud/config.ts';
import { INSTANCE_STATES, type InstanceState } from '../cloud/provider.ts';
import type { PowerState } from './commands.ts';
import { DESIRED_VM_TAG } from './observed.ts';
import { MIGRATION_TAG, wantsIncomingCopy, type FleetMigration, type MigrationMode } from './migrations.ts';
import { DR_TEST_LABEL, type BackupRecord, type FleetProtection } from './protection.ts';
import type { FleetVmSpec } from './spec.ts';
import type { FleetState, FleetVm } from './state-machine.ts';

/**
 * Tags the reconciler puts on every copy it creates, and reads back from
 * inventory: the cloud layer's managed-by and create-token tags, the
 * observed records' desired-VM tag, and the assignment generation.
 */
export { CREATE_TOKEN_TAG, DESIRED_VM_TAG, MANAGED_BY_TAG, MIGRATION_TAG };
export const MANAGED_BY_VALUE = 'dwcp';
export const GENERATION_TAG = 'dwcp-generation';

/** The cloud layer's normalised states. */
export const OBSERVED_VM_STATES = INSTANCE_STATES;
export type ObservedVmState = InstanceState;

/** One instance of this region's provider inventory, as the reconciler needs it. */
export interface ObservedVm {
  readonly provider: string;
  readonly id: string;
  /** The provider's display name. */
  readonly name: string;
  readonly state: ObservedVmState;
  /** Carries managed-by=dwcp: dwcp created it, so it belongs to some desired VM or is an orphan. */
  readonly managed: boolean;
  /** The desired VM this copy belongs to (tag dwcp-vm). */
  readonly vmName?: string;
  /** The assignment generation it was created for (tag dwcp-generation). */
  readonly generation?: number;
  /** The migration it was created for, as an incoming copy (tag dwcp-migration). */
  readonly migration?: string;
}

/** Reads an ObservedVm's fleet fields from provider tags; a malformed generation reads as absent (the copy is then stale). */
export function observedFromTags(base: { provider: string; id: string; name: string; state: ObservedVmState }, tags: Readonly<Record<string, string>>): ObservedVm {
  const generationText = tags[GENERATION_TAG];
  const generation = generationText !== undefined && /^[1-9][0-9]{0,15}$/.test(generationText) ? Number(generationText) : undefined;
  const vmName = tags[DESIRED_VM_TAG];
  const migration = tags[MIGRATION_TAG];
  return {
    ...base,
    managed: tags[MANAGED_BY_TAG] === MANAGED_BY_VALUE,
    ...(vmName === undefined ? {} : { vmName }),
    ...(generation === undefined ? {} : { generation }),
    ...(migration === undefined ? {} : { migration }),
  };
}

/**
 * What the reconciler reads of desired state: a VM by name, the VMs
 * (tombstones included) assigned to this region, from the state machine's
 * per-region index, and the migrations under way (of a VM, and into this
 * region). FleetStateMachine is one; a partitioned region's frozen view in
 * the simulator is another.
 */
export type DesiredFleetView = Pick<FleetState, 'vm' | 'vmsAssignedTo' | 'migrationOf' | 'migrationsInto'>;

/** The idempotency token of the create for (VM name, generation): a retry, by this or a restarted daemon, launches nothing new. */
export function createToken(vmName: string, generation: number): string {
  // 37 characters whatever the name's length: EC2's ClientToken allows 64, GCE's requestId wants a UUID-sized string.
  return `dwcp-${createHash('sha256').update(`${vmName}\u0000${generation}`).digest('hex').slice(0, 32)}`;
}

/** The tags of a copy created for (VM, generation), and for a migration's incoming copy its id. */
export function copyTags(vmName: string, generation: number, migration?: string): Readonly<Record<string, string>> {
  return {
    [MANAGED_BY_TAG]: MANAGED_BY_VALUE,
    [DESIRED_VM_TAG]: vmName,
    [GENERATION_TAG]: String(generation),
    [CREATE_TOKEN_TAG]: createToken(vmName, generation),
    ...(migration === undefined ? {} : { [MIGRATION_TAG]: migration }),
  };
}

/** Why a copy is being stopped or terminated. */
export type FenceReason =
  /** Its VM is assigned to another region or provider now. */
  | 'reassigned'
  /** Its generation is not the one this region holds for the VM. */
  | 'stale-generation'
  /** Another copy of the same (VM, generation) is kept. */
  | 'duplicate'
  /** The VM is deleted. */
  | 'deleted'
  /** This region has not seen the log for longer than its lease: it stops what it runs (options.lease). */
  | 'lease-expired'
  /** An incoming copy of a migration that rolled back or ended without cutover. */
  | 'migration'
  /** A protected VM's copy in a region that lost the log for longer than options.dr.fenceAfterMs (DR self-fencing). */
  | 'self-fence';

export type VmStatus = 'pending' | 'running' | 'stopped' | 'failed';

export type ReconcileAction =
  | {
      readonly kind: 'create';
      readonly provider: string;
      readonly vm: string;
      readonly spec: FleetVmSpec;
      readonly generation: number;
      readonly token: string;
      readonly tags: Readonly<Record<string, string>>;
      /** A migration's incoming copy: created prepared and not booted (the provider leaves it stopped). */
      readonly incoming?: string;
      /** With `incoming`: the migration's mode (a qemu destination waits for a live stream with a QEMU, takes a cold or warm one as a disk). */
      readonly incomingMode?: MigrationMode;
      /** A failed-over copy: the backup it starts from (the one the failover recorded). */
      readonly restore?: BackupRecord;
    }
  | { readonly kind: 'start'; readonly provider: string; readonly id: string; readonly vm: string; readonly generation: number }
  /** `fence`: set when the copy is stale (the stop comes before anything else for its VM); absent for a stop to desired power. */
  | { readonly kind: 'stop'; readonly provider: string; readonly id: string; readonly vm: string; readonly generation: number; readonly fence?: FenceReason }
  /** `generation`: the copy's (0 when it carries none). */
  | { readonly kind: 'terminate'; readonly provider: string; readonly id: string; readonly vm: string; readonly generation: number; readonly reason: FenceReason; readonly detail: string }
  /** Observed status for the fleet's observed state; emitted when it changes. `reason`: the provider's, for failed. */
  | { readonly kind: 'status'; readonly vm: string; readonly generation: number; readonly status: VmStatus; readonly reason?: string }
  /**
   * A migration into this region whose incoming copy could not be created
   * (maxAttempts creates failed, `reason` the provider's last): the target
   * rolls it back instead of leaving the coordinator to wait out its prepare
   * timeout. Emitted every pass while the migration is in prepare.
   */
  | { readonly kind: 'refuse-migration'; readonly vm: string; readonly migration: string; readonly reason: string }
  /** A managed copy with no desired VM: reported every pass, never deleted. */
  | { readonly kind: 'orphan'; readonly provider: string; readonly id: string; readonly name: string; readonly state: ObservedVmState; readonly vmName?: string; readonly generation?: number };

export type ReconcileActionKind = ReconcileAction['kind'];

/**
 * The in-flight key of an action: one create per (VM, generation), one
 * operation per copy. Reports have no key (they are not in flight).
 */
export function actionKey(action: ReconcileAction): string | null {
  switch (action.kind) {
    case 'create':
      return `create/${action.vm}/${action.generation}`;
    case 'start':
    case 'stop':
    case 'terminate':
      return copyKey(action.provider, action.id);
    case 'status':
    case 'refuse-migration':
    case 'orphan':
      return null;
  }
}

export function copyKey(provider: string, id: string): string {
  return `copy/${provider}/${id}`;
}

/** The memory key an action's failures count under: per VM for create/start/stop-to-power (per incoming VM for a migration's copy), per copy for fencing. */
export function attemptKey(action: ReconcileAction): string | null {
  switch (action.kind) {
    case 'create':
      return action.incoming === undefined ? `vm/${action.vm}` : `in/${action.vm}`;
    case 'start':
      return `vm/${action.vm}`;
    case 'stop':
      return action.fence === undefined ? `vm/${action.vm}` : copyKey(action.provider, action.id);
    case 'terminate':
      return copyKey(action.provider, action.id);
    case 'status':
    case 'refuse-migration':
    case 'orphan':
      return null;
  }
}

/** Failures and back-off for one key. */
export interface AttemptRecord {
  /** The generation the failures count for: a new assignment starts afresh. For copies, the copy's. */
  readonly generation: number;
  readonly failures: number;
  readonly lastError: string;
  /** No retry before this time. */
  readonly retryAt: number;
  /** Given up (creates and starts of a VM, creates of an incoming copy): reported failed, or the migration refused, with lastError. */
  readonly failed: boolean;
}

export interface ReconcilerMemory {
  readonly attempts: ReadonlyMap<string, AttemptRecord>;
  /** The status last reported per VM, `${status}@${generation}[:reason]`, so reports are sent on change only. */
  readonly reported: ReadonlyMap<string, string>;
  /** When this region first saw each VM's current generation (options.lease: the handoff wait starts there). */
  readonly firstSeen: ReadonlyMap<string, { readonly generation: number; readonly at: number; readonly migrated?: boolean }>;
}

export const EMPTY_RECONCILER_MEMORY: ReconcilerMemory = { attempts: new Map(), reported: new Map(), firstSeen: new Map() };

/** The result of an action the driver ran: ok, or the provider's reason. */
export interface ActionOutcome {
  readonly action: ReconcileAction;
  readonly ok: boolean;
  /** The provider's reason when not ok (`InsufficientInstanceCapacity: ...`). */
  readonly error?: string;
  /** When it finished. */
  readonly at: number;
}

export interface ReconcilerOptions {
  /** Failed creates/starts of one assignment before the VM is marked failed. */
  readonly maxAttempts: number;
  readonly backoffBaseMs: number;
  readonly backoffCapMs: number;
  /** Optional lease fencing; without it a region that cannot see the log keeps running what it has. */
  readonly lease?: ReconcilerLease;
  /** DR self-fencing of protected VMs (src/dr/): always on in the daemon. */
  readonly dr?: ReconcilerDrFence;
}

/**
 * DR self-fencing, for protected VMs only (src/fleet/protection.ts). A
 * region whose view of the log is older than fenceAfterMs stops the copies
 * of its protected VMs and starts none (it cannot know whether they were
 * failed over meanwhile); a failed-over VM (its assignment is the one a
 * failover made) is started at the DR region only fenceHoldMs after this
 * region first saw that generation (any generation above 1 that did not
 * come by migration: an operator's reassignment of a protected VM away from
 * a cut-off region is held the same way). With fenceHoldMs above fenceAfterMs
 * plus a pass and a stop, the lost region has stopped its copy, by the log
 * or by this rule, before the DR copy starts: never two running copies of
 * a protected VM, partitions included (a crashed daemon's guests need the
 * per-guest lease watchdog for the same).
 */
export interface ReconcilerDrFence {
  readonly fenceAfterMs: number;
  readonly fenceHoldMs: number;
}

/**
 * Lease fencing, for the copy a region cannot be told to stop. A region whose
 * view of the log is older than leaseMs stops every copy it runs and starts
 * nothing (a crashed daemon's copies need the same from a watchdog at the
 * provider); a region that holds a generation above 1 (the VM had a holder
 * before, perhaps unreachable) starts it only handoffMs after it first saw
 * that generation. With handoffMs above leaseMs plus the time a pass and a
 * stop take, the old holder has stopped its copy, by the log or by its lease,
 * before the new one starts: never two running copies, at the price of
 * stopping a cut-off region's VMs after leaseMs and delaying a moved VM's start.
 */
export interface ReconcilerLease {
  readonly leaseMs: number;
  readonly handoffMs: number;
}

export const DEFAULT_RECONCILER_OPTIONS: ReconcilerOptions = { maxAttempts: 5, backoffBaseMs: 1_000, backoffCapMs: 60_000 };

export interface ReconcileInput {
  readonly region: string;
  readonly desired: DesiredFleetView;
  /** This region's inventory, every provider's instances. */
  readonly observed: readonly ObservedVm[];
  readonly memory: ReconcilerMemory;
  /** Outcomes that arrived since the last pass (folded into memory first). */
  readonly outcomes?: readonly ActionOutcome[];
  /** Keys (actionKey) of actions still running. */
  readonly inFlight: ReadonlySet<string>;
  readonly now: number;
  readonly options?: ReconcilerOptions;
  /** When this region's view of the log was last known current (options.lease); `now` when absent. */
  readonly logSeenAt?: number;
  /**
   * Whether this region's view of the log was proven current since its
   * daemon started: until then the pass emits no create, start, stop or
   * terminate (its desired state may be mid-replay, or predate a failover
   * it missed), only reports and self-fencing. Absent: true.
   */
  readonly logConfirmed?: boolean;
}

export interface ReconcileResult {
  readonly actions: readonly ReconcileAction[];
  readonly memory: ReconcilerMemory;
  /**
   * The earliest time a create or start held back now is due (a hold or
   * handoff ends, a back-off runs out); Infinity when none waits. The driver
   * passes again then rather than at its next interval: a failed-over copy
   * is created when its hold ends, not up to an interval later (RTO).
   */
  readonly wakeAt: number;
}

/** The back-off after `failures` consecutive failures. */
export function backoffMs(failures: number, options: ReconcilerOptions): number {
  if (failures <= 0) return 0;
  // 2^30 × any sane base is past every cap; bounding the exponent keeps the number finite.
  return Math.min(options.backoffCapMs, options.backoffBaseMs * 2 ** Math.min(failures - 1, 30));
}

function generationOf(action: ReconcileAction): number {
  return 'generation' in action ? (action.generation ?? 0) : 0;
}

/** Folds finished actions into the attempt records: success clears, failure counts and backs off. */
export function recordOutcomes(memory: ReconcilerMemory, outcomes: readonly ActionOutcome[], options: ReconcilerOptions = DEFAULT_RECONCILER_OPTIONS): ReconcilerMemory {
  if (outcomes.length === 0) return memory;
  const attempts = new Map(memory.attempts);
  for (const outcome of outcomes) {
    const key = attemptKey(outcome.action);
    if (key === null) continue;
    const generation = generationOf(outcome.action);
    if (outcome.ok) {
      // A late success of an older generation's action says nothing about the current one.
      const record = attempts.get(key);
      if (record === undefined || record.generation === generation) attempts.delete(key);
      continue;
    }
    const previous = attempts.get(key);
    const failures = previous !== undefined && previous.generation === generation ? previous.failures + 1 : 1;
    // Creates and starts count per VM (vm/) or per incoming copy (in/); fencing (per copy) is never given up.
    const givesUp = (outcome.action.kind === 'create' || outcome.action.kind === 'start') && failures >= options.maxAttempts;
    attempts.set(key, {
      generation,
      failures,
      lastError: outcome.error ?? 'the provider gave no reason',
      retryAt: outcome.at + backoffMs(failures, options),
      failed: givesUp || (previous?.failed === true && previous.generation === generation),
    });
  }
  return { attempts, reported: memory.reported, firstSeen: memory.firstSeen };
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function compareCopies(a: ObservedVm, b: ObservedVm): number {
  return compareText(a.provider, b.provider) || compareText(a.id, b.id);
}

/** Live states: terminated copies are gone and count for nothing. */
function isLive(copy: ObservedVm): boolean {
  return copy.state !== 'terminated';
}

/** Could be running or about to: what fencing must bring down before anything else happens to the VM. */
function mayRun(copy: ObservedVm): boolean {
  return copy.state === 'running' || copy.state === 'pending' || copy.state === 'stopping';
}

/** Whether this copy is the incoming copy of `migration` in `region`, wanted and left alone (neither current nor stale). */
export function isIncomingCopy(region: string, migration: FleetMigration | undefined, copy: ObservedVm): boolean {
  if (migration === undefined || !wantsIncomingCopy(migration.phase)) return false;
  const t = migration.target;
  return t.region === region && t.provider === copy.provider && copy.generation === t.generation && copy.migration === migration.id;
}

/** Whether desired state holds this copy as the VM's current one in `region`. */
export function isCurrentCopy(region: string, vm: FleetVm | undefined, copy: ObservedVm): boolean {
  if (vm === undefined || vm.deleted || vm.assignment === null) return false;
  const a = vm.assignment;
  return a.region === region && a.provider === copy.provider && copy.generation === a.generation;
}

function staleReason(region: string, vm: FleetVm, migration: FleetMigration | undefined, copy: ObservedVm): { reason: FenceReason; detail: string } {
  if (vm.deleted) return { reason: 'deleted', detail: `${vm.name} is deleted` };
  const a = vm.assignment;
  const held = copy.generation === undefined ? 'no generation tag' : `generation ${copy.generation}`;
  if (copy.migration !== undefined) {
    const why = migration?.id === copy.migration ? `is ${migration.phase}` : 'ended without cutting over';
    return { reason: 'migration', detail: `the incoming copy of ${vm.name} for migration ${copy.migration}, which ${why} (this copy has ${held})` };
  }
  if (a === null) return { reason: 'stale-generation', detail: `${vm.name} is not assigned (this copy has ${held})` };
  if (a.region !== region || a.provider !== copy.provider) {
    return { reason: 'reassigned', detail: `${vm.name} is assigned to ${a.region}/${a.provider} at generation ${a.generation} (this copy has ${held})` };
  }
  return { reason: 'stale-generation', detail: `${vm.name} is at generation ${a.generation} here (this copy has ${held})` };
}

/**
 * One pass. Order of the returned actions: orphans (by copy), then per VM by
 * name: its fencing actions first, then create/start/stop, then its status.
 */
export function reconcile(input: ReconcileInput): ReconcileResult {
  const { region, desired, now, inFlight } = input;
  const options = input.options ?? DEFAULT_RECONCILER_OPTIONS;
  const memory = recordOutcomes(input.memory, input.outcomes ?? [], options);
  const attempts = new Map(memory.attempts);
  const reported = new Map(memory.reported);
  const firstSeen = new Map(memory.firstSeen);
  const lease = options.lease;
  const leaseExpired = lease !== undefined && now - (input.logSeenAt ?? now) > lease.leaseMs;
  const drFence = options.dr;
  const cutOff = drFence !== undefined && now - (input.logSeenAt ?? now) > drFence.fenceAfterMs;
  const actions: ReconcileAction[] = [];
  let wakeAt = Number.POSITIVE_INFINITY;

  // Copies by VM; orphans straight out.
  const copiesOf = new Map<string, ObservedVm[]>();
  const observed = [...input.observed].filter((c) => c.managed && isLive(c)).sort(compareCopies);
  for (const copy of observed) {
    const vm = copy.vmName === undefined ? undefined : desired.vm(copy.vmName);
    if (vm === undefined || copy.vmName === undefined) {
      actions.push({
        kind: 'orphan',
        provider: copy.provider,
        id: copy.id,
        name: copy.name,
        state: copy.state,
        ...(copy.vmName === undefined ? {} : { vmName: copy.vmName }),
        ...(copy.generation === undefined ? {} : { generation: copy.generation }),
      });
      continue;
    }
    let list = copiesOf.get(vm.name);
    if (list === undefined) copiesOf.set(vm.name, (list = []));
    list.push(copy);
  }

  const assignedHere = new Map<string, FleetVm>();
  for (const vm of desired.vmsAssignedTo(region)) assignedHere.set(vm.name, vm);
  const incomingHere = desired.migrationsInto(region).filter((m) => wantsIncomingCopy(m.phase));
  const names = new Set<string>([...copiesOf.keys(), ...assignedHere.keys(), ...incomingHere.map((m) => m.vm)]);
  const liveKeys = new Set<string>();

  for (const name of [...names].sort(compareText)) {
    const vm = assignedHere.get(name) ?? desired.vm(name);
    if (vm === undefined) continue;
    const copies = copiesOf.get(name) ?? [];
    const migration = desired.migrationOf(name);
    const current: ObservedVm[] = [];
    const incoming: ObservedVm[] = [];
    let fencing = false;

    // 1. Fencing: every stale copy comes down before anything else happens to this VM here.
    for (const copy of copies) {
      liveKeys.add(copyKey(copy.provider, copy.id));
      if (isIncomingCopy(region, migration, copy)) {
        incoming.push(copy);
        continue;
      }
      if (isCurrentCopy(region, vm, copy)) {
        current.push(copy);
        continue;
      }
      if (mayRun(copy)) fencing = true;
      const fence = staleReason(region, vm, migration, copy);
      emitFence(actions, attempts, inFlight, now, copy, vm.name, fence.reason, fence.detail, vm.deleted);
    }

    // 1b. A migration into this region: its incoming copy is created (prepared, not booted) and otherwise left alone.
    if (migration !== undefined && !vm.deleted && migration.target.region === region && wantsIncomingCopy(migration.phase)) {
      const key = `in/${name}`;
      liveKeys.add(key);
      const [keep, ...extra] = incoming;
      // Cut off, a protected VM's incoming copy (a live transfer's, running) is stopped too: the VM may have failed over meanwhile.
      if (keep !== undefined && cutOff && vm.protection !== null && keep.state === 'running' && !inFlight.has(copyKey(keep.provider, keep.id))) {
        actions.push({ kind: 'stop', provider: keep.provider, id: keep.id, vm: name, generation: keep.generation ?? 0, fence: 'self-fence' });
        liveKeys.add(copyKey(keep.provider, keep.id));
      }
      for (const copy of extra) emitFence(actions, attempts, inFlight, now, copy, name, 'duplicate', `another incoming copy of ${name} for ${migration.id} is kept (${keep?.provider}/${keep?.id})`, true);
      const record = attempts.get(key);
      const thisTarget = record !== undefined && record.generation === migration.target.generation;
      const backingOff = thisTarget && now < record.retryAt;
      const refused = thisTarget && record.failed;
      if (keep === undefined && refused && migration.phase === 'prepare') actions.push({ kind: 'refuse-migration', vm: name, migration: migration.id, reason: record.lastError });
      if (keep === undefined && !fencing && !backingOff && !refused) {
        const t = migration.target;
        const create: ReconcileAction = { kind: 'create', provider: t.provider, vm: name, spec: vm.spec, generation: t.generation, token: createToken(name, t.generation), tags: copyTags(name, t.generation, migration.id), incoming: migration.id, incomingMode: migration.mode };
        if (!inFlight.has(actionKey(create) as string)) actions.push(create);
      }
    }

    const a = vm.assignment;
    const holdsAssignment = !vm.deleted && a !== null && a.region === region;
    if (!holdsAssignment || a === null) {
      // Not ours (any more): its copies were fenced above; nothing to report for it here.
      reported.delete(name);
      continue;
    }

    // 2. Duplicates of the current copy (a create that launched twice): keep one, running first, then by provider and id.
    let keep: ObservedVm | undefined;
    if (current.length > 0) {
      keep = current.find((c) => c.state === 'running') ?? current[0];
      for (const copy of current) {
        if (copy === keep) continue;
        if (mayRun(copy)) fencing = true;
        emitFence(actions, attempts, inFlight, now, copy, vm.name, 'duplicate', `another copy of ${name} at generation ${a.generation} is kept (${keep?.provider}/${keep?.id})`, true);
      }
    }

    // 3. Toward desired power, for the generation this region holds, once nothing stale may run.
    const vmKey = `vm/${name}`;
    let record = attempts.get(vmKey);
    if (record !== undefined && record.generation !== a.generation) {
      attempts.delete(vmKey);
      record = undefined;
    }
    liveKeys.add(vmKey);
    const backingOff = record !== undefined && now < record.retryAt;
    const failed = record?.failed === true;
    // A migration cut over to here: its coordinator saw the source stop serving before it proposed the cutover, so no handoff wait
    // (remembered with the generation: the migration's record leaves desired state when it ends, the copy's right to run stays).
    let seen = firstSeen.get(name);
    const migratedHere = (migration !== undefined && migration.target.region === region && migration.target.generation === a.generation) || (seen?.generation === a.generation && seen.migrated === true);
    if (seen === undefined || seen.generation !== a.generation || (migratedHere && seen.migrated !== true)) firstSeen.set(name, (seen = { generation: a.generation, at: seen?.generation === a.generation ? seen.at : now, ...(migratedHere ? { migrated: true } : {}) }));
    // Starting is held back while the lease is out, and during the handoff of a VM that had a holder before.
    const handoffUntil = lease !== undefined && a.generation > 1 && !migratedHere ? seen.at + lease.handoffMs : -Infinity;
    const leaseHeld = lease !== undefined && (leaseExpired || now < handoffUntil);
    // A protected VM: stopped and held while this region is cut off; a failed-over copy held until the lost region has fenced itself.
    const isProtected = drFence !== undefined && vm.protection !== null;
    const selfFenced = isProtected && cutOff;
    const holdUntil = isProtected && a.generation > 1 && !migratedHere ? seen.at + drFence.fenceHoldMs : -Infinity;
    const held = leaseHeld || selfFenced || now < holdUntil;
    // When what holds it now runs out (a cut-off region waits for the log instead, which no time brings).
    if (vm.power === 'running' && !failed && !leaseExpired && !selfFenced) {
      for (const until of [handoffUntil, holdUntil, backingOff ? (record?.retryAt ?? -Infinity) : -Infinity]) if (until > now) wakeAt = Math.min(wakeAt, until);
    }
    const fenceRunning = leaseExpired || selfFenced;
    // Migrating out and not cut over: the copy's power is the migration's (the coordinator stops and resumes it).
    const migrating = migration !== undefined && migration.source.region === region && migration.source.generation === a.generation;
    let status: VmStatus;
    let reason: string | undefined;

    if (keep === undefined) {
      if (vm.power === 'stopped') status = 'stopped';
      else if (failed) status = 'failed';
      else {
        status = 'pending';
        const restore = restoreOf(vm, a, desired);
        const create: ReconcileAction = {
          kind: 'create',
          provider: a.provider,
          vm: name,
          spec: vm.spec,
          generation: a.generation,
          token: createToken(name, a.generation),
          tags: copyTags(name, a.generation),
          ...(restore === undefined ? {} : { restore }),
        };
        if (!fencing && !backingOff && !held && !migrating && !inFlight.has(actionKey(create) as string)) actions.push(create);
      }
    } else {
      status = powerStatus(keep.state, vm.power, failed);
      const busy = inFlight.has(copyKey(keep.provider, keep.id));
      if (fenceRunning && keep.state === 'running' && !busy) {
        const key = copyKey(keep.provider, keep.id);
        if ((attempts.get(key)?.retryAt ?? -Infinity) <= now) actions.push({ kind: 'stop', provider: keep.provider, id: keep.id, vm: name, generation: a.generation, fence: leaseExpired ? 'lease-expired' : 'self-fence' });
        liveKeys.add(key);
      }
      // Given up blocks starting only: a stop toward desired power is always allowed.
      if (!busy && !backingOff && !fencing && !migrating) {
        if (vm.power === 'running' && keep.state === 'stopped' && !failed && !held) actions.push({ kind: 'start', provider: keep.provider, id: keep.id, vm: name, generation: a.generation });
        else if (vm.power === 'stopped' && keep.state === 'running' && !fenceRunning) actions.push({ kind: 'stop', provider: keep.provider, id: keep.id, vm: name, generation: a.generation });
      }
    }
    if (status === 'failed') reason = record?.lastError ?? 'failed';
    const word = `${status}@${a.generation}${reason === undefined ? '' : `:${reason}`}`;
    if (reported.get(name) !== word) {
      reported.set(name, word);
      actions.push({ kind: 'status', vm: name, generation: a.generation, status, ...(reason === undefined ? {} : { reason }) });
    }
  }

  // Bounded memory: forget what no longer exists here.
  for (const key of attempts.keys()) if (!liveKeys.has(key)) attempts.delete(key);
  for (const name of reported.keys()) if (!names.has(name)) reported.delete(name);
  for (const name of firstSeen.keys()) if (!assignedHere.has(name)) firstSeen.delete(name);
  // Not yet confirmed current since the daemon started: its desired state may be mid-replay or predate what it missed, so it
  // acts on none of it (no create, start, stop or terminate); it reports, and a cut-off region still fences itself.
  const confirmed = input.logConfirmed !== false ? actions : actions.filter((a) => a.kind === 'status' || a.kind === 'orphan' || (a.kind === 'stop' && (a.fence === 'self-fence' || a.fence === 'lease-expired')));
  return { actions: confirmed, memory: { attempts, reported, firstSeen }, wakeAt };
}

/**
 * The DR backup a new copy starts from: a failed-over copy's, the backup its
 * failover recorded; a DR test's copy (src/dr/drill.ts, labelled with the VM
 * it tests) created in that VM's DR region, the VM's newest recorded backup,
 * so the drill restores what a failover would. Otherwise none (the image).
 */
function restoreOf(vm: FleetVm, a: { readonly region: string; readonly generation: number }, desired: Pick<DesiredFleetView, 'vm'>): BackupRecord | undefined {
  const f = vm.protection?.failedOver ?? null;
  if (f !== null) return vm.protection?.drRegion === a.region && f.generation === a.generation ? f.restore : undefined;
  const tested = vm.spec.labels[DR_TEST_LABEL];
  const p = tested === undefined ? null : (desired.vm(tested)?.protection ?? null);
  return p !== null && p.drRegion === a.region ? p.lastBackup : undefined;
}

function powerStatus(state: ObservedVmState, power: PowerState, failed: boolean): VmStatus {
  if (state === 'running') return 'running';
  if (state === 'stopped') return power === 'stopped' ? 'stopped' : failed ? 'failed' : 'pending';
  return 'pending';
}

/**
 * The fencing step for one copy: a copy that may run is stopped (or, while
 * pending, terminated); a stopped one is terminated. Nothing while its
 * operation is in flight, or while it backs off after a failure.
 */
function emitFence(
  actions: ReconcileAction[],
  attempts: Map<string, AttemptRecord>,
  inFlight: ReadonlySet<string>,
  now: number,
  copy: ObservedVm,
  vm: string,
  reason: FenceReason,
  detail: string,
  terminateAtOnce: boolean,
): void {
  const key = copyKey(copy.provider, copy.id);
  if (inFlight.has(key)) return;
  const record = attempts.get(key);
  if (record !== undefined && now < record.retryAt) return;
  if (copy.state === 'stopping') return; // already on its way down; terminate once stopped
  // Deleted VMs and duplicates are terminated straight away; stale copies are stopped first, the fastest fence.
  const generation = copy.generation ?? 0;
  if (copy.state === 'running' && !terminateAtOnce) actions.push({ kind: 'stop', provider: copy.provider, id: copy.id, vm, generation, fence: reason });
  else actions.push({ kind: 'terminate', provider: copy.provider, id: copy.id, vm, generation, reason, detail });
}
