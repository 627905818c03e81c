/**
 * The configuration schema of dwcpd: one YAML file, flags and DWCP_* environment
 * variables, all validated against this schema before anything starts.
 *
 * Invariants: unknown keys are errors (strict objects everywhere), every member
 * has a trust level after parsing (defaulted from its provider: on-premises and
 * private clouds are trusted, public clouds are not), peer IDs and multiaddrs are
 * checked for syntax here so that later code never sees a malformed one.
 */
import { z } from 'zod';
import { peerIdFromString } from '@libp2p/peer-id';
import { multiaddr } from '@multiformats/multiaddr';
import { CloudsSchema, type CloudsConfig } from '../cloud/config.ts';
import { BlobSchema, type BlobSettings } from '../blob/config.ts';
import { StateSchema, type StateSettings } from '../state/config.ts';
import { FleetSettingsSchema, type FleetSettings } from '../fleet/config.ts';
import { POLICY_MAX_DOCUMENTS, type PolicyFileSet } from '../policy/files.ts';
import { DrSettingsSchema, type DrSettings } from '../dr/config.ts';
import { CostSettingsSchema, type CostSettings } from '../cost/config.ts';
import { BudgetsConfigSchema, type BudgetSpec } from '../fleet/budgets.ts';
import { BurstSettingsSchema, type BurstSettings } from '../burst/config.ts';

export const PROVIDERS = ['onprem', 'private', 'aws', 'gcp', 'azure', 'oracle'] as const;
export type Provider = (typeof PROVIDERS)[number];

export const TRUST_LEVELS = ['trusted', 'untrusted'] as const;
export type Trust = (typeof TRUST_LEVELS)[number];

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Trust a provider gets when the config does not say: own hardware is trusted, public clouds are not. */
export function defaultTrust(provider: Provider): Trust {
  return provider === 'onprem' || provider === 'private' ? 'trusted' : 'untrusted';
}

const name = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'a lowercase DNS label (a-z, 0-9, "-", at most 63 characters)');

const region = z.string().min(1).max(64).regex(/^[A-Za-z0-9._-]+$/, 'letters, digits, ".", "_" or "-"');

const peerId = z.string().refine(
  (s) => {
    try {
      return peerIdFromString(s).type === 'Ed25519';
    } catch {
      return false;
    }
  },
  { message: 'an Ed25519 libp2p peer ID (12D3KooW…)' },
);

const multiaddrString = z.string().refine(
  (s) => {
    try {
      multiaddr(s);
      return s.startsWith('/');
    } catch {
      return false;
    }
  },
  { message: 'a multiaddr such as /ip4/10.0.0.2/tcp/4777' },
);

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, { message: 'host:port, e.g. 127.0.0.1:9477', abort: true })
  .refine((s) => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535, { message: 'host:port with a port from 0 to 65535' });

const millis = (max: number) => z.number().int().min(1).max(max);

/** A region label's key and value: what placement constraints and policy match on. */
const labelKey = z.string().regex(/^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$/, 'a label key (lowercase letters, digits, ".", "_", "/", "-"; at most 63 characters)');
const labelValue = z.string().max(63).regex(/^[A-Za-z0-9._-]*$/, 'a label value (letters, digits, ".", "_", "-"; at most 63 characters)');
const tag = z.string().regex(/^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$/, 'a lowercase word (a-z, 0-9, "-", at most 32 characters)');

export const NodeSchema = z.strictObject({
  name,
  region,
  provider: z.enum(PROVIDERS),
  trust: z.enum(TRUST_LEVELS).optional(),
  /** Free key/values the fleet publishes for this region (placement constraints and policy match on them). */
  labels: z.record(labelKey, labelValue).refine((l) => Object.keys(l).length <= 64, { message: 'at most 64 labels' }).default({}),
  /** The legal area the region's data sits in, e.g. `eu`, `us`. */
  jurisdiction: tag.optional(),
  /** Compliance regimes the region is certified for, e.g. `gdpr`, `hipaa`, `soc2`. */
  compliance: z.array(tag).max(32).default([]),
});

const MemberSchema = z.strictObject({
  name,
  peerId,
  region,
  provider: z.enum(PROVIDERS),
  trust: z.enum(TRUST_LEVELS).optional(),
  addrs: z.array(multiaddrString).default([]),
});

const NetworkSchema = z.strictObject({
  /** How often each connected member is pinged for RTT (and liveness, below). */
  pingIntervalMs: millis(3_600_000).default(5_000),
  /**
   * A connected member that has answered no ping for this long is hung up on
   * and redialled: a peer that died behind a half-open TCP connection would
   * otherwise look connected until the kernel gave up (~15 min). Keep it
   * several ping intervals: a busy link or a starved CPU delays pongs, and a
   * false verdict cuts every protocol on the connection.
   */
  deadAfterMs: millis(3_600_000).default(30_000),
  /** A dial (TCP + Noise + Yamux + hello) that takes longer is abandoned and retried. */
  dialTimeoutMs: millis(600_000).default(10_000),
  /**
   * Inbound connections accepted per second from one remote IP address; more
   * are reset before Noise. Members are known only after the handshake, so
   * this is what bounds the handshake work a single host can ask of us. Raise
   * it when several members share one address (NAT, or all on one machine).
   */
  inboundConnectionsPerHostPerSecond: z.number().int().min(1).max(100_000).default(5),
  /** Time allowed for the hello exchange on a new connection. */
  helloTimeoutMs: millis(600_000).default(5_000),
  /** Reconnect back-off: doubles from initialMs to maxMs, with jitter. */
  reconnectInitialMs: millis(3_600_000).default(500),
  reconnectMaxMs: millis(3_600_000).default(30_000),
  /** Link-mode thresholds between two trusted members (see linkMode). */
  datacenterMaxRttMs: z.number().min(0).max(60_000).default(10),
  internetMinRttMs: z.number().min(0).max(60_000).default(100),
});

const RaftSchema = z.strictObject({
  /** Wall-clock length of one Raft tick; election and heartbeat timeouts are counted in ticks. */
  tickMs: millis(10_000).default(100),
  /** Followers wait a random 1–2× this many ticks without a leader before campaigning. */
  electionTicks: z.number().int().min(3).max(10_000).default(10),
  heartbeatTicks: z.number().int().min(1).max(10_000).default(1),
  /** Snapshot the state machine and compact the log after this many applied entries. */
  snapshotEntries: z.number().int().min(16).max(100_000_000).default(10_000),
  /** Deadline for a client request (a write, a strong read) that names none. */
  requestTimeoutMs: millis(600_000).default(5_000),
  /**
   * Start as a node to be added to an existing Raft group (dwcpctl raft
   * add-member on a current member) instead of founding one with every trusted
   * member listed in the config.
   */
  join: z.boolean().default(false),
});

const PbftSchema = z.strictObject({
  /** Wall-clock length of one PBFT tick; the view-change timeout is counted in ticks. */
  tickMs: millis(10_000).default(100),
  /** A backup waits this many ticks for its pending requests to execute before it votes the primary out; doubles on each successive view change. */
  viewChangeTicks: z.number().int().min(2).max(100_000).default(20),
  /** A checkpoint every this many sequence numbers; 2f + 1 matching ones make it stable and let the log be trimmed. */
  checkpointInterval: z.number().int().min(2).max(100_000).default(64),
  /** Sequence numbers accepted above the stable checkpoint; a multiple of checkpointInterval. */
  logWindow: z.number().int().min(2).max(1_000_000).default(128),
  maxBatchRequests: z.number().int().min(1).max(4096).default(64),
  /** Byzantine members to tolerate; default the most the member count allows (n >= 3f + 1). */
  f: z.number().int().min(1).max(1000).optional(),
  /** Requests this node may have in flight as a PBFT client (PBFT orders one per client, so the node is this many clients). */
  clientLanes: z.number().int().min(1).max(4096).default(64),
  /** A client request without an answer is re-sent to every replica this often. */
  requestRetryMs: millis(600_000).default(1_000),
});

/** A cross-field problem, worded as a sentence about the value at `path`. */
function refuse(ctx: z.RefinementCtx, path: (string | number)[], input: unknown, message: string): void {
  ctx.addIssue({ code: 'custom', path, input, params: { sentence: true }, message });
}

const ConfigFileObject = z.strictObject({
  federation: name.describe('federation id'),
  node: NodeSchema,
  listen: z.array(multiaddrString).min(1).optional(),
  dataDir: z.string().min(1).optional(),
  adminSocket: z.string().min(1).optional(),
  metricsListen: hostPort.optional(),
  logLevel: z.enum(LOG_LEVELS).optional(),
  /**
   * The garbage budget (src/daemon/heap-budget.ts): a full collection once the
   * V8 heap plus external memory has grown this many MiB past the last full
   * collection; 0 (the default) leaves collection to V8 alone. Less is less
   * memory under load for more CPU and event-loop pauses: 48 took ~100 MiB
   * off a Raft member's peak for 11-22 % more CPU per put (bench/RESULTS.md,
   * raft), above the 5 % a default may cost, so it is the operator's choice.
   */
  gcBudgetMiB: z.number().int().min(0).max(65_536).default(0),
  members: z.array(MemberSchema).default([]),
  network: NetworkSchema.default(NetworkSchema.parse({})),
  raft: RaftSchema.default(RaftSchema.parse({})),
  pbft: PbftSchema.default(PbftSchema.parse({})),
  clouds: CloudsSchema,
  blob: BlobSchema.default(BlobSchema.parse({})),
  state: StateSchema.default(StateSchema.parse({})),
  fleet: FleetSettingsSchema.default(FleetSettingsSchema.parse({})),
  /**
   * Policy files (YAML or JSON, docs/policy.md) that bootstrap the fleet's
   * policy set while the federation log holds none; relative paths are from
   * the config file's directory. Read and compiled at load (src/policy/files.ts).
   */
  policies: z.array(z.string().min(1).max(4096)).max(POLICY_MAX_DOCUMENTS).default([]),
  dr: DrSettingsSchema.default(DrSettingsSchema.parse({})),
  cost: CostSettingsSchema.default(CostSettingsSchema.parse({})),
  budgets: BudgetsConfigSchema,
  /** Cloud bursting: triggers, cooldown, and this node's burst groups (src/burst/config.ts). */
  burst: BurstSettingsSchema.default(BurstSettingsSchema.parse({})),
});

export const ConfigFileSchema = ConfigFileObject.superRefine((cfg, ctx) => {
  const names = new Map<string, number>([[cfg.node.name, -1]]);
  const ids = new Map<string, number>();
  cfg.members.forEach((m, i) => {
    if (names.has(m.name)) {
      ctx.addIssue({ code: 'custom', path: ['members', i, 'name'], input: m.name, message: 'is already the name of another member or of this node', params: { sentence: true } });
    }
    names.set(m.name, i);
    if (ids.has(m.peerId)) {
      ctx.addIssue({ code: 'custom', path: ['members', i, 'peerId'], input: m.peerId, message: 'is already the peer ID of another member', params: { sentence: true } });
    }
    ids.set(m.peerId, i);
  });
  cfg.burst.groups.forEach((g, i) => {
    // The home region's node drives a group, so a node's config declares only the groups it drives.
    if (g.home !== cfg.node.name) refuse(ctx, ['burst', 'groups', i, 'home'], g.home, `must be this node's region (node.name ${cfg.node.name}): a node's config declares the burst groups it drives`);
  });
  if (cfg.network.reconnectInitialMs > cfg.network.reconnectMaxMs) {
    refuse(ctx, ['network', 'reconnectInitialMs'], cfg.network.reconnectInitialMs, `must not exceed network.reconnectMaxMs (${cfg.network.reconnectMaxMs})`);
  }
  if (cfg.raft.heartbeatTicks >= cfg.raft.electionTicks) {
    refuse(ctx, ['raft', 'heartbeatTicks'], cfg.raft.heartbeatTicks, `must be below raft.electionTicks (${cfg.raft.electionTicks})`);
  }
  checkPbftFederation(cfg, ctx);
  if (cfg.network.datacenterMaxRttMs > cfg.network.internetMinRttMs) {
    refuse(ctx, ['network', 'datacenterMaxRttMs'], cfg.network.datacenterMaxRttMs, `must not exceed network.internetMinRttMs (${cfg.network.internetMinRttMs})`);
  }
});

/**
 * A federation with any untrusted member (this node included) runs PBFT for
 * its federation scope, which tolerates f Byzantine members only with
 * n >= 3f + 1: refuse a config that cannot, saying how many members it needs.
 */
function checkPbftFederation(cfg: z.infer<typeof ConfigFileObject>, ctx: z.RefinementCtx): void {
  const { pbft } = cfg;
  if (pbft.logWindow % pbft.checkpointInterval !== 0) {
    refuse(ctx, ['pbft', 'logWindow'], pbft.logWindow, `must be a multiple of pbft.checkpointInterval (${pbft.checkpointInterval})`);
  }
  const untrusted = [
    ...((cfg.node.trust ?? defaultTrust(cfg.node.provider)) === 'untrusted' ? [`${cfg.node.name} (this node)`] : []),
    ...cfg.members.filter((m) => (m.trust ?? defaultTrust(m.provider)) === 'untrusted').map((m) => m.name),
  ];
  // A lone node replicates with nobody: there is no federation log to order.
  if (untrusted.length === 0 || cfg.members.length === 0) return;
  const n = cfg.members.length + 1;
  const f = pbft.f ?? Math.max(1, Math.floor((n - 1) / 3));
  const needed = 3 * f + 1;
  if (n >= needed) return;
  const byCount = pbft.f === undefined;
  refuse(
    ctx,
    byCount ? ['members'] : ['pbft', 'f'],
    pbft.f ?? n,
    `${byCount ? 'members are too few' : 'is too many Byzantine members to tolerate'}: the federation has untrusted members (${untrusted.join(', ')}), ` +
      `so its federation scope runs PBFT, which needs at least ${needed} members to tolerate ${f} Byzantine member${f === 1 ? '' : 's'} (n >= 3f + 1); ` +
      `this federation has ${n} (this node and ${n - 1} member${n === 2 ? '' : 's'}): add ${needed - n} more` +
      (byCount ? ', or mark members trusted' : ', or lower pbft.f'),
  );
}

export type ConfigFile = z.infer<typeof ConfigFileSchema>;
export type PbftSettings = z.infer<typeof PbftSchema>;
export type NetworkConfig = z.infer<typeof NetworkSchema>;
export type RaftSettings = z.infer<typeof RaftSchema>;

/** A federation member as the rest of the daemon sees it: trust always resolved. */
export interface MemberConfig {
  name: string;
  peerId: string;
  region: string;
  provider: Provider;
  trust: Trust;
  addrs: string[];
}

export interface NodeConfig {
  name: string;
  region: string;
  provider: Provider;
  trust: Trust;
  /** Region labels (config `node.labels`, `node.jurisdiction`, `node.compliance`); absent in hand-built configs means none. */
  labels?: Record<string, string>;
  jurisdiction?: string | undefined;
  compliance?: string[];
}

/** The fully resolved configuration: defaults, file, environment and flags merged and validated. */
export interface DwcpConfig {
  federation: string;
  node: NodeConfig;
  listen: string[];
  dataDir: string;
  adminSocket: string;
  metricsListen: string;
  logLevel: LogLevel;
  /** MiB of heap + external growth between full collections the daemon allows; 0: V8 decides alone (src/daemon/heap-budget.ts). */
  gcBudgetMiB: number;
  members: MemberConfig[];
  network: NetworkConfig;
  raft: RaftSettings;
  pbft: PbftSettings;
  /** Cloud providers this daemon manages VMs in (src/cloud/config.ts). */
  clouds: CloudsConfig;
  /** Large values: store, delta sync and bulk transfer (src/blob/config.ts). */
  blob: BlobSettings;
  /** Geo-distributed state and failure detection (src/state/config.ts). */
  state: StateSettings;
  /** The fleet: observed-state publishing, the reconciler and the scheduler (src/fleet/config.ts). */
  fleet: FleetSettings;
  /**
   * The config's `policies:` files, read and compiled: proposed as the
   * fleet's first policy version while the log has none (src/fleet/seat.ts).
   * Absent (hand-built configs): none.
   */
  policies?: PolicyFileSet;
  /** Disaster recovery: region checks, self-fencing, failback (src/dr/config.ts, docs/dr.md). */
  dr: DrSettings;
  /** Cost accrual, reservations and utilisation collection (src/cost/config.ts). */
  cost: CostSettings;
  /** Budgets proposed to the federation log at start (src/fleet/budgets.ts). */
  budgets: BudgetSpec[];
  /** Cloud bursting (src/burst/config.ts). */
  burst: BurstSettings;
  /** The file this came from, if any (SIGHUP re-reads it). */
  configPath: string | undefined;
}
