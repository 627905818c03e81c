/**
 * Planning for the local federation launcher: from a node count, an untrusted
 * count, a directory and a base port, the name, region, provider, ports and
 * file paths of every node, and each node's dwcpd config once the peer IDs are
 * known. No I/O here, so the launcher's choices are testable without starting
 * anything.
 *
 * Invariants: trusted nodes come first and every node's index is the same in
 * the name order and the port order (listen P+i, metrics P+1000+i); every path
 * is absolute; a plan whose ports leave 1..65535 or whose admin socket path
 * exceeds the kernel's sun_path limit is refused with the limit and the
 * offending value, before any file is written.
 */
import { isAbsolute, join } from 'node:path';
import { MAX_SOCKET_PATH_BYTES } from '../src/admin/socket.ts';
import { defaultTrust, type Provider, type Trust } from '../src/config/schema.ts';

export const FEDERATION_ID = 'local-fed';
export const DEFAULT_BASE_PORT = 4800;
/** Metrics ports sit this far above the libp2p ports so the two ranges never overlap for N <= 1000. */
export const METRICS_PORT_OFFSET = 1000;
export const MAX_NODES = METRICS_PORT_OFFSET;

export const CONFIG_FILE = 'dwcpd.yaml';
export const LOG_FILE = 'dwcpd.log';
export const PID_FILE = 'dwcpd.pid';
export const SOCKET_FILE = 'admin.sock';

/** Untrusted nodes take these providers in turn, and each provider its regions in turn. */
const CLOUD_REGIONS: readonly (readonly [Provider, readonly string[]])[] = [
  ['aws', ['us-east-1', 'eu-west-1', 'ap-northeast-1']],
  ['gcp', ['us-central1', 'europe-west1', 'asia-east1']],
  ['azure', ['eastus', 'westeurope', 'southeastasia']],
  ['oracle', ['us-ashburn-1', 'eu-frankfurt-1', 'ap-tokyo-1']],
];

export class PlanError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PlanError';
  }
}

export interface PlanInput {
  nodes: number;
  untrusted: number;
  /** Absolute: the plan's paths end up in configs read by daemons with another cwd. */
  dir: string;
  basePort: number;
}

export interface PlannedNode {
  name: string;
  region: string;
  provider: Provider;
  trust: Trust;
  /** The node's data dir: key, config, log, pid file and admin socket live here. */
  dir: string;
  configPath: string;
  logPath: string;
  pidPath: string;
  adminSocket: string;
  listen: string;
  metricsListen: string;
  metricsUrl: string;
}

/** What the launcher writes to `<dir>/<name>/dwcpd.yaml`; a subset of the daemon's ConfigFile. */
export interface LocalNodeConfig {
  federation: string;
  node: { name: string; region: string; provider: Provider; trust: Trust };
  listen: string[];
  metricsListen: string;
  adminSocket: string;
  dataDir: string;
  logLevel: 'info';
  members: { name: string; peerId: string; region: string; provider: Provider; trust: Trust; addrs: string[] }[];
}

function requireInt(field: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new PlanError(`${field}: ${value} is not an integer from ${min} to ${max}`);
  }
}

function cloudPlacement(k: number): { provider: Provider; region: string } {
  const [provider, regions] = CLOUD_REGIONS[k % CLOUD_REGIONS.length]!;
  const round = Math.floor(k / CLOUD_REGIONS.length);
  // Past the listed regions, a numeric suffix keeps every region name distinct.
  const suffix = round >= regions.length ? `-${Math.floor(round / regions.length) + 1}` : '';
  return { provider, region: `${provider}-${regions[round % regions.length]!}${suffix}` };
}

export function planFederation(input: PlanInput): PlannedNode[] {
  const { nodes, untrusted, dir, basePort } = input;
  requireInt('--nodes', nodes, 1, MAX_NODES);
  requireInt('--untrusted', untrusted, 0, nodes);
  requireInt('--base-port', basePort, 1, 65535);
  const highest = basePort + METRICS_PORT_OFFSET + nodes - 1;
  if (highest > 65535) {
    throw new PlanError(`--base-port: ${basePort} puts the last metrics port at ${highest}, above 65535; use at most ${65535 - METRICS_PORT_OFFSET - nodes + 1}`);
  }
  if (untrusted > 0 && nodes < 4) {
    throw new PlanError(`--untrusted ${untrusted} with --nodes ${nodes}: untrusted members make the federation scope run PBFT, which needs at least 4 members (n >= 3f + 1); use --nodes 4 or more`);
  }
  if (!isAbsolute(dir)) throw new PlanError(`--dir: ${JSON.stringify(dir)} must be an absolute path`);

  const trusted = nodes - untrusted;
  return Array.from({ length: nodes }, (_, i) => {
    const placement = i < trusted ? { name: `dc${i + 1}`, provider: 'onprem' as const, region: `dc${i + 1}` } : { name: `cloud${i - trusted + 1}`, ...cloudPlacement(i - trusted) };
    const nodeDir = join(dir, placement.name);
    const adminSocket = join(nodeDir, SOCKET_FILE);
    const socketBytes = Buffer.byteLength(adminSocket);
    if (socketBytes > MAX_SOCKET_PATH_BYTES) {
      throw new PlanError(
        `--dir: the admin socket path ${adminSocket} is ${socketBytes} bytes, over the ${MAX_SOCKET_PATH_BYTES}-byte Unix socket path limit; choose a directory at least ${socketBytes - MAX_SOCKET_PATH_BYTES} bytes shorter`,
      );
    }
    const metricsListen = `127.0.0.1:${basePort + METRICS_PORT_OFFSET + i}`;
    return {
      ...placement,
      trust: defaultTrust(placement.provider),
      dir: nodeDir,
      configPath: join(nodeDir, CONFIG_FILE),
      logPath: join(nodeDir, LOG_FILE),
      pidPath: join(nodeDir, PID_FILE),
      adminSocket,
      listen: `/ip4/127.0.0.1/tcp/${basePort + i}`,
      metricsListen,
      metricsUrl: `http://${metricsListen}/metrics`,
    };
  });
}

/** The config of plan[index]: every other node is a member. peerIds[i] is plan[i]'s peer ID. */
export function nodeConfig(plan: readonly PlannedNode[], peerIds: readonly string[], index: number): LocalNodeConfig {
  if (peerIds.length !== plan.length) throw new PlanError(`nodeConfig: ${peerIds.length} peer IDs for ${plan.length} nodes`);
  const self = plan[index];
  if (self === undefined) throw new PlanError(`nodeConfig: no node at index ${index} of ${plan.length}`);
  return {
    federation: FEDERATION_ID,
    node: { name: self.name, region: self.region, provider: self.provider, trust: self.trust },
    listen: [self.listen],
    metricsListen: self.metricsListen,
    adminSocket: self.adminSocket,
    dataDir: self.dir,
    logLevel: 'info',
    members: plan.flatMap((m, i) =>
      i === index ? [] : [{ name: m.name, peerId: peerIds[i]!, region: m.region, provider: m.provider, trust: m.trust, addrs: [m.listen] }],
    ),
  };
}
