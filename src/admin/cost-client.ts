/**
 * The Cost admin service (cost.proto) as the admin client exposes it: the
 * `.cost` sub-client. The JSON payloads are validated here against their
 * schemas (src/cost/wire.ts), so callers get typed values or an error.
 */
import { parseReply } from './json-reply.ts';
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

const parse = parseReply;

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
