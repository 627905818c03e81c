/**
 * The `cost:` config section: how often this region's cost is accrued and
 * published, reservations that price some instances at the catalog's
 * reserved rate, and how its VMs' utilisation is collected and kept (the
 * series bound). Budgets are their own top-level section (`budgets:`,
 * src/fleet/budgets.ts).
 *
 * Invariant: every setting has a default and a hard range; refusals name the
 * field.
 */
import { z } from 'zod';
import { DEFAULT_RESOLUTION_MS } from './series.ts';

const ReservationSchema = z.strictObject({
  /** A configured cloud provider name (aws, gcp, …). */
  provider: z.string().min(1).max(63),
  /** The instance type reserved, e.g. t3.micro. */
  type: z.string().min(1).max(80),
  /** How many running instances of the type this region's provider prices as reserved (the oldest first). */
  count: z.number().int().min(1).max(100_000),
});

export const CostSettingsSchema = z.strictObject({
  /** Accrual tick: this region's VMs' state is sampled, its cost accrued and published, this often. */
  intervalMs: z.number().int().min(100).max(3_600_000).default(60_000),
  /**
   * A gap between two accrual ticks longer than this (a daemon that was
   * down) is charged only for VMs billed at both ends of it.
   */
  maxGapMs: z.number().int().min(1_000).max(86_400_000).default(900_000),
  reservations: z.array(ReservationSchema).max(1_000).default([]),
  utilisation: z
    .strictObject({
      /** How often each provider is asked for its VMs' use (CloudWatch and Monitoring have 5-minute datapoints). */
      intervalMs: z.number().int().min(100).max(3_600_000).default(DEFAULT_RESOLUTION_MS),
      /** How far back the first query for a provider reaches. */
      backfillMs: z.number().int().min(0).max(14 * 86_400_000).default(3_600_000),
      /** Days of 5-minute slots kept per VM (52 416 bytes per VM at 14). */
      retentionDays: z.number().int().min(1).max(90).default(14),
      /** VMs whose series this node keeps at most (bounds memory: retentionDays × 3 744 bytes each). */
      maxVms: z.number().int().min(1).max(1_000_000).default(10_000),
    })
    .default({ intervalMs: DEFAULT_RESOLUTION_MS, backfillMs: 3_600_000, retentionDays: 14, maxVms: 10_000 }),
});

export type CostSettings = z.infer<typeof CostSettingsSchema>;
