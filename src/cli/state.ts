/**
 * dwcpctl's `crdt` and `state` commands: the geo-distributed store's
 * counters, sets and records, and every region's digest (docs/state.md).
 *
 *   dwcpctl crdt incr KEY [N] | decr KEY [N] | add KEY ELEMENT | remove KEY ELEMENT
 *                | set KEY FIELD JSON | unset KEY FIELD | get KEY
 *                [--type T] [--consistency quorum|local|eventual] [--ttl MS]
 *   dwcpctl state digest
 *
 * Writes default to `local` (durable in this region). A quorum call that
 * cannot reach a majority of regions by the global --timeout fails, saying
 * how many regions answered. `state digest` is an answer, not a check: it
 * exits 0 whether or not the regions agree, and says which.
 */
import type { ParseArgsOptionsConfig } from 'node:util';
import type { CrdtEntry, CrdtUpdateResponse, RegionCount, StateDigestResponse } from '../admin/schema.ts';
import { formatJson, renderTable } from './format.ts';
import type { Command, CommandContext } from './command.ts';
import { UsageError, positional, subcommandError } from './command.ts';
import { describeGeoWrite, oneOf, wholeNumber } from './kv-raft.ts';
import { GEO_LEVELS } from '../kv/consistency.ts';

const TYPES = ['lww-register', 'g-counter', 'pn-counter', 'g-set', 'or-set', 'yjs-record'] as const;

const CRDT_OPTIONS = {
  type: { type: 'string' },
  consistency: { type: 'string' },
  ttl: { type: 'string' },
} as const satisfies ParseArgsOptionsConfig;

export function formatClock(clock: readonly RegionCount[]): string {
  return clock.length === 0 ? '-' : clock.map((c) => `${c.region}:${c.count}`).join(' ');
}

export function formatUpdate(op: string, key: string, res: CrdtUpdateResponse): string {
  return `OK ${op} ${key} = ${res.entry.value_json} (${res.entry.type}; ${describeGeoWrite(res.consistency, res.regions_acked, res.regions_total)})\n`;
}

/** One entry: its value alone; several (one name, several types): a table. */
export function formatEntries(entries: readonly CrdtEntry[]): string {
  if (entries.length === 1) return `${entries[0]?.value_json}\n`;
  return renderTable(
    ['TYPE', 'VALUE', 'CLOCK', 'EXPIRES'],
    entries.map((e) => [e.type, e.value_json, formatClock(e.clock), e.expires_at ?? '-']),
  );
}

export function formatDigest(d: StateDigestResponse): string {
  const table = renderTable(
    ['NAME', 'REGION', 'ENTRIES', 'DIGEST', 'CLOCK'],
    d.regions.map((r) => (r.answered ? [r.name, r.region, String(r.entries), r.digest.slice(0, 16), formatClock(r.clock)] : [r.name, r.region, '-', '(no answer)', '-'])),
  );
  const answered = d.regions.filter((r) => r.answered);
  const digests = new Set(answered.map((r) => r.digest)).size;
  const verdict = d.converged
    ? `converged: all ${d.regions.length} regions hold the same entries`
    : `not converged: ${digests} distinct digest${digests === 1 ? '' : 's'} among the ${answered.length} of ${d.regions.length} regions that answered`;
  return `${table}${verdict}\n`;
}

async function crdt(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  const type = ctx.flags.type === undefined ? '' : oneOf('type', ctx.flags.type, TYPES, 'pn-counter');
  const consistency = oneOf('consistency', ctx.flags.consistency, GEO_LEVELS, 'local');
  const ttl = ctx.flags.ttl === undefined ? 0 : wholeNumber('ttl', ctx.flags.ttl, 1);
  const update = async (op: string, key: string, fields: { amount?: number; element?: string; field?: string; value_json?: string }) => {
    const request = { key, op, type, amount: 0, element: '', field: '', value_json: '', consistency, timeout_ms: ctx.timeoutMs, ttl_ms: ttl, ...fields };
    const res = await (await ctx.admin()).state.update(request);
    ctx.io.stdout(ctx.json ? formatJson(res) : formatUpdate(op, key, res));
  };
  switch (sub) {
    case 'incr':
    case 'decr': {
      const given = ctx.args.slice(1);
      const [key = '', amount] = given.length === 1 ? [given[0]] : positional(ctx, `crdt ${sub}`, ['KEY', '[N]']);
      await update(sub, key, { amount: amount === undefined ? 1 : wholeNumber('amount', amount, 1) });
      return;
    }
    case 'add':
    case 'remove': {
      const [key = '', element = ''] = positional(ctx, `crdt ${sub}`, ['KEY', 'ELEMENT']);
      await update(sub, key, { element });
      return;
    }
    case 'set': {
      const [key = '', field = '', json = ''] = positional(ctx, 'crdt set', ['KEY', 'FIELD', 'JSON']);
      try {
        JSON.parse(json);
      } catch {
        throw new UsageError(`crdt set: ${JSON.stringify(json)} is not JSON (quote strings: '"text"')`);
      }
      await update('set', key, { field, value_json: json });
      return;
    }
    case 'unset': {
      const [key = '', field = ''] = positional(ctx, 'crdt unset', ['KEY', 'FIELD']);
      await update('unset', key, { field });
      return;
    }
    case 'get': {
      const [key = ''] = positional(ctx, 'crdt get', ['KEY']);
      if (ctx.flags.ttl !== undefined) throw new UsageError('--ttl applies to writes, not to get');
      const res = await (await ctx.admin()).state.get({ key, type, consistency, timeout_ms: ctx.timeoutMs });
      ctx.io.stdout(ctx.json ? formatJson(res) : res.entries.length === 0 ? '' : formatEntries(res.entries));
      if (res.entries.length === 0) throw new Error(`key ${JSON.stringify(key)} not found${type === '' ? '' : ` as a ${type}`}`);
      return;
    }
    default:
      throw subcommandError('crdt', 'incr, decr, add, remove, set, unset or get', sub);
  }
}

async function state(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  if (sub !== 'digest') throw subcommandError('state', 'digest', sub);
  positional(ctx, 'state digest', []);
  const res = await (await ctx.admin()).state.digest(ctx.timeoutMs);
  ctx.io.stdout(ctx.json ? formatJson(res) : formatDigest(res));
}

export const CRDT_COMMAND: Command = {
  name: 'crdt',
  args: 'incr|decr KEY [N] | add|remove KEY ELEMENT | set KEY FIELD JSON | unset KEY FIELD | get KEY',
  summary: 'geo-replicated counters, sets and records (--type T, --consistency quorum|local|eventual, --ttl MS)',
  options: CRDT_OPTIONS,
  run: crdt,
};

export const STATE_COMMAND: Command = {
  name: 'state',
  args: 'digest',
  summary: "every region's digest and vector clock, to see whether the geo store has converged",
  run: state,
};
