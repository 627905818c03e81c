/**
 * The raft bench: a 3-member dwcp cluster against a 3-member etcd cluster on
 * this machine, one after the other in one run, each driven by closed-loop
 * clients putting fixed-size values for a fixed time per concurrency level.
 * Reports ops/s and put latency percentiles per system and level, each
 * member's resident memory (peak and at the end of each level, sampled every
 * second), and the dwcp/etcd ratios the issue's floors are stated in.
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
import { defineBench, intFlag, machineFacts, oneOf, progress, quantile, renderTable, significant } from './run.ts';

/** A replicated key-value store as the load generator sees it. */
export interface KvTarget {
  name: string;
  /** Version of the system under test, when it can tell. */
  version?: string;
  /** Its member processes, whose memory is sampled while it runs. */
  pids?: readonly number[];
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
  /** When set, every dwcp member runs under node's --cpu-prof, writing here. */
  profileDir?: string;
  /** The dwcp members' gcBudgetMiB (src/daemon/heap-budget.ts); the config's default (0, off) unless set. */
  gcBudgetMiB?: number;
}

/**
 * The dwcp side: `options.members` dwcpd members on loopback with data dirs
 * under `options.workDir` and production fsync settings; each put is a strong
 * (Raft-committed) write through the KV admin service, spread over the members
 * the way etcd's puts are, and close() stops the members and removes their data.
 */
export async function startDwcpTarget(options: ClusterOptions): Promise<KvTarget> {
  const nodeArgs = options.profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${options.profileDir}`];
  const config = options.gcBudgetMiB === undefined ? {} : { gcBudgetMiB: options.gcBudgetMiB };
  const cluster = await startDwcpCluster({ members: options.members, workDir: options.workDir, nodeArgs, config });
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

/** Resident memory of a system's members over one level, in MiB, per member in the order of its pids. */
export interface MemberMemory {
  peak_rss_mb: number[];
  end_rss_mb: number[];
}

/**
 * `cpu_ms_per_put`: the members' CPU time (user + system, all members summed,
 * /proc/PID/stat) over the measured window, per successful put: the figure
 * that does not move with the machine's load the way throughput does, since
 * the members are CPU-bound on a small machine. null where /proc cannot be read.
 */
export type LevelResult = ClosedLoopResult & { memory: MemberMemory | null; cpu_ms_per_put: number | null };

export interface RatioRow {
  ratio: 'dwcp/etcd';
  clients: number;
  /** dwcp ops/s over etcd ops/s: below 1 means dwcp is slower. */
  throughput: number;
  /** dwcp p50 over etcd p50: above 1 means dwcp is slower. */
  p50: number | null;
  /** dwcp p99 over etcd p99: above 1 means dwcp is slower. */
  p99: number | null;
}

/**
 * The issue's bars (issue 19): at 16 and 64 clients dwcp's throughput is at
 * least etcd's and its p99 at most 1.5× etcd's; at 1 client its p50 at most
 * 3× etcd's; with 16 clients for 150 s no dwcp member above 250 MiB RSS.
 */
const FLOOR = {
  clients: [16, 64],
  minThroughput: 1,
  maxP99: 1.5,
  latency: { clients: 1, maxP50: 3 },
  memory: { clients: 16, minDurationMs: 150_000, maxRssMb: 250 },
} as const;

function ratio(a: number | null, b: number | null): number | null {
  return a === null || b === null || b === 0 ? null : significant(a / b, 3);
}

export function ratioRows(results: readonly ClosedLoopResult[]): RatioRow[] {
  const rows: RatioRow[] = [];
  for (const dwcp of results.filter((r) => r.system === 'dwcp')) {
    const etcd = results.find((r) => r.system === 'etcd' && r.clients === dwcp.clients);
    if (etcd === undefined || etcd.ops_per_s === 0) continue;
    rows.push({ ratio: 'dwcp/etcd', clients: dwcp.clients, throughput: significant(dwcp.ops_per_s / etcd.ops_per_s, 3), p50: ratio(dwcp.p50_ms, etcd.p50_ms), p99: ratio(dwcp.p99_ms, etcd.p99_ms) });
  }
  return rows;
}

export interface FloorCheck {
  check: string;
  /** null: not evaluated in this run (the reason says what is missing). */
  met: boolean | null;
  reason: string;
}

/** Each floor on its own, then true/false overall: false if any is missed, true if all were evaluated and met. */
export function floorVerdict(rows: readonly RatioRow[], results: readonly LevelResult[], durationMs: number): { met: boolean | null; checks: FloorCheck[] } {
  const checks: FloorCheck[] = [];
  for (const clients of FLOOR.clients) {
    const row = rows.find((r) => r.clients === clients);
    const check = `${clients} clients: throughput >= ${FLOOR.minThroughput}x, p99 <= ${FLOOR.maxP99}x etcd's`;
    if (row === undefined) checks.push({ check, met: null, reason: `no dwcp/etcd ratio at ${clients} clients` });
    else checks.push({ check, met: row.throughput >= FLOOR.minThroughput && row.p99 !== null && row.p99 <= FLOOR.maxP99, reason: `throughput ${row.throughput}, p99 ${row.p99}` });
  }
  const { latency, memory } = FLOOR;
  const one = rows.find((r) => r.clients === latency.clients);
  const latencyCheck = `${latency.clients} client: p50 <= ${latency.maxP50}x etcd's`;
  checks.push(one === undefined ? { check: latencyCheck, met: null, reason: `no dwcp/etcd ratio at ${latency.clients} client` } : { check: latencyCheck, met: one.p50 !== null && one.p50 <= latency.maxP50, reason: `p50 ${one.p50}` });
  const memoryCheck = `${memory.clients} clients for ${memory.minDurationMs / 1000} s: every dwcp member <= ${memory.maxRssMb} MiB RSS`;
  const level = results.find((r) => r.system === 'dwcp' && r.clients === memory.clients);
  if (level?.memory == null || durationMs < memory.minDurationMs) {
    checks.push({ check: memoryCheck, met: null, reason: `run --clients ${memory.clients} --duration-ms ${memory.minDurationMs} on Linux to evaluate` });
  } else {
    const peak = Math.max(...level.memory.peak_rss_mb);
    checks.push({ check: memoryCheck, met: peak <= memory.maxRssMb, reason: `peak ${level.memory.peak_rss_mb.join(', ')} MiB` });
  }
  const met = checks.some((c) => c.met === false) ? false : checks.every((c) => c.met === true) ? true : null;
  return { met, checks };
}

/** VmRSS of a process in MiB (Linux), or null where it cannot be read. */
async function rssMb(pid: number): Promise<number | null> {
  try {
    const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
    const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
    return kb === undefined ? null : significant(Number(kb) / 1024, 4);
  } catch {
    return null;
  }
}

/** Samples every member's RSS once a second while `run` goes on; null when it cannot be read here. */
async function withMemory<T>(pids: readonly number[] | undefined, run: Promise<T>): Promise<{ result: T; memory: MemberMemory | null }> {
  if (pids === undefined || pids.length === 0 || (await rssMb(pids[0] as number)) === null) return { result: await run, memory: null };
  const peak = pids.map(() => 0);
  const sample = async (): Promise<number[]> => {
    const now = await Promise.all(pids.map((pid) => rssMb(pid)));
    now.forEach((mb, i) => (peak[i] = Math.max(peak[i] as number, mb ?? 0)));
    return now.map((mb) => mb ?? 0);
  };
  const timer = setInterval(() => void sample(), 1000);
  try {
    const result = await run;
    return { result, memory: { peak_rss_mb: peak, end_rss_mb: await sample() } };
  } finally {
    clearInterval(timer);
  }
}

/** USER_HZ: the unit of /proc/PID/stat's times on every Linux this runs on. */
const CLOCK_TICKS_PER_S = 100;

/** User + system CPU of all `pids` in ms (Linux), or null where it cannot be read. */
async function membersCpuMs(pids: readonly number[] | undefined): Promise<number | null> {
  if (pids === undefined || pids.length === 0) return null;
  try {
    let ticks = 0;
    for (const pid of pids) {
      const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
      // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(fields[11]) + Number(fields[12]);
    }
    return Number.isFinite(ticks) ? (ticks * 1000) / CLOCK_TICKS_PER_S : null;
  } catch {
    return null;
  }
}

const TMPFS_MAGIC = 0x01021994;

async function measureSystem(name: SystemName, opts: RaftBenchOptions): Promise<{ results: LevelResult[]; version: string | null }> {
  progress(`raft: starting a ${opts.cluster.members}-member ${name} cluster`);
  const target = await SYSTEMS[name](opts.cluster);
  try {
    const results: LevelResult[] = [];
    for (const clients of opts.clients) {
      const level = { clients, valueBytes: opts.valueBytes };
      if (opts.warmupMs > 0) await runClosedLoop(target, { ...level, durationMs: opts.warmupMs });
      const cpuBefore = await membersCpuMs(target.pids);
      const measured = await withMemory(target.pids, runClosedLoop(target, { ...level, durationMs: opts.durationMs }));
      const cpuAfter = await membersCpuMs(target.pids);
      const { ops } = measured.result;
      const cpuPerPut = cpuBefore === null || cpuAfter === null || ops === 0 ? null : significant((cpuAfter - cpuBefore) / ops, 3);
      const result: LevelResult = { ...measured.result, memory: measured.memory, cpu_ms_per_put: cpuPerPut };
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
  const results: LevelResult[] = [];
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
  const floor = floorVerdict(comparisons, results, opts.durationMs);

  progress(
    `\nraft: closed-loop puts of ${opts.valueBytes} B, ${opts.durationMs} ms per level after ${opts.warmupMs} ms warm-up, ${opts.cluster.members} members, etcd clients to ${opts.cluster.etcdEndpoints === 'all' ? 'all members in turn' : 'the leader'}, ${facts.cpus} cpus, load ${facts.loadavg.join(' ')} -> ${machineFacts().loadavg.join(' ')}`,
  );
  const memoryCell = (m: MemberMemory | null) => (m === null ? '-' : `${m.peak_rss_mb.map((mb) => Math.round(mb)).join('/')}`);
  progress(
    renderTable(
      ['system', 'clients', 'ops/s', 'p50 ms', 'p99 ms', 'errors', 'members CPU ms/put', 'peak RSS MiB per member'],
      results.map((r) => [r.system, String(r.clients), String(r.ops_per_s), cell(r.p50_ms), cell(r.p99_ms), String(r.errors), cell(r.cpu_ms_per_put), memoryCell(r.memory)]),
    ),
  );
  if (comparisons.length > 0) {
    progress(`\n${renderTable(['dwcp/etcd', 'throughput (<1 = slower)', 'p50 (>1 = slower)', 'p99 (>1 = slower)'], comparisons.map((r) => [`${r.clients} clients`, String(r.throughput), cell(r.p50), cell(r.p99)]))}`);
  }
  const verdict = (met: boolean | null) => (met === null ? 'not evaluated' : met ? 'met' : 'NOT met');
  progress(`floors: ${verdict(floor.met)}`);
  for (const c of floor.checks) progress(`  ${c.check}: ${verdict(c.met)} (${c.reason})`);

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
      profile_dir: opts.cluster.profileDir ?? null,
      gc_budget_mib: opts.cluster.gcBudgetMiB ?? null,
      fsync: true,
    },
    ratios: {
      throughput: 'comparisons[].throughput = dwcp ops_per_s / etcd ops_per_s at the same clients; below 1 means dwcp is slower',
      p99: 'comparisons[].p99 = dwcp p99_ms / etcd p99_ms at the same clients; above 1 means dwcp is slower',
    },
    versions,
    results,
    comparisons,
    floor: {
      clients: FLOOR.clients,
      min_throughput: FLOOR.minThroughput,
      max_p99: FLOOR.maxP99,
      max_p50_at_1_client: FLOOR.latency.maxP50,
      max_rss_mb_at_16_clients_150_s: FLOOR.memory.maxRssMb,
      ...floor,
    },
    skipped,
    loadavg_after: machineFacts().loadavg,
  };
}

/** A comma-separated list of whole numbers from 1 up, e.g. `--clients 1,16,64`. */
function intListFlag(flags: Record<string, string>, flag: string): number[] {
  const items = (flags[flag] ?? '').split(',');
  return items.map((item) => intFlag({ [flag]: item.trim() }, flag));
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
    'profile-dir': { default: '', description: 'when set, run every dwcp member under --cpu-prof, writing its profile here when it stops' },
    'gc-budget-mib': { default: '', description: "when set, the dwcp members' gcBudgetMiB (0 off): a full GC per that many MiB of heap + buffer growth" },
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
      cluster: {
        members: 3,
        workDir: flags['work-dir'] ?? os.tmpdir(),
        etcdEndpoints: oneOf(flags, 'etcd-endpoints', ['all', 'leader'] as const),
        ...(flags['profile-dir'] ? { profileDir: flags['profile-dir'] } : {}),
        ...(flags['gc-budget-mib'] ? { gcBudgetMiB: intFlag(flags, 'gc-budget-mib', 0) } : {}),
      },
    };
  },
  run: runRaftBench,
});
