/**
 * The DR status of one VM as `dwcpctl dr status` shows it: its state
 * (protected, failed-over, failing-back, unprotected, unplaced), where it is
 * and where it would go, and its recovery point now against its target.
 * Pure: desired state, what is known of its backups, and the time in.
 *
 * RPO now is now minus the newest backup committed at the DR region; a VM
 * with no backup there is over its RPO (there is nothing to recover from).
 */
import type { FleetMigration } from '../fleet/migrations.ts';
import { isFailedOver } from '../fleet/protection.ts';
import type { FleetVm } from '../fleet/state-machine.ts';

export const DR_STATES = ['protected', 'failed-over', 'failing-back', 'unprotected', 'unplaced'] as const;
export type DrState = (typeof DR_STATES)[number];

export interface DrVmStatus {
  readonly vm: string;
  readonly state: DrState;
  readonly region: string | null;
  readonly generation: number;
  readonly drRegion: string | null;
  readonly drProvider: string | null;
  readonly rpoTargetMs: number;
  readonly rtoTargetMs: number;
  readonly retentionMs: number;
  readonly failback: string;
  readonly failedOver: { readonly from: string; readonly reason: string; readonly at: number } | null;
  /** Failed over from a backup: which, when it was taken, and the data lost (the failover's first failed check minus that). */
  readonly restored: { readonly key: string; readonly takenAt: number; readonly dataLossMs: number } | null;
  /** The newest backup committed at the DR region; null: none. */
  readonly lastBackupAt: number | null;
  readonly rpoNowMs: number | null;
  readonly rpoOver: boolean;
  readonly rtoMeasuredMs: number | null;
}

export interface DrFacts {
  readonly now: number;
  readonly lastBackupAt: number | null;
  readonly rtoMeasuredMs: number | null;
}

export function drStateOf(vm: FleetVm, migration: FleetMigration | undefined): DrState {
  if (vm.protection === null) return 'unprotected';
  if (vm.assignment === null) return 'unplaced';
  if (migration?.purpose === 'failback') return 'failing-back';
  return isFailedOver(vm.protection, vm.assignment) ? 'failed-over' : 'protected';
}

export function drStatusOf(vm: FleetVm, migration: FleetMigration | undefined, facts: DrFacts): DrVmStatus {
  const p = vm.protection;
  const f = p?.failedOver ?? null;
  const rpoNowMs = facts.lastBackupAt === null ? null : Math.max(0, facts.now - facts.lastBackupAt);
  return {
    vm: vm.name,
    state: drStateOf(vm, migration),
    region: vm.assignment?.region ?? null,
    generation: vm.assignment?.generation ?? 0,
    drRegion: p?.drRegion ?? null,
    drProvider: p?.drProvider ?? null,
    rpoTargetMs: p?.rpoMs ?? 0,
    rtoTargetMs: p?.rtoMs ?? 0,
    retentionMs: p?.retentionMs ?? 0,
    failback: p?.failback ?? '',
    failedOver: f === null ? null : { from: `${f.from.region}/${f.from.provider}`, reason: f.reason, at: f.at },
    restored: f?.restore === undefined ? null : { key: f.restore.key, takenAt: f.restore.takenAt, dataLossMs: Math.max(0, f.since - f.restore.takenAt) },
    lastBackupAt: facts.lastBackupAt,
    rpoNowMs,
    rpoOver: p !== null && (rpoNowMs === null || rpoNowMs > p.rpoMs),
    rtoMeasuredMs: facts.rtoMeasuredMs,
  };
}
