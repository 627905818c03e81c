/**
 * DrDriver: runs the DR core (controller.ts) on this daemon. Every
 * dr.checkIntervalMs it (1) asks the federation log for a linearizable
 * barrier (a strong read): when it answers, this node's view of the log was
 * current when it was asked, which is what the region reconciler's
 * self-fencing reads (logSeenAt; also proven every dr.proveIntervalMs
 * between checks, so a pause shorter than fenceAfterMs minus that interval
 * fences nothing); (2) checks every other registered region
 * (its daemon connected and not suspected by the member failure detector);
 * (3) steps the core and commits what it proposes (failovers, failback
 * migrations), one proposal per VM at a time; renews the leases of this
 * region's protected guests after each barrier that answered (so a lease
 * is never renewed past what the log's last answer justifies); and measures
 * the RTO of failovers into this region when their copy first runs here.
 *
 * Invariants: the core decides, the driver only runs checks and commits;
 * a proposal's answer is logged and counted, never acted on beyond that
 * (the next step reads the applied state). Timers stop with stop().
 */
import type { Logger } from '../log.ts';
import type { FleetCommandInput, FleetResult } from '../fleet/commands.ts';
import type { FleetState } from '../fleet/state-machine.ts';
import { EMPTY_DR_MEMORY, stepDr, type DrMemory, type DrOptions, type RegionCheck } from './controller.ts';
import type { DrSettings } from './config.ts';
import type { DrMetrics } from './metrics.ts';

export interface DrDriverOptions {
  readonly region: string;
  readonly settings: DrSettings;
  readonly state: () => FleetState;
  readonly commit: (command: FleetCommandInput, timeoutMs: number) => Promise<FleetResult>;
  /** Resolves when the federation log answered a linearizable read; throws when it cannot within timeoutMs. */
  readonly barrier: (timeoutMs: number) => Promise<void>;
  /** Each other region's health as this node sees it now (member name = region name); absent: not a member we know. */
  readonly health: (region: string) => { readonly ok: boolean; readonly detail?: string } | undefined;
  /** When this region's reconciler first reported the VM running here at that generation (epoch ms); null while it does not. */
  readonly runningSince: (vm: string, generation: number) => number | null;
  /**
   * Renews the leases of this region's protected guests up to
   * logSeenAt + dr.leaseMs (src/dr/lease-plan.ts), after each barrier that
   * answered; absent: no provider holds leases.
   */
  readonly renewLeases?: (logSeenAt: number, leaseMs: number) => Promise<void>;
  readonly metrics: DrMetrics;
  readonly log: Logger;
  readonly now?: () => number;
}

export class DrDriver {
  readonly #o: DrDriverOptions;
  readonly #options: DrOptions;
  readonly #now: () => number;
  #memory: DrMemory = EMPTY_DR_MEMORY;
  readonly #inFlight = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #proofTimer: NodeJS.Timeout | undefined;
  #stopped = false;
  #logSeenAt: number;
  #confirmed = false;
  /** A lease renewal under way (a slow disk): the next one waits for it rather than piling up. */
  #renewing: Promise<void> | null = null;
  /** Failovers into this region whose RTO was measured (vm@generation), and the last RTO per VM. */
  readonly #measured = new Set<string>();
  readonly #rto = new Map<string, number>();

  constructor(options: DrDriverOptions) {
    this.#o = options;
    const s = options.settings;
    this.#options = { checkIntervalMs: s.checkIntervalMs, failAfterChecks: s.failAfterChecks, stabilisationMs: s.stabilisationMs, retryMs: s.retryMs };
    this.#now = options.now ?? Date.now;
    // A daemon that just started counts as having seen the log now: it fences itself only if the log stays silent fenceAfterMs.
    this.#logSeenAt = this.#now();
  }

  /**
   * Whether a barrier answered since this daemon started: until then its
   * desired state may be mid-replay or what it was when it went down (a
   * failover it missed), so the reconciler changes nothing (a restarted
   * region must neither stop a copy it holds nor start the stale copy its
   * lease watchdog just killed).
   */
  logConfirmed(): boolean {
    return this.#confirmed;
  }

  /** When this node's view of the federation log was last known current (the reconciler's self-fencing input). */
  logSeenAt(): number {
    return this.#logSeenAt;
  }

  /** The last RTO this node measured for a VM failed over into this region (ms), if any. */
  rtoOf(vm: string): number | null {
    return this.#rto.get(vm) ?? null;
  }

  start(): void {
    this.#schedule();
    this.#scheduleProof();
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#proofTimer);
  }

  /** Between checks: a barrier read that, when it answers, moves logSeenAt (and records RTOs, measured to the pass that saw the copy running, within this interval rather than a check). */
  #scheduleProof(): void {
    const every = this.#o.settings.proveIntervalMs;
    if (this.#stopped || every >= this.#options.checkIntervalMs) return;
    this.#proofTimer = setTimeout(() => void this.#prove(every).finally(() => this.#scheduleProof()), every);
    this.#proofTimer.unref();
  }

  async #prove(timeoutMs: number): Promise<void> {
    // Only a region holding protected VMs fences itself or measures an RTO: elsewhere a proof would only load the log
    // (on a PBFT scope every barrier is an ordered request). The check's barrier still runs every check, so a region that
    // becomes the home of a protected VM has a proof at most a check old then.
    const self = this.#o.region;
    if (!this.#o.state().protectedVms().some((vm) => vm.assignment?.region === self)) return;
    const asked = this.#now();
    try {
      await this.#o.barrier(timeoutMs);
      this.#seen(asked);
    } catch {
      // The check's own barrier logs; a failed proof only leaves logSeenAt where it was.
    }
    if (!this.#stopped) this.#measureRto(this.#o.state());
  }

  /** A barrier asked at `asked` answered: logSeenAt never moves back (a slow check's barrier may answer after a later proof's). */
  #seen(asked: number): void {
    this.#logSeenAt = Math.max(this.#logSeenAt, asked);
    this.#confirmed = true;
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void this.#tick().finally(() => this.#schedule()), this.#options.checkIntervalMs);
    this.#timer.unref();
  }

  async #tick(): Promise<void> {
    const asked = this.#now();
    let logCurrent = false;
    try {
      await this.#o.barrier(this.#options.checkIntervalMs);
      this.#seen(asked);
      logCurrent = true;
      this.#renew(asked);
    } catch (err) {
      this.#o.log.debug({ err: err instanceof Error ? err.message : String(err) }, 'DR: the federation log did not answer a barrier read');
    }
    if (this.#stopped) return;
    this.#step(logCurrent);
  }

  #renew(logSeenAt: number): void {
    const renew = this.#o.renewLeases;
    if (renew === undefined || this.#renewing !== null) return;
    this.#renewing = renew(logSeenAt, this.#o.settings.leaseMs)
      .catch((err: unknown) => this.#o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'DR: renewing the guests\' leases failed; retried at the next check (a lease that lapses stops its guest)'))
      .finally(() => (this.#renewing = null));
  }

  /** One step of the core on this node's state (exposed for tests that drive time themselves). */
  #step(logCurrent: boolean): void {
    const now = this.#now();
    const state = this.#o.state();
    const checks: RegionCheck[] = [];
    for (const region of state.regions()) {
      if (region.name === this.#o.region) continue;
      const h = this.#o.health(region.name);
      checks.push({ region: region.name, ok: h?.ok ?? false, at: now, ...(h?.detail === undefined ? (h === undefined ? { detail: 'not a configured member' } : {}) : { detail: h.detail }) });
    }
    const result = stepDr({ self: this.#o.region, now, fleet: state, local: { runningHere: (vm, generation) => this.#o.runningSince(vm, generation) !== null }, checks, logCurrent, memory: this.#memory, inFlight: this.#inFlight, options: this.#options });
    this.#memory = result.memory;
    for (const effect of result.effects) {
      if (effect.kind === 'region-failed') {
        this.#o.metrics.regionFailures.inc({ region: effect.region });
        this.#o.log.warn({ region: effect.region, firstFailedAt: new Date(effect.firstFailedAt).toISOString(), detail: effect.detail }, 'DR: region failed; its protected VMs fail over');
      } else if (effect.kind === 'region-recovered') {
        this.#o.log.info({ region: effect.region }, 'DR: region passes its checks again');
      } else this.#propose(effect.vm, effect.why, effect.command);
    }
    this.#measureRto(state);
  }

  #propose(vm: string, kind: 'failover' | 'failback', command: FleetCommandInput): void {
    this.#inFlight.add(vm);
    this.#o.log.info({ vm, kind }, `DR: proposing ${kind}`);
    void this.#o
      .commit(command, Math.max(this.#options.checkIntervalMs, 5_000))
      .then((result) => {
        const outcome = result.ok ? 'ok' : result.code === 'stale_generation' ? 'lost' : 'refused';
        this.#o.metrics.proposals.inc({ kind, result: outcome });
        if (result.ok) this.#o.log.warn({ vm, kind, region: result.region, generation: result.generation }, `DR: ${kind} committed`);
        else this.#o.log[outcome === 'lost' ? 'info' : 'warn']({ vm, kind, code: result.code, err: result.message }, `DR: ${kind} not committed`);
      })
      .catch((err: unknown) => {
        this.#o.metrics.proposals.inc({ kind, result: 'error' });
        this.#o.log.warn({ vm, kind, err: err instanceof Error ? err.message : String(err) }, `DR: ${kind} proposal failed; retried after dr.retryMs`);
      })
      .finally(() => this.#inFlight.delete(vm));
  }

  /**
   * RTO of each failover into this region: from the lost region's first
   * failed check to the reconciler pass that first saw the copy running here
   * (its time, not this check's: the check comes up to checkIntervalMs later).
   */
  #measureRto(state: FleetState): void {
    for (const vm of state.protectedVms()) {
      const f = vm.protection?.failedOver ?? null;
      const a = vm.assignment;
      if (f === null || a === null || a.region !== this.#o.region || a.generation !== f.generation) continue;
      const key = `${vm.name}@${f.generation}`;
      const running = this.#measured.has(key) ? null : this.#o.runningSince(vm.name, f.generation);
      if (running === null) continue;
      this.#measured.add(key);
      const rtoMs = Math.max(0, running - f.since);
      this.#rto.set(vm.name, rtoMs);
      this.#o.metrics.rto.observe(rtoMs / 1000);
      this.#o.log.info({ vm: vm.name, from: f.from.region, rtoMs }, 'DR: failed-over VM running here');
    }
  }
}
