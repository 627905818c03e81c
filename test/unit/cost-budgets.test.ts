/**
 * Budgets: the scope grammar, the pure evaluation (thresholds crossed once,
 * hard marks proposed only when the log's differs), and the shipped
 * Prometheus rules, checked by promtool (check rules + test rules).
 */
import { describe, expect, it } from 'vitest';
import { checkShippedRules } from '../support/promtool.ts';
import { BudgetSpecSchema, BudgetsConfigSchema, hardBudgetDenial, parseScope, type FleetBudget } from '../../src/fleet/budgets.ts';
import { evaluateBudgets } from '../../src/cost/budget-watch.ts';
import type { RegionMonth } from '../../src/cost/report.ts';

const NOW = Date.UTC(2026, 11, 6, 12);
const record = (usd: number, labels: Record<string, string>): RegionMonth => ({
  region: 'dc1',
  month: '2026-12',
  asOfMs: NOW,
  lines: [{ key: `local/${usd}`, vm: `vm${usd}`, provider: 'local', kind: 'local', location: 'local', type: 't', model: 'on-prem', labels, usd, hours: 1, hourlyUsd: 0 }],
});
const budget = (input: object, spentMonth: string | null = null): FleetBudget => ({ spec: BudgetSpecSchema.parse(input), spentMonth });

describe('budget specs', () => {
  it('parses scopes and refuses bad ones naming the field', () => {
    expect(parseScope('label:team=web')).toEqual({ ok: true, scope: { kind: 'label', key: 'team', value: 'web' } });
    expect(parseScope('region=dc1')).toEqual({ ok: true, scope: { kind: 'region', name: 'dc1' } });
    expect(parseScope('team=web')).toMatchObject({ ok: false });
    const bad = BudgetSpecSchema.safeParse({ name: 'x', limitUsd: 10, scope: 'nope', alerts: [50, 50] });
    expect(bad.success).toBe(false);
    expect(bad.error?.issues.map((i) => i.path.join('.'))).toEqual(['scope', 'alerts.1']);
    expect(BudgetsConfigSchema.safeParse([{ name: 'a', limitUsd: 1 }, { name: 'a', limitUsd: 2 }]).error?.issues[0]?.message).toContain('is already the name of budgets[0]');
    expect(BudgetSpecSchema.parse({ name: 'a', limitUsd: 5, alerts: [90, 50] })).toEqual({ name: 'a', limitUsd: 5, scope: 'all', alerts: [50, 90], hard: false });
  });

  it('a spent hard budget denies create, place and burst in its scope only', () => {
    const spent = [budget({ name: 'web', limitUsd: 10, scope: 'label:team=web', hard: true }, '2026-12')];
    const web = { region: 'dc1', provider: 'local', labels: { team: 'web' } };
    expect(hardBudgetDenial(spent, 'place', web)).toContain('hard budget web');
    expect(hardBudgetDenial(spent, 'migrate', web)).toBeNull();
    expect(hardBudgetDenial(spent, 'place', { ...web, labels: { team: 'db' } })).toBeNull();
    expect(hardBudgetDenial([budget({ name: 'web', limitUsd: 10, scope: 'label:team=web', hard: true })], 'place', web)).toBeNull();
  });
});

describe('evaluateBudgets', () => {
  const records = [record(6, { team: 'web' }), record(3, { team: 'db' })];
  it('reports each threshold crossed above what was logged, once', () => {
    const budgets = [budget({ name: 'web', limitUsd: 10, scope: 'label:team=web' }), budget({ name: 'all', limitUsd: 100 })];
    const first = evaluateBudgets(budgets, records, NOW, new Map());
    expect(first.crossings.map((c) => [c.budget, c.threshold])).toEqual([['web', 50]]);
    expect(first.spends.map((s) => [s.name, s.spentUsd, s.ratio])).toEqual([['web', 6, 0.6], ['all', 9, 0.09]]);
    expect(evaluateBudgets(budgets, records, NOW, new Map([['web', 50]])).crossings).toEqual([]);
    expect(first.marks).toEqual([]);
  });

  it('proposes a hard budget spent when the records say so and the log does not, and lifts it', () => {
    const hard = budget({ name: 'web', limitUsd: 5, scope: 'label:team=web', hard: true });
    expect(evaluateBudgets([hard], records, NOW, new Map()).marks).toEqual([{ name: 'web', month: '2026-12' }]);
    expect(evaluateBudgets([{ ...hard, spentMonth: '2026-12' }], records, NOW, new Map()).marks).toEqual([]);
    // Last month's mark, nothing spent yet this month: lifted.
    expect(evaluateBudgets([{ ...hard, spentMonth: '2026-11' }], [], NOW, new Map()).marks).toEqual([{ name: 'web', month: null }]);
  });
});

describe('the shipped Prometheus rules', () => {
  it('pass promtool check rules and promtool test rules', (ctx) => {
    checkShippedRules(ctx, 'dwcp-cost.rules.yml', 2);
  });
});
