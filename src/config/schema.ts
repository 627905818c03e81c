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

const NodeSchema = z.strictObject({
  name,
  region,
  provider: z.enum(PROVIDERS),
  trust: z.enum(TRUST_LEVELS).optional(),
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
  /** How often each connected member is pinged for RTT. */
  pingIntervalMs: millis(3_600_000).default(5_000),
  /** A dial (TCP + Noise + Yamux + hello) that takes longer is abandoned and retried. */
  dialTimeoutMs: millis(600_000).default(10_000),
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

export const ConfigFileSchema = z
  .strictObject({
    federation: name.describe('federation id'),
    node: NodeSchema,
    listen: z.array(multiaddrString).min(1).optional(),
    dataDir: z.string().min(1).optional(),
    adminSocket: z.string().min(1).optional(),
    metricsListen: hostPort.optional(),
    logLevel: z.enum(LOG_LEVELS).optional(),
    members: z.array(MemberSchema).default([]),
    network: NetworkSchema.default(NetworkSchema.parse({})),
    raft: RaftSchema.default(RaftSchema.parse({})),
  })
  .superRefine((cfg, ctx) => {
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
    if (cfg.network.reconnectInitialMs > cfg.network.reconnectMaxMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['network', 'reconnectInitialMs'],
        input: cfg.network.reconnectInitialMs,
        params: { sentence: true },
        message: `must not exceed network.reconnectMaxMs (${cfg.network.reconnectMaxMs})`,
      });
    }
    if (cfg.raft.heartbeatTicks >= cfg.raft.electionTicks) {
      ctx.addIssue({
        code: 'custom',
        path: ['raft', 'heartbeatTicks'],
        input: cfg.raft.heartbeatTicks,
        params: { sentence: true },
        message: `must be below raft.electionTicks (${cfg.raft.electionTicks})`,
      });
    }
    if (cfg.network.datacenterMaxRttMs > cfg.network.internetMinRttMs) {
      ctx.addIssue({
        code: 'custom',
        path: ['network', 'datacenterMaxRttMs'],
        input: cfg.network.datacenterMaxRttMs,
        params: { sentence: true },
        message: `must not exceed network.internetMinRttMs (${cfg.network.internetMinRttMs})`,
      });
    }
  });

export type ConfigFile = z.infer<typeof ConfigFileSchema>;
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
  members: MemberConfig[];
  network: NetworkConfig;
  raft: RaftSettings;
  /** The file this came from, if any (SIGHUP re-reads it). */
  configPath: string | undefined;
}
