/**
 * dwcpctl's `burst` command:
 *
 *   dwcpctl burst status [--json]        every burst group: home, state, replicas home/queued/burst,
 *                                        the home's trigger windows, the last decision and why
 *   dwcpctl burst set FILE               a burst group (YAML or JSON: {name, home, template, min, max}) into the log
 *   dwcpctl burst delete NAME            drops a group; its replicas stay as ordinary VMs
 *
 * Windows and decisions are known to the node that drives a group (its home
 * region's); asked elsewhere, the status says which node to ask.
 */
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import type { BurstGroupStatus } from '../burst/status.ts';
import { positional, subcommandError, UsageError, type Command, type CommandContext } from './command.ts';
import { readableFile } from './blob.ts';
import { formatJson, renderTable } from './format.ts';

function pct(x: number | null | undefined): string {
  return x === null || x === undefined ? '-' : `${(x * 100).toFixed(1)}%`;
}

function since(atMs: number | null, nowMs: number): string {
  return atMs === null ? '-' : `${Math.max(0, Math.round((nowMs - atMs) / 1000))}s`;
}

export function formatBurstStatus(groups: readonly BurstGroupStatus[], nowMs: number): string {
  if (groups.length === 0) return 'no burst groups\n';
  const table = renderTable(
    ['GROUP', 'HOME', 'STATE', 'HOME REPLICAS', 'QUEUED', 'BURST', 'CPU', 'MEMORY', 'CPU HIGH', 'MEM HIGH', 'QUIET'],
    groups.map((g) => [
      g.name,
      g.home,
      g.state,
      `${g.replicas.home}/${g.min}`,
      String(g.replicas.queued),
      `${g.replicas.burst}/${g.max - g.min}`,
      pct(g.windows?.sample?.cpu),
      pct(g.windows?.sample?.memory),
      since(g.windows?.cpuHighSince ?? null, nowMs),
      since(g.windows?.memoryHighSince ?? null, nowMs),
      since(g.windows?.quietSince ?? null, nowMs),
    ]),
  ).trimEnd();
  const lines = [table, ''];
  for (const g of groups) {
    if (!g.drivenHere) {
      lines.push(`${g.name}: driven by ${g.drivenBy}; ask that node for its windows and decisions`);
      continue;
    }
    const last = g.last === null ? 'no decision yet' : `last ${g.last.kind} ${new Date(g.last.atMs).toISOString()}: ${g.last.reason}${g.last.vms.length > 0 ? ` [${g.last.vms.join(', ')}]` : ''}${g.last.outcome === 'ok' ? '' : ` (not carried out in full: ${g.last.outcome})`}`;
    lines.push(`${g.name}: ${last}`);
    if (g.holding !== null) lines.push(`${g.name}: now: ${g.holding}`);
    if (g.replicas.burstNames.length > 0) lines.push(`${g.name}: burst replicas (newest last): ${g.replicas.burstNames.join(', ')}`);
  }
  return `${lines.join('\n')}\n`;
}

async function burst(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  const client = async () => (await ctx.admin()).burst;
  switch (sub) {
    case 'status': {
      positional(ctx, 'burst status', []);
      const groups = await (await client()).status();
      ctx.io.stdout(ctx.json ? formatJson(groups) : formatBurstStatus(groups, Date.now()));
      return;
    }
    case 'set': {
      const [file = ''] = positional(ctx, 'burst set', ['FILE']);
      const text = await readFile(await readableFile(file), 'utf8');
      let group: unknown;
      try {
        group = parseYaml(text);
      } catch (err) {
        throw new UsageError(`${file}: not YAML or JSON (${err instanceof Error ? err.message : String(err)})`);
      }
      const groups = await (await client()).setGroup({ group_json: JSON.stringify(group), timeout_ms: ctx.timeoutMs });
      ctx.io.stdout(ctx.json ? formatJson(groups) : `burst group set\n${formatBurstStatus(groups, Date.now())}`);
      return;
    }
    case 'delete': {
      const [name = ''] = positional(ctx, 'burst delete', ['NAME']);
      await (await client()).deleteGroup({ name, timeout_ms: ctx.timeoutMs });
      ctx.io.stdout(ctx.json ? formatJson({ deleted: name }) : `burst group ${name} deleted (its replicas stay: terminate them by name)\n`);
      return;
    }
    default:
      throw subcommandError('burst', 'status, set or delete', sub);
  }
}

export const BURST_COMMAND: Command = {
  name: 'burst',
  args: 'status | set FILE | delete NAME',
  summary: 'cloud bursting: status (per group home, state, replicas home/burst, trigger windows, last decision and why); set FILE (a burst group, YAML or JSON); delete NAME',
  run: burst,
};
