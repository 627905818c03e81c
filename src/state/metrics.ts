/**
 * Metrics of the geo-distributed store and of member failure detection
 * (dwcp_member_phi, dwcp_member_suspected), created on the daemon's registry
 * by createMetrics (src/metrics/metrics.ts) and fed by GeoState.
 *
 * Invariant: every label set is bounded: peers are configured members,
 * levels, outcomes and directions are the fixed lists below (exported with
 * zeroes from the start so rate() works at once).
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { GEO_LEVELS } from '../kv/consistency.ts';

export const UPDATE_OUTCOMES = ['merged', 'stale', 'behind', 'expired'] as const;
export const ROUND_OUTCOMES = ['done', 'timeout', 'peer_down'] as const;
export const QUORUM_OPS = ['write', 'read'] as const;
const DIRECTIONS = ['sent', 'received'] as const;
/** The kinds of frame on /dwcp/sync/1.0.0 (wire.ts SyncFrame), the label of the byte counters. */
export const SYNC_FRAME_KINDS = ['heartbeat', 'push', 'push-ack', 'read', 'read-reply', 'digest', 'summaries', 'want', 'updates', 'status-request', 'status-reply'] as const;

export interface StateMetrics {
  memberPhi: Gauge<'peer'>;
  memberSuspected: Gauge<'peer'>;
  entries: Gauge;
  writes: Counter<'level'>;
  writeDuration: Histogram<'level'>;
  quorumFailures: Counter<'op'>;
  updatesReceived: Counter<'outcome'>;
  rounds: Counter<'outcome'>;
  roundEntries: Counter<'direction'>;
  /** Sync payload bytes before the codec, and on the wire after it, by message kind. */
  syncRawBytes: Counter<'direction' | 'kind'>;
  syncWireBytes: Counter<'direction' | 'kind'>;
  persistDuration: Histogram;
  clockDrift: Counter;
  collected: Counter;
}

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export function createStateMetrics(registers: Registry[]): StateMetrics {
  const m: StateMetrics = {
    memberPhi: new Gauge({
      name: 'dwcp_member_phi',
      help: 'Phi-accrual suspicion level of each member (-log10 of the chance its next heartbeat is still coming); absent until its first heartbeat.',
      labelNames: ['peer'],
      registers,
    }),
    memberSuspected: new Gauge({
      name: 'dwcp_member_suspected',
      help: '1 while a member\'s phi is above state.phiThreshold, else 0.',
      labelNames: ['peer'],
      registers,
    }),
    entries: new Gauge({ name: 'dwcp_state_entries', help: 'Entries in this region\'s geo-distributed store.', registers }),
    writes: new Counter({ name: 'dwcp_state_writes_total', help: 'Client writes to the geo-distributed store, by consistency level.', labelNames: ['level'], registers }),
    writeDuration: new Histogram({
      name: 'dwcp_state_write_duration_seconds',
      help: 'Time until a geo write was acknowledged to its client, by consistency level (failed quorum writes excluded).',
      labelNames: ['level'],
      buckets: LATENCY_BUCKETS,
      registers,
    }),
    quorumFailures: new Counter({
      name: 'dwcp_state_quorum_failures_total',
      help: 'Quorum reads and writes that did not reach a majority of regions in time.',
      labelNames: ['op'],
      registers,
    }),
    updatesReceived: new Counter({
      name: 'dwcp_state_updates_received_total',
      help: 'Entry updates received from other regions, by outcome (behind: a delta that arrived before its history, repaired with the whole entry).',
      labelNames: ['outcome'],
      registers,
    }),
    rounds: new Counter({ name: 'dwcp_state_rounds_total', help: 'Anti-entropy rounds this region started, by outcome.', labelNames: ['outcome'], registers }),
    roundEntries: new Counter({
      name: 'dwcp_state_round_entries_total',
      help: 'Entries moved by anti-entropy rounds this region started, by direction.',
      labelNames: ['direction'],
      registers,
    }),
    syncRawBytes: new Counter({
      name: 'dwcp_state_sync_raw_bytes_total',
      help: 'Sync protocol payload bytes before compression, by direction and message kind.',
      labelNames: ['direction', 'kind'],
      registers,
    }),
    syncWireBytes: new Counter({
      name: 'dwcp_state_sync_wire_bytes_total',
      help: 'Sync protocol payload bytes after compression (codec frames, header included), by direction and message kind.',
      labelNames: ['direction', 'kind'],
      registers,
    }),
    persistDuration: new Histogram({
      name: 'dwcp_state_persist_duration_seconds',
      help: 'Time to make one batch of geo-store changes durable (fsync included).',
      buckets: LATENCY_BUCKETS,
      registers,
    }),
    clockDrift: new Counter({
      name: 'dwcp_state_clock_drift_total',
      help: 'Writes from other regions stamped further ahead of this region\'s clock than state.maxClockOffsetMs (merged, but the clock did not follow).',
      registers,
    }),
    collected: new Counter({ name: 'dwcp_state_collected_total', help: 'Expired entries dropped after their grace period.', registers }),
  };
  for (const level of GEO_LEVELS) m.writes.inc({ level }, 0);
  for (const op of QUORUM_OPS) m.quorumFailures.inc({ op }, 0);
  for (const outcome of UPDATE_OUTCOMES) m.updatesReceived.inc({ outcome }, 0);
  for (const outcome of ROUND_OUTCOMES) m.rounds.inc({ outcome }, 0);
  for (const direction of DIRECTIONS) {
    m.roundEntries.inc({ direction }, 0);
    for (const kind of SYNC_FRAME_KINDS) {
      m.syncRawBytes.inc({ direction, kind }, 0);
      m.syncWireBytes.inc({ direction, kind }, 0);
    }
  }
  return m;
}
