/**
 * Migrations in the fleet's desired state: the vocabulary (modes, phases,
 * results), the four log commands' schemas, the record every replica keeps
 * for a migration, and the pure rules the state machine applies to them.
 * The coordinator that drives a migration is src/migration/coordinator.ts;
 * this module is only what the log records and checks.
 *
 * A migration moves one VM from its assignment (the *source*: region,
 * provider, generation g) to a *target* (region, provider) at generation
 * g + 1, which migration-start takes for it (the VM's generation floor rises
 * to g + 1 at once, so no other assignment and no later migration can ever
 * use it: an incoming copy tagged with g + 1 belongs to this migration only).
 *
 * Phases, in order; `migration-progress` moves forward one step at a time:
 *
 *   prepare → transfer → cutover ─(migration-cutover)→ verify → cleanup → end completed
 *      └─────────┴──────────┴──→ rolling-back → end rolled-back | failed
 *                                     verify, cleanup → end failed
 *
 * - migration-start validates (the VM exists, is assigned at the expected
 *   generation and not migrating; the target is registered, another region,
 *   of a provider kind that supports the mode, allowed by the spec's
 *   constraints, anti-affinity and policy; both regions are below their
 *   declared bound of concurrent migrations) and reserves the target's share
 *   in the capacity ledger, in one command: the check and the reservation see
 *   the same state. The record starts in `prepare`.
 * - Reservation rule: a migration reserves the side the assignment is not
 *   on. Before cutover the VM is assigned at the source and reserved at the
 *   target; migration-cutover moves the assignment to the target (generation
 *   g + 1) and the reservation to the source, where the old copy still holds
 *   resources until it is cleaned up; migration-end releases the reservation.
 *   So the VM counts at both regions for the whole migration and nowhere
 *   twice after it, whatever the result.
 * - Only migration-cutover moves the assignment, and only from phase
 *   `cutover`, re-checking constraints, anti-affinity and policy. Rolling back
 *   is possible only before it: after cutover the log says the target holds
 *   the VM and the migration can only go forward (or end failed, the VM
 *   staying at the target under its reconciler).
 * - Repeating the transition to the phase a migration is already in, a
 *   cutover of a migration already cut over, or an end with the result it
 *   already ended with, is accepted and changes nothing: a coordinator that
 *   restarted may repeat itself.
 * - While a VM migrates, assign and set-power of it are refused
 *   (migration_active); delete ends the migration `failed` first.
 * - Bounded: each region declares how many migrations may touch it at once
 *   (fleet.migration.maxConcurrentPerRegion, default 3; as source or target);
 *   ended migrations are kept in a history of MIGRATION_HISTORY records, the
 *   oldest dropped first.
 *
 * Times (`at`) are the proposer's clock, for operators only: the state
 * machine never compares them, so replicas stay deterministic.
 */
import { z } from 'zod';
import { fleetName } from './spec.ts';

export const MIGRATION_MODES = ['live', 'warm', 'cold'] as const;
export type MigrationMode = (typeof MIGRATION_MODES)[number];

export const MIGRATION_PHASES = ['prepare', 'transfer', 'cutover', 'verify', 'cleanup', 'rolling-back'] as const;
export type MigrationPhase = (typeof MIGRATION_PHASES)[number];

export const MIGRATION_RESULTS = ['completed', 'rolled-back', 'failed'] as const;
export type MigrationResult = (typeof MIGRATION_RESULTS)[number];

/** Default of fleet.migration.maxConcurrentPerRegion, and of a region that declares none. */
export const DEFAULT_MAX_MIGRATIONS_PER_REGION = 3;
export const MAX_MIGRATIONS_PER_REGION = 64;
/** Ended migrations the log keeps for `migration list` / `status`. */
export const MIGRATION_HISTORY = 256;
export const MIGRATION_MAX_REASON = 1024;
export const MIGRATION_MAX_DOWNTIME_MS = 3_600_000;

/** The tag an incoming copy carries: the migration it belongs to. */
export const MIGRATION_TAG = 'dwcp-migration';

export const migrationId = z.string().regex(/^m[1-9][0-9]{0,15}$/, 'a migration id (m and a number, e.g. m12)');
const at = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const reason = z.string().min(1).max(MIGRATION_MAX_REASON);

/** What the coordinator measured; a field given replaces the recorded one. */
export const MigrationFactsSchema = z.strictObject({
  /** Bytes moved so far (disk and memory, on the wire). */
  bytes: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
  /** Pre-copy rounds (warm: disk deltas; live: memory passes). */
  rounds: z.number().int().min(0).max(1_000_000).optional(),
  /** When the source stopped serving (proposer's clock): the start of the downtime. */
  pausedAt: at.optional(),
  /** Downtime as measured: from the source stopping to the target serving. */
  downtimeMs: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
});
export type MigrationFacts = z.infer<typeof MigrationFactsSchema>;

export const MigrationStartSchema = z.strictObject({
  kind: z.literal('migration-start'),
  vm: fleetName,
  /** The generation the proposer saw the VM assigned at: a plan made on stale state is refused. */
  generation: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  region: fleetName,
  provider: fleetName,
  mode: z.enum(MIGRATION_MODES),
  /** live: the downtime QEMU may take for the final stop-and-copy. */
  maxDowntimeMs: z.number().int().min(1).max(MIGRATION_MAX_DOWNTIME_MS).optional(),
  /** A DR failback (src/fleet/protection.ts): checked as policy operation failback; its cutover clears the failover record. */
  purpose: z.literal('failback').optional(),
  at,
});

export const MigrationProgressSchema = z
  .strictObject({
    kind: z.literal('migration-progress'),
    id: migrationId,
    phase: z.enum(MIGRATION_PHASES).exclude(['verify']),
    /**
     * The phase the proposer decided on: when given, the command applies only
     * while the migration is still in it (a compare-and-set). A target that
     * refuses a migration it could not prepare says `prepare`, so a refusal
     * that raced the coordinator's move to transfer is refused, not applied
     * to a migration whose target did prepare after all.
     */
    from: z.enum(MIGRATION_PHASES).optional(),
    facts: MigrationFactsSchema.optional(),
    /** Why: required for rolling-back. */
    reason: reason.optional(),
    at,
  })
  .superRefine((cmd, ctx) => {
    if (cmd.phase === 'rolling-back' && cmd.reason === undefined) ctx.addIssue({ code: 'custom', path: ['reason'], input: undefined, params: { sentence: true }, message: '— rolling back needs a reason (say why)' });
  });

export const MigrationCutoverSchema = z.strictObject({
  kind: z.literal('migration-cutover'),
  id: migrationId,
  facts: MigrationFactsSchema.optional(),
  at,
});

export const MigrationEndSchema = z
  .strictObject({
    kind: z.literal('migration-end'),
    id: migrationId,
    result: z.enum(MIGRATION_RESULTS),
    reason: reason.optional(),
    facts: MigrationFactsSchema.optional(),
    at,
  })
  .superRefine((cmd, ctx) => {
    if (cmd.result !== 'completed' && cmd.reason === undefined) ctx.addIssue({ code: 'custom', path: ['reason'], input: undefined, params: { sentence: true }, message: `— a migration that ends ${cmd.result} needs a reason (say why)` });
  });

export type MigrationStartCommand = z.infer<typeof MigrationStartSchema>;
export type MigrationProgressCommand = z.infer<typeof MigrationProgressSchema>;
export type MigrationCutoverCommand = z.infer<typeof MigrationCutoverSchema>;
export type MigrationEndCommand = z.infer<typeof MigrationEndSchema>;

export interface MigrationEndpoint {
  readonly region: string;
  readonly provider: string;
  /** source: the assignment's generation at start; target: the one migration-start took (source + 1). */
  readonly generation: number;
}

/** One migration as the log records it (active, or ended in the history). */
export interface FleetMigration {
  readonly id: string;
  readonly vm: string;
  readonly mode: MigrationMode;
  readonly source: MigrationEndpoint;
  readonly target: MigrationEndpoint;
  readonly maxDowntimeMs: number | null;
  /** Set for a DR failback; absent for an operator's migration. */
  readonly purpose?: 'failback';
  readonly phase: MigrationPhase;
  readonly facts: MigrationFacts;
  /** Why it is rolling back or ended as it did; null while all goes well. */
  readonly reason: string | null;
  /** null while active. */
  readonly result: MigrationResult | null;
  readonly startedAt: number;
  /** The last transition's time. */
  readonly updatedAt: number;
  readonly endedAt: number | null;
}

export const MigrationEndpointSchema = z.strictObject({ region: fleetName, provider: fleetName, generation: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER) });

/** A record in a snapshot. */
export const FleetMigrationSchema = z.strictObject({
  id: migrationId,
  vm: fleetName,
  mode: z.enum(MIGRATION_MODES),
  source: MigrationEndpointSchema,
  target: MigrationEndpointSchema,
  maxDowntimeMs: z.number().int().min(1).max(MIGRATION_MAX_DOWNTIME_MS).nullable(),
  purpose: z.literal('failback').optional(),
  phase: z.enum(MIGRATION_PHASES),
  facts: MigrationFactsSchema,
  reason: reason.nullable(),
  result: z.enum(MIGRATION_RESULTS).nullable(),
  startedAt: at,
  updatedAt: at,
  endedAt: at.nullable(),
});

/** The number in a migration id (m12 → 12): ids are allocated in order, so this orders them. */
export function migrationNumber(id: string): number {
  return Number(id.slice(1));
}

export function compareMigrations(a: { readonly id: string }, b: { readonly id: string }): number {
  return migrationNumber(a.id) - migrationNumber(b.id);
}

/** Whether the assignment has moved to the target (the reservation is then at the source). */
export function isCutOver(phase: MigrationPhase): boolean {
  return phase === 'verify' || phase === 'cleanup';
}

/** Phases in which the target's incoming copy is wanted (created, left alone): before cutover, not rolling back. */
export function wantsIncomingCopy(phase: MigrationPhase): boolean {
  return phase === 'prepare' || phase === 'transfer' || phase === 'cutover';
}

/** Where a migration's reservation is held: the side its VM is not assigned to. */
export function reservedAt(m: Pick<FleetMigration, 'phase' | 'source' | 'target'>): MigrationEndpoint {
  return isCutOver(m.phase) ? m.source : m.target;
}

const FORWARD: Readonly<Partial<Record<MigrationPhase, MigrationPhase>>> = { prepare: 'transfer', transfer: 'cutover', verify: 'cleanup' };

/** Why `migration-progress` from `from` to `to` is not allowed, or null. Same phase is allowed (a repeat changes nothing). */
export function progressProblem(from: MigrationPhase, to: MigrationPhase): string | null {
  if (from === to) return null;
  if (to === 'rolling-back') return isCutOver(from) ? `it is already cut over (${from}); after cutover a migration only goes forward` : null;
  if (FORWARD[from] === to) return null;
  if (from === 'cutover') return `it is in cutover; only migration-cutover (or rolling-back) leaves that phase`;
  return `${from} → ${to} is not a step forward (the order is prepare, transfer, cutover, verify, cleanup)`;
}

/** Why a migration in `phase` may not end with `result`, or null. */
export function endProblem(phase: MigrationPhase, result: MigrationResult): string | null {
  switch (result) {
    case 'completed':
      return phase === 'cleanup' ? null : `it is in ${phase}; only a migration in cleanup ends completed`;
    case 'rolled-back':
      return phase === 'rolling-back' ? null : `it is in ${phase}; only a migration rolling back ends rolled-back`;
    case 'failed':
      return phase === 'rolling-back' || isCutOver(phase) ? null : `it is in ${phase}; before cutover a failing migration rolls back first (its source copy must be restored)`;
  }
}

/**
 * Which provider kinds can migrate in which mode, or why not. Live needs
 * QEMU's migration stream at both ends; warm and cold move a disk, which
 * qemu ↔ qemu can, and local ↔ local simulates (a local VM is a record, so
 * its "transfer" is a record-level move). Everything else (clouds, mixed
 * kinds) needs image import/export, a later issue.
 */
export function migrationSupportProblem(mode: MigrationMode, sourceKind: string, targetKind: string): string | null {
  if (sourceKind !== targetKind || (sourceKind !== 'qemu' && sourceKind !== 'local')) {
    const which = sourceKind === targetKind ? `provider ${sourceKind}` : `from provider ${sourceKind} to provider ${targetKind}`;
    return `${mode} migration is not supported ${which} (qemu → qemu, and local → local for warm and cold, only)`;
  }
  if (mode === 'live' && sourceKind !== 'qemu') return `live migration is not supported for provider ${sourceKind} (it needs qemu at both ends; use --mode cold or warm)`;
  return null;
}
