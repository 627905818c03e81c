/**
 * Migrator: the driver of the migration coordinator (coordinator.ts) on this
 * daemon, for the migrations whose source is this region (the region that
 * holds the VM). Each pass reads the migrations under way from this node's
 * replica of the fleet log, observes the source copy in this region's
 * inventory and the target copy in the target region's last report (the
 * fleet view: the geo store's observed records), asks the core what to do
 * and does it: commits the fleet commands it proposes, stops or resumes the
 * source copy through the inventory, starts or cancels transfer steps
 * through the MigrationTransfer of the source provider's kind (transfer.ts).
 *
 * Invariants:
 * - One pass at a time (PassLoop): on kick (a fleet command applied here),
 *   after each effect finishes, at the time the core asked for, and at
 *   least every intervalMs.
 * - One effect per key in flight per migration (a proposal, a source
 *   operation, a transfer); the core is told which.
 * - Everything the log records is logged here too, once, as this node sees
 *   it: each phase change with its reason, and the end with its result,
 *   reason and facts; the metrics count each end of a migration this region
 *   coordinated, however it ended (a delete ends one too).
 * - The coordinator's memory is this process's: a restart starts it empty,
 *   which the core is built for (it resumes or rolls back from the phase).
 */
import type { Logger } from '../log.ts';
import { PassLoop } from '../driver/pass-loop.ts';
import type { FleetResult } from '../fleet/commands.ts';
import type { FleetView } from '../fleet/fleet-view.ts';
import { MIGRATION_TAG, isCutOver, type FleetMigration } from '../fleet/migrations.ts';
import type { ReconcilerInventory } from '../fleet/region-reconciler.ts';
import { DESIRED_VM_TAG, GENERATION_TAG } from '../fleet/reconciler.ts';
import type { FleetState } from '../fleet/state-machine.ts';
import {
  EMPTY_COORDINATOR_MEMORY,
  coordinate,
  effectKey,
  type CoordinatorCommand,
  type CoordinatorEffect,
  type CoordinatorMemory,
  type CoordinatorOptions,
  type EffectOutcome,
  type TargetCopy,
  type TransferStatus,
} from './coordinator.ts';
import type { MigrationMetrics } from './metrics.ts';
import { missingTransfer, type MigrationTransfer, type TransferHandle } from './transfer.ts';

export interface MigratorOptions {
  readonly region: string;
  /** This node's replica of the desired state. */
  readonly desired: () => FleetState;
  /** Commits a fleet command through the federation log; throws when the log does not answer in time. */
  readonly commit: (command: CoordinatorCommand, timeoutMs: number) => Promise<FleetResult>;
  readonly inventory: Pick<ReconcilerInventory, 'list' | 'change'>;
  /** The fleet as this node sees it: the target region's last report. */
  readonly view: () => FleetView;
  /** The transfer per provider kind; a kind without one fails its migrations' transfers (they roll back). */
  readonly transfers: Readonly<Record<string, MigrationTransfer>>;
  readonly metrics: MigrationMetrics;
  readonly log: Logger;
  readonly coordinator: CoordinatorOptions;
  readonly intervalMs: number;
  readonly commitTimeoutMs: number;
  readonly now?: () => number;
}

/** What this daemon knows of one migration it coordinates, beyond the log's record. */
export interface MigrationProgress {
  /** What the coordinator waits for. */
  readonly waiting: string;
  readonly transfer: TransferStatus | null;
}

interface Tracked {
  memory: CoordinatorMemory;
  readonly inFlight: Set<string>;
  outcomes: EffectOutcome[];
  transfer: TransferHandle | null;
  /** The step already told to cancel: it may stay running while it winds down, and is not told (nor the loop kicked) again. */
  cancelled: TransferHandle | null;
  /** The record as last logged (phase and reason). */
  logged: FleetMigration;
  waiting: string;
}

interface Copy {
  readonly provider: string;
  readonly id: string;
}

export class Migrator {
  readonly #o: MigratorOptions;
  readonly #loop: PassLoop;
  readonly #tracked = new Map<string, Tracked>();

  constructor(options: MigratorOptions) {
    this.#o = options;
    this.#loop = new PassLoop({
      pass: () => this.#pass(),
      intervalMs: options.intervalMs,
      onError: (err) => options.log.warn({ err: errorText(err) }, 'fleet migration pass failed; retrying at the next interval'),
      ...(options.now === undefined ? {} : { now: options.now }),
    });
  }

  start(): void {
    this.#loop.start();
  }

  stop(): Promise<void> {
    for (const t of this.#tracked.values()) t.transfer?.cancel();
    return this.#loop.stop();
  }

  kick(): void {
    this.#loop.kick();
  }

  nextPass(): Promise<void> {
    return this.#loop.nextPass();
  }

  /** This daemon's view of a migration it coordinates; undefined for one it does not (another region's, or ended). */
  progress(id: string): MigrationProgress | undefined {
    const t = this.#tracked.get(id);
    return t === undefined ? undefined : { waiting: t.waiting, transfer: t.transfer?.status() ?? null };
  }

  async #pass(): Promise<void> {
    const now = this.#o.now ?? Date.now;
    const state = this.#o.desired();
    const mine = state.migrations().filter((m) => m.source.region === this.#o.region);
    this.#forgetEnded(state, new Set(mine.map((m) => m.id)));
    if (mine.length === 0) return;
    const { instances } = await this.#o.inventory.list({});
    const view = this.#o.view();
    for (const m of mine) {
      let t = this.#tracked.get(m.id);
      if (t === undefined) {
        t = { memory: EMPTY_COORDINATOR_MEMORY, inFlight: new Set(), outcomes: [], transfer: null, cancelled: null, logged: m, waiting: '' };
        this.#tracked.set(m.id, t);
        this.#o.log.info({ migration: m.id, vm: m.vm, mode: m.mode, phase: m.phase, from: `${m.source.region}/${m.source.provider}`, to: `${m.target.region}/${m.target.provider}`, generation: m.target.generation }, 'fleet migration under way (coordinated here)');
      } else this.#logPhase(t, m);
      const sourceEntry = instances.find((e) => e.provider === m.source.provider && e.instance.tags[DESIRED_VM_TAG] === m.vm && e.instance.tags[GENERATION_TAG] === String(m.source.generation) && e.instance.state !== 'terminated');
      const source: Copy | null = sourceEntry === undefined ? null : { provider: sourceEntry.provider, id: sourceEntry.instance.id };
      const transfer = this.#transferOf(state, m);
      const outcomes = t.outcomes;
      t.outcomes = [];
      const result = coordinate({
        migration: m,
        power: state.vm(m.vm)?.power ?? 'running',
        observed: {
          source: sourceEntry === undefined ? 'absent' : { state: sourceEntry.instance.state, paused: source !== null && transfer.paused?.(source) === true },
          target: targetCopy(view, m, now()),
          transfer: t.transfer?.status() ?? null,
        },
        memory: t.memory,
        outcomes,
        inFlight: t.inFlight,
        now: now(),
        options: this.#o.coordinator,
      });
      t.memory = result.memory;
      t.waiting = result.waiting;
      if (result.wakeAt !== null) this.#loop.wakeBy(result.wakeAt);
      for (const effect of result.effects) this.#run(m, t, effect, source, transfer);
    }
  }

  /** Migrations this region coordinated that are no longer under way: logged and counted once, by their recorded end. */
  #forgetEnded(state: FleetState, active: ReadonlySet<string>): void {
    for (const [id, t] of this.#tracked) {
      if (active.has(id)) continue;
      this.#tracked.delete(id);
      t.transfer?.cancel();
      const m = state.migration(id);
      if (m === undefined || m.result === null) continue;
      const fields = { migration: id, vm: m.vm, mode: m.mode, result: m.result, reason: m.reason ?? undefined, bytes: m.facts.bytes, downtimeMs: m.facts.downtimeMs, at: `${(m.result === 'completed' ? m.target : m.source).region}` };
      if (m.result === 'completed') this.#o.log.info(fields, 'fleet migration ended');
      else this.#o.log.warn(fields, 'fleet migration ended');
      const metrics = this.#o.metrics;
      metrics.migrations.inc({ mode: m.mode, result: m.result });
      if (m.endedAt !== null && m.endedAt >= m.startedAt) metrics.duration.observe({ mode: m.mode }, (m.endedAt - m.startedAt) / 1000);
      if (m.result === 'completed' && m.facts.downtimeMs !== undefined) metrics.downtime.observe({ mode: m.mode }, m.facts.downtimeMs / 1000);
      if (m.facts.bytes !== undefined && m.facts.bytes > 0) metrics.bytes.inc({ mode: m.mode }, m.facts.bytes);
    }
  }

  #logPhase(t: Tracked, m: FleetMigration): void {
    if (t.logged.phase === m.phase) return;
    const fields = { migration: m.id, vm: m.vm, from: t.logged.phase, phase: m.phase, reason: m.reason ?? undefined, bytes: m.facts.bytes };
    if (m.phase === 'rolling-back') this.#o.log.warn(fields, 'fleet migration rolling back');
    else this.#o.log.info(fields, isCutOver(m.phase) && !isCutOver(t.logged.phase) ? 'fleet migration cut over' : 'fleet migration phase');
    t.logged = m;
  }

  #transferOf(state: FleetState, m: FleetMigration): MigrationTransfer {
    const kind = state.region(m.source.region)?.providers.find((p) => p.name === m.source.provider)?.kind ?? 'unknown';
    return this.#o.transfers[kind] ?? missingTransfer(kind, this.#o.now);
  }

  #run(m: FleetMigration, t: Tracked, effect: CoordinatorEffect, source: Copy | null, transfer: MigrationTransfer): void {
    const now = this.#o.now ?? Date.now;
    const log = this.#o.log;
    const key = effectKey(effect);
    const finish = (result: EffectOutcome['result'], error?: string): void => {
      t.inFlight.delete(key);
      t.outcomes.push({ effect, result, ...(error === undefined ? {} : { error }), at: now() });
      this.#loop.kick();
    };
    switch (effect.kind) {
      case 'propose': {
        t.inFlight.add(key);
        this.#o
          .commit(effect.command, this.#o.commitTimeoutMs)
          .then((answer) => {
            if (!answer.ok) log.info({ migration: m.id, vm: m.vm, command: effect.command.kind, code: answer.code, err: answer.message }, 'fleet migration step refused by the log');
            finish(answer.ok ? 'ok' : 'refused', answer.ok ? undefined : `${answer.code}: ${answer.message}`);
          })
          .catch((err: unknown) => finish('error', errorText(err)));
        return;
      }
      case 'stop-source':
      case 'resume-source': {
        if (source === null) return finish('error', `no copy of ${m.vm} at generation ${m.source.generation} in ${m.source.provider}`);
        t.inFlight.add(key);
        const paused = transfer.paused?.(source) === true;
        const operation =
          effect.kind === 'stop-source'
            ? this.#o.inventory.change('stop', source.id, { provider: source.provider }).then(() => undefined)
            : paused && transfer.resume !== undefined
              ? transfer.resume(source)
              : this.#o.inventory.change('start', source.id, { provider: source.provider }).then(() => undefined);
        log.info({ migration: m.id, vm: m.vm, provider: source.provider, instanceId: source.id }, effect.kind === 'stop-source' ? 'fleet migration stops the source copy' : 'fleet migration resumes the source copy');
        operation.then(
          () => finish('ok'),
          (err: unknown) => {
            log.warn({ migration: m.id, vm: m.vm, action: effect.kind, err: errorText(err) }, 'fleet migration source operation failed; backing off');
            finish('error', errorText(err));
          },
        );
        return;
      }
      case 'start-transfer': {
        if (source === null) return finish('error', `no copy of ${m.vm} to transfer`);
        t.transfer?.cancel();
        t.transfer = transfer.start({ migration: m, step: effect.step, source });
        log.info({ migration: m.id, vm: m.vm, step: effect.step }, 'fleet migration transfer step started');
        return finish('ok');
      }
      case 'cancel-transfer':
        // Once per step. A cancelled live step stays running while it asks QEMU how its migration ended, and every pass
        // meanwhile asks for the cancel again: answering each with a kick made the passes spin (and log) without a pause.
        if (t.transfer === null || t.cancelled === t.transfer) return;
        t.cancelled = t.transfer;
        t.transfer.cancel();
        log.info({ migration: m.id, vm: m.vm }, 'fleet migration transfer cancelled');
        return finish('ok');
    }
  }
}

/**
 * The target's copy as the target region's last report shows it: before
 * cutover the one tagged with the migration, after it the VM's copy at the
 * target generation. Null state when the report is not current.
 */
export function targetCopy(view: FleetView, m: FleetMigration, now: number): TargetCopy {
  const region = view.regions.find((r) => r.region === m.target.region);
  const asOf = region?.reportAgeSeconds === null || region === undefined ? 0 : now - region.reportAgeSeconds * 1000;
  if (region === undefined || region.report !== 'current') return { state: null, asOf };
  const copy = view.vms.find(
    (v) =>
      v.region === m.target.region &&
      v.provider === m.target.provider &&
      v.desiredVm === m.vm &&
      v.tags[GENERATION_TAG] === String(m.target.generation) &&
      (isCutOver(m.phase) || v.tags[MIGRATION_TAG] === m.id),
  );
  return { state: copy?.lastState ?? 'absent', asOf };
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
