/**
 * BudgetWatch: on every node, the budgets in the federation log measured
 * against the federation's published cost records (report.ts budgetSpend):
 * `dwcp_budget_used_ratio{budget}` and `dwcp_budget_limit_usd{budget}`, a
 * log event each time spending crosses one of a budget's alert thresholds,
 * and, for hard budgets, the `budget-spent` command that makes placement
 * and the log refuse new placements under it (or lifts that: a new month,
 * a higher limit). Budgets from the config (`budgets:`) are proposed to the
 * log at start when the log does not hold them as configured.
 *
 * The decision is a pure function (`evaluateBudgets`); the class is its
 * driver. Invariants: a threshold event is logged once per crossing (this
 * node remembers the highest threshold it logged per budget and month; at
 * start it logs what is crossed already once); a `budget-spent` is proposed
 * only when the log's mark differs from what the records say, and at most
 * one is in flight per budget; every node may propose the same mark, and
 * the log applies it idempotently.
 */
import type { FleetResult, FleetCommandInput } from '../fleet/commands.ts';
import type { BudgetSpec, FleetBudget } from '../fleet/budgets.ts';
import type { Logger } from '../log.ts';
import { monthOf } from './accrual.ts';
import type { CostMetrics } from './metrics.ts';
import { budgetSpend, type BudgetSpend, type RegionMonth } from './report.ts';

export interface BudgetDecision {
  readonly spends: readonly BudgetSpend[];
  /** Thresholds crossed since the last evaluation: (budget, threshold percent). */
  readonly crossings: readonly { readonly budget: string; readonly threshold: number; readonly spend: BudgetSpend }[];
  /** budget-spent marks to propose. */
  readonly marks: readonly { readonly name: string; readonly month: string | null }[];
}

/**
 * Pure: the spends of the budgets this month, the thresholds crossed above
 * `logged` (budget → highest threshold logged this month), and the hard
 * budgets whose spent mark in the log is not what the records say.
 */
export function evaluateBudgets(budgets: readonly FleetBudget[], records: readonly RegionMonth[], nowMs: number, logged: ReadonlyMap<string, number>): BudgetDecision {
  const month = monthOf(nowMs);
  const spends: BudgetSpend[] = [];
  const crossings: { budget: string; threshold: number; spend: BudgetSpend }[] = [];
  const marks: { name: string; month: string | null }[] = [];
  for (const b of budgets) {
    const spend = budgetSpend(b.spec, records, month, nowMs);
    spends.push(spend);
    const before = logged.get(b.spec.name) ?? 0;
    for (const threshold of b.spec.alerts) if (threshold > before && spend.ratio * 100 >= threshold) crossings.push({ budget: b.spec.name, threshold, spend });
    if (b.spec.hard) {
      const want = spend.ratio >= 1 ? month : null;
      if (b.spentMonth !== want) marks.push({ name: b.spec.name, month: want });
    }
  }
  return { spends, crossings, marks };
}

/** Whether the log holds a budget exactly as the config states it. */
export function sameBudget(a: BudgetSpec, b: BudgetSpec): boolean {
  return a.name === b.name && a.limitUsd === b.limitUsd && a.scope === b.scope && a.hard === b.hard && a.alerts.join(',') === b.alerts.join(',');
}

export interface BudgetWatchOptions {
  intervalMs: number;
  /** Budgets from the config, proposed at start when the log differs. */
  configured: readonly BudgetSpec[];
  budgets(): readonly FleetBudget[];
  records(): readonly RegionMonth[];
  /** Proposes a fleet command; null when this node holds no replica of the log. */
  propose: ((command: FleetCommandInput) => Promise<FleetResult>) | null;
  /** Resolves once the log answers (this region declared): config budgets are proposed then. */
  ready?: () => Promise<void>;
  metrics: CostMetrics;
  log: Logger;
  now?: () => number;
}

export class BudgetWatch {
  readonly #o: BudgetWatchOptions;
  readonly #now: () => number;
  /** budget → highest threshold logged, for `#month`. */
  #logged = new Map<string, number>();
  #month = '';
  readonly #inFlight = new Set<string>();
  readonly #exported = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(options: BudgetWatchOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  start(): void {
    void this.#seed();
    this.#timer = setInterval(() => this.evaluate(), this.#o.intervalMs);
    this.#timer.unref();
    this.evaluate();
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
  }

  async #seed(): Promise<void> {
    const propose = this.#o.propose;
    if (propose === null || this.#o.configured.length === 0) return;
    await this.#o.ready?.();
    if (this.#stopped) return;
    for (const spec of this.#o.configured) {
      const held = this.#o.budgets().find((b) => b.spec.name === spec.name);
      if (held !== undefined && sameBudget(held.spec, spec)) continue;
      try {
        const result = await propose({ kind: 'set-budget', budget: spec });
        if (result.ok) this.#o.log.info({ budget: spec.name, limitUsd: spec.limitUsd, scope: spec.scope, hard: spec.hard }, 'budget from the config set in the federation log');
        else this.#o.log.warn({ budget: spec.name, code: result.code, reason: result.message }, 'budget from the config refused by the federation log');
      } catch (err) {
        if (!this.#stopped) this.#o.log.warn({ budget: spec.name, err: err instanceof Error ? err.message : String(err) }, 'budget from the config not proposed; it is proposed again at the next start');
      }
    }
  }

  /** One evaluation now; returns what it decided (tests read it). */
  evaluate(): BudgetDecision {
    const now = this.#now();
    const month = monthOf(now);
    if (month !== this.#month) {
      this.#month = month;
      this.#logged = new Map();
    }
    const budgets = this.#o.budgets();
    const decision = evaluateBudgets(budgets, this.#o.records(), now, this.#logged);
    const { metrics } = this.#o;
    const names = new Set(budgets.map((b) => b.spec.name));
    for (const name of this.#exported) {
      if (names.has(name)) continue;
      metrics.budgetRatio.remove({ budget: name });
      metrics.budgetLimit.remove({ budget: name });
      metrics.budgetThreshold.remove({ budget: name });
      this.#exported.delete(name);
    }
    for (const s of decision.spends) {
      metrics.budgetRatio.set({ budget: s.name }, s.ratio);
      metrics.budgetLimit.set({ budget: s.name }, s.limitUsd);
      metrics.budgetThreshold.set({ budget: s.name }, s.crossed === null ? 0 : s.crossed / 100);
      this.#exported.add(s.name);
    }
    for (const c of decision.crossings) {
      this.#logged.set(c.budget, Math.max(this.#logged.get(c.budget) ?? 0, c.threshold));
      this.#o.log.warn(
        { event: 'budget_threshold', budget: c.budget, threshold: c.threshold, month, spentUsd: c.spend.spentUsd, limitUsd: c.spend.limitUsd, projectedUsd: c.spend.projectedUsd },
        `budget ${c.budget} crossed ${c.threshold}% of its limit`,
      );
    }
    for (const mark of decision.marks) void this.#mark(mark.name, mark.month);
    return decision;
  }

  async #mark(name: string, month: string | null): Promise<void> {
    const propose = this.#o.propose;
    if (propose === null || this.#inFlight.has(name) || this.#stopped) return;
    this.#inFlight.add(name);
    try {
      const result = await propose({ kind: 'budget-spent', name, month });
      if (result.ok) this.#o.log.warn({ event: 'budget_spent', budget: name, month }, month === null ? `hard budget ${name} is no longer spent; new placements under it are allowed again` : `hard budget ${name} is spent for ${month}; new placements under it are refused`);
    } catch (err) {
      if (!this.#stopped) this.#o.log.warn({ budget: name, err: err instanceof Error ? err.message : String(err) }, 'budget-spent not proposed; retrying on the next evaluation');
    } finally {
      this.#inFlight.delete(name);
    }
  }
}
