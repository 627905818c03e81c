/**
 * What a SIGHUP may change while the daemon runs, decided before anything is
 * applied, so a reload is either applied whole or refused whole.
 *
 * Applied live: the log level, the member list (the gater, the mesh and the
 * geo store follow at once) and the policy files (they only bootstrap a log
 * that holds no policy version yet, src/fleet/seat.ts). Raft membership lives in the Raft log, not in the
 * file, so adding or removing a trusted member is a member-list change here and
 * a `dwcpctl raft add-member`/`remove-member` there.
 *
 * Refused whole: anything that changes which log serves a scope or who takes
 * part in it. The Raft and PBFT groups are built once at start from the trust
 * of every member; applying half of such a change (the gater following, the
 * groups not) would leave a new untrusted member running PBFT while the old
 * members stay on Raft. Until live switching exists these need a coordinated
 * restart of every member:
 *   - a member whose trust flips (it enters or leaves the Raft group);
 *   - the federation scope switching between Raft and PBFT;
 *   - a change of the PBFT replica set (PBFT membership is static).
 *
 * Everything else that differs (listen, data dir, raft:, pbft:, …) is kept
 * running as it is and named as needing a restart.
 */
import type { DwcpConfig } from '../config/schema.ts';
import { federationNeedsPbft } from '../consensus/pbft/group.ts';

/** Top-level settings that apply only at start; a reload that changes them reports them. */
const RESTART_ONLY = ['federation', 'node', 'listen', 'dataDir', 'adminSocket', 'metricsListen', 'gcBudgetMiB', 'network', 'raft', 'pbft', 'clouds', 'blob', 'state'] as const;

export type ReloadPlan =
  | { kind: 'apply'; needRestart: (typeof RESTART_ONLY)[number][] }
  /** `changes` says, one item each, what would change trust or consensus membership. */
  | { kind: 'refuse'; changes: string[] };

export function planReload(prev: DwcpConfig, next: DwcpConfig): ReloadPlan {
  const changes = trustChanges(prev, next);
  if (changes.length > 0) return { kind: 'refuse', changes };
  return { kind: 'apply', needRestart: RESTART_ONLY.filter((k) => JSON.stringify(prev[k]) !== JSON.stringify(next[k])) };
}

function trustChanges(prev: DwcpConfig, next: DwcpConfig): string[] {
  const changes: string[] = [];
  const before = new Map(prev.members.map((m) => [m.peerId, m] as const));
  for (const m of next.members) {
    const old = before.get(m.peerId);
    if (old && old.trust !== m.trust) changes.push(`member ${m.name}: trust ${old.trust} -> ${m.trust}`);
  }
  const pbftBefore = federationNeedsPbft(prev);
  const pbftAfter = federationNeedsPbft(next);
  if (pbftBefore !== pbftAfter) {
    changes.push(`federation scope: ${pbftBefore ? 'PBFT' : 'Raft'} -> ${pbftAfter ? 'PBFT' : 'Raft'}`);
  } else if (pbftBefore) {
    const replicas = (c: DwcpConfig): string => [c.node.name, ...c.members.map((m) => m.name)].sort().join(',');
    if (replicas(prev) !== replicas(next)) changes.push(`PBFT replicas: ${replicas(prev)} -> ${replicas(next)}`);
  }
  return changes;
}
