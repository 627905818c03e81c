/**
 * dwcpctl's `cost` and `budget` commands:
 *
 *   dwcpctl cost estimate --provider aws --region us-east-1 --type t3.medium [--hours N] [--spot|--reserved] [--json]
 *   dwcpctl cost report [--by region|provider|label:KEY] [--month YYYY-MM] [--top N] [--json]
 *   dwcpctl cost recommendations [--refresh] [--json]
 *   dwcpctl cost apply ID [--confirm] [--json]
 *   dwcpctl budget set NAME --limit 5000 [--scope label:team=web] [--alerts 50,75,90,100] [--hard] [--json]
 *   dwcpctl budget list [--json]
 *   dwcpctl budget delete NAME
 *
 * The report and the recommendations are federation-wide from any node
 * (every region's published records); `cost apply` acts on the node's own
 * region; budgets live in the federation log.
 */
import type { ParseArgsOptionsConfig } from 'node:util';
import type { CostReportView } from '../admin/cost-client.ts';
import type { ApplyResult, BudgetView, RecommendationsView } from '../cost/wire.ts';
import { positional, singleFlag, subcommandError, notForThis, requiredFlag, UsageError, type Command, type CommandContext } from './command.ts';
import { formatJson, renderTable } from './format.ts';
import { COST_ESTIMATE_OPTIONS, costEstimate } from './vm.ts';

const COST_OPTIONS = {
  ...COST_ESTIMATE_OPTIONS,
  by: { type: 'string' },
  month: { type: 'string' },
  top: { type: 'string' },
  refresh: { type: 'boolean' },
  confirm: { type: 'boolean' },
} as const satisfies ParseArgsOptionsConfig;

const BUDGET_OPTIONS = {
  limit: { type: 'string' },
  scope: { type: 'string' },
  alerts: { type: 'string' },
  hard: { type: 'boolean' },
} as const satisfies ParseArgsOptionsConfig;

const APPLY_TIMEOUT_MS = 600_000;

export function dollars(usd: number): string {
  return `$${usd.toFixed(2)}`;
}

function when(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function formatReport(r: CostReportView): string {
  const lines = [
    `${r.month}${r.current ? ' (month to date)' : ''}: ${dollars(r.mtdUsd)}${r.current ? `, projected ${dollars(r.projectedUsd)} by month end` : ''}; idle on-premises capacity ${dollars(r.idleUsd)}`,
    '',
    renderTable(
      ['REGION', 'MONTH TO DATE', 'PROJECTED', 'AS OF'],
      r.regions.map((x) => [x.region, dollars(x.mtdUsd), dollars(x.projectedUsd), when(x.asOfMs)]),
    ).trimEnd(),
  ];
  if (r.by !== null) {
    lines.push('', renderTable([r.by.toUpperCase(), 'MONTH TO DATE', 'PROJECTED', 'VMS'], r.groups.map((g) => [g.key, dollars(g.mtdUsd), dollars(g.projectedUsd), String(g.vms)])).trimEnd());
  }
  if (r.top.length > 0) {
    lines.push(
      '',
      'top spenders:',
      renderTable(
        ['VM', 'REGION', 'PROVIDER', 'TYPE', 'MODEL', 'HOURS', '$/H', 'MONTH TO DATE', 'PROJECTED'],
        r.top.map((t) => [t.vm, t.region, t.provider, t.type, t.model, t.hours.toFixed(2), t.hourlyUsd.toFixed(4), dollars(t.mtdUsd), dollars(t.projectedUsd)]),
      ).trimEnd(),
    );
  }
  return `${lines.join('\n')}\n`;
}

export function formatBudgets(budgets: readonly BudgetView[]): string {
  if (budgets.length === 0) return 'no budgets\n';
  return renderTable(
    ['NAME', 'SCOPE', 'LIMIT', 'SPENT', 'USED', 'PROJECTED', 'ALERTS', 'HARD'],
    budgets.map((b) => [
      b.spec.name,
      b.spec.scope,
      dollars(b.spec.limitUsd),
      dollars(b.spend.spentUsd),
      `${(b.spend.ratio * 100).toFixed(1)}%`,
      dollars(b.spend.projectedUsd),
      b.spec.alerts.join(','),
      b.spec.hard ? (b.spentMonth === null ? 'yes' : `yes (spent ${b.spentMonth})`) : 'no',
    ]),
  );
}

function action(r: RecommendationsView['recommendations'][number]): string {
  const a = r.action;
  switch (a.kind) {
    case 'stop':
      return 'stop';
    case 'resize':
      return `resize to ${a.toType}`;
    case 'spot':
      return 'run as spot';
    case 'reserve':
      return `reserve ${a.type} (1 year)`;
    case 'move':
      return `migrate to ${a.region}/${a.provider}`;
  }
}

export function formatRecommendations(v: RecommendationsView): string {
  const total = v.recommendations.reduce((n, r) => n + r.savingsMonthlyUsd, 0);
  const lines = [
    `${v.recommendations.length} recommendation${v.recommendations.length === 1 ? '' : 's'}, ${dollars(total)}/month of savings in all (not additive where one VM has several)`,
    '',
    renderTable(
      ['REGION', 'SCANNED', 'AS OF', 'TOO LITTLE DATA'],
      v.regions.map((r) => [r.region, String(r.scanned), when(r.generatedAtMs), String(r.insufficientCount)]),
    ).trimEnd(),
  ];
  if (v.recommendations.length > 0) {
    lines.push(
      '',
      renderTable(
        ['ID', 'KIND', 'VM', 'REGION', 'PROVIDER', 'TYPE', 'ACTION', 'NOW/MO', 'THEN/MO', 'SAVES/MO', 'CONFIDENCE'],
        v.recommendations.map((r) => [r.id, r.kind, r.vm, r.region, r.provider, r.type, action(r), dollars(r.currentMonthlyUsd), dollars(r.projectedMonthlyUsd), dollars(r.savingsMonthlyUsd), r.confidence]),
      ).trimEnd(),
      '',
      'why:',
      ...v.recommendations.map((r) => `  ${r.id}  ${r.vm}: ${r.summary}`),
    );
  }
  const thin = v.regions.flatMap((r) => r.insufficient.map((i) => `  ${r.region}/${i.provider} ${i.vm}: ${i.reason}`));
  if (thin.length > 0) lines.push('', 'no recommendation yet (too little data):', ...thin);
  return `${lines.join('\n')}\n`;
}

function formatApplied(r: ApplyResult): string {
  return `${r.id} (${r.kind}) applied to ${r.vm}:\n${r.done.map((d) => `  ${d}`).join('\n')}\n`;
}

async function cost(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  const reportFlags = ['by', 'month', 'top'];
  const optimiserFlags = ['refresh', 'confirm'];
  if (sub === 'estimate') {
    notForThis(ctx, 'cost estimate', [...reportFlags, ...optimiserFlags]);
    await costEstimate(ctx);
    return;
  }
  if (sub === 'recommendations') {
    positional(ctx, 'cost recommendations', []);
    notForThis(ctx, 'cost recommendations', [...Object.keys(COST_ESTIMATE_OPTIONS), ...reportFlags, 'confirm']);
    const view = await (await ctx.admin()).cost.recommendations({ refresh: ctx.flags.refresh === true });
    ctx.io.stdout(ctx.json ? formatJson(view) : formatRecommendations(view));
    return;
  }
  if (sub === 'apply') {
    const [id = ''] = positional(ctx, 'cost apply', ['ID']);
    notForThis(ctx, 'cost apply', [...Object.keys(COST_ESTIMATE_OPTIONS), ...reportFlags, 'refresh']);
    // A resize waits for a stop and a start: the provider's time, not a read's (--timeout overrides).
    const timeoutMs = ctx.flags.timeout === undefined ? APPLY_TIMEOUT_MS : ctx.timeoutMs;
    const result = await (await ctx.admin()).cost.apply({ id, confirm: ctx.flags.confirm === true, timeout_ms: timeoutMs });
    ctx.io.stdout(ctx.json ? formatJson(result) : formatApplied(result));
    return;
  }
  if (sub !== 'report') throw subcommandError('cost', 'estimate, report, recommendations or apply', sub);
  positional(ctx, 'cost report', []);
  notForThis(ctx, 'cost report', [...Object.keys(COST_ESTIMATE_OPTIONS), ...optimiserFlags]);
  const rawTop = singleFlag(ctx.flags, 'top');
  const top = rawTop === undefined ? 0 : Number(rawTop);
  if (!Number.isInteger(top) || top < 0 || top > 1000) throw new UsageError(`--top: ${JSON.stringify(rawTop)} is not a number from 0 to 1000`);
  const report = await (await ctx.admin()).cost.report({ by: singleFlag(ctx.flags, 'by') ?? '', month: singleFlag(ctx.flags, 'month') ?? '', top });
  ctx.io.stdout(ctx.json ? formatJson(report) : formatReport(report));
}

async function budget(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  const admin = async () => (await ctx.admin()).cost;
  switch (sub) {
    case 'set': {
      const [name = ''] = positional(ctx, 'budget set', ['NAME']);
      const rawLimit = requiredFlag(ctx.flags, 'limit', 'USD per month, e.g. 5000');
      const limitUsd = Number(rawLimit);
      if (!(limitUsd > 0 && Number.isFinite(limitUsd))) throw new UsageError(`--limit: ${JSON.stringify(rawLimit)} is not an amount of USD above 0`);
      const rawAlerts = singleFlag(ctx.flags, 'alerts');
      const alerts = rawAlerts?.split(',').map((a) => Number(a.trim().replace(/%$/, '')));
      if (alerts?.some((a) => !Number.isInteger(a))) throw new UsageError(`--alerts: ${JSON.stringify(rawAlerts)} is not a list of whole percentages, e.g. 50,75,90,100`);
      const spec = { name, limitUsd, scope: singleFlag(ctx.flags, 'scope') ?? 'all', hard: ctx.flags.hard === true, ...(alerts === undefined ? {} : { alerts }) };
      const view = await (await admin()).setBudget({ budget_json: JSON.stringify(spec), timeout_ms: ctx.timeoutMs });
      ctx.io.stdout(ctx.json ? formatJson(view) : `budget ${view.spec.name} set: ${dollars(view.spec.limitUsd)}/month over ${view.spec.scope}, alerts at ${view.spec.alerts.join(', ')}%${view.spec.hard ? ', hard' : ''}; spent ${dollars(view.spend.spentUsd)} (${(view.spend.ratio * 100).toFixed(1)}%) in ${view.spend.month}\n`);
      return;
    }
    case 'list': {
      positional(ctx, 'budget list', []);
      notForThis(ctx, 'budget list', Object.keys(BUDGET_OPTIONS));
      const budgets = await (await admin()).listBudgets();
      ctx.io.stdout(ctx.json ? formatJson(budgets) : formatBudgets(budgets));
      return;
    }
    case 'delete': {
      const [name = ''] = positional(ctx, 'budget delete', ['NAME']);
      notForThis(ctx, 'budget delete', Object.keys(BUDGET_OPTIONS));
      await (await admin()).deleteBudget({ name, timeout_ms: ctx.timeoutMs });
      ctx.io.stdout(ctx.json ? formatJson({ deleted: name }) : `budget ${name} deleted\n`);
      return;
    }
    default:
      throw subcommandError('budget', 'set, list or delete', sub);
  }
}

export const COST_COMMAND: Command = {
  name: 'cost',
  args: 'estimate | report | recommendations | apply ID',
  summary:
    'estimate --provider --region --type [--hours N] [--spot|--reserved]: a type\'s price from the catalog; ' +
    'report [--by region|provider|label:KEY] [--month YYYY-MM] [--top N]: the federation\'s spend, month to date and projected; ' +
    'recommendations [--refresh]: rightsizing, idle, spot, reserved and arbitrage advice from every region; ' +
    'apply ID [--confirm]: carry one out (resize, stop, migrate) on its region\'s node',
  options: COST_OPTIONS,
  run: cost,
};

export const BUDGET_COMMAND: Command = {
  name: 'budget',
  args: 'set NAME | list | delete NAME',
  summary: 'monthly budgets in the federation log: set NAME --limit USD [--scope all|label:K=V|region=R|provider=P] [--alerts 50,75,90,100] [--hard]',
  options: BUDGET_OPTIONS,
  run: budget,
};
