/**
 * The Cost admin service (cost.proto) as the admin client exposes it: the
 * `.cost` sub-client. The JSON payloads are validated here against their
 * schemas (src/cost/wire.ts), so callers get typed values or an error.
 */
import { DwcpError } from '../errors.ts';
import { BudgetViewSchema, CostReportSchema, type BudgetView } from '../cost/wire.ts';
import type { z } from 'zod';
import type { BudgetInfo, BudgetRef, BudgetSetRequest, CostReportRequest, CostReportResponse, ServiceCall } from './schema.ts';

export type CostReportView = z.infer<typeof CostReportSchema>;

export interface CostClient {
  report(request: CostReportRequest): Promise<CostReportView>;
  setBudget(request: BudgetSetRequest): Promise<BudgetView>;
  listBudgets(): Promise<BudgetView[]>;
  deleteBudget(request: BudgetRef): Promise<void>;
}

function parse<T>(schema: z.ZodType<T>, text: string | undefined, what: string): T {
  let raw: unknown;
  try {
    raw = JSON.parse(text ?? '');
  } catch {
    throw new DwcpError('internal', `the daemon sent a ${what} that is not JSON`);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw new DwcpError('internal', `the daemon sent a ${what} this dwcpctl does not understand: ${parsed.error.issues[0]?.message ?? ''}`);
  return parsed.data;
}

export function costClient(call: ServiceCall): CostClient {
  return {
    report: async (request) => parse(CostReportSchema, (await call<CostReportRequest, Partial<CostReportResponse>>('Report', request)).report_json, 'cost report'),
    setBudget: async (request) => parse(BudgetViewSchema, (await call<BudgetSetRequest, Partial<BudgetInfo>>('SetBudget', request)).budget_json, 'budget'),
    listBudgets: async () => ((await call<Record<string, never>, { budgets?: Partial<BudgetInfo>[] }>('ListBudgets', {})).budgets ?? []).map((b) => parse(BudgetViewSchema, b.budget_json, 'budget')),
    deleteBudget: async (request) => {
      await call<BudgetRef, unknown>('DeleteBudget', request);
    },
  };
}
