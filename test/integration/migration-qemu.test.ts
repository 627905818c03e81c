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
 * - faults: kill -9 of the target daemon during a live transfer, kill -9 of
 *   the source daemon during one (then its restart), a cancel during one,
 *   and a destination QEMU that fails to start, roll back: the
 *   source's QEMU runs on (never paused for good), the target's QEMU is
 *   gone, its disk and the reservation too.
 *
 * QEMU processes are found by their command line (`-name guest=<id>` under
 * each daemon's data directory), so "exactly one running" is the OS's word.
 */
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationInfo } from '../../src/admin/schema.ts';
import { DEFAULT_MULTIFD } from '../../src/cloud/qemu/migration-qmp.ts';
import { destroyWithGuests, GUEST_IMAGE, guestImagesDir, qemuProcesses, serialTicks } from '../support/qemu.ts';
import { fleetCtl } from './fleet-ctl.ts';
import { RaftCluster } from './raft-cluster.ts';
import { eventually, metricValue, type CtlResult } from './harness.ts';

/** From a command to the state it leads to, on a loaded 2-core machine with TCG guests. */
const SETTLE_MS = 120_000;

let cluster: RaftCluster;

const { ctl, json, desired, runningAt } = fleetCtl(() => cluster, SETTLE_MS);

async function qemus(i: number): Promise<string[]> {
  return (await qemuProcesses(cluster.nodes[i]?.dir ?? '/nonexistent')).map((q) => q.id);
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
  for (const id of await readdir(dir).catch(() => [] as string[])) {
    const files = await readdir(join(dir, id)).catch(() => [] as string[]);
    if (files.includes('disk.qcow2')) out.push(id);
  }
  return out;
}

/** Tick lines of node i's guest's serial log: [n, guest ms]. */
function ticks(i: number, id: string): Promise<[number, number][]> {
  return serialTicks(join(cluster.nodes[i]?.dir ?? '', 'qemu', 'vms', id, 'serial.log'));
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

/** The test guest as `tiny`, and as `busy`: the same guest dirtying its memory (a live migration of it with a 1 ms downtime limit never converges). */
async function testImages(root: string): Promise<string> {
  const built = join(await guestImagesDir(), GUEST_IMAGE);
  const dir = join(root, 'images');
  await cp(built, join(dir, GUEST_IMAGE), { recursive: true });
  await cp(built, join(dir, 'busy'), { recursive: true });
  const manifest = JSON.parse(await readFile(join(built, 'image.json'), 'utf8')) as { cmdline: string };
  await writeFile(join(dir, 'busy', 'image.json'), JSON.stringify({ ...manifest, cmdline: `${manifest.cmdline} dwcp.dirty_mib_s=${BUSY_DIRTY_MIB_S}` }));
  return dir;
}

const BUSY_DIRTY_MIB_S = 20;
const FAIL_INCOMING = 'fail-incoming';

/** Where the test's files are: every QEMU under it is the test's. */
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'dwcp-migq-images-'));
  const images = await testImages(root);
  // QEMU through a wrapper that refuses to start a migration's destination while the test says so (the file FAIL_INCOMING exists).
  const wrapper = join(root, 'qemu-wrapper.sh');
  await writeFile(wrapper, `#!/bin/sh\ncase " $* " in *" -incoming "*) if [ -e ${join(root, FAIL_INCOMING)} ]; then echo "qemu-wrapper: refusing a destination QEMU (test)" >&2; exit 1; fi;; esac\nexec qemu-system-x86_64 "$@"\n`, { mode: 0o755 });
  const qemu = (i: number) => ({ kind: 'qemu', region: `dc${i + 1}`, binary: wrapper, accel: 'tcg', imageDir: images, capacity: { vcpus: 2, memoryGiB: 2, diskGiB: 20 }, inventoryIntervalMs: 500, utilisationIntervalMs: 0, stopTimeoutMs: 60_000 });
  cluster = await RaftCluster.start('migq', 3, {
    extra: (i) => ({
      clouds: { providers: i < 2 ? [qemu(i)] : [{ kind: 'local', region: 'dc3', capacity: { vcpus: 8, memoryGiB: 16, diskGiB: 100 }, inventoryIntervalMs: 500 }] },
      fleet: {
        publishIntervalMs: 250,
        staleAfterMs: 1_500,
        reconcileIntervalMs: 500,
        backoffBaseMs: 100,
        backoffCapMs: 1_000,
        // A live migration that does not converge holds in its transfer (the faults act on it there): auto-converge never arms.
        migration: { prepareTimeoutMs: 30_000, verifyTimeoutMs: 60_000, cleanupTimeoutMs: 120_000, transferIdleTimeoutMs: 60_000, autoConvergeAfterRounds: 1_000, convergeTimeoutMs: 600_000 },
      },
    }),
  });
  await Promise.all([0, 1, 2].map((i) => cluster.daemon(i).waitForLog((l) => l.msg === 'fleet region declared', `n${i + 1} declares its region`)));
}, 300_000);

afterAll(async () => {
  await destroyWithGuests(cluster);
  await rm(root, { recursive: true, force: true });
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
    // QEMU's memory stream came as its main connection and the default multifd ones, each carried as a state stream of its own.
    const opens = cluster.daemon(to).lines.filter((l) => l.msg === 'migration channel open' && l.migration === id && l.channel === 'state');
    expect(opens).toHaveLength(1 + DEFAULT_MULTIFD.channels);
    const m = await json<MigrationInfo>(2, 'migration', 'status', id);
    expect(m).toMatchObject({ result: 'completed', mode: 'live' });
    expect(Number(m.downtime_ms)).toBeGreaterThanOrEqual(0);
    expect(Number(m.bytes)).toBeGreaterThan(1024 * 1024);
    // The source's disk is gone with its QEMU (fenced: terminated), the target's holds the guest.
    await eventually('the source holds no disk of web1', SETTLE_MS, async () => ((await disksAt(from)).length === 0 ? true : undefined), 250);
    const scraped = await cluster.daemon(from).scrape();
    expect(metricValue(scraped, 'dwcp_migrations_total', { mode: 'live', result: 'completed' })).toBe(1);
  }, 600_000);

  it('warm, back again: the disk moves as blob deltas, the guest boots at the destination, the old QEMU and disk are gone', async () => {
    const at = (await desired(2, 'web1'))?.region;
    const from = at === 'n1' ? 0 : 1;
    const to = 1 - from;
    const { id, run } = await migrate(2, 'web1', '--to', `n${to + 1}`, '--mode', 'warm');
    const done = await run;
    expect(done.code, `${done.stdout}\n${done.stderr}`).toBe(0);
    await runningAt(2, 'web1', `n${to + 1}`, '3');
    const target = await oneQemuAt(to);
    // A warm migration restarts the guest: it boots at the target.
    await eventually('the guest boots and ticks at the target', SETTLE_MS, async () => ((await ticks(to, target)).length >= 3 ? true : undefined), 250);
    const m = await json<MigrationInfo>(2, 'migration', 'status', id);
    expect(m).toMatchObject({ result: 'completed', mode: 'warm' });
    expect(Number(m.rounds)).toBeGreaterThanOrEqual(1);
    await eventually('the source holds no disk of web1', SETTLE_MS, async () => ((await disksAt(from)).length === 0 ? true : undefined), 250);
    // web1 goes: the fault runs below need the host's CPU for their own guest.
    expect((await ctl(2, 'vm', 'terminate', 'web1')).code).toBe(0);
    await eventually('no QEMU left', SETTLE_MS, async () => ((await qemus(0)).length + (await qemus(1)).length === 0 ? true : undefined), 250);
  }, 600_000);

  /** web2 (the busy guest) running at its source: the index of its region, and its QEMU's guest id. */
  async function busyGuest(): Promise<{ from: number; to: number; source: string }> {
    let vm = await desired(2, 'web2');
    if (vm === undefined) {
      await json(0, 'vm', 'create', 'web2', '--cpu', '1', '--memory', '256MiB', '--image', 'busy', '--constraint', 'region=n1,n2');
      vm = await eventually('web2 placed', SETTLE_MS, async () => ((await desired(2, 'web2'))?.region === '' ? undefined : desired(2, 'web2')), 250);
    }
    const from = vm?.region === 'n1' ? 0 : 1;
    await runningAt(2, 'web2', `n${from + 1}`, vm?.generation ?? '1');
    return { from, to: 1 - from, source: await oneQemuAt(from) };
  }

  /** A live migration of web2 that holds in its transfer (1 ms downtime limit, the guest dirtying its memory), its memory stream flowing. */
  async function liveHolding(from: number, to: number): Promise<{ id: string; run: Promise<CtlResult> }> {
    const after = cluster.daemon(from).lines.length;
    const started = await migrate(2, 'web2', '--to', `n${to + 1}`, '--mode', 'live', '--max-downtime', '1ms');
    await cluster.daemon(from).waitForLog((l) => l.msg === 'qemu migration: disk mirrored, migrating memory' && l.migration === started.id, `n${from + 1} migrates web2's memory`, after);
    return started;
  }

  /** After a rollback: one QEMU, at the source, the same one, running (not left paused); with `teardown`, nothing of web2 left at the target. */
  async function rolledBack(id: string, from: number, to: number, source: string, reason: RegExp, teardown: boolean): Promise<void> {
    const ended = await eventually(`${id} ended`, SETTLE_MS, async () => {
      const m = await json<MigrationInfo>(2, 'migration', 'status', id);
      return m.result === null ? undefined : m;
    }, 250);
    expect(ended).toMatchObject({ result: 'rolled-back', reason: expect.stringMatching(reason) });
    // The source's QEMU is the same process; the target's may wait for its daemon to tear it down.
    if (teardown) expect(await oneQemuAt(from)).toBe(source);
    else expect(await qemus(from)).toEqual([source]);
    await runningAt(2, 'web2', `n${from + 1}`, ended.source_generation);
    const ticking = (await ticks(from, source)).length;
    await eventually('the source guest ticks on', SETTLE_MS, async () => ((await ticks(from, source)).length >= ticking + 5 ? true : undefined), 250);
    if (teardown) await eventually(`no QEMU or disk of web2 left at n${to + 1}`, SETTLE_MS, async () => ((await disksAt(to)).length === 0 && (await qemus(to)).length === 0 ? true : undefined), 250);
  }

  it('kill -9 of the target daemon during a live transfer: the stream breaks, the migration rolls back, the source QEMU runs on; the target tears its copy down when it returns', async () => {
    const { from, to, source } = await busyGuest();
    const { id, run } = await liveHolding(from, to);
    await cluster.stopNode(to, 'SIGKILL');
    // Whatever the target's destination QEMU had received, it and its disk wait for its daemon.
    await rolledBack(id, from, to, source, /live transfer of web2/, false);
    expect((await run).code).toBe(1);
    await cluster.startNode(to);
    await rolledBack(id, from, to, source, /live transfer of web2/, true);
  }, 600_000);

  it('kill -9 of the source daemon during a live transfer, then its restart: QEMU\'s migration fails with its relay, the guest never stops, the restarted daemon adopts the same QEMU and its coordinator picks the migration up; it ends rolled back, nothing left at the target', async () => {
    const { from, to, source } = await busyGuest();
    const { id, run } = await liveHolding(from, to);
    await cluster.stopNode(from, 'SIGKILL');
    // The guest's QEMU is detached from its daemon: it outlives it, and its migration fails with the relay it wrote to.
    expect(await qemus(from)).toEqual([source]);
    const ticking = (await ticks(from, source)).length;
    await eventually('the source guest ticks on without its daemon', SETTLE_MS, async () => ((await ticks(from, source)).length >= ticking + 5 ? true : undefined), 250);
    const restarted = await cluster.startNode(from);
    // From the recorded phase (transfer) the restarted coordinator starts the live step again (the source serves), or
    // rolls back if that step fails at once; a live step that holds again is cancelled.
    const again = await Promise.race([
      restarted.waitForLog((l) => l.msg === 'qemu migration: disk mirrored, migrating memory' && l.migration === id, `the restarted n${from + 1} migrates web2's memory again`).then(() => 'holding' as const),
      eventually(`${id} ended`, SETTLE_MS, async () => ((await json<MigrationInfo>(2, 'migration', 'status', id)).result === null ? undefined : ('ended' as const)), 250),
    ]);
    if (again === 'holding') expect(await cluster.admin(2, (c) => c.migration.cancel({ id, timeout_ms: 0 }))).toMatchObject({ phase: 'rolling-back' });
    await rolledBack(id, from, to, source, again === 'holding' ? /cancelled by operator/ : /live transfer of web2/, true);
    expect((await run).code).toBe(1);
  }, 600_000);

  it('cancel during a live transfer: QEMU\'s migration is cancelled, the source runs on, the target\'s QEMU and disk are gone', async () => {
    const { from, to, source } = await busyGuest();
    const { id, run } = await liveHolding(from, to);
    const cancelled = await cluster.admin(2, (c) => c.migration.cancel({ id, timeout_ms: 0 }));
    expect(cancelled).toMatchObject({ phase: 'rolling-back' });
    await rolledBack(id, from, to, source, /cancelled by operator/, true);
    expect((await run).code).toBe(1);
  }, 600_000);

  it('the target QEMU fails to start: nothing is prepared, the migration rolls back, the source runs on, the target keeps no QEMU or disk', async () => {
    const { from, to, source } = await busyGuest();
    await writeFile(join(root, FAIL_INCOMING), '');
    try {
      const { id, run } = await migrate(2, 'web2', '--to', `n${to + 1}`, '--mode', 'live');
      // Whichever the coordinator saw first, all roll back without waiting out the prepare timeout: the target gives up its
      // creates and refuses the migration with QEMU's reason; the create under way, then no destination for its transfer; or the
      // failed copy reported gone.
      await rolledBack(id, from, to, source, /could not prepare a copy of web2: .*qemu-wrapper: refusing a destination QEMU|no qemu VM here receives migration|the incoming copy at n\d is gone/, true);
      expect((await run).code).toBe(1);
      await cluster.daemon(to).waitForLog((l) => String(l.err ?? l.reason ?? '').includes('qemu-wrapper: refusing a destination QEMU'), `n${to + 1} logs why its QEMU did not start`);
    } finally {
      await rm(join(root, FAIL_INCOMING), { force: true });
    }
  }, 600_000);
});
