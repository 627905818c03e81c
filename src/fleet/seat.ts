/**
 * FleetSeat: this daemon's part in the fleet's desired state. It declares
 * the region to the federation log (register-region, again on every start
 * and config change), schedules `vm create` requests that arrive here, turns
 * operator commands (start, stop, delete) into fleet commands, and runs this
 * region's reconciler.
 *
 * Invariants:
 * - The region declaration is retried until the log accepts or refuses it;
 *   a refusal (a shrink below what is assigned) is logged with the log's
 *   reason and the previous declaration stays in force.
 * - Every command goes through the federation log; the seat keeps no
 *   desired state of its own.
 */
import type { Logger } from '../log.ts';
import type { FleetCommandInput, FleetResult, PowerState } from './commands.ts';
import type { FleetSettings } from './config.ts';
import { FleetLog } from './log.ts';
import { FleetScheduler, type ScheduleOutcome, type SchedulerMetrics } from './fleet-scheduler.ts';
import type { ObservedFleet, PlacementDecision } from './placement.ts';
import { RegionReconciler, type ReconcilerInventory, type ReconcilerMetrics } from './region-reconciler.ts';
import { resolveSchedulerOptions } from './scheduler.ts';
import type { FleetVmSpec } from './spec.ts';
import type { FleetState } from './state-machine.ts';
import { DEFAULT_PLACEMENT_OPTIONS } from './placement.ts';
import type { FleetLogPort } from './log.ts';

export interface FleetSeatOptions {
  readonly region: string;
  readonly settings: FleetSettings;
  readonly port: FleetLogPort;
  /** Unique to this process: the fleet session's client id. */
  readonly clientId: string;
  readonly inventory: ReconcilerInventory;
  /** Health and RTT as this node sees them now. */
  readonly observed: () => ObservedFleet;
  /** The register-region command this config declares; read at start and on reload. */
  readonly declaration: () => Extract<FleetCommandInput, { kind: 'register-region' }>;
  readonly metrics: SchedulerMetrics & ReconcilerMetrics;
  readonly log: Logger;
  /** How long one attempt to commit the declaration may take. */
  readonly commitTimeoutMs: number;
}

/**
 * How often the seat looks whether this node's replica applied fleet commands
 * (a number compared, nothing read): a region learns of a VM assigned to it
 * within this, not at its next reconcile interval. The replica has no apply
 * event the seat could subscribe to that survives a snapshot restore.
 */
const APPLIED_POLL_MS = 50;
const DECLARE_RETRY_MIN_MS = 500;
const DECLARE_RETRY_MAX_MS = 10_000;

export class FleetSeat {
  readonly log: FleetLog;
  readonly scheduler: FleetScheduler;
  readonly reconciler: RegionReconciler;
  readonly #o: FleetSeatOptions;
  #declareTimer: NodeJS.Timeout | undefined;
  #stopped = false;
  #declared: Promise<void> | null = null;
  #watch: NodeJS.Timeout | undefined;
  #seen: { state: FleetState | null; applied: number } = { state: null, applied: -1 };

  constructor(options: FleetSeatOptions) {
    this.#o = options;
    this.log = new FleetLog(options.port, options.clientId);
    const { settings } = options;
    this.scheduler = new FleetScheduler({
      log: this.log,
      observed: options.observed,
      options: resolveSchedulerOptions({
        maxAttempts: settings.placement.attempts,
        placement: { ...DEFAULT_PLACEMENT_OPTIONS, strategy: settings.placement.strategy, weights: settings.placement.weights, origin: options.region },
      }),
      metrics: options.metrics,
    });
    this.reconciler = new RegionReconciler({
      region: options.region,
      desired: () => this.state,
      inventory: options.inventory,
      metrics: options.metrics,
      log: options.log,
      intervalMs: settings.reconcileIntervalMs,
      core: { maxAttempts: settings.maxAttempts, backoffBaseMs: settings.backoffBaseMs, backoffCapMs: settings.backoffCapMs },
      purge: async (vm) => {
        const result = await this.log.commit({ kind: 'purge', vm }, options.commitTimeoutMs);
        if (result.ok) options.log.info({ vm }, 'fleet VM purged: deleted and no copy left');
      },
    });
  }

  get region(): string {
    return this.#o.region;
  }

  /** This node's replica of the desired state. */
  get state(): FleetState {
    return this.log.state;
  }

  start(): void {
    this.#stopped = false;
    this.declare();
    this.reconciler.start();
    this.#watch = setInterval(() => this.#kickOnApply(), APPLIED_POLL_MS);
    this.#watch.unref();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#watch);
    clearTimeout(this.#declareTimer);
    await this.reconciler.stop();
  }

  /** Kicks the reconciler when the replica applied fleet commands since the last look (or was replaced by a snapshot). */
  #kickOnApply(): void {
    let state: FleetState;
    try {
      state = this.state;
    } catch {
      return;
    }
    if (state === this.#seen.state && state.applied === this.#seen.applied) return;
    this.#seen = { state, applied: state.applied };
    this.reconciler.kick();
  }

  /** (Re-)declares the region until the log answers; resolves with that answer's outcome logged. */
  declare(): Promise<void> {
    clearTimeout(this.#declareTimer);
    this.#declared = this.#declare(0);
    return this.#declared;
  }

  /** Resolves once the current declaration was answered by the log (tests, and the daemon's readiness log). */
  whenDeclared(): Promise<void> {
    return this.#declared ?? Promise.resolve();
  }

  async #declare(failures: number): Promise<void> {
    if (this.#stopped) return;
    const log = this.#o.log;
    try {
      const result = await this.log.commit(this.#o.declaration(), this.#o.commitTimeoutMs);
      if (result.ok) log.info({ region: this.#o.region }, 'fleet region declared');
      else log.error({ region: this.#o.region, code: result.code, err: result.message }, 'fleet region declaration refused; the previous declaration stays in force');
      this.reconciler.kick();
    } catch (err) {
      const delay = Math.min(DECLARE_RETRY_MAX_MS, DECLARE_RETRY_MIN_MS * 2 ** Math.min(failures, 10));
      log.info({ region: this.#o.region, err: err instanceof Error ? err.message : String(err), retryInMs: delay }, 'fleet region not declared yet (the federation log did not commit); retrying');
      await new Promise<void>((resolve) => {
        this.#declareTimer = setTimeout(resolve, delay);
        this.#declareTimer.unref();
      });
      return this.#declare(failures + 1);
    }
  }

  /** Placement only: the choice and every region's explanation. */
  place(spec: FleetVmSpec): PlacementDecision {
    return this.scheduler.place(spec);
  }

  /** Schedules a create here; the reconciler of the chosen region takes it from the log. */
  async create(spec: FleetVmSpec, power: PowerState, timeoutMs: number): Promise<ScheduleOutcome> {
    const outcome = await this.scheduler.create(spec, power, timeoutMs);
    if (outcome.ok && outcome.region === this.#o.region) this.reconciler.kick();
    return outcome;
  }

  /** Commits an operator's command (set-power, delete, or a pinned create/assign) and wakes the reconciler. */
  async command(command: FleetCommandInput, timeoutMs: number): Promise<FleetResult> {
    const result = await this.log.commit(command, timeoutMs);
    this.reconciler.kick();
    return result;
  }
}
