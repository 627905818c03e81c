/**
 * `npm run bench -- migrate`: live migration of a real TCG guest through
 * dwcp's qemu transport, against QEMU's own direct migration between the
 * same two QEMU providers in the same run.
 *
 * - **Subject**: the source daemon's side of the transport as the daemon
 *   runs it (src/migration/qemu-transfer.ts `live` step: disk mirror to the
 *   destination's NBD export, then `migrate`, both carried by
 *   /dwcp/migrate/2.0.0 (migrate-service.ts) over two libp2p hosts built
 *   like the mesh's (TCP + Noise + Yamux) on loopback, each end relaying a
 *   Unix socket), into a destination QEMU prepared by the qemu provider
 *   (`-S -incoming defer`) and continued by it once the stream completed.
 *   The fleet log and the coordinator are not in this path: it measures
 *   the bytes' way and QEMU's, not the control plane's round trips. The
 *   two ends (bench/migrate-side.ts) run in two processes of their own by
 *   default (`--processes 2`), as two daemons do, with the daemon's V8
 *   flags (src/daemon/node-flags.ts; until 2026-12-08 one end shared this
 *   process and its tick watch, without them); `--processes 1` puts both on
 *   this process's event loop.
 * - **References**: the same QMP sequence (same mirror, same migrate, same
 *   downtime limit) with the source QEMU connected straight to the
 *   destination QEMU's sockets: no daemon, no libp2p. `direct` uses QEMU's
 *   defaults (one connection, nothing compressed: the fastest way on
 *   loopback, where bandwidth costs nothing); `direct-multifd` the same
 *   multifd channels and compression as dwcp's runs, which separates what
 *   the relay costs from what that choice costs here.
 *
 * One guest per dirty rate (the test guest with `dwcp.dirty_mib_s=N`) goes
 * back and forth between the two providers, each run the next of
 * subject/references in turn, so all see the same guest in the same state. Per run:
 * QEMU's downtime (`query-migrate`), the guest's: the largest gap between
 * consecutive `tick` lines across the source and destination serial logs,
 * as the guest's uptime says and as this process saw the lines appear
 * (polled every `poll-ms`), the total time from the start to the
 * destination running, whether it converged within the timeout, and the
 * bytes the transport carried.
 */
import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, writeFile, cp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { DEFAULT_MULTIFD, MAX_MULTIFD_CHANNELS, MULTIFD_COMPRESSIONS, type Multifd } from '../src/cloud/qemu/migration-qmp.ts';
import { processesNaming } from '../src/cloud/qemu/procfs.ts';
import type { FleetMigration } from '../src/fleet/migrations.ts';
import { DEFAULT_CONVERGENCE } from '../src/migration/convergence.ts';
import type { LiveCodec } from '../src/migration/live-codec.ts';
import { guestImagesDir, GUEST_IMAGE } from '../test/support/qemu.ts';
import { forkSide, LocalSide, until, type Outcome, type Side, type SideOptions } from './migrate-side.ts';
import { defineBench, FlagError, intFlag, machineFacts, progress, quantile, renderTable, significant } from './run.ts';

export interface MigrateOptions {
  runs: number;
  rates: number[];
  memoryMiB: number;
  downtimeMs: number;
  timeoutMs: number;
  pollMs: number;
  codec: LiveCodec;
  processes: 1 | 2;
  /** QEMU's multifd for dwcp's runs (null: one connection). */
  multifd: Multifd | null;
  /** The references, each run in turn with dwcp: QEMU's defaults (one connection), and/or the same multifd as dwcp's runs. */
  references: readonly Reference[];
}

/** `direct`: QEMU to QEMU with QEMU's defaults (one connection, no compression); `direct-multifd`: with dwcp's multifd settings. */
type Reference = 'direct' | 'direct-multifd';
const REFERENCES: readonly Reference[] = ['direct', 'direct-multifd'];

interface Run {
  method: 'dwcp' | Reference;
  converged: boolean;
  error: string | null;
  /** From the start to the destination running; null if it never ran. */
  totalMs: number | null;
  qemuDowntimeMs: number | null;
  tickGapGuestMs: number | null;
  tickGapWallMs: number | null;
  wireBytes: number;
  /** CPU both ends' processes spent during the run (ms): for dwcp the relays and QMP, for direct QMP alone; load-independent. */
  cpuMs: number;
}

/** The same convergence rule for both methods (the daemon's default). */
const ARM_AFTER_ROUNDS = DEFAULT_CONVERGENCE.armAfterRounds;

function stats(values: readonly number[]): { n: number; p50: number; p99: number; max: number } | null {
  if (values.length === 0) return null;
  return { n: values.length, p50: significant(quantile(values, 0.5)), p99: significant(quantile(values, 0.99)), max: significant(Math.max(...values)) };
}

/** The tick lines of serial logs as they appear: tick number → [guest uptime ms, wall ms first seen]. */
class TickWatch {
  readonly seen = new Map<number, [number, number]>();
  readonly #offsets = new Map<string, number>();
  /** Tick lines per serial log: a guest that stopped ticking at the destination is not hidden by its source's ticks. */
  readonly #counts = new Map<string, number>();
  /** The first line of a guest kernel's crash report (an oops, BUG, panic, corrupted list) and the log it is in. */
  crash: { path: string; line: string } | null = null;
  #stop = false;
  #done: Promise<void> = Promise.resolve();

  watch(paths: () => string[], pollMs: number): void {
    this.#done = (async () => {
      while (!this.#stop) {
        for (const path of paths()) await this.#read(path);
        await delay(pollMs);
      }
    })();
  }

  async #read(path: string): Promise<void> {
    const fh = await open(path, 'r').catch(() => null);
    if (fh === null) return;
    try {
      const from = this.#offsets.get(path) ?? 0;
      const { size } = await fh.stat();
      if (size <= from) return;
      const buf = Buffer.alloc(size - from);
      await fh.read(buf, 0, buf.length, from);
      const text = buf.toString('utf8');
      const complete = text.lastIndexOf('\n') + 1;
      this.#offsets.set(path, from + Buffer.byteLength(text.slice(0, complete)));
      const now = performance.now();
      const crash = /^\[\s*[\d.]+\] (.*(?:BUG|Oops|panic|corruption|general protection).*)$/m.exec(text.slice(0, complete));
      if (crash !== null && this.crash === null) this.crash = { path, line: crash[1] as string };
      for (const m of text.slice(0, complete).matchAll(/^tick (\d+) (\d+)$/gm)) {
        this.#counts.set(path, (this.#counts.get(path) ?? 0) + 1);
        if (!this.seen.has(Number(m[1]))) this.seen.set(Number(m[1]), [Number(m[2]), now]);
      }
    } finally {
      await fh.close();
    }
  }

  async stop(): Promise<void> {
    this.#stop = true;
    await this.#done;
  }

  /** The largest gap between consecutive ticks numbered from `from` on, in guest ms and in wall ms. */
  gaps(from: number): { guest: number; wall: number } | null {
    const ns = [...this.seen.keys()].filter((n) => n >= from).sort((a, b) => a - b);
    let guest = 0;
    let wall = 0;
    for (let i = 1; i < ns.length; i++) {
      const a = this.seen.get(ns[i - 1] as number);
      const b = this.seen.get(ns[i] as number);
      if (a === undefined || b === undefined || (ns[i] as number) !== (ns[i - 1] as number) + 1) continue;
      guest = Math.max(guest, b[0] - a[0]);
      wall = Math.max(wall, b[1] - a[1]);
    }
    return ns.length < 2 ? null : { guest, wall };
  }

  last(): number {
    return Math.max(-1, ...this.seen.keys());
  }

  /** Tick lines seen in the serial log at `path`. */
  ticksIn(path: string): number {
    return this.#counts.get(path) ?? 0;
  }
}

/** What a serial log said last besides its ticks (the guest kernel's messages, if any), for a run whose destination did not tick. */
async function lastWords(path: string): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '');
  const lines = text.split('\n').filter((l) => l.trim() !== '' && !/^tick \d+ \d+$/.test(l)).slice(-8);
  return lines.length === 0 ? ' (the destination printed nothing besides ticks)' : ` (the destination's log ends: ${lines.join(' | ')})`;
}

function fakeMigration(id: string, source: string, target: string, maxDowntimeMs: number): FleetMigration {
  return {
    id,
    vm: 'bench',
    mode: 'live',
    source: { region: source, provider: 'qemu', generation: 1 },
    target: { region: target, provider: 'qemu', generation: 2 },
    phase: 'transfer',
    result: null,
    reason: null,
    facts: {},
    maxDowntimeMs,
    startedAt: Date.now(),
    updatedAt: Date.now(),
    endedAt: null,
  } as unknown as FleetMigration;
}

/** SIGKILLs every process whose command line names `dir` (this run's guests), and removes it; synchronous, for 'exit'. */
function killProcessesNaming(dir: string): void {
  for (const { pid } of processesNaming(dir)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone since it was listed.
    }
  }
  rmSync(dir, { recursive: true, force: true });
}

export async function runMigrateBench(o: MigrateOptions): Promise<object> {
  const facts = machineFacts();
  const root = await mkdtemp(join(tmpdir(), 'dwcp-bench-migrate-'));
  const children: ChildProcess[] = [];
  // The guests are detached on purpose (they outlive a daemon); a bench ended by a signal (bench/run.ts exits through
  // its handlers) or an error before its finally must not leave them, or an end's process, running.
  const killOnExit = (): void => {
    for (const child of children) child.kill('SIGKILL');
    killProcessesNaming(root);
  };
  process.once('exit', killOnExit);
  const images = join(root, 'images');
  const built = join(await guestImagesDir(), GUEST_IMAGE);
  const manifest = JSON.parse(await readFile(join(built, 'image.json'), 'utf8')) as { cmdline: string };
  for (const rate of o.rates) {
    await cp(built, join(images, `d${rate}`), { recursive: true });
    await writeFile(join(images, `d${rate}`, 'image.json'), JSON.stringify({ ...manifest, cmdline: `${manifest.cmdline} dwcp.dirty_mib_s=${rate}` }));
  }
  const methods: readonly Run['method'][] = ['dwcp', ...o.references];
  const sideOptions = (name: string): SideOptions => ({ name, dir: join(root, name), images, memoryMiB: o.memoryMiB, codec: o.codec, multifd: o.multifd, timeoutMs: o.timeoutMs, armAfterRounds: ARM_AFTER_ROUNDS });
  // With --processes 2 each side in a process of its own, started with the daemon's V8 flags: each migration's two
  // relays on two event loops, as two daemons have them, and neither shares its loop with this process's tick watch.
  const sides: Side[] = [];
  const openSide = async (name: string): Promise<Side> => {
    if (o.processes === 1) return LocalSide.open(sideOptions(name));
    const side = await forkSide(sideOptions(name));
    children.push(side.child);
    return side;
  };
  try {
    sides.push(await openSide('a'));
    sides.push(await openSide('b'));
    const [a, b] = sides as [Side, Side];
    const [pa, pb] = [await a.p2p(), await b.p2p()];
    await Promise.all([b.setPeer(a.name, pa.peerId), a.setPeer(b.name, pb.peerId, pb.addr)]);
  } catch (err) {
    for (const side of sides) await side.close().catch(() => undefined);
    throw err;
  }

  const results: { rate_mib_s: number; runs: Run[] }[] = [];
  let serial = 0;
  // The serial logs' watch of the rate under way: a run that throws must not leave it polling (it would keep the bench alive).
  let watching: TickWatch | null = null;
  try {
    for (const rate of o.rates) {
      progress(`migrate: booting a ${o.memoryMiB} MiB guest dirtying ${rate} MiB/s`);
      let at = 0;
      let guest = await (sides[0] as Side).create(`bench-d${rate}`, `d${rate}`);
      const watch = new TickWatch();
      watching = watch;
      const serials: string[] = [await (sides[0] as Side).serialLog(guest)];
      watch.watch(() => serials, o.pollMs);
      await until('the guest ticks', 120_000, async () => (watch.last() >= 20 ? true : undefined));
      const runs: Run[] = [];
      for (let r = 0; r < methods.length * o.runs; r++) {
        // A migration that broke the guest is the bench's failure, whatever its figures: say which run it followed.
        if (watch.crash !== null) throw new Error(`the guest's kernel crashed after run ${r} at ${rate} MiB/s (${runs.at(-1)?.method ?? 'before the first'}): ${watch.crash.line} (${watch.crash.path})`);
        const method = methods[r % methods.length] as Run['method'];
        const directMultifd = method === 'direct-multifd' ? o.multifd : null;
        const from = sides[at] as Side;
        const to = sides[1 - at] as Side;
        const id = `b${++serial}`;
        const m = fakeMigration(id, from.name, to.name, o.downtimeMs);
        await to.setMigration(m, id);
        const incoming = await to.create(`bench-d${rate}`, `d${rate}`, id);
        const incomingSerial = await to.serialLog(incoming);
        serials.push(incomingSerial);
        const firstTick = watch.last();
        // Each process once (with --processes 1 both ends share this one).
        const cpuOf = async (): Promise<number> => (o.processes === 2 ? (await from.cpuMs()) + (await to.cpuMs()) : from.cpuMs());
        const cpu0 = await cpuOf();
        const t0 = performance.now();
        let run: Run;
        let outcome: Outcome | undefined;
        let totalMs: number | null = null;
        let cpuMs = 0;
        try {
          outcome = method === 'dwcp' ? await from.live(m, guest) : await from.direct(guest, await to.incomingEndpoint(id, 'disk'), await to.incomingEndpoint(id, 'state', directMultifd), o.downtimeMs, directMultifd);
          // For both methods: the direct reference's destination is often still loading when its source completes.
          await to.waitRunning(incoming, 60_000);
          totalMs = performance.now() - t0;
          cpuMs = (await cpuOf()) - cpu0;
          // In the destination's own log: the source ticks on through the pre-copy, and a guest broken by its migration may run without ticking.
          await until('ticks at the destination', 60_000, async () => {
            if (watch.crash !== null) throw new Error(`the guest's kernel crashed (${watch.crash.path}): ${watch.crash.line}`);
            return watch.ticksIn(incomingSerial) >= 10 ? true : undefined;
          });
          const gaps = watch.gaps(firstTick);
          run = { method, converged: true, error: null, totalMs, qemuDowntimeMs: outcome.downtimeMs, tickGapGuestMs: gaps?.guest ?? null, tickGapWallMs: gaps?.wall ?? null, wireBytes: outcome.bytes, cpuMs };
        } catch (err) {
          // Converged means QEMU completed; a destination whose ticks did not show is counted apart (its error), not as a migration that did not converge.
          const said = totalMs === null ? '' : await lastWords(incomingSerial);
          run = { method, converged: outcome !== undefined, error: `${err instanceof Error ? err.message : String(err)}${said}`, totalMs, qemuDowntimeMs: outcome?.downtimeMs ?? null, tickGapGuestMs: null, tickGapWallMs: null, wireBytes: outcome?.bytes ?? 0, cpuMs };
        }
        if (totalMs !== null) {
          // The guest runs at the destination (whatever its serial log showed): it goes on from there.
          await from.terminate(guest);
          guest = incoming;
          at = 1 - at;
        } else {
          await to.terminate(incoming).catch(() => undefined);
          // The source runs on (a failed pre-copy never paused it for good).
          if (await from.paused(guest)) await from.resume(guest);
        }
        await to.setMigration(null, id);
        runs.push(run);
        progress(`migrate: ${rate} MiB/s run ${r + 1}/${methods.length * o.runs} ${method}: ${run.converged ? `total ${run.totalMs?.toFixed(0)} ms, QEMU downtime ${run.qemuDowntimeMs} ms, tick gap ${run.tickGapGuestMs} ms (guest) ${run.tickGapWallMs?.toFixed(0)} ms (wall), ends' CPU ${run.cpuMs.toFixed(0)} ms, ${(run.wireBytes / 1e6).toFixed(1)} MB` : 'failed'}${run.error === null ? '' : `: ${run.error}`}`);
      }
      await watch.stop();
      await (sides[at] as Side).terminate(guest).catch(() => undefined);
      results.push({ rate_mib_s: rate, runs });
    }
  } finally {
    await watching?.stop();
    for (const side of sides) await side.close().catch(() => undefined);
    await rm(root, { recursive: true, force: true });
    process.removeListener('exit', killOnExit);
  }

  const summary = results.map(({ rate_mib_s, runs }) => {
    const of = (method: Run['method']) => {
      const ok = runs.filter((r) => r.method === method && r.converged);
      const all = runs.filter((r) => r.method === method);
      return {
        runs: all.length,
        converged: ok.length,
        errors: all.flatMap((r) => (r.error === null ? [] : [r.error])),
        total_ms: stats(ok.flatMap((r) => (r.totalMs === null ? [] : [r.totalMs]))),
        qemu_downtime_ms: stats(ok.flatMap((r) => (r.qemuDowntimeMs === null ? [] : [r.qemuDowntimeMs]))),
        tick_gap_guest_ms: stats(ok.flatMap((r) => (r.tickGapGuestMs === null ? [] : [r.tickGapGuestMs]))),
        tick_gap_wall_ms: stats(ok.flatMap((r) => (r.tickGapWallMs === null ? [] : [r.tickGapWallMs]))),
        // dwcp: what the transport carried, both channels, both ways; direct: QEMU's RAM bytes (the disk mirror is not counted there).
        wire_bytes: stats(ok.map((r) => r.wireBytes)),
        // Both ends' processes, from the start to the destination running.
        daemon_cpu_ms: stats(ok.map((r) => r.cpuMs)),
      };
    };
    const ours = of('dwcp');
    const ratio = (a: { p50: number } | null, b: { p50: number } | null) => (a === null || b === null || b.p50 === 0 ? null : significant(a.p50 / b.p50, 3));
    const references = o.references.map((k) => {
      const ref = of(k);
      return { method: k, ...ref, ratio: { total_p50: ratio(ours.total_ms, ref.total_ms), qemu_downtime_p50: ratio(ours.qemu_downtime_ms, ref.qemu_downtime_ms), tick_gap_wall_p50: ratio(ours.tick_gap_wall_ms, ref.tick_gap_wall_ms) } };
    });
    return { rate_mib_s, dwcp: ours, references };
  });
  const fmt = (s: { p50: number; p99: number } | null) => (s === null ? '-' : `${s.p50}/${s.p99}`);
  const rows = summary.flatMap((s) =>
    [{ method: 'dwcp', ...s.dwcp, ratio: undefined }, ...s.references].map((m) => [
      `${s.rate_mib_s} MiB/s ${m.method}`,
      `${m.converged}/${m.runs}`,
      fmt(m.total_ms),
      fmt(m.qemu_downtime_ms),
      fmt(m.tick_gap_guest_ms),
      fmt(m.tick_gap_wall_ms),
      fmt(m.daemon_cpu_ms),
      m.ratio === undefined ? '' : `${m.ratio.total_p50 ?? '-'} / ${m.ratio.qemu_downtime_p50 ?? '-'}`,
    ]),
  );
  progress(renderTable(['case', 'converged', 'total p50/p99 ms', 'QEMU downtime p50/p99', 'tick gap guest', 'tick gap wall', "ends' CPU ms", 'dwcp ÷ this: total / downtime'], rows));
  return {
    bench: 'migrate',
    ...facts,
    options: { runs: o.runs, processes: o.processes, codec: o.codec, multifd: o.multifd, references: o.references, rates_mib_s: o.rates, memory_mib: o.memoryMiB, downtime_limit_ms: o.downtimeMs, timeout_ms: o.timeoutMs, poll_ms: o.pollMs },
    ratios: { total_p50: "under each reference: dwcp total time / the reference's (above 1: dwcp slower)", qemu_downtime_p50: "dwcp QEMU downtime / the reference's (above 1: dwcp longer)", tick_gap_wall_p50: "largest tick gap seen, dwcp / the reference's" },
    results: summary,
    loadavg_after: machineFacts().loadavg,
  };
}

export const migrateBench = defineBench<MigrateOptions>({
  flags: {
    runs: { default: '10', description: 'migrations per dirty rate and method (dwcp and each reference), in turn' },
    rates: { default: '0,10,50', description: 'guest dirty rates in MiB/s, comma-separated' },
    'memory-mib': { default: '256', description: "the guest's memory" },
    'downtime-ms': { default: '300', description: 'downtime limit (--max-downtime)' },
    'timeout-ms': { default: '120000', description: 'a migration not converged by then is aborted (counted not converged)' },
    'poll-ms': { default: '10', description: 'how often the serial logs are read for tick lines' },
    codec: { default: 'lz4', description: 'how the transport compresses the live channels: lz4 or none' },
    processes: { default: '2', description: "1: both ends (providers, libp2p hosts, relays) in this process; 2: each end in a child process of its own with the daemon's V8 flags, so the two daemons' relays do not share an event loop" },
    multifd: { default: String(DEFAULT_MULTIFD.channels), description: "QEMU's multifd channels for dwcp's runs (0: off), as fleet.migration.multifdChannels" },
    'multifd-compression': { default: DEFAULT_MULTIFD.compression, description: 'how QEMU compresses the multifd channels: none, zlib or zstd' },
    references: { default: REFERENCES.join(','), description: "QEMU direct migrations to compare with, comma-separated: direct (QEMU's defaults: one connection, no compression), direct-multifd (dwcp's multifd settings; left out with --multifd 0)" },
  },
  parse(flags) {
    const rates = (flags['rates'] ?? '').split(',').map((r) => Number(r.trim()));
    if (rates.length === 0 || rates.some((r) => !Number.isInteger(r) || r < 0 || r > 1000)) throw new FlagError('rates', `must be whole MiB/s from 0 to 1000, comma-separated, got "${flags['rates']}"`);
    const memoryMiB = intFlag(flags, 'memory-mib', 64);
    const codec = flags['codec'];
    if (codec !== 'lz4' && codec !== 'none') throw new FlagError('codec', `must be lz4 or none, got "${codec}"`);
    const processes = intFlag(flags, 'processes');
    if (processes !== 1 && processes !== 2) throw new FlagError('processes', `must be 1 or 2, got "${flags['processes']}"`);
    const channels = intFlag(flags, 'multifd', 0);
    if (channels > MAX_MULTIFD_CHANNELS) throw new FlagError('multifd', `must be 0..${MAX_MULTIFD_CHANNELS}, got ${channels}`);
    const compression = MULTIFD_COMPRESSIONS.find((c) => c === flags['multifd-compression']);
    if (compression === undefined) throw new FlagError('multifd-compression', `must be one of ${MULTIFD_COMPRESSIONS.join(', ')}, got "${flags['multifd-compression']}"`);
    const multifd = channels === 0 ? null : { channels, compression };
    const named = (flags['references'] ?? '').split(',').map((r) => r.trim());
    const references = REFERENCES.filter((r) => named.includes(r) && (r !== 'direct-multifd' || multifd !== null));
    const unknown = named.filter((r) => !(REFERENCES as readonly string[]).includes(r));
    if (unknown.length > 0 || references.length === 0) throw new FlagError('references', `must name one or both of ${REFERENCES.join(', ')} (direct-multifd needs --multifd above 0), got "${flags['references']}"`);
    return { runs: intFlag(flags, 'runs'), processes, rates, memoryMiB, downtimeMs: intFlag(flags, 'downtime-ms'), timeoutMs: intFlag(flags, 'timeout-ms', 1000), pollMs: intFlag(flags, 'poll-ms'), codec, multifd, references };
  },
  run: runMigrateBench,
});
