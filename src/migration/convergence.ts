/**
 * Whether a live migration converges, as a pure judgement over what
 * QEMU's `query-migrate` says (src/cloud/qemu/migration-qmp.ts), polled by
 * the live transfer (qemu-transfer.ts). QEMU's pre-copy sends the memory,
 * then round after round what the guest dirtied meanwhile, and stops the
 * guest for the final copy once the rest fits the downtime limit. A guest
 * that dirties memory faster than the link carries it never gets there.
 *
 * Rules:
 * - completed → done; failed or cancelled → failed, with QEMU's error.
 * - After `armAfterRounds` rounds (dirty-bitmap syncs) without completing,
 *   arm auto-converge (QEMU then throttles the guest's CPUs, more each
 *   round, until the dirty rate fits): once.
 * - Past `timeoutMs` from the start, abort: the migration is cancelled,
 *   the source runs on, the coordinator rolls back.
 *
 * Deterministic: the same input gives the same answer; time is an input.
 */
import type { MigrationInfo } from '../cloud/qemu/migration-qmp.ts';

export interface ConvergenceOptions {
  /** Rounds without completing before auto-converge is armed. */
  readonly armAfterRounds: number;
  /** From the migrate command to giving up. */
  readonly timeoutMs: number;
}

export const DEFAULT_CONVERGENCE: ConvergenceOptions = { armAfterRounds: 5, timeoutMs: 300_000 };

export type ConvergenceVerdict =
  | { readonly kind: 'wait' }
  | { readonly kind: 'arm-throttle'; readonly why: string }
  | { readonly kind: 'done' }
  | { readonly kind: 'failed'; readonly why: string }
  | { readonly kind: 'abort'; readonly why: string };

export function judgeConvergence(info: MigrationInfo, state: { readonly startedAt: number; readonly armed: boolean }, now: number, options: ConvergenceOptions): ConvergenceVerdict {
  if (info.status === 'completed') return { kind: 'done' };
  if (info.status === 'failed' || info.status === 'cancelled' || info.status === 'cancelling') return { kind: 'failed', why: `QEMU's migration ${info.status}${info.error === null ? '' : `: ${info.error}`}` };
  const where = `${info.rounds} rounds, ${mib(info.remainingBytes)} MiB of ${mib(info.totalBytes)} MiB left, ${info.dirtyPagesPerSecond} pages/s dirtied, throttle ${info.throttlePercent}%`;
  if (now - state.startedAt > options.timeoutMs) return { kind: 'abort', why: `did not converge within ${options.timeoutMs / 1000} s (${where})` };
  if (!state.armed && info.rounds >= options.armAfterRounds) return { kind: 'arm-throttle', why: `not converged after ${info.rounds} rounds (${where})` };
  return { kind: 'wait' };
}

function mib(bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(1);
}
