/**
 * The raft bench: a 3-member dwcp cluster against a 3-member etcd cluster on
 * this machine, one after the other in one run, each driven by closed-loop
 * clients putting fixed-size values for a fixed time per concurrency level.
 * Reports ops/s and put latency percentiles per system and level, and the
 * dwcp/etcd ratios the issue's floor is stated in.
 *
 * Invariants:
 * - Closed loop: each client awaits its put before issuing the next, so
 *   offered load follows the system's latency and "clients" is the number of
 *   puts in flight. Throughput counts completed puts over the wall time from
 *   the first issue until the last client's final put returned (the puts in
 *   flight at the deadline are waited for and counted).
 * - Both systems get the same load generator, value bytes (random, so no
 *   codec can shrink them), key sequence and levels, and keep fsync on: etcd
 *   runs with its defaults, dwcp with its production storage settings. Their
 *   data dirs share one parent (--work-dir), so they write to one filesystem.
 * - Only one cluster runs at a time, so neither takes CPU from the other; the
 *   load generator shares the machine with whichever runs, alike for both.
 * - A system that cannot run on this build (TargetUnavailableError) is
 *   skipped with a note unless it alone was asked for; any other start
 *   failure fails the bench, so a broken cluster is never reported as skipped.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import { dwcpKvTarget, startDwcpCluster } from './dwcp-cluster.ts';
import { ensureEtcd, etcdKvTarget, startEtcdCluster, type EtcdEndpointMode } from './etcd.ts';
import { defineBench, FlagError, intFlag, machineFacts, progress, quantile, renderTable, significant } from './run.ts';

/** A replicated key-value store as the load generator sees it. */
export interface KvTarget {
  name: string;
  /** Version of the system under test, when it can tell. */
  version?: string;
  /** Resolves once the put is durable as the system defines a successful write (committed, fsynced). */
  put(key: string, value: Uint8Array): Promise<void>;
  /** Releases clients and stops whatever the target started. */
  close(): Promise<void>;
}

export interface ClosedLoopOptions {
  clients: number;
  durationMs: number;
  valueBytes: number;
  /** Distinct keys the puts cycle through; 100 000 unless told. */
  keyspace?: number;
}

export interface ClosedLoopResult {
  system: string;
  clients: number;
  ops_per_s: number;
  /** Latency of successful puts; null when none succeeded. */
  p50_ms: number | null;
  p99_ms: number | null;
  /** Successful puts. */
  ops: number;
  /** Failed puts, not counted in ops or latencies. */
  errors: number;
  /** The first failure's message, so errors > 0 says why. */
  first_error: string | null;
}

const DEFAULT_KEYSPACE = 100_000;

/**
 * Client c's n-th put goes to key (c + n * clients) mod keyspace: no two
 * clients write the same key at the same time, and keys are rewritten only
 * after the whole keyspace has been written once.
 */
function benchKey(index: number): string {
  return `dwcp-bench/${String(index).padStart(8, '0')}`;
}

/** Runs `clients` closed-loop writers against `target` for `durationMs`, then reports. */
export async function runClosedLoop(target: KvTarget, opts: ClosedLoopOptions): Promise<ClosedLoopResult> {
  const { clients, durationMs, valueBytes } = opts;
  const keyspace = opts.keyspace ?? DEFAULT_KEYSPACE;
  for (const [field, value] of [['clients', clients], ['durationMs', durationMs], ['valueBytes', valueBytes], ['keyspace', keyspace]] as const) {
    if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`runClosedLoop: ${field} must be a whole number of at least 1, got ${value}`);
  }
  const value = new Uint8Array(randomBytes(valueBytes));
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | null = null;

  const start = performance.now();
  const deadline = start + durationMs;
  const client = async (c: number): Promise<void> => {
    for (let n = 0; performance.now() < deadline; n++) {
      const key = benchKey((c + n * clients) % keyspace);
      const issued = performance.now();
      try {
        await target.put(key, value);
        latencies.push(performance.now() - issued);
      } catch (err) {
        errors++;
        firstError ??= err instanceof Error ? err.message : String(err);
      }
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, c) => client(c)));
  const elapsedS = (performance.now() - start) / 1000;

  const percentile = (q: number): number | null => (latencies.length === 0 ? null : significant(quantile(latencies, q)));
  return {
    system: target.name,
    clients,
    ops_per_s: significant(latencies.length / elapsedS),
    p50_ms: percentile(0.5),
    p99_ms: percentile(0.99),
    ops: latencies.length,
    errors,
    first_error: firstError,
  };
}

// ---------------------------------------------------------------------------
// Systems under test

/** Thrown by a system's start when it cannot be benchmarked on this build at all, as opposed to failing to start. */
export class TargetUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TargetUnavailableError';
  }
}

export interface ClusterOptions {
  /** Cluster size; the issue fixes it at 3. */
  members: number;
  /** Parent of the cluster's temporary data dirs; both systems get the same one. */
  workDir: string;
  etcdEndpoints: EtcdEndpointMode;
}

/**
 * The dwcp side: `options.members` dwcpd members on loopback with data dirs
 * under `options.workDir` and production fsync settings; each put is a strong
 * (Raft-committed) write through the KV admin service, spread over the members
 * the way etcd's puts are, and close() stops the members and removes their data.
 */
export async function startDwcpTarget(options: ClusterOptions): Promise<KvTarget> {
  const cluster = await startDwcpCluster({ members: options.members, workDir: options.workDir });
  try {
    progress(`raft: dwcp leader is ${await cluster.leader()} (pids ${cluster.members.map((m) => `${m.name} ${m.pid}`).join(', ')})`);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return dwcpKvTarget(cluster);
}

export async function startEtcdTarget(options: ClusterOptions): Promise<KvTarget> {
  const binary = await ensureEtcd(progress);
  const cluster = await startEtcdCluster({ binary, members: options.members, workDir: options.workDir });
  return etcdKvTarget(cluster, options.etcdEndpoints);
}

const SYSTEMS = {
  dwcp: startDwcpTarget,
  etcd: startEtcdTarget,
} satisfies Record<string, (options: ClusterOptions) => Promise<KvTarget>>;
type SystemName = keyof typeof SYSTEMS;

// ---------------------------------------------------------------------------
// The bench

export interface RaftBenchOptions {
  durationMs: number;
  /** Discarded run before each measured one, at the same level, so connections and JIT are warm. */
  warmupMs: number;
  clients: number[];
  systems: SystemName[];
  valueBytes: number;
  cluster: ClusterOptions;
}

export interface RatioRow {
  ratio: 'dwcp/etcd';
  clients: number;
  /** dwcp ops/s over etcd ops/s: below 1 means dwcp is slower. */
  throughput: number;
  /** dwcp p99 over etcd p99: above 1 means dwcp is slower. */
  p99: number | null;
}

/** The issue's bar: at these levels dwcp's throughput is at least etcd's, and its p99 at most twice etcd's. */
const FLOOR = { clients: [16, 64], minThroughput: 1, maxP99: 2 } as const;

function ratioRows(results: readonly ClosedLoopResult[]): RatioRow[] {
  const rows: RatioRow[] = [];
  for (const dwcp of results.filter((r) => r.system === 'dwcp')) {
    const etcd = results.find((r) => r.system === 'etcd' && r.clients === dwcp.clients);
    if (etcd === undefined || etcd.ops_per_s === 0) continue;
    const p99 = dwcp.p99_ms === null || etcd.p99_ms === null ? null : significant(dwcp.p99_ms / etcd.p99_ms, 3);
    rows.push({ ratio: 'dwcp/etcd', clients: dwcp.clients, throughput: significant(dwcp.ops_per_s / etcd.ops_per_s, 3), p99 });
  }
  return rows;
}

/** true/false once every floor level has a ratio; null (with the reason) while any is missing. */
function floorVerdict(rows: readonly RatioRow[]): { met: boolean | null; reason: string } {
  const missing = FLOOR.clients.filter((c) => !rows.some((r) => r.clients === c));
  if (missing.length > 0) return { met: null, reason: `no dwcp/etcd ratio at ${missing.join(', ')} clients` };
  const failing = rows.filter((r) => FLOOR.clients.some((c) => c === r.clients) && (r.throughput < FLOOR.minThroughput || r.p99 === null || r.p99 > FLOOR.maxP99));
  return failing.length === 0
    ? { met: true, reason: 'throughput and p99 within the floor at every floor level' }
    : { met: false, reason: `outside the floor at ${failing.map((r) => `${r.clients} clients (throughput ${r.throughput}, p99 ${r.p99})`).join('; ')}` };
}

const TMPFS_MAGIC = 0x01021994;

async function measureSystem(name: SystemName, opts: RaftBenchOptions): Promise<{ results: ClosedLoopResult[]; version: string | null }> {
  progress(`raft: starting a ${opts.cluster.members}-member ${name} cluster`);
  const target = await SYSTEMS[name](opts.cluster);
  try {
    const results: ClosedLoopResult[] = [];
    for (const clients of opts.clients) {
      const level = { clients, valueBytes: opts.valueBytes };
      if (opts.warmupMs > 0) await runClosedLoop(target, { ...level, durationMs: opts.warmupMs });
      const result = await runClosedLoop(target, { ...level, durationMs: opts.durationMs });
      progress(JSON.stringify(result));
      if (result.errors > 0) progress(`raft: warning: ${result.errors} ${name} puts failed at ${clients} clients; first: ${result.first_error ?? ''}`);
      results.push(result);
    }
    return { results, version: target.version ?? null };
  } finally {
    await target.close();
  }
}

function cell(value: number | null): string {
  return value === null ? '-' : String(value);
}

export async function runRaftBench(opts: RaftBenchOptions) {
  const facts = machineFacts();
  const workDirFs = await fs.statfs(opts.cluster.workDir).catch((err: unknown) => {
    throw new Error(`--work-dir ${opts.cluster.workDir}: ${err instanceof Error ? err.message : String(err)}`);
  });
  if (workDirFs.type === TMPFS_MAGIC) {
    progress(`raft: warning: --work-dir ${opts.cluster.workDir} is tmpfs, where fsync costs nothing; the numbers will not reflect a disk`);
  }
  const results: ClosedLoopResult[] = [];
  const versions: Record<string, string | null> = {};
  const skipped: { system: SystemName; reason: string }[] = [];
  for (const name of opts.systems) {
    try {
      const measured = await measureSystem(name, opts);
      results.push(...measured.results);
      versions[name] = measured.version;
    } catch (err) {
      if (!(err instanceof TargetUnavailableError) || opts.systems.length === 1) throw err;
      progress(`raft: skipping ${name}: ${err.message}`);
      skipped.push({ system: name, reason: err.message });
    }
  }
  const comparisons = ratioRows(results);
  for (const row of comparisons) progress(JSON.stringify(row));
  const floor = floorVerdict(comparisons);

  progress(
    `\nraft: closed-loop puts of ${opts.valueBytes} B, ${opts.durationMs} ms per level after ${opts.warmupMs} ms warm-up, ${opts.cluster.members} members, etcd clients to ${opts.cluster.etcdEndpoints === 'all' ? 'all members in turn' : 'the leader'}, ${facts.cpus} cpus, load ${facts.loadavg.join(' ')} -> ${machineFacts().loadavg.join(' ')}`,
  );
  progress(renderTable(['system', 'clients', 'ops/s', 'p50 ms', 'p99 ms', 'errors'], results.map((r) => [r.system, String(r.clients), String(r.ops_per_s), cell(r.p50_ms), cell(r.p99_ms), String(r.errors)])));
  if (comparisons.length > 0) {
    progress(`\n${renderTable(['dwcp/etcd', 'throughput (<1 = slower)', 'p99 (>1 = slower)'], comparisons.map((r) => [`${r.clients} clients`, String(r.throughput), cell(r.p99)]))}`);
  }
  progress(`floor (dwcp throughput >= etcd's and p99 <= 2x etcd's at ${FLOOR.clients.join(' and ')} clients): ${floor.met === null ? 'not evaluated' : floor.met ? 'met' : 'NOT met'}: ${floor.reason}`);

  return {
    bench: 'raft',
    ...facts,
    options: {
      duration_ms: opts.durationMs,
      warmup_ms: opts.warmupMs,
      clients: opts.clients,
      systems: opts.systems,
      value_bytes: opts.valueBytes,
      members: opts.cluster.members,
      etcd_endpoints: opts.cluster.etcdEndpoints,
      work_dir: opts.cluster.workDir,
      fsync: true,
    },
    ratios: {
      throughput: 'comparisons[].throughput = dwcp ops_per_s / etcd ops_per_s at the same clients; below 1 means dwcp is slower',
      p99: 'comparisons[].p99 = dwcp p99_ms / etcd p99_ms at the same clients; above 1 means dwcp is slower',
    },
    versions,
    results,
    comparisons,
    floor: { clients: FLOOR.clients, min_throughput: FLOOR.minThroughput, max_p99: FLOOR.maxP99, ...floor },
    skipped,
    loadavg_after: machineFacts().loadavg,
  };
}

/** A comma-separated list of whole numbers from 1 up, e.g. `--clients 1,16,64`. */
function intListFlag(flags: Record<string, string>, flag: string): number[] {
  const items = (flags[flag] ?? '').split(',');
  return items.map((item) => intFlag({ [flag]: item.trim() }, flag));
}

function oneOf<T extends string>(flags: Record<string, string>, flag: string, allowed: readonly T[]): T {
  const value = flags[flag];
  const match = allowed.find((a) => a === value);
  if (match === undefined) throw new FlagError(flag, `must be one of ${allowed.join(', ')}, got "${value ?? ''}"`);
  return match;
}

export const raftBench = defineBench<RaftBenchOptions>({
  flags: {
    'duration-ms': { default: '10000', description: 'measured time per system and client level, ms' },
    'warmup-ms': { default: '1000', description: 'discarded run before each measured one, ms (0 for none)' },
    clients: { default: '1,16,64', description: 'concurrent closed-loop clients, comma-separated levels' },
    only: { default: 'both', description: 'systems to run: both, dwcp or etcd' },
    'value-bytes': { default: '256', description: 'bytes per put value' },
    'etcd-endpoints': { default: 'all', description: 'where etcd puts go: all (members in turn, followers forward) or leader' },
    'work-dir': { default: os.tmpdir(), description: "parent of both clusters' data dirs; must be a real disk for fsync to count" },
  },
  parse(flags) {
    const only = oneOf(flags, 'only', ['both', 'dwcp', 'etcd'] as const);
    const levels = intListFlag(flags, 'clients');
    return {
      durationMs: intFlag(flags, 'duration-ms'),
      warmupMs: intFlag(flags, 'warmup-ms', 0),
      clients: [...new Set(levels)],
      systems: only === 'both' ? ['dwcp', 'etcd'] : [only],
      valueBytes: intFlag(flags, 'value-bytes'),
      cluster: { members: 3, workDir: flags['work-dir'] ?? os.tmpdir(), etcdEndpoints: oneOf(flags, 'etcd-endpoints', ['all', 'leader'] as const) },
    };
  },
  run: runRaftBench,
});
