/**
 * The transfer seam (transfer.ts) for qemu → qemu, on the source region's
 * daemon. Each step runs in the background; its handle's status is what
 * the migrator polls.
 *
 * - `live`: the disk is mirrored and the memory migrated by QEMU itself,
 *   both carried over /dwcp/migrate/2.0.0 (migrate-service.ts): this daemon
 *   listens on two Unix sockets in the guest's directory (0600), the source
 *   QEMU connects its NBD mirror target and its `migrate` to them, and each
 *   connection becomes a channel to the target daemon, which feeds its
 *   destination QEMU (started `-S -incoming defer`). With multifd (the
 *   default: `multifd` below), QEMU's `migrate` makes 1 + N connections,
 *   each a state stream numbered in the order they came (the main channel
 *   first), its RAM pages compressed by QEMU's threads. Order: mirror until
 *   ready (from then on every write reaches both disks), then `migrate` with
 *   `downtime-limit` from the migration's --max-downtime, watched through
 *   `query-migrate` (convergence.ts: auto-converge after K rounds, abort at
 *   the timeout), then, once QEMU says completed (the source paused), the
 *   mirror is cancelled (the destination's disk is complete) and the step
 *   is done once the state channels have delivered their last byte; the
 *   mirror's NBD node is removed after that, in the step's cleanup (its
 *   polite close takes a round trip through both relays, 100–200 ms under
 *   load, which no longer delays the outcome).
 * - `precopy` (warm) and `final` (cold, warm): the disk's qcow2 overlay as
 *   a blob, sent to the target as a delta against what its region holds
 *   (the blob service's baseline cache: round 2 onwards sends only what
 *   changed since round 1); `precopy` repeats while the guest runs until a
 *   round moves under PRECOPY_DONE_FRACTION of the disk or after
 *   `precopyRounds`; `final` (the guest stopped, its disk consistent) sends
 *   the last delta and has the target write it as the incoming disk
 *   (channel disk-image).
 *
 * Invariants:
 * - `start` never throws; every failure is a status naming the VM and the
 *   cause; `cancel` is idempotent, cancels QEMU's migration and mirror,
 *   closes the sockets and channels.
 * - `targetMayRun` is true once QEMU said completed, and whenever a step
 *   that reached `migrate` fails and QEMU, asked after a cancel, does not
 *   say its migration failed or was cancelled (the destination may hold
 *   the whole state): never false when unsure, whichever wait the failure
 *   interrupted.
 * - A source left paused by a completed live step is reported `paused` (by
 *   QEMU's own run state, so a restarted daemon sees it too) and resumed
 *   with `cont`.
 */
import { chmod, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import type { BlobService } from '../blob/service.ts';
import { armThrottle, cancelMigration, MIGRATION_EVENTS, migrationInfo, MIRROR_EVENTS, mirrorState, QmpEventWatch, cancelMirror, releaseMirrorTarget, startMigration, startMirror, stopMirror, type Multifd } from '../cloud/qemu/migration-qmp.ts';
import type { QmpClient } from '../cloud/qemu/qmp.ts';
import type { QemuMigrationGuests } from '../cloud/qemu/qemu-provider.ts';
import type { Logger } from '../log.ts';
import type { TransferStatus, TransferStep } from './coordinator.ts';
import { DEFAULT_CONVERGENCE, judgeConvergence, type ConvergenceOptions } from './convergence.ts';
import { liveCodecFor, type LiveCodec } from './live-codec.ts';
import type { MigrateService } from './migrate-service.ts';
import { pipe, type PipeCounts } from './relay.ts';
import type { MigrateChannel, MigrateChannelStream } from './migrate-wire.ts';
import type { MigrationTransfer, TransferHandle, TransferRequest } from './transfer.ts';

/** QEMU's own default downtime limit, used when the migration names none. */
export const DEFAULT_DOWNTIME_LIMIT_MS = 300;
/** A warm pre-copy round that moved less than this fraction of the disk ends the pre-copy. */
const PRECOPY_DONE_FRACTION = 0.01;

export interface QemuTransferOptions {
  /** This node's qemu provider of a configured name. */
  guests(provider: string): QemuMigrationGuests | undefined;
  readonly channels: Pick<MigrateService, 'open'>;
  /** How this end compresses the live channels' frames. */
  readonly codec?: LiveCodec;
  /** QEMU's multifd for the state stream (null or absent: one connection). */
  readonly multifd?: Multifd | null;
  readonly blob: Pick<BlobService, 'put' | 'remove'>;
  readonly convergence?: ConvergenceOptions;
  /** Warm: pre-copy rounds at most. */
  readonly precopyRounds?: number;
  /** How often query-migrate is asked. */
  readonly pollMs?: number;
  readonly log: Logger;
  readonly now?: () => number;
}

class StepFailed extends Error {}

export class QemuTransfer implements MigrationTransfer {
  readonly #o: QemuTransferOptions;

  constructor(options: QemuTransferOptions) {
    this.#o = options;
  }

  start(request: TransferRequest): TransferHandle {
    const run = new StepRun(request, this.#o);
    run.begin();
    return run;
  }

  paused(source: { readonly provider: string; readonly id: string }): boolean {
    return this.#o.guests(source.provider)?.migrationPaused(source.id) === true;
  }

  async resume(source: { readonly provider: string; readonly id: string }): Promise<void> {
    const guests = this.#o.guests(source.provider);
    if (guests === undefined) throw new Error(`provider ${source.provider} is not a qemu provider here`);
    await guests.resumePaused(source.id);
  }
}

/** One step of one migration. */
class StepRun implements TransferHandle {
  readonly #r: TransferRequest;
  readonly #o: QemuTransferOptions;
  readonly #abort = new AbortController();
  readonly #now: () => number;
  #status: TransferStatus;
  #cleanups: (() => Promise<void>)[] = [];

  constructor(request: TransferRequest, options: QemuTransferOptions) {
    this.#r = request;
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#status = { step: request.step, status: 'running', bytes: 0, rounds: 0, progressAt: this.#now(), targetMayRun: false };
  }

  status(): TransferStatus {
    return this.#status;
  }

  cancel(): void {
    if (this.#status.status === 'running') this.#abort.abort(new StepFailed('cancelled'));
  }

  begin(): void {
    const m = this.#r.migration;
    const work = this.#r.step === 'live' ? this.#live() : this.#disk(this.#r.step);
    void work
      .then(
        () => this.#set({ status: 'done' }),
        (err: unknown) => {
          const why = this.#abort.signal.aborted && this.#abort.signal.reason instanceof StepFailed ? `${this.#abort.signal.reason.message}${err === this.#abort.signal.reason ? '' : ` (${errorText(err)})`}` : errorText(err);
          this.#o.log.warn({ migration: m.id, vm: m.vm, step: this.#r.step, err: why }, 'qemu migration step failed');
          this.#set({ status: 'failed', error: `${this.#r.step} transfer of ${m.vm}: ${why}` });
        },
      )
      .finally(async () => {
        for (const c of this.#cleanups.reverse()) await c().catch(() => undefined);
      });
  }

  #set(change: Partial<TransferStatus>): void {
    this.#status = { ...this.#status, ...change };
  }

  #progress(bytes: number, rounds = this.#status.rounds): void {
    if (bytes !== this.#status.bytes || rounds !== this.#status.rounds) this.#set({ bytes, rounds, progressAt: this.#now() });
  }

  #guests(): QemuMigrationGuests {
    const guests = this.#o.guests(this.#r.source.provider);
    if (guests === undefined) throw new StepFailed(`provider ${this.#r.source.provider} is not a qemu provider on this node`);
    return guests;
  }

  // --- live ----------------------------------------------------------------------------

  async #live(): Promise<void> {
    const m = this.#r.migration;
    const { log } = this.#o;
    const signal = this.#abort.signal;
    const source = await this.#guests().migrationSource(this.#r.source.id);
    const qmp = source.qmp;
    /** The state channels' pipes: the step is done once they delivered QEMU's last byte (the disk channel has nothing left to carry by then). */
    const statePipes: Promise<PipeCounts>[] = [];
    const counts: PipeCounts[] = [];
    /** QEMU's connections to this daemon: a step that ends without completing closes them (each pipe then resets its channel). */
    const sockets: Socket[] = [];
    const moved = (): number => counts.reduce((sum, c) => sum + c.sent + c.received, 0);
    const multifd = this.#o.multifd ?? null;
    let completed = false;
    /**
     * Once QEMU completed, the disk channel has nothing left to carry: the
     * mirror was ready (every guest write was on both disks before it
     * completed) and the source is paused. The destination, running the
     * guest as soon as its stream completed, stops its NBD export then, and
     * whatever the mirror still says on the way out may meet a closed
     * socket: that ends the disk channel, not the step.
     */
    const settled = (channel: MigrateChannel): boolean => channel === 'disk' && completed;
    /**
     * The disk channel is opened when the step starts, not when QEMU's
     * blockdev-add connects: the target prepares its end meanwhile (the NBD
     * export: QMP round trips to its QEMU), so the mirror does not wait for
     * the channel's open and accept (15-80 ms, bench/RESULTS.md); the
     * export's greeting waits in the stream until QEMU connects. The state
     * channels are opened as QEMU connects: a destination QEMU with multifd
     * reads the first bytes of every incoming connection to tell the main
     * channel from the others, and it waits for them inside its main loop
     * (QMP, the NBD export and all), so no state connection may reach it
     * before the source QEMU has something to send on it. QEMU's k-th
     * state connection takes the stream numbered k. A disk channel QEMU
     * never took is reset when the step ends.
     */
    const open = (kind: MigrateChannel, stream: number): Promise<MigrateChannelStream> => this.#o.channels.open(m.target.region, m.id, kind, { signal, ...(kind === 'state' ? { stream, multifd } : {}) });
    const disk = open('disk', 0);
    let diskTaken = false;
    // A broken channel fails the step at once (QEMU would notice only when it next writes).
    const broken = new Promise<never>((_, reject) => {
      const failed = (kind: MigrateChannel, err: unknown): void => reject(new StepFailed(`the ${kind} channel to ${m.target.region}: ${errorText(err)}`));
      const relay = (kind: MigrateChannel) => async (socket: Socket, stream: number) => {
        sockets.push(socket);
        try {
          if (kind === 'disk') diskTaken = true;
          const ch = await (kind === 'disk' ? disk : open(kind, stream));
          const c: PipeCounts = { sent: 0, received: 0 };
          counts.push(c);
          const piped = pipe(ch, socket, c, kind === 'state' ? liveCodecFor({ stream, multifd }, this.#o.codec) : this.#o.codec).catch((err: unknown) => (settled(kind) ? c : Promise.reject(err)));
          if (kind === 'state') statePipes.push(piped);
          await piped;
        } catch (err) {
          socket.destroy();
          failed(kind, err);
        }
      };
      void Promise.all([this.#listen(source.files.nbdOut, 1, relay('disk')), this.#listen(source.files.migrateOut, 1 + (multifd?.channels ?? 0), relay('state'))]).catch(reject);
      disk.catch((err: unknown) => failed('disk', err));
    });
    this.#cleanups.push(async () => {
      if (!diskTaken) await disk.then((ch) => ch.reset(new Error('the live step ended before QEMU took this channel')), () => undefined);
    });
    broken.catch(() => undefined);
    const aborted = new Promise<never>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }));
    aborted.catch(() => undefined);
    const race = <T>(p: Promise<T>): Promise<T> => Promise.race([p, broken, aborted]);

    this.#cleanups.push(async () => {
      // A completed step cancelled the mirror already and left only its NBD node, whose removal may take a round trip
      // through both relays: done here, after the step's outcome is out, not on the way to it. Its connection then
      // closes politely and the disk channel ends on its own (cut here, the target would log a broken channel).
      if (completed) {
        await releaseMirrorTarget(qmp);
        return;
      }
      // A step that issued `migrate` and did not complete cancelled QEMU's migration already (mayHaveCompleted below).
      await stopMirror(qmp);
      // QEMU's cancel does not wait on a relay that stopped reading (its multifd threads may sit in a write): close every connection.
      for (const socket of sockets) socket.destroy();
    });
    // Made before the first query: an event that lands while a query is in flight wakes the next wait at once.
    const events = new QmpEventWatch(qmp, [...MIRROR_EVENTS, ...MIGRATION_EVENTS]);
    this.#cleanups.push(async () => events.close());
    // Where a live step's time goes, for the logs: mirror until ready, QEMU's pre-copy and stop-and-copy, the stream's drain.
    const began = this.#now();
    // Both sockets listen before QEMU is told about them.
    await race(this.#listening);
    await race(startMirror(qmp, source.files.nbdOut));
    for (;;) {
      const state = await race(mirrorState(qmp));
      if (state === null) throw new StepFailed('the disk mirror ended before it was ready');
      this.#progress(moved());
      if (state.ready) break;
      await race(events.next(this.#o.pollMs ?? 100));
    }
    const downtimeLimit = m.maxDowntimeMs ?? DEFAULT_DOWNTIME_LIMIT_MS;
    const convergence = this.#o.convergence ?? DEFAULT_CONVERGENCE;
    const startedAt = this.#now();
    // From `migrate` on the destination may receive the whole state: a step that fails before QEMU said completed asks
    // QEMU itself whether it did (mayHaveCompleted), whichever wait the failure interrupted; unsure counts as "may run".
    try {
      await race(startMigration(qmp, source.files.migrateOut, downtimeLimit, multifd));
      log.info({ migration: m.id, vm: m.vm, diskBytes: moved(), mirrorMs: startedAt - began, downtimeLimitMs: downtimeLimit, multifdChannels: multifd?.channels ?? 0 }, 'qemu migration: disk mirrored, migrating memory');
      let armed = false;
      while (!completed) {
        const info = await race(migrationInfo(qmp));
        this.#progress(moved(), info.rounds);
        const verdict = judgeConvergence(info, { startedAt, armed }, this.#now(), convergence);
        if (verdict.kind === 'done') {
          completed = true;
          this.#set({ targetMayRun: true, ...(info.downtimeMs === null ? {} : { downtimeMs: info.downtimeMs }) });
          log.info({ migration: m.id, vm: m.vm, downtimeMs: info.downtimeMs, totalMs: info.totalTimeMs, rounds: info.rounds, ramBytes: info.transferredBytes }, 'qemu migration completed: the source is paused');
          break;
        }
        if (verdict.kind === 'failed') throw new StepFailed(verdict.why);
        if (verdict.kind === 'abort') throw new StepFailed(verdict.why);
        if (verdict.kind === 'arm-throttle') {
          armed = true;
          log.info({ migration: m.id, vm: m.vm, why: verdict.why }, 'qemu migration: auto-converge armed');
          await race(armThrottle(qmp));
        }
        await race(events.next(this.#o.pollMs ?? 100));
      }
    } catch (err) {
      // Closed first, as the cleanup would: QEMU's cancel may otherwise wait on a relay that stopped reading.
      for (const socket of sockets) socket.destroy();
      this.#set({ targetMayRun: await mayHaveCompleted(qmp, events, this.#o.pollMs ?? 100) });
      throw err;
    }
    // The source is paused with every write mirrored: end the mirror (the destination's disk is complete), then wait for the state's last byte to arrive.
    const completedAt = this.#now();
    await cancelMirror(qmp);
    await race(Promise.all(statePipes));
    this.#progress(moved());
    log.info({ migration: m.id, vm: m.vm, bytes: moved(), drainMs: this.#now() - completedAt, stepMs: this.#now() - began }, 'qemu migration: the stream reached the target');
  }

  #listening: Promise<void> = Promise.resolve();

  /** Listens on `path` (0600) for `connections` connections from the source QEMU, numbered in the order they came. */
  #listen(path: string, connections: number, onConnection: (socket: Socket, index: number) => Promise<void>): Promise<void> {
    const ready = (async () => {
      await rm(path, { force: true });
      let accepted = 0;
      const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
        if (++accepted === connections) server.close();
        void onConnection(socket, accepted - 1);
      });
      this.#cleanups.push(async () => {
        server.close();
        await rm(path, { force: true });
      });
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(path, () => resolve());
      });
      await chmod(path, 0o600);
    })();
    this.#listening = Promise.all([this.#listening, ready]).then(() => undefined);
    return ready;
  }

  // --- cold and warm -------------------------------------------------------------------

  async #disk(step: TransferStep): Promise<void> {
    const m = this.#r.migration;
    const guests = this.#guests();
    const path = guests.diskPath(this.#r.source.id);
    const key = `migration/${m.id}/disk`;
    const signal = this.#abort.signal;
    const maxRounds = step === 'precopy' ? (this.#o.precopyRounds ?? 3) : 1;
    let bytes = 0;
    for (let round = 1; round <= maxRounds; round++) {
      const put = await this.#o.blob.put(path, key, { to: m.target.region, signal });
      const wire = put.sent?.wireBytesSent ?? 0;
      bytes += wire;
      this.#progress(bytes, round);
      this.#o.log.info({ migration: m.id, vm: m.vm, step, round, diskBytes: put.stored.size, wireBytes: wire, kind: put.sent?.kind }, 'qemu migration: disk round sent');
      if (step === 'final') {
        await this.#o.channels.open(m.target.region, m.id, 'disk-image', { key, version: put.stored.version, signal }).then((ch) => ch.close().catch(() => undefined));
        await this.#o.blob.remove(key).catch(() => undefined);
        return;
      }
      if (wire < put.stored.size * PRECOPY_DONE_FRACTION) return;
    }
  }
}

/** How long a failed step waits for QEMU to settle its cancelled migration before counting the destination as "may run". */
const SETTLE_CANCEL_MS = 10_000;

/**
 * Whether a migration that a failed step gives up on may still have given
 * the destination the whole state. QEMU is asked to cancel first, so it
 * cannot complete afterwards, and then watched until it says how it ended:
 * only `completed` (or no answer within SETTLE_CANCEL_MS) means the
 * destination may run; `failed`, `cancelled` and `none` (no migration) mean
 * it cannot. Asked of QEMU directly, not of whichever wait the failure
 * interrupted: a broken channel that lands while the step waits for QEMU's
 * next event must not count as "the destination cannot run" if QEMU
 * completed in that moment (that is how two copies would run). `events` is
 * the step's own watch (QEMU's MIGRATION events among its events).
 */
async function mayHaveCompleted(qmp: QmpClient, events: QmpEventWatch, pollMs: number): Promise<boolean> {
  await cancelMigration(qmp).catch(() => undefined);
  for (const deadline = Date.now() + SETTLE_CANCEL_MS; ; await events.next(pollMs)) {
    const info = await migrationInfo(qmp).catch(() => null);
    if (info === null) return true;
    if (info.status === 'completed') return true;
    if (info.status === 'failed' || info.status === 'cancelled' || info.status === 'none') return false;
    if (Date.now() > deadline) return true;
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
