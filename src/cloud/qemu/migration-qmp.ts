/**
 * QEMU's side of a live migration, as QMP commands: the destination
 * (started `-S -incoming defer`) listening for the state stream and
 * exporting its disk over NBD, then continued once the stream completed;
 * the source mirroring its disk to that export and migrating its state,
 * watched through `query-migrate`. Every socket is a Unix socket in the
 * guest's own directory (0700): the daemons carry the bytes between hosts
 * (src/migration/migrate-service.ts), QEMU never listens on the network.
 *
 * Why the disk is mirrored (drive-mirror to the destination's NBD export,
 * `copy-mode: write-blocking`) rather than sent as blob deltas: once the
 * mirror is ready every guest write lands on both disks before it
 * completes, so when QEMU pauses the source for its stop-and-copy the
 * destination's disk is already identical and the pause carries no disk
 * bytes at all; a final blob delta would have to read and hash the whole
 * overlay inside the pause (downtime growing with the disk). It is also
 * how libvirt migrates non-shared storage.
 *
 * Invariants: each function is one step the caller sequences; answers are
 * parsed with zod at this edge; a step that QEMU refuses throws its
 * QmpError (the caller names the VM).
 */
import { z } from 'zod';
import type { QmpClient, QmpEvent } from './qmp.ts';

/** The node name of every guest's disk (qemu-command.ts) and so the NBD export's name. */
export const DISK_NODE = 'disk0';
const MIRROR_NODE = 'dwcp-migration-nbd';
const MIRROR_JOB = 'dwcp-migration-mirror';

// --- multifd -------------------------------------------------------------------------

export const MULTIFD_COMPRESSIONS = ['none', 'zlib', 'zstd'] as const;
export type MultifdCompression = (typeof MULTIFD_COMPRESSIONS)[number];
/** Multifd channels at most: each is a connection (and a stream between the daemons) of its own. */
export const MAX_MULTIFD_CHANNELS = 8;

/**
 * QEMU's multifd: the guest's RAM pages go over `channels` connections of
 * their own beside the main one, compressed (or not) by QEMU's own threads.
 * Why a daemon may use it: the relay carrying the stream costs CPU per byte
 * (Noise, the muxer, the sockets), and QEMU's zstd on its own threads sends
 * a quarter of the bytes of plain migration for a freshly booted guest,
 * without any of the relay's CPU (bench/RESULTS.md, migrate). Zero pages
 * stay on the main channel as markers, as without multifd. Both QEMUs must
 * be set alike before the stream starts.
 *
 * On by default (DEFAULT_MULTIFD) again since 2026-12-08. It was off for
 * a day: with QEMU 7.2 under TCG, two of about 130 multifd migrations left a
 * guest whose kernel soon died of corrupted memory. Plain migrations did
 * too, QEMU's own direct one among them: QEMU before 9.0 loses guest stores
 * from the migration's dirty bitmap under TCG (upstream 03bfc2188f), not a
 * multifd fault. On QEMU 10.0.2, 30 multifd migrations through dwcp and 30
 * direct ones broke no guest, and dwcp took 3.2x QEMU direct's total time
 * against 10x without multifd (bench/RESULTS.md, migrate).
 */
export interface Multifd {
  readonly channels: number;
  readonly compression: MultifdCompression;
}

/** What a daemon uses unless configured otherwise (fleet.migration.multifdChannels, multifdCompression). */
export const DEFAULT_MULTIFD: Multifd = { channels: 2, compression: 'zstd' };

async function setMultifd(qmp: QmpClient, multifd: Multifd | null, capabilities: { capability: string; state: boolean }[] = []): Promise<void> {
  await qmp.execute('migrate-set-capabilities', { capabilities: [...capabilities, { capability: 'multifd', state: multifd !== null }] });
  if (multifd !== null) await qmp.execute('migrate-set-parameters', { 'multifd-channels': multifd.channels, 'multifd-compression': multifd.compression });
}

// --- destination ---------------------------------------------------------------------

/**
 * Starts listening for the state stream at `path` (once per QEMU: QEMU
 * refuses a second migrate-incoming), with the source's multifd settings.
 * With multifd, the first connection to `path` is taken as the main
 * channel (QEMU 7.2 does not tell them apart by their first bytes).
 * QEMU announces the stream's end (MIGRATION, completed) from here on.
 */
export async function listenForState(qmp: QmpClient, path: string, multifd: Multifd | null): Promise<void> {
  // `events`: QEMU says MIGRATION (completed) only with it, and that event is what runs the destination at once (qemu-provider #attach).
  await setMultifd(qmp, multifd, [{ capability: 'events', state: true }]);
  await qmp.execute('migrate-incoming', { uri: `unix:${path}` });
}

/** Exports the disk, writable, at `path` for the source's mirror. */
export async function exportDisk(qmp: QmpClient, path: string): Promise<void> {
  await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path } } });
  await qmp.execute('nbd-server-add', { device: DISK_NODE, writable: true });
}

/**
 * Runs a destination whose stream completed: the export goes first (its
 * write permission conflicts with the guest's own disk device once the
 * disk is activated), then `cont`.
 */
export async function runReceived(qmp: QmpClient): Promise<void> {
  await qmp.execute('nbd-server-stop').catch(() => undefined);
  await qmp.execute('cont');
}

// --- source --------------------------------------------------------------------------

/** Connects to the destination's export (through the daemon's socket at `path`) and mirrors the disk to it. */
export async function startMirror(qmp: QmpClient, path: string): Promise<void> {
  await qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': MIRROR_NODE, server: { type: 'unix', path }, export: DISK_NODE });
  // sync top: the base image is the same file, by hash, at both ends; only the overlay's data moves.
  await qmp.execute('blockdev-mirror', { 'job-id': MIRROR_JOB, device: DISK_NODE, target: MIRROR_NODE, sync: 'top', 'copy-mode': 'write-blocking' });
}

const JobsSchema = z.array(z.object({ device: z.string(), ready: z.boolean().optional(), offset: z.number(), len: z.number(), status: z.string().optional() }).passthrough());

/** The mirror's progress: ready once every write goes to both disks. Null when there is no mirror job. */
export async function mirrorState(qmp: QmpClient): Promise<{ ready: boolean; offset: number; len: number } | null> {
  const jobs = JobsSchema.parse(await qmp.execute('query-block-jobs'));
  const job = jobs.find((j) => j.device === MIRROR_JOB);
  return job === undefined ? null : { ready: job.ready === true, offset: job.offset, len: job.len };
}

/**
 * Ends the mirror and lets go of the export. After a completed migration
 * (the source paused) `block-job-cancel` of a ready mirror leaves the
 * destination a consistent copy; after an aborted one it just stops.
 */
export async function stopMirror(qmp: QmpClient, waitMs = 10_000): Promise<void> {
  await cancelMirror(qmp, waitMs);
  await releaseMirrorTarget(qmp);
}

/** The first half of stopMirror: cancels the mirror job and waits (at most `waitMs`) until QEMU no longer lists it. */
export async function cancelMirror(qmp: QmpClient, waitMs = 10_000): Promise<void> {
  const watch = new QmpEventWatch(qmp, MIRROR_EVENTS);
  try {
    await qmp.execute('block-job-cancel', { device: MIRROR_JOB, force: true }).catch(() => undefined);
    for (const until = performance.now() + waitMs; performance.now() < until; await watch.next(20)) {
      if ((await mirrorState(qmp).catch(() => null)) === null) break;
    }
  } finally {
    watch.close();
  }
}

/**
 * The second half: removes the mirror's NBD node, which closes its
 * connection. Through a relay that can take a round trip through both
 * daemons (QEMU's NBD client closes its connection politely), so a caller
 * whose mirror is already cancelled need not wait for it.
 */
export async function releaseMirrorTarget(qmp: QmpClient): Promise<void> {
  await qmp.execute('blockdev-del', { 'node-name': MIRROR_NODE }).catch(() => undefined);
}

/** The events that say a mirror (BLOCK_JOB_*) or a migration (MIGRATION: a status change; MIGRATION_PASS: a round) moved on. */
export const MIRROR_EVENTS = ['BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED', 'BLOCK_JOB_ERROR'] as const;
export const MIGRATION_EVENTS = ['MIGRATION', 'MIGRATION_PASS'] as const;

/**
 * QEMU's events named in `events`, watched from the moment the watch is
 * made: `next(ms)` resolves at once if one came since the last `next` (or
 * since the watch was made), else at the next one or after `ms`, whichever
 * comes first. A watcher that polls query-block-jobs or query-migrate waits
 * on this rather than a bare timer, so it answers a state change at once
 * instead of up to a poll interval late (a live migration's total time
 * includes that wait), and still looks again at least every `ms`.
 *
 * Why a watch made before the first query and not a wait subscribed after
 * each one: QEMU often says `completed` while the query-migrate that its
 * previous MIGRATION_PASS woke is still in flight; a wait that subscribed
 * only once that query answered ("active") slept through the event for the
 * whole interval, ~100 ms of every live migration (bench/RESULTS.md,
 * migrate, "where the live step's fixed time went").
 *
 * One waiter at a time; `close` unsubscribes and ends a wait under way.
 */
export class QmpEventWatch {
  readonly #unsubscribe: () => void;
  #seen = false;
  #wake: (() => void) | null = null;

  constructor(qmp: Pick<QmpClient, 'subscribe'>, events: readonly string[]) {
    this.#unsubscribe = qmp.subscribe((e: QmpEvent) => {
      if (!events.includes(e.event)) return;
      this.#seen = true;
      this.#wake?.();
    });
  }

  next(ms: number): Promise<void> {
    if (this.#seen) {
      this.#seen = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#wake = null;
        this.#seen = false;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wake = done;
    });
  }

  close(): void {
    this.#unsubscribe();
    this.#wake?.();
  }
}

/**
 * The throttle threshold while the migration is young: QEMU throttles the
 * guest's CPUs (auto-converge) only when a round dirtied more than this
 * percentage of what it sent; 100 holds throttling back until rounds truly
 * lose ground. Lowered to QEMU's default (50) after K rounds without
 * converging (convergence.ts).
 */
export const THROTTLE_HELD = 100;
export const THROTTLE_ARMED = 50;

/**
 * The share of the operator's maximum pause (--max-downtime) that QEMU is
 * given as its `downtime-limit`. QEMU's limit is a target, not a bound: it
 * stops the guest once the dirty pages left, at the bandwidth it measured
 * over the last round, would take less than the limit, and the final copy
 * then runs slower whenever the relay, QEMU's compression threads and the
 * guest share the cores unevenly. Half leaves room for that overshoot.
 */
export const QEMU_DOWNTIME_SHARE = 0.5;

/**
 * Starts migrating the state to the daemon's socket at `path`, for a pause
 * of at most `maxDowntimeMs` (QEMU_DOWNTIME_SHARE of it goes to QEMU as its
 * target); with multifd QEMU connects to `path` 1 + channels times, the main
 * channel first.
 */
export async function startMigration(qmp: QmpClient, path: string, maxDowntimeMs: number, multifd: Multifd | null): Promise<void> {
  // Capabilities can only change between migrations; auto-converge is on from the start and held back by its threshold.
  await setMultifd(qmp, multifd, [{ capability: 'auto-converge', state: true }, { capability: 'events', state: true }]);
  const downtimeLimit = Math.max(1, Math.round(maxDowntimeMs * QEMU_DOWNTIME_SHARE));
  await qmp.execute('migrate-set-parameters', { 'downtime-limit': downtimeLimit, 'throttle-trigger-threshold': THROTTLE_HELD, 'max-bandwidth': 0 });
  await qmp.execute('migrate', { uri: `unix:${path}` });
}

/** Lets QEMU throttle the guest (auto-converge) from now on. */
export async function armThrottle(qmp: QmpClient): Promise<void> {
  await qmp.execute('migrate-set-parameters', { 'throttle-trigger-threshold': THROTTLE_ARMED });
}

export async function cancelMigration(qmp: QmpClient): Promise<void> {
  await qmp.execute('migrate_cancel');
}

const MigrateInfoSchema = z
  .object({
    status: z.string().optional(),
    'total-time': z.number().optional(),
    downtime: z.number().optional(),
    'expected-downtime': z.number().optional(),
    'error-desc': z.string().optional(),
    'cpu-throttle-percentage': z.number().optional(),
    ram: z
      .object({
        transferred: z.number(),
        remaining: z.number(),
        total: z.number(),
        'dirty-sync-count': z.number(),
        'dirty-pages-rate': z.number().optional(),
        mbps: z.number().optional(),
      })
      .passthrough()
      .optional(),
  })
  .passthrough();

/** What `query-migrate` says, in the fields the transport reads. */
export interface MigrationInfo {
  /** none, setup, active, device, pre-switchover, completed, failed, cancelling, cancelled, … */
  readonly status: string;
  readonly transferredBytes: number;
  readonly remainingBytes: number;
  readonly totalBytes: number;
  /** Dirty-bitmap syncs: one per pre-copy round. */
  readonly rounds: number;
  readonly dirtyPagesPerSecond: number;
  readonly downtimeMs: number | null;
  readonly totalTimeMs: number | null;
  readonly throttlePercent: number;
  readonly error: string | null;
}

export async function migrationInfo(qmp: QmpClient): Promise<MigrationInfo> {
  const info = MigrateInfoSchema.parse(await qmp.execute('query-migrate'));
  return {
    status: info.status ?? 'none',
    transferredBytes: info.ram?.transferred ?? 0,
    remainingBytes: info.ram?.remaining ?? 0,
    totalBytes: info.ram?.total ?? 0,
    rounds: info.ram?.['dirty-sync-count'] ?? 0,
    dirtyPagesPerSecond: info.ram?.['dirty-pages-rate'] ?? 0,
    downtimeMs: info.downtime ?? null,
    totalTimeMs: info['total-time'] ?? null,
    throttlePercent: info['cpu-throttle-percentage'] ?? 0,
    error: info['error-desc'] ?? null,
  };
}
