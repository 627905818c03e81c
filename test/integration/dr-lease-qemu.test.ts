/**
 * The per-guest lease with real processes: three dwcpd daemons (Raft carries
 * the federation log); n1 and n2 each have a qemu provider (TCG), n3 only a
 * local one (the quorum). One protected guest (the test guest, ticking on
 * its serial console every 100 ms) runs in one qemu region and fails over
 * to the other. DR timings are shortened: checks every 500 ms, a region
 * failed after 20 (10 s, longer than a daemon restart, so the restart case
 * is not a failover), a cut-off region fences itself after 6 s (so does a
 * restarted daemon that has not heard the log by then), the lease 9 s, the
 * DR copy held 10 s (above the lease plus its watchdog's 0.9 s poll, as the
 * config requires).
 *
 * What it proves, with the processes themselves as witnesses:
 * - the guest's lease is renewed while its daemon hears the log; its QMP
 *   socket stays 0600; its watchdog is a shell, a few MiB at most;
 * - `dr test`: an isolated copy boots at the DR region (a second QEMU
 *   there, torn down after), the production guest untouched;
 * - kill -9 of the daemon and an immediate restart (inside the lease): the
 *   same QEMU runs on (re-adopted), the lease is renewed again, no kill;
 * - kill -9 of the daemon alone (its guest left running): the watchdog kills
 *   QEMU once the lease lapses (exit status 137, the note), and the last
 *   tick of its serial log is older than the start of the DR copy's QEMU:
 *   the two guests never ran at the same time; the DR copy then ticks;
 * - the returning daemon terminates its stale copy, never starting it.
 *
 * No sleeps as synchronisation: states, files and log lines are awaited.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DrTestResponse } from '../../src/admin/schema.ts';
import { leaseFilesOf } from '../../src/cloud/qemu/guest-lease.ts';
import { readProcess } from '../../src/cloud/qemu/procfs.ts';
import { destroyWithGuests, GUEST_IMAGE, guestImagesDir, qemuProcesses, serialTicks } from '../support/qemu.ts';
import { fleetCtl } from './fleet-ctl.ts';
import { eventually } from './harness.ts';
import { RaftCluster } from './raft-cluster.ts';

/** From a command to the state it leads to, on a loaded 2-core machine with TCG guests. */
const SETTLE_MS = 150_000;
const LEASE_MS = 9_000;

let cluster: RaftCluster;
let primary = 0;
let dr = 1;
let guest = '';

const { ctl, json, runningAt } = fleetCtl(() => cluster, SETTLE_MS);
const vmDir = (i: number, id: string): string => join(cluster.nodes[i]?.dir ?? '', 'qemu', 'vms', id);
const deadlineOf = async (i: number, id: string): Promise<number | null> => {
  const text = await readFile(leaseFilesOf(vmDir(i, id)).lease, 'utf8').catch(() => null);
  return text === null ? null : Number(text.split(' ', 1)[0]);
};

/** The one QEMU under node i's data directory. */
async function oneQemu(i: number): Promise<{ id: string; pid: number }> {
  return eventually(`one QEMU at n${i + 1}`, SETTLE_MS, async () => {
    const found = await qemuProcesses(cluster.nodes[i]?.dir ?? '/nonexistent');
    return found.length === 1 ? found[0] : undefined;
  }, 250);
}

/** Resident memory of the guest's shell and its watchdog subshell (kB). */
async function shellRss(i: number, id: string): Promise<number[]> {
  const exit = join(vmDir(i, id), 'exit-status');
  const out: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const info = await readProcess(Number(entry)).catch(() => null);
    if (info === null || !info.argv.includes('dwcp-qemu') || !info.argv.includes(exit)) continue;
    const status = await readFile(`/proc/${entry}/status`, 'utf8').catch(() => '');
    out.push(Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0));
  }
  return out;
}

beforeAll(async () => {
  const images = join(await guestImagesDir());
  const qemu = (i: number) => ({ kind: 'qemu', region: `dc${i + 1}`, binary: 'qemu-system-x86_64', accel: 'tcg', imageDir: images, capacity: { vcpus: 2, memoryGiB: 2, diskGiB: 20 }, inventoryIntervalMs: 500, utilisationIntervalMs: 0 });
  cluster = await RaftCluster.start('drq', 3, {
    extra: (i) => ({
      clouds: { providers: i < 2 ? [qemu(i)] : [{ kind: 'local', region: 'dc3', capacity: { vcpus: 8, memoryGiB: 16, diskGiB: 100 }, inventoryIntervalMs: 500 }] },
      fleet: { publishIntervalMs: 250, staleAfterMs: 1_500, reconcileIntervalMs: 500, backoffBaseMs: 100, backoffCapMs: 1_000 },
      dr: { checkIntervalMs: 500, failAfterChecks: 20, fenceAfterMs: 6_000, fenceHoldMs: 10_000, leaseMs: LEASE_MS, retryMs: 1_000 },
    }),
  });
  await Promise.all([0, 1, 2].map((i) => cluster.daemon(i).waitForLog((l) => l.msg === 'fleet region declared', `n${i + 1} declares its region`)));
}, 300_000);

afterAll(async () => {
  await destroyWithGuests(cluster);
});

describe('the per-guest lease of a protected qemu guest (real daemons, TCG)', () => {
  it('protected: its lease is renewed; QMP stays 0600; the watchdog is a small shell', async () => {
    const created = await json<{ region: string }>(2, 'vm', 'create', 'web1', '--cpu', '1', '--memory', '256MiB', '--image', GUEST_IMAGE, '--constraint', 'region=n1,n2');
    primary = created.region === 'n1' ? 0 : 1;
    dr = 1 - primary;
    await runningAt(2, 'web1', `n${primary + 1}`, '1');
    guest = (await oneQemu(primary)).id;
    const protect = await ctl(2, 'vm', 'protect', 'web1', '--dr-region', `n${dr + 1}`, '--rto', '5m', '--failback', 'manual');
    expect(protect.code, protect.stderr).toBe(0);
    const first = await eventually('the guest holds a lease', SETTLE_MS, async () => (await deadlineOf(primary, guest)) ?? undefined, 250);
    await eventually('the lease is renewed', SETTLE_MS, async () => (((await deadlineOf(primary, guest)) ?? 0) > first ? true : undefined), 250);
    expect((await stat(join(vmDir(primary, guest), 'qmp.sock'))).mode & 0o777).toBe(0o600);
    expect((await stat(leaseFilesOf(vmDir(primary, guest)).lease)).mode & 0o777).toBe(0o600);
    const rss = await shellRss(primary, guest);
    expect(rss).toHaveLength(2);
    for (const kb of rss) expect(kb).toBeLessThan(4_096);
    console.log(`lease watchdog: guest shell and watchdog resident ${rss.join(' kB, ')} kB`);
  }, 300_000);

  it('dr test: an isolated qemu copy boots at the DR region and is torn down; the production guest is the same QEMU throughout', async () => {
    const before = await oneQemu(primary);
    const t = await json<DrTestResponse>(2, 'dr', 'test', 'web1', '--timeout', '5m');
    expect(t).toMatchObject({ vm: 'web1', region: `n${dr + 1}`, provider: 'qemu', torn_down: true, production_untouched: true });
    console.log(`DR test (qemu, TCG): ${t.test_vm} running at n${dr + 1} ${t.rto_ms} ms after the request`);
    await eventually(`no QEMU left at n${dr + 1}`, SETTLE_MS, async () => ((await qemuProcesses(cluster.nodes[dr]?.dir ?? '')).length === 0 ? true : undefined), 250);
    expect(await oneQemu(primary)).toEqual(before);
  }, 300_000);

  it('kill -9 of the daemon and a restart inside the lease: the same QEMU runs on and its lease is renewed again', async () => {
    const before = await oneQemu(primary);
    const ticking = (await serialTicks(join(vmDir(primary, guest), 'serial.log'))).length;
    await cluster.stopNode(primary, 'SIGKILL');
    const held = (await deadlineOf(primary, guest)) ?? 0;
    await cluster.startNode(primary);
    await cluster.daemon(primary).waitForLog((l) => l.msg === 'qemu guest re-adopted' && l.vm === guest, 're-adopts the guest');
    await eventually('the restarted daemon renews the lease', SETTLE_MS, async () => (((await deadlineOf(primary, guest)) ?? 0) > held ? true : undefined), 250);
    const after = await oneQemu(primary);
    if (after.pid !== before.pid) console.log(cluster.daemon(primary).lines.filter((l) => /qemu|fence|DR|lease|fleet/.test(String(l.msg))).map((l) => JSON.stringify(l)).join('\n'));
    expect(after).toEqual(before);
    await expect(stat(leaseFilesOf(vmDir(primary, guest)).lapsed)).rejects.toThrow();
    await eventually('the guest ticks on', SETTLE_MS, async () => ((await serialTicks(join(vmDir(primary, guest), 'serial.log'))).length > ticking + 10 ? true : undefined), 250);
  }, 300_000);

  it('kill -9 of the daemon alone: the watchdog kills the guest when its lease lapses, before the DR copy starts; the returning daemon never starts its stale copy', async () => {
    const files = leaseFilesOf(vmDir(primary, guest));
    await cluster.stopNode(primary, 'SIGKILL');
    const killedAt = Date.now();
    await eventually('the watchdog kills the orphaned guest', SETTLE_MS, async () => ((await qemuProcesses(cluster.nodes[primary]?.dir ?? '')).length === 0 ? true : undefined), 100);
    const lapsedAfterMs = Date.now() - killedAt;
    expect(await readFile(files.lapsed, 'utf8')).toMatch(/^lease lapsed: deadline \d+/);
    expect((await readFile(join(vmDir(primary, guest), 'exit-status'), 'utf8')).trim()).toBe('137');
    expect(lapsedAfterMs).toBeLessThan(LEASE_MS + 5_000);
    const lastTickAt = (await stat(join(vmDir(primary, guest), 'serial.log'))).mtimeMs;

    await runningAt(2, 'web1', `n${dr + 1}`, '2');
    const copy = await oneQemu(dr);
    const record = JSON.parse(await readFile(join(vmDir(dr, copy.id), 'vm.json'), 'utf8')) as { launchTime: number };
    // The two guests never ran at once: the lost one's last tick is older than the DR copy's QEMU.
    expect(lastTickAt).toBeLessThan(record.launchTime);
    await eventually('the DR copy ticks', SETTLE_MS, async () => ((await serialTicks(join(vmDir(dr, copy.id), 'serial.log'))).length >= 5 ? true : undefined), 250);
    console.log(`lease watchdog: guest killed ${lapsedAfterMs} ms after its daemon (lease ${LEASE_MS} ms); its last tick ${Math.round(record.launchTime - lastTickAt)} ms before the DR copy's QEMU started`);

    // The lost region returns: its stale copy (already killed) is terminated, never started.
    await cluster.startNode(primary);
    await cluster.daemon(primary).waitForLog((l) => l.msg === 'fleet terminated a copy' && l.vm === 'web1', 'terminates its stale copy');
    expect(cluster.daemon(primary).lines.some((l) => l.msg === 'qemu guest started')).toBe(false);
    expect(await qemuProcesses(cluster.nodes[primary]?.dir ?? '')).toEqual([]);
  }, 300_000);
});
