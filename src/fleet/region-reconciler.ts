/**
 * RegionReconciler: the driver of this region's reconciler core
 * (reconciler.ts). Each pass reads the desired state from this node's replica
 * of the fleet log, the region's inventory from the cloud providers, feeds the
 * core with the outcomes that finished since the last pass, and runs the
 * actions it returns against the providers.
 *
 * Invariants:
 * - One pass at a time (PassLoop); a pass is triggered by the interval, by a
 *   finished action, or by `kick()` (a fleet command committed here);
 *   triggers during a pass coalesce into one more pass.
 * - An action runs at most once at a time (its key is in flight until its
 *   outcome is recorded); the core is told which keys are in flight.
 * - Creates carry the idempotency token the core derives from (VM name,
 *   generation), so a create retried by this or a restarted daemon launches
 *   nothing new.
 * - Bounded: at most `maxInFlight`, else the provider's concurrency (from
 *   the inventory), calls in flight per provider at once; the rest wait for a
 *   later pass (the core emits them again: it is level-triggered). A cheap
 *   provider (local: 256) thus brings a region's VMs up in a few rounds,
 *   while a cloud keeps to what its API allows.
 */
import { createHash } from 'node:crypto';
import { rm } from 'node:fs/promises';
import type { Counter } from 'prom-client';
import type { VmCreateRequest, VmCreateResult, InventoryEntry, InstanceTypeRow } from '../cloud/inventory.ts';
import { DEFAULT_PROVIDER_CONCURRENCY } from '../cloud/provider.ts';
import type { Logger } from '../log.ts';
import { PassLoop } from '../driver/pass-loop.ts';
import type { BackupRecord } from './protection.ts';
import type { FleetVmSpec } from './spec.ts';
import type { FleetState } from './state-machine.ts';
import {
  CREATE_TOKEN_TAG,
  DEFAULT_RECONCILER_OPTIONS,
  EMPTY_RECONCILER_MEMORY,
  actionKey,
  observedFromTags,
  reconcile,
  type ActionOutcome,
  type ObservedVm,
  type ReconcileAction,
  type ReconcilerMemory,
  type ReconcilerOptions,
  type VmStatus,
} from './reconciler.ts';

/** An inventory entry as the reconciler (and the DR lease plan) reads it. */
export function observedOf(e: InventoryEntry): ObservedVm {
  return observedFromTags({ provider: e.provider, id: e.instance.id, name: e.instance.name, state: e.instance.state }, e.instance.tags);
}

/** The slice of the cloud inventory the reconciler uses. */
export interface ReconcilerInventory {
  list(query: { refresh?: boolean }): Promise<{ instances: InventoryEntry[] }>;
  create(provider: string, request: VmCreateRequest): Promise<VmCreateResult>;
  change(operation: 'start' | 'stop' | 'terminate', id: string, options: { provider?: string }): Promise<InventoryEntry>;
  types(query: { providers?: readonly string[] }): Promise<{ types: InstanceTypeRow[] }>;
  /** How many calls to run on the provider at once (absent: 32). */
  concurrency?(provider: string): number;
}

export interface ReconcilerMetrics {
  /** dwcp_fleet_reconcile_actions_total{action,result} */
  readonly reconcileActions: Pick<Counter<'action' | 'result'>, 'inc'>;
}

/** What this region last reported for one desired VM. */
export interface VmReport {
  readonly status: VmStatus;
  readonly generation: number;
  /** The provider's reason, for failed. */
  readonly reason?: string;
  /** When this region first reported this status at this generation (epoch ms): the pass that saw it. */
  readonly since: number;
}

/** A managed copy with no desired VM. */
export interface OrphanReport {
  readonly provider: string;
  readonly id: string;
  readonly name: string;
  readonly state: string;
  readonly vmName?: string;
}

export interface RegionReconcilerOptions {
  readonly region: string;
  /** This node's replica of the desired state. */
  readonly desired: () => FleetState;
  readonly inventory: ReconcilerInventory;
  readonly metrics: ReconcilerMetrics;
  readonly log: Logger;
  /** Passes at least this often, for drift the providers cause (a VM stopped by hand). */
  readonly intervalMs: number;
  readonly core?: ReconcilerOptions;
  /** When this node's view of the log was last known current (the core's lease and DR self-fencing input); absent: always now. */
  readonly logSeenAt?: () => number;
  /** Whether this node's view of the log was proven current since it started (the pass acts only then); absent: always. */
  readonly logConfirmed?: () => boolean;
  /** Calls in flight per provider, overriding the inventory's concurrency (absent: the inventory's, else 32). */
  readonly maxInFlight?: number;
  readonly now?: () => number;
  /**
   * Drops a deleted VM's record from desired state (a purge command) once no
   * copy of it is left here; the reconciler calls it at most once at a time
   * per VM, and again on a later pass if it failed.
   */
  readonly purge?: (vm: string) => Promise<void>;
  /**
   * Rolls back a migration into this region, with `reason` (a rolling-back
   * command, as an operator's cancel), once the core has given up creating
   * its incoming copy; at most once at a time per migration.
   */
  readonly refuseMigration?: (migration: string, reason: string) => Promise<void>;
  /** Writes the DR backup a failed-over copy starts from into a disk file and returns its path (src/dr/backup-driver.ts); absent: copies start from their image. */
  readonly restore?: (vm: string, generation: number, backup: BackupRecord) => Promise<string>;
}

/** The tag a copy started from a DR backup carries: the backup's key (what `vm show` and `dr status` can name). */
export const RESTORED_FROM_TAG = 'dwcp-restored-from';

export class RegionReconciler {
  readonly #o: RegionReconcilerOptions;
  #memory: ReconcilerMemory = EMPTY_RECONCILER_MEMORY;
  #outcomes: ActionOutcome[] = [];
  readonly #inFlight = new Set<string>();
  /** Calls in flight per provider, for its bound. */
  readonly #inFlightPer = new Map<string, number>();
  readonly #reports = new Map<string, VmReport>();
  #orphans: OrphanReport[] = [];
  /** Per provider, its instance types, asked once (the promise: a pass's concurrent creates share the one call). */
  readonly #types = new Map<string, Promise<InstanceTypeRow[]>>();
  readonly #loop: PassLoop;
  readonly #purging = new Set<string>();
  readonly #refusing = new Set<string>();

  constructor(options: RegionReconcilerOptions) {
    this.#o = options;
    this.#loop = new PassLoop({
      pass: () => this.#pass(),
      intervalMs: options.intervalMs,
      onError: (err) => options.log.warn({ err: errorText(err) }, 'fleet reconcile pass failed; retrying at the next interval'),
      ...(options.now === undefined ? {} : { now: options.now }),
    });
  }

  start(): void {
    this.#loop.start();
  }

  stop(): Promise<void> {
    return this.#loop.stop();
  }

  /** Asks for a pass now (coalesced with one already running). */
  kick(): void {
    this.#loop.kick();
  }

  /** Resolves after the next pass that starts after this call has finished (tests and `vm create --wait` await it). */
  nextPass(): Promise<void> {
    return this.#loop.nextPass();
  }

  /** The status this region last reported per desired VM assigned here. */
  reports(): ReadonlyMap<string, VmReport> {
    return this.#reports;
  }

  /** Managed copies in this region with no desired VM, as of the last pass. */
  orphans(): readonly OrphanReport[] {
    return this.#orphans;
  }

  async #pass(): Promise<void> {
    const now = this.#o.now ?? Date.now;
    const { instances } = await this.#o.inventory.list({});
    // What the inventory showed was so by now at the latest: a status's time (a copy seen running was running then).
    const passAt = now();
    const observed: ObservedVm[] = instances.map(observedOf);
    const outcomes = this.#outcomes;
    this.#outcomes = [];
    const desired = this.#o.desired();
    const result = reconcile({
      region: this.#o.region,
      desired,
      observed,
      memory: this.#memory,
      outcomes,
      inFlight: this.#inFlight,
      now: passAt,
      options: this.#o.core ?? DEFAULT_RECONCILER_OPTIONS,
      ...(this.#o.logSeenAt === undefined ? {} : { logSeenAt: this.#o.logSeenAt() }),
      ...(this.#o.logConfirmed === undefined ? {} : { logConfirmed: this.#o.logConfirmed() }),
    });
    this.#memory = result.memory;
    if (result.wakeAt !== Number.POSITIVE_INFINITY) this.#loop.wakeBy(result.wakeAt);
    const orphans: OrphanReport[] = [];
    for (const action of result.actions) {
      switch (action.kind) {
        case 'status':
          this.#reports.set(action.vm, { status: action.status, generation: action.generation, ...(action.reason === undefined ? {} : { reason: action.reason }), since: passAt });
          if (action.status === 'failed') this.#o.log.warn({ vm: action.vm, generation: action.generation, err: action.reason }, 'fleet VM failed; not retried for this assignment');
          break;
        case 'refuse-migration':
          this.#refuse(action);
          break;
        case 'orphan':
          orphans.push({ provider: action.provider, id: action.id, name: action.name, state: action.state, ...(action.vmName === undefined ? {} : { vmName: action.vmName }) });
          break;
        default: {
          const key = actionKey(action);
          const provider = action.provider;
          const running = this.#inFlightPer.get(provider) ?? 0;
          if (key === null || this.#inFlight.has(key) || running >= this.#limit(provider)) break;
          this.#inFlight.add(key);
          this.#inFlightPer.set(provider, running + 1);
          void this.#run(action).then((outcome) => {
            this.#inFlight.delete(key);
            this.#inFlightPer.set(provider, (this.#inFlightPer.get(provider) ?? 1) - 1);
            this.#outcomes.push(outcome);
            this.#o.metrics.reconcileActions.inc({ action: action.kind, result: outcome.ok ? 'ok' : 'error' });
            this.kick();
          });
        }
      }
    }
    this.#orphans = orphans;
    this.#purgeGone(desired, observed);
    // Drop reports of VMs no longer assigned here (the core stops reporting them).
    for (const vm of this.#reports.keys()) {
      const assignment = desired.vm(vm)?.assignment;
      if (assignment === undefined || assignment === null || assignment.region !== this.#o.region) this.#reports.delete(vm);
    }
  }

  /** Rolls back a migration into this region whose incoming copy could not be created: one proposal at a time per migration. */
  #refuse(action: Extract<ReconcileAction, { kind: 'refuse-migration' }>): void {
    const refuse = this.#o.refuseMigration;
    if (refuse === undefined || this.#refusing.has(action.migration)) return;
    this.#refusing.add(action.migration);
    const reason = `${this.#o.region} could not prepare a copy of ${action.vm}: ${action.reason}`;
    this.#o.log.warn({ vm: action.vm, migration: action.migration, err: action.reason }, 'fleet migration refused: its incoming copy could not be created');
    void refuse(action.migration, reason)
      .catch((err: unknown) => this.#o.log.info({ vm: action.vm, migration: action.migration, err: errorText(err) }, 'fleet migration refusal not recorded; retrying at the next pass'))
      .finally(() => this.#refusing.delete(action.migration));
  }

  #limit(provider: string): number {
    if (this.#o.maxInFlight !== undefined) return this.#o.maxInFlight;
    try {
      return this.#o.inventory.concurrency?.(provider) ?? DEFAULT_PROVIDER_CONCURRENCY;
    } catch {
      // A provider the inventory does not know: the action fails on its own, within the default bound.
      return DEFAULT_PROVIDER_CONCURRENCY;
    }
  }

  /** Deleted VMs assigned here with no copy left that is not terminated: their records can go. */
  #purgeGone(desired: FleetState, observed: readonly ObservedVm[]): void {
    const purge = this.#o.purge;
    if (purge === undefined) return;
    const live = new Set(observed.filter((o) => o.state !== 'terminated' && o.vmName !== undefined).map((o) => o.vmName));
    for (const vm of desired.vmsAssignedTo(this.#o.region)) {
      const name = vm.name;
      if (!vm.deleted || live.has(name) || this.#purging.has(name)) continue;
      this.#purging.add(name);
      void purge(name)
        .catch((err: unknown) => this.#o.log.info({ vm: name, err: errorText(err) }, 'fleet purge of a deleted VM failed; retrying at the next pass'))
        .finally(() => this.#purging.delete(name));
    }
  }

  async #run(action: Exclude<ReconcileAction, { kind: 'status' | 'refuse-migration' | 'orphan' }>): Promise<ActionOutcome> {
    const now = this.#o.now ?? Date.now;
    const log = this.#o.log;
    try {
      switch (action.kind) {
        case 'create': {
          const type = await this.#typeFor(action.provider, action.spec);
          // The inventory tags the launch with its create token itself (from idempotencyToken: the UUID form of the core's token).
          const { [CREATE_TOKEN_TAG]: _token, ...tags } = action.tags;
          const restore = action.restore === undefined || this.#o.restore === undefined ? undefined : action.restore;
          const restoreDisk = restore === undefined ? undefined : await this.#o.restore?.(action.vm, action.generation, restore);
          const created = await this.#o.inventory
            .create(action.provider, {
            name: action.vm,
            type,
            image: action.spec.image,
            tags: restore === undefined ? tags : { ...tags, [RESTORED_FROM_TAG]: restore.key },
            // Spot only on capacity the region declared as spot (placement sends only spot-tolerant specs there).
            spot: this.#o.desired().region(this.#o.region)?.providers.find((p) => p.name === action.provider)?.spot === true,
            idempotencyToken: uuidFromToken(action.token),
            ...(action.incoming === undefined ? {} : { incoming: action.incoming, ...(action.incomingMode === undefined ? {} : { incomingMode: action.incomingMode }) }),
            ...(restoreDisk === undefined ? {} : { restoreDisk }),
          })
            // The create took the restored file over (qemu moved it) or did not need it: never left behind.
            .finally(() => (restoreDisk === undefined ? undefined : rm(restoreDisk, { force: true })));
          if (restore !== undefined) log.warn({ vm: action.vm, generation: action.generation, backup: restore.key, takenAt: new Date(restore.takenAt).toISOString() }, 'fleet VM created from its DR backup');
          if (action.incoming === undefined) log.info({ vm: action.vm, generation: action.generation, provider: action.provider, instanceId: created.instance.id, type }, 'fleet VM created');
          else log.info({ vm: action.vm, generation: action.generation, provider: action.provider, instanceId: created.instance.id, type, migration: action.incoming }, 'fleet prepared the incoming copy of a migration');
          break;
        }
        case 'start':
        case 'stop':
          await this.#o.inventory.change(action.kind, action.id, { provider: action.provider });
          if (action.kind === 'stop' && action.fence !== undefined) {
            log.warn({ vm: action.vm, provider: action.provider, instanceId: action.id, generation: action.generation, fence: action.fence }, 'fleet stopped a stale copy (fencing)');
          }
          break;
        case 'terminate':
          await this.#o.inventory.change('terminate', action.id, { provider: action.provider });
          log.info({ vm: action.vm, provider: action.provider, instanceId: action.id, reason: action.reason, detail: action.detail }, 'fleet terminated a copy');
          break;
      }
      return { action, ok: true, at: now() };
    } catch (err) {
      log.info({ vm: action.vm, action: action.kind, provider: action.provider, err: errorText(err) }, 'fleet action failed; backing off');
      return { action, ok: false, error: errorText(err), at: now() };
    }
  }

  /** The provider's smallest instance type that holds the spec (fewest vCPUs, then least memory, then name). */
  async #typeFor(provider: string, spec: FleetVmSpec): Promise<string> {
    let asked = this.#types.get(provider);
    if (asked === undefined) {
      asked = this.#o.inventory.types({ providers: [provider] }).then((r) => r.types);
      this.#types.set(provider, asked);
      // A failed call is asked again by the next create, not remembered.
      asked.catch(() => this.#types.delete(provider));
    }
    const rows = await asked;
    const memoryMiB = Math.ceil(spec.memoryBytes / (1024 * 1024));
    const fits = rows
      .map((r) => r.type)
      .filter((t) => t.vcpus >= spec.vcpus && t.memoryMiB >= memoryMiB)
      .sort((a, b) => a.vcpus - b.vcpus || a.memoryMiB - b.memoryMiB || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const best = fits[0];
    if (best === undefined) {
      throw new Error(`no instance type of provider ${provider} has ${spec.vcpus} vCPU and ${memoryMiB} MiB (it offers ${rows.map((r) => `${r.type.name} ${r.type.vcpus}/${r.type.memoryMiB}`).join(', ') || 'none'})`);
    }
    return best.name;
  }
}

/**
 * The create token as a UUID: GCE's requestId must be one; EC2's ClientToken
 * and the local provider take any string. A hash of the core's token, so
 * still a function of (VM name, generation) only.
 */
export function uuidFromToken(token: string): string {
  const d = createHash('sha256').update(token).digest('hex');
  return `${d.slice(0, 8)}-${d.slice(8, 12)}-4${d.slice(13, 16)}-8${d.slice(17, 20)}-${d.slice(20, 32)}`;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
