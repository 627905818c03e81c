/**
 * Budgets: a monthly spending limit (USD) over a scope of the fleet, with
 * alert thresholds, optionally hard. Defined in the config (`budgets:`) or by
 * `dwcpctl budget set`, and kept in the federation log (the `set-budget`,
 * `delete-budget` and `budget-spent` fleet commands), so every node knows the
 * same budgets and the same hard stops.
 *
 * Scope (one string, what the CLI takes): `all`, `label:KEY=VALUE` (a VM
 * label from its spec), `region=NAME` or `provider=NAME` (a configured
 * provider name). Idle on-premises capacity carries no labels, so it falls
 * only in `all`, `region=` and `provider=` scopes.
 *
 * Hard budgets: the budget driver (src/cost/budget-watch.ts) proposes
 * `budget-spent {name, month, spent}` when it sees the budget spent (or no
 * longer spent: a new month, a higher limit). The log applies it
 * deterministically; from then on every new placement (operations create,
 * place, burst) of a VM in the scope is refused by `hardBudgetDenial`, which
 * placement and the state machine both ask (src/fleet/policy-check.ts), so
 * no path that picks a region for a new VM can bypass it. Moves of VMs that
 * already run (migrate, failover, failback) are not refused: they do not add
 * spending by themselves.
 *
 * Pure: schemas and functions, no I/O.
 */
import { z } from 'zod';
import { fleetName, labelKey, labelValue } from './spec.ts';

export const BUDGET_MAX_USD = 1_000_000_000;
export const MAX_BUDGETS = 256;
export const DEFAULT_ALERTS = [50, 75, 90, 100] as const;
const SCOPE_RE = /^(all|label:[^=\s]+=[^\s]*|region=[a-z0-9-]+|provider=[a-z0-9-]+)$/;

export type BudgetScope =
  | { readonly kind: 'all' }
  | { readonly kind: 'label'; readonly key: string; readonly value: string }
  | { readonly kind: 'region'; readonly name: string }
  | { readonly kind: 'provider'; readonly name: string };

/** Parses a scope string; null with the reason when it is not one. */
export function parseScope(text: string): { ok: true; scope: BudgetScope } | { ok: false; problem: string } {
  if (!SCOPE_RE.test(text)) return { ok: false, problem: `${JSON.stringify(text)} is not a scope: all, label:KEY=VALUE, region=NAME or provider=NAME` };
  if (text === 'all') return { ok: true, scope: { kind: 'all' } };
  if (text.startsWith('label:')) {
    const [key = '', value = ''] = text.slice('label:'.length).split('=', 2);
    if (!labelKey.safeParse(key).success) return { ok: false, problem: `label key ${JSON.stringify(key)} is not a label key` };
    if (!labelValue.safeParse(value).success) return { ok: false, problem: `label value ${JSON.stringify(value)} is not a label value` };
    return { ok: true, scope: { kind: 'label', key, value } };
  }
  const [kind, name = ''] = text.split('=', 2);
  if (!fleetName.safeParse(name).success) return { ok: false, problem: `${JSON.stringify(name)} is not a ${kind} name` };
  return { ok: true, scope: kind === 'region' ? { kind: 'region', name } : { kind: 'provider', name } };
}

const scopeText = z.string().superRefine((text, ctx) => {
  const parsed = parseScope(text);
  if (!parsed.ok) ctx.addIssue({ code: 'custom', input: text, params: { sentence: true }, message: parsed.problem });
});

/** One budget, as the config, the CLI and the set-budget command carry it. */
export const BudgetSpecSchema = z
  .strictObject({
    name: fleetName,
    /** USD per calendar month (UTC). */
    limitUsd: z.number().positive().max(BUDGET_MAX_USD),
    scope: scopeText.default('all'),
    /** Percentages of the limit that raise an alert when spending crosses them. */
    alerts: z.array(z.number().int().min(1).max(1_000)).min(1).max(16).default([...DEFAULT_ALERTS]),
    /** Once spent, new placements in the scope are refused. */
    hard: z.boolean().default(false),
  })
  .superRefine((b, ctx) => {
    const seen = new Set<number>();
    b.alerts.forEach((a, i) => {
      if (seen.has(a)) ctx.addIssue({ code: 'custom', path: ['alerts', i], input: a, params: { sentence: true }, message: 'is listed twice' });
      seen.add(a);
    });
  })
  .transform((b) => ({ ...b, alerts: [...b.alerts].sort((x, y) => x - y) }));

export type BudgetSpec = z.infer<typeof BudgetSpecSchema>;
export type BudgetSpecInput = z.input<typeof BudgetSpecSchema>;

/** The `budgets:` config section: a list, names unique. */
export const BudgetsConfigSchema = z
  .array(BudgetSpecSchema)
  .max(MAX_BUDGETS)
  .default([])
  .superRefine((list, ctx) => {
    const names = new Map<string, number>();
    list.forEach((b, i) => {
      const clash = names.get(b.name);
      if (clash !== undefined) ctx.addIssue({ code: 'custom', path: [i, 'name'], input: b.name, params: { sentence: true }, message: `is already the name of budgets[${clash}]` });
      names.set(b.name, i);
    });
  });

/** A budget as the log holds it: the spec, and the month (YYYY-MM) it was last declared spent in, if it is now. */
export interface FleetBudget {
  readonly spec: BudgetSpec;
  readonly spentMonth: string | null;
}

/** What a scope is matched against: a cost line or a placement candidate. */
export interface ScopeSubject {
  readonly region: string;
  readonly provider: string;
  /** The VM's labels; null for a line that is no VM's (on-premises idle capacity). */
  readonly labels: Readonly<Record<string, string>> | null;
}

export function inScope(scope: BudgetScope, subject: ScopeSubject): boolean {
  switch (scope.kind) {
    case 'all':
      return true;
    case 'label':
      return subject.labels !== null && subject.labels[scope.key] === scope.value;
    case 'region':
      return subject.region === scope.name;
    case 'provider':
      return subject.provider === scope.name;
  }
}

export function scopeOf(spec: BudgetSpec): BudgetScope {
  const parsed = parseScope(spec.scope);
  // The schema checked it; a failure here is a broken invariant, not input.
  if (!parsed.ok) throw new Error(`budget ${spec.name}: ${parsed.problem}`);
  return parsed.scope;
}

/** Operations that add a VM where none ran: what a spent hard budget refuses. */
const NEW_PLACEMENTS: readonly string[] = ['create', 'place', 'burst'];

/**
 * The first spent hard budget (in name order) whose scope holds this
 * placement, as a sentence; null when none refuses it. `budgets` in name
 * order (the state machine keeps them so).
 */
export function hardBudgetDenial(budgets: Iterable<FleetBudget>, operation: string, subject: ScopeSubject): string | null {
  if (!NEW_PLACEMENTS.includes(operation)) return null;
  for (const b of budgets) {
    if (!b.spec.hard || b.spentMonth === null) continue;
    if (inScope(scopeOf(b.spec), subject)) {
      return `hard budget ${b.spec.name} ($${b.spec.limitUsd.toFixed(2)}/month, scope ${b.spec.scope}) is spent for ${b.spentMonth}; new placements under it are refused until it is raised or the month ends`;
    }
  }
  return null;
}
