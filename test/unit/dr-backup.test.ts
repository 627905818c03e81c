/**
 * DR backups, the pure parts: the schedule (half the RPO, bounded, a failed
 * attempt retried sooner), backup keys, retention (never the newest
 * committed backup, nor anything newer), the RPO; and the fleet's `backup`
 * command (only from the VM's current copy, only forward in time), which a
 * failover records as the backup to restore and a reconciler's create of
 * the failed-over copy carries.
 */
import { describe, expect, it } from 'vitest';
import { parseFleetCommand } from '../../src/fleet/commands.ts';
import { EMPTY_RECONCILER_MEMORY, reconcile } from '../../src/fleet/reconciler.ts';
import { FleetStateMachine } from '../../src/fleet/state-machine.ts';
import {
  BACKUP_MAX_INTERVAL_MS,
  BACKUP_MIN_INTERVAL_MS,
  backupDue,
  backupIntervalMs,
  backupKey,
  NO_BACKUP_MEMORY,
  parseBackupKey,
  retentionDrops,
  rpoSeconds,
} from '../../src/dr/backup-plan.ts';
import { drStatusOf } from '../../src/dr/status.ts';
import { checkShippedRules } from '../support/promtool.ts';
import { assign, create, localProvider, machineWith, registerRegion, spec } from './fleet-fixtures.ts';

const HOUR = 3_600_000;

describe('backup schedule', () => {
  it('every half RPO, between 5 s and an hour', () => {
    expect(backupIntervalMs(5 * 60_000)).toBe(150_000);
    expect(backupIntervalMs(10_000)).toBe(BACKUP_MIN_INTERVAL_MS);
    expect(backupIntervalMs(7 * 24 * HOUR)).toBe(BACKUP_MAX_INTERVAL_MS);
  });

  it('due at once without a backup, then an interval after the last committed one; a failure retries after 5 s, a success waits the interval', () => {
    const rpo = 60_000;
    expect(backupDue(NO_BACKUP_MEMORY, rpo, 0)).toBe(true);
    const ok = { committedTakenAt: 1_000, attemptAt: 1_000, lastFailed: false };
    expect(backupDue(ok, rpo, 30_999)).toBe(false);
    expect(backupDue(ok, rpo, 31_000)).toBe(true);
    const failed = { committedTakenAt: 1_000, attemptAt: 31_000, lastFailed: true };
    expect(backupDue(failed, rpo, 35_999)).toBe(false);
    expect(backupDue(failed, rpo, 36_000)).toBe(true);
    // An attempt under way (or just made) is not repeated before its spacing.
    expect(backupDue({ committedTakenAt: null, attemptAt: 10_000, lastFailed: false }, rpo, 20_000)).toBe(false);
  });
});

describe('backup keys', () => {
  it('round-trip, sort by time taken, and nothing else parses', () => {
    const a = backupKey('web1', 1_765_000_000_000, 3);
    const b = backupKey('web1', 1_765_000_000_001, 1);
    expect(a).toBe('dr/backup/web1/001765000000000-g3');
    expect(parseBackupKey(a)).toEqual({ vm: 'web1', takenAt: 1_765_000_000_000, generation: 3 });
    expect([b, a].sort()).toEqual([a, b]);
    for (const other of ['images/tiny', 'dr/backup/web1/12-g1', 'dr/backup/a/b/001765000000000-g1', 'migration/m1/disk']) expect(parseBackupKey(other)).toBeNull();
  });
});

describe('retention', () => {
  const at = (h: number) => ({ key: `k${h}`, takenAt: h * HOUR });
  const backups = [at(1), at(2), at(3), at(10), at(11)];

  it('drops what is older than the retention', () => {
    expect(retentionDrops(backups, 12 * HOUR, 5 * HOUR, 11 * HOUR)).toEqual(['k1', 'k2', 'k3']);
  });

  it('never drops the newest committed backup, nor anything newer, however old', () => {
    expect(retentionDrops(backups, 100 * HOUR, 5 * HOUR, 10 * HOUR)).toEqual(['k1', 'k2', 'k3']);
    expect(retentionDrops(backups, 100 * HOUR, 5 * HOUR, 2 * HOUR)).toEqual(['k1']);
    // Nothing known committed: the newest stored stays.
    expect(retentionDrops(backups, 100 * HOUR, 5 * HOUR, null)).toEqual(['k1', 'k2', 'k3', 'k10']);
    expect(retentionDrops([], 100 * HOUR, HOUR, null)).toEqual([]);
  });
});

describe('RPO', () => {
  it('now minus the newest committed backup, +Inf without one', () => {
    expect(rpoSeconds(70_000, 10_000)).toBe(60);
    expect(rpoSeconds(5_000, 10_000)).toBe(0);
    expect(rpoSeconds(5_000, null)).toBe(Number.POSITIVE_INFINITY);
  });
});

function fleet(): FleetStateMachine {
  const m = machineWith(registerRegion('dc1', [localProvider(8, 16)]), registerRegion('dc2', [localProvider(8, 16)]), registerRegion('dc3', [localProvider(8, 16)]));
  for (const c of [create(spec('web1')), assign('web1', 'dc1', 1), parseFleetCommand({ kind: 'protect', vm: 'web1', drRegion: 'dc2', rpoMs: 60_000 })]) expect(m.apply(c)).toMatchObject({ ok: true });
  return m;
}

const VERSION = 'ab'.repeat(32);
const backup = (takenAt: number, extra: Record<string, unknown> = {}) =>
  parseFleetCommand({ kind: 'backup', vm: 'web1', backup: { region: 'dc1', generation: 1, takenAt, key: backupKey('web1', takenAt, 1), version: VERSION, size: 4096, ...extra } });

describe('the fleet backup command', () => {
  it('records the newest backup of the current copy; older ones and other copies change nothing or are refused', () => {
    const m = fleet();
    expect(m.apply(backup(10_000))).toMatchObject({ ok: true, kind: 'backup' });
    expect(m.vm('web1')?.protection?.lastBackup?.takenAt).toBe(10_000);
    expect(m.apply(backup(5_000))).toMatchObject({ ok: true });
    expect(m.vm('web1')?.protection?.lastBackup?.takenAt).toBe(10_000);
    expect(m.apply(backup(20_000, { generation: 2 }))).toMatchObject({ ok: false, code: 'stale_generation' });
    expect(m.apply(backup(20_000, { region: 'dc3' }))).toMatchObject({ ok: false, code: 'stale_generation' });
    expect(() => backup(20_000, { version: 'nope' })).toThrow(/version/);
    expect(m.apply(parseFleetCommand({ kind: 'unprotect', vm: 'web1' }))).toMatchObject({ ok: true });
    expect(m.apply(backup(30_000))).toMatchObject({ ok: false, code: 'not_protected' });
  });

  it('survives a snapshot; a new DR region forgets it (its blobs are in the old one)', () => {
    const m = fleet();
    m.apply(backup(10_000));
    const restored = FleetStateMachine.restore(m.snapshot());
    expect(restored.vm('web1')?.protection?.lastBackup).toMatchObject({ takenAt: 10_000, version: VERSION });
    expect(m.apply(parseFleetCommand({ kind: 'protect', vm: 'web1', drRegion: 'dc2', rpoMs: 120_000 }))).toMatchObject({ ok: true });
    expect(m.vm('web1')?.protection?.lastBackup?.takenAt).toBe(10_000);
    expect(m.apply(parseFleetCommand({ kind: 'protect', vm: 'web1', drRegion: 'dc3' }))).toMatchObject({ ok: true });
    expect(m.vm('web1')?.protection?.lastBackup).toBeUndefined();
  });

  it('a failover records the backup to restore; the DR region creates its copy from it and dr status shows the data lost', () => {
    const m = fleet();
    m.apply(backup(40_000));
    expect(m.apply(parseFleetCommand({ kind: 'failover', vm: 'web1', region: 'dc1', generation: 1, reason: 'dc1 failed 3 consecutive checks', since: 50_000, at: 60_000 }))).toMatchObject({ ok: true, generation: 2 });
    const vm = m.vm('web1');
    expect(vm?.protection?.failedOver?.restore?.takenAt).toBe(40_000);
    // No backups of a VM in its DR region.
    expect(m.apply(parseFleetCommand({ kind: 'backup', vm: 'web1', backup: { region: 'dc2', generation: 2, takenAt: 70_000, key: backupKey('web1', 70_000, 2), version: VERSION, size: 1 } }))).toMatchObject({ ok: false, code: 'invalid_command' });
    const options = { maxAttempts: 3, backoffBaseMs: 100, backoffCapMs: 1_000, dr: { fenceAfterMs: 10_000, fenceHoldMs: 20_000 } };
    // Held fenceHoldMs first (the lost region fences itself meanwhile), then created from the backup.
    const first = reconcile({ region: 'dc2', desired: m, observed: [], inFlight: new Set(), memory: EMPTY_RECONCILER_MEMORY, now: 1_000_000, logSeenAt: 1_000_000, options });
    expect(first.actions.some((a) => a.kind === 'create')).toBe(false);
    const { actions } = reconcile({ region: 'dc2', desired: m, observed: [], inFlight: new Set(), memory: first.memory, now: 1_020_001, logSeenAt: 1_020_001, options });
    const createAction = actions.find((a) => a.kind === 'create');
    expect(createAction).toMatchObject({ kind: 'create', vm: 'web1', generation: 2, restore: { key: backupKey('web1', 40_000, 1), version: VERSION } });
    const status = drStatusOf(vm!, undefined, { now: 100_000, lastBackupAt: 40_000, rtoMeasuredMs: null });
    expect(status.restored).toEqual({ key: backupKey('web1', 40_000, 1), takenAt: 40_000, dataLossMs: 10_000 });
  });
});

describe('the shipped DR alert rule (config/prometheus/dwcp-dr.rules.yml)', () => {
  it('passes promtool check rules and promtool test rules: a VM over its RPO target for a minute, or with no backup at all, alerts', (ctx) => {
    checkShippedRules(ctx, 'dwcp-dr.rules.yml', 1);
  });
});
