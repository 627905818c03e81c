/**
 * The `qemu` provider: real QEMU guests on this host, behind the same
 * CloudProvider interface as the clouds. Each guest is a directory
 * (vm-store.ts: record, qcow2 overlay, QMP socket, serial log, pid file), a
 * QEMU process started detached through a small shell that records its exit
 * status (guest-process.ts), and a QMP connection (qmp.ts) through which
 * every lifecycle step goes: create (spawn, wait for `running`), stop (ACPI
 * `system_powerdown`, then `quit` after a timeout, then SIGKILL), start,
 * terminate (`quit`, then the overlay is deleted unless kept).
 *
 * Guests outlive dwcpd: on open, every guest directory is read and each
 * guest whose QEMU still runs (its pid alive, /proc showing the start time
 * recorded at launch and this guest's command line, QMP answering) is
 * re-adopted; the rest are reported stopped with the reason. A pid reused
 * by another process is never touched.
 *
 * Invariants:
 * - Level-triggered: a guest's state is read from the facts (is its QEMU
 *   alive, what QMP says) on every list and get, never assumed; `power` in
 *   the record is what dwcp last asked, and a stop or terminate that dwcpd
 *   did not finish (it crashed, restarted) is finished when next seen.
 * - A QEMU that dies is `stopped`, with how it ended (the SHUTDOWN event's
 *   cause, the exit status the shell recorded, QEMU's last log line) as the
 *   provider state: never an exception from list or get.
 * - Operations on one guest run one at a time; capacity checks and the
 *   reservation they lead to run one at a time for the whole host, so two
 *   creates cannot both pass the check. Reads never wait for an operation:
 *   a guest under one reports the operation's state.
 * - Capacity: vCPUs and memory of guests that hold them (pending, running,
 *   stopping), disks of every guest not terminated, and a new disk must fit
 *   the free space of the data directory's filesystem (guest-state.ts).
 * - Every failure is a ProviderError naming the VM and the cause; a missing
 *   or unusable QEMU binary makes list/create/start fail with its path (the
 *   daemon and the other providers go on), and is checked again each time,
 *   so installing QEMU needs no restart.
 * - close() lets go of the guests (QMP connections closed, waits abandoned)
 *   and never stops them: they run on until the next dwcpd adopts them.
 * - A migration's incoming guest (create with `incoming`) never boots
 *   before its migration says so: for live a QEMU started `-S -incoming
 *   defer` (reported stopped, holding its memory) that runs only once its
 *   stream completed; for cold and warm a disk and no process until a
 *   start after the cutover (docs/qemu.md, Receiving a migration).
 */
import { randomBytes } from 'node:crypto';
import { execFile, type ChildProcess } from 'node:child_process';
import { chmod, copyFile, mkdir, rename, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { DwcpError } from '../../errors.ts';
import type { Logger } from '../../log.ts';
import {
  CancelledError,
  CapacityError,
  checkCreateRequest,
  checkTags,
  IncorrectStateError,
  InvalidRequestError,
  matchesFilter,
  NotFound,
  ProviderError,
  progressReporter,
  throwIfAborted,
  TARGET_STATE,
  INSTANCE_STATES,
  type CallOptions,
  type CloudProvider,
  type CreateInstanceRequest,
  type Instance,
  type InstanceFilter,
  type InstanceState,
  type InstanceTypeInfo,
  type InstanceTypeQuery,
  type LongOperation,
  type LongOperationOptions,
  type Tags,
  type ZoneHealth,
} from '../provider.ts';
import { chooseAccel, type AccelChoice, type AccelMode } from './accel.ts';
import { capacityProblem, describeGuestEnd, stateOfRunStatus, type Footprint } from './guest-state.ts';
import { killGuest, launch, logTail, readExitStatus, recognise, shellRunning } from './guest-process.ts';
import type { GuestImage, ImageSource } from './image-source.ts';
import type { QemuMetrics, VmUtilisation } from './metrics.ts';
import type { UsageQuery, UsageSample } from '../utilisation.ts';
import { QemuUsageRates } from './qemu-utilisation.ts';
import { bootClockCs, dropLease, leaseFilesOf, leaseText, prepareLeaseForLaunch, readLapsedNote, writeLease } from './guest-lease.ts';
import { qemuArgs, SANDBOX, shimArgs, type Accel, type GuestBoot } from './qemu-command.ts';
import { backupDisk } from './backup-qmp.ts';
import { exportDisk, listenForState, runReceived, type Multifd } from './migration-qmp.ts';
import { createDisk, rebaseUnsafe, virtualSize } from './qemu-img.ts';
import { capSerialLog } from './serial-cap.ts';
import { QmpClient, type QmpEvent } from './qmp.ts';
import { VmStore, type ImageRef, type QemuVmRecord, type VmFiles } from './vm-store.ts';

export interface QemuTypeSpec {
  readonly vcpus: number;
  readonly memoryMiB: number;
  /** The guest's disk (a blank data disk for kernel images; at least the base's size for disk images). */
  readonly diskGiB: number;
}

export const DEFAULT_QEMU_TYPES: Readonly<Record<string, QemuTypeSpec>> = {
  'qemu.micro': { vcpus: 1, memoryMiB: 256, diskGiB: 1 },
  'qemu.small': { vcpus: 1, memoryMiB: 1024, diskGiB: 10 },
  'qemu.medium': { vcpus: 2, memoryMiB: 4096, diskGiB: 20 },
  'qemu.large': { vcpus: 4, memoryMiB: 8192, diskGiB: 40 },
};

export interface QemuTimeouts {
  /** Connect, greeting and capabilities of one QMP connection. */
  readonly qmpConnectMs: number;
  /** One QMP command. */
  readonly qmpCallMs: number;
  /** From spawning QEMU until QMP answers. */
  readonly bootMs: number;
  /** How long a stop waits for the guest to power off after system_powerdown before `quit`. */
  readonly powerdownMs: number;
  /** How long after `quit` before SIGKILL, and after SIGKILL before giving up. */
  readonly quitMs: number;
}

export const DEFAULT_QEMU_TIMEOUTS: QemuTimeouts = { qmpConnectMs: 5_000, qmpCallMs: 10_000, bootMs: 60_000, powerdownMs: 30_000, quitMs: 10_000 };

export interface QemuProviderOptions {
  readonly region: string;
  readonly zones?: readonly string[];
  /** `<dataDir>/qemu`: guests live in `vms/<id>/` under it. */
  readonly dir: string;
  readonly binary?: string;
  readonly qemuImg?: string;
  /** Runs QEMU and records its exit status; default /bin/sh. */
  readonly shell?: string;
  readonly accel?: AccelMode;
  readonly kvmProbeKernel?: string | undefined;
  readonly kvmProbeTimeoutMs?: number;
  /** What the guests may use in total. */
  readonly capacity: { readonly vcpus: number; readonly memoryMiB: number; readonly diskGiB: number };
  readonly types?: Readonly<Record<string, QemuTypeSpec>>;
  readonly images: ImageSource;
  readonly log: Logger;
  readonly metrics?: QemuMetrics;
  readonly timeouts?: Partial<QemuTimeouts>;
  /** How long terminated guests stay listed; default one hour. */
  readonly terminatedRetentionMs?: number;
  /** How often utilisation is sampled for the metrics; 0: only on demand. Default 15 s. */
  readonly utilisationIntervalMs?: number;
  /** A guest's serial log past this is rotated to serial.log.1 (serial-cap.ts), checked every minute. Default 16 MiB. */
  readonly serialLogMaxBytes?: number;
  /** How often each guest's lease watchdog reads its lease (guest-lease.ts); default 1 s. */
  readonly leasePollMs?: number;
}

const SERIAL_CHECK_MS = 60_000;
/** One DR backup of one guest's disk, at most (its copy runs alongside the guest). */
const BACKUP_TIMEOUT_MS = 10 * 60_000;

const ID_RE = /^qemu-[0-9a-f]{12}$/;
/** QEMU run states in which it holds the guest's CPUs stopped. */
const PAUSED_STATUSES: ReadonlySet<string> = new Set(['paused', 'postmigrate', 'finish-migrate']);
const GIB = 1024 ** 3;
/** The kernel command line is at most 2048 bytes on x86; the image's own leaves room for this much user data. */
const MAX_USER_DATA = 1024;
const BALLOON_POLL_SECONDS = 5;
const DEFAULT_LEASE_POLL_MS = 1_000;
/** The shell's exit status of a QEMU killed by SIGKILL (128 + 9): what the lease watchdog does. */
const SIGKILLED = 137;
/**
 * How long to wait, at most, for the shell to write the exit status once QEMU
 * is gone; only while the shell still runs, so normally a few milliseconds.
 * Generous because a host at load 50 was seen to take over 2 s to schedule it.
 */
const EXIT_STATUS_WAIT_MS = 30_000;

interface Guest {
  record: QemuVmRecord;
  readonly files: VmFiles;
  qmp: QmpClient | null;
  /** The shell this dwcpd started (null for an adopted guest). */
  child: ChildProcess | null;
  /** The long operation under way; its state shows while it runs. */
  op: LongOperation | null;
  /** Operations and refreshes on this guest, one at a time. */
  lock: Promise<unknown>;
  busy: boolean;
  state: InstanceState;
  providerState: string;
  /** QEMU's last SHUTDOWN event cause, while dwcpd was connected. */
  shutdownCause: string | null;
  /** What dwcpd asked that ends the QEMU now running, if anything. */
  requested: 'stop' | 'terminate' | null;
  /** A live QEMU of this guest that QMP does not answer: not managed, reported stopped; retried on every read. */
  unmanaged: string | null;
  /** Whether the next successful QMP connection is an adoption (logged as such). */
  adopted: boolean;
  /** An incoming guest's QEMU: which migration endpoints it was asked to open (state stream, disk export). */
  readonly listening: Set<'state' | 'disk'>;
  /** QEMU holds the guest's CPUs stopped (its STOP and RESUME events, and its run state when observed). */
  vmPaused: boolean;
}

/** A migration channel a destination QEMU opens: the state stream, or its disk's NBD export. */
export type IncomingChannel = 'state' | 'disk';

/**
 * What the qemu migration transport (src/migration/qemu-transfer.ts and
 * migrate-service.ts) may do with this provider's guests, and nothing more.
 */
export interface QemuMigrationGuests {
  /** A running guest, for the source of a live migration: its QMP connection and files. */
  migrationSource(id: string): Promise<{ readonly qmp: QmpClient; readonly files: VmFiles; readonly name: string }>;
  /** The socket the guest receiving `migration` listens on for `channel` (opened on first ask, the state channel with the source's multifd settings). */
  incomingEndpoint(migration: string, channel: IncomingChannel, multifd?: Multifd | null): Promise<string>;
  /** The disk file of a guest (a cold or warm source reads it). */
  diskPath(id: string): string;
  /** Writes the disk of the guest receiving `migration` (cold or warm; not running) through `write(path)`. */
  receiveDisk(migration: string, write: (path: string) => Promise<void>): Promise<void>;
  /** Whether the guest's QEMU holds it paused (a completed live migration leaves its source so), as QEMU last said. */
  migrationPaused(id: string): boolean;
  /** Continues a paused guest (`cont`): a live migration's source after a rollback. */
  resumePaused(id: string): Promise<void>;
}

interface Usable {
  readonly binary: string;
  readonly version: string;
  readonly sandbox: boolean;
  readonly accel: Accel;
}

export class QemuProvider implements CloudProvider, QemuMigrationGuests {
  readonly kind = 'qemu' as const;
  readonly region: string;
  readonly description = 'qemu (real QEMU guests on this host)';
  readonly zones: readonly string[];

  readonly #o: QemuProviderOptions;
  readonly #store: VmStore;
  readonly #types: Readonly<Record<string, QemuTypeSpec>>;
  readonly #timeouts: QemuTimeouts;
  readonly #log: Logger;
  readonly #guests = new Map<string, Guest>();
  readonly #lifetime = new AbortController();
  readonly #background = new Set<Promise<unknown>>();
  #reserve: Promise<unknown> = Promise.resolve();
  #binary: { ok: true; binary: string; version: string; sandbox: boolean } | { ok: false; problem: string } | null = null;
  #accel: Promise<AccelChoice> | null = null;
  #sampler: NodeJS.Timeout | undefined;
  #serialCheck: NodeJS.Timeout | undefined;
  #latest: VmUtilisation[] = [];
  readonly #rates = new QemuUsageRates();

  private constructor(options: QemuProviderOptions) {
    this.#o = options;
    this.region = options.region;
    this.zones = options.zones && options.zones.length > 0 ? options.zones : [`${options.region}-a`];
    this.#store = new VmStore(options.dir);
    this.#types = options.types ?? DEFAULT_QEMU_TYPES;
    this.#timeouts = { ...DEFAULT_QEMU_TIMEOUTS, ...options.timeouts };
    this.#log = options.log;
  }

  /** Reads every guest directory and re-adopts the guests whose QEMU still runs. */
  static async open(options: QemuProviderOptions): Promise<QemuProvider> {
    const provider = new QemuProvider(options);
    await mkdir(options.dir, { recursive: true, mode: 0o700 });
    const loaded = await provider.#store.load();
    for (const p of loaded.problems) provider.#log.warn({ dir: p.dir, problem: p.problem }, 'qemu guest directory skipped');
    for (const record of loaded.records) provider.#guests.set(record.id, provider.#guest(record, true));
    await provider.#checkBinary();
    // The accelerator is chosen now, in the background (accel auto's probe boot takes up to kvmProbeTimeoutMs), so the first create need not wait for it.
    provider.#track(provider.#usable('open'));
    await Promise.all([...provider.#guests.values()].map((g) => provider.#refresh(g)));
    const every = options.utilisationIntervalMs ?? 15_000;
    if (every > 0) {
      provider.#sampler = setInterval(() => void provider.utilisation().catch(() => undefined), every);
      provider.#sampler.unref();
    }
    provider.#serialCheck = setInterval(() => void provider.capSerialLogs(), SERIAL_CHECK_MS);
    provider.#serialCheck.unref();
    return provider;
  }

  /** Rotates every guest's serial log that passed serialLogMaxBytes; a failure is logged, never thrown. */
  async capSerialLogs(): Promise<void> {
    const maxBytes = this.#o.serialLogMaxBytes ?? 16 * 1024 * 1024;
    await Promise.all(
      // A terminated guest's log no longer grows (its record is kept an hour only to be listed).
      [...this.#guests.values()].filter((g) => g.record.power !== 'terminated').map(async (g) => {
        try {
          const moved = await capSerialLog(g.files.serial, maxBytes);
          if (moved > 0) this.#log.info({ vm: g.record.name, id: g.record.id, bytes: moved, maxBytes }, 'qemu serial log rotated');
        } catch (err) {
          this.#log.warn({ vm: g.record.name, id: g.record.id, err: (err as Error).message }, 'qemu serial log could not be rotated');
        }
      }),
    );
  }

  #guest(record: QemuVmRecord, adopted: boolean): Guest {
    return {
      record,
      files: this.#store.files(record.id),
      qmp: null,
      child: null,
      op: null,
      lock: Promise.resolve(),
      busy: false,
      state: record.power === 'terminated' ? 'terminated' : 'stopped',
      providerState: record.power === 'terminated' ? 'terminated' : 'stopped',
      shutdownCause: null,
      requested: null,
      unmanaged: null,
      adopted,
      listening: new Set(),
      vmPaused: false,
    };
  }

  // --- the host: binary, accelerator --------------------------------------------------

  /** Finds the binary and asks it its version and whether it has the seccomp sandbox; remembers a working answer. */
  async #checkBinary(): Promise<void> {
    if (this.#binary?.ok === true) return;
    const binary = this.#o.binary ?? 'qemu-system-x86_64';
    const run = (args: string[]) =>
      new Promise<{ ok: boolean; out: string; code?: string }>((resolve) => {
        execFile(binary, args, { timeout: 30_000 }, (err, stdout, stderr) => resolve({ ok: err === null, out: `${stdout}${stderr}`, code: (err as NodeJS.ErrnoException | null)?.code?.toString() }));
      });
    const sandboxed = await run(['-sandbox', SANDBOX, '-version']);
    const plain = sandboxed.ok ? sandboxed : await run(['-version']);
    if (!plain.ok) {
      const why = plain.code === 'ENOENT' ? 'not found' : plain.code === 'EACCES' ? 'not executable' : `does not run (${plain.out.trim().split('\n').at(-1) ?? plain.code ?? 'no output'})`;
      const problem = `qemu binary ${binary}: ${why}`;
      if (this.#binary === null || this.#binary.ok || this.#binary.problem !== problem) this.#log.error({ binary, problem }, 'qemu provider cannot run guests');
      this.#binary = { ok: false, problem };
      return;
    }
    const version = /QEMU emulator version (\S+)/.exec(plain.out)?.[1] ?? 'unknown';
    this.#binary = { ok: true, binary, version, sandbox: sandboxed.ok };
    this.#log.info({ binary, version, sandbox: sandboxed.ok }, 'qemu binary found');
  }

  /** The binary and accelerator guests start with, or the ProviderError saying why none can. */
  async #usable(operation: string): Promise<Usable> {
    await this.#checkBinary();
    const b = this.#binary;
    if (b === null || !b.ok) throw new ProviderError('qemu', operation, 'QemuUnavailable', b?.problem ?? 'qemu binary not checked');
    this.#accel ??= chooseAccel({
      mode: this.#o.accel ?? 'auto',
      binary: b.binary,
      probeKernel: this.#o.kvmProbeKernel,
      probeTimeoutMs: this.#o.kvmProbeTimeoutMs ?? 10_000,
      signal: this.#lifetime.signal,
    }).then((choice) => {
      this.#log.info({ accel: choice.accel, reason: choice.reason }, choice.accel === null ? 'qemu accelerator unusable' : `qemu guests run on ${choice.accel.toUpperCase()}`);
      return choice;
    });
    const choice = await this.#accel;
    if (choice.accel === null) throw new ProviderError('qemu', operation, 'AccelUnavailable', choice.reason);
    return { binary: b.binary, version: b.version, sandbox: b.sandbox, accel: choice.accel };
  }

  /** The accelerator guests run on (starting the choice if it has not started): for zone health and tests. */
  async accelerator(): Promise<AccelChoice> {
    await this.#usable('accelerator').catch(() => undefined);
    return this.#accel === null ? { accel: null, reason: this.#binary?.ok === false ? this.#binary.problem : 'not chosen yet' } : this.#accel;
  }

  // --- reads -------------------------------------------------------------------------

  async list(filter?: InstanceFilter, options: CallOptions = {}): Promise<Instance[]> {
    throwIfAborted(options.signal, 'qemu', 'list');
    await this.#checkBinary();
    if (this.#binary?.ok === false) throw new ProviderError('qemu', 'list', 'QemuUnavailable', this.#binary.problem);
    await Promise.all([...this.#guests.values()].map((g) => this.#refresh(g)));
    await this.#purge();
    return [...this.#guests.values()]
      .sort((a, b) => a.record.createdAt - b.record.createdAt || a.record.id.localeCompare(b.record.id))
      .map((g) => this.#instance(g))
      .filter((i) => matchesFilter(i, filter));
  }

  async get(id: string, options: CallOptions = {}): Promise<Instance> {
    throwIfAborted(options.signal, 'qemu', 'get');
    const g = this.#find(id, 'get');
    await this.#refresh(g);
    return this.#instance(g);
  }

  /**
   * The guest's state as last observed, without reading /proc or asking
   * QEMU (get() does both, each time): for a caller that waits for a change
   * the provider sees by itself (an incoming guest is run at QEMU's
   * MIGRATION event) and must not load the host while it waits, as the
   * migrate bench's wait for the destination does. Undefined for an id this
   * provider does not hold.
   */
  observedState(id: string): InstanceState | undefined {
    return this.#guests.get(id)?.state;
  }

  #find(id: string, operation: string): Guest {
    if (typeof id !== 'string' || !ID_RE.test(id)) throw new InvalidRequestError('qemu', operation, 'InvalidInstanceID.Malformed', `id: ${JSON.stringify(id)} is not a qemu VM id (qemu- and 12 hex digits)`);
    const g = this.#guests.get(id);
    if (g === undefined) throw new NotFound('qemu', operation, 'InvalidInstanceID.NotFound', `qemu VM ${id} does not exist`);
    return g;
  }

  /** Runs `work` after every earlier operation on the guest, marking it busy meanwhile. */
  #locked<T>(g: Guest, work: () => Promise<T>): Promise<T> {
    const result = g.lock.then(async () => {
      g.busy = true;
      try {
        return await work();
      } finally {
        g.busy = false;
      }
    });
    g.lock = result.catch(() => undefined);
    return result;
  }

  /** Brings the guest's state up to date from its process and QMP; skipped while an operation is on it (its state stands). */
  #refresh(g: Guest): Promise<void> {
    if (g.busy || g.op !== null) return Promise.resolve();
    return this.#locked(g, () => this.#observe(g, true));
  }

  /**
   * Reads the guest's state from the facts. With `converge`, a QEMU still
   * running although dwcp asked it to stop or terminate (a dwcpd that did not
   * finish) gets that operation again, queued behind this read.
   */
  async #observe(g: Guest, converge: boolean): Promise<void> {
    const r = g.record;
    if (r.power === 'terminated' && r.process === null) {
      if (r.terminatedAt !== null) {
        this.#setState(g, 'terminated', endedState('terminated', r));
        return;
      }
      // A terminate that dwcpd did not finish (QEMU is gone, its disk not yet): finish it.
      this.#setState(g, 'stopping', 'stopping: finishing a terminate dwcpd did not finish');
      if (converge) this.#track(this.terminate(r.id));
      return;
    }
    if (r.process === null) {
      this.#setState(g, 'stopped', endedState('stopped', r));
      return;
    }
    const seen = await recognise(r.process, r.id, g.files);
    if (seen.kind === 'foreign') {
      await this.#recordEnd(g, `QEMU is gone and ${seen.why}`);
      return this.#observe(g, converge);
    }
    if (seen.kind === 'gone') {
      await this.#recordEnd(g);
      return this.#observe(g, converge);
    }
    if (r.power !== 'running') {
      this.#setState(g, 'stopping', `stopping: finishing a ${r.power === 'stopped' ? 'stop' : 'terminate'} dwcpd did not finish`);
      if (converge) this.#track(r.power === 'stopped' ? this.stop(r.id) : this.terminate(r.id));
      return;
    }
    const qmp = await this.#connect(g);
    if (qmp === null) return;
    try {
      const status = String(((await qmp.execute('query-status')) as { status?: unknown }).status ?? 'unknown');
      if (r.incoming !== null) return await this.#observeIncoming(g, qmp, status);
      g.vmPaused = PAUSED_STATUSES.has(status);
      this.#setState(g, stateOfRunStatus(status), status);
    } catch (err) {
      this.#setState(g, g.state, `${g.state} (QMP query-status failed: ${errorText(err)})`);
    }
  }

  /**
   * A destination QEMU (`-S -incoming defer`): stopped while it waits for
   * or takes the stream (it has never run the guest); once the stream
   * completed (QEMU paused with the whole state) it is run here, whoever
   * asked: the migration's end is the guest's own, not an escalation.
   */
  async #observeIncoming(g: Guest, qmp: QmpClient, status: string): Promise<void> {
    const r = g.record;
    const migration = r.incoming?.migration ?? '?';
    if (status === 'paused') {
      const answer = (await qmp.execute('query-migrate')) as { status?: unknown };
      if (answer.status === 'completed') {
        await runReceived(qmp);
        r.incoming = null;
        r.power = 'running';
        // Running from `cont` on, whatever the record's save costs: a get() meanwhile finds the guest busy and answers
        // the state held here, and the guest may already have printed its first lines.
        this.#setState(g, 'running', 'running');
        await this.#store.save(r);
        this.#log.info({ vm: r.id, name: r.name, migration }, 'qemu guest received its migration and runs');
        return;
      }
    }
    this.#setState(g, 'stopped', `stopped: receiving migration ${migration} (QEMU ${status})`);
  }

  /** The guest's QMP connection, connecting (adopting) if needed; null when QMP does not answer (then reported stopped, unmanaged). */
  async #connect(g: Guest): Promise<QmpClient | null> {
    if (g.qmp !== null && !g.qmp.isClosed) return g.qmp;
    const pid = g.record.process?.pid;
    try {
      const qmp = await QmpClient.connect({ path: g.files.qmp, connectTimeoutMs: this.#timeouts.qmpConnectMs, callTimeoutMs: this.#timeouts.qmpCallMs, onCall: this.#onQmpCall, signal: this.#lifetime.signal });
      this.#attach(g, qmp);
      if (g.unmanaged !== null || g.adopted) this.#log.info({ vm: g.record.id, name: g.record.name, pid }, g.adopted ? 'qemu guest re-adopted' : 'qemu guest answers QMP again');
      g.unmanaged = null;
      g.adopted = false;
      return qmp;
    } catch (err) {
      const why = `QEMU pid ${pid} runs but its QMP socket did not answer (${errorText(err)}); left running, not managed, retried on the next read`;
      if (g.unmanaged === null) this.#log.warn({ vm: g.record.id, name: g.record.name, pid, err: errorText(err) }, 'qemu guest not adopted: QMP does not answer');
      g.unmanaged = why;
      this.#setState(g, 'stopped', `stopped: ${why}`);
      return null;
    }
  }

  readonly #onQmpCall = (command: string, seconds: number, ok: boolean): void => {
    this.#o.metrics?.observeQmp(command, seconds, ok);
  };

  #attach(g: Guest, qmp: QmpClient): void {
    g.qmp = qmp;
    qmp.subscribe((e: QmpEvent) => {
      if (e.event === 'SHUTDOWN') g.shutdownCause = typeof e.data['reason'] === 'string' ? e.data['reason'] : 'unknown';
      if (e.event === 'STOP') g.vmPaused = true;
      if (e.event === 'RESUME') g.vmPaused = false;
      // A destination whose stream completed runs at once (its observation continues it).
      if (e.event === 'MIGRATION' && e.data['status'] === 'completed' && g.record.incoming !== null) this.#track(this.#refresh(g));
    });
    // The guest reports its memory through the balloon when asked to poll.
    qmp.execute('qom-set', { path: '/machine/peripheral/balloon0', property: 'guest-stats-polling-interval', value: BALLOON_POLL_SECONDS }).catch(() => undefined);
    void qmp.closed.then(() => {
      if (g.qmp === qmp) g.qmp = null;
      // QEMU ended (or the socket broke): record how, unless an operation is handling it or dwcpd is stopping.
      if (!this.#lifetime.signal.aborted) this.#track(this.#refresh(g));
    });
  }

  /** Records how the guest's last QEMU ended (exit status, shutdown cause, what dwcp asked) and forgets its process. */
  async #recordEnd(g: Guest, override?: string): Promise<void> {
    const r = g.record;
    const ref = r.process;
    let reason = override;
    if (reason === undefined && ref !== null) {
      // The file is read after each liveness check, never before it: a shell that wrote the status and exited between
      // a read and the check would otherwise read as "no status" (a CI failure showed exactly that).
      let status: number | null = null;
      for (const until = performance.now() + EXIT_STATUS_WAIT_MS; ; await delay(50)) {
        const shellLives = await shellRunning(ref, g.files);
        status = await readExitStatus(g.files.exit);
        if (status !== null || !shellLives || performance.now() >= until) break;
      }
      reason = describeGuestEnd({ exitStatus: status, shutdownCause: g.shutdownCause, requested: g.requested, logTail: status === null || status === 0 ? null : await logTail(g.files.log) });
      const lapsed = status === SIGKILLED ? await readLapsedNote(leaseFilesOf(g.files.dir)) : null;
      if (lapsed !== null) reason = `killed by its lease watchdog: its daemon did not renew the lease (${lapsed})`;
    }
    g.qmp?.close('QEMU ended');
    g.qmp = null;
    g.child = null;
    g.shutdownCause = null;
    g.requested = null;
    g.unmanaged = null;
    r.process = null;
    r.lastExit = { at: Date.now(), reason: reason ?? 'ended' };
    await this.#store.save(r);
    this.#log.info({ vm: r.id, name: r.name, reason: r.lastExit.reason }, 'qemu guest ended');
  }

  #setState(g: Guest, state: InstanceState, providerState: string): void {
    g.state = state;
    g.providerState = providerState;
    this.#updateGuestCounts();
  }

  #instance(g: Guest): Instance {
    const r = g.record;
    return {
      id: r.id,
      name: r.name,
      provider: 'qemu',
      region: this.region,
      zone: r.zone,
      type: r.type,
      vcpus: r.vcpus,
      memoryMiB: r.memoryMiB,
      state: g.state,
      providerState: g.providerState,
      tags: { ...r.tags },
      spot: false,
      launchTime: r.launchTime === null ? null : new Date(r.launchTime),
      image: r.image.name,
      privateIp: null,
      publicIp: null,
    };
  }

  /** Terminated guests past their retention go, directory and all. */
  async #purge(): Promise<void> {
    const keep = this.#o.terminatedRetentionMs ?? 3_600_000;
    for (const g of [...this.#guests.values()]) {
      const at = g.record.terminatedAt;
      if (g.state !== 'terminated' || at === null || at + keep > Date.now() || g.busy) continue;
      this.#guests.delete(g.record.id);
      this.#updateGuestCounts();
      await this.#store.remove(g.record.id);
    }
  }

  #updateGuestCounts(): void {
    const counts = Object.fromEntries(INSTANCE_STATES.map((s) => [s, 0])) as Record<InstanceState, number>;
    for (const g of this.#guests.values()) counts[g.state] += 1;
    this.#o.metrics?.setGuests(counts);
  }

  // --- lifecycle ---------------------------------------------------------------------

  async create(request: CreateInstanceRequest, options: LongOperationOptions = {}): Promise<Instance> {
    checkCreateRequest('qemu', request);
    throwIfAborted(options.signal, 'qemu', 'create');
    const vm = `VM ${request.name}`;
    const spec = this.#types[request.type];
    if (spec === undefined) throw new InvalidRequestError('qemu', 'create', 'InvalidInstanceType', `type: ${request.type} is not one of ${Object.keys(this.#types).join(', ')}`);
    const zone = request.zone ?? this.zones[0] ?? '';
    if (!this.zones.includes(zone)) throw new InvalidRequestError('qemu', 'create', 'InvalidZone', `zone: ${zone} is not one of ${this.zones.join(', ')}`);
    const userData = request.userData ?? null;
    if (userData !== null && (userData.length > MAX_USER_DATA || !/^[\x20-\x7e]*$/.test(userData))) {
      throw new InvalidRequestError('qemu', 'create', 'InvalidParameterValue', `userData: for ${vm}, at most ${MAX_USER_DATA} printable ASCII characters on one line (appended to the kernel command line)`);
    }
    const known = this.#byToken(request.idempotencyToken);
    if (known !== undefined) return this.#rejoin(known, options);
    await this.#usable('create');
    const image = await this.#materialise(request.image, 'create', vm);
    if (image.kind === 'disk' && userData !== null) throw new InvalidRequestError('qemu', 'create', 'InvalidParameterValue', `userData: ${vm} boots from a disk image, which has no way to receive user data yet`);
    let diskBytes = spec.diskGiB * GIB;
    if (image.kind === 'disk') {
      try {
        diskBytes = Math.max(diskBytes, await virtualSize(this.#o.qemuImg ?? 'qemu-img', image.path, image.format));
      } catch (err) {
        throw new InvalidRequestError('qemu', 'create', 'InvalidImage', `image ${image.name} for ${vm}: ${errorText(err)}`, { cause: err });
      }
    }
    const footprint = { vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, diskBytes };
    const incoming = request.incoming === undefined ? null : { migration: request.incoming, mode: request.incomingMode ?? 'cold' };
    // A live destination holds a QEMU (it must run to take the stream); a cold or warm one is only a disk until started.
    const waits = incoming?.mode === 'live';
    const reserved = await this.#reserveHost(async () => {
      // Checked again under the reservation: a create with the same token may have got here first.
      const again = this.#byToken(request.idempotencyToken);
      if (again !== undefined) return { g: again, fresh: false };
      await this.#checkCapacity('create', `${vm} (${request.type})`, footprint, null, true);
      const id = `qemu-${randomBytes(6).toString('hex')}`;
      const record: QemuVmRecord = {
        version: 1,
        id,
        name: request.name,
        zone,
        type: request.type,
        vcpus: spec.vcpus,
        memoryMiB: spec.memoryMiB,
        diskBytes,
        image: imageRef(image),
        tags: { ...request.tags },
        userData,
        idempotencyToken: request.idempotencyToken ?? null,
        power: incoming === null || waits ? 'running' : 'stopped',
        createdAt: Date.now(),
        launchTime: null,
        process: null,
        lastExit: null,
        terminatedAt: null,
        keptDisk: null,
        incoming,
      };
      await this.#store.create(id);
      await this.#store.save(record);
      const fresh = this.#guest(record, false);
      this.#setState(fresh, 'pending', 'pending: creating its disk');
      fresh.op = 'create';
      this.#guests.set(id, fresh);
      return { g: fresh, fresh: true };
    });
    const g = reserved.g;
    if (!reserved.fresh) return this.#rejoin(g, options);
    const progress = progressReporter('create', g.record.id, options.onProgress);
    const work = this.#locked(g, async () => {
      g.op = 'create';
      try {
        if (request.restoreDisk === undefined) await createDisk(this.#o.qemuImg ?? 'qemu-img', g.files.disk, diskBytes, image.kind === 'disk' ? { path: image.path, format: image.format } : null);
        else await this.#takeRestoredDisk(g, request.restoreDisk);
        if (incoming === null || waits) await this.#boot(g, 'create');
        else this.#setState(g, 'stopped', `stopped: receiving migration ${incoming.migration} (its disk)`);
      } catch (err) {
        // A create that did not get its guest running leaves nothing behind but the record, terminated with the reason.
        await this.#abandon(g, errorText(err));
        throw this.#startFailure('create', g, err);
      } finally {
        g.op = null;
      }
    });
    progress.report('accepted', g.state, g.providerState);
    return this.#await('create', g, progress, work, options, incoming === null ? undefined : 'stopped');
  }

  /** A DR backup's disk (backup-qmp.ts copies, restored from the blob store) becomes the guest's: moved into place, its backing pointed at this node's base image. */
  async #takeRestoredDisk(g: Guest, path: string): Promise<void> {
    const staged = `${g.files.disk}.restored`;
    try {
      await rename(path, staged);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
      await copyFile(path, staged);
    }
    if (g.record.image.kind === 'disk') await rebaseUnsafe(this.#o.qemuImg ?? 'qemu-img', staged, { path: g.record.image.path, format: g.record.image.format });
    await rename(staged, g.files.disk);
    this.#log.info({ vm: g.record.id, name: g.record.name }, 'qemu guest disk restored from a DR backup');
  }

  /**
   * A crash-consistent copy of a running guest's disk at `target`, taken
   * without stopping it (backup-qmp.ts): a qcow2 file holding what the
   * guest's overlay held at that moment, on the same base image.
   */
  backupDisk(id: string, target: string): Promise<void> {
    const g = this.#find(id, 'backup');
    return this.#locked(g, async () => {
      const qmp = g.record.process !== null && g.state === 'running' && g.record.incoming === null ? await this.#connect(g) : null;
      if (qmp === null) throw new IncorrectStateError('qemu', 'backup', 'IncorrectInstanceState', `qemu VM ${id} (${g.record.name}) is ${g.state} (${g.providerState}); only a running guest is backed up`, { instanceId: id });
      const r = g.record;
      await createDisk(this.#o.qemuImg ?? 'qemu-img', target, r.diskBytes, r.image.kind === 'disk' ? { path: r.image.path, format: r.image.format } : null);
      await backupDisk(qmp, target, { timeoutMs: BACKUP_TIMEOUT_MS });
    });
  }

  #byToken(token: string | undefined): Guest | undefined {
    return token === undefined ? undefined : [...this.#guests.values()].find((g) => g.record.idempotencyToken === token);
  }

  /** A create retried with the token of an earlier one: that guest, once whatever runs on it has finished. */
  #rejoin(g: Guest, options: LongOperationOptions): Promise<Instance> {
    return this.#await('create', g, progressReporter('create', g.record.id, options.onProgress), this.#locked(g, async () => undefined), options, g.record.incoming === null ? undefined : 'stopped');
  }

  start(id: string, options: LongOperationOptions = {}): Promise<Instance> {
    return this.#operate('start', id, options, async (g) => {
      await this.#observe(g, false);
      if (g.state === 'running' || g.state === 'pending') return false;
      if (g.state === 'terminated' || g.record.power === 'terminated') throw this.#wrongState('start', g);
      if (g.record.incoming !== null && g.record.process !== null) {
        throw new IncorrectStateError('qemu', 'start', 'IncorrectInstanceState', `qemu VM ${id} (${g.record.name}) waits for the stream of migration ${g.record.incoming.migration}; it runs once the stream completes, and cannot be booted meanwhile`, { instanceId: id });
      }
      if (g.unmanaged !== null && g.record.process !== null) {
        // Its QEMU runs but does not answer: it cannot be managed, so it is replaced.
        this.#log.warn({ vm: id, pid: g.record.process.pid }, 'killing a qemu guest process that does not answer QMP, to start it afresh');
        await killGuest(g.record.process, id, g.files);
        await this.#waitGone(g, this.#timeouts.quitMs);
        await this.#recordEnd(g, `killed by dwcp: ${g.unmanaged}`);
      }
      await this.#usable('start');
      const image = imageRef(await this.#rematerialise(g));
      // Checked and taken in one step (pending counts against capacity), so a create cannot slip in between.
      await this.#reserveHost(async () => {
        await this.#checkCapacity('start', `VM ${g.record.name} (${id})`, footprintOf(g.record), g, false);
        this.#setState(g, 'pending', 'pending: starting QEMU');
      });
      g.record.image = image;
      g.record.power = 'running';
      // A cold or warm destination started (after the cutover): an ordinary guest from now on.
      g.record.incoming = null;
      await this.#store.save(g.record);
      return true;
    }, async (g) => {
      try {
        await this.#boot(g, 'start');
      } catch (err) {
        g.record.power = 'stopped';
        g.record.lastExit = { at: Date.now(), reason: `start failed: ${errorText(err)}` };
        await this.#store.save(g.record);
        this.#setState(g, 'stopped', endedState('stopped', g.record));
        throw this.#startFailure('start', g, err);
      }
    });
  }

  stop(id: string, options: LongOperationOptions = {}): Promise<Instance> {
    return this.#operate('stop', id, options, async (g) => {
      await this.#observe(g, false);
      if (g.state === 'terminated') throw this.#wrongState('stop', g);
      g.record.power = 'stopped';
      await this.#store.save(g.record);
      if (g.record.process === null) return false;
      this.#setState(g, 'stopping', 'stopping: ACPI power button pressed');
      return true;
    }, (g) => this.#halt(g, 'stop'));
  }

  terminate(id: string, options: LongOperationOptions & { keepDisk?: boolean } = {}): Promise<Instance> {
    return this.#operate('terminate', id, options, async (g) => {
      await this.#observe(g, false);
      if (g.record.terminatedAt !== null) return false;
      g.record.power = 'terminated';
      await this.#store.save(g.record);
      this.#setState(g, 'stopping', 'stopping: terminating');
      return true;
    }, async (g) => {
      await this.#halt(g, 'terminate');
      await this.#dropDisk(g, options.keepDisk === true);
      g.record.terminatedAt = Date.now();
      await this.#store.save(g.record);
      await Promise.all([g.files.qmp, g.files.pid].map((f) => rm(f, { force: true })));
      this.#setState(g, 'terminated', endedState('terminated', g.record));
    });
  }

  /**
   * One long operation on an existing guest: `accept` runs under the guest's
   * lock and says whether there is anything to do; `complete` does it, still
   * under the lock, whether or not the caller waits.
   */
  async #operate(operation: LongOperation, id: string, options: LongOperationOptions, accept: (g: Guest) => Promise<boolean>, complete: (g: Guest) => Promise<void>): Promise<Instance> {
    throwIfAborted(options.signal, 'qemu', operation);
    const g = this.#find(id, operation);
    const progress = progressReporter(operation, id, options.onProgress);
    let accepted: () => void = () => undefined;
    const acceptance = new Promise<void>((resolve) => {
      accepted = resolve;
    });
    const work = this.#locked(g, async () => {
      const proceed = await accept(g);
      accepted();
      if (!proceed) return;
      g.op = operation;
      try {
        await complete(g);
      } finally {
        g.op = null;
      }
    });
    await Promise.race([acceptance, work]);
    progress.report('accepted', g.state, g.providerState);
    return this.#await(operation, g, progress, work, options);
  }

  /** Waits for `work` unless the caller does not want to; an aborted wait leaves the work running. */
  async #await(operation: LongOperation, g: Guest, progress: ReturnType<typeof progressReporter>, work: Promise<void>, options: LongOperationOptions, wanted?: InstanceState): Promise<Instance> {
    this.#track(work);
    if (options.wait === false) {
      work.catch((err: unknown) => this.#log.warn({ vm: g.record.id, operation, err: errorText(err) }, 'qemu operation failed after it was accepted'));
      return this.#instance(g);
    }
    const signal = options.signal;
    if (signal !== undefined) {
      const cancelled = new Promise<never>((_, reject) => {
        const onAbort = () => reject(new CancelledError('qemu', operation, 'Cancelled', `stopped waiting for ${g.record.id} to be ${TARGET_STATE[operation]}; the request itself was accepted`, { cause: signal.reason, instanceId: g.record.id }));
        if (signal.aborted) onAbort();
        signal.addEventListener('abort', onAbort, { once: true });
        void work.finally(() => signal.removeEventListener('abort', onAbort)).catch(() => undefined);
      });
      await Promise.race([work, cancelled]);
    } else {
      await work;
    }
    if (!g.busy) await this.#refresh(g);
    const target = wanted ?? TARGET_STATE[operation];
    if (g.state !== target) {
      throw new IncorrectStateError('qemu', operation, 'UnexpectedState', `qemu VM ${g.record.id} (${g.record.name}) is ${g.state} (${g.providerState}) after ${operation}, not ${target}`, { instanceId: g.record.id });
    }
    progress.report('done', g.state, g.providerState);
    return this.#instance(g);
  }

  #track(work: Promise<unknown>): void {
    const tracked = work.catch(() => undefined);
    this.#background.add(tracked);
    void tracked.finally(() => this.#background.delete(tracked));
  }

  /** Runs a capacity check and the reservation it leads to, one at a time for the host. */
  #reserveHost<T>(work: () => Promise<T>): Promise<T> {
    const result = this.#reserve.then(work);
    this.#reserve = result.catch(() => undefined);
    return result;
  }

  async #checkCapacity(operation: string, vm: string, want: Footprint, self: Guest | null, newDisk: boolean): Promise<void> {
    const others = [...this.#guests.values()].filter((x) => x !== self);
    let free: number | null = null;
    try {
      const s = await statfs(this.#o.dir);
      free = s.bavail * s.bsize;
    } catch {
      // Unknown: the filesystem check is skipped, the declared capacity still holds.
    }
    const problem = capacityProblem({
      vm,
      want,
      newDisk,
      // A destination QEMU waiting for its stream holds its guest's memory too.
      running: others.filter((x) => x.state === 'pending' || x.state === 'running' || x.state === 'stopping' || (x.record.incoming !== null && x.record.process !== null)).map((x) => footprintOf(x.record)),
      disks: others.filter((x) => x.record.power !== 'terminated').map((x) => x.record.diskBytes),
      capacity: { vcpus: this.#o.capacity.vcpus, memoryMiB: this.#o.capacity.memoryMiB, diskBytes: this.#o.capacity.diskGiB * GIB },
      filesystemFreeBytes: free,
    });
    if (problem !== null) throw new CapacityError('qemu', operation, 'InsufficientCapacity', problem, 'capacity');
  }

  async #materialise(name: string, operation: string, vm: string): Promise<GuestImage> {
    try {
      return await this.#o.images.materialise(name, { signal: this.#lifetime.signal });
    } catch (err) {
      const message = `image ${name} for ${vm}: ${errorText(err)}`;
      if (err instanceof DwcpError && err.code === 'not_found') throw new InvalidRequestError('qemu', operation, 'InvalidImage.NotFound', message, { cause: err });
      if (err instanceof DwcpError && (err.code === 'corrupt' || err.code === 'invalid')) throw new InvalidRequestError('qemu', operation, 'InvalidImage', message, { cause: err });
      throw new ProviderError('qemu', operation, 'ImageUnavailable', message, { cause: err });
    }
  }

  /** The guest's image files for a start: the same image (by hash) as at create, fetched again if its files went. */
  async #rematerialise(g: Guest): Promise<GuestImage> {
    const image = await this.#materialise(g.record.image.name, 'start', `VM ${g.record.name} (${g.record.id})`);
    if (image.sha256 !== g.record.image.sha256) {
      throw new InvalidRequestError('qemu', 'start', 'InvalidImage.Changed', `image ${image.name} for VM ${g.record.name} (${g.record.id}) is now ${image.sha256.slice(0, 12)}…, not the ${g.record.image.sha256.slice(0, 12)}… it was created from`, { instanceId: g.record.id });
    }
    return image;
  }

  /** A failed boot as the caller sees it: the provider's own errors as they are, anything else (QEMU's, qemu-img's) naming the VM. */
  #startFailure(operation: 'create' | 'start', g: Guest, err: unknown): ProviderError {
    if (err instanceof ProviderError) return err;
    return new ProviderError('qemu', operation, 'QemuStartFailed', `qemu VM ${g.record.id} (${g.record.name}): ${errorText(err)}`, { cause: err, instanceId: g.record.id });
  }

  /** Starts the guest's QEMU and waits until QMP reports it running; QEMU's failures are thrown as they are (the caller names the VM). */
  async #boot(g: Guest, operation: 'create' | 'start'): Promise<void> {
    const usable = await this.#usable(operation);
    const r = g.record;
    const boot: GuestBoot = r.image.kind === 'kernel' ? { kind: 'kernel', kernel: r.image.kernel, initrd: r.image.initrd, cmdline: [r.image.cmdline, r.userData ?? ''].join(' ').trim() } : { kind: 'disk' };
    const incoming = r.incoming?.mode === 'live';
    const args = qemuArgs({ id: r.id, vcpus: r.vcpus, memoryMiB: r.memoryMiB, accel: usable.accel, sandbox: usable.sandbox, paths: g.files, boot, incoming });
    this.#setState(g, 'pending', 'pending: starting QEMU');
    await prepareLeaseForLaunch(leaseFilesOf(g.files.dir));
    const launched = await launch({
      id: r.id,
      shell: this.#o.shell ?? '/bin/sh',
      binary: usable.binary,
      args,
      shimArgs: shimArgs(usable.binary, args, g.files.exit, { file: leaseFilesOf(g.files.dir).lease, pollMs: this.#o.leasePollMs ?? DEFAULT_LEASE_POLL_MS }),
      files: g.files,
      deadlineMs: this.#timeouts.bootMs,
      qmp: { connectTimeoutMs: this.#timeouts.qmpConnectMs, callTimeoutMs: this.#timeouts.qmpCallMs, onCall: this.#onQmpCall },
      signal: this.#lifetime.signal,
    });
    r.process = { ...launched.ref, startedAt: launched.startedAt };
    r.launchTime = launched.startedAt;
    await this.#store.save(r);
    g.child = launched.child;
    g.shutdownCause = null;
    g.requested = null;
    g.listening.clear();
    this.#attach(g, launched.qmp);
    const status = String(((await launched.qmp.execute('query-status')) as { status?: unknown }).status ?? 'unknown');
    if (incoming) this.#setState(g, 'stopped', `stopped: receiving migration ${r.incoming?.migration} (QEMU ${status})`);
    else this.#setState(g, stateOfRunStatus(status), status);
    this.#log.info({ vm: r.id, name: r.name, pid: launched.ref.pid, accel: usable.accel, status }, 'qemu guest started');
  }

  /** Ends the guest's QEMU: for a stop, ACPI power-off first; then `quit`; then SIGKILL. Records how it ended. */
  async #halt(g: Guest, why: 'stop' | 'terminate'): Promise<void> {
    const ref = g.record.process;
    if (ref !== null) {
      g.requested = why;
      const qmp = g.qmp !== null && !g.qmp.isClosed ? g.qmp : await this.#connect(g);
      let gone = false;
      // A destination that never ran the guest, or a paused one (a live migration's source), cannot answer the power button.
      if (why === 'stop' && qmp !== null && g.record.incoming === null && !g.vmPaused) {
        await qmp.execute('system_powerdown').catch(() => undefined);
        gone = await this.#waitGone(g, this.#timeouts.powerdownMs);
        this.#throwIfClosing(why, g);
        if (!gone) this.#log.warn({ vm: g.record.id, afterMs: this.#timeouts.powerdownMs }, 'qemu guest did not power off after the ACPI power button; quitting QEMU');
      }
      if (!gone && qmp !== null) {
        this.#setState(g, 'stopping', 'stopping: quitting QEMU');
        await qmp.execute('quit').catch(() => undefined);
        gone = await this.#waitGone(g, this.#timeouts.quitMs);
        this.#throwIfClosing(why, g);
      }
      if (!gone) {
        this.#log.warn({ vm: g.record.id, pid: ref.pid }, 'qemu guest still running after quit; killing it');
        await killGuest(ref, g.record.id, g.files);
        gone = await this.#waitGone(g, this.#timeouts.quitMs);
      }
      if (!gone) throw new ProviderError('qemu', why, 'QemuWontDie', `qemu VM ${g.record.id} (${g.record.name}): QEMU pid ${ref.pid} still runs after SIGKILL`, { instanceId: g.record.id });
      await this.#recordEnd(g);
    }
    if (why === 'stop') this.#setState(g, 'stopped', endedState('stopped', g.record));
  }

  /** dwcpd is stopping: an operation waiting on a guest ends here without escalating (the record's power makes the next dwcpd finish it). */
  #throwIfClosing(operation: LongOperation, g: Guest): void {
    if (this.#lifetime.signal.aborted) throw new CancelledError('qemu', operation, 'Cancelled', `qemu VM ${g.record.id}: dwcpd is stopping; the next dwcpd finishes the ${operation}`, { instanceId: g.record.id });
  }

  /** Resolves true once the guest's QEMU is gone, false at the deadline (or when dwcpd stops). */
  async #waitGone(g: Guest, ms: number): Promise<boolean> {
    const ref = g.record.process;
    if (ref === null) return true;
    const deadline = performance.now() + ms;
    for (;;) {
      if ((await recognise(ref, g.record.id, g.files)).kind !== 'ours') return true;
      const left = deadline - performance.now();
      if (left <= 0 || this.#lifetime.signal.aborted) return false;
      // QEMU closes its QMP socket as it exits: wake on that, or re-check shortly.
      await Promise.race([g.qmp?.closed ?? new Promise(() => undefined), delay(Math.min(left, 100), undefined, { signal: this.#lifetime.signal }).catch(() => undefined)]);
    }
  }

  /** Deletes (or with keep, moves to `<dir>/kept/`) the guest's disk. */
  async #dropDisk(g: Guest, keep: boolean): Promise<void> {
    if (keep) {
      const keptDir = join(this.#o.dir, 'kept');
      await mkdir(keptDir, { recursive: true, mode: 0o700 });
      const to = join(keptDir, `${g.record.id}.qcow2`);
      try {
        await rename(g.files.disk, to);
        g.record.keptDisk = to;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      return;
    }
    await rm(g.files.disk, { force: true });
  }

  /** A create that failed after its reservation: terminated with the reason, disk gone, capacity released. */
  async #abandon(g: Guest, reason: string): Promise<void> {
    if (g.record.process !== null) {
      await killGuest(g.record.process, g.record.id, g.files);
      await this.#waitGone(g, this.#timeouts.quitMs);
    }
    g.qmp?.close('create failed');
    g.qmp = null;
    g.record.process = null;
    g.record.power = 'terminated';
    g.record.terminatedAt = Date.now();
    g.record.lastExit = { at: Date.now(), reason: `create failed: ${reason}` };
    await rm(g.files.disk, { force: true });
    await this.#store.save(g.record);
    this.#setState(g, 'terminated', endedState('terminated', g.record));
  }

  #wrongState(operation: string, g: Guest): IncorrectStateError {
    return new IncorrectStateError('qemu', operation, 'IncorrectInstanceState', `qemu VM ${g.record.id} (${g.record.name}) is ${g.state}; cannot ${operation} it`, { instanceId: g.record.id });
  }

  // --- the rest of the interface -----------------------------------------------------

  async setTags(id: string, tags: Tags, options: CallOptions = {}): Promise<void> {
    throwIfAborted(options.signal, 'qemu', 'setTags');
    checkTags('qemu', 'setTags', tags);
    const g = this.#find(id, 'setTags');
    await this.#locked(g, async () => {
      if (g.record.power === 'terminated') throw this.#wrongState('setTags', g);
      g.record.tags = { ...g.record.tags, ...tags };
      await this.#store.save(g.record);
    });
  }

  async listInstanceTypes(query: InstanceTypeQuery = {}): Promise<InstanceTypeInfo[]> {
    return Object.entries(this.#types)
      .filter(([name]) => !query.types || query.types.length === 0 || query.types.includes(name))
      .map(([name, spec]) => ({ name, vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, architectures: ['x86_64'], spot: false }));
  }

  async zoneHealth(): Promise<ZoneHealth[]> {
    await this.#checkBinary();
    const b = this.#binary;
    const accel = b?.ok === true ? await this.accelerator() : null;
    const problem = b === null ? 'qemu binary not checked' : !b.ok ? b.problem : accel?.accel === null ? accel.reason : null;
    const messages = problem !== null ? [problem] : [`QEMU ${b?.ok === true ? b.version : '?'}${b?.ok === true && b.sandbox ? ' (seccomp sandbox)' : ''}`, `accelerator ${accel?.accel ?? '?'}: ${accel?.reason ?? ''}`];
    return this.zones.map((zone) => ({ zone, region: this.region, status: problem === null ? 'available' : 'unavailable', providerStatus: problem === null ? `qemu ${accel?.accel ?? ''}`.trim() : 'qemu unavailable', messages }));
  }

  /** Each running guest's use now (CPU seconds and RSS of its QEMU from /proc, disk bytes and guest memory from QMP); also feeds the metrics. */
  async utilisation(): Promise<VmUtilisation[]> {
    const samples: VmUtilisation[] = [];
    await Promise.all(
      [...this.#guests.values()].map(async (g) => {
        const ref = g.record.process;
        const qmp = g.qmp;
        if (ref === null || qmp === null || qmp.isClosed) return;
        const seen = await recognise(ref, g.record.id, g.files);
        if (seen.kind !== 'ours') return;
        const [blocks, stats] = await Promise.all([qmp.execute('query-blockstats').catch(() => null), qmp.execute('qom-get', { path: '/machine/peripheral/balloon0', property: 'guest-stats' }).catch(() => null)]);
        const disk = blockBytes(blocks);
        samples.push({
          id: g.record.id,
          name: g.record.name,
          vcpus: g.record.vcpus,
          cpuSeconds: seen.info.cpuSeconds,
          memoryBytes: seen.info.rssBytes ?? 0,
          guestMemory: guestMemory(stats),
          diskReadBytes: disk.read,
          diskWrittenBytes: disk.written,
          network: null,
          sampledAt: Date.now(),
        });
      }),
    );
    samples.sort((a, b) => a.id.localeCompare(b.id));
    this.#latest = samples;
    this.#o.metrics?.setUtilisation(samples);
    return samples;
  }

  /**
   * The provider-neutral utilisation (src/cloud/utilisation.ts) of the guests
   * asked about: measured now, as rates since the previous call (the first
   * call for a guest gives its baseline only: qemu-utilisation.ts).
   */
  async usage(query: UsageQuery): Promise<UsageSample[]> {
    const wanted = new Set(query.instances.map((i) => i.id));
    const samples = this.#rates.next(await this.utilisation(), (id) => this.#guests.get(id)?.record.memoryMiB ?? null);
    return samples.filter((s) => wanted.has(s.instanceId));
  }

  /** The last utilisation sample, without asking the guests again. */
  lastUtilisation(): readonly VmUtilisation[] {
    return this.#latest;
  }

  // --- the migration transport's handles ------------------------------------------------

  /**
   * Renews the leases of `renew` (instance id → until when, epoch ms, and
   * the VM's name) and drops those of `release`: one boot-clock reading,
   * then each guest's lease file written atomically and fsynced. Unknown and
   * terminated guests are skipped. The daemon calls it after each read that
   * proved its view of the federation log current (src/dr/driver.ts).
   */
  async renewLeases(renew: ReadonlyMap<string, { readonly untilMs: number; readonly vm: string }>, release: readonly string[]): Promise<void> {
    const nowCs = await bootClockCs();
    const wall = Date.now();
    const live = (id: string): Guest | undefined => {
      const g = this.#guests.get(id);
      return g === undefined || g.record.power === 'terminated' ? undefined : g;
    };
    await Promise.all([
      ...[...renew].map(async ([id, lease]) => {
        const g = live(id);
        if (g !== undefined) await writeLease(leaseFilesOf(g.files.dir), leaseText(nowCs + Math.max(0, Math.floor((lease.untilMs - wall) / 10)), lease.untilMs, lease.vm));
      }),
      ...release.map(async (id) => {
        const g = live(id);
        if (g !== undefined) await dropLease(leaseFilesOf(g.files.dir));
      }),
    ]);
  }

  async migrationSource(id: string): Promise<{ qmp: QmpClient; files: VmFiles; name: string }> {
    const g = this.#find(id, 'migrate');
    await this.#refresh(g);
    const qmp = g.state === 'running' && g.record.process !== null ? await this.#connect(g) : null;
    if (qmp === null) throw new IncorrectStateError('qemu', 'migrate', 'IncorrectInstanceState', `qemu VM ${id} (${g.record.name}) is ${g.state} (${g.providerState}); only a running guest migrates live`, { instanceId: id });
    return { qmp, files: g.files, name: g.record.name };
  }

  #incoming(migration: string): Guest {
    const g = [...this.#guests.values()].find((x) => x.record.incoming?.migration === migration && x.record.power !== 'terminated');
    if (g === undefined) throw new NotFound('qemu', 'migrate', 'InvalidInstanceID.NotFound', `no qemu VM here receives migration ${migration}`);
    return g;
  }

  incomingEndpoint(migration: string, channel: IncomingChannel, multifd: Multifd | null = null): Promise<string> {
    const g = this.#incoming(migration);
    return this.#locked(g, async () => {
      const qmp = g.record.process === null || g.record.incoming?.mode !== 'live' ? null : await this.#connect(g);
      if (qmp === null) throw new IncorrectStateError('qemu', 'migrate', 'IncorrectInstanceState', `qemu VM ${g.record.id} (${g.record.name}) has no QEMU waiting for migration ${migration} (${g.providerState})`, { instanceId: g.record.id });
      const path = channel === 'state' ? g.files.migrateIn : g.files.nbd;
      if (!g.listening.has(channel)) {
        await rm(path, { force: true });
        if (channel === 'state') await listenForState(qmp, path, multifd);
        else await exportDisk(qmp, path);
        g.listening.add(channel);
        await chmod(path, 0o600);
        this.#log.info({ vm: g.record.id, name: g.record.name, migration, channel }, 'qemu destination listens for its migration');
      }
      return path;
    });
  }

  migrationPaused(id: string): boolean {
    const g = this.#guests.get(id);
    return g !== undefined && g.record.process !== null && g.record.incoming === null && g.vmPaused;
  }

  resumePaused(id: string): Promise<void> {
    const g = this.#find(id, 'start');
    return this.#locked(g, async () => {
      const qmp = g.record.process === null ? null : await this.#connect(g);
      if (qmp === null) throw this.#wrongState('start', g);
      await qmp.execute('cont');
      g.vmPaused = false;
      await this.#observe(g, false);
      this.#log.info({ vm: id, name: g.record.name, state: g.providerState }, 'qemu guest continued (its live migration rolled back)');
    });
  }

  diskPath(id: string): string {
    return this.#find(id, 'migrate').files.disk;
  }

  receiveDisk(migration: string, write: (path: string) => Promise<void>): Promise<void> {
    const g = this.#incoming(migration);
    return this.#locked(g, async () => {
      if (g.record.process !== null || g.record.incoming?.mode === 'live') throw new IncorrectStateError('qemu', 'migrate', 'IncorrectInstanceState', `qemu VM ${g.record.id} (${g.record.name}) does not take a disk for migration ${migration} (${g.providerState})`, { instanceId: g.record.id });
      const staged = `${g.files.disk}.incoming`;
      try {
        await write(staged);
        // The source's overlay names the source's base image by its path there: point it at this node's copy of the same image.
        if (g.record.image.kind === 'disk') await rebaseUnsafe(this.#o.qemuImg ?? 'qemu-img', staged, { path: g.record.image.path, format: g.record.image.format });
        await rename(staged, g.files.disk);
      } finally {
        await rm(staged, { force: true });
      }
    });
  }

  /** The serial log of a guest named by id, or by name when one guest not terminated (else the newest) has it. */
  serialLog(idOrName: string): { id: string; name: string; path: string } {
    const byId = ID_RE.test(idOrName) ? this.#guests.get(idOrName) : undefined;
    const named = [...this.#guests.values()].filter((g) => g.record.name === idOrName);
    const live = named.filter((g) => g.record.power !== 'terminated');
    const g = byId ?? (live.length === 1 ? live[0] : live.length === 0 ? named.sort((a, b) => b.record.createdAt - a.record.createdAt)[0] : undefined);
    if (g === undefined && live.length > 1) {
      throw new InvalidRequestError('qemu', 'console', 'AmbiguousName', `${live.length} qemu VMs are named ${idOrName} (${live.map((x) => x.record.id).join(', ')}); give the id`);
    }
    if (g === undefined) throw new NotFound('qemu', 'console', 'InvalidInstanceID.NotFound', `no qemu VM has the id or name ${JSON.stringify(idOrName)}`);
    return { id: g.record.id, name: g.record.name, path: g.files.serial };
  }

  async close(): Promise<void> {
    this.#lifetime.abort(new Error('dwcpd is stopping'));
    clearInterval(this.#sampler);
    clearInterval(this.#serialCheck);
    await Promise.allSettled([...this.#background]);
    for (const g of this.#guests.values()) {
      g.qmp?.close('dwcpd is stopping (the guest runs on)');
      g.qmp = null;
    }
    await this.#store.flush();
  }
}

/** The provider state of a guest whose QEMU is not running: the state and how it last ended (and where a kept disk went). */
function endedState(state: 'stopped' | 'terminated', r: QemuVmRecord): string {
  const parts: string[] = [state];
  if (r.lastExit !== null) parts.push(r.lastExit.reason);
  if (state === 'terminated' && r.keptDisk !== null) parts.push(`disk kept at ${r.keptDisk}`);
  return parts.join(': ');
}

function footprintOf(r: QemuVmRecord): Footprint {
  return { vcpus: r.vcpus, memoryMiB: r.memoryMiB, diskBytes: r.diskBytes };
}

function imageRef(image: GuestImage): ImageRef {
  return image.kind === 'kernel'
    ? { kind: 'kernel', name: image.name, sha256: image.sha256, kernel: image.kernel, initrd: image.initrd, cmdline: image.cmdline }
    : { kind: 'disk', name: image.name, sha256: image.sha256, path: image.path, format: image.format };
}

/** Bytes read and written over every block device in a query-blockstats answer. */
function blockBytes(answer: unknown): { read: number; written: number } {
  let read = 0;
  let written = 0;
  if (Array.isArray(answer)) {
    for (const dev of answer as { stats?: { rd_bytes?: unknown; wr_bytes?: unknown } }[]) {
      if (typeof dev.stats?.rd_bytes === 'number') read += dev.stats.rd_bytes;
      if (typeof dev.stats?.wr_bytes === 'number') written += dev.stats.wr_bytes;
    }
  }
  return { read, written };
}

/** The balloon's guest-stats, once the guest has reported them (before, QEMU answers 2^64-1, its -1, or leaves them out). */
function guestMemory(answer: unknown): VmUtilisation['guestMemory'] {
  const stats = (answer as { stats?: Record<string, unknown> } | null)?.stats;
  const total = stats?.['stat-total-memory'];
  const available = stats?.['stat-available-memory'];
  const reported = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  if (!reported(total) || !reported(available) || total === 0) return null;
  return { totalBytes: total, availableBytes: available };
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
