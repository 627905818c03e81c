/**
 * The fleet's desired state with real processes: three dwcpd daemons (Raft
 * carries the federation log), each a region with a local provider of
 * declared capacity and its own price:
 *
 *   n1: 4 vCPU at $0.03/vCPU-h, eu      n2: 4 vCPU at $0.01, us      n3: 8 vCPU at $0.02, eu
 *
 * What it proves, through dwcpctl only:
 * - `vm create --placement auto` lands where the score says (the cheapest
 *   region that fits), a constrained one where allowed, and reaches running;
 *   `vm list --desired` agrees from every node;
 * - a full region sends the next VM elsewhere; a VM that fits nowhere is
 *   refused with each region's reason; one larger than every region names
 *   the largest capacity; a bad spec names the field; an unknown region is
 *   an error;
 * - two schedulers racing for the last slot of a region: one wins, the other
 *   is refused with the reason, never both in the full region;
 * - kill -9 of the Raft leader's daemon: a create sent to a survivor
 *   succeeds within 10 s of the new leader and reaches running.
 *
 * No sleeps as synchronisation: log lines are awaited, states polled with a
 * deadline.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FleetDesiredVm } from '../../src/admin/schema.ts';
import { RaftCluster } from './raft-cluster.ts';
import { eventually, type CtlResult } from './harness.ts';
import { localFleetRegion, regionsDeclared } from './fleet-region.ts';

/** From a committed create until its region reports it running, on a loaded 2-core machine. */
const RUNNING_MS = 30_000;

let cluster: RaftCluster;

function ctl(i: number, ...args: string[]): Promise<CtlResult> {
  return cluster.ctl(i, '--timeout', '20s', ...args);
}

async function desired(i: number): Promise<FleetDesiredVm[]> {
  const res = await ctl(i, 'vm', 'list', '--desired', '--json');
  expect(res.stderr, `n${i + 1}: vm list --desired`).toBe('');
  return (JSON.parse(res.stdout) as { vms: FleetDesiredVm[] }).vms;
}

async function create(i: number, name: string, cpu: number, ...extra: string[]): Promise<{ vm: string; region: string; provider: string; generation: string; attempts: number }> {
  const memory = extra.includes('--memory') ? [] : ['--memory', '1GiB'];
  const res = await ctl(i, 'vm', 'create', name, '--cpu', String(cpu), ...memory, '--image', 'base', ...extra, '--json');
  expect(res.stderr, `n${i + 1}: vm create ${name}`).toBe('');
  expect(res.code).toBe(0);
  return JSON.parse(res.stdout) as { vm: string; region: string; provider: string; generation: string; attempts: number };
}

async function running(i: number, name: string): Promise<FleetDesiredVm> {
  try {
    return await eventually(`${name} running (seen from n${i + 1})`, RUNNING_MS, async () => (await desired(i)).find((v) => v.name === name && v.status === 'running'));
  } catch (err) {
    // What the regions' fleet components said, to tell a slow machine from a stuck reconciler.
    const said = cluster.processes.flatMap((d) => d.lines.filter((l) => l.component === 'fleet').slice(-8).map((l) => `${d.node.name}: ${JSON.stringify(l)}`));
    throw new Error(`${(err as Error).message}; desired: ${JSON.stringify(await desired(i).catch(() => null))}\n${said.join('\n')}`);
  }
}

beforeAll(async () => {
  const vcpus = [4, 4, 8];
  const price = [0.03, 0.01, 0.02];
  cluster = await RaftCluster.start('fleetd', 3, {
    extra: (i) => localFleetRegion(i, { vcpus: vcpus[i]!, pricePerVcpuHour: price[i]!, jurisdiction: i === 1 ? 'us' : 'eu' }),
  });
  await regionsDeclared(cluster);
}, 90_000);

afterAll(async () => {
  await cluster?.destroy();
});

describe('fleet desired state, 3 regions', () => {
  it('places on the cheapest region that fits, a constrained VM where allowed, and both reach running; every node agrees', async () => {
    expect(await create(0, 'web1', 2, '--placement', 'auto')).toMatchObject({ vm: 'web1', region: 'n2', provider: 'local', generation: '1' });
    // eu only: n3 ($0.02) beats n1 ($0.03).
    expect(await create(0, 'eu1', 2, '--constraint', 'jurisdiction=eu')).toMatchObject({ region: 'n3' });
    await running(1, 'web1');
    await running(2, 'eu1');
    const views = await Promise.all([0, 1, 2].map(async (i) => (await desired(i)).map((v) => ({ name: v.name, region: v.region, generation: v.generation, power: v.power }))));
    expect(views[1]).toEqual(views[0]);
    expect(views[2]).toEqual(views[0]);
    // The copy carries the fleet's tags: the observed side links it to its desired VM.
    const all = JSON.parse((await ctl(2, 'vm', 'list', '--all', '--json')).stdout) as { vms: { region: string; desired_vm: string | null; state: string }[] };
    expect(all.vms.filter((v) => v.desired_vm === 'web1').map((v) => v.region)).toEqual(['n2']);
  }, 90_000);

  it('sends the next VM elsewhere once the cheapest region is full, and refuses what fits nowhere with every reason', async () => {
    expect(await create(1, 'web2', 2)).toMatchObject({ region: 'n2' });
    // n2 is full (4 of 4 vCPUs): n3 is the cheapest left.
    expect(await create(1, 'web3', 2)).toMatchObject({ region: 'n3' });

    const tooBig = await ctl(0, 'vm', 'create', 'huge', '--cpu', '16', '--memory', '1GiB', '--image', 'base');
    expect(tooBig.code).toBe(1);
    expect(tooBig.stderr).toMatch(/huge not placed \(too_large\).*largest is n3\/local with 8 vCPUs/);

    const nowhere = await ctl(0, 'vm', 'create', 'us2', '--cpu', '2', '--memory', '1GiB', '--image', 'base', '--constraint', 'jurisdiction=us');
    expect(nowhere.code).toBe(1);
    expect(nowhere.stderr).toMatch(/us2 not placed \(no_fit\)/);
    expect(nowhere.stderr).toContain('n2');
    const explained = await ctl(0, 'place', 'us2', '--cpu', '2', '--memory', '1GiB', '--image', 'base', '--constraint', 'jurisdiction=us');
    expect(explained.stdout).toMatch(/n1: excluded by constraint: jurisdiction eu/);
    expect(explained.stdout).toMatch(/n2: excluded by capacity/);
    // Nothing was left behind by the refused creates.
    expect((await desired(0)).map((v) => v.name).sort()).toEqual(['eu1', 'web1', 'web2', 'web3']);
  }, 90_000);

  it('names the field of a bad spec and refuses an unknown region', async () => {
    const bad = await ctl(0, 'vm', 'create', 'tiny', '--cpu', '1', '--memory', '1KiB', '--image', 'base');
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/spec\.memoryBytes: 1024 is too small/);
    const unknown = await ctl(0, 'vm', 'create', 'lost', '--cpu', '1', '--memory', '1GiB', '--image', 'base', '--region', 'atlantis');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/unknown region atlantis/);
  }, 30_000);

  it('two schedulers racing for the last slot of a region: one wins, the other is refused, never both', async () => {
    // n3 holds eu1 and web3 (4 of 8 vCPUs): room for exactly one 4-vCPU VM.
    const [a, b] = await Promise.all([
      ctl(0, 'vm', 'create', 'race-a', '--cpu', '4', '--memory', '1GiB', '--image', 'base', '--region', 'n3', '--json'),
      ctl(1, 'vm', 'create', 'race-b', '--cpu', '4', '--memory', '1GiB', '--image', 'base', '--region', 'n3', '--json'),
    ]);
    const results = [a, b];
    expect(results.filter((r) => r.code === 0)).toHaveLength(1);
    const loser = results.find((r) => r.code !== 0)!;
    expect(loser.stderr).toMatch(/not placed.*(capacity|n3)/);
    const onN3 = (await desired(2)).filter((v) => v.region === 'n3' && !v.deleted);
    expect(onN3.reduce((sum, v) => sum + v.vcpus, 0)).toBeLessThanOrEqual(8);
  }, 60_000);

  it('reports a managed copy with no desired VM as an orphan on every node, and leaves it running', async () => {
    const made = await ctl(0, 'vm', 'create', '--provider', 'local', '--type', 'local.small', '--image', 'base', '--name', 'ghost', '--tag', 'managed-by=dwcp', '--tag', 'dwcp-vm=ghost', '--json');
    expect(made.code, made.stderr).toBe(0);
    const id = (JSON.parse(made.stdout) as { instance: { id: string } }).instance.id;
    for (const i of [1, 2]) {
      await eventually(`n${i + 1} reports the orphan`, RUNNING_MS, async () => {
        const status = JSON.parse((await ctl(i, 'fleet', 'status', '--json')).stdout) as { orphans: { id: string; region: string; state: string }[] };
        return status.orphans.find((o) => o.id === id && o.region === 'n1' && o.state === 'running');
      });
    }
    expect((await ctl(2, 'fleet', 'status')).stdout).toMatch(/Orphans \(managed by dwcp, no desired VM; never deleted by the fleet\):[\s\S]*ghost/);
    // n1's reconciler passes over it: a managed VM placed on n1 after the orphan appeared reaches running there, and the orphan still runs.
    expect(await create(1, 'probe', 1, '--region', 'n1')).toMatchObject({ region: 'n1' });
    await running(0, 'probe');
    const list = JSON.parse((await ctl(0, 'vm', 'list', '--json')).stdout) as { instances: { id: string; state: string }[] };
    expect(list.instances.find((v) => v.id === id)?.state).toBe('running');
  }, 60_000);

  it("marks a VM its provider cannot make failed after the attempts, with the provider's reason, seen from every node", async () => {
    // The ledger has room (20 GiB of n1's 32), but no local instance type has 20 GiB.
    expect(await create(1, 'bigmem', 1, '--region', 'n1', '--memory', '20GiB')).toMatchObject({ region: 'n1' });
    for (const i of [0, 1, 2]) {
      const vm = await eventually(`n${i + 1} sees bigmem failed`, RUNNING_MS, async () => (await desired(i)).find((v) => v.name === 'bigmem' && v.status === 'failed'));
      expect(vm.reason).toMatch(/no instance type of provider local has 1 vCPU and 20480 MiB/);
    }
    expect((await ctl(2, 'vm', 'list', '--desired')).stdout).toMatch(/bigmem +n1 .* failed: no instance type/);
  }, 60_000);

  it('a create sent to a survivor after kill -9 of the leader succeeds within 10 s of a new leader and reaches running', async () => {
    // Free a slot on n2 (delete gives the capacity back in the log at once): n1 and n2 have room, n3 is full.
    expect((await ctl(0, 'vm', 'terminate', 'web2')).code).toBe(0);
    const leader = await cluster.waitForLeader();
    await cluster.stopNode(leader.index, 'SIGKILL');
    const survivors = [0, 1, 2].filter((i) => i !== leader.index);
    await cluster.waitForLeader(leader.term, survivors);
    const started = performance.now();
    // Pinned to a survivor with room (the dead region still holds its declared capacity in the log, but cannot run it), sent through the other survivor.
    const region = survivors.find((i) => i !== 2)!;
    const sender = survivors.find((i) => i !== region)!;
    const target = `n${region + 1}`;
    const placed = await create(sender, 'after-kill', 1, '--region', target);
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(placed.region).toBe(target);
    await running(region, 'after-kill');
  }, 90_000);
});
