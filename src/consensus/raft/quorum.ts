/**
 * Majority arithmetic over a voter set. Membership changes are single-server
 * (see membership.ts), so one majority is always enough; a joint configuration
 * would take the minimum of two `quorumValue`s and the conjunction of two
 * `voteOutcome`s.
 *
 * Invariant: only voters count. Learners, removed nodes and strangers never
 * contribute to a quorum, whatever they send.
 */
import type { NodeId } from './types.ts';

export function majority(voterCount: number): number {
  return Math.floor(voterCount / 2) + 1;
}

/**
 * The largest value v such that a majority of voters report at least v
 * (e.g. the highest index replicated on a majority). 0 when there are no voters.
 */
export function quorumValue(voters: readonly NodeId[], valueOf: (id: NodeId) => number): number {
  if (voters.length === 0) return 0;
  const values = voters.map(valueOf).sort((a, b) => b - a);
  return values[majority(voters.length) - 1] ?? 0;
}

export type VoteOutcome = 'won' | 'lost' | 'pending';

export function voteOutcome(voters: readonly NodeId[], votes: ReadonlyMap<NodeId, boolean>): VoteOutcome {
  let granted = 0;
  let rejected = 0;
  for (const id of voters) {
    const vote = votes.get(id);
    if (vote === true) granted++;
    else if (vote === false) rejected++;
  }
  const needed = majority(voters.length);
  if (granted >= needed) return 'won';
  if (voters.length - rejected < needed) return 'lost';
  return 'pending';
}

export function hasQuorum(voters: readonly NodeId[], isActive: (id: NodeId) => boolean): boolean {
  let active = 0;
  for (const id of voters) if (isActive(id)) active++;
  return active >= majority(voters.length);
}
