/**
 * The libp2p connection gater that admits configured members only.
 *
 * Refusal happens at connection time, right after the Noise handshake proves
 * the remote peer's identity (denyInboundEncryptedConnection) and before any
 * stream or protocol is opened; outbound dials to non-members are refused
 * before a socket is opened. The gater reads the live MemberDirectory, so a
 * reloaded member list applies to the next connection without a restart.
 */
import type { ConnectionGater, PeerId } from '@libp2p/interface';
import type { MemberDirectory } from '../federation/members.ts';
import type { Logger } from '../log.ts';
import type { MeshMetrics } from '../metrics/metrics.ts';

export function memberGater(members: MemberDirectory, metrics: Pick<MeshMetrics, 'connectionsRefused'>, log: Logger): ConnectionGater {
  const refuse = (peerId: PeerId, direction: 'inbound' | 'outbound', remoteAddr?: string): boolean => {
    if (members.has(peerId.toString())) return false;
    metrics.connectionsRefused.inc({ reason: 'not_member' });
    log.warn({ peerId: peerId.toString(), direction, remoteAddr, reason: 'not_member' }, 'refused connection from a peer outside the member list');
    return true;
  };
  return {
    denyDialPeer: (peerId) => !members.has(peerId.toString()),
    denyInboundEncryptedConnection: (peerId, maConn) => refuse(peerId, 'inbound', maConn.remoteAddr.toString()),
    denyOutboundEncryptedConnection: (peerId, maConn) => refuse(peerId, 'outbound', maConn.remoteAddr.toString()),
  };
}
