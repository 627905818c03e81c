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

const fraction = z.number().min(0).max(1);

/**
 * The optimiser's thresholds (src/cost/recommend.ts). Defaults are the
 * published rules: AWS Compute Optimizer (P99.5 CPU, 20 % headroom, 14 days,
 * at least 30 hours of data) and Trusted Advisor (CPU ≤ 10 % and network ≤
 * 5 MB a day on at least 4 of the last 14 days).
 */
export const RecommendationSettingsSchema = z.strictObject({
  /** How often this region recomputes and publishes its recommendations. */
  intervalMs: z.number().int().min(100).max(86_400_000).default(900_000),
  /** The window every rule reads, in days (at most the series' retention). */
  lookbackDays: z.number().int().min(1).max(90).default(14),
  /** Less measured time than this in the lookback: no rightsizing, spot or reserved recommendation (too little data). */
  minDataHours: z.number().min(1).max(2_160).default(30),
  rightsizing: z
    .strictObject({
      /** The CPU (and memory, when sampled) percentile a new type must hold, 0 to 100. */
      percentile: z.number().min(50).max(100).default(99.5),
      /** Extra room over that percentile, as a fraction (0.2: 20 %). */
      headroom: z.number().min(0).max(4).default(0.2),
    })
    .default({ percentile: 99.5, headroom: 0.2 }),
  idle: z
    .strictObject({
      /** A day's mean CPU at or below this fraction… */
      cpu: fraction.default(0.1),
      /** …and its network bytes (in + out) at or below this make it an idle day. */
      networkBytes: z.number().min(0).max(1e15).default(5_000_000),
      /** Idle days (of the last `windowDays`) that make a VM idle. */
      days: z.number().int().min(1).max(90).default(4),
      windowDays: z.number().int().min(1).max(90).default(14),
      /** A day counts (measured) when at least this share of its 5-minute slots has data. */
      minDayCoverage: fraction.default(0.5),
    })
    .default({ cpu: 0.1, networkBytes: 5_000_000, days: 4, windowDays: 14, minDayCoverage: 0.5 }),
  spot: z
    .strictObject({
      /** The label (key=value) that marks a VM as fault tolerant, hence a spot candidate. */
      label: z.string().regex(/^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?=[A-Za-z0-9._:/-]*$/, 'a label as key=value, e.g. fault-tolerant=true').default('fault-tolerant=true'),
    })
    .default({ label: 'fault-tolerant=true' }),
  reserved: z
    .strictObject({
      /** Share of the lookback a VM must have been running (measured) to be a reservation candidate. */
      minRunningShare: fraction.default(0.9),
    })
    .default({ minRunningShare: 0.9 }),
  arbitrage: z
    .strictObject({
      /** A target must be at least this much cheaper, in percent, over `horizonMonths` net of the transfer. */
      minSavingsPercent: z.number().min(0).max(100).default(20),
      /** USD per GiB of disk moved (cloud egress; 0.09 is AWS's first tier to the internet). */
      transferUsdPerGiB: z.number().min(0).max(10).default(0.09),
      /** Months over which the move's savings are weighed against its one-off transfer cost. */
      horizonMonths: z.number().int().min(1).max(36).default(12),
    })
    .default({ minSavingsPercent: 20, transferUsdPerGiB: 0.09, horizonMonths: 12 }),
  /** Recommendations a region publishes at most (the largest savings first; each ~600 bytes in a ≤ 2 MiB record). */
  maxPublished: z.number().int().min(1).max(3_000).default(2_000),
});
export type RecommendationSettings = z.infer<typeof RecommendationSettingsSchema>;

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
  recommendations: RecommendationSettingsSchema.default(RecommendationSettingsSchema.parse({})),
}).superRefine((c, ctx) => {
  // The rules read the series: a window longer than it keeps would judge on days that cannot be there.
  const kept = c.utilisation.retentionDays;
  const r = c.recommendations;
  const issue = (path: (string | number)[], input: number, message: string): void => ctx.addIssue({ code: 'custom', path, input, params: { sentence: true }, message });
  if (r.lookbackDays > kept) issue(['recommendations', 'lookbackDays'], r.lookbackDays, `is above utilisation.retentionDays (${kept}): the series keep no more`);
  if (r.idle.windowDays > kept) issue(['recommendations', 'idle', 'windowDays'], r.idle.windowDays, `is above utilisation.retentionDays (${kept}): the series keep no more`);
  if (r.idle.days > r.idle.windowDays) issue(['recommendations', 'idle', 'days'], r.idle.days, `is above idle.windowDays (${r.idle.windowDays})`);
});

export type CostSettings = z.infer<typeof CostSettingsSchema>;
