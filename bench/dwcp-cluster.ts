/**
 * The dwcp side of the raft bench: a throwaway cluster of real dwcpd processes
 * on loopback, each listing every other as a trusted member, so together they
 * found one Raft group, and a KvTarget (bench/raft.ts) that puts through the
 * KV admin service of every member in turn.
 *
 * Invariants:
 * - fsync stays on: the daemons run with the production storage settings (the
 *   config has no way to turn fsync off) and inherit no DWCP_* variable, which
 *   could override the generated configs. Data dirs live under the caller's
 *   work dir, so dwcp writes to the same filesystem as etcd.
 * - A cluster is "started" only when every member names the same leader and a
 *   put through every member's admin socket has succeeded, i.e. the leader
 *   commits and every follower forwards; waiting has a deadline, and a member
 *   that dies while we wait fails the start at once with the tail of its log.
 * - Everything a cluster owns (processes, data dirs) is gone when stop()
 *   resolves, also after a failed start; stop() is idempotent. Members never
 *   outlive this process: if it exits without stop(), they are killed.
 * - Each put runs in a KV session (client id, seq) that has no other put in
 *   flight, so seqs reach the state machine in order and none is refused as
 *   stale, as a real client's would not be.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { connectAdmin, type AdminClient } from '../src/admin/client.ts';
import { loadOrCreateIdentity } from '../src/daemon/identity.ts';
import { DAEMON_NODE_FLAGS } from '../src/daemon/node-flags.ts';
import { DEFAULT_BASE_PORT, nodeConfig, planFederation, type PlannedNode } from '../scripts/federation-plan.ts';
import { freePorts } from './etcd.ts';
import { awaitReady, ownMembers, retryUntil, spawnLogged, stopMembers, type MemberLabel, type MemberProcess } from './member-process.ts';
import type { KvTarget } from './raft.ts';

const LOOPBACK = '127.0.0.1';
const DAEMON_MAIN = fileURLToPath(new URL('../src/daemon/main.ts', import.meta.url));
/** Longer than the daemon's own stop budget (9 s + 1 s hard exit), so a healthy daemon always stops by itself. */
const STOP_GRACE_MS = 12_000;
/** Deadline of one control call (status, probe put) while starting. */
const CONTROL_TIMEOUT_MS = 2_000;
/** Deadline of one benchmark put, as etcd's: far above any healthy latency, so it only ends a stuck call. */
const PUT_TIMEOUT_MS = 10_000;

export interface DwcpClusterOptions {
  /** Number of members; 3 unless told. */
  members?: number;
  /** Parent of the cluster's temporary data directory; os.tmpdir() unless told. */
  workDir?: string;
  /** How long the cluster gets to elect a leader and serve a put through every member. */
  readyTimeoutMs?: number;
  /** Top-level config sections merged into every member's config (e.g. `network` thresholds for the delta bench). */
  config?: Record<string, unknown>;
  /** Extra node flags for every daemon, before the script (e.g. `--cpu-prof --cpu-prof-dir=DIR` to profile them). */
  nodeArgs?: readonly string[];
  /** Members started as untrusted public-cloud regions (the federation scope then runs PBFT); 0 unless told. */
  untrusted?: number;
  /** The scope the cluster is made ready for and the target writes to: datacenter (Raft) unless told. */
  scope?: BenchScope;
}

export type BenchScope = 'datacenter' | 'federation';

export interface DwcpMember {
  name: string;
  pid: number;
  adminSocket: string;
  metricsUrl: string;
  dataDir: string;
}

export interface DwcpCluster {
  readonly members: readonly DwcpMember[];
  readonly scope: BenchScope;
  /** The name of the member that leads now (the Raft leader, or the PBFT primary), as that member itself reports. */
  leader(): Promise<string>;
  /** SIGTERM to every member, awaits their exit (SIGKILL after a grace period), removes the data. */
  stop(): Promise<void>;
}

const LABEL: MemberLabel<DwcpMember> = { describe: (m) => `dwcpd member ${m.name} (pid ${m.pid})`, logName: 'output' };

/** The daemons' environment without what would redirect them (DWCP_* overrides the config, NOTIFY_SOCKET talks to systemd). */
function daemonEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('DWCP_') && name !== 'NOTIFY_SOCKET'));
}

/**
 * The launcher's plan (names, paths, socket-length check) with each node's
 * libp2p and metrics port replaced by a free one, so a bench never collides
 * with a local federation on the launcher's fixed ports.
 */
async function planCluster(root: string, size: number, untrusted: number): Promise<PlannedNode[]> {
  const ports = await freePorts(2 * size);
  return planFederation({ nodes: size, untrusted, dir: root, basePort: DEFAULT_BASE_PORT }).map((node, i) => {
    const metricsListen = `${LOOPBACK}:${ports[2 * i + 1] as number}`;
    return { ...node, listen: `/ip4/${LOOPBACK}/tcp/${ports[2 * i] as number}`, metricsListen, metricsUrl: `http://${metricsListen}/metrics` };
  });
}

function spawnMember(node: PlannedNode, nodeArgs: readonly string[]): MemberProcess<DwcpMember> {
  const proc = spawnLogged(process.execPath, [...DAEMON_NODE_FLAGS, ...nodeArgs, DAEMON_MAIN, '--config', node.configPath], daemonEnv());
  const member = { name: node.name, pid: proc.child.pid ?? -1, adminSocket: node.adminSocket, metricsUrl: node.metricsUrl, dataDir: node.dir };
  return { ...proc, member };
}

/**
 * For the datacenter scope, waits until every member names one leader that
 * calls itself leader; then, for either scope, until a put through each
 * member succeeds.
 */
async function awaitWritable(members: readonly DwcpMember[], scope: BenchScope, deadline: number, signal: AbortSignal): Promise<void> {
  const clients = members.map((m) => connectAdmin(m.adminSocket, { timeoutMs: CONTROL_TIMEOUT_MS }));
  try {
    if (scope === 'datacenter') await retryUntil('the members did not agree on a Raft leader', deadline, signal, async () => {
      const statuses = await Promise.all(clients.map((c) => c.raft.status()));
      const named = new Set(statuses.map((s) => s.leader));
      const leader = statuses.find((s) => s.role === 'leader');
      if (named.size !== 1 || leader === undefined || !named.has(leader.id)) {
        throw new Error(`leaders named: ${statuses.map((s) => `${s.id} (${s.role}) -> ${s.leader || 'none'}`).join(', ')}`);
      }
    });
    for (const [i, client] of clients.entries()) {
      await retryUntil(`member ${members[i]?.name ?? i} did not accept a put`, deadline, signal, async () => {
        const res = await client.kv.put('dwcp-bench/ready', new Uint8Array([1]), { scope, client_id: `dwcp-bench-ready-${i}`, seq: Date.now(), timeout_ms: CONTROL_TIMEOUT_MS });
        if (!res.ok) throw new Error(`put refused: ${res.reason}`);
      });
    }
  } finally {
    for (const c of clients) c.close();
  }
}

/** Starts a fresh dwcp cluster on loopback and resolves once every member serves writes. */
export async function startDwcpCluster(opts: DwcpClusterOptions = {}): Promise<DwcpCluster> {
  const size = opts.members ?? 3;
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`dwcp cluster members must be a whole number of at least 1, got ${size}`);
  const root = await fs.mkdtemp(path.join(opts.workDir ?? os.tmpdir(), 'dwcp-bench-dwcp-'));
  const { processes, stop } = ownMembers<DwcpMember>(root, (ps) => stopMembers(ps, STOP_GRACE_MS));

  try {
    const scope = opts.scope ?? 'datacenter';
    const plan = await planCluster(root, size, opts.untrusted ?? 0);
    const peerIds: string[] = [];
    for (const node of plan) {
      await fs.mkdir(node.dir, { recursive: true, mode: 0o700 });
      peerIds.push((await loadOrCreateIdentity(node.dir)).peerId.toString());
    }
    for (const [i, node] of plan.entries()) {
      await fs.writeFile(node.configPath, stringify({ ...nodeConfig(plan, peerIds, i), logLevel: 'warn', ...opts.config }), { mode: 0o600 });
      processes.push(spawnMember(node, opts.nodeArgs ?? []));
    }
    const members = processes.map((p) => p.member);
    const deadline = Date.now() + (opts.readyTimeoutMs ?? 30_000);
    await awaitReady(processes, LABEL, (signal) => awaitWritable(members, scope, deadline, signal));
    const leader = async (): Promise<string> => {
      if (scope === 'federation' && (opts.untrusted ?? 0) > 0) return (await withAdmin((members[0] as DwcpMember).adminSocket, (c) => c.pbft.status())).primary;
      const statuses = await Promise.all(members.map((m) => withAdmin(m.adminSocket, (c) => c.raft.status())));
      const found = statuses.find((s) => s.role === 'leader');
      if (found === undefined) throw new Error(`no dwcp member of ${members.map((m) => m.name).join(', ')} reports itself as leader`);
      return found.id;
    };
    return { members, scope, leader, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

async function withAdmin<T>(socket: string, call: (client: AdminClient) => Promise<T>): Promise<T> {
  const client = connectAdmin(socket, { timeoutMs: CONTROL_TIMEOUT_MS });
  try {
    return await call(client);
  } finally {
    client.close();
  }
}

// ---------------------------------------------------------------------------
// Bench target

interface KvSession {
  clientId: string;
  seq: number;
}

/**
 * A KvTarget over a running cluster, which it then owns: close() stops the
 * cluster. Successive puts go to the members' admin sockets in turn, as
 * etcd's go to its members in turn, and a follower forwards each to the
 * leader. One admin client (one gRPC channel) per member carries every
 * closed-loop client's puts, as one clientv3 connection per endpoint does.
 */
export async function dwcpKvTarget(cluster: DwcpCluster, name = 'dwcp'): Promise<KvTarget> {
  const clients = cluster.members.map((m) => connectAdmin(m.adminSocket, { timeoutMs: PUT_TIMEOUT_MS }));
  try {
    const version = (await (clients[0] as AdminClient).status()).version;
    // Sessions are handed to one put at a time, so the pool grows to the highest concurrency seen.
    const idle: KvSession[] = [];
    let sessions = 0;
    const run = `dwcp-bench-${process.pid}-${Date.now()}`;
    let next = 0;
    return {
      name,
      version,
      pids: cluster.members.map((m) => m.pid),
      async put(key, value) {
        const client = clients[next++ % clients.length] as AdminClient;
        const session = idle.pop() ?? { clientId: `${run}-${sessions++}`, seq: 0 };
        session.seq++;
        try {
          const res = await client.kv.put(key, value, { scope: cluster.scope, client_id: session.clientId, seq: session.seq, timeout_ms: PUT_TIMEOUT_MS });
          if (!res.ok) throw new Error(`dwcp put of ${key} through ${client.socketPath} refused: ${res.reason}`);
        } finally {
          idle.push(session);
        }
      },
      async close() {
        for (const c of clients) c.close();
        await cluster.stop();
      },
    };
  } catch (err) {
    for (const c of clients) c.close();
    await cluster.stop();
    throw err;
  }
}
