/**
 * The admin socket's Raft service (raft.proto): status, membership and
 * leadership transfer of this node's Raft group.
 *
 * Errors map to gRPC codes an operator can act on: UNAVAILABLE for what a
 * retry may fix (no leader, no quorum, timed out; the details say which),
 * FAILED_PRECONDITION for "ask the leader" (membership changes and transfers
 * run on the leader; the details name it) and for an untrusted node with no
 * Raft group, INVALID_ARGUMENT for bad requests.
 */
import type { Logger } from '../log.ts';
import { DwcpError } from '../errors.ts';
import type { RaftNode } from '../consensus/raft/node.ts';
import { asyncUnary, requireTimeout } from './call.ts';
import type { MemberDirectory } from '../federation/members.ts';
import { RAFT_SERVICE, loadAdminPackage, type RaftMembersResponse, type RaftStatusResponse } from './schema.ts';
import type { AdminServiceRegistration } from './server.ts';

export function noRaftGroup(): DwcpError {
  return new DwcpError('unsupported', 'this node is untrusted and takes no part in the Raft group of trusted members');
}

function membersOf<R>(node: RaftNode<R>): RaftMembersResponse {
  const s = node.status();
  const leader = s.leader ?? '';
  return {
    members: [
      ...s.membership.voters.map((id) => ({ id, role: 'voter', leader: id === leader })),
      ...s.membership.learners.map((id) => ({ id, role: 'learner', leader: false })),
    ],
  };
}

export function raftStatusResponse<R>(node: RaftNode<R>): RaftStatusResponse {
  const s = node.status();
  return {
    id: s.id,
    role: s.role,
    term: s.term,
    leader: s.leader ?? '',
    commit_index: s.commit,
    applied_index: s.applied,
    last_index: s.lastIndex,
    last_term: s.lastTerm,
    snapshot_index: s.snapshotIndex,
    voters: [...s.membership.voters],
    learners: [...s.membership.learners],
    progress: [...(s.progress ?? [])].map(([id, p]) => ({
      id,
      match: p.match,
      next: p.next,
      state: p.state,
      learner: p.learner,
      recent_active: p.recentActive,
    })),
    pending_proposals: s.pendingProposals,
  };
}

export interface RaftServiceOptions<R> {
  node: RaftNode<R> | null;
  members: MemberDirectory;
  defaultTimeoutMs: number;
  log: Logger;
}

export function raftServiceRegistration<R>(opts: RaftServiceOptions<R>): AdminServiceRegistration {
  const { log, members } = opts;
  const node = (): RaftNode<R> => {
    if (opts.node === null) throw noRaftGroup();
    return opts.node;
  };
  const member = (id: string): string => {
    if (id === '') throw new DwcpError('invalid', 'id: a member name is required');
    const m = members.list().find((x) => x.name === id);
    if (m === undefined && id !== node().id) {
      throw new DwcpError('invalid', `id: ${id} is not in this node's member list (add it to the config and reload first)`);
    }
    if (m !== undefined && m.trust !== 'trusted') {
      throw new DwcpError('invalid', `id: ${id} is untrusted; only trusted members join the Raft group`);
    }
    return id;
  };
  interface ChangeRequest {
    id: string;
    timeout_ms: number;
  }
  return {
    name: RAFT_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Status: asyncUnary<object, RaftStatusResponse>(log, 'Status', async () => raftStatusResponse(node())),
      Members: asyncUnary<object, RaftMembersResponse>(log, 'Members', async () => membersOf(node())),
      AddMember: asyncUnary<ChangeRequest, RaftMembersResponse>(log, 'AddMember', async (req) => {
        const n = node();
        const id = member(req.id);
        const timeoutMs = requireTimeout(req.timeout_ms, opts.defaultTimeoutMs);
        const started = performance.now();
        if (!n.status().membership.learners.includes(id)) await n.changeMembership({ type: 'add_learner', node: id }, timeoutMs);
        const left = Math.max(1, Math.ceil(timeoutMs - (performance.now() - started)));
        await n.changeMembership({ type: 'promote', node: id }, left);
        return membersOf(n);
      }),
      RemoveMember: asyncUnary<ChangeRequest, RaftMembersResponse>(log, 'RemoveMember', async (req) => {
        const n = node();
        if (req.id === '') throw new DwcpError('invalid', 'id: a member name is required');
        await n.changeMembership({ type: 'remove', node: req.id }, requireTimeout(req.timeout_ms, opts.defaultTimeoutMs));
        return membersOf(n);
      }),
      TransferLeader: asyncUnary<{ to: string; timeout_ms: number }, { leader: string }>(log, 'TransferLeader', async (req) => {
        const n = node();
        const leader = await n.transferLeadership(req.to === '' ? null : req.to, requireTimeout(req.timeout_ms, opts.defaultTimeoutMs));
        return { leader };
      }),
    },
  };
}
