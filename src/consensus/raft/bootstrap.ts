/**
 * Initial persisted states. A cluster is born by giving every founding voter
 * the same first entry, a config entry at (index 1, term 1): identical on all
 * of them, it is committed by construction, and a node that joins later
 * starts from nothing and learns it (or a snapshot covering it) from the
 * leader like any other entry.
 */
import { createMembership } from './membership.ts';
import type { NodeId, PersistedState } from './types.ts';
import { EMPTY_MEMBERSHIP } from './types.ts';

const EMPTY_SNAPSHOT = { meta: { index: 0, term: 0, membership: EMPTY_MEMBERSHIP }, data: new Uint8Array(0) };

export function bootstrapState(voters: readonly NodeId[]): PersistedState {
  const membership = createMembership(voters);
  return {
    hardState: { term: 1, vote: null, commit: 1 },
    snapshot: EMPTY_SNAPSHOT,
    entries: [{ kind: 'config', index: 1, term: 1, membership }],
  };
}

/** A node that will be added as a learner: it waits, never campaigns, until the leader reaches it. */
export function joiningState(): PersistedState {
  return { hardState: { term: 0, vote: null, commit: 0 }, snapshot: EMPTY_SNAPSHOT, entries: [] };
}
