/**
 * dwcpctl's `pbft` command: the state of this node's replica of the
 * federation's PBFT group (present when any member is untrusted).
 *
 *   dwcpctl pbft status [--json]
 */
import type { PbftStatusResponse } from '../admin/schema.ts';
import { formatJson, renderFields, renderTable } from './format.ts';
import type { Command, CommandContext } from './command.ts';
import { UsageError, subcommandError } from './command.ts';

export function formatPbftStatus(s: PbftStatusResponse): string {
  const fields = renderFields([
    ['Replica', s.id],
    ['View', `${s.view}${s.active ? '' : ' (view change in progress)'}`],
    ['Primary', s.primary],
    ['Replicas', `${s.replicas.join(', ')} (n = ${s.replicas.length}, tolerates f = ${s.f} Byzantine)`],
    ['Executed', String(s.last_executed)],
    ['Checkpoint', `${s.stable_checkpoint} (stable; accepting up to ${s.high_watermark})`],
    ['Pending', `${s.pending_requests} requests, ${s.client_in_flight} of ours in flight`],
    ['View changes', String(s.view_changes)],
  ]);
  if (s.drops.length === 0) return fields;
  const rows = s.drops.map((d) => [d.kind, String(d.count), d.byzantine ? 'yes' : '']);
  return `${fields}\n${renderTable(['DROPPED', 'COUNT', 'BYZANTINE'], rows)}`;
}

async function pbft(ctx: CommandContext): Promise<void> {
  const [sub, ...rest] = ctx.args;
  if (sub !== 'status') throw subcommandError('pbft', 'status', sub);
  if (rest.length > 0) throw new UsageError(`pbft status takes no arguments (got ${rest.length})`);
  const s = await (await ctx.admin()).pbft.status();
  ctx.io.stdout(ctx.json ? formatJson(s) : formatPbftStatus(s));
}

export const PBFT_COMMAND: Command = {
  name: 'pbft',
  args: 'status',
  summary: 'the PBFT group of the federation scope (view, primary, executed, stable checkpoint)',
  run: pbft,
};
