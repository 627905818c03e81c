/**
 * A read straight from one replica's KV state machine: no ordering, no
 * barrier. The Raft and PBFT paths both end here, a strong read after its
 * barrier or ordered request has brought the replica up to date, a
 * serializable read at once (possibly stale).
 */
import type { KvEntry } from './command.ts';
import type { KvStateMachine } from './state-machine.ts';

/** One key, or up to `limit` keys under a prefix (the caller resolved and checked the limit). */
export interface KvKeyRead {
  key: string;
  prefix: boolean;
  limit: number;
}

export interface KvReadOutcome {
  entries: KvEntry[];
  /** A prefix read stopped at its limit or byte budget with keys left under the prefix. */
  more: boolean;
  /** The log index (Raft) or request count (PBFT) the replica had applied when it answered. */
  appliedIndex: number;
}

export function readMachine(machine: KvStateMachine, req: KvKeyRead, appliedIndex: number): KvReadOutcome {
  if (!req.prefix) {
    const entry = machine.get(req.key);
    return { entries: entry === null ? [] : [entry], more: false, appliedIndex };
  }
  const { entries, more } = machine.range(req.key, req.limit);
  return { entries, more, appliedIndex };
}
