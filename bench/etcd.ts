/**
 * The etcd side of the raft bench: finds (or, as root, installs) the Debian
 * etcd-server binary, runs a throwaway multi-member etcd cluster on loopback,
 * and talks to it over etcd's own gRPC API (bench/proto/etcd-kv.proto).
 *
 * Invariants:
 * - fsync stays on: no --unsafe-no-fsync, and every ETCD_* variable is dropped
 *   from the members' environment, because etcd reads any flag from ETCD_<FLAG>
 *   and an inherited ETCD_UNSAFE_NO_FSYNC would silently change what is measured.
 * - A cluster is "started" only when a Put through every member's client port
 *   has succeeded, i.e. a leader is elected and every member serves writes;
 *   waiting has a deadline, and a member that dies while we wait fails the
 *   start at once with the tail of its log.
 * - Everything a cluster owns (processes, data dirs) is gone when stop()
 *   resolves, also after a failed start; stop() is idempotent. Members never
 *   outlive this process: if it exits without stop(), they are killed.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { loadSync, type MethodDefinition, type PackageDefinition, type ServiceDefinition } from '@grpc/proto-loader';
import { awaitReady, ownMembers, retryUntil, spawnLogged, stopMembers, type MemberLabel, type MemberProcess } from './member-process.ts';
import type { KvTarget } from './raft.ts';

const LOOPBACK = '127.0.0.1';
const PROTO_FILE = fileURLToPath(new URL('proto/etcd-kv.proto', import.meta.url));
/** Where Debian's etcd-server package puts the binary, looked at even when it is not on PATH. */
const DEBIAN_ETCD = '/usr/bin/etcd';
const INSTALL_COMMAND = 'apt-get install -y etcd-server';
/** How long a member gets to exit after SIGTERM before it is killed. */
const STOP_GRACE_MS = 10_000;

/** Absolute path of an executable `etcd` on PATH or at /usr/bin/etcd, or null. */
export async function findEtcd(): Promise<string | null> {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter((d) => d !== '');
  for (const candidate of [...dirs.map((d) => path.join(d, 'etcd')), DEBIAN_ETCD]) {
    try {
      await fs.access(candidate, fs.constants.X_OK);
      if ((await fs.stat(candidate)).isFile()) return path.resolve(candidate);
    } catch {
      // Not there or not executable: try the next place.
    }
  }
  return null;
}

function runToStderr(command: string, args: readonly string[]): Promise<void> {
  // apt's output goes to our stderr: stdout carries only the bench's JSON.
  const child = spawn(command, args, { stdio: ['ignore', 2, 2], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`\`${command} ${args.join(' ')}\` failed (${signal ?? `exit code ${code}`})`));
    });
  });
}

/**
 * The etcd binary, installed from the Debian package etcd-server when it is
 * missing and we are root; otherwise an error that tells the user the command.
 */
export async function ensureEtcd(log: (line: string) => void): Promise<string> {
  const found = await findEtcd();
  if (found !== null) return found;
  if (process.getuid?.() !== 0) {
    throw new Error(`etcd not found on PATH or at ${DEBIAN_ETCD}; install it with \`sudo ${INSTALL_COMMAND}\` (Debian/Ubuntu) and run again`);
  }
  log(`etcd not found; installing it: apt-get update && ${INSTALL_COMMAND}`);
  await runToStderr('apt-get', ['update']);
  await runToStderr('apt-get', ['install', '-y', 'etcd-server']);
  const installed = await findEtcd();
  if (installed === null) throw new Error(`\`${INSTALL_COMMAND}\` succeeded but no etcd binary is on PATH or at ${DEBIAN_ETCD}`);
  return installed;
}

/**
 * `count` distinct free loopback ports: all are bound at once (so none repeats)
 * and released just before use. Another process could take one in between;
 * etcd then fails to listen and the start fails with that in its log.
 */
export async function freePorts(count: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const server = net.createServer();
      servers.push(server);
      server.listen(0, LOOPBACK);
      await once(server, 'listening');
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => (s.listening ? s.close(() => resolve()) : resolve()))));
  }
}

// ---------------------------------------------------------------------------
// gRPC client

export interface EtcdResponseHeader {
  /** uint64 as a decimal string (proto-loader longs: String). */
  member_id: string;
  revision: string;
  raft_term: string;
}

export interface EtcdKeyValue {
  key: Buffer;
  value: Buffer;
  mod_revision: string;
  version: string;
}

interface PutRequest {
  key: Uint8Array;
  value: Uint8Array;
}
interface PutResponse {
  header?: EtcdResponseHeader;
}
interface RangeRequest {
  key: Uint8Array;
  serializable: boolean;
}
interface RangeResponse {
  header?: EtcdResponseHeader;
  kvs: EtcdKeyValue[];
}
type StatusRequest = Record<string, never>;
interface StatusResponse {
  header?: EtcdResponseHeader;
  version: string;
  leader: string;
}

export interface EtcdStatus {
  memberId: string;
  leaderId: string;
  version: string;
}

/** One member's client port. Calls share one HTTP/2 connection, as an etcd clientv3 connection does. */
export interface EtcdClient {
  readonly endpoint: string;
  put(key: Uint8Array, value: Uint8Array, timeoutMs: number): Promise<void>;
  /** The value at `key`, or null if absent; linearizable unless `serializable`. */
  get(key: Uint8Array, timeoutMs: number, serializable?: boolean): Promise<Buffer | null>;
  status(timeoutMs: number): Promise<EtcdStatus>;
  close(): void;
}

let etcdPackage: PackageDefinition | undefined;

function etcdMethod<Req, Res>(service: 'KV' | 'Maintenance', name: string): MethodDefinition<Req, Res> {
  etcdPackage ??= loadSync(PROTO_FILE, { keepCase: true, longs: String, enums: String, defaults: true });
  const def = etcdPackage[`etcdserverpb.${service}`];
  const method = def === undefined || 'format' in def ? undefined : ((def as ServiceDefinition)[name] as MethodDefinition<Req, Res> | undefined);
  if (method === undefined) throw new Error(`${PROTO_FILE} defines no etcdserverpb.${service}/${name}`);
  return method;
}

/** Opens a channel to one member's client endpoint (`host:port`); connects on the first call. */
export function connectEtcd(endpoint: string): EtcdClient {
  const put = etcdMethod<PutRequest, PutResponse>('KV', 'Put');
  const range = etcdMethod<RangeRequest, RangeResponse>('KV', 'Range');
  const status = etcdMethod<StatusRequest, StatusResponse>('Maintenance', 'Status');
  const client = new grpc.Client(endpoint, grpc.credentials.createInsecure());

  function unary<Req, Res>(method: MethodDefinition<Req, Res>, request: Req, timeoutMs: number): Promise<Res> {
    return new Promise((resolve, reject) => {
      client.makeUnaryRequest(method.path, method.requestSerialize, method.responseDeserialize, request, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, value) => {
        if (err !== null) reject(new Error(`etcd ${endpoint} ${method.path}: ${grpc.status[err.code] ?? err.code}: ${err.details}`));
        else if (value === undefined) reject(new Error(`etcd ${endpoint} ${method.path}: empty response`));
        else resolve(value);
      });
    });
  }

  return {
    endpoint,
    async put(key, value, timeoutMs) {
      await unary(put, { key, value }, timeoutMs);
    },
    async get(key, timeoutMs, serializable = false) {
      const res = await unary(range, { key, serializable }, timeoutMs);
      return res.kvs[0]?.value ?? null;
    },
    async status(timeoutMs) {
      const res = await unary(status, {}, timeoutMs);
      if (res.header === undefined) throw new Error(`etcd ${endpoint} Status: response has no header`);
      return { memberId: res.header.member_id, leaderId: res.leader, version: res.version };
    },
    close: () => client.close(),
  };
}

// ---------------------------------------------------------------------------
// Cluster

export interface EtcdClusterOptions {
  /** Path of the etcd binary (see ensureEtcd). */
  binary: string;
  /** Number of members; 3 unless told. */
  members?: number;
  /** Parent of the cluster's temporary data directory; os.tmpdir() unless told. */
  workDir?: string;
  /** How long the cluster gets to elect a leader and serve a Put on every member. */
  readyTimeoutMs?: number;
}

export interface EtcdMember {
  name: string;
  /** `127.0.0.1:<port>` of the client (gRPC) listener. */
  endpoint: string;
  dataDir: string;
}

export interface EtcdCluster {
  readonly members: readonly EtcdMember[];
  /** Process IDs of the members, for memory sampling. */
  readonly pids: readonly number[];
  readonly endpoints: readonly string[];
  /** The client endpoint of the member that is leader now, as the members report it. */
  leaderEndpoint(timeoutMs?: number): Promise<string>;
  /** SIGTERM to every member, awaits their exit (SIGKILL after a grace period), removes the data. */
  stop(): Promise<void>;
}

const LABEL: MemberLabel<EtcdMember> = { describe: (m) => `etcd member ${m.name} (${m.endpoint})`, logName: 'log' };

/** The member's environment without ETCD_* variables, which etcd would read as flags. */
function memberEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('ETCD_')));
}

function spawnMember(binary: string, member: EtcdMember, peerUrl: string, initialCluster: string, token: string): MemberProcess<EtcdMember> {
  const clientUrl = `http://${member.endpoint}`;
  const proc = spawnLogged(
    binary,
    [
      `--name=${member.name}`,
      `--data-dir=${member.dataDir}`,
      `--listen-client-urls=${clientUrl}`,
      `--advertise-client-urls=${clientUrl}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=${initialCluster}`,
      '--initial-cluster-state=new',
      `--initial-cluster-token=${token}`,
      '--logger=zap',
      '--log-outputs=stderr',
      '--log-level=warn',
    ],
    memberEnv(),
  );
  return { ...proc, member };
}

/** Retries a Put through every endpoint until each succeeds once, the deadline passes or `signal` aborts. */
async function awaitWritable(endpoints: readonly string[], deadline: number, signal: AbortSignal): Promise<void> {
  const probeKey = new TextEncoder().encode('dwcp-bench/ready');
  for (const endpoint of endpoints) {
    const client = connectEtcd(endpoint);
    try {
      await retryUntil(`etcd member at ${endpoint} did not accept a Put`, deadline, signal, (left) => client.put(probeKey, new Uint8Array([1]), Math.min(2000, left)));
    } finally {
      client.close();
    }
  }
}

/** The client endpoint of the member that leads now; only the leader names itself as leader, so no agreement is needed. */
async function leaderOf(endpoints: readonly string[], timeoutMs: number): Promise<string> {
  const clients = endpoints.map(connectEtcd);
  try {
    const statuses = await Promise.all(clients.map((c) => c.status(timeoutMs)));
    const leader = statuses.findIndex((s) => s.memberId === s.leaderId);
    if (leader < 0) throw new Error(`no etcd member at ${endpoints.join(', ')} reports itself as leader`);
    return endpoints[leader] as string;
  } finally {
    for (const c of clients) c.close();
  }
}

/**
 * Stops followers before the leader. A leader told to stop first hands its
 * leadership to a follower, and whoever then leads while its peers stop waits
 * out etcd's shutdown timeout (about 7 s); a leader that stops last has no one
 * to hand over to and exits at once.
 */
async function stopFollowersThenLeader(processes: readonly MemberProcess<EtcdMember>[]): Promise<void> {
  const leader = await leaderOf(
    processes.map((p) => p.member.endpoint),
    1000,
  ).catch(() => null);
  const isLeader = (p: MemberProcess<EtcdMember>): boolean => p.member.endpoint === leader;
  await stopMembers(processes.filter((p) => !isLeader(p)), STOP_GRACE_MS);
  await stopMembers(processes.filter(isLeader), STOP_GRACE_MS);
}

/** Starts a fresh etcd cluster on loopback and resolves once every member serves writes. */
export async function startEtcdCluster(opts: EtcdClusterOptions): Promise<EtcdCluster> {
  const size = opts.members ?? 3;
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`etcd cluster members must be a whole number of at least 1, got ${size}`);
  const root = await fs.mkdtemp(path.join(opts.workDir ?? os.tmpdir(), 'dwcp-bench-etcd-'));
  const { processes, stop } = ownMembers<EtcdMember>(root, stopFollowersThenLeader);

  try {
    const ports = await freePorts(2 * size);
    const peerUrls: string[] = [];
    const members: EtcdMember[] = [];
    for (let i = 0; i < size; i++) {
      members.push({ name: `m${i}`, endpoint: `${LOOPBACK}:${ports[2 * i] as number}`, dataDir: path.join(root, `m${i}`) });
      peerUrls.push(`http://${LOOPBACK}:${ports[2 * i + 1] as number}`);
    }
    const initialCluster = members.map((m, i) => `${m.name}=${peerUrls[i] as string}`).join(',');
    // A token unique to this cluster, so members never join a stray cluster left on the same ports.
    const token = path.basename(root);
    members.forEach((m, i) => processes.push(spawnMember(opts.binary, m, peerUrls[i] as string, initialCluster, token)));

    const deadline = Date.now() + (opts.readyTimeoutMs ?? 30_000);
    const endpoints = members.map((m) => m.endpoint);
    await awaitReady(processes, LABEL, (signal) => awaitWritable(endpoints, deadline, signal));
    const pids = processes.map((p) => p.child.pid ?? -1);
    return { members, pids, endpoints, leaderEndpoint: (timeoutMs = 5000) => leaderOf(endpoints, timeoutMs), stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

// ---------------------------------------------------------------------------
// Bench target

/** How a load generator reaches the cluster: every member in turn, or only the leader. */
export type EtcdEndpointMode = 'all' | 'leader';

/** Deadline of one benchmark Put; far above any healthy latency, so it only ends a stuck call. */
const PUT_TIMEOUT_MS = 10_000;

/**
 * A KvTarget (bench/raft.ts) over a running cluster, which it then owns: close()
 * stops the cluster. With `all`, successive puts go to the members' endpoints
 * in turn, as clientv3's round-robin balancer sends them, and a follower
 * forwards each to the leader; with `leader`, every put goes to the member
 * that led when the target was made (a later leader change is absorbed by
 * forwarding).
 */
export async function etcdKvTarget(cluster: EtcdCluster, mode: EtcdEndpointMode): Promise<KvTarget> {
  const clients: EtcdClient[] = [];
  try {
    const endpoints = mode === 'leader' ? [await cluster.leaderEndpoint()] : cluster.endpoints;
    clients.push(...endpoints.map(connectEtcd));
    const version = (await (clients[0] as EtcdClient).status(5000)).version;
    const encoder = new TextEncoder();
    let next = 0;
    return {
      name: 'etcd',
      version,
      pids: cluster.pids,
      put(key, value) {
        const client = clients[next++ % clients.length] as EtcdClient;
        return client.put(encoder.encode(key), value, PUT_TIMEOUT_MS);
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
