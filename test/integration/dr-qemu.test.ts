/**
 * DR backups and a failover from one, with real processes: three dwcpd
 * daemons (Raft carries the federation log); n1 and n2 each have a qemu
 * provider (TCG), n3 only a local one (the quorum). One protected guest
 * (the test guest with dwcp.disk_marker=1: it writes "dwcp-marker N" to the
 * start of its disk with every tick, synced, and at boot prints what it
 * finds there) runs in one qemu region; the other is its DR region.
 *
 * What it proves, through dwcpctl, the metrics and the guests themselves:
 * - backups replicate: `dr status` at the DR region shows the last backup
 *   and the RPO under its 10 s target; dwcp_dr_rpo_seconds{vm} there is
 *   finite and below the target; later backups go as deltas;
 * - kill -9 of the primary's daemon and its QEMU: the VM runs at its DR
 *   region at generation 2 from the backup the failover recorded (dr status
 *   names it); the restored guest finds on its disk a marker its primary
 *   wrote, and that marker is no older than the RPO when the primary died
 *   (guest time: the primary's last tick minus the marker's tick).
 *
 * No sleeps as synchronisation: states, log lines and files are awaited
 * with generous deadlines.
 */
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DrVmStatusInfo } from '../../src/admin/schema.ts';
import { processesNaming } from '../../src/cloud/qemu/procfs.ts';
import { GUEST_IMAGE, guestImagesDir } from '../support/qemu.ts';
import { fleetCtl } from './fleet-ctl.ts';
import { RaftCluster } from './raft-cluster.ts';
import { eventually, metricValue } from './harness.ts';

/** From a command to the state it leads to, on a loaded 2-core machine with TCG guests. */
const SETTLE_MS = 180_000;
const RPO_MS = 10_000;
const IMAGE = 'marker';

let cluster: RaftCluster;
let root: string;
let primary = 0;
let dr = 1;

const { ctl, json, runningAt } = fleetCtl(() => cluster, SETTLE_MS);
const drStatus = async (i: number): Promise<DrVmStatusInfo | undefined> => (await cluster.admin(i, (c) => c.dr.status(['web1']))).vms[0];

/** The QEMU processes of node i (their command lines name its data directory; not the shell that waits for each). */
const qemus = (i: number): number[] => processesNaming(`${cluster.nodes[i]?.dir ?? '/nonexistent'}/`).filter((p) => (p.cmdline.split(' ')[0] ?? '').includes('qemu-system')).map((p) => p.pid);

/** The serial logs of node i's guests. */
async function serialLogs(i: number): Promise<string[]> {
  const dir = join(cluster.nodes[i]?.dir ?? '', 'qemu', 'vms');
  const ids = await readdir(dir).catch(() => [] as string[]);
  return Promise.all(ids.map((id) => readFile(join(dir, id, 'serial.log'), 'utf8').catch(() => '')));
}

/** Tick lines of a serial log: tick number → guest ms. */
function ticks(text: string): Map<number, number> {
  return new Map([...text.matchAll(/^tick (\d+) (\d+)$/gm)].map((m) => [Number(m[1]), Number(m[2])]));
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'dwcp-drq-'));
  const built = join(await guestImagesDir(), GUEST_IMAGE);
  const images = join(root, 'images');
  await cp(built, join(images, IMAGE), { recursive: true });
  const manifest = JSON.parse(await readFile(join(built, 'image.json'), 'utf8')) as { cmdline: string };
  await writeFile(join(images, IMAGE, 'image.json'), JSON.stringify({ ...manifest, cmdline: `${manifest.cmdline} dwcp.disk_marker=1` }));
  const qemu = (i: number) => ({ kind: 'qemu', region: `dc${i + 1}`, accel: 'tcg', imageDir: images, capacity: { vcpus: 2, memoryGiB: 2, diskGiB: 20 }, inventoryIntervalMs: 500, utilisationIntervalMs: 0, stopTimeoutMs: 60_000 });
  cluster = await RaftCluster.start('drq', 3, {
    extra: (i) => ({
      clouds: { providers: i < 2 ? [qemu(i)] : [{ kind: 'local', region: 'dc3', capacity: { vcpus: 8, memoryGiB: 16, diskGiB: 100 }, inventoryIntervalMs: 500 }] },
      fleet: { publishIntervalMs: 250, staleAfterMs: 1_500, reconcileIntervalMs: 500, backoffBaseMs: 100, backoffCapMs: 1_000 },
      dr: { checkIntervalMs: 500, failAfterChecks: 3, fenceAfterMs: 1_500, fenceHoldMs: 3_500, stabilisationMs: 600_000, retryMs: 1_000 },
    }),
  });
  await Promise.all([0, 1, 2].map((i) => cluster.daemon(i).waitForLog((l) => l.msg === 'fleet region declared', `n${i + 1} declares its region`)));
}, 300_000);

afterAll(async () => {
  const pids = cluster === undefined ? [] : [0, 1].flatMap((i) => qemus(i));
  await cluster?.destroy();
  // Guests outlive their daemons by design: every QEMU the test started goes with it.
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  if (root !== undefined) await rm(root, { recursive: true, force: true });
});

describe('DR backups of a qemu guest, failover from the newest (real daemons, TCG)', () => {
  it('backups replicate to the DR region as deltas; its RPO metric is finite and under the target', async () => {
    const created = await json<{ region: string }>(2, 'vm', 'create', 'web1', '--cpu', '1', '--memory', '256MiB', '--image', IMAGE, '--constraint', 'region=n1,n2');
    primary = created.region === 'n1' ? 0 : 1;
    dr = 1 - primary;
    await runningAt(2, 'web1', `n${primary + 1}`, '1');
    const protect = await ctl(2, 'vm', 'protect', 'web1', '--dr-region', `n${dr + 1}`, '--rpo', '10s', '--rto', '3m', '--failback', 'manual');
    expect(protect.code, protect.stderr).toBe(0);

    // Three backups committed at the DR region, the later ones as deltas against the one before.
    const committed = await eventually('three backups committed at the DR region', SETTLE_MS, async () => {
      const lines = cluster.daemon(primary).lines.filter((l) => l.msg === 'DR backup committed at the DR region' && l.vm === 'web1');
      return lines.length >= 3 ? lines : undefined;
    }, 250);
    expect(committed.slice(1).some((l) => l.kind === 'delta')).toBe(true);
    const s = await eventually('dr status at the DR region shows a backup within the RPO', SETTLE_MS, async () => {
      const found = await drStatus(dr);
      return found?.last_backup_at !== null && found?.rpo_over === false ? found : undefined;
    }, 250);
    expect(Number(s.rpo_now_ms)).toBeLessThan(RPO_MS);
    const rpo = metricValue(await cluster.daemon(dr).scrape(), 'dwcp_dr_rpo_seconds', { vm: 'web1' });
    expect(rpo).toBeDefined();
    expect(Number.isFinite(rpo)).toBe(true);
    expect(rpo).toBeLessThan(RPO_MS / 1000);
    expect(metricValue(await cluster.daemon(dr).scrape(), 'dwcp_dr_rpo_target_seconds', { vm: 'web1' })).toBe(RPO_MS / 1000);
    expect(metricValue(await cluster.daemon(primary).scrape(), 'dwcp_dr_backups_total', { result: 'ok' })).toBeGreaterThanOrEqual(3);
  }, 400_000);

  it('kill -9 of the primary daemon and its guest: the VM runs at its DR region from a backup no older than the RPO, proven by the marker on its disk', async () => {
    // The guest has written markers for a while (and backups of them committed) before the region is lost.
    await eventually('the primary guest ticks', SETTLE_MS, async () => ((await serialLogs(primary)).some((t) => ticks(t).size >= 50) ? true : undefined), 250);
    const guests = qemus(primary);
    expect(guests).toHaveLength(1);
    await cluster.stopNode(primary, 'SIGKILL');
    for (const pid of guests) process.kill(pid, 'SIGKILL');
    const killedAt = Date.now();
    await eventually('the primary QEMU is gone', 30_000, async () => (qemus(primary).length === 0 ? true : undefined));
    const primaryTicks = ticks((await serialLogs(primary)).find((t) => ticks(t).size > 0) ?? '');
    const lastTick = Math.max(...primaryTicks.keys());

    await runningAt(2, 'web1', `n${dr + 1}`, '2');
    const s = await eventually('dr status names the restored backup', SETTLE_MS, async () => {
      const found = await drStatus(dr);
      return found?.state === 'failed-over' && found.restored_backup !== null ? found : undefined;
    });
    const restoredAt = Date.parse(s.restored_backup_at ?? '');
    expect(killedAt - restoredAt).toBeLessThanOrEqual(RPO_MS);
    expect(cluster.daemon(dr).lines.some((l) => l.msg === 'fleet VM created from its DR backup' && l.vm === 'web1' && l.backup === s.restored_backup)).toBe(true);

    // The restored guest read its disk: the marker its primary wrote, no older than the RPO at the loss (guest time).
    const marker = await eventually('the restored guest prints its disk marker', SETTLE_MS, async () => {
      for (const text of await serialLogs(dr)) {
        const m = /^dwcp-guest: disk marker: (.*)$/m.exec(text);
        if (m !== null) return m[1] as string;
      }
      return undefined;
    }, 250);
    const n = /^dwcp-marker (\d+)$/.exec(marker);
    expect(n, `the restored disk holds ${JSON.stringify(marker)}`).not.toBeNull();
    const tick = Number(n?.[1]);
    expect(primaryTicks.has(tick)).toBe(true);
    const lostMs = (primaryTicks.get(lastTick) ?? 0) - (primaryTicks.get(tick) ?? 0);
    console.log(`DR: web1 failed over n${primary + 1} → n${dr + 1} from ${s.restored_backup} (taken ${killedAt - restoredAt} ms before the kill, data loss ${s.data_loss_ms} ms by dr status); the disk held marker ${tick}, ${lastTick - tick} ticks (${lostMs} ms guest time) before the primary's last`);
    expect(lostMs).toBeLessThanOrEqual(RPO_MS);
    expect(qemus(dr)).toHaveLength(1);
  }, 400_000);
});
