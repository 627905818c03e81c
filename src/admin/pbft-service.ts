/**
 * The admin socket's PBFT service (pbft.proto): the state of this node's
 * replica of the federation's PBFT group. FAILED_PRECONDITION when every
 * member is trusted (the federation scope then runs on Raft).
 */
import type { Logger } from '../log.ts';
import { DwcpError } from '../errors.ts';
import type { PbftGroup } from '../consensus/pbft/group.ts';
import { BYZANTINE_DROPS } from '../consensus/pbft/types.ts';
import { asyncUnary } from './call.ts';
import { PBFT_SERVICE, loadAdminPackage, type PbftStatusResponse } from './schema.ts';
import type { AdminServiceRegistration } from './server.ts';

export function pbftStatusResponse(group: PbftGroup): PbftStatusResponse {
  const { node, client } = group;
  const s = node.status();
  return {
    id: s.id,
    view: s.view,
    active: s.active,
    primary: s.primary,
    f: node.f,
    replicas: [...node.members],
    last_executed: s.lastExecuted,
    stable_checkpoint: s.stableCheckpoint,
    high_watermark: s.highWatermark,
    pending_requests: s.pendingRequests,
    view_changes: s.viewChangesStarted,
    client_in_flight: client.inFlight,
    drops: [...node.drops()].filter(([, count]) => count > 0).map(([kind, count]) => ({ kind, count, byzantine: BYZANTINE_DROPS.has(kind) })),
  };
}

export function pbftServiceRegistration(opts: { group: PbftGroup | null; log: Logger }): AdminServiceRegistration {
  return {
    name: PBFT_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Status: asyncUnary<object, PbftStatusResponse>(opts.log, 'Status', async () => {
        if (opts.group === null) {
          throw new DwcpError('unsupported', 'every member is trusted: the federation scope runs on Raft, and this node runs no PBFT replica (see dwcpctl raft status)');
        }
        return pbftStatusResponse(opts.group);
      }),
    },
  };
}
