/**
 * Planning for the local federation launcher: from a node count, an untrusted
 * count, a directory and a base port, the name, region, provider, ports and
 * file paths of every node, and each node's dwcpd config once the peer IDs are
 * known. No I/O here, so the launcher's choices are testable without starting
 * anything.
 *
 * Each node is also a fleet region with one local provider, and the nodes
 * differ so that placement has real choices: by default node i (from 0)
 * costs $0.01×(i+1) per vCPU-hour and $0.001×(i+1) per GiB-hour, holds
 * 4×(i+1) vCPUs, 8×(i+1) GiB and 100×(i+1) GiB of disk, is in jurisdiction
 * eu (even i, with compliance gdpr) or us (odd i), and carries the label
 * tier=bronze|silver|gold in turn. A plan file (`--plan`) replaces any of
 * these fields per node name; `--label [NODE:]KEY=VALUE` then adds labels.
 *
 * Invariants: trusted nodes come first and every node's index is the same in
 * the name order and the port order (listen P+i, metrics P+1000+i); every path
 * is absolute; a plan whose ports leave 1..65535 or whose admin socket path
 * exceeds the kernel's sun_path limit is refused with the limit and the
 * offending value, before any file is written.
 */
import { isAbsolute, join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { MAX_SOCKET_PATH_BYTES } from '../src/admin/socket.ts';
import { OnPremCapacitySchema, onPremPrices } from '../src/cloud/config.ts';
import { formatIssue, pathString } from '../src/config/issues.ts';
import { NodeSchema, defaultTrust, type Provider, type Trust } from '../src/config/schema.ts';

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

/** What a node declares to the fleet as its region: labels, jurisdiction, compliance, and its local provider's capacity and prices. */
export interface RegionFacts {
  labels: Record<string, string>;
  jurisdiction?: string;
  compliance: string[];
  capacity: { vcpus: number; memoryGiB: number; diskGiB: number };
  pricePerVcpuHour: number;
  pricePerGiBHour: number;
}

const TIERS = ['bronze', 'silver', 'gold'] as const;

/** Money without binary-fraction noise: 0.03, not 0.030000000000000002. */
function usd(x: number): number {
  return Number(x.toFixed(6));
}

/** The built-in spread for the node at index i (launch order, from 0). */
export function defaultRegionFacts(i: number): RegionFacts {
  const eu = i % 2 === 0;
  return {
    labels: { tier: TIERS[i % TIERS.length]! },
    jurisdiction: eu ? 'eu' : 'us',
    compliance: eu ? ['gdpr'] : [],
    capacity: { vcpus: 4 * (i + 1), memoryGiB: 8 * (i + 1), diskGiB: 100 * (i + 1) },
    pricePerVcpuHour: usd(0.01 * (i + 1)),
    pricePerGiBHour: usd(0.001 * (i + 1)),
  };
}

/** One node's entry in a plan file: every field optional, each replacing the built-in value whole. */
const PlanEntrySchema = z.strictObject({
  labels: NodeSchema.shape.labels.unwrap().optional(),
  /** null: no jurisdiction. */
  jurisdiction: NodeSchema.shape.jurisdiction.unwrap().nullable().optional(),
  compliance: NodeSchema.shape.compliance.unwrap().optional(),
  capacity: OnPremCapacitySchema.optional(),
  pricePerVcpuHour: onPremPrices.pricePerVcpuHour.unwrap().optional(),
  pricePerGiBHour: onPremPrices.pricePerGiBHour.unwrap().optional(),
});

const PlanFileSchema = z.record(z.string(), PlanEntrySchema);

/** A parsed plan file: per node name, the fields it sets. */
export type PlanFile = z.infer<typeof PlanFileSchema>;

/**
 * A plan file's text (YAML, or JSON, which is YAML) as per-node settings.
 * source names the file in errors: `--plan fed.yaml: dc1.capacity.vcpus: 0 is too small: expected at least 1`.
 */
export function parsePlanFile(text: string, source: string): PlanFile {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new PlanError(`--plan ${source}: not YAML or JSON: ${(err as Error).message.split('\n')[0]}`);
  }
  if (doc === null || doc === undefined) throw new PlanError(`--plan ${source}: empty; expected a mapping from node name (dc1, ...) to its labels, jurisdiction, compliance, capacity, pricePerVcpuHour, pricePerGiBHour`);
  const parsed = PlanFileSchema.safeParse(doc, { reportInput: true });
  if (!parsed.success) throw new PlanError(`--plan ${source}: ${parsed.error.issues.map((i) => formatIssue(i, pathString)).join('; ')}`);
  return parsed.data;
}

/** A `--label [NODE:]KEY=VALUE` flag: a label for one node, or for all when node is absent. */
export interface LabelFlag {
  node?: string;
  key: string;
  value: string;
}

const LabelsSchema = NodeSchema.shape.labels.unwrap();

export function parseLabelFlag(raw: string): LabelFlag {
  const eq = raw.indexOf('=');
  if (eq < 1) throw new PlanError(`--label ${JSON.stringify(raw)}: expected [NODE:]KEY=VALUE, e.g. tier=gold or dc2:tier=gold`);
  const lhs = raw.slice(0, eq);
  const colon = lhs.indexOf(':');
  const flag: LabelFlag = colon < 0 ? { key: lhs, value: raw.slice(eq + 1) } : { node: lhs.slice(0, colon), key: lhs.slice(colon + 1), value: raw.slice(eq + 1) };
  if (flag.node === '' || flag.key === '') throw new PlanError(`--label ${JSON.stringify(raw)}: expected [NODE:]KEY=VALUE, e.g. tier=gold or dc2:tier=gold`);
  const parsed = LabelsSchema.safeParse({ [flag.key]: flag.value }, { reportInput: true });
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    // zod reports a bad record key as "Invalid key in record"; say what a key may be instead.
    const what =
      issue.code === 'invalid_key'
        ? `${JSON.stringify(flag.key)} is not a label key (lowercase letters, digits, ".", "_", "/", "-"; at most 63 characters)`
        : `${JSON.stringify(flag.value)} is not a label value (letters, digits, ".", "_", "-"; at most 63 characters)`;
    throw new PlanError(`--label ${JSON.stringify(raw)}: ${what}`);
  }
  return flag;
}

export interface PlanInput {
  nodes: number;
  untrusted: number;
  /** Absolute: the plan's paths end up in configs read by daemons with another cwd. */
  dir: string;
  basePort: number;
  /** Per-node settings from `--plan FILE` (parsePlanFile); a name that is not a node is refused. */
  planFile?: PlanFile;
  /** Where planFile came from, for errors. */
  planSource?: string;
  /** `--label` flags, applied after the plan file. */
  labels?: readonly LabelFlag[];
  /** What runs the trusted (on-premises) nodes' VMs: simulated records (default) or real QEMU guests (`--provider qemu`). */
  onPrem?: OnPremRuntime;
}

/** The provider entry of a trusted node: `local` simulates VMs; `qemu` runs them (docs/qemu.md). */
export type OnPremRuntime = { kind: 'local' } | { kind: 'qemu'; accel: 'auto' | 'kvm' | 'tcg'; imageDir?: string };

type ProviderEntry =
  | { kind: 'local'; capacity: RegionFacts['capacity']; pricePerVcpuHour: number; pricePerGiBHour: number }
  | { kind: 'qemu'; accel: 'auto' | 'kvm' | 'tcg'; imageDir?: string; capacity: RegionFacts['capacity']; pricePerVcpuHour: number; pricePerGiBHour: number };

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
  /** What the node declares to the fleet (its local provider's capacity and prices, its labels). */
  facts: RegionFacts;
  /** What runs its VMs: untrusted (cloud) nodes always simulate them. */
  runtime: OnPremRuntime;
}

/** What the launcher writes to `<dir>/<name>/dwcpd.yaml`; a subset of the daemon's ConfigFile. */
export interface LocalNodeConfig {
  federation: string;
  node: { name: string; region: string; provider: Provider; trust: Trust; labels: Record<string, string>; jurisdiction?: string; compliance: string[] };
  listen: string[];
  metricsListen: string;
  adminSocket: string;
  dataDir: string;
  logLevel: 'info';
  members: { name: string; peerId: string; region: string; provider: Provider; trust: Trust; addrs: string[] }[];
  clouds: { providers: ProviderEntry[] };
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
  const names = Array.from({ length: nodes }, (_, i) => (i < trusted ? `dc${i + 1}` : `cloud${i - trusted + 1}`));
  const known = (name: string) => names.includes(name);
  const listed = nodes <= 6 ? names.join(', ') : `${names.slice(0, 3).join(', ')}, ..., ${names.at(-1)}`;
  for (const name of Object.keys(input.planFile ?? {})) {
    if (!known(name)) throw new PlanError(`--plan ${input.planSource ?? 'FILE'}: ${name}: no such node in this federation (${listed})`);
  }
  for (const l of input.labels ?? []) {
    if (l.node !== undefined && !known(l.node)) throw new PlanError(`--label ${l.node}:${l.key}=${l.value}: ${l.node}: no such node in this federation (${listed})`);
  }
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
      facts: regionFacts(i, placement.name, input),
      runtime: i < trusted ? (input.onPrem ?? { kind: 'local' }) : { kind: 'local' },
    };
  });
}

/** The built-in spread for node i, then its plan file entry, then the --label flags for it. */
function regionFacts(i: number, name: string, input: PlanInput): RegionFacts {
  const facts = defaultRegionFacts(i);
  const entry = input.planFile?.[name];
  if (entry !== undefined) {
    if (entry.labels !== undefined) facts.labels = { ...entry.labels };
    if (entry.jurisdiction === null) delete facts.jurisdiction;
    else if (entry.jurisdiction !== undefined) facts.jurisdiction = entry.jurisdiction;
    if (entry.compliance !== undefined) facts.compliance = [...entry.compliance];
    if (entry.capacity !== undefined) facts.capacity = { vcpus: entry.capacity.vcpus, memoryGiB: entry.capacity.memoryGiB, diskGiB: entry.capacity.diskGiB };
    if (entry.pricePerVcpuHour !== undefined) facts.pricePerVcpuHour = entry.pricePerVcpuHour;
    if (entry.pricePerGiBHour !== undefined) facts.pricePerGiBHour = entry.pricePerGiBHour;
  }
  for (const l of input.labels ?? []) if (l.node === undefined || l.node === name) facts.labels[l.key] = l.value;
  return facts;
}

/** The config of plan[index]: every other node is a member. peerIds[i] is plan[i]'s peer ID. */
export function nodeConfig(plan: readonly PlannedNode[], peerIds: readonly string[], index: number): LocalNodeConfig {
  if (peerIds.length !== plan.length) throw new PlanError(`nodeConfig: ${peerIds.length} peer IDs for ${plan.length} nodes`);
  const self = plan[index];
  if (self === undefined) throw new PlanError(`nodeConfig: no node at index ${index} of ${plan.length}`);
  return {
    federation: FEDERATION_ID,
    node: {
      name: self.name,
      region: self.region,
      provider: self.provider,
      trust: self.trust,
      labels: self.facts.labels,
      ...(self.facts.jurisdiction === undefined ? {} : { jurisdiction: self.facts.jurisdiction }),
      compliance: self.facts.compliance,
    },
    listen: [self.listen],
    metricsListen: self.metricsListen,
    adminSocket: self.adminSocket,
    dataDir: self.dir,
    logLevel: 'info',
    members: plan.flatMap((m, i) =>
      i === index ? [] : [{ name: m.name, peerId: peerIds[i]!, region: m.region, provider: m.provider, trust: m.trust, addrs: [m.listen] }],
    ),
    // One provider per node, with the node's capacity and prices: the fleet's choices across the federation.
    clouds: { providers: [{ ...self.runtime, capacity: self.facts.capacity, pricePerVcpuHour: self.facts.pricePerVcpuHour, pricePerGiBHour: self.facts.pricePerGiBHour }] },
  };
}
