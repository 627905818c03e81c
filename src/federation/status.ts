/**
 * The daemon's view of itself and of each configured member, as reported by the
 * admin API (`dwcpctl status|members`). Plain data, produced on demand by the
 * mesh; nothing here is kept in sync by hand.
 */
import type { MemberConfig, NodeConfig } from '../config/schema.ts';
import type { LinkMode } from './link-mode.ts';
import type { MemberHealth } from './failure-detector.ts';

/** A configured member and what this node knows of its link right now. */
export interface MemberStatus extends MemberConfig {
  /** A libp2p connection is open and the hello exchange succeeded both ways. */
  connected: boolean;
  /** Smoothed ping round-trip time (EWMA), null until one has been measured. */
  rttMs: number | null;
  linkMode: LinkMode;
  /** ISO time the member was last connected (or connected since), null if never. */
  lastSeen: string | null;
  /** Why the last attempt to reach the member failed, if it did. */
  lastError: string | null;
  /** Phi-accrual suspicion from sync heartbeats (failure-detector.ts); null before the first one. Absent when nothing detects. */
  phi?: number | null;
  /** alive | suspected (phi above state.phiThreshold) | unknown (no heartbeat yet). */
  health?: MemberHealth;
}

/** Which log serves a write scope on this node (see KvService). */
export interface ScopeStatus {
  scope: 'datacenter' | 'federation';
  protocol: 'raft' | 'pbft' | 'none';
  /** Voters of the Raft group, or replicas of the PBFT group. */
  replicas: number;
}

export interface NodeStatus extends NodeConfig {
  peerId: string;
  federation: string;
  version: string;
  listenAddrs: string[];
  startedAt: string;
  uptimeSeconds: number;
  members: MemberStatus[];
  scopes: ScopeStatus[];
}
