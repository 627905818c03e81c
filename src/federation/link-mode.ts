/**
 * The mode of a link between this node and a member, which picks the codec of
 * what is sent on it (src/codec/choice.ts: blob batches, geo sync frames) and
 * is shown by `dwcpctl members`. It does not pick the consensus protocol:
 * member trust does (any untrusted member puts the federation scope on PBFT;
 * src/consensus/pbft/group.ts). ARCHITECTURE.md, "Trust, modes and consensus".
 *
 * An untrusted end always makes the link `internet`. Between two trusted ends
 * the measured RTT decides: up to `datacenterMaxRttMs` is `datacenter`, from
 * `internetMinRttMs` on is `internet`, in between is `hybrid`. Before any RTT
 * is measured a trusted pair is taken to be `datacenter`, the configured intent.
 */
import type { Trust } from '../config/schema.ts';

export const LINK_MODES = ['datacenter', 'internet', 'hybrid'] as const;
export type LinkMode = (typeof LINK_MODES)[number];

export interface LinkThresholds {
  datacenterMaxRttMs: number;
  internetMinRttMs: number;
}

export function linkMode(local: Trust, remote: Trust, rttMs: number | null, t: LinkThresholds): LinkMode {
  if (local === 'untrusted' || remote === 'untrusted') return 'internet';
  if (rttMs === null || rttMs <= t.datacenterMaxRttMs) return 'datacenter';
  if (rttMs >= t.internetMinRttMs) return 'internet';
  return 'hybrid';
}
