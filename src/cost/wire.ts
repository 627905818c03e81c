/**
 * The JSON the Cost admin service carries (cost.proto `report_json`,
 * `budget_json`), as zod schemas: the daemon builds these shapes, the client
 * (dwcpctl) validates them at the edge before printing, so nothing past it
 * is untyped.
 */
import { z } from 'zod';
import { BudgetSpecSchema } from '../fleet/budgets.ts';

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
