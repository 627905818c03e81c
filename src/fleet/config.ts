/**
 * The `fleet:` config section.
 *
 * Observed state: how often each daemon republishes its region record (the
 * heartbeat that makes a report's age meaningful) and its changed VM
 * records, and how old a region's report may be before its VMs read as
 * `unknown`.
 *
 * Desired state: how often this region's reconciler passes over its VMs
 * (it also runs at once after a fleet command committed here and after each
 * provider call finishes), its back-off and give-up rule, the
 * scheduler's placement strategy, factor weights and re-plan bound, and the
 * migrations this region takes at once and its coordinator's timeouts.
 *
 * Invariant: every setting has a default and a hard range; staleAfterMs is
 * refused below twice the publish interval (one late heartbeat must not
 * blank a healthy region), and every refusal names the field.
 */
import { z } from 'zod';
import { DEFAULT_PLACEMENT_WEIGHTS, PLACEMENT_FACTORS, PLACEMENT_STRATEGIES, type PlacementFactor } from './placement.ts';
import { DEFAULT_RECONCILER_OPTIONS } from './reconciler.ts';
import { DEFAULT_SCHEDULER_ATTEMPTS, SCHEDULER_MAX_ATTEMPTS } from './scheduler.ts';
import { DEFAULT_MAX_MIGRATIONS_PER_REGION, MAX_MIGRATIONS_PER_REGION } from './migrations.ts';
import { DEFAULT_COORDINATOR_OPTIONS } from '../migration/coordinator.ts';
import { DEFAULT_CONVERGENCE } from '../migration/convergence.ts';
import { DEFAULT_MULTIFD, MAX_MULTIFD_CHANNELS, MULTIFD_COMPRESSIONS } from '../cloud/qemu/migration-qmp.ts';

const weight = z.number().min(0).max(100);
const WeightsSchema = z.strictObject(Object.fromEntries(PLACEMENT_FACTORS.map((f) => [f, weight.optional()])) as Record<PlacementFactor, z.ZodOptional<typeof weight>>);

export const FleetSettingsSchema = z
  .strictObject({
    /** The region record is republished this often (and changed VM records at the latest then). */
    publishIntervalMs: z.number().int().min(100).max(3_600_000).default(5_000),
    /** A region whose last report is older than this shows its VMs as `unknown`. Default: 3× publishIntervalMs. */
    staleAfterMs: z.number().int().min(200).max(86_400_000).optional(),
    /** The reconciler passes at least this often, to catch drift the providers cause. */
    reconcileIntervalMs: z.number().int().min(100).max(3_600_000).default(2_000),
    /** Failed creates or starts of one assignment before the VM is marked failed. */
    maxAttempts: z.number().int().min(1).max(100).default(DEFAULT_RECONCILER_OPTIONS.maxAttempts),
    backoffBaseMs: z.number().int().min(10).max(3_600_000).default(DEFAULT_RECONCILER_OPTIONS.backoffBaseMs),
    backoffCapMs: z.number().int().min(10).max(86_400_000).default(DEFAULT_RECONCILER_OPTIONS.backoffCapMs),
    placement: z
      .strictObject({
        strategy: z.enum(PLACEMENT_STRATEGIES).default('binpack'),
        weights: WeightsSchema.default({}),
        /** Plans one create may make when other schedulers keep taking the capacity first. */
        attempts: z.number().int().min(1).max(SCHEDULER_MAX_ATTEMPTS).default(DEFAULT_SCHEDULER_ATTEMPTS),
      })
      .default({ strategy: 'binpack', weights: {}, attempts: DEFAULT_SCHEDULER_ATTEMPTS }),
    migration: z
      .strictObject({
        /** Migrations that may touch this region at once, as source or target (declared to the log with the region). */
        maxConcurrentPerRegion: z.number().int().min(1).max(MAX_MIGRATIONS_PER_REGION).default(DEFAULT_MAX_MIGRATIONS_PER_REGION),
        /** How long the target may take to show its prepared copy before the migration rolls back. */
        prepareTimeoutMs: z.number().int().min(100).max(3_600_000).default(DEFAULT_COORDINATOR_OPTIONS.prepareTimeoutMs),
        /** How long a transfer may go without progress before the migration rolls back. */
        transferIdleTimeoutMs: z.number().int().min(100).max(3_600_000).default(DEFAULT_COORDINATOR_OPTIONS.transferIdleTimeoutMs),
        /** After cutover: how long the target may take to report the VM as desired before the migration ends failed. */
        verifyTimeoutMs: z.number().int().min(100).max(3_600_000).default(DEFAULT_COORDINATOR_OPTIONS.verifyTimeoutMs),
        /** How long the source copy may take to be gone before the migration ends completed anyway (its reconciler keeps fencing it). */
        cleanupTimeoutMs: z.number().int().min(100).max(86_400_000).default(DEFAULT_COORDINATOR_OPTIONS.cleanupTimeoutMs),
        /** qemu live: pre-copy rounds without converging before auto-converge (CPU throttling) is armed. */
        autoConvergeAfterRounds: z.number().int().min(1).max(1_000).default(DEFAULT_CONVERGENCE.armAfterRounds),
        /** qemu live: from the migrate command to aborting (and rolling back) a migration that has not converged. */
        convergeTimeoutMs: z.number().int().min(1_000).max(86_400_000).default(DEFAULT_CONVERGENCE.timeoutMs),
        /** qemu live: how this daemon compresses the migration stream and disk mirror it sends (each frame says how, so the two ends may differ). */
        liveCodec: z.enum(['lz4', 'none']).default('lz4'),
        /** qemu live: QEMU's multifd connections for the memory stream, beside the main one (0: off), and how QEMU compresses them. */
        multifdChannels: z.number().int().min(0).max(MAX_MULTIFD_CHANNELS).default(DEFAULT_MULTIFD.channels),
        multifdCompression: z.enum(MULTIFD_COMPRESSIONS).default(DEFAULT_MULTIFD.compression),
      })
      .default({
        maxConcurrentPerRegion: DEFAULT_MAX_MIGRATIONS_PER_REGION,
        prepareTimeoutMs: DEFAULT_COORDINATOR_OPTIONS.prepareTimeoutMs,
        transferIdleTimeoutMs: DEFAULT_COORDINATOR_OPTIONS.transferIdleTimeoutMs,
        verifyTimeoutMs: DEFAULT_COORDINATOR_OPTIONS.verifyTimeoutMs,
        cleanupTimeoutMs: DEFAULT_COORDINATOR_OPTIONS.cleanupTimeoutMs,
        autoConvergeAfterRounds: DEFAULT_CONVERGENCE.armAfterRounds,
        convergeTimeoutMs: DEFAULT_CONVERGENCE.timeoutMs,
        liveCodec: 'lz4',
        multifdChannels: DEFAULT_MULTIFD.channels,
        multifdCompression: DEFAULT_MULTIFD.compression,
      }),
  })
  .superRefine((f, ctx) => {
    if (f.staleAfterMs !== undefined && f.staleAfterMs < 2 * f.publishIntervalMs) {
      ctx.addIssue({ code: 'custom', path: ['staleAfterMs'], input: f.staleAfterMs, params: { sentence: true }, message: `must be at least twice fleet.publishIntervalMs (${2 * f.publishIntervalMs})` });
    }
    if (f.backoffCapMs < f.backoffBaseMs) {
      ctx.addIssue({ code: 'custom', path: ['backoffCapMs'], input: f.backoffCapMs, params: { sentence: true }, message: `must be at least fleet.backoffBaseMs (${f.backoffBaseMs})` });
    }
  })
  .transform((f) => ({
    ...f,
    staleAfterMs: f.staleAfterMs ?? 3 * f.publishIntervalMs,
    placement: {
      strategy: f.placement.strategy,
      attempts: f.placement.attempts,
      weights: Object.fromEntries(PLACEMENT_FACTORS.map((k) => [k, f.placement.weights[k] ?? DEFAULT_PLACEMENT_WEIGHTS[k]])) as Record<PlacementFactor, number>,
    },
  }));

export type FleetSettings = z.infer<typeof FleetSettingsSchema>;
