/**
 * `npm run bench -- pbft`: the federation scope on PBFT (4 untrusted dwcpd
 * members, f = 1) against the datacenter scope on Raft (3 trusted members),
 * both real processes on this machine in the same run, on the same
 * closed-loop workload of bench/raft.ts (puts of 256 bytes at 1, 16 and 64
 * clients, spread over the members' admin sockets). Prints JSON lines
 * {system, clients, ops_per_s, p50_ms, p99_ms} with per-op figures (members'
 * CPU, for PBFT durable writes, batch size and Ed25519 verifications), the
 * PBFT/Raft ratios, and the Ed25519 verifications per second one core does
 * on messages of a typical PBFT size.
 *
 * Issue 19's floor: PBFT throughput at least 50 % of Raft's at 64 clients.
 */
import { generateKeyPairSync, sign, verify } from 'node:crypto';
import os from 'node:os';
import { PBFT_PROTOCOL } from '../src/consensus/pbft/wire.ts';
import { metricValue } from '../test/integration/harness.ts';
import { dwcpKvTarget, startDwcpCluster, type BenchScope } from './dwcp-cluster.ts';
import { runClosedLoop, type ClosedLoopResult } from './raft.ts';
import { defineBench, intFlag, machineFacts, oneOf, progress, renderTable, significant } from './run.ts';

export interface PbftBenchOptions {
  durationMs: number;
  warmupMs: number;
  clients: number[];
  valueBytes: number;
  workDir: string;
  verifyMs: number;
  /** Which systems to run (the ratio needs both). */
  only: 'both' | 'raft' | 'pbft';
  /** When set, every daemon runs under node's --cpu-prof, writing its profile here when it stops. */
  profileDir?: string;
}

const FLOOR = { clients: 64, minRatio: 0.5 } as const;

interface SystemPlan {
  readonly system: 'dwcp-raft' | 'dwcp-pbft';
  readonly members: number;
  readonly untrusted: number;
  readonly scope: BenchScope;
}

const SYSTEMS: readonly SystemPlan[] = [
  { system: 'dwcp-raft', members: 3, untrusted: 0, scope: 'datacenter' },
  { system: 'dwcp-pbft', members: 4, untrusted: 4, scope: 'federation' },
];

/**
 * A level's result; the CPU its members spent on it, per op (what a shared,
 * loaded machine distorts least); and for PBFT its durable writes (one per
 * Ready that persists anything) per op and their mean time, summed over the
 * members from dwcp_pbft_persist_duration_seconds.
 */
export type PbftLevelResult = ClosedLoopResult & {
  readonly cpu_ms_per_op: number | null;
  readonly persists_per_op: number | null;
  readonly persist_ms_mean: number | null;
  /** Requests per PBFT batch (sequence number), from dwcp_pbft_executed_seq. */
  readonly ops_per_batch: number | null;
  /** Ed25519 verifications (cache misses) per op over all members, from dwcp_pbft_signature_verify_duration_seconds. */
  readonly verifies_per_op: number | null;
  /** View changes the members started or joined during the level (summed): a slow primary shows up here, not as an error. */
  readonly view_changes: number | null;
  /** PBFT protocol bytes the members sent per op (framed, before Noise), from dwcp_protocol_sent_bytes_total. */
  readonly pbft_bytes_per_op: number | null;
};

interface MemberSample {
  readonly cpuSeconds: number;
  readonly persists: number;
  readonly persistSeconds: number;
  /** The highest PBFT sequence number any member executed. */
  readonly executedSeq: number;
  readonly verifies: number;
  readonly viewChanges: number;
  readonly pbftBytes: number;
}

/** User + system CPU seconds of the members and their PBFT persist totals so far (a member gone away counts nothing). */
async function sampleMembers(members: readonly { metricsUrl: string }[]): Promise<MemberSample> {
  let cpuSeconds = 0;
  let persists = 0;
  let persistSeconds = 0;
  let executedSeq = 0;
  let verifies = 0;
  let viewChanges = 0;
  let pbftBytes = 0;
  for (const m of members) {
    try {
      const text = await (await fetch(m.metricsUrl)).text();
      const value = (name: string): number => metricValue(text, name) ?? 0;
      // prom-client's default metric: user + system CPU of the member's process.
      cpuSeconds += value('process_cpu_seconds_total');
      persists += value('dwcp_pbft_persist_duration_seconds_count');
      persistSeconds += value('dwcp_pbft_persist_duration_seconds_sum');
      executedSeq = Math.max(executedSeq, value('dwcp_pbft_executed_seq'));
      verifies += value('dwcp_pbft_signature_verify_duration_seconds_count');
      viewChanges += value('dwcp_pbft_view_changes_total');
      pbftBytes += metricValue(text, 'dwcp_protocol_sent_bytes_total', { protocol: PBFT_PROTOCOL }) ?? 0;
    } catch {
      // Exited mid-run: its puts fail too, and the run reports those errors.
    }
  }
  return { cpuSeconds, persists, persistSeconds, executedSeq, verifies, viewChanges, pbftBytes };
}

function perOp(value: number, ops: number): number | null {
  return ops > 0 ? significant(value / ops, 3) : null;
}

async function measure(plan: SystemPlan, opts: PbftBenchOptions): Promise<PbftLevelResult[]> {
  progress(`pbft: starting ${plan.system}: ${plan.members} members (${plan.untrusted} untrusted), scope ${plan.scope}`);
  const nodeArgs = opts.profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${opts.profileDir}`];
  const cluster = await startDwcpCluster({ members: plan.members, untrusted: plan.untrusted, scope: plan.scope, workDir: opts.workDir, readyTimeoutMs: 60_000, nodeArgs });
  const target = await dwcpKvTarget(cluster, plan.system);
  try {
    progress(`pbft: ${plan.system} is led by ${await cluster.leader()}`);
    const results: PbftLevelResult[] = [];
    for (const clients of opts.clients) {
      const level = { clients, valueBytes: opts.valueBytes };
      if (opts.warmupMs > 0) await runClosedLoop(target, { ...level, durationMs: opts.warmupMs });
      const before = await sampleMembers(cluster.members);
      const measured = await runClosedLoop(target, { ...level, durationMs: opts.durationMs });
      const after = await sampleMembers(cluster.members);
      const persists = after.persists - before.persists;
      const pbft = plan.system === 'dwcp-pbft';
      const result: PbftLevelResult = {
        ...measured,
        cpu_ms_per_op: perOp(1000 * (after.cpuSeconds - before.cpuSeconds), measured.ops),
        persists_per_op: pbft ? perOp(persists, measured.ops) : null,
        persist_ms_mean: pbft ? perOp(1000 * (after.persistSeconds - before.persistSeconds), persists) : null,
        ops_per_batch: pbft ? perOp(measured.ops, after.executedSeq - before.executedSeq) : null,
        verifies_per_op: pbft ? perOp(after.verifies - before.verifies, measured.ops) : null,
        view_changes: pbft ? after.viewChanges - before.viewChanges : null,
        pbft_bytes_per_op: pbft ? perOp(after.pbftBytes - before.pbftBytes, measured.ops) : null,
      };
      const { system, ops_per_s, p50_ms, p99_ms, cpu_ms_per_op, persists_per_op, persist_ms_mean, ops_per_batch, verifies_per_op, view_changes, pbft_bytes_per_op } = result;
      progress(JSON.stringify({ system, clients, ops_per_s, p50_ms, p99_ms, cpu_ms_per_op, persists_per_op, persist_ms_mean, ops_per_batch, verifies_per_op, view_changes, pbft_bytes_per_op }));
      if (result.errors > 0) progress(`pbft: warning: ${result.errors} ${plan.system} puts failed at ${clients} clients; first: ${result.first_error ?? ''}`);
      results.push(result);
    }
    return results;
  } finally {
    await target.close();
  }
}

/**
 * Ed25519 verifications per second on one core (this thread), over a
 * 300-byte message (a prepare or commit with its signing envelope), with the
 * same node:crypto calls the daemon makes.
 */
export function ed25519VerificationsPerSecond(durationMs: number): { verifications_per_s: number; signs_per_s: number; message_bytes: number } {
  const { privateKey: key, publicKey: pub } = generateKeyPairSync('ed25519');
  const message = Buffer.alloc(300, 7);
  const rate = (fn: () => void): number => {
    let n = 0;
    const start = performance.now();
    const end = start + durationMs;
    while (performance.now() < end) {
      for (let i = 0; i < 100; i++) fn();
      n += 100;
    }
    return significant(n / ((performance.now() - start) / 1000), 3);
  };
  const signature = sign(null, message, key);
  let ok = true;
  const verifications = rate(() => {
    ok &&= verify(null, message, pub, signature);
  });
  if (!ok) throw new Error('ed25519 bench: a valid signature failed to verify');
  return { verifications_per_s: verifications, signs_per_s: rate(() => sign(null, message, key)), message_bytes: message.length };
}

function cell(value: number | null): string {
  return value === null ? '-' : String(value);
}

export async function runPbftBench(opts: PbftBenchOptions) {
  const facts = machineFacts();
  const results: PbftLevelResult[] = [];
  for (const plan of SYSTEMS) if (opts.only === 'both' || plan.system === `dwcp-${opts.only}`) results.push(...(await measure(plan, opts)));
  const ratios = opts.clients.flatMap((clients) => {
    const raft = results.find((r) => r.system === 'dwcp-raft' && r.clients === clients);
    const pbft = results.find((r) => r.system === 'dwcp-pbft' && r.clients === clients);
    if (raft === undefined || pbft === undefined || raft.ops_per_s === 0) return [];
    const p99 = raft.p99_ms === null || pbft.p99_ms === null ? null : significant(pbft.p99_ms / raft.p99_ms, 3);
    return [{ ratio: 'pbft/raft' as const, clients, throughput: significant(pbft.ops_per_s / raft.ops_per_s, 3), p99 }];
  });
  for (const row of ratios) progress(JSON.stringify(row));
  const crypto = ed25519VerificationsPerSecond(opts.verifyMs);
  progress(JSON.stringify({ ed25519: crypto }));
  const atFloor = ratios.find((r) => r.clients === FLOOR.clients);
  const met = atFloor === undefined ? null : atFloor.throughput >= FLOOR.minRatio;

  progress(`\npbft: closed-loop puts of ${opts.valueBytes} B, ${opts.durationMs} ms per level after ${opts.warmupMs} ms warm-up, ${facts.cpus} cpus, load ${facts.loadavg.join(' ')} -> ${machineFacts().loadavg.join(' ')}`);
  progress(renderTable(['system', 'clients', 'ops/s', 'p50 ms', 'p99 ms', 'member CPU ms/op', 'errors'], results.map((r) => [r.system, String(r.clients), String(r.ops_per_s), cell(r.p50_ms), cell(r.p99_ms), cell(r.cpu_ms_per_op), String(r.errors)])));
  progress(`\n${renderTable(['pbft/raft', 'throughput', 'p99 (>1 = slower)'], ratios.map((r) => [`${r.clients} clients`, String(r.throughput), cell(r.p99)]))}`);
  progress(`ed25519 on one core: ${crypto.verifications_per_s} verifications/s, ${crypto.signs_per_s} signatures/s (${crypto.message_bytes}-byte messages)`);
  progress(`floor (PBFT throughput >= ${FLOOR.minRatio * 100} % of Raft's at ${FLOOR.clients} clients): ${met === null ? 'not evaluated' : met ? 'met' : 'NOT met'}${atFloor === undefined ? '' : ` (${atFloor.throughput})`}`);

  return {
    bench: 'pbft',
    ...facts,
    options: { duration_ms: opts.durationMs, warmup_ms: opts.warmupMs, clients: opts.clients, value_bytes: opts.valueBytes, work_dir: opts.workDir, only: opts.only, profile_dir: opts.profileDir ?? null, fsync: true },
    systems: SYSTEMS,
    results,
    ratios,
    ed25519: crypto,
    floor: { clients: FLOOR.clients, min_throughput_ratio: FLOOR.minRatio, met },
    loadavg_after: machineFacts().loadavg,
  };
}

export const pbftBench = defineBench<PbftBenchOptions>({
  flags: {
    'duration-ms': { default: '10000', description: 'measured time per system and client level, ms' },
    'warmup-ms': { default: '1000', description: 'discarded run before each measured one, ms (0 for none)' },
    clients: { default: '1,16,64', description: 'concurrent closed-loop clients, comma-separated levels' },
    'value-bytes': { default: '256', description: 'bytes per put value' },
    'verify-ms': { default: '2000', description: 'time spent measuring Ed25519 verifications per second, ms' },
    'work-dir': { default: os.tmpdir(), description: "parent of the clusters' data dirs; must be a real disk for fsync to count" },
    only: { default: 'both', description: 'systems to run: both, raft or pbft (the ratio needs both)' },
    'profile-dir': { default: '', description: 'when set, run every daemon under --cpu-prof, writing its profile here when it stops' },
  },
  parse(flags) {
    const levels = (flags['clients'] ?? '').split(',').map((item) => intFlag({ clients: item.trim() }, 'clients'));
    return {
      durationMs: intFlag(flags, 'duration-ms'),
      warmupMs: intFlag(flags, 'warmup-ms', 0),
      clients: [...new Set(levels)],
      valueBytes: intFlag(flags, 'value-bytes'),
      workDir: flags['work-dir'] ?? os.tmpdir(),
      verifyMs: intFlag(flags, 'verify-ms'),
      only: oneOf(flags, 'only', ['both', 'raft', 'pbft'] as const),
      ...(flags['profile-dir'] ? { profileDir: flags['profile-dir'] } : {}),
    };
  },
  run: runPbftBench,
});
