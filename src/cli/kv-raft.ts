/**
 * dwcpctl's `kv` and `raft` commands: the replicated key-value store and the
 * Raft group behind it.
 *
 *   dwcpctl kv put KEY VALUE | get KEY | delete KEY | cas KEY VALUE --revision N
 *              [--consistency strong|quorum|local|eventual] [--ttl MS]   (get: also serializable)
 *   dwcpctl raft status | members | add-member ID | remove-member ID | transfer-leader [ID]
 *
 * --consistency picks the keyspace (docs/state.md): strong (the default) is
 * the consensus log; quorum, local and eventual are the geo-distributed
 * store's last-writer-wins keys, so `kv put --consistency local` is read back
 * by `kv get --consistency local` (or quorum, or eventual). A read of the
 * consensus keyspace without the leader's barrier is `--consistency
 * serializable` (what `local` meant before the geo levels). --scope belongs
 * to the consensus keyspace, --ttl to the geo levels.
 *
 * A write carries a client id made up per invocation and sequence 1, so the
 * daemon's own retries (leader changes during the call) apply it once. The
 * global --timeout bounds the whole request on the daemon's side: with no
 * leader or no quorum the command fails after it with a message that says so
 * and that a retry may succeed, never hanging.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { ParseArgsOptionsConfig } from 'node:util';
import type { KvGetResponse, KvItem, KvWriteOptions, KvWriteResponse, RaftMembersResponse, RaftStatusResponse } from '../admin/schema.ts';
import { KV_READ_LEVELS, KV_SCOPES, KV_WRITE_LEVELS, isGeoLevel } from '../kv/consistency.ts';
import { formatJson, renderFields, renderTable } from './format.ts';
import type { Command, CommandContext } from './command.ts';
import { UsageError, positional, subcommandError } from './command.ts';

const KV_OPTIONS = {
  scope: { type: 'string' },
  consistency: { type: 'string' },
  revision: { type: 'string' },
  prefix: { type: 'boolean' },
  limit: { type: 'string' },
  ttl: { type: 'string' },
} as const satisfies ParseArgsOptionsConfig;

/** The value of a flag that takes one of `values`; `fallback` when absent. */
export function oneOf<const V extends readonly string[]>(flag: string, raw: unknown, values: V, fallback: V[number]): V[number] {
  if (raw === undefined) return fallback;
  const match = values.find((v) => v === raw);
  if (match === undefined) throw new UsageError(`--${flag}: ${JSON.stringify(raw)} is not one of ${values.join('|')}`);
  return match;
}

export function wholeNumber(flag: string, raw: unknown, min: number): number {
  const n = typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= min && Number.isSafeInteger(n))) throw new UsageError(`--${flag}: ${JSON.stringify(raw)} is not a whole number >= ${min}`);
  return n;
}


/** --scope for the consensus keyspace; refused with a geo level, which has none. */
function scopeFor(ctx: CommandContext, level: string): string {
  if (!isGeoLevel(level)) return oneOf('scope', ctx.flags.scope, KV_SCOPES, 'datacenter');
  if (ctx.flags.scope !== undefined) throw new UsageError(`--scope applies to --consistency strong or serializable only, not ${level}`);
  return '';
}

/** --ttl in ms for a geo level (0: none); refused with strong, whose keys do not expire. */
function ttlFor(ctx: CommandContext, level: string): number {
  if (ctx.flags.ttl === undefined) return 0;
  if (!isGeoLevel(level)) throw new UsageError(`--ttl applies to --consistency quorum, local or eventual, not ${level}`);
  return wholeNumber('ttl', ctx.flags.ttl, 1);
}

function writeOptions(ctx: CommandContext, level: string): KvWriteOptions {
  return {
    scope: scopeFor(ctx, level),
    client_id: `dwcpctl-${hostname()}-${process.pid}-${randomBytes(6).toString('hex')}`,
    seq: 1,
    timeout_ms: ctx.timeoutMs,
    consistency: level,
    ttl_ms: ttlFor(ctx, level),
  };
}

const decoder = new TextDecoder('utf-8', { fatal: false });

function itemJson(i: KvItem): Record<string, unknown> {
  return { key: i.key, value: decoder.decode(i.value), revision: i.revision, create_revision: i.create_revision };
}

/** A geo item: no revisions, but the writing region and its HLC stamp. */
function geoItemJson(i: KvItem): Record<string, unknown> {
  return { key: i.key, value: decoder.decode(i.value), region: i.region, hlc: i.hlc };
}

/** "quorum: 3 of 5 regions hold it", "local: durable here", "eventual: applied here". */
export function describeGeoWrite(level: string, acked: number, total: number): string {
  if (level === 'quorum') return `quorum: ${acked} of ${total} regions hold it`;
  return level === 'local' ? 'local: durable here' : 'eventual: applied here';
}

function printWrite(ctx: CommandContext, op: string, key: string, res: KvWriteResponse): void {
  if (isGeoLevel(res.consistency)) {
    const { ok, consistency, regions_acked, regions_total, leader } = res;
    ctx.io.stdout(ctx.json ? formatJson({ ok, consistency, regions_acked, regions_total, leader }) : `OK ${op} ${key} (${describeGeoWrite(consistency, regions_acked, regions_total)})\n`);
    return;
  }
  if (ctx.json) {
    const { ok, revision, reason, current_revision, prev, leader } = res;
    ctx.io.stdout(formatJson({ ok, revision, reason, current_revision, prev: prev === null ? null : itemJson(prev), leader }));
  } else if (!res.ok) {
    ctx.io.stdout(`${op} ${key}: not applied (${res.reason}; current revision ${currentRevision(res)})\n`);
  } else if (op === 'delete' && res.prev === null) {
    ctx.io.stdout(`delete ${key}: key did not exist\n`);
  } else {
    ctx.io.stdout(`OK ${op} ${key} revision ${res.revision}\n`);
  }
  // A failed compare-and-swap is an answer, not an error, but scripts need to see it, and with what to retry.
  if (!res.ok) throw new Error(`${op} ${key}: ${res.reason} (current revision ${currentRevision(res)})`);
}

function currentRevision(res: KvWriteResponse): string {
  return res.current_revision === 0 ? 'none: key absent' : String(res.current_revision);
}

function printGet(ctx: CommandContext, key: string, prefix: boolean, geo: boolean, res: KvGetResponse): void {
  if (ctx.json) {
    const { regions_answered, regions_total } = res;
    ctx.io.stdout(
      formatJson(geo ? { items: res.items.map(geoItemJson), regions_answered, regions_total } : { items: res.items.map(itemJson), applied_index: res.applied_index }),
    );
    if (!prefix && res.items.length === 0) throw new Error(`key ${JSON.stringify(key)} not found`);
    return;
  }
  if (prefix) {
    const rows = res.items.map((i) => [i.key, geo ? i.region : String(i.revision), decoder.decode(i.value)]);
    ctx.io.stdout(renderTable(['KEY', geo ? 'REGION' : 'REVISION', 'VALUE'], rows));
    return;
  }
  const item = res.items[0];
  if (item === undefined) throw new Error(`key ${JSON.stringify(key)} not found`);
  ctx.io.stdout(`${decoder.decode(item.value)}\n`);
}

const encoder = new TextEncoder();

async function kv(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  const client = async () => (await ctx.admin()).kv;
  switch (sub) {
    case 'put': {
      const [key = '', value = ''] = positional(ctx, 'kv put', ['KEY', 'VALUE']);
      const options = writeOptions(ctx, oneOf('consistency', ctx.flags.consistency, KV_WRITE_LEVELS, 'strong'));
      printWrite(ctx, 'put', key, await (await client()).put(key, encoder.encode(value), options));
      return;
    }
    case 'delete': {
      const [key = ''] = positional(ctx, 'kv delete', ['KEY']);
      const options = writeOptions(ctx, oneOf('consistency', ctx.flags.consistency, KV_WRITE_LEVELS, 'strong'));
      printWrite(ctx, 'delete', key, await (await client()).delete(key, options));
      return;
    }
    case 'cas': {
      const [key = '', value = ''] = positional(ctx, 'kv cas', ['KEY', 'VALUE']);
      if (ctx.flags.revision === undefined) throw new UsageError('kv cas needs --revision N (the revision the key must have; 0: must not exist)');
      const expected = wholeNumber('revision', ctx.flags.revision, 0);
      const level = oneOf('consistency', ctx.flags.consistency, KV_WRITE_LEVELS, 'strong');
      if (level !== 'strong') throw new UsageError(`kv cas needs --consistency strong (geo keys have no revisions), not ${level}`);
      printWrite(ctx, 'cas', key, await (await client()).cas(key, expected, encoder.encode(value), writeOptions(ctx, level)));
      return;
    }
    case 'get': {
      const [key = ''] = positional(ctx, 'kv get', ['KEY']);
      const prefix = ctx.flags.prefix === true;
      const consistency = oneOf('consistency', ctx.flags.consistency, KV_READ_LEVELS, 'strong');
      if (ctx.flags.ttl !== undefined) throw new UsageError('--ttl applies to writes (put), not to get');
      const res = await (await client()).get({
        key,
        consistency,
        scope: scopeFor(ctx, consistency),
        prefix,
        limit: ctx.flags.limit === undefined ? 0 : wholeNumber('limit', ctx.flags.limit, 1),
        timeout_ms: ctx.timeoutMs,
      });
      printGet(ctx, key, prefix, isGeoLevel(consistency), res);
      return;
    }
    default:
      throw subcommandError('kv', 'put, get, delete or cas', sub);
  }
}

export function formatRaftStatus(s: RaftStatusResponse): string {
  const fields = renderFields([
    ['Node', s.id],
    ['Role', s.role],
    ['Term', String(s.term)],
    ['Leader', s.leader || '- (none known)'],
    ['Commit', String(s.commit_index)],
    ['Applied', String(s.applied_index)],
    ['Last', `${s.last_index} (term ${s.last_term})`],
    ['Snapshot', String(s.snapshot_index)],
    ['Voters', s.voters.join(', ') || '-'],
    ['Learners', s.learners.join(', ') || '-'],
  ]);
  if (s.progress.length === 0) return fields;
  const rows = s.progress.map((p) => [p.id, p.learner ? 'learner' : 'voter', String(p.match), String(p.next), p.state, p.recent_active ? 'yes' : 'no']);
  return `${fields}\n${renderTable(['FOLLOWER', 'ROLE', 'MATCH', 'NEXT', 'STATE', 'ACTIVE'], rows)}`;
}

export function formatRaftMembers(m: RaftMembersResponse): string {
  return renderTable(['ID', 'ROLE', 'LEADER'], m.members.map((x) => [x.id, x.role, x.leader ? 'yes' : '']));
}

async function raft(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  const client = async () => (await ctx.admin()).raft;
  const print = <T>(value: T, table: (v: T) => string) => ctx.io.stdout(ctx.json ? formatJson(value) : table(value));
  switch (sub) {
    case 'status':
      positional(ctx, 'raft status', []);
      print(await (await client()).status(), formatRaftStatus);
      return;
    case 'members':
      positional(ctx, 'raft members', []);
      print(await (await client()).members(), formatRaftMembers);
      return;
    case 'add-member': {
      const [id = ''] = positional(ctx, 'raft add-member', ['ID']);
      print(await (await client()).addMember(id, ctx.timeoutMs), formatRaftMembers);
      return;
    }
    case 'remove-member': {
      const [id = ''] = positional(ctx, 'raft remove-member', ['ID']);
      print(await (await client()).removeMember(id, ctx.timeoutMs), formatRaftMembers);
      return;
    }
    case 'transfer-leader': {
      const given = ctx.args.slice(1);
      if (given.length > 1) throw new UsageError('raft transfer-leader takes at most one argument, the new leader');
      print(await (await client()).transferLeader(given[0] ?? '', ctx.timeoutMs), (r) => `leader is now ${r.leader}\n`);
      return;
    }
    default:
      throw subcommandError('raft', 'status, members, add-member, remove-member or transfer-leader', sub);
  }
}

export const KV_COMMAND: Command = {
  name: 'kv',
  args: 'put KEY VALUE | get KEY | delete KEY | cas KEY VALUE --revision N',
  summary:
    'the replicated key-value store: --consistency strong (consensus log; --scope datacenter|federation) | quorum|local|eventual (geo keys; --ttl MS); get also serializable; --prefix, --limit N',
  options: KV_OPTIONS,
  run: kv,
};

export const RAFT_COMMAND: Command = {
  name: 'raft',
  args: 'status | members | add-member ID | remove-member ID | transfer-leader [ID]',
  summary: 'the Raft group of trusted members',
  run: raft,
};
