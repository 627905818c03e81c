/**
 * One end of the migrate bench (bench/migrate.ts): a qemu provider, a libp2p
 * host built like the mesh's, the /dwcp/migrate/2.0.0 service and the qemu
 * transfer, as a daemon of one region holds them, and the QMP sequence of
 * QEMU's direct migration (the reference) from its guests.
 *
 * An end runs in the bench's process (`LocalSide`) or in a child process of
 * its own (`forkSide`: this module is the child's entry point, driven over
 * the IPC channel), so that the two daemons' relays do not share one event
 * loop: in a federation they are two processes on two hosts, and on one
 * event loop each migrated byte's Noise, yamux and socket work is paid twice
 * by the same thread.
 *
 * Invariants: both kinds answer the same `Side` calls the same way (the
 * remote one forwards each call and its error text); a child exits when its
 * parent goes (the IPC channel closes), terminating its guests first.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import type { Libp2p } from 'libp2p';
import { multiaddr } from '@multiformats/multiaddr';
import { peerIdFromString } from '@libp2p/peer-id';
import { DirectoryImageSource } from '../src/cloud/qemu/directory-images.ts';
import { armThrottle, cancelMigration, MIGRATION_EVENTS, migrationInfo, MIRROR_EVENTS, mirrorState, QmpEventWatch, startMigration, startMirror, stopMirror, type Multifd } from '../src/cloud/qemu/migration-qmp.ts';
import { QemuProvider } from '../src/cloud/qemu/qemu-provider.ts';
import type { FleetMigration } from '../src/fleet/migrations.ts';
import { pino } from 'pino';
import { createLogger } from '../src/log.ts';
import { judgeConvergence } from '../src/migration/convergence.ts';
import type { LiveCodec } from '../src/migration/live-codec.ts';
import { DAEMON_NODE_FLAGS } from '../src/daemon/node-flags.ts';
import { MigrateService } from '../src/migration/migrate-service.ts';
import { QemuTransfer } from '../src/migration/qemu-transfer.ts';
import { benchHost } from './transport.ts';

const BENCH_TYPE = 'bench.guest';

export interface SideOptions {
  readonly name: string;
  /** Where this end keeps its guests (a directory of the bench's root). */
  readonly dir: string;
  /** The guest images (one per dirty rate). */
  readonly images: string;
  readonly memoryMiB: number;
  readonly codec: LiveCodec;
  readonly multifd: Multifd | null;
  readonly timeoutMs: number;
  readonly armAfterRounds: number;
}

/** What a migration's end reports: QEMU's downtime and the bytes (dwcp: the transport's, both channels; direct: QEMU's RAM bytes). */
export interface Outcome {
  downtimeMs: number | null;
  bytes: number;
}

/** The calls the bench makes of an end, wherever it runs. */
export interface Side {
  readonly name: string;
  /** This end's libp2p identity and address, for its peer. */
  p2p(): Promise<{ peerId: string; addr: string }>;
  /** Makes `name` at `peerId` this end's one peer, and dials it if `addr` is given. */
  setPeer(name: string, peerId: string, addr?: string): Promise<void>;
  /** Creates a guest (an incoming one for a migration id, waiting for a live stream); resolves to its id. */
  create(name: string, image: string, incoming?: string): Promise<string>;
  /** Resolves once the provider has run the guest (its own state, no QMP query per look), or throws after `ms`. */
  waitRunning(id: string, ms: number): Promise<void>;
  terminate(id: string): Promise<void>;
  serialLog(id: string): Promise<string>;
  paused(id: string): Promise<boolean>;
  resume(id: string): Promise<void>;
  incomingEndpoint(migration: string, channel: 'state' | 'disk', multifd?: Multifd | null): Promise<string>;
  /** CPU time (user + system, ms) of the process this end runs in, since it started. */
  cpuMs(): Promise<number>;
  /** The migration record this end's service checks incoming channels against. */
  setMigration(m: FleetMigration | null, id: string): Promise<void>;
  /** dwcp: the daemon's live step from guest `id`, to its end. */
  live(m: FleetMigration, id: string): Promise<Outcome>;
  /** The reference: QEMU to QEMU, the source connected to the destination's own sockets. */
  direct(id: string, nbd: string, state: string, downtimeMs: number, multifd?: Multifd | null): Promise<Outcome>;
  close(): Promise<void>;
}

/** Polls `check` every 50 ms until it answers (a thrown check counts as no answer), or throws naming `what` after `ms`. */
export async function until<T>(what: string, ms: number, check: () => Promise<T | undefined>, everyMs = 50): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const v = await check().catch(() => undefined);
    if (v !== undefined) return v;
    if (performance.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms`);
    await delay(everyMs);
  }
}

/** An end's logs: warnings (DWCP_BENCH_LOG=info: everything), on stderr: stdout is the bench's one JSON document. */
function benchLog(): ReturnType<typeof createLogger> {
  return createLogger(process.env.DWCP_BENCH_LOG === 'info' ? 'info' : 'warn', pino.destination({ dest: 2, sync: true }));
}

export class LocalSide implements Side {
  readonly name: string;
  readonly #o: SideOptions;
  readonly #provider: QemuProvider;
  readonly #host: Libp2p;
  readonly #service: MigrateService;
  readonly #transfer: QemuTransfer;
  readonly #migrations = new Map<string, FleetMigration>();
  #peer: { name: string; peerId: string } | null = null;
  #closed = false;

  private constructor(o: SideOptions, provider: QemuProvider, host: Libp2p) {
    this.name = o.name;
    this.#o = o;
    this.#provider = provider;
    this.#host = host;
    const log = benchLog();
    this.#service = new MigrateService({
      host,
      members: {
        get: (peerId) => (this.#peer !== null && peerId === this.#peer.peerId ? this.#peer : undefined) as never,
        list: () => (this.#peer === null ? [] : [this.#peer]) as never,
      },
      isConnected: () => true,
      region: o.name,
      migration: (id) => this.#migrations.get(id),
      qemu: () => provider,
      store: { current: () => undefined, currentManifest: () => undefined, readValue: async function* () {} } as never,
      log,
      codec: o.codec,
    });
    this.#transfer = new QemuTransfer({ guests: () => provider, channels: this.#service, codec: o.codec, multifd: o.multifd, blob: {} as never, convergence: { armAfterRounds: o.armAfterRounds, timeoutMs: o.timeoutMs }, log });
  }

  static async open(o: SideOptions): Promise<LocalSide> {
    const types = { [BENCH_TYPE]: { vcpus: 1, memoryMiB: o.memoryMiB, diskGiB: 1 } };
    const provider = await QemuProvider.open({
      region: o.name,
      dir: o.dir,
      accel: 'tcg',
      capacity: { vcpus: 4, memoryMiB: 4 * o.memoryMiB, diskGiB: 10 },
      types,
      images: new DirectoryImageSource(o.images),
      log: benchLog(),
      utilisationIntervalMs: 0,
    });
    const side = new LocalSide(o, provider, await benchHost());
    await side.#service.start();
    return side;
  }

  async p2p(): Promise<{ peerId: string; addr: string }> {
    return { peerId: this.#host.peerId.toString(), addr: (this.#host.getMultiaddrs()[0] as { toString(): string }).toString() };
  }

  async setPeer(name: string, peerId: string, addr?: string): Promise<void> {
    this.#peer = { name, peerId };
    // Over IPC an absent argument arrives as null.
    if (typeof addr === 'string') await this.#host.dial(multiaddr(addr));
    else await until(`a connection from ${name}`, 30_000, async () => (this.#host.getConnections(peerIdFromString(peerId)).length > 0 ? true : undefined));
  }

  async create(name: string, image: string, incoming?: string): Promise<string> {
    const vm = await this.#provider.create({ name, type: BENCH_TYPE, image, ...(typeof incoming !== 'string' ? {} : { incoming, incomingMode: 'live' as const }) });
    return vm.id;
  }

  async waitRunning(id: string, ms: number): Promise<void> {
    // Looked at often and cheaply in this process: the total time includes this wait, and asking QEMU every
    // millisecond (get()) would load the destination while it loads the state.
    await until('the destination running', ms, async () => (this.#provider.observedState(id) === 'running' ? true : undefined), 1);
  }

  async terminate(id: string): Promise<void> {
    await this.#provider.terminate(id);
  }

  async serialLog(id: string): Promise<string> {
    return this.#provider.serialLog(id).path;
  }

  async paused(id: string): Promise<boolean> {
    return this.#provider.migrationPaused(id);
  }

  async resume(id: string): Promise<void> {
    await this.#provider.resumePaused(id);
  }

  async incomingEndpoint(migration: string, channel: 'state' | 'disk', multifd: Multifd | null = null): Promise<string> {
    return this.#provider.incomingEndpoint(migration, channel, multifd);
  }

  async cpuMs(): Promise<number> {
    const { user, system } = process.cpuUsage();
    return (user + system) / 1000;
  }

  async setMigration(m: FleetMigration | null, id: string): Promise<void> {
    if (m === null) this.#migrations.delete(id);
    else this.#migrations.set(id, m);
  }

  async live(m: FleetMigration, id: string): Promise<Outcome> {
    // The migration's record matters at the target only (its service checks incoming channels against it): setMigration puts it there.
    const handle = this.#transfer.start({ migration: m, step: 'live', source: { provider: 'qemu', id } });
    // Polled often: the direct reference returns the moment QEMU completes, and a 50 ms poll would add up to 50 ms to every dwcp run.
    const status = await until('the dwcp transfer', this.#o.timeoutMs + 60_000, async () => {
      const s = handle.status();
      return s.status === 'running' ? undefined : s;
    }, 2);
    if (status.status === 'failed') throw new Error(status.error ?? 'failed');
    return { downtimeMs: status.downtimeMs ?? null, bytes: status.bytes };
  }

  async direct(id: string, nbd: string, state: string, downtimeMs: number, multifd: Multifd | null = null): Promise<Outcome> {
    const { qmp } = await this.#provider.migrationSource(id);
    // Polled as the daemon's live step polls (qemu-transfer.ts): at QEMU's next event, at least every 100 ms.
    const events = new QmpEventWatch(qmp, [...MIRROR_EVENTS, ...MIGRATION_EVENTS]);
    await startMirror(qmp, nbd);
    try {
      for (const deadline = performance.now() + 60_000; (await mirrorState(qmp))?.ready !== true; await events.next(100)) {
        if (performance.now() > deadline) throw new Error('the mirror was not ready within 60000 ms');
      }
      const startedAt = Date.now();
      await startMigration(qmp, state, downtimeMs, multifd);
      let armed = false;
      for (;;) {
        const info = await migrationInfo(qmp);
        const verdict = judgeConvergence(info, { startedAt, armed }, Date.now(), { armAfterRounds: this.#o.armAfterRounds, timeoutMs: this.#o.timeoutMs });
        if (verdict.kind === 'done') return { downtimeMs: info.downtimeMs, bytes: info.transferredBytes };
        if (verdict.kind === 'failed' || verdict.kind === 'abort') {
          await cancelMigration(qmp).catch(() => undefined);
          throw new Error(verdict.why);
        }
        if (verdict.kind === 'arm-throttle') {
          armed = true;
          await armThrottle(qmp);
        }
        await events.next(100);
      }
    } finally {
      events.close();
      await stopMirror(qmp);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#service.stop();
    await this.#host.stop();
    for (const i of await this.#provider.list().catch(() => [])) if (i.state !== 'terminated') await this.#provider.terminate(i.id).catch(() => undefined);
    await this.#provider.close();
  }
}

// --- the child process ----------------------------------------------------------------

type Call = { id: number; method: keyof Side | 'open'; args: unknown[] };
type Answer = { id: number; ok: true; value: unknown } | { id: number; ok: false; error: string };

/** An end in a child process of its own; its calls go over the IPC channel. */
export async function forkSide(o: SideOptions): Promise<Side & { readonly child: ChildProcess }> {
  // With the daemon's V8 flags (the young generation's size decides how often V8 collects while the relay churns
  // buffers); flags given to the bench's own node come after, so they win: for trying others.
  const child = fork(join(import.meta.dirname, 'migrate-side.ts'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [...DAEMON_NODE_FLAGS, ...process.execArgv] });
  const pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  let next = 0;
  let gone: Error | null = null;
  child.on('message', (a: Answer) => {
    const p = pending.get(a.id);
    pending.delete(a.id);
    if (a.ok) p?.resolve(a.value);
    else p?.reject(new Error(a.error));
  });
  child.once('exit', (code, signal) => {
    gone = new Error(`the bench's ${o.name} end (pid ${child.pid}) exited (${signal ?? `code ${code}`})`);
    for (const p of pending.values()) p.reject(gone);
    pending.clear();
  });
  const call = (method: Call['method'], ...args: unknown[]): Promise<never> => {
    if (gone !== null) return Promise.reject(gone);
    const id = ++next;
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      child.send({ id, method, args } satisfies Call);
    });
  };
  await call('open', o);
  return {
    name: o.name,
    child,
    p2p: () => call('p2p'),
    setPeer: (name, peerId, addr) => call('setPeer', name, peerId, addr),
    create: (name, image, incoming) => call('create', name, image, incoming),
    waitRunning: (id, ms) => call('waitRunning', id, ms),
    terminate: (id) => call('terminate', id),
    serialLog: (id) => call('serialLog', id),
    paused: (id) => call('paused', id),
    resume: (id) => call('resume', id),
    incomingEndpoint: (migration, channel, multifd) => call('incomingEndpoint', migration, channel, multifd),
    cpuMs: () => call('cpuMs'),
    setMigration: (m, id) => call('setMigration', m, id),
    live: (m, id) => call('live', m, id),
    direct: (id, nbd, state, downtimeMs, multifd) => call('direct', id, nbd, state, downtimeMs, multifd),
    async close() {
      await call('close').catch(() => undefined);
      child.disconnect();
    },
  };
}

async function serveParent(): Promise<void> {
  let side: LocalSide | null = null;
  process.on('message', (c: Call) => {
    void (async (): Promise<Answer> => {
      try {
        if (c.method === 'open') {
          side = await LocalSide.open(c.args[0] as SideOptions);
          return { id: c.id, ok: true, value: null };
        }
        if (side === null) throw new Error('the end is not open');
        const fn = side[c.method] as (...args: unknown[]) => Promise<unknown>;
        return { id: c.id, ok: true, value: (await fn.apply(side, c.args)) ?? null };
      } catch (err) {
        return { id: c.id, ok: false, error: err instanceof Error ? err.message : String(err) };
      }
    })().then((a) => process.send?.(a));
  });
  // The parent gone (or done): terminate this end's guests and leave.
  process.once('disconnect', () => {
    void (async () => {
      await (side as LocalSide | null)?.close().catch(() => undefined);
      process.exit(0);
    })();
  });
}

if (process.send !== undefined && process.argv[1] !== undefined && process.argv[1].endsWith('migrate-side.ts')) await serveParent();
