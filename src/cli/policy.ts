/**
 * dwcpctl's `policy` command: the fleet's policy set (docs/policy.md).
 *
 *   dwcpctl policy apply FILE...       the files become the next version (the whole set)
 *   dwcpctl policy list
 *   dwcpctl policy show NAME
 *   dwcpctl policy test FILE...        dry run: what the files would deny or flag among placed VMs
 *   dwcpctl policy violations          what the current version flags among placed VMs
 *
 * Files are read here and sent as text: the daemon parses and compiles them
 * and refuses a bad one naming the file, the policy, the rule and the
 * line:column in the condition. Every subcommand prints JSON with --json.
 * `test` commits nothing and exits 0 whatever it finds.
 */
import { readFile } from 'node:fs/promises';
import type { PolicyDocumentWire, PolicyViolationInfo } from '../admin/schema.ts';
import type { Command, CommandContext } from './command.ts';
import { positional, subcommandError, UsageError } from './command.ts';
import { readableFile } from './blob.ts';
import { formatJson, renderFields, renderTable } from './format.ts';

async function documents(ctx: CommandContext, sub: string): Promise<PolicyDocumentWire[]> {
  const files = ctx.args.slice(1);
  if (files.length === 0) throw new UsageError(`policy ${sub} takes one or more FILEs (policy documents, YAML or JSON)`);
  return Promise.all(files.map(async (file) => ({ source: file, text: await readFile(await readableFile(file), 'utf8') })));
}

export function formatViolations(violations: readonly PolicyViolationInfo[]): string {
  if (violations.length === 0) return '';
  return renderTable(
    ['VM', 'REGION', 'PROVIDER', 'EFFECT', 'POLICY', 'RULE', 'MESSAGE'],
    violations.map((v) => [v.vm, v.region, v.provider, v.effect, v.policy, v.rule, v.message]),
  );
}

async function policy(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  const client = async () => (await ctx.admin()).policy;
  switch (sub) {
    case 'apply': {
      const docs = await documents(ctx, 'apply');
      const r = await (await client()).apply(docs, ctx.flags.timeout === undefined ? 0 : ctx.timeoutMs);
      const what = `${r.policies.length} polic${r.policies.length === 1 ? 'y' : 'ies'} (${r.policies.join(', ') || 'none'}), ${r.rules} rule${r.rules === 1 ? '' : 's'}`;
      ctx.io.stdout(ctx.json ? formatJson(r) : r.unchanged ? `unchanged: policy version ${r.version} already holds ${what}\n` : `policy version ${r.version} applied: ${what}\n`);
      return;
    }
    case 'list': {
      positional(ctx, 'policy list', []);
      const r = await (await client()).list();
      if (ctx.json) return ctx.io.stdout(formatJson(r));
      if (r.version === 0) return ctx.io.stdout('(no policy set; dwcpctl policy apply FILE puts one in the federation log)\n');
      const table = renderTable(
        ['NAME', 'RULES', 'DENY', 'AUDIT', 'WARN', 'DESCRIPTION'],
        r.policies.map((p) => [p.name, String(p.rules), String(p.deny), String(p.audit), String(p.warn), p.description || '-']),
      );
      ctx.io.stdout(`policy version ${r.version}\n${r.policies.length === 0 ? '(no policies: every placement is allowed)\n' : table}`);
      return;
    }
    case 'show': {
      const [name = ''] = positional(ctx, 'policy show', ['NAME']);
      const p = await (await client()).show(name);
      if (ctx.json) return ctx.io.stdout(formatJson(p));
      const rules = p.rules.map((r) => `${r.name} (${r.effect}): ${r.condition}\n  selector: ${r.selector_json}\n  message: ${r.message}`).join('\n');
      ctx.io.stdout(renderFields([['Name', p.name], ['Version', String(p.version)], ['Description', p.description || '-'], ['Rules', rules]]));
      return;
    }
    case 'test': {
      const docs = await documents(ctx, 'test');
      const r = await (await client()).test(docs);
      if (ctx.json) return ctx.io.stdout(formatJson(r));
      const head =
        r.violations.length === 0
          ? `as version ${r.proposed_version}: no violations among ${r.vms} placed VMs (nothing was applied)\n`
          : `as version ${r.proposed_version}: ${r.violations.length} violation${r.violations.length === 1 ? '' : 's'} among ${r.vms} placed VMs, ${r.already} already flagged by version ${r.current_version} (nothing was applied)\n`;
      ctx.io.stdout(head + formatViolations(r.violations));
      return;
    }
    case 'violations': {
      positional(ctx, 'policy violations', []);
      const r = await (await client()).violations();
      if (ctx.json) return ctx.io.stdout(formatJson(r));
      const head = r.violations.length === 0 ? `no violations among ${r.vms} placed VMs (policy version ${r.version})\n` : `${r.violations.length} violation${r.violations.length === 1 ? '' : 's'} among ${r.vms} placed VMs (policy version ${r.version})\n`;
      ctx.io.stdout(head + formatViolations(r.violations));
      return;
    }
    default:
      throw subcommandError('policy', 'apply, list, show, test or violations', sub);
  }
}

export const POLICY_COMMAND: Command = {
  name: 'policy',
  args: 'apply FILE... | list | show NAME | test FILE... | violations',
  summary: "the fleet's policy set: put a new version into the federation log, list and show it, dry-run a proposed one against the placed VMs, list what the current one flags",
  run: policy,
};
