/**
 * The Cost admin service (cost.proto) as the admin client exposes it: the
 * `.cost` sub-client. The JSON payloads are validated here against their
 * schemas (src/cost/wire.ts), so callers get typed values or an error.
 */
import { parseReply } from './json-reply.ts';
import { ApplyResultSchema, BudgetViewSchema, CostReportSchema, RecommendationsViewSchema, type ApplyResult, type BudgetView, type RecommendationsView } from '../cost/wire.ts';
import type { z } from 'zod';
import type { BudgetInfo, BudgetRef, BudgetSetRequest, CostApplyRequest, CostApplyResponse, CostReportRequest, CostReportResponse, RecommendationsRequest, RecommendationsResponse, ServiceCall } from './schema.ts';

export type CostReportView = z.infer<typeof CostReportSchema>;

export interface CostClient {
  report(request: CostReportRequest): Promise<CostReportView>;
  setBudget(request: BudgetSetRequest): Promise<BudgetView>;
  listBudgets(): Promise<BudgetView[]>;
  deleteBudget(request: BudgetRef): Promise<void>;
  recommendations(request: RecommendationsRequest): Promise<RecommendationsView>;
  apply(request: CostApplyRequest): Promise<ApplyResult>;
}

export function costClient(call: ServiceCall): CostClient {
  return {
    report: async (request) => parseReply(CostReportSchema, (await call<CostReportRequest, Partial<CostReportResponse>>('Report', request)).report_json, 'cost report'),
    setBudget: async (request) => parseReply(BudgetViewSchema, (await call<BudgetSetRequest, Partial<BudgetInfo>>('SetBudget', request)).budget_json, 'budget'),
    listBudgets: async () => ((await call<Record<string, never>, { budgets?: Partial<BudgetInfo>[] }>('ListBudgets', {})).budgets ?? []).map((b) => parseReply(BudgetViewSchema, b.budget_json, 'budget')),
    deleteBudget: async (request) => {
      await call<BudgetRef, unknown>('DeleteBudget', request);
    },
    recommendations: async (request) => parseReply(RecommendationsViewSchema, (await call<RecommendationsRequest, Partial<RecommendationsResponse>>('Recommendations', request)).recommendations_json, 'recommendations'),
    apply: async (request) => parseReply(ApplyResultSchema, (await call<CostApplyRequest, Partial<CostApplyResponse>>('Apply', request, request.timeout_ms)).result_json, 'apply result'),
  };
}
