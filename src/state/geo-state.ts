/**
 * GeoState: the daemon's geo-distributed store, the driver of one
 * StateReplica (replica.ts). It loads the replica from the durable store
 * (store.ts), carries its messages over `/dwcp/sync/1.0.0` (anti-entropy.ts),
 * runs its timers (deadlines, garbage collection, heartbeats, anti-entropy
 * rounds), feeds a phi-accrual failure detector per member from the
 * heartbeats, and turns client calls into operations whose promises settle
 * when the core says they are done.
 *
 * Each region is one dwcpd, known by its node name (unique in the federation;
 * `node.region` labels it for people), so quorums count daemons.
 *
 * Invariants:
 * - The Ready contract is kept (ReadyLoop, shared with the consensus
 *   drivers): one Ready at a time is persisted (awaited, fsynced), then its
 *   messages are sent, then it is advanced. Nothing leaves this region before
 *   it is durable here.
 * - Every client call ends by its deadline (quorum) or once durable (local),
 *   or at once (eventual), with a result or a GeoStateError whose `code`
 *   says whether retrying may help. A storage failure fails every waiting
 *   call and every later one, and is reported through onFatal.
 * - Only configured members take part (FrameTransport's check), and a member
 *   that is not connected, or whose heartbeats stopped (suspected by the
 *   failure detector), is reported down to the core, which writes off what it
 *   owed and reconciles when the member is back. Heartbeats go to connected
 *   members whether suspected or not, so a recovered member is noticed.
 */
import type { DwcpConfig } from '../config/schema.ts';
import type { LinkMode } from '../federation/link-mode.ts';
import type { MemberDirectory } from '../federation/members.ts';
import { PhiAccrualDetector, healthOf, type HealthReport } from '../federation/failure-detector.ts';
import type { Logger } from '../log.ts';
import type { FrameMetrics } from '../metrics/metrics.ts';
import type { ProtocolHost } from '../net/host.ts';
import type { StateMetrics } from './metrics.ts';
import type { JsonValue } from './crdt/types.ts';
import { CRDT_TYPES, entryKey, nameProblem, type CrdtType, type Entry, type ReplicaId } from './entry.ts';
import type { ReplicaStatus } from './messages.ts';
import { OpError, entryValue, type CrdtOp } from './ops.ts';
import { StateReplica, type Completion, type Ready, type ReplicaLimits, type WriteOutcome } from './replica.ts';
import type { GeoLevel } from '../kv/consistency.ts';
import { StateStore } from './store.ts';
import { SyncTransport } from './anti-entropy.ts';
import { ReadyLoop } from '../driver/ready-loop.ts';
import type { SyncFrame } from './wire.ts';
import { TestFaults } from '../net/test-faults.ts';
import { DwcpError, type DwcpErrorCode } from '../errors.ts';

export type GeoStateErrorCode = Extract<DwcpErrorCode, 'no_quorum' | 'unavailable' | 'invalid' | 'stopped'>;

export class GeoStateError extends DwcpError<GeoStateErrorCode> {}

/** What the geo store reads of the config: this node's name and region, where its store lives, the state: section. */
export type GeoStateConfig = Pick<DwcpConfig, 'node' | 'dataDir' | 'state'>;

export interface GeoStateOptions {
  config: GeoStateConfig;
  host: ProtocolHost;
  members: MemberDirectory;
  isConnected(peerId: string): boolean;
  /** Each member's current link mode (the mesh's view), which picks the sync codec; read about once a second. */
  memberLinks(): readonly { readonly name: string; readonly linkMode: LinkMode }[];
  /** The state section, and the frame counters of /dwcp/sync/1.0.0. */
  metrics: FrameMetrics & { state: StateMetrics };
  log: Logger;
  /** The store failed: the daemon should stop and be restarted from disk. */
  onFatal?(err: Error): void;
  /** The test-only partition hook, exposed through the State admin service. */
  faults?: TestFaults;
}

export interface GeoWrite {
  readonly key: string;
  readonly entry: Entry;
  readonly level: GeoLevel;
  /** Regions holding the write durably when the call returned (0 for eventual: not even this one yet). */
  readonly acked: number;
  readonly total: number;
}

export interface GeoRead {
  /** Entries found, by store key. */
  readonly entries: ReadonlyMap<string, Entry>;
  readonly level: GeoLevel;
  /** Regions whose copies were merged (1 below quorum: this one). */
  readonly answered: number;
  readonly total: number;
}

export interface RegionDigest {
  readonly name: ReplicaId;
  readonly region: string;
  /** null: the region did not answer in time. */
  readonly status: ReplicaStatus | null;
}

/** Core deadlines and GC run this often. */
const TICK_MS = 50;
const GC_EVERY_MS = 1_000;
const LINKS_EVERY_MS = 1_000;
/** An unacknowledged push is written off after this (the peer is reconciled instead). */
const PUSH_TIMEOUT_MS = 10_000;
const SESSION_TIMEOUT_MS = 15_000;

interface Waiting {
  readonly resolve: (c: Completion) => void;
  readonly reject: (err: Error) => void;
}

export class GeoState {
  readonly self: ReplicaId;
  readonly faults: TestFaults;
  readonly #opts: GeoStateOptions;
  readonly #store: StateStore;
  readonly #replica: StateReplica;
  readonly #transport: SyncTransport;
  readonly #log: Logger;
  readonly #detectors = new Map<ReplicaId, PhiAccrualDetector>();
  readonly #connected = new Set<ReplicaId>();
  /** Members whose connectivity the core has been told, so the first tick reports every member once. */
  readonly #reported = new Set<ReplicaId>();
  readonly #lastRound = new Map<ReplicaId, number>();
  readonly #waiting = new Map<number, Waiting>();
  #linkModes = new Map<ReplicaId, LinkMode>();
  #lastLinks = Number.NEGATIVE_INFINITY;
  #timer: NodeJS.Timeout | undefined;
  #lastGc = 0;
  #lastHeartbeat = 0;
  #failure: Error | null = null;
  #stopped = false;

  private constructor(opts: GeoStateOptions, store: StateStore) {
    this.#opts = opts;
    this.#store = store;
    this.#log = opts.log;
    this.self = opts.config.node.name;
    this.faults = opts.faults ?? new TestFaults(false);
    const { metrics } = opts;
    const s = opts.config.state;
    const limits: ReplicaLimits = {
      maxBatchEntries: s.maxBatchEntries,
      maxBatchBytes: s.maxBatchBytes,
      maxInFlightBytes: s.maxInFlightBytes,
      maxRoundBytes: s.maxRoundBytes,
      pushTimeoutMs: PUSH_TIMEOUT_MS,
      sessionTimeoutMs: SESSION_TIMEOUT_MS,
      gcGraceMs: s.gcGraceMs,
      maxClockOffsetMs: s.maxClockOffsetMs,
    };
    this.#replica = new StateReplica(
      {
        self: this.self,
        peers: opts.members.list().map((m) => m.name),
        limits,
        observer: {
          onUpdate: (_from, outcome) => metrics.state.updatesReceived.inc({ outcome }),
          onRoundDone: (peer, outcome, round) => {
            metrics.state.rounds.inc({ outcome });
            metrics.state.roundEntries.inc({ direction: 'sent' }, round.sent);
            metrics.state.roundEntries.inc({ direction: 'received' }, round.received);
            if (outcome !== 'done') this.#log.debug({ peer, outcome }, 'anti-entropy round ended early');
          },
          onClockDrift: (from, err) => {
            metrics.state.clockDrift.inc();
            this.#log.warn({ peer: from, err: err.message }, 'a write from another region is stamped too far ahead; merged, but this clock did not follow');
          },
        },
      },
      store.load(),
    );
    this.#transport = new SyncTransport({
      host: opts.host,
      peers: {
        peerIdOf: (name) => opts.members.list().find((m) => m.name === name)?.peerId,
        nameOf: (peerId) => opts.members.get(peerId)?.name,
      },
      isConnected: (peerId) => opts.isConnected(peerId),
      linkMode: (name) => this.#linkModes.get(name) ?? 'datacenter',
      maxQueuedBytes: 4 * (s.maxInFlightBytes + s.maxRoundBytes),
      deliver: (from, frame) => this.#deliver(from, frame),
      metrics,
      log: opts.log,
    });
    metrics.state.entries.set(this.#replica.size);
  }

  /** Opens the store under <dataDir>/state and loads the replica from it. */
  static async open(opts: GeoStateOptions): Promise<GeoState> {
    const store = await StateStore.open(opts.config.dataDir, {
      onRepair: (message) => opts.log.error({ repair: message }, 'state store dropped a damaged entry'),
      onCommit: (timings) => opts.metrics.state.persistDuration.observe(timings.applySeconds + timings.syncSeconds),
    });
    try {
      return new GeoState(opts, store);
    } catch (err) {
      await store.close();
      throw err;
    }
  }

  async start(): Promise<void> {
    await this.#transport.start();
    this.#timer = setInterval(() => this.#tick(), TICK_MS);
    this.#timer.unref();
    this.#tick();
  }

  /** Fails waiting calls, stops the transport, then waits for the store's last commit and closes it. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#timer);
    for (const w of this.#waiting.values()) w.reject(new GeoStateError('stopped', 'the daemon is stopping'));
    this.#waiting.clear();
    await this.#loop.idle();
    await this.#transport.stop();
    await this.#store.close();
  }

  /** Follows a reloaded member list. */
  applyMemberChanges(): void {
    const names = this.#opts.members.list().map((m) => m.name);
    this.#replica.setPeers(names);
    for (const name of [...this.#detectors.keys()]) if (!names.includes(name)) this.#forget(name);
    for (const name of [...this.#reported]) {
      if (names.includes(name)) continue;
      this.#reported.delete(name);
      this.#connected.delete(name);
    }
  }

  // ------------------------------------------------------------ client calls

  /** Applies `op` to entry `name`; resolves when the level's promise is kept (see replica.ts). */
  async update(name: string, type: CrdtType | null, op: CrdtOp, level: GeoLevel, opts: { ttlMs: number | null; timeoutMs: number }): Promise<GeoWrite> {
    this.#checkOpen();
    const problem = nameProblem(name);
    if (problem !== null) throw new GeoStateError('invalid', `key: ${problem}`);
    const started = performance.now();
    let out: WriteOutcome;
    try {
      out = this.#replica.update(name, type, op, level, Date.now(), opts);
    } catch (err) {
      if (err instanceof OpError) throw new GeoStateError('invalid', err.message);
      throw err;
    }
    const { metrics } = this.#opts;
    metrics.state.writes.inc({ level });
    const total = this.#replica.peers.length + 1;
    if (out.id === null) {
      this.#pump();
      metrics.state.writeDuration.observe({ level }, (performance.now() - started) / 1000);
      return { key: out.key, entry: out.entry, level, acked: 0, total };
    }
    const done = await this.#wait(out.id);
    if (!done.ok) {
      metrics.state.quorumFailures.inc({ op: 'write' });
      throw new GeoStateError(
        'no_quorum',
        `quorum write of ${out.key} not confirmed: ${done.answered} of ${done.total} regions hold it durably, a majority is ${this.#replica.majority} ` +
          `(${done.error}, timeout ${opts.timeoutMs} ms); it is durable here and will reach the others by anti-entropy`,
      );
    }
    if (done.kind !== 'write') throw new Error(`write ${out.id} completed as a ${done.kind}`);
    metrics.state.writeDuration.observe({ level }, (performance.now() - started) / 1000);
    return { key: out.key, entry: done.entry, level, acked: done.answered, total: done.total };
  }

  /** Reads store keys at `level`: below quorum, this region's copies; at quorum, the merge of a majority's. */
  async read(keys: readonly string[], level: GeoLevel, timeoutMs: number): Promise<GeoRead> {
    this.#checkOpen();
    const total = this.#replica.peers.length + 1;
    if (level !== 'quorum') {
      const entries = new Map<string, Entry>();
      for (const key of keys) {
        const entry = this.#replica.entry(key);
        if (entry !== undefined) entries.set(key, entry);
      }
      return { entries, level, answered: 1, total };
    }
    const id = this.#replica.readQuorum(keys, Date.now(), timeoutMs);
    const done = await this.#wait(id);
    if (!done.ok) {
      this.#opts.metrics.state.quorumFailures.inc({ op: 'read' });
      throw new GeoStateError(
        'no_quorum',
        `quorum read of ${keys.length === 1 ? keys[0] : `${keys.length} keys`} not possible: ${done.answered} of ${done.total} regions answered, a majority is ${this.#replica.majority} (${done.error}, timeout ${timeoutMs} ms)`,
      );
    }
    if (done.kind !== 'read') throw new Error(`read ${id} completed as a ${done.kind}`);
    return { entries: done.entries, level, answered: done.answered, total: done.total };
  }

  /** The value a read of `entry` shows now (undefined: absent, deleted or expired). */
  valueOf(entry: Entry | undefined): JsonValue | undefined {
    return entryValue(entry, this.#replica.now(Date.now()));
  }

  /** Store keys of every type that exist here for `name`. */
  keysNamed(name: string): string[] {
    return this.#typesOf(name).map((type) => entryKey(type, name));
  }

  /** This region's keys starting with `prefix` (a store key prefix), in order, at most `limit`. */
  list(prefix: string, limit: number): [string, Entry][] {
    return this.#replica.keysWithPrefix(prefix, limit).map((key) => [key, this.#replica.entry(key) as Entry]);
  }

  /** Every region's digest and clock, as each reports it within `timeoutMs` (null for the silent). */
  async digests(timeoutMs: number): Promise<RegionDigest[]> {
    this.#checkOpen();
    const id = this.#replica.requestStatus(Date.now(), timeoutMs);
    const done = await this.#wait(id);
    const statuses = done.kind === 'status' && done.ok ? done.statuses : new Map<string, ReplicaStatus>();
    const self: RegionDigest = { name: this.self, region: this.#opts.config.node.region, status: statuses.get(this.self) ?? this.#replica.status() };
    return [self, ...this.#opts.members.list().map((m) => ({ name: m.name, region: m.region, status: statuses.get(m.name) ?? null }))];
  }

  get majority(): number {
    return this.#replica.majority;
  }

  /** This region and its peers. */
  get regions(): number {
    return this.#replica.peers.length + 1;
  }

  // ------------------------------------------------------------ failure detection

  /** The failure detector's view of member `peerId`. */
  health(peerId: string): HealthReport {
    const name = this.#opts.members.get(peerId)?.name;
    return healthOf(name === undefined ? undefined : this.#detectors.get(name), performance.now());
  }

  #detector(name: ReplicaId, intervalMs: number): PhiAccrualDetector {
    let d = this.#detectors.get(name);
    if (d === undefined) {
      const s = this.#opts.config.state;
      d = new PhiAccrualDetector({
        threshold: s.phiThreshold,
        maxSamples: s.phiWindow,
        minStdDevMs: s.phiMinStdDevMs,
        acceptablePauseMs: s.phiAcceptablePauseMs,
        firstIntervalMs: Math.max(1, intervalMs),
      });
      this.#detectors.set(name, d);
    }
    return d;
  }

  #forget(name: ReplicaId): void {
    this.#detectors.delete(name);
    this.#opts.metrics.state.memberPhi.remove({ peer: name });
    this.#opts.metrics.state.memberSuspected.remove({ peer: name });
  }

  // ------------------------------------------------------------ driver

  #checkOpen(): void {
    if (this.#stopped) throw new GeoStateError('stopped', 'the daemon is stopping');
    if (this.#failure !== null) throw new GeoStateError('unavailable', `the state store failed: ${this.#failure.message}; the daemon must restart`);
  }

  #wait(id: number): Promise<Completion> {
    const { promise, resolve, reject } = Promise.withResolvers<Completion>();
    this.#waiting.set(id, { resolve, reject });
    // It may be complete already (no peers to ask).
    this.#settle();
    this.#pump();
    return promise;
  }

  #deliver(from: ReplicaId, frame: SyncFrame): void {
    if (this.#stopped || this.#failure !== null) return;
    if (frame.kind === 'heartbeat') {
      this.#detector(from, frame.intervalMs).heartbeat(performance.now());
      return;
    }
    this.#replica.step(from, frame, Date.now());
    this.#settle();
    this.#pump();
  }

  #settle(): void {
    for (const c of this.#replica.takeCompletions()) {
      const w = this.#waiting.get(c.id);
      if (w === undefined) continue;
      this.#waiting.delete(c.id);
      w.resolve(c);
    }
  }

  /** Readies one at a time (ReadyLoop): persist (awaited, fsynced), then send, then advance. */
  readonly #loop = new ReadyLoop<Ready>({
    next: () => (this.#replica.hasReady() ? this.#replica.ready(Date.now()) : null),
    handle: async (ready) => {
      if (ready.persist.size > 0 || ready.meta !== null) await this.#store.persist(ready);
      for (const { to, message } of ready.messages) this.#transport.send(to, message);
      this.#replica.advance(ready);
      this.#settle();
    },
    pending: () => this.#replica.hasReady(),
    halted: () => this.#stopped || this.#failure !== null,
    failed: () => this.#failure !== null,
    fail: (err) => this.#fail(err instanceof Error ? err : new Error(String(err))),
  });

  #pump(): void {
    this.#loop.schedule();
  }

  #fail(err: Error): void {
    this.#failure = err;
    this.#log.error({ err: err.message }, 'state store write failed; refusing geo state operations until a restart');
    for (const w of this.#waiting.values()) w.reject(new GeoStateError('unavailable', `the state store failed: ${err.message}`));
    this.#waiting.clear();
    this.#opts.onFatal?.(err);
  }

  #tick(): void {
    if (this.#stopped || this.#failure !== null) return;
    const now = Date.now();
    const mono = performance.now();
    const { config, metrics, members } = this.#opts;
    this.#replica.tick(now);
    if (mono - this.#lastLinks >= LINKS_EVERY_MS) {
      this.#lastLinks = mono;
      this.#linkModes = new Map(this.#opts.memberLinks().map((l) => [l.name, l.linkMode]));
    }
    if (now - this.#lastGc >= GC_EVERY_MS) {
      this.#lastGc = now;
      const collected = this.#replica.collectGarbage(now);
      if (collected > 0) metrics.state.collected.inc(collected);
    }
    for (const m of members.list()) {
      // A suspected member counts as down too: its rounds and quorum calls would only wait for their deadlines.
      const up = this.#opts.isConnected(m.peerId) && this.health(m.peerId).health !== 'suspected';
      const first = !this.#reported.has(m.name);
      this.#reported.add(m.name);
      if (up && !this.#connected.has(m.name)) {
        this.#connected.add(m.name);
        // A new history: the outage must not become one long interval.
        this.#detectors.get(m.name)?.reset();
        this.#replica.peerUp(m.name);
      } else if (!up && (this.#connected.delete(m.name) || first)) {
        this.#replica.peerDown(m.name);
      }
    }
    const heartbeat = config.state.heartbeatIntervalMs;
    if (mono - this.#lastHeartbeat >= heartbeat) {
      this.#lastHeartbeat = mono;
      for (const m of members.list()) if (this.#opts.isConnected(m.peerId)) this.#transport.send(m.name, { kind: 'heartbeat', intervalMs: heartbeat });
    }
    this.#nextRound(now, mono);
    for (const m of members.list()) {
      const { phi, health } = this.health(m.peerId);
      if (phi === null) {
        metrics.state.memberPhi.remove({ peer: m.name });
      } else {
        metrics.state.memberPhi.set({ peer: m.name }, phi);
      }
      metrics.state.memberSuspected.set({ peer: m.name }, health === 'suspected' ? 1 : 0);
    }
    metrics.state.entries.set(this.#replica.size);
    this.#settle();
    this.#pump();
  }

  /**
   * One anti-entropy round at a time: after a partition heals, every peer
   * has the same missing entries to offer, and rounds with all of them at
   * once would move them all several times. Due peers (new, reconnected,
   * cut short) first, then the connected peer reconciled longest ago once its
   * interval has passed.
   */
  #nextRound(now: number, mono: number): void {
    if (this.#replica.roundsRunning > 0) return;
    const [due] = this.#replica.takeReconcileDue(1);
    // A due peer that is not connected is reconciled when it is (peerUp marks it due again).
    if (due !== undefined && this.#connected.has(due) && this.#replica.startRound(due, now)) {
      this.#lastRound.set(due, mono);
      return;
    }
    let oldest: ReplicaId | undefined;
    for (const peer of this.#connected) if (oldest === undefined || (this.#lastRound.get(peer) ?? 0) < (this.#lastRound.get(oldest) ?? 0)) oldest = peer;
    if (oldest === undefined || mono - (this.#lastRound.get(oldest) ?? 0) < this.#opts.config.state.antiEntropyIntervalMs) return;
    if (this.#replica.startRound(oldest, now)) this.#lastRound.set(oldest, mono);
  }

  #typesOf(name: string): CrdtType[] {
    return CRDT_TYPES.filter((t) => this.#replica.entry(entryKey(t, name)) !== undefined);
  }
}
