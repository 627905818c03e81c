/**
 * Disaster-recovery protection in the fleet's desired state: the log
 * commands that protect and unprotect a VM and fail it over, the record the
 * state machine keeps per protected VM, and the pure rules it applies.
 * The controller that decides when to fail over or back is src/dr/; this
 * module is only what the log records and checks.
 *
 * A protected VM names a DR region (and the provider there its copy would
 * run on, resolved once at protect time so every replica fails over to the
 * same place), its recovery targets (RPO, RTO), how long backups are kept,
 * and whether it fails back by itself once its home region is stable again.
 *
 * Rules (the state machine's, at apply):
 * - protect: the VM is live; the DR region is registered and is not the
 *   region the VM runs in; the DR provider exists there; the policy set
 *   allows the VM in the DR region as operation `failover` (so a failover
 *   the log would refuse is refused when protection is set, not during a
 *   disaster). Capacity is not reserved at the DR region: a failover that
 *   does not fit is refused then (insufficient_capacity) and `dr status`
 *   shows the VM unrecovered. A re-protect replaces the targets; it cannot
 *   move the DR region of a VM that is failed over (fail back first).
 * - failover: names the VM, the region it is lost from and the generation
 *   the proposer saw it assigned at. Accepted only while the VM is protected,
 *   assigned there at exactly that generation and not failed over already;
 *   so of every surviving region's proposals for one loss exactly one wins,
 *   the others are refused stale_generation. The assignment moves to the DR
 *   region at generation + 1 (policy `failover`, constraints, anti-affinity
 *   and capacity checked as for any choice of region). A migration under way
 *   is ended failed first ("failed over"), releasing its reservation.
 * - The record remembers where the VM failed over from while the
 *   assignment is the failover's (region = DR region, generation = the
 *   failover's). Any later move (a failback migration's cutover, an
 *   operator's assign or migration) clears it: `failedOver !== null` implies
 *   the VM is assigned at the DR region at that generation.
 * - backup: records a backup committed at the DR region (its manifest) as
 *   the VM's lastBackup, from the VM's current copy only and only forward
 *   in time; a failover records the lastBackup of that moment as the one
 *   the DR region restores. A protect that changes the DR region forgets
 *   the lastBackup (its blobs are in the old DR region).
 * - A failback is a migration (warm) from the DR region back to the region
 *   failed over from, started with purpose `failback` (policy operation
 *   `failback` at its start and cutover).
 *
 * Durations are integers in milliseconds; times (`at`) are the proposer's
 * clock, for operators only (the state machine never compares them).
 */
import { z } from 'zod';
import { fleetName } from './spec.ts';

/** The label a DR test's copy carries (src/dr/drill.ts): the name of the VM it tests. */
export const DR_TEST_LABEL = 'dwcp-dr-test';

export const DR_FAILBACK_MODES = ['auto', 'manual'] as const;
export type DrFailbackMode = (typeof DR_FAILBACK_MODES)[number];

const MINUTE = 60_000;
const DAY = 24 * 60 * MINUTE;

/** Defaults of `vm protect`: the (rpo 5m, rto 10m, retention 7d, failback auto). */
export const DR_DEFAULTS = { rpoMs: 5 * MINUTE, rtoMs: 10 * MINUTE, retentionMs: 7 * DAY, failback: 'auto' as DrFailbackMode };
/** Bounds: an RPO below 10 s would need a backup every few seconds; a week is the longest target that still means "protected". */
export const DR_RPO_RANGE_MS = [10_000, 7 * DAY] as const;
export const DR_RTO_RANGE_MS = [10_000, 7 * DAY] as const;
export const DR_RETENTION_RANGE_MS = [60 * MINUTE, 366 * DAY] as const;

const at = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const generation = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);
const within = (range: readonly [number, number], what: string) =>
  z
    .number()
    .int()
    .min(range[0], `${what} of at least ${range[0]} ms`)
    .max(range[1], `${what} of at most ${range[1]} ms`);

export const ProtectSchema = z.strictObject({
  kind: z.literal('protect'),
  vm: fleetName,
  drRegion: fleetName,
  /** A provider of the DR region; absent: the one of the VM's provider kind there, else the DR region's first. */
  drProvider: fleetName.optional(),
  rpoMs: within(DR_RPO_RANGE_MS, 'an RPO').default(DR_DEFAULTS.rpoMs),
  rtoMs: within(DR_RTO_RANGE_MS, 'an RTO').default(DR_DEFAULTS.rtoMs),
  retentionMs: within(DR_RETENTION_RANGE_MS, 'a retention').default(DR_DEFAULTS.retentionMs),
  failback: z.enum(DR_FAILBACK_MODES).default(DR_DEFAULTS.failback),
});

export const UnprotectSchema = z.strictObject({ kind: z.literal('unprotect'), vm: fleetName });

export const FailoverSchema = z.strictObject({
  kind: z.literal('failover'),
  vm: fleetName,
  /** The region the proposer saw fail, where the VM is assigned. */
  region: fleetName,
  /** The generation the proposer saw it assigned at: of several proposals for one loss, one wins. */
  generation,
  /** Why, for operators: `dc1 failed 3 consecutive checks (on dc2)`. */
  reason: z.string().min(1).max(1024),
  /** The proposer's first failed check of the region (its clock): where the RTO is measured from. */
  since: at,
  at,
});

/** A backup the VM's region committed at the DR region (the blob store there acknowledged it fsync'd): its manifest. */
export const BackupRecordSchema = z.strictObject({
  /** The region the backup was taken in and the generation of the copy it was taken from. */
  region: fleetName,
  generation,
  /** When the snapshot was taken (the taking region's clock): the recovery point. */
  takenAt: at,
  /** Its blob key and version (value hash) in both regions' blob stores, and its size in bytes. */
  key: z.string().min(1).max(1024),
  version: z.string().regex(/^[0-9a-f]{64}$/, 'a version (64 hex digits)'),
  size: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
});

/**
 * A backup committed at the DR region, recorded by the region that took it.
 * Accepted only from the VM's current copy (region and generation) while it
 * is protected and not failed over; an older or equal takenAt changes
 * nothing (a retry, or a late proposal).
 */
export const BackupSchema = z.strictObject({ kind: z.literal('backup'), vm: fleetName, backup: BackupRecordSchema });

export type ProtectCommand = z.infer<typeof ProtectSchema>;
export type BackupCommand = z.infer<typeof BackupSchema>;
export type BackupRecord = z.infer<typeof BackupRecordSchema>;
export type UnprotectCommand = z.infer<typeof UnprotectSchema>;
export type FailoverCommand = z.infer<typeof FailoverSchema>;

export const FailedOverSchema = z.strictObject({
  /** Where the VM ran before: where a failback takes it. */
  from: z.strictObject({ region: fleetName, provider: fleetName }),
  /** The generation the failover assigned at the DR region. */
  generation,
  reason: z.string().min(1).max(1024),
  since: at,
  at,
  /** The newest backup recorded when the failover committed: what the DR region restores (absent: none, it starts from its image). */
  restore: BackupRecordSchema.optional(),
});

/** A protected VM's record (in the VM record, and in snapshots). */
export const FleetProtectionSchema = z.strictObject({
  drRegion: fleetName,
  drProvider: fleetName,
  rpoMs: within(DR_RPO_RANGE_MS, 'an RPO'),
  rtoMs: within(DR_RTO_RANGE_MS, 'an RTO'),
  retentionMs: within(DR_RETENTION_RANGE_MS, 'a retention'),
  failback: z.enum(DR_FAILBACK_MODES),
  failedOver: FailedOverSchema.nullable(),
  /** The newest backup committed at the DR region (absent: none yet; cleared when the DR region changes). */
  lastBackup: BackupRecordSchema.optional(),
});

export type FleetProtection = z.infer<typeof FleetProtectionSchema>;
export type FailedOver = z.infer<typeof FailedOverSchema>;

/** The provider a protect command's DR copy runs on: the named one, else the one of the VM's provider kind, else the first. */
export function resolveDrProvider(providers: readonly { readonly name: string; readonly kind: string }[], named: string | undefined, currentKind: string | undefined): string | undefined {
  if (named !== undefined) return providers.find((p) => p.name === named)?.name;
  return (providers.find((p) => p.kind === currentKind) ?? providers[0])?.name;
}

/** Whether a VM with this protection is failed over and still where the failover put it. */
export function isFailedOver(protection: FleetProtection | null, assignment: { readonly region: string; readonly generation: number } | null): boolean {
  const f = protection?.failedOver ?? null;
  return f !== null && assignment !== null && protection !== null && assignment.region === protection.drRegion && assignment.generation === f.generation;
}
