/**
 * FleetSeat: this daemon's part in the fleet's desired state. It declares
 * the region to the federation log (register-region, again on every start
 * and config change), bootstraps the policy set from the config's policy
 * files while the log has none, schedules `vm create` requests that arrive
 * here, turns operator commands (start, stop, delete, migrate, cancel) into
 * fleet commands, and runs this region's reconciler, the coordinator of the
 * migrations out of this region (src/migration/migrator.ts) and the
 * continuous policy audit.
 *
 * Invariants:
 * - The region declaration is retried until the log accepts or refuses it;
 *   a refusal (a shrink below what is assigned) is logged with the log's
 *   reason and the previous declaration stays in force.
 * - The policy files are proposed (as version 1) only while this node's
 *   replica shows no policy version, retried until the log answers; once
 *   the log holds a version it wins, and a node whose files differ logs
 *   that they were ignored (src/fleet/policy-bootstrap.ts).
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
import type { ReconcilerDrFence } from './reconciler.ts';
import { resolveSchedulerOptions } from './scheduler.ts';
import type { FleetVmSpec } from './spec.ts';
import type { FleetState } from './state-machine.ts';
import { DEFAULT_PLACEMENT_OPTIONS } from './placement.ts';
import type { FleetLogPort } from './log.ts';
import type { FleetView } from './fleet-view.ts';
import { Migrator, type MigrationProgress } from '../migration/migrator.ts';
import type { MigrationMetrics } from '../migration/metrics.ts';
import { planMigration, type MigrationPlan, type MigrationRequest } from '../migration/plan.ts';
import { localTransfer, type MigrationTransfer } from '../migration/transfer.ts';
import { policyBootstrap } from './policy-bootstrap.ts';
import { PolicyAuditor } from './policy-auditor.ts';
import { PolicyDecisionLog } from './policy-decisions.ts';
import { NO_POLICY_FILES, type PolicyFileSet } from '../policy/files.ts';
import type { BackupRecord } from './protection.ts';
import type { MigrationPhase } from './migrations.ts';

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
  /** The config's policy files (read at start and on reload); absent: none. */
  readonly policyFiles?: () => PolicyFileSet;
  readonly metrics: SchedulerMetrics & ReconcilerMetrics;
  readonly migrationMetrics: MigrationMetrics;
  /** The fleet as this node sees it (the observed side): the migrator reads target regions' reports there. */
  readonly view: () => FleetView;
  /** Migration transfers by provider kind, on top of the built-in `local` one (the qemu transport plugs in here). */
  readonly transfers?: Readonly<Record<string, MigrationTransfer>>;
  readonly log: Logger;
  /** Where policy decisions are logged (src/fleet/policy-decisions.ts); absent: `log`. */
  readonly decisionLog?: Logger;
  /** How long one attempt to commit the declaration (or a migration step) may take. */
  readonly commitTimeoutMs: number;
  /** DR self-fencing of protected VMs (src/dr/): the deadline and hold, and when this node last saw the log current. */
  readonly drFence?: ReconcilerDrFence;
  readonly logSeenAt?: () => number;
  /** Restores a failed-over copy's DR backup into a disk file (RegionReconcilerOptions.restore). */
  readonly restore?: (vm: string, generation: number, backup: BackupRecord) => Promise<string>;
  /** Whether this node has read the log since it started (a restarted reconciler changes nothing but self-fencing before). */
  readonly logConfirmed?: () => boolean;
}

/**
 * How often the seat looks whether this node's replica applied fleet commands
 * (a number compared, nothing read): a region learns of a VM assigned to it
 * within this, not at its next reconcile interval. The replica has no apply
 * event the seat could subscribe to that survives a snapshot restore.
 */
const APPLIED_POLL_MS = 50;
/** Back-off of commits retried until the log answers (declaration, policy bootstrap). */
const DECLARE_RETRY_MIN_MS = 500;
const DECLARE_RETRY_MAX_MS = 10_000;

export class FleetSeat {
  readonly log: FleetLog;
  readonly scheduler: FleetScheduler;
  readonly reconciler: RegionReconciler;
  readonly migrator: Migrator;
  /** The continuous policy audit of this node's replica (src/fleet/policy-auditor.ts). */
  readonly auditor: PolicyAuditor;
  readonly #o: FleetSeatOptions;
  /** Back-off waits in progress, each with what ends it early (stop). */
  #retryWaits = new Map<NodeJS.Timeout, () => void>();
  #stopped = false;
  #declared: Promise<void> | null = null;
  #bootstrapped: Promise<void> | null = null;
  /** Bumped by every declare() and bootstrapPolicy(): an older one still retrying gives up. */
  #declareRound = 0;
  #bootstrapRound = 0;
  #watch: NodeJS.Timeout | undefined;
  #seen: { state: FleetState | null; applied: number } = { state: null, applied: -1 };

  constructor(options: FleetSeatOptions) {
    this.#o = options;
    this.log = new FleetLog(options.port, options.clientId);
    const { settings } = options;
    const decisions = new PolicyDecisionLog(options.decisionLog ?? options.log);
    this.auditor = new PolicyAuditor({ region: options.region, state: () => this.state, decisions });
    this.scheduler = new FleetScheduler({
      log: this.log,
      observed: options.observed,
      options: resolveSchedulerOptions({
        maxAttempts: settings.placement.attempts,
        placement: { ...DEFAULT_PLACEMENT_OPTIONS, strategy: settings.placement.strategy, weights: settings.placement.weights, origin: options.region },
      }),
      metrics: options.metrics,
      decisions,
    });
    this.reconciler = new RegionReconciler({
      region: options.region,
      desired: () => this.state,
      inventory: options.inventory,
      metrics: options.metrics,
      log: options.log,
      intervalMs: settings.reconcileIntervalMs,
      core: { maxAttempts: settings.maxAttempts, backoffBaseMs: settings.backoffBaseMs, backoffCapMs: settings.backoffCapMs, ...(options.drFence === undefined ? {} : { dr: options.drFence }) },
      ...(options.logSeenAt === undefined ? {} : { logSeenAt: options.logSeenAt }),
      ...(options.restore === undefined ? {} : { restore: options.restore }),
      ...(options.logConfirmed === undefined ? {} : { logConfirmed: options.logConfirmed }),
      purge: async (vm) => {
        const result = await this.log.commit({ kind: 'purge', vm }, options.commitTimeoutMs);
        if (result.ok) options.log.info({ vm }, 'fleet VM purged: deleted and no copy left');
      },
      // A no-op if it is already rolling back; refused by the log if it cut over or ended meanwhile: nothing left to refuse.
      // Only from prepare: a refusal that raced the coordinator's move to transfer must not roll back a migration that went on.
      refuseMigration: async (id, reason) => void (await this.#rollBack(id, reason, options.commitTimeoutMs, 'prepare')),
    });
    const { migration } = settings;
    this.migrator = new Migrator({
      region: options.region,
      desired: () => this.state,
      commit: (command, timeoutMs) => this.log.commit(command, timeoutMs),
      inventory: options.inventory,
      view: options.view,
      transfers: { local: localTransfer(), ...options.transfers },
      metrics: options.migrationMetrics,
      log: options.log,
      coordinator: {
        prepareTimeoutMs: migration.prepareTimeoutMs,
        transferIdleTimeoutMs: migration.transferIdleTimeoutMs,
        verifyTimeoutMs: migration.verifyTimeoutMs,
        cleanupTimeoutMs: migration.cleanupTimeoutMs,
        retryMs: Math.min(settings.backoffBaseMs, 1_000),
        maxAttempts: settings.maxAttempts,
      },
      intervalMs: settings.reconcileIntervalMs,
      commitTimeoutMs: options.commitTimeoutMs,
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
    this.bootstrapPolicy();
    this.reconciler.start();
    this.migrator.start();
    this.auditor.start();
    this.#watch = setInterval(() => this.#kickOnApply(), APPLIED_POLL_MS);
    this.#watch.unref();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#watch);
    this.auditor.stop();
    for (const [timer, end] of this.#retryWaits) {
      clearTimeout(timer);
      end();
    }
    this.#retryWaits.clear();
    await Promise.all([this.reconciler.stop(), this.migrator.stop()]);
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
    this.migrator.kick();
  }

  /** (Re-)declares the region until the log answers; resolves with that answer's outcome logged. */
  declare(): Promise<void> {
    this.#declared = this.#declare(++this.#declareRound);
    return this.#declared;
  }

  /** Resolves once the current declaration was answered by the log (tests, and the daemon's readiness log). */
  whenDeclared(): Promise<void> {
    return this.#declared ?? Promise.resolve();
  }

  async #declare(round: number): Promise<void> {
    const log = this.#o.log;
    const region = this.#o.region;
    const result = await this.#untilAnswered(
      () => this.log.commit(this.#o.declaration(), this.#o.commitTimeoutMs),
      (err, retryInMs) => log.info({ region, err, retryInMs }, 'fleet region not declared yet (the federation log did not commit); retrying'),
      () => round !== this.#declareRound,
    );
    if (result === null) return;
    if (result.ok) log.info({ region }, 'fleet region declared');
    else log.error({ region, code: result.code, err: result.message }, 'fleet region declaration refused; the previous declaration stays in force');
    this.reconciler.kick();
  }

  /**
   * Proposes the config's policy files while the log holds no policy
   * version (on start and on reload); once it holds one, says whether the
   * files match it. Resolves when that is settled (or the seat stops).
   */
  bootstrapPolicy(): Promise<void> {
    const round = ++this.#bootstrapRound;
    this.#bootstrapped = this.#bootstrapPolicy(round);
    return this.#bootstrapped;
  }

  /** Resolves once the current policy bootstrap settled (tests). */
  whenPolicyBootstrapped(): Promise<void> {
    return this.#bootstrapped ?? Promise.resolve();
  }

  async #bootstrapPolicy(round: number): Promise<void> {
    const files = this.#o.policyFiles?.() ?? NO_POLICY_FILES;
    const log = this.#o.log;
    // At most twice round: a proposal refused stale means another version came first; the second look sees it.
    for (let look = 0; look < 2 && round === this.#bootstrapRound && !this.#stopped; look++) {
      const step = policyBootstrap(files, this.state.policy);
      switch (step.kind) {
        case 'none':
          return;
        case 'same':
          log.info({ version: step.version, files: files.files }, 'fleet policy files match the federation log\'s policy version');
          return;
        case 'ignored':
          log.warn(
            { version: step.version, files: files.files },
            "fleet policy files ignored: the federation log already holds a policy version, which wins over the config's files (dwcpctl policy apply puts a new one)",
          );
          return;
        case 'propose': {
          const result = await this.#untilAnswered(
            () => this.log.commit(step.command, this.#o.commitTimeoutMs),
            (err, retryInMs) => log.info({ err, retryInMs }, 'fleet policy files not proposed yet (the federation log did not commit); retrying'),
            () => round !== this.#bootstrapRound,
          );
          if (result === null) return;
          if (result.ok) {
            log.info({ version: result.policyVersion, files: files.files, policies: files.policies.map((p) => p.name) }, "fleet policy set from the config's policy files");
            return;
          }
          if (result.code !== 'stale_policy_version') {
            log.error({ code: result.code, err: result.message, files: files.files }, "fleet policy files refused by the federation log");
            return;
          }
        }
      }
    }
  }

  /**
   * Runs `attempt` until it answers (a throw means the log could not commit
   * in time: no quorum, no leader yet), backing off between tries; null
   * once the seat stops or `abandon` says so.
   */
  async #untilAnswered<T>(attempt: () => Promise<T>, onRetry: (err: string, retryInMs: number) => void, abandon: () => boolean): Promise<T | null> {
    for (let failures = 0; ; failures++) {
      if (this.#stopped || abandon()) return null;
      try {
        return await attempt();
      } catch (err) {
        const delay = Math.min(DECLARE_RETRY_MAX_MS, DECLARE_RETRY_MIN_MS * 2 ** Math.min(failures, 10));
        onRetry(err instanceof Error ? err.message : String(err), delay);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            this.#retryWaits.delete(timer);
            resolve();
          }, delay);
          timer.unref();
          this.#retryWaits.set(timer, resolve);
        });
      }
    }
  }

  /** Placement only: the choice and every region's explanation. */
  place(spec: FleetVmSpec): PlacementDecision {
    return this.scheduler.place(spec);
  }

  /** Schedules a create here; the reconciler of the chosen region takes it from the log. */
  async create(spec: FleetVmSpec, power: PowerState, timeoutMs: number, operation?: 'burst'): Promise<ScheduleOutcome> {
    const outcome = await this.scheduler.create(spec, power, timeoutMs, operation);
    if (outcome.ok && outcome.region === this.#o.region) this.reconciler.kick();
    return outcome;
  }

  /** A migration planned on this node's state: the command and the plan in words, or the refusal the log would give (a dry run). */
  planMigration(request: MigrationRequest): MigrationPlan {
    return planMigration(this.state, request, Date.now());
  }

  /** Plans and starts a migration; the source region's migrator takes it from the log. */
  async migrate(request: MigrationRequest, timeoutMs: number): Promise<{ plan: MigrationPlan; result: FleetResult | null }> {
    const plan = this.planMigration(request);
    if (!plan.ok) return { plan, result: null };
    const result = await this.log.commit(plan.command, timeoutMs);
    this.migrator.kick();
    return { plan, result };
  }

  /** Cancels a migration that has not cut over: it rolls back (from any node; the source's coordinator finishes it). */
  cancelMigration(id: string, timeoutMs: number): Promise<FleetResult> {
    return this.#rollBack(id, `cancelled by operator (on ${this.#o.region})`, timeoutMs);
  }

  /** Rolls a migration back with `reason` (an operator's cancel, or a target that cannot prepare it); its source's coordinator finishes it. */
  #rollBack(id: string, reason: string, timeoutMs: number, from?: MigrationPhase): Promise<FleetResult> {
    return this.log.commit({ kind: 'migration-progress', id, phase: 'rolling-back', ...(from === undefined ? {} : { from }), reason, at: Date.now() }, timeoutMs);
  }

  /** What this daemon's coordinator knows of a migration out of this region (undefined elsewhere). */
  migrationProgress(id: string): MigrationProgress | undefined {
    return this.migrator.progress(id);
  }

  /** Commits an operator's command (set-power, delete, or a pinned create/assign) and wakes the reconciler. */
  async command(command: FleetCommandInput, timeoutMs: number): Promise<FleetResult> {
    const result = await this.log.commit(command, timeoutMs);
    this.reconciler.kick();
    return result;
  }
}
