/**
 * Every Prometheus metric the daemon exports, defined in one place so names,
 * units and label sets stay consistent (dwcp_ prefix, base units, _total on
 * counters, histograms rather than summaries). Components receive the slice
 * they need by injection; nothing registers metrics on the global registry,
 * so several daemons can live in one test process.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { BYZANTINE_DROPS, DROP_KINDS } from '../consensus/pbft/types.ts';
import { createCloudMetrics, type CloudMetrics } from '../cloud/metrics.ts';
import { createBlobMetrics, type BlobMetrics } from '../blob/metrics.ts';
import { createImageMetrics, type ImageMetrics } from '../image/metrics.ts';
import { createStateMetrics, type StateMetrics } from '../state/metrics.ts';
import { createFleetMetrics, type FleetMetrics } from '../fleet/metrics.ts';
import { createCostMetrics, type CostMetrics } from '../cost/metrics.ts';
import { createBurstMetrics, type BurstMetrics } from '../burst/metrics.ts';
import { createMigrationMetrics, type MigrationMetrics } from '../migration/metrics.ts';
import { createPolicyMetrics, type PolicyMetrics } from '../fleet/policy-metrics.ts';
import { createDrMetrics, type DrMetrics } from '../dr/metrics.ts';

/** Reasons a connection or peer is refused; bounded so label cardinality stays small. */
export const REFUSAL_REASONS = ['not_member', 'hello_failed', 'federation_mismatch', 'identity_mismatch'] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];

/** Reasons a frame is rejected by the framing layer. */
export const FRAME_REJECT_REASONS = ['oversized', 'truncated', 'malformed', 'schema', 'timeout'] as const;
export type FrameRejectReason = (typeof FRAME_REJECT_REASONS)[number];

/** prom-client default metrics that are dropped; see createMetrics. */
const MISNAMED_DEFAULT_GAUGES = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

/** What every framed protocol counts, labelled by protocol (src/net/framing.ts frameEventsFor). */
export interface FrameMetrics {
  protocolBytesReceived: Counter<'protocol'>;
  protocolBytesSent: Counter<'protocol'>;
  framesRejected: Counter<'protocol' | 'reason'>;
}

/** The member mesh's own (src/net/mesh.ts), plus the frame counters of its hello protocol. */
export interface MeshMetrics extends FrameMetrics {
  membersConfigured: Gauge;
  membersConnected: Gauge;
  connectionsRefused: Counter<'reason'>;
  dialAttempts: Counter<'peer' | 'result'>;
  peerRtt: Histogram<'peer'>;
}

/**
 * The whole set, held by the daemon alone (src/daemon/daemon.ts); a component
 * declares the part it uses (MeshMetrics, FrameMetrics, a section such as
 * RaftMetrics), which this satisfies.
 */
export interface DwcpMetrics extends MeshMetrics {
  registry: Registry;
  buildInfo: Gauge<'version' | 'node' | 'federation'>;
  adminRequests: Counter<'method' | 'code'>;
  raft: RaftMetrics;
  pbft: PbftMetrics;
  cloud: CloudMetrics;
  blob: BlobMetrics;
  image: ImageMetrics;
  state: StateMetrics;
  fleet: FleetMetrics;
  migration: MigrationMetrics;
  policy: PolicyMetrics;
  dr: DrMetrics;
  cost: CostMetrics;
  burst: BurstMetrics;
}

/** Outcomes of a client proposal as the driver sees them; bounded for label cardinality. */
export const PROPOSAL_RESULTS = ['committed', 'not_leader', 'no_leader', 'dropped', 'timeout', 'lost', 'stopped'] as const;
export type ProposalResult = (typeof PROPOSAL_RESULTS)[number];

export interface RaftMetrics {
  term: Gauge;
  isLeader: Gauge;
  leaderChanges: Counter;
  commitIndex: Gauge;
  appliedIndex: Gauge;
  proposals: Counter<'result'>;
  appendDuration: Histogram;
  fsyncDuration: Histogram;
  snapshotsSent: Counter;
  snapshotsInstalled: Counter;
}

/** Storage latencies from ~50 µs (page cache) to seconds (a stalled disk). */
const STORAGE_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

function createRaftMetrics(registers: Registry[]): RaftMetrics {
  const m: RaftMetrics = {
    term: new Gauge({ name: 'dwcp_raft_term', help: 'Current Raft term of this node.', registers }),
    isLeader: new Gauge({ name: 'dwcp_raft_is_leader', help: '1 while this node is the Raft leader, else 0.', registers }),
    leaderChanges: new Counter({
      name: 'dwcp_raft_leader_changes_total',
      help: 'Times the leader this node knows of changed (including to none).',
      registers,
    }),
    commitIndex: new Gauge({ name: 'dwcp_raft_commit_index', help: 'Highest log index known committed.', registers }),
    appliedIndex: new Gauge({ name: 'dwcp_raft_applied_index', help: 'Highest log index applied to the state machine.', registers }),
    proposals: new Counter({
      name: 'dwcp_raft_proposals_total',
      help: 'Client proposals handled by this node, by result.',
      labelNames: ['result'],
      registers,
    }),
    appendDuration: new Histogram({
      name: 'dwcp_raft_append_duration_seconds',
      help: 'Time to write one Ready batch of log entries and hard state, before the sync.',
      buckets: STORAGE_BUCKETS,
      registers,
    }),
    fsyncDuration: new Histogram({
      name: 'dwcp_raft_fsync_duration_seconds',
      help: 'Time to make one group-committed storage transaction durable.',
      buckets: STORAGE_BUCKETS,
      registers,
    }),
    snapshotsSent: new Counter({ name: 'dwcp_raft_snapshots_sent_total', help: 'Snapshots this leader started sending to a follower.', registers }),
    snapshotsInstalled: new Counter({
      name: 'dwcp_raft_snapshots_installed_total',
      help: 'Snapshots received from a leader and installed.',
      registers,
    }),
  };
  for (const result of PROPOSAL_RESULTS) m.proposals.inc({ result }, 0);
  return m;
}

/** Outcomes of a request this node's PBFT client sent; bounded for label cardinality. */
export const PBFT_REQUEST_RESULTS = ['committed', 'timeout', 'dropped', 'stopped'] as const;
export type PbftRequestResult = (typeof PBFT_REQUEST_RESULTS)[number];

export interface PbftMetrics {
  view: Gauge;
  isPrimary: Gauge;
  viewChanges: Counter;
  executedSeq: Gauge;
  stableCheckpoint: Gauge;
  rejected: Counter<'kind'>;
  byzantine: Counter<'kind'>;
  verifyDuration: Histogram;
  persistDuration: Histogram;
  stateTransfers: Counter;
  requests: Counter<'result'>;
  requestDuration: Histogram;
}

function createPbftMetrics(registers: Registry[], dropKinds: readonly string[], byzantineKinds: readonly string[]): PbftMetrics {
  const m: PbftMetrics = {
    view: new Gauge({ name: 'dwcp_pbft_view', help: 'Current PBFT view of this replica.', registers }),
    isPrimary: new Gauge({ name: 'dwcp_pbft_is_primary', help: '1 while this replica is the primary of its view, else 0.', registers }),
    viewChanges: new Counter({ name: 'dwcp_pbft_view_changes_total', help: 'View changes this replica started or joined.', registers }),
    executedSeq: new Gauge({ name: 'dwcp_pbft_executed_seq', help: 'Highest PBFT sequence number executed here.', registers }),
    stableCheckpoint: new Gauge({ name: 'dwcp_pbft_stable_checkpoint', help: 'Sequence number of the latest stable checkpoint (the low watermark).', registers }),
    rejected: new Counter({
      name: 'dwcp_pbft_messages_rejected_total',
      help: 'PBFT messages and requests dropped, by kind (bad signature, outside watermarks, stale view, ...).',
      labelNames: ['kind'],
      registers,
    }),
    byzantine: new Counter({
      name: 'dwcp_pbft_byzantine_detected_total',
      help: 'Dropped PBFT input that only a faulty member produces (forged signature, wrong digest, equivocation, ...), by kind.',
      labelNames: ['kind'],
      registers,
    }),
    verifyDuration: new Histogram({
      name: 'dwcp_pbft_signature_verify_duration_seconds',
      help: 'Time to verify one Ed25519 signature on a PBFT message or client request.',
      buckets: [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005],
      registers,
    }),
    persistDuration: new Histogram({
      name: 'dwcp_pbft_persist_duration_seconds',
      help: 'Time from queueing one PBFT Ready batch for storage (behind earlier ones) until it is durable and its votes may leave.',
      buckets: STORAGE_BUCKETS,
      registers,
    }),
    stateTransfers: new Counter({ name: 'dwcp_pbft_state_transfers_total', help: 'Checkpoint states installed from peers (state transfer).', registers }),
    requests: new Counter({
      name: 'dwcp_pbft_requests_total',
      help: 'Requests this node submitted as a PBFT client, by result (committed: f + 1 matching replies).',
      labelNames: ['result'],
      registers,
    }),
    requestDuration: new Histogram({
      name: 'dwcp_pbft_request_duration_seconds',
      help: 'Time from submitting a PBFT request to f + 1 matching replies.',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
  };
  for (const kind of dropKinds) m.rejected.inc({ kind }, 0);
  for (const kind of byzantineKinds) m.byzantine.inc({ kind }, 0);
  for (const result of PBFT_REQUEST_RESULTS) m.requests.inc({ result }, 0);
  return m;
}

export function createMetrics(opts: { defaultMetrics?: boolean } = {}): DwcpMetrics {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) {
    collectDefaultMetrics({ register: registry });
    // These gauges break the Prometheus rule that only counters end in _total
    // (promtool check metrics flags them), and each is just the sum over the
    // per-type gauge of the same name without the suffix, which stays.
    for (const name of MISNAMED_DEFAULT_GAUGES) registry.removeSingleMetric(name);
  }
  const registers = [registry];
  const m: DwcpMetrics = {
    registry,
    buildInfo: new Gauge({
      name: 'dwcp_build_info',
      help: 'Constant 1, labelled with the daemon version, node name and federation id.',
      labelNames: ['version', 'node', 'federation'],
      registers,
    }),
    membersConfigured: new Gauge({
      name: 'dwcp_members_configured',
      help: 'Other members in the configured member list.',
      registers,
    }),
    membersConnected: new Gauge({
      name: 'dwcp_members_connected',
      help: 'Configured members with an open connection that passed the hello exchange.',
      registers,
    }),
    connectionsRefused: new Counter({
      name: 'dwcp_connections_refused_total',
      help: 'Connections refused, by reason (not_member: peer ID outside the member list).',
      labelNames: ['reason'],
      registers,
    }),
    dialAttempts: new Counter({
      name: 'dwcp_dial_attempts_total',
      help: 'Outbound connection attempts to members, by member name and result.',
      labelNames: ['peer', 'result'],
      registers,
    }),
    protocolBytesReceived: new Counter({
      name: 'dwcp_protocol_received_bytes_total',
      help: 'Framed bytes received, by libp2p protocol.',
      labelNames: ['protocol'],
      registers,
    }),
    protocolBytesSent: new Counter({
      name: 'dwcp_protocol_sent_bytes_total',
      help: 'Framed bytes sent, by libp2p protocol.',
      labelNames: ['protocol'],
      registers,
    }),
    framesRejected: new Counter({
      name: 'dwcp_frames_rejected_total',
      help: 'Inbound frames rejected (and their stream reset), by protocol and reason.',
      labelNames: ['protocol', 'reason'],
      registers,
    }),
    peerRtt: new Histogram({
      name: 'dwcp_peer_rtt_seconds',
      help: 'Ping round-trip time to each connected member.',
      labelNames: ['peer'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    }),
    adminRequests: new Counter({
      name: 'dwcp_admin_requests_total',
      help: 'Admin gRPC calls, by method and gRPC status code name.',
      labelNames: ['method', 'code'],
      registers,
    }),
    raft: createRaftMetrics(registers),
    pbft: createPbftMetrics(registers, DROP_KINDS, [...BYZANTINE_DROPS]),
    cloud: createCloudMetrics(registers),
    blob: createBlobMetrics(registers),
    image: createImageMetrics(registers),
    state: createStateMetrics(registers),
    fleet: createFleetMetrics(registers),
    migration: createMigrationMetrics(registers),
    policy: createPolicyMetrics(registers),
    dr: createDrMetrics(registers),
    cost: createCostMetrics(registers),
    burst: createBurstMetrics(registers),
  };
  // Export zeroes for every bounded label value so rate() works from the first scrape.
  for (const reason of REFUSAL_REASONS) m.connectionsRefused.inc({ reason }, 0);
  return m;
}
