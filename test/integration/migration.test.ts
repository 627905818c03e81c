/**
 * Migrations with real processes: three dwcpd daemons (Raft carries the
 * federation log), each a region with a local provider (local VMs are
 * records, so the transfer is a record-level move and the whole flow runs
 * with no hypervisor). n1's provider is slow (every start and stop takes
 * SLOW_MS), which holds a migration out of n1 in its transfer phase long
 * enough to act on it.
 *
 * What it proves, through dwcpctl only:
 * - a cold migration n2 → n3 completes: the log moves the VM to n3 at
 *   generation 2, exactly one copy runs (at n3), every node lists it
 *   completed, the dry run printed the plan first, the source's metrics
 *   count it;
 * - a migration cancelled during its transfer rolls back: the VM runs again
 *   at n1 at generation 1, the prepared copy at n2 is torn down, `vm
 *   migrate` exits 1 with the reason, the log says "cancelled by operator";
 * - kill -9 of the target daemon mid-transfer: the coordinator does not cut
 *   over to a region that stopped reporting; it rolls back, the VM runs
 *   again at n1, the log says why; once the target is back, its stale
 *   prepared copy is terminated: exactly one running copy at the end.
 * - a connection cut mid-transfer (the target's gater drops every peer, its
 *   process and copy alive): the same rollback, and once it hears the log
 *   again the target tears its prepared copy down;
 * - kill -9 of the source daemon mid-transfer and its restart: the restarted
 *   coordinator takes the migration on from its recorded phase and ends it;
 *   one copy runs where the log says;
 * - a failed verification (the target's start outlasts the source's
 *   verifyTimeoutMs): the migration ends failed with the reason, the VM
 *   stays at the target, runs there, and the source's copy is fenced.
 * In the last three, a watcher samples the fleet every 100 ms throughout:
 * never two copies shown running at once.
 *
 * No sleeps as synchronisation: phases, states and log lines are awaited
 * with generous deadlines.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationInfo } from '../../src/admin/schema.ts';
import { RaftCluster } from './raft-cluster.ts';
import { eventually, metricValue } from './harness.ts';
import { fleetCtl } from './fleet-ctl.ts';

/** Starts and stops at n1 take this long (the local provider's transition delay). */
const SLOW_MS = 5_000;
/** From a command to the state it leads to, on a loaded 2-core machine. */
const SETTLE_MS = 45_000;

/** n3's verification bound (see beforeAll). */
const VERIFY_FAST_MS = 2_500;

let cluster: RaftCluster;

const { ctl, json, desired, copies, runningAt } = fleetCtl(() => cluster, SETTLE_MS);
const status = (i: number, id: string): Promise<MigrationInfo> => json<MigrationInfo>(i, 'migration', 'status', id);

async function create(i: number, name: string, regions: string): Promise<string> {
  const res = await json<{ region: string }>(i, 'vm', 'create', name, '--cpu', '1', '--memory', '1GiB', '--image', 'base', '--constraint', `region=${regions}`);
  return res.region;
}

/** Exactly one copy of the VM runs in the whole fleet, and it is at `region`; no other copy is left but terminated ones. */
async function oneRunningCopy(i: number, name: string, region: string): Promise<void> {
  await eventually(`exactly one copy of ${name}, running at ${region}, the others gone (seen from n${i + 1})`, SETTLE_MS, async () => {
    const all = await copies(i, name);
    const live = all.filter((c) => c.state !== 'terminated');
    return live.length === 1 && live[0]?.state === 'running' && live[0].region === region ? all : undefined;
  });
}

/**
 * Waits until the migration is in `wanted`, asking through an in-process
 * admin client (a dwcpctl process per poll would eat the window the test
 * acts in on a loaded machine).
 */
async function phase(i: number, id: string, wanted: string): Promise<MigrationInfo> {
  return eventually(`${id} in ${wanted}`, SETTLE_MS, async () => {
    const m = await cluster.admin(i, (c) => c.migration.status({ id, timeout_ms: 0 }));
    if (m.result !== null) throw new Error(`${id} ended ${m.result} before reaching ${wanted}: ${m.reason}`);
    return m.phase === wanted ? m : undefined;
  });
}

/** `vm migrate VM --to REGION --detach` on node i; the started migration's id. */
async function startDetached(i: number, vm: string, to: string): Promise<string> {
  const started = await ctl(i, 'vm', 'migrate', vm, '--to', to, '--detach', '--json');
  expect(started.code, started.stderr).toBe(0);
  return (JSON.parse(started.stdout.split('\n')[0] ?? '{}') as { migration: MigrationInfo }).migration.id;
}

/** The migration once it has ended, as node i's log shows it. */
function endOf(i: number, id: string, what: string, budgetMs: number): Promise<MigrationInfo> {
  return eventually(what, budgetMs, async () => {
    const m = await status(i, id);
    return m.result === null ? undefined : m;
  });
}

/**
 * Watches, from node i, how many copies of `name` the fleet shows running at
 * once (a copy shows running only while its region's report is current),
 * until stopped; the fleet's invariant is that this never exceeds one.
 */
function watchRunningCopies(i: number, name: string): { stop(): Promise<{ max: number; samples: number; seen: string[] }> } {
  let stopped = false;
  let max = 0;
  let samples = 0;
  const seen: string[] = [];
  const loop = (async () => {
    while (!stopped) {
      try {
        const vms = await cluster.admin(i, (c) => c.fleet.listVms({ regions: [], labels: {} }));
        const running = vms.filter((v) => v.desired_vm === name && v.state === 'running');
        samples++;
        if (running.length > max) {
          max = running.length;
          seen.push(running.map((v) => `${v.region}/${v.id}`).join(' + '));
        }
      } catch {
        // A node restarting: the next sample.
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      return { max, samples, seen };
    },
  };
}

beforeAll(async () => {
  const price = [0.01, 0.02, 0.03];
  cluster = await RaftCluster.start('migrated', 3, {
    extra: (i) => ({
      clouds: {
        providers: [
          { kind: 'local', region: `dc${i + 1}`, capacity: { vcpus: 8, memoryGiB: 16, diskGiB: 100 }, pricePerVcpuHour: price[i], pricePerGiBHour: 0, inventoryIntervalMs: 500, transitionDelayMs: i === 0 ? SLOW_MS : 0 },
        ],
      },
      fleet: {
        // A target that stops reporting is seen stale well within SLOW_MS, however late the test's kill lands in the transfer phase.
        publishIntervalMs: 250,
        staleAfterMs: 750,
        reconcileIntervalMs: 500,
        backoffBaseMs: 100,
        backoffCapMs: 400,
        // n3's coordinator gives a target 2.5 s to report the VM running after cutover: n1 needs SLOW_MS to start it, so a
        // migration n3 → n1 fails its verification whatever the load (the start alone outlasts the bound).
        migration: { prepareTimeoutMs: 6_000, verifyTimeoutMs: i === 2 ? VERIFY_FAST_MS : 20_000, cleanupTimeoutMs: 30_000 },
      },
    }),
  });
  await Promise.all([0, 1, 2].map((i) => cluster.daemon(i).waitForLog((l) => l.msg === 'fleet region declared', `n${i + 1} declares its region`)));
}, 90_000);

afterAll(async () => {
  await cluster?.destroy();
});

describe('VM migration between regions, local providers, real daemons', () => {
  it('a cold migration n2 → n3 completes: the VM runs at n3 at generation 2, exactly one copy runs, every node lists it completed', async () => {
    expect(await create(0, 'web1', 'n2,n3')).toBe('n2');
    await runningAt(1, 'web1', 'n2', '1');

    const dry = await ctl(2, 'vm', 'migrate', 'web1', '--to', 'n3', '--dry-run');
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain('web1: cold migration from n2/local (generation 1) to n3/local (generation 2)');
    expect(dry.stdout).toMatch(/reserves 1 vCPU, 1 GiB of memory at n3\/local while it runs/);
    // A dry run commits nothing.
    expect(await json<{ migrations: MigrationInfo[] }>(0, 'migration', 'list')).toEqual({ migrations: [] });

    const run = await ctl(0, 'vm', 'migrate', 'web1', '--to', 'n3');
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
    expect(run.stdout).toMatch(/started m1/);
    expect(run.stdout).toMatch(/m1 web1 cold n2 → n3: completed/);
    await runningAt(2, 'web1', 'n3', '2');
    await oneRunningCopy(0, 'web1', 'n3');
    for (const i of [0, 1, 2]) {
      const [m] = (await json<{ migrations: MigrationInfo[] }>(i, 'migration', 'list', 'web1')).migrations;
      expect(m, `n${i + 1}`).toMatchObject({ id: 'm1', vm: 'web1', mode: 'cold', source_region: 'n2', target_region: 'n3', target_generation: '2', result: 'completed', phase: 'cleanup' });
    }
    // The source's coordinator counted it, and logged its end.
    const scraped = await cluster.daemon(1).scrape();
    expect(metricValue(scraped, 'dwcp_migrations_total', { mode: 'cold', result: 'completed' })).toBe(1);
    expect(metricValue(scraped, 'dwcp_migration_duration_seconds_count', { mode: 'cold' })).toBe(1);
    await cluster.daemon(1).waitForLog((l) => l.msg === 'fleet migration ended' && l.migration === 'm1' && l.result === 'completed', 'n2 logs the end of m1');
    await cluster.daemon(1).waitForLog((l) => l.msg === 'fleet terminated a copy' && l.vm === 'web1' && l.reason === 'reassigned', "n2 fences web1's old copy");
  }, 120_000);

  it('a migration cancelled during its transfer rolls back: the VM runs again at n1, the prepared copy at n2 is torn down, vm migrate exits 1 with the reason', async () => {
    expect(await create(1, 'web2', 'n1,n2')).toBe('n1');
    await runningAt(0, 'web2', 'n1', '1');
    const following = ctl(2, 'vm', 'migrate', 'web2', '--to', 'n2');
    const id = (await eventually('the migration of web2 started', SETTLE_MS, async () => (await cluster.admin(0, (c) => c.migration.list(['web2'])))[0])).id;
    // n1's stop takes SLOW_MS: the migration holds in its transfer phase meanwhile, the source stopping.
    await phase(1, id, 'transfer');
    const cancelled = await cluster.admin(1, (c) => c.migration.cancel({ id, timeout_ms: 0 }));
    expect(cancelled).toMatchObject({ phase: 'rolling-back', reason: 'cancelled by operator (on n2)' });

    const followed = await following;
    expect(followed.code).toBe(1);
    expect(followed.stderr).toContain(`dwcpctl: ${id} rolled-back: cancelled by operator (on n2)`);
    const ended = await status(0, id);
    expect(ended).toMatchObject({ result: 'rolled-back', reason: 'cancelled by operator (on n2)' });
    await runningAt(0, 'web2', 'n1', '1');
    await oneRunningCopy(2, 'web2', 'n1');
    await cluster.daemon(1).waitForLog((l) => l.msg === 'fleet terminated a copy' && l.vm === 'web2' && l.reason === 'migration', "n2 tears down web2's prepared copy");
    // Cancelling what has ended is refused with the log's reason, and dwcpctl shows the rolled-back record.
    expect((await ctl(2, 'migration', 'status', id)).stdout).toMatch(/Result: +rolled-back\nReason: +cancelled by operator \(on n2\)/);
    const again = await ctl(0, 'migration', 'cancel', id);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(`migration_phase: ${id} (web2) already ended rolled-back`);
  }, 120_000);

  it('kill -9 of the target daemon mid-transfer: no cutover to a region that stopped reporting; it rolls back, the log says why, and one copy runs at the end', async () => {
    expect(await create(1, 'web3', 'n1,n3')).toBe('n1');
    await runningAt(0, 'web3', 'n1', '1');
    const id = await startDetached(1, 'web3', 'n3');
    await phase(1, id, 'transfer');
    await cluster.stopNode(2, 'SIGKILL');

    const ended = await endOf(1, id, `${id} ended`, SETTLE_MS);
    expect(ended).toMatchObject({ result: 'rolled-back', reason: expect.stringMatching(/n3\/local has not reported for [\d.]+ s; not cutting over to it/) });
    await cluster.daemon(0).waitForLog((l) => l.msg === 'fleet migration rolling back' && l.migration === id && String(l.reason).includes('not cutting over'), 'n1 logs why it rolls back');
    await runningAt(0, 'web3', 'n1', '1');

    // The target comes back: its prepared copy is stale now and is torn down; one copy runs, at n1.
    await cluster.startNode(2);
    await cluster.daemon(2).waitForLog((l) => l.msg === 'fleet terminated a copy' && l.vm === 'web3' && l.reason === 'migration', "n3 tears down web3's prepared copy");
    await oneRunningCopy(1, 'web3', 'n1');
    expect((await desired(2, 'web3'))?.generation).toBe('1');
  }, 150_000);

  it('a connection cut mid-transfer (the target cuts every peer off, its process alive): no cutover, it rolls back, and once reconnected the target tears its prepared copy down', async () => {
    expect(await create(2, 'web4', 'n1,n2')).toBe('n1');
    await runningAt(0, 'web4', 'n1', '1');
    const watch = watchRunningCopies(2, 'web4');
    const id = await startDetached(2, 'web4', 'n2');
    await phase(2, id, 'transfer');
    await cluster.setIsolated(1, true);

    const ended = await endOf(2, id, `${id} ended`, SETTLE_MS);
    expect(ended).toMatchObject({ result: 'rolled-back', reason: expect.stringMatching(/n2\/local has not reported for [\d.]+ s; not cutting over to it/) });
    await runningAt(0, 'web4', 'n1', '1');

    await cluster.setIsolated(1, false);
    await cluster.daemon(1).waitForLog((l) => l.msg === 'fleet terminated a copy' && l.vm === 'web4' && l.reason === 'migration', "n2 tears down web4's prepared copy once it hears the log again");
    await oneRunningCopy(2, 'web4', 'n1');
    const { max, samples, seen } = await watch.stop();
    expect(samples).toBeGreaterThan(10);
    expect(max, `running copies seen at once: ${seen.join(', ')}`).toBeLessThanOrEqual(1);
  }, 150_000);

  it('kill -9 of the source daemon mid-transfer, then its restart: the coordinator picks the migration up from the recorded phase, and exactly one copy runs at the end, never two', async () => {
    expect(await create(1, 'web5', 'n1,n3')).toBe('n1');
    await runningAt(1, 'web5', 'n1', '1');
    const watch = watchRunningCopies(1, 'web5');
    const id = await startDetached(1, 'web5', 'n3');
    // n1 is stopping its copy (SLOW_MS): the coordinator that started the stop dies with its daemon.
    await phase(1, id, 'transfer');
    await cluster.stopNode(0, 'SIGKILL');
    await cluster.startNode(0);

    const ended = await endOf(1, id, `${id} ended after n1's restart`, SETTLE_MS * 2);
    // Whichever way the restarted coordinator took it on, the outcome is one running copy where the log says.
    expect(['completed', 'rolled-back']).toContain(ended.result);
    const region = ended.result === 'completed' ? 'n3' : 'n1';
    await runningAt(1, 'web5', region, ended.result === 'completed' ? '2' : '1');
    await oneRunningCopy(1, 'web5', region);
    await cluster.daemon(0).waitForLog((l) => l.msg === 'fleet migration ended' && l.migration === id, 'the restarted n1 ends the migration it coordinates');
    const { max, samples, seen } = await watch.stop();
    expect(samples).toBeGreaterThan(10);
    expect(max, `running copies seen at once: ${seen.join(', ')}`).toBeLessThanOrEqual(1);
  }, 240_000);

  it('a failed verification (the target starts the VM later than the bound): the migration ends failed with the reason, the VM stays at the target and runs there, the source copy is gone', async () => {
    // Placement picks the cheaper n1; a first migration brings it to n3 (whose start is instant), whence the failing one leaves.
    expect(await create(0, 'web6', 'n1,n3')).toBe('n1');
    await runningAt(2, 'web6', 'n1', '1');
    const there = await ctl(1, 'vm', 'migrate', 'web6', '--to', 'n3');
    expect(there.code, `${there.stdout}\n${there.stderr}`).toBe(0);
    await runningAt(2, 'web6', 'n3', '2');
    const watch = watchRunningCopies(1, 'web6');
    const run = await ctl(1, 'vm', 'migrate', 'web6', '--to', 'n1');
    expect(run.code, run.stdout).toBe(1);
    const id = (await cluster.admin(2, (c) => c.migration.list(['web6']))).find((m) => m.target_region === 'n1')?.id ?? '';
    const ended = await status(2, id);
    expect(ended).toMatchObject({ result: 'failed', reason: expect.stringMatching(new RegExp(`cut over, but n1/local did not report web6 running within ${VERIFY_FAST_MS / 1000} s \\(its report shows it \\w+\\); its reconciler owns the VM now`)) });
    expect(run.stderr).toContain(`${id} failed: cut over`);
    // The log moved the VM: n1's reconciler owns it and finishes the start; n3 fences its old copy.
    await runningAt(0, 'web6', 'n1', '3');
    await oneRunningCopy(1, 'web6', 'n1');
    const { max, seen } = await watch.stop();
    expect(max, `running copies seen at once: ${seen.join(', ')}`).toBeLessThanOrEqual(1);
  }, 150_000);
});
