/**
 * Single-server membership changes (Ongaro's dissertation, ch. 4).
 *
 * A change moves at most one node in or out of the voter set, so any majority
 * of the old voters overlaps any majority of the new ones and no joint
 * configuration is needed. New nodes join as learners (they replicate but
 * neither vote nor count toward commit) and are promoted once caught up, so a
 * slow newcomer never stalls commit. The core adds the dissertation's fix for
 * the single-server bug: a leader appends a config entry only after it has
 * committed an entry of its own term, and only when no other config entry is
 * uncommitted.
 *
 * Invariants of every Membership produced here: voters and learners are
 * disjoint, free of duplicates, sorted; voters is never empty.
 */
import type { ConfigChange, Membership, NodeId } from './types.ts';
import { RaftInputError } from './types.ts';

export function isVoter(membership: Membership, id: NodeId): boolean {
  return membership.voters.includes(id);
}

export function isLearner(membership: Membership, id: NodeId): boolean {
  return membership.learners.includes(id);
}

export function members(membership: Membership): NodeId[] {
  return [...membership.voters, ...membership.learners];
}

export function createMembership(voters: readonly NodeId[], learners: readonly NodeId[] = []): Membership {
  const v = [...new Set(voters)].sort();
  const l = [...new Set(learners)].sort();
  if (v.length === 0) throw new RaftInputError('membership needs at least one voter');
  if (v.length !== voters.length) throw new RaftInputError(`membership voters contain a duplicate: ${voters.join(',')}`);
  if (l.length !== learners.length) throw new RaftInputError(`membership learners contain a duplicate: ${learners.join(',')}`);
  for (const id of v) {
    if (id === '') throw new RaftInputError('membership node ids must be non-empty');
    if (l.includes(id)) throw new RaftInputError(`node ${id} cannot be both voter and learner`);
  }
  return { voters: v, learners: l };
}

/** The membership after `change`, or a reason the change is not a valid single-server step. */
export function applyConfigChange(current: Membership, change: ConfigChange): Membership | string {
  const { node } = change;
  if (node === '') return 'config change node must be non-empty';
  switch (change.type) {
    case 'add_learner':
      if (isVoter(current, node)) return `node ${node} is already a voter`;
      if (isLearner(current, node)) return `node ${node} is already a learner`;
      return createMembership(current.voters, [...current.learners, node]);
    case 'promote':
      if (!isLearner(current, node)) return `node ${node} is not a learner (add it as a learner first)`;
      return createMembership(
        [...current.voters, node],
        current.learners.filter((id) => id !== node),
      );
    case 'remove':
      if (isLearner(current, node)) {
        return createMembership(current.voters, current.learners.filter((id) => id !== node));
      }
      if (!isVoter(current, node)) return `node ${node} is not a member`;
      if (current.voters.length === 1) return `node ${node} is the last voter`;
      return createMembership(
        current.voters.filter((id) => id !== node),
        current.learners,
      );
  }
}
