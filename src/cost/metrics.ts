/**
 * Cost and budget metrics, created on the daemon's registry by
 * createMetrics (src/metrics/metrics.ts):
 * - dwcp_cost_usd_total{region,provider} (counter): USD this node's region
 *   accrued per configured provider since the daemon started (each region
 *   exports its own, so sum() over nodes is the fleet's, counted once);
 * - dwcp_cost_projected_usd{region,provider} (gauge): this region's
 *   projection to the end of the current month;
 * - dwcp_budget_used_ratio{budget} (gauge): spent ÷ limit this month, over
 *   the whole federation (every node computes the same from the published
 *   records; alert rules take max by budget);
 * - dwcp_budget_alert_threshold_ratio{budget} (gauge): the highest of the
 *   budget's own alert thresholds crossed this month, as a ratio (0.5 for
 *   50 %), 0 when none: what the shipped alerting rule keys on
 *   (config/prometheus/dwcp-cost.rules.yml);
 * - dwcp_budget_limit_usd{budget} (gauge);
 * - dwcp_utilisation_samples_total{provider} (counter) and
 *   dwcp_utilisation_series{provider} (gauge): samples this region's
 *   collector stored, and the VMs it keeps a series for.
 *
 * Invariant: label sets are bounded by the configured providers and the
 * budgets in the log (at most MAX_BUDGETS); a deleted budget's series are
 * removed.
 */
import { Counter, Gauge, type Registry } from 'prom-client';

export interface CostMetrics {
  costTotal: Counter<'region' | 'provider'>;
  projected: Gauge<'region' | 'provider'>;
  budgetRatio: Gauge<'budget'>;
  budgetLimit: Gauge<'budget'>;
  budgetThreshold: Gauge<'budget'>;
  utilisationSamples: Counter<'provider'>;
  utilisationSeries: Gauge<'provider'>;
}

export function createCostMetrics(registers: Registry[]): CostMetrics {
  return {
    costTotal: new Counter({ name: 'dwcp_cost_usd_total', help: 'USD this region accrued, by configured provider, since this daemon started (its VMs\' billed hours × catalog or on-premises prices, idle capacity included).', labelNames: ['region', 'provider'], registers }),
    projected: new Gauge({ name: 'dwcp_cost_projected_usd', help: 'This region\'s projected spend for the current month (month to date + the current hourly rate to month end), by configured provider.', labelNames: ['region', 'provider'], registers }),
    budgetRatio: new Gauge({ name: 'dwcp_budget_used_ratio', help: 'Spend this month over the budget\'s scope across the federation, as a ratio of its limit (1 = spent).', labelNames: ['budget'], registers }),
    budgetThreshold: new Gauge({ name: 'dwcp_budget_alert_threshold_ratio', help: 'The highest of the budget\'s alert thresholds its spend crossed this month, as a ratio of the limit (0 when none).', labelNames: ['budget'], registers }),
    utilisationSamples: new Counter({ name: 'dwcp_utilisation_samples_total', help: 'Utilisation samples this region\'s collector stored in its VMs\' series, by configured provider.', labelNames: ['provider'], registers }),
    utilisationSeries: new Gauge({ name: 'dwcp_utilisation_series', help: 'VMs of this region whose utilisation series this node keeps, by configured provider.', labelNames: ['provider'], registers }),
    budgetLimit: new Gauge({ name: 'dwcp_budget_limit_usd', help: 'The monthly limit of each budget in the federation log.', labelNames: ['budget'], registers }),
  };
}
