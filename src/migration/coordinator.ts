/**
 * The migration coordinator as a pure core. It runs on the daemon of the
 * migration's source region (the one that holds the VM), one instance per
 * migration under way, and is driven by src/migration/migrator.ts. Input: the
 * migration as the fleet log records it, the VM's desired power, fresh
 * observations (this region's source copy, the target region's copy as its
 * last report shows it, the transfer's status), the coordinator's own memory
 * (timers, failures, which transfer steps finished), which effects are still
 * in flight, and the time. Output: effects (propose a fleet command; stop or
 * resume the source copy; start or cancel a transfer step) and when to look
 * again. It never calls anything itself.
 *
 * The target side is driven by the log, not by this coordinator: while the
 * record is in prepare, transfer or cutover, the target region's reconciler
 * creates the incoming copy (prepared, not booted) and leaves it alone; once
 * the record is rolling back or ended without cutover, that copy is stale
 * there and its reconciler stops and terminates it; after cutover it is the
 * VM's current copy and its reconciler starts it. So "prepare the target",
 * "start the target" (cold, warm) and "tear down the target" need no message
 * between the daemons, and survive a restart of either.
 *
 * Rules, per recorded phase (the mode changes only the transfer):
 * - prepare: once the target's report shows the incoming copy, → transfer.
 *   No copy within prepareTimeoutMs → rolling-back.
 * - transfer: cold: stop the source, then one transfer ('final'). warm:
 *   pre-copy while the source runs ('precopy'), stop it, then the final
 *   delta ('final'). live: one 'live' transfer, at whose end the source is
 *   paused and the target runs (the hypervisor's stop-and-copy). Then
 *   → cutover, recording bytes, rounds and when the source stopped serving.
 *   The source is stopped only while the target's report is current (a
 *   target whose daemon is gone is not worth the downtime). A failed
 *   transfer, one without progress for transferIdleTimeoutMs, a source copy
 *   that vanished or a target copy that did → rolling-back.
 * - cutover: propose migration-cutover (the log re-checks policy and
 *   constraints); refused → rolling-back with the log's reason. Cold and
 *   warm cut over only while the target's report is current and shows its
 *   copy (else wait, and roll back after prepareTimeoutMs); live cuts over
 *   whatever the target's daemon reports, since the guest already runs
 *   there.
 * - verify: the target's report shows the copy at the new generation in the
 *   desired power state → cleanup, with the downtime (from the source
 *   stopping to that report). Not within verifyTimeoutMs → end failed: the
 *   VM stays at the target, whose reconciler owns it.
 * - cleanup: this region's old copy is gone (its reconciler fences a copy
 *   reassigned away: that is the clean-up) → end completed; not within
 *   cleanupTimeoutMs → end completed, saying so.
 * - rolling-back: cancel a running transfer; then, if the target may be
 *   running (live only: the transfer may have completed), wait until the
 *   target's report, taken after the rollback began, shows its copy down;
 *   only then resume the source (if the VM is desired running), and end
 *   rolled-back once the source serves again. Stop the target FIRST,
 *   confirm, then resume the source: never two running copies. Cold and
 *   warm never run the target before cutover (its copy is created stopped
 *   and no reconciler starts an incoming copy), so they resume at once.
 *
 * Never two running copies, never none: the source is stopped or paused only
 * inside transfer (the reconciler leaves the source copy's power to the
 * migration while one is under way), the target starts only after the log
 * moved the assignment, and a source is resumed only when the target cannot
 * run. The log is the arbiter of races (a cancel against a cutover): the
 * coordinator acts on the record as its replica applied it, never on a
 * proposal's answer alone, so it resumes the source only once the record
 * says rolling-back, after which no cutover can commit.
 *
 * Resumable: the memory is lost with the daemon; a restarted coordinator
 * starts its timeouts again and continues from the recorded phase with fresh
 * observations: prepare, cutover, verify, cleanup and rolling-back simply
 * continue; a cold or warm transfer starts again from the beginning (a
 * transfer step is repeatable); a live transfer cannot be resumed (the
 * migration stream died with the daemon): it rolls back, conservatively
 * treating the target as possibly running.
 *
 * Deterministic: the same input gives the same output; time is an input.
 */
import type { ObservedVmState } from '../fleet/reconciler.ts';
import type { PowerState } from '../fleet/commands.ts';
import type { FleetMigration, MigrationFacts, MigrationPhase, MigrationResult } from '../fleet/migrations.ts';

export interface CoordinatorOptions {
  readonly prepareTimeoutMs: number;
  readonly transferIdleTimeoutMs: number;
  readonly verifyTimeoutMs: number;
  readonly cleanupTimeoutMs: number;
  /** Back-off after a failed effect (a proposal the log did not answer, a refused stop). */
  readonly retryMs: number;
  /** Failed stops of the source before the migration rolls back. */
  readonly maxAttempts: number;
}

export const DEFAULT_COORDINATOR_OPTIONS: CoordinatorOptions = {
  prepareTimeoutMs: 60_000,
  transferIdleTimeoutMs: 120_000,
  verifyTimeoutMs: 60_000,
  cleanupTimeoutMs: 600_000,
  retryMs: 1_000,
  maxAttempts: 3,
};

/** This region's copy at the source generation, from its own inventory; absent: none (or terminated). */
export type SourceCopy = { readonly state: ObservedVmState; readonly paused: boolean } | 'absent';

/**
 * The target's copy as the target region's last report shows it: the
 * incoming copy before cutover (tagged with the migration), the VM's copy at
 * the target generation after. `state` null: the region's report is not
 * current (stale, suspected, never made), so nothing is known.
 */
export interface TargetCopy {
  readonly state: ObservedVmState | 'absent' | null;
  /** When the report was made, on this node's clock (now − its age). */
  readonly asOf: number;
}

export const TRANSFER_STEPS = ['precopy', 'final', 'live'] as const;
export type TransferStep = (typeof TRANSFER_STEPS)[number];

/** What the transfer seam says of this migration's transfer in this daemon; null: none started since the daemon started. */
export interface TransferStatus {
  readonly step: TransferStep;
  readonly status: 'running' | 'done' | 'failed';
  /** Bytes on the wire and rounds, this step so far. */
  readonly bytes: number;
  readonly rounds: number;
  /** When bytes last moved (or the step started). */
  readonly progressAt: number;
  readonly error?: string;
  /** live: the target may hold the whole state and run (completed, or it cannot tell). */
  readonly targetMayRun: boolean;
  /** live: the downtime the hypervisor measured. */
  readonly downtimeMs?: number;
}

export interface CoordinatorObservations {
  readonly source: SourceCopy;
  readonly target: TargetCopy;
  readonly transfer: TransferStatus | null;
}

export type CoordinatorCommand =
  | { readonly kind: 'migration-progress'; readonly id: string; readonly phase: Exclude<MigrationPhase, 'verify'>; readonly facts?: MigrationFacts; readonly reason?: string; readonly at: number }
  | { readonly kind: 'migration-cutover'; readonly id: string; readonly facts?: MigrationFacts; readonly at: number }
  | { readonly kind: 'migration-end'; readonly id: string; readonly result: MigrationResult; readonly reason?: string; readonly facts?: MigrationFacts; readonly at: number };

export type CoordinatorEffect =
  | { readonly kind: 'propose'; readonly command: CoordinatorCommand }
  | { readonly kind: 'stop-source' }
  | { readonly kind: 'resume-source' }
  | { readonly kind: 'start-transfer'; readonly step: TransferStep }
  | { readonly kind: 'cancel-transfer' };

/** One effect in flight at a time per key: proposals, source operations, the transfer. */
export function effectKey(effect: CoordinatorEffect): 'propose' | 'source' | 'transfer' {
  switch (effect.kind) {
    case 'propose':
      return 'propose';
    case 'stop-source':
    case 'resume-source':
      return 'source';
    case 'start-transfer':
    case 'cancel-transfer':
      return 'transfer';
  }
}

/** How an effect the driver ran ended. */
export interface EffectOutcome {
  readonly effect: CoordinatorEffect;
  /** ok; refused: the log answered no (proposals); error: no answer or the operation failed. */
  readonly result: 'ok' | 'refused' | 'error';
  readonly error?: string;
  readonly at: number;
}

export interface CoordinatorMemory {
  /** The recorded phase when this coordinator first saw it, and when: timeouts count from there. */
  readonly phase: MigrationPhase | null;
  readonly phaseSince: number;
  /** Transfer steps finished in this phase, by this incarnation. */
  readonly steps: readonly TransferStep[];
  /** The finished transfer steps' bytes and rounds, summed (what the next transition records). */
  readonly bytes: number;
  readonly rounds: number;
  /** When the source was seen to stop serving, in this incarnation. */
  readonly pausedAt: number | null;
  /** The hypervisor's downtime, for live. */
  readonly downtimeMs: number | null;
  /** Whether the target may run (live: a transfer that completed, or one this incarnation cannot account for). */
  readonly targetMayRun: boolean;
  /** Failures per effect key. */
  readonly failures: ReadonlyMap<string, { readonly count: number; readonly retryAt: number; readonly error: string }>;
  /** Why the log refused the cutover (then the migration rolls back). */
  readonly cutoverRefused: string | null;
}

export const EMPTY_COORDINATOR_MEMORY: CoordinatorMemory = {
  phase: null,
  phaseSince: 0,
  steps: [],
  bytes: 0,
  rounds: 0,
  pausedAt: null,
  downtimeMs: null,
  targetMayRun: false,
  failures: new Map(),
  cutoverRefused: null,
};

export interface CoordinatorInput {
  /** The migration as this node's replica of the log records it (under way). */
  readonly migration: FleetMigration;
  /** The VM's desired power: what verify expects at the target and whether a rollback resumes the source. */
  readonly power: PowerState;
  readonly observed: CoordinatorObservations;
  readonly memory: CoordinatorMemory;
  readonly outcomes?: readonly EffectOutcome[];
  /** effectKey of the effects still running. */
  readonly inFlight: ReadonlySet<string>;
  readonly now: number;
  readonly options?: CoordinatorOptions;
}

export interface CoordinatorResult {
  readonly effects: readonly CoordinatorEffect[];
  readonly memory: CoordinatorMemory;
  /** Look again at this time at the latest (a timeout or a retry); null: only when something changes. */
  readonly wakeAt: number | null;
  /** One line on what the coordinator is waiting for (operators: `migration status`). */
  readonly waiting: string;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

function serving(source: SourceCopy): boolean {
  return source !== 'absent' && (source.state === 'running' || source.state === 'pending') && !source.paused;
}

function gone(source: SourceCopy): boolean {
  return source === 'absent' || source.state === 'terminated';
}

function seconds(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

/** Folds finished effects into the memory: failures back off; a refused cutover is remembered; a finished transfer step is noted. */
function fold(memory: CoordinatorMemory, outcomes: readonly EffectOutcome[], options: CoordinatorOptions): Mutable<CoordinatorMemory> {
  const next: Mutable<CoordinatorMemory> = { ...memory, failures: new Map(memory.failures) };
  const failures = next.failures as Map<string, { count: number; retryAt: number; error: string }>;
  for (const outcome of outcomes) {
    const key = effectKey(outcome.effect);
    if (outcome.result === 'ok') {
      failures.delete(key);
      continue;
    }
    if (outcome.effect.kind === 'propose' && outcome.effect.command.kind === 'migration-cutover' && outcome.result === 'refused') {
      next.cutoverRefused = outcome.error ?? 'the log refused it';
    }
    const count = (failures.get(key)?.count ?? 0) + 1;
    failures.set(key, { count, retryAt: outcome.at + options.retryMs * 2 ** Math.min(count - 1, 6), error: outcome.error ?? 'no reason given' });
  }
  return next;
}

/** One step of one migration's coordinator. */
export function coordinate(input: CoordinatorInput): CoordinatorResult {
  const options = input.options ?? DEFAULT_COORDINATOR_OPTIONS;
  const { migration: m, observed, now, inFlight } = input;
  let before = input.memory;
  if (before.phase !== m.phase) {
    // A new phase (or a restart): its timeout starts now; the transfer bookkeeping belongs to the transfer phase.
    // A restarted coordinator that finds a live migration rolling back cannot know whether the transfer completed.
    const unknowable = m.mode === 'live' && before.phase === null && m.phase === 'rolling-back';
    // Failures count per phase: a stop that failed in transfer says nothing about a resume while rolling back.
    before = { ...before, phase: m.phase, phaseSince: now, cutoverRefused: null, steps: m.phase === 'transfer' ? before.steps : [], targetMayRun: before.targetMayRun || unknowable, failures: new Map() };
  }
  const memory = fold(before, input.outcomes ?? [], options);
  const effects: CoordinatorEffect[] = [];
  const wakes: number[] = [];
  const free = (key: string): boolean => {
    if (inFlight.has(key)) return false;
    const failed = memory.failures.get(key);
    if (failed !== undefined && now < failed.retryAt) {
      wakes.push(failed.retryAt);
      return false;
    }
    return true;
  };
  const emit = (effect: CoordinatorEffect): void => {
    if (free(effectKey(effect))) effects.push(effect);
  };
  const propose = (command: CoordinatorCommand): void => emit({ kind: 'propose', command });
  const rollBack = (reason: string): string => {
    if (observed.transfer?.status === 'running') emit({ kind: 'cancel-transfer' });
    propose({ kind: 'migration-progress', id: m.id, phase: 'rolling-back', reason, at: now });
    return `rolling back: ${reason}`;
  };
  const deadline = (ms: number): boolean => {
    wakes.push(memory.phaseSince + ms);
    return now >= memory.phaseSince + ms;
  };
  const source = observed.source;
  const target = observed.target;
  const transfer = observed.transfer;
  const targetName = `${m.target.region}/${m.target.provider}`;
  if (transfer !== null && transfer.targetMayRun) memory.targetMayRun = true;
  if (m.facts.pausedAt !== undefined && memory.pausedAt === null) memory.pausedAt = m.facts.pausedAt;
  // A VM desired stopped that never had a copy (created --stopped): there is nothing to move, only the assignment.
  const nothingToMove = gone(source) && input.power === 'stopped';
  let waiting: string;

  switch (m.phase) {
    case 'prepare': {
      if (gone(source) && !nothingToMove) {
        waiting = rollBack(`the source copy of ${m.vm} in ${m.source.region} is gone`);
        break;
      }
      if (target.state !== null && target.state !== 'absent' && target.state !== 'terminated') {
        propose({ kind: 'migration-progress', id: m.id, phase: 'transfer', at: now });
        waiting = `the log to record the transfer phase`;
        break;
      }
      if (deadline(options.prepareTimeoutMs)) {
        const seen = target.state === null ? `its report is not current` : `its report shows no incoming copy`;
        waiting = rollBack(`${targetName} did not prepare a copy of ${m.vm} within ${seconds(options.prepareTimeoutMs)} (${seen})`);
        break;
      }
      waiting = `${m.target.region} to prepare the incoming copy`;
      break;
    }
    case 'transfer':
      if (nothingToMove) {
        propose({ kind: 'migration-progress', id: m.id, phase: 'cutover', facts: { bytes: 0, rounds: 0 }, at: now });
        waiting = 'the log to record the cutover phase (nothing to move: the VM is stopped and has no copy)';
        break;
      }
      waiting = transferStep({ m, power: input.power, observed, memory, now, options, emit, propose, rollBack, wake: (at) => wakes.push(at) });
      break;
    case 'cutover': {
      if (memory.cutoverRefused !== null) {
        waiting = rollBack(`the cutover was refused: ${memory.cutoverRefused}`);
        break;
      }
      if (target.state === 'absent' || target.state === 'terminated') {
        waiting = rollBack(`the incoming copy at ${m.target.region} is gone`);
        break;
      }
      // Cold and warm: the target has not run the VM yet; cutting over to a region that does not report would only move the downtime there.
      // Live: the hypervisor already runs the guest at the target, so cutting over is the way forward whatever its daemon reports.
      if (m.mode !== 'live' && target.state === null) {
        if (deadline(options.prepareTimeoutMs)) {
          waiting = rollBack(`${targetName} has not reported for ${seconds(now - memory.phaseSince)}; not cutting over to it`);
          break;
        }
        waiting = `${m.target.region} to report again before cutting over`;
        break;
      }
      // The transfer's facts were recorded on the way into this phase.
      propose({ kind: 'migration-cutover', id: m.id, at: now });
      waiting = 'the log to cut over';
      break;
    }
    case 'verify': {
      const want = input.power === 'running' ? 'running' : 'stopped';
      if (target.state === want) {
        const downtime = m.mode === 'live' ? (m.facts.downtimeMs ?? memory.downtimeMs) : memory.pausedAt === null || input.power !== 'running' ? null : Math.max(0, Math.min(now, target.asOf) - memory.pausedAt);
        propose({ kind: 'migration-progress', id: m.id, phase: 'cleanup', ...(downtime === null || downtime === undefined ? {} : { facts: { downtimeMs: downtime } }), at: now });
        waiting = 'the log to record the clean-up phase';
        break;
      }
      if (deadline(options.verifyTimeoutMs)) {
        const seen = target.state === null ? 'its report is not current' : `its report shows it ${target.state}`;
        propose({ kind: 'migration-end', id: m.id, result: 'failed', reason: `cut over, but ${targetName} did not report ${m.vm} ${want} within ${seconds(options.verifyTimeoutMs)} (${seen}); its reconciler owns the VM now`, at: now });
        waiting = 'the log to end the migration failed';
        break;
      }
      waiting = `${m.target.region} to report ${m.vm} ${want}`;
      break;
    }
    case 'cleanup': {
      if (gone(source)) {
        propose({ kind: 'migration-end', id: m.id, result: 'completed', at: now });
        waiting = 'the log to end the migration';
        break;
      }
      if (deadline(options.cleanupTimeoutMs)) {
        propose({ kind: 'migration-end', id: m.id, result: 'completed', reason: `the source copy in ${m.source.region} was not confirmed gone within ${seconds(options.cleanupTimeoutMs)}; its reconciler keeps fencing it`, at: now });
        waiting = 'the log to end the migration';
        break;
      }
      waiting = `${m.source.region}'s reconciler to fence the old copy`;
      break;
    }
    case 'rolling-back': {
      if (transfer?.status === 'running') emit({ kind: 'cancel-transfer' });
      const reason = m.reason ?? 'rolled back';
      // Stop the target first: a target that may run must be seen down, in a report taken after the rollback began.
      const targetDown = target.state === 'absent' || target.state === 'stopped' || target.state === 'terminated';
      if (memory.targetMayRun && !(targetDown && target.asOf >= memory.phaseSince)) {
        waiting = `${m.target.region} to report its copy stopped (the transfer may have completed there) before the source resumes`;
        break;
      }
      if (gone(source) && !nothingToMove) {
        const lost = `the source copy of ${m.vm} in ${m.source.region} is gone`;
        propose({ kind: 'migration-end', id: m.id, result: 'failed', reason: `${reason.includes(lost) ? reason : `${reason}; and ${lost}`} (its reconciler creates it again)`, at: now });
        waiting = 'the log to end the migration';
        break;
      }
      if (input.power === 'stopped' || serving(source)) {
        propose({ kind: 'migration-end', id: m.id, result: 'rolled-back', reason, at: now });
        waiting = 'the log to end the migration';
        break;
      }
      const failed = memory.failures.get('source');
      if (failed !== undefined && failed.count >= options.maxAttempts) {
        propose({ kind: 'migration-end', id: m.id, result: 'rolled-back', reason: `${reason}; the source did not resume (${failed.error}), its reconciler takes over`, at: now });
        waiting = 'the log to end the migration';
        break;
      }
      if (source !== 'absent' && (source.state === 'stopped' || source.paused)) emit({ kind: 'resume-source' });
      waiting = `the source copy to serve again`;
      break;
    }
  }
  const future = wakes.filter((t) => t > now);
  return { effects, memory, wakeAt: future.length === 0 ? null : Math.min(...future), waiting };
}

interface TransferContext {
  readonly m: FleetMigration;
  readonly power: PowerState;
  readonly observed: CoordinatorObservations;
  readonly memory: Mutable<CoordinatorMemory>;
  readonly now: number;
  readonly options: CoordinatorOptions;
  emit(effect: CoordinatorEffect): void;
  propose(command: CoordinatorCommand): void;
  rollBack(reason: string): string;
  wake(at: number): void;
}

/** The transfer phase: stop the source where the mode says, run the steps, and record the facts on the way to cutover. */
function transferStep(ctx: TransferContext): string {
  const { m, power, observed, memory, now, options, emit, propose, rollBack } = ctx;
  const { source, target, transfer } = observed;
  if (gone(source)) return rollBack(`the source copy of ${m.vm} in ${m.source.region} is gone`);
  if (target.state === 'absent' || target.state === 'terminated') return rollBack(`the incoming copy at ${m.target.region} is gone`);
  const steps = memory.steps as TransferStep[];
  if (transfer !== null) {
    if (transfer.status === 'failed') return rollBack(`the ${transfer.step} transfer failed: ${transfer.error ?? 'no reason given'}`);
    if (transfer.status === 'running') {
      if (now - transfer.progressAt >= options.transferIdleTimeoutMs) return rollBack(`the ${transfer.step} transfer made no progress for ${seconds(now - transfer.progressAt)}`);
      ctx.wake(transfer.progressAt + options.transferIdleTimeoutMs);
    }
    if (transfer.status === 'done' && !steps.includes(transfer.step)) {
      memory.steps = [...steps, transfer.step];
      // Every finished step's bytes count (warm: the pre-copy rounds and the final delta).
      memory.bytes += transfer.bytes;
      memory.rounds += transfer.rounds;
      if (transfer.downtimeMs !== undefined) memory.downtimeMs = transfer.downtimeMs;
    }
  }
  const done = (step: TransferStep): boolean => memory.steps.includes(step);
  const running = transfer?.status === 'running';
  const next = (): string => {
    propose({
      kind: 'migration-progress',
      id: m.id,
      phase: 'cutover',
      facts: {
        bytes: memory.bytes,
        rounds: memory.rounds,
        ...(memory.pausedAt === null ? {} : { pausedAt: memory.pausedAt }),
        ...(memory.downtimeMs === null ? {} : { downtimeMs: memory.downtimeMs }),
      },
      at: now,
    });
    return 'the log to record the cutover phase';
  };
  const stopSource = (): string => {
    const failed = memory.failures.get('source');
    if (failed !== undefined && failed.count >= options.maxAttempts) return rollBack(`the source copy did not stop: ${failed.error}`);
    // The VM is not taken down for a target that does not report (its daemon may be gone): wait, and roll back after prepareTimeoutMs.
    if (target.state === null) {
      ctx.wake(memory.phaseSince + options.prepareTimeoutMs);
      if (now >= memory.phaseSince + options.prepareTimeoutMs) return rollBack(`${m.target.region}/${m.target.provider} has not reported for ${seconds(now - memory.phaseSince)}; the source was not stopped`);
      return `${m.target.region} to report again before the source stops`;
    }
    if (source !== 'absent' && (source.state === 'running' || source.state === 'pending')) emit({ kind: 'stop-source' });
    return 'the source copy to stop';
  };
  // Only ever stopped by this migration (its reconciler leaves the copy's power to it); stopping counts as no longer serving.
  const stopped = source !== 'absent' && (source.state === 'stopped' || source.paused);
  if (stopped && memory.pausedAt === null) memory.pausedAt = now;

  if (m.mode === 'live') {
    if (done('live')) return next();
    if (running) return `the live transfer (${transfer?.bytes ?? 0} bytes, round ${transfer?.rounds ?? 0})`;
    if (!serving(source)) {
      // A live transfer this incarnation did not start, with the source not serving: it may have completed before a restart.
      memory.targetMayRun = true;
      return rollBack('the live transfer was interrupted (the coordinator restarted) with the source not serving');
    }
    emit({ kind: 'start-transfer', step: 'live' });
    return 'the live transfer to start';
  }
  if (m.mode === 'warm' && !done('precopy') && !done('final') && !stopped && power === 'running') {
    if (running) return `the pre-copy (${transfer?.bytes ?? 0} bytes, round ${transfer?.rounds ?? 0})`;
    if (serving(source)) {
      emit({ kind: 'start-transfer', step: 'precopy' });
      return 'the pre-copy to start';
    }
  }
  if (done('final')) return next();
  if (!stopped) {
    if (running) return `the ${transfer?.step ?? ''} transfer to finish before the source stops`;
    return stopSource();
  }
  if (running) return `the final transfer (${transfer?.bytes ?? 0} bytes)`;
  emit({ kind: 'start-transfer', step: 'final' });
  return 'the final transfer to start';
}
