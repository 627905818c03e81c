/**
 * The admin socket's Cost service (cost.proto): the federation-wide cost
 * report and the budgets in the federation log, on any node. Requests are
 * checked at the edge (grouping, month, the budget against its schema) and
 * refusals name the field; the log's refusals come back as coded errors with
 * its sentence. Also the optimiser's recommendations (every region's, read on
 * any node) and `apply`, which acts on this node's region only.
 */
import { DwcpError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { monthOf } from '../cost/accrual.ts';
import { budgetSpend, parseGroupBy, type CostReport, type GroupBy, type RegionMonth } from '../cost/report.ts';
import type { ApplyResult, BudgetView, RecommendationsView } from '../cost/wire.ts';
import { BudgetSpecSchema, type FleetBudget } from '../fleet/budgets.ts';
import type { FleetCommandInput, FleetResult } from '../fleet/commands.ts';
import { formatIssue, pathString } from '../config/issues.ts';
import { asyncUnary, requireTimeout } from './call.ts';
import type { AdminServiceRegistration } from './server.ts';
import { COST_SERVICE, loadAdminPackage, type BudgetRef, type BudgetSetRequest, type CostApplyRequest, type CostReportRequest, type RecommendationsRequest } from './schema.ts';

export interface CostAdminOptions {
  report(query: { month?: string; by: GroupBy | null; top?: number }): CostReport;
  records(): readonly RegionMonth[];
  budgets(): readonly FleetBudget[];
  /** Proposes a fleet command to the federation log. */
  propose(command: FleetCommandInput, timeoutMs: number): Promise<FleetResult>;
  /** The optimiser: every region's recommendations, a fresh pass of this region's, and carrying one out. */
  recommendations(): RecommendationsView;
  refreshRecommendations(): Promise<void>;
  apply(request: { id: string; confirm: boolean; timeoutMs: number }): Promise<ApplyResult>;
  defaultTimeoutMs: number;
  now?: () => number;
  log: Logger;
}

const RECOMMENDATION_ID = /^[a-z]+-[0-9a-f]{10}$/;

const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function invalid(message: string): DwcpError {
  return new DwcpError('invalid', message);
}

function refusal(result: Extract<FleetResult, { ok: false }>): DwcpError {
  return new DwcpError(result.code === 'unknown_budget' ? 'not_found' : 'rejected', `${result.code}: ${result.message}`);
}

export function costServiceRegistration(opts: CostAdminOptions): AdminServiceRegistration {
  const now = opts.now ?? Date.now;

  function view(b: FleetBudget): BudgetView {
    const month = monthOf(now());
    const s = budgetSpend(b.spec, opts.records(), month, now());
    return { spec: b.spec, spentMonth: b.spentMonth, spend: { month, spentUsd: s.spentUsd, projectedUsd: s.projectedUsd, ratio: s.ratio, crossed: s.crossed } };
  }

  async function report(r: CostReportRequest): Promise<Record<string, unknown>> {
    const by = r.by === '' ? null : parseGroupBy(r.by);
    if (by === null && r.by !== '') throw invalid(`by: ${JSON.stringify(r.by)} is not region, provider or label:KEY`);
    if (r.month !== '' && !/^\d{4}-(0[1-9]|1[0-2])$/.test(r.month)) throw invalid(`month: ${JSON.stringify(r.month)} is not a month as YYYY-MM`);
    if (r.top > 1_000) throw invalid(`top: ${r.top} is above 1000`);
    const result = opts.report({ by, ...(r.month === '' ? {} : { month: r.month }), ...(r.top === 0 ? {} : { top: r.top }) });
    return { report_json: JSON.stringify(result) };
  }

  async function setBudget(r: BudgetSetRequest): Promise<Record<string, unknown>> {
    let raw: unknown;
    try {
      raw = JSON.parse(r.budget_json);
    } catch {
      throw invalid('budget_json: not JSON');
    }
    const parsed = BudgetSpecSchema.safeParse(raw, { reportInput: true });
    if (!parsed.success) throw invalid(parsed.error.issues.map((i) => formatIssue(i, (path) => pathString(['budget', ...path]))).join('; '));
    const result = await opts.propose({ kind: 'set-budget', budget: parsed.data }, requireTimeout(r.timeout_ms, opts.defaultTimeoutMs));
    if (!result.ok) throw refusal(result);
    const held = opts.budgets().find((b) => b.spec.name === parsed.data.name) ?? { spec: parsed.data, spentMonth: null };
    return { budget_json: JSON.stringify(view(held)) };
  }

  async function list(): Promise<Record<string, unknown>> {
    return { budgets: opts.budgets().map((b) => ({ budget_json: JSON.stringify(view(b)) })) };
  }

  async function remove(r: BudgetRef): Promise<Record<string, unknown>> {
    if (!NAME.test(r.name)) throw invalid(`name: ${JSON.stringify(r.name)} is not a budget name (a lowercase DNS label)`);
    if (!opts.budgets().some((b) => b.spec.name === r.name)) throw new DwcpError('not_found', `name: no budget named ${r.name}`);
    const result = await opts.propose({ kind: 'delete-budget', name: r.name }, requireTimeout(r.timeout_ms, opts.defaultTimeoutMs));
    if (!result.ok) throw refusal(result);
    return { name: r.name, timeout_ms: 0 };
  }

  async function recommendations(r: RecommendationsRequest): Promise<Record<string, unknown>> {
    if (r.refresh) await opts.refreshRecommendations();
    return { recommendations_json: JSON.stringify(opts.recommendations()) };
  }

  async function apply(r: CostApplyRequest): Promise<Record<string, unknown>> {
    if (!RECOMMENDATION_ID.test(r.id)) throw invalid(`id: ${JSON.stringify(r.id)} is not a recommendation id (a kind and 10 hex digits, e.g. rs-0123456789: see dwcpctl cost recommendations)`);
    const result = await opts.apply({ id: r.id, confirm: r.confirm, timeoutMs: requireTimeout(r.timeout_ms, opts.defaultTimeoutMs) });
    return { result_json: JSON.stringify(result) };
  }

  return {
    name: COST_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Report: asyncUnary(opts.log, 'Report', report),
      SetBudget: asyncUnary(opts.log, 'SetBudget', setBudget),
      ListBudgets: asyncUnary(opts.log, 'ListBudgets', list),
      DeleteBudget: asyncUnary(opts.log, 'DeleteBudget', remove),
      Recommendations: asyncUnary(opts.log, 'Recommendations', recommendations),
      Apply: asyncUnary(opts.log, 'Apply', apply),
    },
  };
}
