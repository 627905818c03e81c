/**
 * The end-to-end placement bench: `vm create --placement auto` to running on
 * 3 real dwcpd daemons (Raft carries the federation log), each one region
 * with a local provider of declared capacity and its own price, against the
 * raw provider path (`vm create --provider P --type T`, unmanaged: no
 * scheduling, no log) on the same daemons in the same run.
 *
 * Per managed VM: placed = the Fleet Create RPC returned (placed and
 * committed: create + assign on the log); running = the first poll of
 * `fleet.listDesired` on the node the create went to that shows status
 * running (the chosen region's reconciler created the copy, its inventory
 * saw it running and, for a remote region, its published observed record
 * reached the entry node). Per reference VM: created = the CreateInstance
 * RPC returned; running = the first poll of `vm.listInstances --refresh` on
 * that node showing it running.
 *
 * Invariants:
 * - Each node has two local providers: `local` (the fleet's, priced per node
 *   so placement has a cheapest region; each holds 40 % of --vms, so the
 *   cheapest fills and the creates spread over all three regions) and `ref`
 *   (the reference's, priced far above, so placement never picks it while
 *   `local` has room). The reference's VMs never take the fleet's capacity.
 * - Creates go to the nodes in turn (VM k through node k mod 3), at most
 *   --concurrency in flight; a create through the node whose region is
 *   chosen kicks its reconciler at once, one for another region waits for
 *   that region's next reconcile pass: the results are split by that.
 * - Polling is one call per node per --poll-ms for all of its VMs not yet
 *   running, so N does not multiply the poll load; the resolution of every
 *   to-running figure is the measured poll period, reported.
 * - The daemons and their temp dirs are gone when the bench returns or fails.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { connectAdmin, type AdminClient } from '../src/admin/client.ts';
import { RaftCluster } from '../test/integration/raft-cluster.ts';
import { Prng } from '../test/sim/prng.ts';
import { defineBench, intFlag, machineFacts, pool, progress, quantile, renderTable, significant } from './run.ts';

const NODES = 3;
/** $/vCPU-h of node i's fleet provider: n2 cheapest, then n3, then n1. */
const PRICES = [0.03, 0.01, 0.02] as const;
/** The reference provider's price: never the cheapest. */
const REF_PRICE = 5;
const CALL_TIMEOUT_MS = 30_000;
/** Until every node sees every region's report, after the daemons serve. */
const READY_MS = 60_000;

export interface PlacementE2eOptions {
  vms: number;
  reference: number;
  concurrency: number;
  /** Pause of each in-flight slot after a create returns, before its next create. */
  gapMs: number;
  pollMs: number;
  reconcileMs: number;
  publishMs: number;
  inventoryMs: number;
  transitionMs: number;
  runningTimeoutMs: number;
}

interface Stats {
  n: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
}

function stats(values: readonly number[]): Stats | null {
  if (values.length === 0) return null;
  return { n: values.length, p50_ms: significant(quantile(values, 0.5)), p99_ms: significant(quantile(values, 0.99)), max_ms: significant(Math.max(...values)) };
}

interface Tracked {
  name: string;
  node: number;
  /** Date.now() just before the create call (cross-process times use the wall clock). */
  startedAt: number;
  started: number;
  returned?: number;
  running?: number;
  /** Managed: the chosen region and whether it is the entry node's own. Reference: the instance id. */
  region?: string;
  local?: boolean;
  id?: string;
  attempts?: number;
  /** Managed: ms from the create call to the region daemon's 'fleet VM created' log line. */
  createdLogMs?: number;
}

/**
 * One poller per node: every `pollMs` (from the start of the previous poll),
 * asks `check` which of that node's pending items run now and stamps them.
 * Resolves when every item is running; rejects after `timeoutMs`.
 */
async function pollUntilRunning(
  items: readonly Tracked[],
  pollMs: number,
  timeoutMs: number,
  check: (node: number, pending: Tracked[]) => Promise<Set<string>>,
  periods: number[],
  describe: (name: string) => string,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  await Promise.all(
    Array.from({ length: NODES }, async (_, node) => {
      let last: number | undefined;
      for (;;) {
        const mine = items.filter((t) => t.node === node);
        // Only items whose create returned: until then there is nothing to find.
        const pending = mine.filter((t) => t.running === undefined && t.returned !== undefined);
        if (mine.every((t) => t.running !== undefined)) return;
        const began = performance.now();
        if (last !== undefined) periods.push(began - last);
        last = began;
        if (pending.length > 0) {
          const running = await check(node, pending);
          const now = performance.now();
          for (const t of pending) if (running.has(t.name)) t.running = now;
        }
        if (performance.now() > deadline) {
          const left = mine.filter((t) => t.running === undefined).map((t) => `${t.name} (${describe(t.name) || 'no status'})`);
          throw new Error(`not running within ${timeoutMs} ms (through n${node + 1}): ${left.slice(0, 10).join(', ')}${left.length > 10 ? ', ...' : ''}`);
        }
        await delay(Math.max(0, began + pollMs - performance.now()));
      }
    }),
  );
}

function spec(name: string): string {
  return JSON.stringify({ name, vcpus: 1, memoryBytes: 1024 ** 3, image: 'base', labels: {}, spot: false, priority: 0, constraints: {} });
}

interface PhaseResult {
  items: Tracked[];
  /** First create call to last create return. */
  createSpanMs: number;
  /** First create call to the last VM seen running. */
  runningSpanMs: number;
}

async function runPhase(
  names: readonly string[],
  opts: PlacementE2eOptions,
  create: (t: Tracked) => Promise<void>,
  check: (node: number, pending: Tracked[]) => Promise<Set<string>>,
  periods: number[],
  describe: (name: string) => string = () => '',
): Promise<PhaseResult> {
  const items: Tracked[] = names.map((name, k) => ({ name, node: k % NODES, startedAt: 0, started: 0 }));
  const rng = new Prng(names.length);
  const t0 = performance.now();
  let createsDone = false;
  const creating = pool(items, opts.concurrency, async (t) => {
    t.startedAt = Date.now();
    t.started = performance.now();
    await create(t);
    t.returned = performance.now();
    // Jittered (0.5 to 1.5 × the gap): a fixed period would lock onto the regions' reconcile timers and measure one phase of them.
    if (opts.gapMs > 0) await delay(opts.gapMs * (0.5 + rng.next()));
  }).finally(() => {
    createsDone = true;
  });
  // The gap after the last create is not part of the phase: the span ends at the last return.
  // Polling runs alongside the creates; a create failure ends the phase with that error.
  const polling = pollUntilRunning(items, opts.pollMs, opts.runningTimeoutMs + names.length * 5_000, check, periods, describe);
  await Promise.all([creating, polling.catch(async (err: unknown) => {
    if (!createsDone) await creating;
    throw err;
  })]);
  const lastReturn = Math.max(...items.map((t) => t.returned as number));
  const lastRunning = Math.max(...items.map((t) => t.running as number));
  return { items, createSpanMs: lastReturn - t0, runningSpanMs: lastRunning - t0 };
}

async function waitForRegions(clients: readonly AdminClient[]): Promise<string[]> {
  const deadline = performance.now() + READY_MS;
  for (;;) {
    try {
      const statuses = await Promise.all(clients.map((c) => c.fleet.status()));
      const ready = statuses.every((s) => s.regions.length === NODES && s.regions.every((r) => r.report_age_seconds !== null && r.providers.some((p) => p.name === 'local' && p.capacity !== null)));
      if (ready) return statuses.map((s) => s.self);
      if (performance.now() > deadline) throw new Error(`the regions did not all report within ${READY_MS} ms: ${JSON.stringify(statuses.map((s) => ({ self: s.self, regions: s.regions.map((r) => [r.region, r.health, r.report_age_seconds]) })))}`);
    } catch (err) {
      if (performance.now() > deadline) throw err;
    }
    await delay(200);
  }
}

function row(what: string, s: Stats | null): string[] {
  return s === null ? [what, '-', '-', '-', '0'] : [what, String(s.p50_ms), String(s.p99_ms), String(s.max_ms), String(s.n)];
}

async function runPlacementE2e(opts: PlacementE2eOptions): Promise<object> {
  const facts = machineFacts();
  // Each fleet provider holds 40 % of the VMs (+1 for the warm-up): 3 × 40 % > 100 %, the cheapest fills up.
  const capacity = Math.ceil(opts.vms * 0.4) + 1;
  const refCapacity = Math.ceil(opts.reference / NODES) + 1;
  const fleet = { publishIntervalMs: opts.publishMs, staleAfterMs: Math.max(3 * opts.publishMs, 5_000), reconcileIntervalMs: opts.reconcileMs };
  progress(`placement-e2e: starting ${NODES} daemons (fleet ${JSON.stringify(fleet)}, inventory ${opts.inventoryMs} ms, transition ${opts.transitionMs} ms)`);
  const provider = (name: string, region: string, vcpus: number, price: number) => ({
    kind: 'local',
    name,
    region,
    capacity: { vcpus, memoryGiB: 2 * vcpus, diskGiB: 100 * vcpus },
    pricePerVcpuHour: price,
    pricePerGiBHour: 0,
    inventoryIntervalMs: opts.inventoryMs,
    transitionDelayMs: opts.transitionMs,
  });
  const cluster = await RaftCluster.start('bench-place', NODES, {
    extra: (i) => ({
      node: { jurisdiction: 'eu' },
      clouds: { providers: [provider('local', `dc${i + 1}`, capacity, PRICES[i] as number), provider('ref', `ref${i + 1}`, refCapacity, REF_PRICE)] },
      fleet,
    }),
  });
  const clients = cluster.nodes.map((n) => connectAdmin(n.socket, { timeoutMs: CALL_TIMEOUT_MS, waitForReady: true }));
  try {
    await Promise.all([0, 1, 2].map((i) => cluster.daemon(i).waitForLog((l) => l.msg === 'fleet region declared', `n${i + 1} declares its region`)));
    const regions = await waitForRegions(clients);
    const client = (i: number) => clients[i] as AdminClient;
    /** The last status seen per managed VM, for the error of a VM that never runs. */
    const lastSeen = new Map<string, string>();

    const createManaged = async (t: Tracked) => {
      const res = await client(t.node).fleet.create({ spec_json: spec(t.name), power: 'running', timeout_ms: CALL_TIMEOUT_MS });
      t.region = res.region;
      t.local = res.region === regions[t.node];
      t.attempts = res.attempts;
    };
    const checkManaged = async (node: number, pending: Tracked[]) => {
      const vms = await client(node).fleet.listDesired(pending.map((t) => t.name));
      for (const v of vms) lastSeen.set(v.name, `${v.region}/${v.provider} ${v.status}${v.reason === null ? '' : `: ${v.reason}`}`);
      return new Set(vms.filter((v) => v.status === 'running').map((v) => v.name));
    };
    const createRef = async (t: Tracked) => {
      const res = await client(t.node).vm.createInstance({ provider: 'ref', name: t.name, type: 'local.small', image: 'base', zone: '', tags: {}, spot: false, user_data: '', timeout_ms: CALL_TIMEOUT_MS });
      t.id = res.instance.id;
    };
    const checkRef = async (node: number, pending: Tracked[]) => {
      const ids = new Set(pending.map((t) => t.id));
      const res = await client(node).vm.listInstances({ providers: ['ref'], states: [], refresh: true, timeout_ms: CALL_TIMEOUT_MS });
      return new Set(res.instances.filter((i) => ids.has(i.id) && i.state === 'running').map((i) => i.name));
    };

    progress('placement-e2e: warm-up (one reference VM per node and one managed VM, not counted)');
    const warmPeriods: number[] = [];
    await runPhase(['warm-0', 'warm-1', 'warm-2'], { ...opts, concurrency: NODES, gapMs: 0 }, createRef, checkRef, warmPeriods);
    // One managed warm-up VM only: the fleet's capacity has room for one beyond --vms.
    await runPhase(['warm-m'], { ...opts, gapMs: 0 }, createManaged, checkManaged, warmPeriods, (n) => lastSeen.get(n) ?? '');

    progress(`placement-e2e: reference, ${opts.reference} unmanaged creates on provider ref, ${opts.concurrency} in flight, ${opts.gapMs} ms apart`);
    const refPeriods: number[] = [];
    const ref = await runPhase(Array.from({ length: opts.reference }, (_, k) => `ref-${k}`), opts, createRef, checkRef, refPeriods);

    progress(`placement-e2e: ${opts.vms} creates --placement auto, ${opts.concurrency} in flight, ${opts.gapMs} ms apart`);
    const periods: number[] = [];
    const managed = await runPhase(Array.from({ length: opts.vms }, (_, k) => `e2e-${k}`), opts, createManaged, checkManaged, periods, (n) => lastSeen.get(n) ?? '');

    // Where the region's reconciler created each copy, from its own log (same machine, wall clock).
    for (const t of managed.items) {
      const at = regions.indexOf(t.region as string);
      const line = at < 0 ? undefined : cluster.daemon(at).lines.find((l) => l.msg === 'fleet VM created' && l.vm === t.name);
      const at_ = line === undefined ? NaN : typeof line.time === 'number' ? line.time : Date.parse(String(line.time));
      if (Number.isFinite(at_)) t.createdLogMs = at_ - t.startedAt;
    }

    const m = managed.items;
    const placedMs = m.map((t) => (t.returned as number) - t.started);
    const runningMs = m.map((t) => (t.running as number) - t.started);
    const runningLocal = m.filter((t) => t.local === true).map((t) => (t.running as number) - t.started);
    const runningRemote = m.filter((t) => t.local !== true).map((t) => (t.running as number) - t.started);
    const createdLog = m.flatMap((t) => (t.createdLogMs === undefined ? [] : [t.createdLogMs]));
    const createdLocal = m.flatMap((t) => (t.createdLogMs === undefined || t.local !== true ? [] : [t.createdLogMs]));
    const createdRemote = m.flatMap((t) => (t.createdLogMs === undefined || t.local === true ? [] : [t.createdLogMs]));
    const refCreated = ref.items.map((t) => (t.returned as number) - t.started);
    const refRunning = ref.items.map((t) => (t.running as number) - t.started);

    const byRegion: Record<string, number> = {};
    for (const t of m) byRegion[t.region as string] = (byRegion[t.region as string] ?? 0) + 1;
    const sPlaced = stats(placedMs) as Stats;
    const sRunning = stats(runningMs) as Stats;
    const sRefCreated = stats(refCreated) as Stats;
    const sRefRunning = stats(refRunning) as Stats;
    const ratio = (a: number, b: number) => significant(a / b, 3);
    const pollPeriod = periods.length === 0 ? opts.pollMs : quantile(periods, 0.5);

    progress(
      `\n${renderTable(
        ['ms from the create call', 'p50', 'p99', 'max', 'n'],
        [
          row('managed: placed (Create returned)', sPlaced),
          row('managed: copy created (region log)', stats(createdLog)),
          row('  entry node = chosen region', stats(createdLocal)),
          row('  other region', stats(createdRemote)),
          row('managed: running (listDesired)', sRunning),
          row('  entry node = chosen region', stats(runningLocal)),
          row('  other region', stats(runningRemote)),
          row('reference: created (CreateInstance)', sRefCreated),
          row('reference: running (listInstances)', sRefRunning),
        ],
      )}\n` +
        `creates/s ${significant(opts.vms / (managed.createSpanMs / 1000))} (reference ${significant(opts.reference / (ref.createSpanMs / 1000))}); ` +
        `placed by region ${JSON.stringify(byRegion)}; poll period p50 ${significant(pollPeriod, 3)} ms\n` +
        `ratios managed/reference to running: p50 x${ratio(sRunning.p50_ms, sRefRunning.p50_ms)}, p99 x${ratio(sRunning.p99_ms, sRefRunning.p99_ms)}\n`,
    );

    return {
      bench: 'placement-e2e',
      ...facts,
      options: {
        vms: opts.vms,
        reference: opts.reference,
        concurrency: opts.concurrency,
        gap_ms: opts.gapMs,
        poll_ms: opts.pollMs,
        reconcile_interval_ms: opts.reconcileMs,
        publish_interval_ms: opts.publishMs,
        stale_after_ms: fleet.staleAfterMs,
        inventory_interval_ms: opts.inventoryMs,
        transition_delay_ms: opts.transitionMs,
        regions: NODES,
        capacity_vcpus_per_region: capacity,
        prices_vcpu_hour: regions.map((r, i) => ({ region: r, usd: PRICES[i] })),
      },
      ratios: {
        running_p50: 'managed running p50 / reference running p50; above 1 means the fleet path is slower',
        running_p99: 'managed running p99 / reference running p99; above 1 means the fleet path is slower',
        placed_p50: 'managed placed p50 / reference created p50 (the RPCs alone); above 1 means the fleet path is slower',
      },
      /** The poll period actually achieved (p50): every running figure is known to within it. */
      resolution_ms: significant(pollPeriod, 3),
      managed: {
        vms: opts.vms,
        vms_running: m.filter((t) => t.running !== undefined).length,
        placed_by_region: byRegion,
        max_attempts: Math.max(...m.map((t) => t.attempts ?? 0)),
        creates_per_s: significant(opts.vms / (managed.createSpanMs / 1000)),
        running_per_s: significant(opts.vms / (managed.runningSpanMs / 1000)),
        placed: sPlaced,
        /** To the chosen region daemon's 'fleet VM created' log line (its reconciler's create returned). */
        created: stats(createdLog),
        created_entry_region: stats(createdLocal),
        created_other_region: stats(createdRemote),
        running: sRunning,
        running_entry_region: stats(runningLocal),
        running_other_region: stats(runningRemote),
      },
      reference: {
        vms: opts.reference,
        vms_running: ref.items.filter((t) => t.running !== undefined).length,
        creates_per_s: significant(opts.reference / (ref.createSpanMs / 1000)),
        created: sRefCreated,
        running: sRefRunning,
      },
      ratio: {
        running_p50: ratio(sRunning.p50_ms, sRefRunning.p50_ms),
        running_p99: ratio(sRunning.p99_ms, sRefRunning.p99_ms),
        placed_p50: ratio(sPlaced.p50_ms, sRefCreated.p50_ms),
      },
      loadavg_after: machineFacts().loadavg,
    };
  } catch (err) {
    // What the daemons said about the fleet, for a failure that is theirs.
    for (const [i, node] of cluster.nodes.entries()) {
      const lines = cluster.processes.filter((p) => p.node === node).flatMap((p) => p.lines).filter((l) => typeof l.msg === 'string' && /fleet|cloud|error/i.test(l.msg) || l.level === 'warn' || l.level === 'error');
      progress(`--- n${i + 1}: last fleet log lines\n${lines.slice(-15).map((l) => JSON.stringify(l)).join('\n')}`);
    }
    throw err;
  } finally {
    for (const c of clients) c.close();
    await cluster.destroy();
  }
}

export const placementE2eBench = defineBench<PlacementE2eOptions>({
  flags: {
    vms: { default: '50', description: 'managed creates (--placement auto), measured' },
    reference: { default: '50', description: 'unmanaged creates on the reference provider, measured' },
    concurrency: { default: '1', description: 'creates in flight at once (each phase)' },
    'gap-ms': { default: '1000', description: 'mean pause after each create returns before that slot sends the next, uniform in 0.5-1.5x (0: back to back, the regions stay busy)' },
    'poll-ms': { default: '25', description: 'poll interval of listDesired / listInstances per node (the resolution)' },
    'reconcile-ms': { default: '500', description: 'fleet.reconcileIntervalMs of every daemon' },
    'publish-ms': { default: '500', description: 'fleet.publishIntervalMs of every daemon (changed VM records are checked at least every second)' },
    'inventory-ms': { default: '500', description: 'inventoryIntervalMs of every local provider' },
    'transition-ms': { default: '0', description: 'transitionDelayMs of every local provider (pending to running)' },
    'running-timeout-ms': { default: '60000', description: 'how long a phase waits for its VMs to run (plus 5 s per VM)' },
  },
  parse: (flags) => ({
    vms: intFlag(flags, 'vms'),
    reference: intFlag(flags, 'reference'),
    concurrency: intFlag(flags, 'concurrency'),
    gapMs: intFlag(flags, 'gap-ms', 0),
    pollMs: intFlag(flags, 'poll-ms'),
    reconcileMs: intFlag(flags, 'reconcile-ms', 100),
    publishMs: intFlag(flags, 'publish-ms', 100),
    inventoryMs: intFlag(flags, 'inventory-ms', 100),
    transitionMs: intFlag(flags, 'transition-ms', 0),
    runningTimeoutMs: intFlag(flags, 'running-timeout-ms'),
  }),
  run: runPlacementE2e,
});
