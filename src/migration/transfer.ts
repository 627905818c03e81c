/**
 * The transfer seam: how a migration's data moves from the source copy to
 * the target's incoming copy, one step at a time ('precopy' while the source
 * runs, 'final' after it stopped, 'live' for the hypervisor's own pre-copy
 * and stop-and-copy). The coordinator (coordinator.ts) decides which step
 * runs when; the migrator (migrator.ts) starts the step through the
 * MigrationTransfer of the source provider's kind and reads its status on
 * every pass. One implementation per provider kind:
 *
 * - `local` (here): local VMs are records, and the target's reconciler has
 *   already created the incoming record from the same spec, so there is
 *   nothing to move: every step is done at once with 0 bytes. This makes the
 *   whole flow (log, coordinator, reconcilers, rollback, restarts) testable
 *   end to end with real daemons and no hypervisor.
 * - `qemu` (qemu-transfer.ts): warm/cold move the disk as blob deltas, live
 *   carries QEMU's migration stream and its disk mirror over
 *   /dwcp/migrate/2.0.0 to the target daemon, which feeds its incoming QEMU.
 *   It implements `paused` and `resume` (QEMU `cont` on a paused source) and
 *   reports `targetMayRun` honestly: true once QEMU says `completed`, or
 *   whenever it cannot tell.
 *
 * Invariants an implementation keeps: `start` never throws (a failure is a
 * status); a step can be started again from scratch after a failure or a
 * restart (the coordinator repeats steps, it never resumes one); `cancel`
 * is idempotent; status reads are cheap (the migrator polls them).
 */
import type { FleetMigration } from '../fleet/migrations.ts';
import type { TransferStatus, TransferStep } from './coordinator.ts';

export interface TransferRequest {
  readonly migration: FleetMigration;
  readonly step: TransferStep;
  /** The source copy: this region's provider (configured name) and instance id. */
  readonly source: { readonly provider: string; readonly id: string };
}

export interface TransferHandle {
  status(): TransferStatus;
  cancel(): void;
}

export interface MigrationTransfer {
  start(request: TransferRequest): TransferHandle;
  /** Whether a live transfer left this source copy paused (QEMU after its stop-and-copy); absent where nothing pauses. */
  paused?(source: { readonly provider: string; readonly id: string }): boolean;
  /** Resumes a source a live transfer paused; absent where nothing pauses (then a stopped source is started by the provider). */
  resume?(source: { readonly provider: string; readonly id: string }): Promise<void>;
}

/** A handle whose step ended at once: done, or failed with a reason. */
export function finishedTransfer(step: TransferStep, at: number, error?: string): TransferHandle {
  const status: TransferStatus = { step, status: error === undefined ? 'done' : 'failed', bytes: 0, rounds: 0, progressAt: at, targetMayRun: false, ...(error === undefined ? {} : { error }) };
  return { status: () => status, cancel: () => undefined };
}

/** local → local: a record-level move; the incoming record already exists at the target, so every step is done at once. */
export function localTransfer(now: () => number = Date.now): MigrationTransfer {
  return { start: (request) => finishedTransfer(request.step, now()) };
}

/** What a daemon without a transfer for a provider kind answers: every step fails, naming the kind, so the migration rolls back. */
export function missingTransfer(kind: string, now: () => number = Date.now): MigrationTransfer {
  return { start: (request) => finishedTransfer(request.step, now(), `this daemon has no ${kind} transfer (the ${kind} migration transport is not built yet)`) };
}
