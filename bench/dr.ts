/**
 * The disaster-recovery bench: 3 real dwcpd daemons (Raft carries the
 * federation log), each one region with a local provider; --vms protected
 * VMs run in n1 with n2 as their DR region; n3 makes the quorum.
 *
 * Phases, each measured on the daemons' own words (log lines, dr status):
 * 1. a blip: n1 is SIGSTOPped for --blip-ms (at most 2 checks at the
 *    default 5 s), then continued: no region may be failed, no VM failed
 *    over (counted), none self-fenced (counted, reported);
 * 2. the loss: kill -9 of n1. Detection = the first "DR: region failed"
 *    line of a survivor minus the kill; all assigned = the first time every
 *    VM is assigned to n2 (dr status through n3); all running = the first
 *    time n2 has measured every VM's RTO (it does so when its reconciler
 *    reports the copy running); RTO per VM = n2's measurement (first failed
 *    check of n1, the proposer's clock, to the copy running at n2);
 * 3. the return: n1 restarts; it must terminate every stale copy and start
 *    none (a double-running copy: a create or a start by n1 after its
 *    return: its log and its dwcp_fleet_reconcile_actions_total). Its records from before the kill still read
 *    `running` until it fences them (local VMs are records, with no lease:
 *    qemu guests have one, test/integration/dr-lease-qemu.test.ts); counted and
 *    reported apart.
 *
 * DR timings: checks every --check-ms (5 s), failed after 3, self-fencing
 * after --fence-after-ms (10 s, so a 2-check blip does not fence), the DR
 * copy held --hold-ms (12 s, above the 10 s lease plus its 1 s poll).
 *
 * Invariant: the daemons and their temp dirs are gone when the bench
 * returns or fails.
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { DrVmStatusInfo } from '../src/admin/schema.ts';
import { metricValue } from '../test/integration/harness.ts';
import { RaftCluster } from '../test/integration/raft-cluster.ts';
import { defineBench, intFlag, machineFacts, pool, progress, quantile, renderTable, significant } from './run.ts';

export interface DrBenchOptions {
  vms: number;
  concurrency: number;
  checkMs: number;
  fenceAfterMs: number;
  holdMs: number;
  leaseMs: number;
  blipMs: number;
  pollMs: number;
  timeoutMs: number;
}

const CALL_TIMEOUT_MS = 60_000;

function stats(values: readonly number[]): { n: number; p50_ms: number; p99_ms: number; max_ms: number } | null {
  if (values.length === 0) return null;
  return { n: values.length, p50_ms: significant(quantile(values, 0.5)), p99_ms: significant(quantile(values, 0.99)), max_ms: significant(Math.max(...values)) };
}

async function until<T>(what: string, timeoutMs: number, pollMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const got = await probe();
    if (got !== undefined) return got;
    if (performance.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await delay(pollMs);
  }
}

async function run(o: DrBenchOptions): Promise<object> {
  const facts = machineFacts();
  const names = Array.from({ length: o.vms }, (_, i) => `vm${i}`);
  const capacity = { vcpus: o.vms + 8, memoryGiB: o.vms + 8, diskGiB: 100 };
  progress(`dr: starting 3 daemons; ${o.vms} protected VMs in n1, DR region n2`);
  const cluster = await RaftCluster.start('drbench', 3, {
    extra: (i) => ({
      clouds: { providers: [{ kind: 'local', region: `dc${i + 1}`, capacity, pricePerVcpuHour: [0.01, 0.02, 0.03][i], pricePerGiBHour: 0, inventoryIntervalMs: 500 }] },
      fleet: { publishIntervalMs: 500, staleAfterMs: 1_500, reconcileIntervalMs: 500, backoffBaseMs: 200, backoffCapMs: 2_000 },
      dr: { checkIntervalMs: o.checkMs, failAfterChecks: 3, fenceAfterMs: o.fenceAfterMs, fenceHoldMs: o.holdMs, leaseMs: o.leaseMs, stabilisationMs: 86_400_000, retryMs: o.checkMs * 2 },
    }),
  });
  try {
    await Promise.all([0, 1, 2].map((i) => cluster.daemon(i).waitForLog((l) => l.msg === 'fleet region declared', `n${i + 1} declares its region`)));
    const status = async (i: number): Promise<DrVmStatusInfo[]> => (await cluster.admin(i, (c) => c.dr.status([]))).vms;
    const setupStarted = performance.now();
    await pool(names, o.concurrency, async (name) => {
      await cluster.admin(0, async (c) => {
        const spec = { name, vcpus: 1, memoryBytes: 256 * 1024 ** 2, image: 'base', constraints: { regions: ['n1', 'n2'] } };
        const created = await c.fleet.create({ spec_json: JSON.stringify(spec), power: 'running', timeout_ms: CALL_TIMEOUT_MS });
        if (created.region !== 'n1') throw new Error(`${name} was placed in ${created.region}, not n1`);
        await c.dr.protect({ vm: name, dr_region: 'n2', dr_provider: '', rpo_ms: 0, rto_ms: 60_000, retention_ms: 0, failback: 'manual', timeout_ms: CALL_TIMEOUT_MS });
      });
    });
    await until('every VM running in n1', o.timeoutMs, o.pollMs, async () => {
      const d = await cluster.admin(2, (c) => c.fleet.listDesired([]));
      return d.filter((v) => v.region === 'n1' && v.status === 'running').length === o.vms ? true : undefined;
    });
    const setupMs = performance.now() - setupStarted;
    progress(`dr: ${o.vms} VMs protected and running in n1 (${Math.round(setupMs / 1000)} s)`);

    // 1. The blip.
    const failedLines = (): number => [1, 2].reduce((n, i) => n + cluster.daemon(i).lines.filter((l) => l.msg === 'DR: region failed; its protected VMs fail over').length, 0);
    const n1Lines = cluster.daemon(0).lines.length;
    cluster.signal(0, 'SIGSTOP');
    await delay(o.blipMs);
    cluster.signal(0, 'SIGCONT');
    // Long enough for a third check to fail or pass, and for any proposal to commit.
    await delay(o.checkMs * 4);
    const blip = {
      blip_ms: o.blipMs,
      regions_failed: failedLines(),
      failovers: (await status(2)).filter((s) => s.state !== 'protected').length,
      self_fenced: cluster.daemon(0).lines.slice(n1Lines).filter((l) => l.msg === 'fleet stopped a stale copy (fencing)' && l.fence === 'self-fence').length,
    };
    progress(`dr: blip of ${o.blipMs} ms: ${blip.regions_failed} region failures, ${blip.failovers} failovers, ${blip.self_fenced} self-fenced copies`);
    if (blip.failovers > 0) throw new Error(`a blip of ${o.blipMs} ms failed ${blip.failovers} VMs over`);
    await until('every VM running in n1 again after the blip', o.timeoutMs, o.pollMs, async () => {
      const d = await cluster.admin(2, (c) => c.fleet.listDesired([]));
      return d.filter((v) => v.region === 'n1' && v.status === 'running').length === o.vms ? true : undefined;
    });

    // 2. The loss.
    const killedAt = Date.now();
    await cluster.stopNode(0, 'SIGKILL');
    const failed = await until('a survivor fails n1', o.timeoutMs, 100, async () => [1, 2].flatMap((i) => cluster.daemon(i).lines.filter((l) => l.msg === 'DR: region failed; its protected VMs fail over' && l.region === 'n1'))[0]);
    const detectionMs = Date.parse(String(failed.time)) - killedAt;
    progress(`dr: n1 failed ${detectionMs} ms after the kill`);
    let allAssignedMs: number | null = null;
    const rto = await until('every VM running at n2 (RTO measured)', o.timeoutMs, o.pollMs, async () => {
      const s = await status(1);
      if (allAssignedMs === null && s.filter((v) => v.region === 'n2').length === o.vms) allAssignedMs = Date.now() - killedAt;
      const measured = s.filter((v) => v.region === 'n2' && v.rto_measured_ms !== null);
      return measured.length === o.vms ? measured.map((v) => Number(v.rto_measured_ms)) : undefined;
    });
    const allRunningMs = Date.now() - killedAt;
    progress(`dr: all ${o.vms} assigned at n2 after ${allAssignedMs} ms, running after ${allRunningMs} ms`);

    // 3. The return: stale copies terminated, none started.
    await cluster.startNode(0);
    // Local VMs are records: the killed daemon's stay `running` until it returns and fences them (no lease for records).
    let staleRecords = 0;
    await until('n1 terminates its stale copies', o.timeoutMs, o.pollMs, async () => {
      const copies = await cluster.admin(2, (c) => c.fleet.listVms({ regions: [], labels: {} }));
      const running = new Map<string, number>();
      for (const c of copies) if (c.desired_vm !== null && c.state === 'running') running.set(c.desired_vm, (running.get(c.desired_vm) ?? 0) + 1);
      staleRecords = Math.max(staleRecords, [...running.values()].filter((n) => n > 1).length);
      const atN1 = copies.filter((c) => c.region === 'n1' && c.state !== 'terminated').length;
      return atN1 === 0 ? true : undefined;
    });
    const fencedMs = Date.now() - killedAt - allRunningMs;
    // A double-running copy: the returning region started or created one (its records from before the kill are not runs).
    const metrics = await cluster.daemon(0).scrape();
    const starts = metricValue(metrics, 'dwcp_fleet_reconcile_actions_total', { action: 'start', result: 'ok' }) ?? 0;
    const startedAfterReturn = cluster.daemon(0).lines.filter((l) => l.msg === 'fleet VM created').length + starts;

    const rtoStats = stats(rto);
    const result = {
      bench: 'dr',
      ...facts,
      loadavg_after: machineFacts().loadavg,
      options: { vms: o.vms, concurrency: o.concurrency, check_interval_ms: o.checkMs, fail_after_checks: 3, fence_after_ms: o.fenceAfterMs, fence_hold_ms: o.holdMs, lease_ms: o.leaseMs, blip_ms: o.blipMs, poll_ms: o.pollMs },
      setup_ms: significant(setupMs),
      blip,
      detection_ms: detectionMs,
      all_assigned_ms: allAssignedMs,
      all_running_ms: allRunningMs,
      rto: rtoStats,
      double_running: startedAfterReturn,
      stale_records_at_return: staleRecords,
      stale_fenced_after_return_ms: fencedMs,
      floors: { detection_ms: 15_000, rto_p99_ms: 30_000, blip_failovers: 0, double_running: 0 },
      pass: detectionMs <= 15_000 && (rtoStats?.p99_ms ?? Infinity) <= 30_000 && blip.failovers === 0 && startedAfterReturn === 0,
    };
    progress(
      renderTable(
        ['measure', 'value', 'floor'],
        [
          ['detection', `${detectionMs} ms`, '≤ 15000 ms'],
          ['all assigned at n2', `${allAssignedMs} ms`, ''],
          ['all running at n2', `${allRunningMs} ms`, ''],
          ['RTO p50', `${rtoStats?.p50_ms} ms`, ''],
          ['RTO p99', `${rtoStats?.p99_ms} ms`, '≤ 30000 ms'],
          ['failovers after a blip', String(blip.failovers), '0'],
          ['double-running copies', String(result.double_running), '0'],
        ],
      ),
    );
    return result;
  } finally {
    await cluster.destroy();
  }
}

export const drBench = defineBench<DrBenchOptions>({
  flags: {
    vms: { default: '1000', description: 'protected VMs in the lost region' },
    concurrency: { default: '16', description: 'creates and protects in flight while setting up' },
    'check-ms': { default: '5000', description: 'dr.checkIntervalMs' },
    'fence-after-ms': { default: '10000', description: 'dr.fenceAfterMs' },
    'hold-ms': { default: '12000', description: 'dr.fenceHoldMs' },
    'lease-ms': { default: '10000', description: 'dr.leaseMs (qemu guests; local VMs have none)' },
    'blip-ms': { default: '6000', description: 'how long n1 is SIGSTOPped in the blip phase' },
    'poll-ms': { default: '250', description: 'how often dr status is polled' },
    'timeout-ms': { default: '600000', description: 'per phase' },
  },
  parse: (f) => ({
    vms: intFlag(f, 'vms'),
    concurrency: intFlag(f, 'concurrency'),
    checkMs: intFlag(f, 'check-ms', 100),
    fenceAfterMs: intFlag(f, 'fence-after-ms', 100),
    holdMs: intFlag(f, 'hold-ms', 100),
    leaseMs: intFlag(f, 'lease-ms', 100),
    blipMs: intFlag(f, 'blip-ms', 0),
    pollMs: intFlag(f, 'poll-ms', 10),
    timeoutMs: intFlag(f, 'timeout-ms', 1_000),
  }),
  run,
});
