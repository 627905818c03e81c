/**
 * The JSON the Cost admin service carries (cost.proto `report_json`,
 * `budget_json`), as zod schemas: the daemon builds these shapes, the client
 * (dwcpctl) validates them at the edge before printing, so nothing past it
 * is untyped.
 */
import { z } from 'zod';
import { BudgetSpecSchema } from '../fleet/budgets.ts';
import { RECOMMENDATION_KINDS } from './recommend.ts';

const money = z.number().min(0);

export const CostReportSchema = z.strictObject({
  month: z.string(),
  current: z.boolean(),
  generatedAtMs: z.number(),
  mtdUsd: money,
  projectedUsd: money,
  idleUsd: money,
  regions: z.array(z.strictObject({ region: z.string(), asOfMs: z.number(), mtdUsd: money, projectedUsd: money })),
  by: z.string().nullable(),
  groups: z.array(z.strictObject({ key: z.string(), mtdUsd: money, projectedUsd: money, vms: z.number().int().min(0) })),
  top: z.array(
    z.strictObject({ vm: z.string(), region: z.string(), provider: z.string(), type: z.string(), model: z.string(), hours: z.number(), mtdUsd: money, hourlyUsd: money, projectedUsd: money }),
  ),
});

export const BudgetViewSchema = z.strictObject({
  spec: BudgetSpecSchema,
  spentMonth: z.string().nullable(),
  spend: z.strictObject({ month: z.string(), spentUsd: money, projectedUsd: money, ratio: z.number().min(0), crossed: z.number().nullable() }),
});
export type BudgetView = z.infer<typeof BudgetViewSchema>;

const RecommendationActionSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('stop') }),
  z.strictObject({ kind: z.literal('resize'), toType: z.string().max(80) }),
  z.strictObject({ kind: z.literal('spot') }),
  z.strictObject({ kind: z.literal('reserve'), type: z.string().max(80) }),
  z.strictObject({ kind: z.literal('move'), region: z.string().max(63), provider: z.string().max(63) }),
]);

/** One recommendation (src/cost/recommend.ts Recommendation). */
export const RecommendationSchema = z.strictObject({
  id: z.string().regex(/^[a-z]+-[0-9a-f]{10}$/),
  kind: z.enum(RECOMMENDATION_KINDS),
  region: z.string().max(63),
  provider: z.string().max(63),
  instanceId: z.string().max(600),
  vm: z.string().max(253),
  fleet: z.boolean(),
  type: z.string().max(80),
  action: RecommendationActionSchema,
  currentMonthlyUsd: money,
  projectedMonthlyUsd: money,
  savingsMonthlyUsd: z.number(),
  confidence: z.enum(['high', 'medium', 'low']),
  evidence: z.record(z.string(), z.union([z.number(), z.string(), z.boolean(), z.null()])),
  summary: z.string().max(1_000),
});

const InsufficientSchema = z.strictObject({ vm: z.string().max(253), provider: z.string().max(63), instanceId: z.string().max(600), reason: z.string().max(1_000) });

/** One region's recommendations as published in the geo store (`cost-recommendations/<region>`) and returned by the admin service. */
export const RegionRecommendationsSchema = z.strictObject({
  region: z.string().min(1).max(63),
  generatedAtMs: z.number().int().min(0),
  /** Running, priced VMs the rules looked at. */
  scanned: z.number().int().min(0),
  /** Recommendations beyond `maxPublished` left out (the smallest savings). */
  omitted: z.number().int().min(0),
  recommendations: z.array(RecommendationSchema),
  /** VMs with too little data for some rule (at most 200 listed), and how many in all. */
  insufficient: z.array(InsufficientSchema),
  insufficientCount: z.number().int().min(0),
});
export type RegionRecommendations = z.infer<typeof RegionRecommendationsSchema>;

/** The federation's recommendations: every region's record, and all recommendations sorted by savings. */
export const RecommendationsViewSchema = z.strictObject({
  regions: z.array(RegionRecommendationsSchema.omit({ recommendations: true })),
  recommendations: z.array(RecommendationSchema),
});
export type RecommendationsView = z.infer<typeof RecommendationsViewSchema>;

/** What `cost apply` did. */
export const ApplyResultSchema = z.strictObject({
  id: z.string(),
  kind: z.enum(RECOMMENDATION_KINDS),
  vm: z.string(),
  done: z.array(z.string()),
  /** The migration started, for a move. */
  migration: z.string().nullable(),
});
export type ApplyResult = z.infer<typeof ApplyResultSchema>;
