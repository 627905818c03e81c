/**
 * StateReplica: the pure core of one region's geo-distributed store. It holds
 * the entries, applies client operations, merges what peers send, runs
 * anti-entropy rounds and tracks quorum operations; the driver (geo-state.ts
 * in the daemon, test/sim/state-cluster.ts in the simulator) does the I/O.
 *
 * Contract with the driver, as etcd's raft Ready: take `ready()`, make its
 * `persist` durable, then send its `messages`, then `advance(ready)`; take
 * the next Ready only after that. Inputs (operations, `step`, `tick`) may
 * arrive at any time in between; they land in the next Ready. Time is an
 * argument everywhere (physical milliseconds, for the HLC and deadlines).
 *
 * Invariants:
 * - Nothing leaves a region before it is durable there: every message is in
 *   the Ready whose persist covers the state it was built from. So a region
 *   that crashes and restarts from disk never contradicts what others got
 *   from it, and its write counter (persisted with the writes) never reissues
 *   a counter a peer has seen (see entry.ts for why clocks can be trusted).
 * - A delta merges only into an entry whose clock dominates its `since`;
 *   otherwise the receiver reports the key as behind and the sender repairs
 *   it with the full entry. Full entries always merge.
 * - A local write at level `local` completes once the Ready holding it is
 *   advanced; at `quorum`, once that has happened and a majority of regions
 *   (this one included) have acknowledged a push of the full entry, which a
 *   region does only after making it durable. A quorum read completes once a
 *   majority of regions (this one included) answered, with their copies
 *   merged into ours. Both fail at their deadline, or as soon as too many
 *   regions are known unreachable, saying how many answered.
 * - Bounds: per peer, pushes not yet acknowledged stay under maxInFlightBytes
 *   (pending changes wait, coalesced per key); one anti-entropy round moves at
 *   most maxRoundBytes each way; batches hold at most maxBatchEntries entries
 *   and (but for one oversized entry) maxBatchBytes bytes.
 */
import { HLC_ZERO, HlcDriftError, compareHlc, hlcReceive, hlcSend, maxHlc, type Hlc } from './clock/hlc.ts';
import { compactClock, dominates, mergeClocks, type VectorClock } from './clock/vector-clock.ts';
import type { LwwRegisterState } from './crdt/lww-register.ts';
import { YjsRecord, type YjsRecordState } from './crdt/yjs-record.ts';
import {
  MAX_ENTRY_BYTES,
  emptyState,
  entryHash,
  entryKey,
  isExpired,
  mergeEntries,
  mergeStates,
  laterExpiry,
  stateBytes,
  type CrdtType,
  type Entry,
  type ReplicaId,
} from './entry.ts';
import type { EntrySummary, EntryUpdate, EntryWant, Outbound, ReplicaStatus, SyncMessage } from './messages.ts';
import { OP_TYPES, OpError, checkOp, opDelta, type CrdtOp } from './ops.ts';
import { BucketIndex, DIGEST_BYTES, NUM_BUCKETS, planRound } from './reconcile.ts';
import type { GeoLevel } from '../kv/consistency.ts';

export interface ReplicaLimits {
  readonly maxBatchEntries: number;
  readonly maxBatchBytes: number;
  readonly maxInFlightBytes: number;
  readonly maxRoundBytes: number;
  /** An unacknowledged push is written off after this (its peer gets a reconcile round instead). */
  readonly pushTimeoutMs: number;
  /** An anti-entropy round this node started is abandoned after this. */
  readonly sessionTimeoutMs: number;
  readonly gcGraceMs: number;
  readonly maxClockOffsetMs: number;
}

export interface ReplicaOptions {
  readonly self: ReplicaId;
  /** Every other region (member); quorums are majorities of these plus this one. */
  readonly peers: readonly ReplicaId[];
  readonly limits: ReplicaLimits;
  readonly observer?: ReplicaObserver;
}

/** What the core counts, for metrics; every callback is optional. */
export interface ReplicaObserver {
  /** An update from a peer was merged (`stale`: we already had it; `behind`: a delta we could not apply yet). */
  onUpdate?(from: ReplicaId, outcome: 'merged' | 'stale' | 'behind' | 'expired'): void;
  /** A round this node started ended; `truncated`: it hit its byte budget and another follows. */
  onRoundDone?(peer: ReplicaId, outcome: 'done' | 'timeout' | 'peer_down', round: { sent: number; received: number; truncated: boolean }): void;
  /** An LWW write from `from` carried an HLC too far ahead; its state merged but our clock did not follow. */
  onClockDrift?(from: ReplicaId, error: HlcDriftError): void;
}

/** What the driver restores at start (all empty/zero on a fresh store). */
export interface PersistedReplica {
  readonly entries: Iterable<readonly [string, Entry]>;
  readonly writeCounter: number;
  readonly hlc: Hlc;
}

export interface ReplicaMeta {
  readonly writeCounter: number;
  readonly hlc: Hlc;
}

export interface Ready {
  /** Entries to write (null: delete), all in one durable transaction with `meta`. */
  readonly persist: ReadonlyMap<string, Entry | null>;
  /** Set when local writes advanced the write counter or HLC. */
  readonly meta: ReplicaMeta | null;
  /** To send once `persist` is durable. */
  readonly messages: readonly Outbound[];
  /** Operations that become durable with this Ready (internal). */
  readonly durableOps: readonly number[];
}

export type Completion =
  | { readonly id: number; readonly kind: 'write'; readonly ok: true; readonly key: string; readonly entry: Entry; readonly answered: number; readonly total: number }
  | { readonly id: number; readonly kind: 'read'; readonly ok: true; readonly entries: ReadonlyMap<string, Entry>; readonly answered: number; readonly total: number }
  | { readonly id: number; readonly kind: 'status'; readonly ok: true; readonly statuses: ReadonlyMap<ReplicaId, ReplicaStatus>; readonly answered: number; readonly total: number }
  | { readonly id: number; readonly kind: 'write' | 'read' | 'status'; readonly ok: false; readonly error: string; readonly answered: number; readonly total: number };

export interface WriteOutcome {
  readonly key: string;
  readonly entry: Entry;
  /** Set for local and quorum writes: the completion to wait for. */
  readonly id: number | null;
}

interface PeerOutbox {
  /** Changes not yet pushed, by key, in first-change order. */
  readonly pending: Map<string, EntryUpdate>;
  readonly inFlight: Map<number, { bytes: number; sentAt: number }>;
  inFlightBytes: number;
}

interface Session {
  readonly id: number;
  readonly startedAt: number;
  readonly summaries: EntrySummary[];
  phase: 'summaries' | 'updates';
  truncated: boolean;
  sent: number;
  received: number;
}

interface PendingOp {
  readonly id: number;
  readonly kind: 'write' | 'read' | 'status';
  /** The written key, or the keys read. */
  readonly keys: readonly string[];
  readonly level: GeoLevel;
  readonly deadline: number;
  readonly answered: Set<ReplicaId>;
  readonly unreachable: Set<ReplicaId>;
  readonly statuses: Map<ReplicaId, ReplicaStatus>;
  selfDone: boolean;
}

/** What each message kind costs on the wire beyond its entries, roughly; only used for batching decisions. */
const UPDATE_OVERHEAD_BYTES = 48;

function clockBytes(clock: VectorClock): number {
  let n = 0;
  for (const region of clock.keys()) n += region.length + 12;
  return n;
}

export function updateBytes(u: EntryUpdate): number {
  return UPDATE_OVERHEAD_BYTES + u.key.length + stateBytes(u.type, u.state).byteLength + clockBytes(u.clock) + (u.since === null ? 0 : clockBytes(u.since));
}

function summaryBytes(s: EntrySummary | EntryWant): number {
  return UPDATE_OVERHEAD_BYTES + s.key.length + clockBytes(s.clock) + s.stateVector.byteLength;
}

function fullUpdate(key: string, entry: Entry): EntryUpdate {
  return { key, type: entry.type, state: entry.state, clock: entry.clock, expiresAt: entry.expiresAt, since: null };
}

function asEntry(u: EntryUpdate): Entry {
  return { type: u.type, state: u.state, clock: u.clock, expiresAt: u.expiresAt };
}

const NO_STATE_VECTOR = new Uint8Array(0);

export class StateReplica {
  readonly self: ReplicaId;
  readonly limits: ReplicaLimits;
  #peers: ReplicaId[];
  readonly #observer: ReplicaObserver;
  readonly #entries = new Map<string, Entry>();
  readonly #index = new BucketIndex();
  readonly #expiring = new Set<string>();
  #hlc: Hlc;
  #writeCounter: number;
  #dirty = new Map<string, Entry | null>();
  #metaDirty = false;
  #messages: Outbound[] = [];
  #awaitingDurable: number[] = [];
  readonly #outboxes = new Map<ReplicaId, PeerOutbox>();
  readonly #ops = new Map<number, PendingOp>();
  /** Pushes of quorum writes, by id (which is also the write's op id). */
  readonly #quorumPushes = new Set<number>();
  readonly #sessions = new Map<ReplicaId, Session>();
  /** Bytes already answered per (peer, session) this node serves as responder; one entry per peer. */
  readonly #serving = new Map<ReplicaId, { session: number; bytes: number; truncated: boolean }>();
  readonly #reconcileDue = new Set<ReplicaId>();
  /** Peers the driver reported unreachable and not back since: new quorum operations count them out at once. */
  readonly #down = new Set<ReplicaId>();
  #completions: Completion[] = [];
  #nextId = 1;
  /** Pointwise max of every entry's clock, kept as entries change; null until computed (or after a removal). */
  #clock: VectorClock | null = null;

  constructor(options: ReplicaOptions, persisted: PersistedReplica = { entries: [], writeCounter: 0, hlc: HLC_ZERO }) {
    this.self = options.self;
    this.limits = options.limits;
    this.#peers = options.peers.filter((p) => p !== options.self);
    this.#observer = options.observer ?? {};
    let counter = persisted.writeCounter;
    let hlc = persisted.hlc;
    for (const [key, entry] of persisted.entries) {
      this.#install(key, entry);
      counter = Math.max(counter, entry.clock.get(this.self) ?? 0);
      const winner = entry.type === 'lww-register' ? (entry.state as LwwRegisterState) : null;
      if (winner !== null && winner.region === this.self) hlc = maxHlc(hlc, winner.ts);
    }
    this.#writeCounter = counter;
    this.#hlc = hlc;
    for (const peer of this.#peers) this.#reconcileDue.add(peer);
  }

  get peers(): readonly ReplicaId[] {
    return this.#peers;
  }

  /** Regions in a quorum: a majority of this one and its peers. */
  get majority(): number {
    return Math.floor((this.#peers.length + 1) / 2) + 1;
  }

  /** Follows a reloaded member list; operations already waiting keep their original count. */
  setPeers(peers: readonly ReplicaId[]): void {
    const next = peers.filter((p) => p !== this.self);
    for (const gone of this.#peers.filter((p) => !next.includes(p))) this.peerDown(gone);
    for (const added of next.filter((p) => !this.#peers.includes(p))) this.#reconcileDue.add(added);
    this.#peers = next;
  }

  // ------------------------------------------------------------ reads

  /** The HLC instant "now" for expiry decisions, without issuing a timestamp. */
  now(physicalMs: number): Hlc {
    return maxHlc(this.#hlc, { wallMs: physicalMs, logical: 0 });
  }

  entry(key: string): Entry | undefined {
    return this.#entries.get(key);
  }

  *entries(): IterableIterator<[string, Entry]> {
    yield* this.#entries;
  }

  /** Keys that start with `prefix`, in order, at most `limit`. */
  keysWithPrefix(prefix: string, limit: number): string[] {
    const keys: string[] = [];
    for (const key of this.#entries.keys()) if (key.startsWith(prefix)) keys.push(key);
    return keys.sort().slice(0, limit);
  }

  status(): ReplicaStatus {
    if (this.#clock === null) {
      let clock: VectorClock = new Map();
      for (const entry of this.#entries.values()) clock = mergeClocks(clock, entry.clock);
      this.#clock = clock;
    }
    return { digest: this.#index.storeDigest(), entries: this.#entries.size, clock: this.#clock };
  }

  /** Entries held. */
  get size(): number {
    return this.#entries.size;
  }

  get writeCounter(): number {
    return this.#writeCounter;
  }

  // ------------------------------------------------------------ client operations

  /**
   * Applies `op` to entry `name` at this region. `type` null: the existing
   * entry of a type the operation applies to, or the operation's default type.
   * Throws OpError on an operation the type does not have or a bad argument.
   */
  update(name: string, type: CrdtType | null, op: CrdtOp, level: GeoLevel, physicalMs: number, opts: { ttlMs: number | null; timeoutMs: number }): WriteOutcome {
    const chosen = type ?? OP_TYPES[op.op].find((t) => this.#entries.has(entryKey(t, name))) ?? (OP_TYPES[op.op][0] as CrdtType);
    checkOp(chosen, op);
    if (opts.ttlMs !== null && !(Number.isSafeInteger(opts.ttlMs) && opts.ttlMs >= 1)) throw new OpError(`ttl: must be a whole number of milliseconds >= 1, got ${opts.ttlMs}`);
    const key = entryKey(chosen, name);
    const current = this.#entries.get(key);
    const ts = hlcSend(this.#hlc, physicalMs);
    const { delta, expiresAt } = opDelta(chosen, current?.state ?? emptyState(chosen), op, this.self, ts, opts.ttlMs);
    const state = mergeStates(chosen, current?.state ?? emptyState(chosen), delta);
    const bytes = stateBytes(chosen, state).byteLength;
    if (bytes > MAX_ENTRY_BYTES) throw new OpError(`${key} would be ${bytes} bytes, above the ${MAX_ENTRY_BYTES}-byte entry limit`);
    const since = current?.clock ?? new Map<ReplicaId, number>();
    const counter = this.#writeCounter + 1;
    const clock: VectorClock = new Map(since).set(this.self, counter);
    // An entry expires when its latest-expiring write does; a new entry has only this write.
    const written: Entry = { type: chosen, state, clock, expiresAt: current === undefined ? expiresAt : laterExpiry(current.expiresAt, expiresAt) };
    this.#writeCounter = counter;
    this.#hlc = maxHlc(ts, this.#lwwStamp(written));
    this.#metaDirty = true;
    this.#set(key, written);
    const update: EntryUpdate = { key, type: chosen, state: delta, clock, expiresAt, since };
    if (level === 'quorum') {
      const id = this.#newOp('write', [key], level, physicalMs + opts.timeoutMs);
      this.#awaitingDurable.push(id);
      const full = fullUpdate(key, written);
      // Peers known down get it when they are back (peerUp resends to waiting quorum writes).
      for (const peer of this.#reachablePeers()) {
        this.#outbox(peer).pending.delete(key);
        this.#send(peer, { kind: 'push', id, updates: [full] });
      }
      this.#quorumPushes.add(id);
      return { key, entry: written, id };
    }
    // A peer known down catches up by a round once it is back, rather than by a queue that grows meanwhile.
    for (const peer of this.#reachablePeers()) this.#queuePush(peer, update);
    if (level === 'eventual') return { key, entry: written, id: null };
    const id = this.#newOp('write', [key], level, Number.POSITIVE_INFINITY);
    this.#awaitingDurable.push(id);
    return { key, entry: written, id };
  }

  /** Starts a quorum read of `keys`; its completion carries the merged entries (those that exist). */
  readQuorum(keys: readonly string[], physicalMs: number, timeoutMs: number): number {
    const id = this.#newOp('read', keys, 'quorum', physicalMs + timeoutMs);
    const op = this.#ops.get(id) as PendingOp;
    op.selfDone = true;
    for (const peer of this.#peers) this.#send(peer, { kind: 'read', id, keys });
    this.#checkOp(op);
    return id;
  }

  /** Asks every region for its status; completes when all answered or at the deadline (with those that did). */
  requestStatus(physicalMs: number, timeoutMs: number): number {
    const id = this.#newOp('status', [], 'quorum', physicalMs + timeoutMs);
    const op = this.#ops.get(id) as PendingOp;
    op.selfDone = true;
    op.statuses.set(this.self, this.status());
    for (const peer of this.#peers) this.#send(peer, { kind: 'status-request', id });
    this.#checkOp(op);
    return id;
  }

  // ------------------------------------------------------------ peers and time

  /** The driver lost `peer` (disconnected, or a send failed): write off what it owes us and we owe it. */
  peerDown(peer: ReplicaId): void {
    this.#outboxes.delete(peer);
    this.#serving.delete(peer);
    const session = this.#sessions.get(peer);
    if (session !== undefined) {
      this.#sessions.delete(peer);
      this.#observer.onRoundDone?.(peer, 'peer_down', session);
    }
    this.#down.add(peer);
    for (const op of this.#ops.values()) {
      if (!op.answered.has(peer)) {
        op.unreachable.add(peer);
        this.#checkOp(op);
      }
    }
    this.#reconcileDue.add(peer);
  }

  /**
   * `peer` is (re)connected: reconcile with it at once, and resend it what
   * waiting quorum operations asked of it (the first copy was dropped while
   * it was unreachable).
   */
  peerUp(peer: ReplicaId): void {
    this.#down.delete(peer);
    this.#reconcileDue.add(peer);
    for (const op of this.#ops.values()) {
      if (op.answered.has(peer) || !this.#peers.includes(peer)) continue;
      op.unreachable.delete(peer);
      if (op.kind === 'read') this.#send(peer, { kind: 'read', id: op.id, keys: op.keys });
      else if (op.kind === 'status') this.#send(peer, { kind: 'status-request', id: op.id });
      else if (op.level === 'quorum' && this.#quorumPushes.has(op.id)) {
        const key = op.keys[0] as string;
        const entry = this.#entries.get(key);
        if (entry !== undefined) this.#send(peer, { kind: 'push', id: op.id, updates: [fullUpdate(key, entry)] });
      }
    }
  }

  /**
   * Peers a round should be started with now (rounds cut short, new or
   * reconnected peers, repairs), at most `limit`; the rest stay due.
   */
  takeReconcileDue(limit = Number.POSITIVE_INFINITY): ReplicaId[] {
    const due = [...this.#reconcileDue].filter((p) => this.#peers.includes(p) && !this.#sessions.has(p)).slice(0, limit);
    for (const p of due) this.#reconcileDue.delete(p);
    return due;
  }

  /** A round this node started is still running (with any peer). */
  get roundsRunning(): number {
    return this.#sessions.size;
  }

  /** Deadlines: quorum operations, rounds, unacknowledged pushes. */
  tick(physicalMs: number): void {
    for (const op of this.#ops.values()) if (physicalMs >= op.deadline) this.#finish(op, `no majority within the deadline`);
    for (const [peer, session] of this.#sessions) {
      if (physicalMs - session.startedAt >= this.limits.sessionTimeoutMs) {
        this.#sessions.delete(peer);
        this.#observer.onRoundDone?.(peer, 'timeout', session);
      }
    }
    for (const [peer, box] of this.#outboxes) {
      for (const [id, flight] of box.inFlight) {
        if (physicalMs - flight.sentAt >= this.limits.pushTimeoutMs) {
          box.inFlight.delete(id);
          box.inFlightBytes -= flight.bytes;
          this.#reconcileDue.add(peer);
        }
      }
    }
  }

  /** Drops entries whose expiry passed more than gcGraceMs ago (HLC time); returns how many. */
  collectGarbage(physicalMs: number): number {
    const horizon = this.#gcHorizon(physicalMs);
    let dropped = 0;
    for (const key of [...this.#expiring]) {
      const entry = this.#entries.get(key);
      if (entry !== undefined && isExpired(entry, horizon)) {
        this.#remove(key);
        dropped++;
      }
    }
    return dropped;
  }

  // ------------------------------------------------------------ anti-entropy

  /** Starts an anti-entropy round with `peer` unless one is running. */
  startRound(peer: ReplicaId, physicalMs: number): boolean {
    if (this.#sessions.has(peer) || !this.#peers.includes(peer)) return false;
    const id = this.#newId();
    this.#sessions.set(peer, { id, startedAt: physicalMs, summaries: [], phase: 'summaries', truncated: false, sent: 0, received: 0 });
    this.#send(peer, { kind: 'digest', session: id, buckets: this.#index.digests() });
    return true;
  }

  roundRunning(peer: ReplicaId): boolean {
    return this.#sessions.has(peer);
  }

  // ------------------------------------------------------------ messages

  /** One message from `from` (already authenticated as that member and validated). */
  step(from: ReplicaId, message: SyncMessage, physicalMs: number): void {
    if (!this.#peers.includes(from)) return;
    switch (message.kind) {
      case 'push': {
        const behind: string[] = [];
        for (const u of message.updates) if (this.#apply(from, u, physicalMs) === 'behind') behind.push(u.key);
        this.#send(from, { kind: 'push-ack', id: message.id, behind });
        return;
      }
      case 'push-ack':
        return this.#onPushAck(from, message.id, message.behind);
      case 'read': {
        const updates: EntryUpdate[] = [];
        for (const key of message.keys) {
          const entry = this.#entries.get(key);
          if (entry !== undefined) updates.push(fullUpdate(key, entry));
        }
        this.#send(from, { kind: 'read-reply', id: message.id, updates });
        return;
      }
      case 'read-reply': {
        const op = this.#ops.get(message.id);
        if (op === undefined || op.kind !== 'read') return;
        for (const u of message.updates) if (op.keys.includes(u.key) && u.since === null) this.#apply(from, u, physicalMs);
        op.answered.add(from);
        op.unreachable.delete(from);
        this.#checkOp(op);
        return;
      }
      case 'status-request':
        this.#send(from, { kind: 'status-reply', id: message.id, status: this.status() });
        return;
      case 'status-reply': {
        const op = this.#ops.get(message.id);
        if (op === undefined || op.kind !== 'status') return;
        op.statuses.set(from, message.status);
        op.answered.add(from);
        op.unreachable.delete(from);
        this.#checkOp(op);
        return;
      }
      case 'digest':
        return this.#onDigest(from, message.session, message.buckets);
      case 'summaries':
        return this.#onSummaries(from, message);
      case 'want':
        return this.#onWant(from, message.session, message.wants, message.done);
      case 'updates':
        return this.#onUpdates(from, message, physicalMs);
    }
  }

  // ------------------------------------------------------------ Ready

  hasReady(): boolean {
    if (this.#dirty.size > 0 || this.#metaDirty || this.#messages.length > 0 || this.#awaitingDurable.length > 0) return true;
    for (const box of this.#outboxes.values()) if (box.pending.size > 0 && box.inFlightBytes < this.limits.maxInFlightBytes) return true;
    return false;
  }

  ready(physicalMs: number): Ready {
    for (const [peer, box] of this.#outboxes) this.#flushOutbox(peer, box, physicalMs);
    const ready: Ready = {
      persist: this.#dirty,
      meta: this.#metaDirty ? { writeCounter: this.#writeCounter, hlc: this.#hlc } : null,
      messages: this.#messages,
      durableOps: this.#awaitingDurable,
    };
    this.#dirty = new Map();
    this.#metaDirty = false;
    this.#messages = [];
    this.#awaitingDurable = [];
    return ready;
  }

  /** `ready` is durable and its messages are sent. */
  advance(ready: Ready): void {
    for (const id of ready.durableOps) {
      const op = this.#ops.get(id);
      if (op === undefined) continue;
      op.selfDone = true;
      this.#checkOp(op);
    }
  }

  /** Operations finished since the last call. */
  takeCompletions(): Completion[] {
    const out = this.#completions;
    this.#completions = [];
    return out;
  }

  // ------------------------------------------------------------ internals

  #newOp(kind: PendingOp['kind'], keys: readonly string[], level: GeoLevel, deadline: number): number {
    const id = this.#newId();
    const unreachable = new Set([...this.#down].filter((p) => this.#peers.includes(p)));
    this.#ops.set(id, { id, kind, keys, level, deadline, answered: new Set(), unreachable, statuses: new Map(), selfDone: false });
    return id;
  }

  #reachablePeers(): ReplicaId[] {
    return this.#peers.filter((p) => !this.#down.has(p));
  }

  /** Ids of operations, pushes and rounds: 32 bits on the wire, so they wrap (skipping 0); none lives that long. */
  #newId(): number {
    const id = this.#nextId;
    this.#nextId = this.#nextId >= 0xffff_ffff ? 1 : this.#nextId + 1;
    return id;
  }

  #checkOp(op: PendingOp): void {
    const total = this.#peers.length + 1;
    const answered = op.answered.size + (op.selfDone ? 1 : 0);
    if (op.kind === 'status') {
      if (op.answered.size + op.unreachable.size >= this.#peers.length) this.#finish(op, null);
      return;
    }
    const needed = op.level === 'quorum' ? this.majority : 1;
    if (!op.selfDone) return;
    if (answered >= needed) {
      this.#finish(op, null);
      return;
    }
    // Every region has answered or is unreachable, and too few answered: say so now rather than at the deadline.
    if (answered + op.unreachable.size >= total) this.#finish(op, `${op.unreachable.size} of ${total} regions are unreachable`);
  }

  #finish(op: PendingOp, failure: string | null): void {
    if (!this.#ops.delete(op.id)) return;
    this.#quorumPushes.delete(op.id);
    const total = this.#peers.length + 1;
    const answered = op.answered.size + (op.selfDone ? 1 : 0);
    if (op.kind === 'status') {
      this.#completions.push({ id: op.id, kind: 'status', ok: true, statuses: op.statuses, answered: op.statuses.size, total });
      return;
    }
    if (failure !== null) {
      this.#completions.push({ id: op.id, kind: op.kind, ok: false, error: failure, answered, total });
      return;
    }
    if (op.kind === 'read') {
      const entries = new Map<string, Entry>();
      for (const key of op.keys) {
        const entry = this.#entries.get(key);
        if (entry !== undefined) entries.set(key, entry);
      }
      this.#completions.push({ id: op.id, kind: 'read', ok: true, entries, answered, total });
      return;
    }
    const key = op.keys[0] as string;
    const entry = this.#entries.get(key);
    if (entry !== undefined) {
      this.#completions.push({ id: op.id, kind: 'write', ok: true, key, entry, answered, total });
    } else {
      // Collected as garbage before it was acknowledged: only possible with a TTL shorter than the wait.
      this.#completions.push({ id: op.id, kind: 'write', ok: false, error: 'the entry expired and was collected before the write was acknowledged', answered, total });
    }
  }

  #send(to: ReplicaId, message: SyncMessage): void {
    this.#messages.push({ to, message });
  }

  #outbox(peer: ReplicaId): PeerOutbox {
    let box = this.#outboxes.get(peer);
    if (box === undefined) {
      box = { pending: new Map(), inFlight: new Map(), inFlightBytes: 0 };
      this.#outboxes.set(peer, box);
    }
    return box;
  }

  /** Queues a local change for `peer`, folding it into a pending delta of the same key when they chain. */
  #queuePush(peer: ReplicaId, update: EntryUpdate): void {
    const box = this.#outbox(peer);
    const pending = box.pending.get(update.key);
    if (pending === undefined) {
      box.pending.set(update.key, update);
      return;
    }
    const entry = this.#entries.get(update.key) as Entry;
    const chains = pending.since !== null && update.since !== null && sameClock(pending.clock, update.since);
    box.pending.set(
      update.key,
      chains
        ? { ...update, state: mergeStates(update.type, pending.state, update.state), expiresAt: laterExpiry(pending.expiresAt, update.expiresAt), since: pending.since }
        : fullUpdate(update.key, entry),
    );
  }

  #flushOutbox(peer: ReplicaId, box: PeerOutbox, physicalMs: number): void {
    const { maxBatchEntries, maxBatchBytes, maxInFlightBytes } = this.limits;
    while (box.pending.size > 0 && box.inFlightBytes < maxInFlightBytes) {
      const updates: EntryUpdate[] = [];
      let bytes = 0;
      for (const [key, update] of box.pending) {
        const size = updateBytes(update);
        if (updates.length > 0 && (updates.length >= maxBatchEntries || bytes + size > maxBatchBytes)) break;
        updates.push(update);
        bytes += size;
        box.pending.delete(key);
      }
      const id = this.#newId();
      box.inFlight.set(id, { bytes, sentAt: physicalMs });
      box.inFlightBytes += bytes;
      this.#send(peer, { kind: 'push', id, updates });
    }
  }

  #onPushAck(from: ReplicaId, id: number, behind: readonly string[]): void {
    const box = this.#outboxes.get(from);
    const flight = box?.inFlight.get(id);
    if (box !== undefined && flight !== undefined) {
      box.inFlight.delete(id);
      box.inFlightBytes -= flight.bytes;
    }
    // The peer lacked history for these deltas: send it the whole entries.
    for (const key of behind) {
      const entry = this.#entries.get(key);
      if (entry !== undefined) this.#outbox(from).pending.set(key, fullUpdate(key, entry));
    }
    const op = this.#quorumPushes.has(id) ? this.#ops.get(id) : undefined;
    if (op !== undefined && op.kind === 'write') {
      op.answered.add(from);
      op.unreachable.delete(from);
      this.#checkOp(op);
    }
  }

  #gcHorizon(physicalMs: number): Hlc {
    const now = this.now(physicalMs);
    return { wallMs: Math.max(0, now.wallMs - this.limits.gcGraceMs), logical: now.logical };
  }

  /** Merges one update from `from`; says what happened. */
  #apply(from: ReplicaId, u: EntryUpdate, physicalMs: number): 'merged' | 'stale' | 'behind' | 'expired' {
    const outcome = this.#merge(from, u, physicalMs);
    this.#observer.onUpdate?.(from, outcome);
    return outcome;
  }

  #merge(from: ReplicaId, u: EntryUpdate, physicalMs: number): 'merged' | 'stale' | 'behind' | 'expired' {
    const local = this.#entries.get(u.key);
    // An entry every region is collecting by now is not taken in again (a copy we hold still merges).
    if (local === undefined && u.expiresAt !== null && compareHlc(this.#gcHorizon(physicalMs), u.expiresAt) >= 0) return 'expired';
    if (local !== undefined && local.type !== u.type) return 'stale';
    if (local !== undefined && dominates(local.clock, u.clock)) {
      // Clocks say we have it all. A full entry is merged all the same when it differs: clocks can
      // overstate after an entry was collected and written again (see expiry in docs/state.md), and
      // full-state merges are what makes every region converge regardless.
      if (u.since !== null) return 'stale';
      const merged = mergeEntries(local, asEntry(u));
      const hash = entryHash(u.key, merged);
      if (Buffer.compare(hash, this.#index.hash(u.key) as Uint8Array) === 0) return 'stale';
      this.#set(u.key, merged, hash);
      return 'merged';
    }
    if (u.since !== null) {
      const ready = local === undefined ? u.since.size === 0 : dominates(local.clock, u.since);
      if (!ready) return 'behind';
    }
    const incoming = asEntry(u);
    this.#followClock(from, incoming, physicalMs);
    // States arrive canonical (decoded, or from our own modules), so a new key takes the update as it is.
    this.#set(u.key, local === undefined ? incoming : mergeEntries(local, incoming));
    return 'merged';
  }

  /** An LWW write moves our HLC past its stamp (unless it is too far ahead, when it still merges). */
  #followClock(from: ReplicaId, entry: Entry, physicalMs: number): void {
    const stamp = this.#lwwStamp(entry);
    if (compareHlc(stamp, this.#hlc) <= 0) return;
    try {
      this.#hlc = hlcReceive(this.#hlc, stamp, physicalMs, this.limits.maxClockOffsetMs);
    } catch (err) {
      if (!(err instanceof HlcDriftError)) throw err;
      this.#observer.onClockDrift?.(from, err);
    }
  }

  #lwwStamp(entry: Entry): Hlc {
    if (entry.type !== 'lww-register') return HLC_ZERO;
    return (entry.state as LwwRegisterState)?.ts ?? HLC_ZERO;
  }

  #install(key: string, entry: Entry, hash = entryHash(key, entry)): void {
    // Every member holds every entry: its clock is stored in its smallest form (a Dot when single-writer).
    const clock = compactClock(entry.clock, this.#internRegion);
    if (clock !== entry.clock) entry = { type: entry.type, state: entry.state, clock, expiresAt: entry.expiresAt };
    this.#entries.set(key, entry);
    if (this.#clock !== null) this.#clock = mergeClocks(this.#clock, entry.clock);
    this.#index.set(key, hash);
    if (entry.expiresAt === null) this.#expiring.delete(key);
    else this.#expiring.add(key);
  }

  /** A region id as the one string this replica keeps for it (its own and its peers'; others as given). */
  readonly #internRegion = (region: ReplicaId): ReplicaId => {
    if (region === this.self) return this.self;
    return this.#peers.find((p) => p === region) ?? region;
  };

  #set(key: string, entry: Entry, hash?: Uint8Array): void {
    this.#install(key, entry, hash);
    this.#dirty.set(key, entry);
  }

  #remove(key: string): void {
    this.#entries.delete(key);
    // The max over the remaining entries may be lower now: recomputed when next asked for.
    this.#clock = null;
    this.#index.set(key, null);
    this.#expiring.delete(key);
    this.#dirty.set(key, null);
    for (const box of this.#outboxes.values()) box.pending.delete(key);
  }

  // ------------------------------------------------------------ rounds

  #onDigest(from: ReplicaId, session: number, buckets: Uint8Array): void {
    if (buckets.byteLength !== DIGEST_BYTES) return;
    this.#serving.set(from, { session, bytes: 0, truncated: false });
    const differing = this.#index.differing(buckets);
    const { maxBatchEntries, maxBatchBytes, maxRoundBytes } = this.limits;
    const covered: number[] = [];
    let batch: EntrySummary[] = [];
    let batchBytes = 0;
    let roundBytes = 0;
    let truncated = false;
    for (const bucket of differing) {
      const summaries = [...this.#index.keysIn(bucket)].map((key) => this.#summary(key));
      const bytes = summaries.reduce((n, s) => n + summaryBytes(s), 0);
      if (covered.length > 0 && roundBytes + bytes > maxRoundBytes) {
        truncated = true;
        break;
      }
      covered.push(bucket);
      roundBytes += bytes;
      for (const s of summaries) {
        const size = summaryBytes(s);
        if (batch.length > 0 && (batch.length >= maxBatchEntries || batchBytes + size > maxBatchBytes)) {
          this.#send(from, { kind: 'summaries', session, summaries: batch, buckets: [], done: false, truncated: false });
          batch = [];
          batchBytes = 0;
        }
        batch.push(s);
        batchBytes += size;
      }
    }
    this.#send(from, { kind: 'summaries', session, summaries: batch, buckets: covered, done: true, truncated });
  }

  #summary(key: string): EntrySummary {
    const entry = this.#entries.get(key) as Entry;
    return {
      key,
      clock: entry.clock,
      hash: this.#index.hash(key) as Uint8Array,
      stateVector: entry.type === 'yjs-record' ? YjsRecord.stateVector(entry.state as YjsRecordState) : NO_STATE_VECTOR,
    };
  }

  #onSummaries(from: ReplicaId, message: Extract<SyncMessage, { kind: 'summaries' }>): void {
    const session = this.#sessions.get(from);
    if (session === undefined || session.id !== message.session || session.phase !== 'summaries') return;
    session.summaries.push(...message.summaries);
    if (!message.done) return;
    session.truncated ||= message.truncated;
    const ourKeys: string[] = [];
    for (const bucket of message.buckets) if (bucket >= 0 && bucket < NUM_BUCKETS) ourKeys.push(...this.#index.keysIn(bucket));
    const plan = planRound(session.summaries, ourKeys, (key) => {
      const entry = this.#entries.get(key);
      const hash = this.#index.hash(key);
      return entry === undefined || hash === undefined ? undefined : { clock: entry.clock, hash };
    });
    session.summaries.length = 0;
    session.phase = 'updates';
    const { maxBatchEntries, maxBatchBytes } = this.limits;
    const wants = plan.want.map((key): EntryWant => {
      const entry = this.#entries.get(key);
      return {
        key,
        clock: entry?.clock ?? new Map(),
        stateVector: entry?.type === 'yjs-record' ? YjsRecord.stateVector(entry.state as YjsRecordState) : NO_STATE_VECTOR,
      };
    });
    this.#sendBatched(wants, summaryBytes, maxBatchEntries, maxBatchBytes, (batch, done) => this.#send(from, { kind: 'want', session: session.id, wants: batch, done }));
    const { updates, truncated } = this.#collectUpdates(plan.send.map(({ key, theirs }) => ({ key, clock: theirs?.clock ?? null, stateVector: theirs?.stateVector ?? NO_STATE_VECTOR })));
    session.truncated ||= truncated;
    session.sent += updates.length;
    this.#sendBatched(updates, updateBytes, maxBatchEntries, maxBatchBytes, (batch, done) =>
      this.#send(from, { kind: 'updates', session: session.id, reply: false, updates: batch, done, truncated: done && truncated }),
    );
  }

  /**
   * Updates bringing a peer's copies up to ours, within one round's byte
   * budget: a Yjs record the peer has is sent as a diff against its state
   * vector (a delta since its clock); everything else whole.
   */
  #collectUpdates(targets: readonly { key: string; clock: VectorClock | null; stateVector: Uint8Array }[], budget = this.limits.maxRoundBytes): { updates: EntryUpdate[]; truncated: boolean; bytes: number } {
    const updates: EntryUpdate[] = [];
    let bytes = 0;
    for (const target of targets) {
      const entry = this.#entries.get(target.key);
      if (entry === undefined) continue;
      const update: EntryUpdate =
        entry.type === 'yjs-record' && target.clock !== null && target.stateVector.byteLength > 0
          ? { key: target.key, type: entry.type, state: YjsRecord.diff(entry.state as YjsRecordState, target.stateVector), clock: entry.clock, expiresAt: entry.expiresAt, since: target.clock }
          : fullUpdate(target.key, entry);
      const size = updateBytes(update);
      if (updates.length > 0 && bytes + size > budget) return { updates, truncated: true, bytes };
      updates.push(update);
      bytes += size;
    }
    return { updates, truncated: false, bytes };
  }

  #sendBatched<T>(items: readonly T[], size: (item: T) => number, maxEntries: number, maxBytes: number, send: (batch: T[], done: boolean) => void): void {
    let batch: T[] = [];
    let bytes = 0;
    for (const item of items) {
      const n = size(item);
      if (batch.length > 0 && (batch.length >= maxEntries || bytes + n > maxBytes)) {
        send(batch, false);
        batch = [];
        bytes = 0;
      }
      batch.push(item);
      bytes += n;
    }
    send(batch, true);
  }

  #onWant(from: ReplicaId, session: number, wants: readonly EntryWant[], done: boolean): void {
    const serving = this.#serving.get(from);
    if (serving === undefined || serving.session !== session) return;
    const budget = Math.max(0, this.limits.maxRoundBytes - serving.bytes);
    const { updates, truncated, bytes } = budget === 0 ? { updates: [], truncated: wants.length > 0, bytes: 0 } : this.#collectUpdates(wants, budget);
    serving.bytes += bytes;
    serving.truncated ||= truncated;
    const { maxBatchEntries, maxBatchBytes } = this.limits;
    this.#sendBatched(updates, updateBytes, maxBatchEntries, maxBatchBytes, (batch, last) => {
      if (last && !done && batch.length === 0) return;
      this.#send(from, { kind: 'updates', session, reply: true, updates: batch, done: last && done, truncated: last && done && serving.truncated });
    });
    if (done) this.#serving.delete(from);
  }

  #onUpdates(from: ReplicaId, message: Extract<SyncMessage, { kind: 'updates' }>, physicalMs: number): void {
    const session = this.#sessions.get(from);
    // Answers to our own round carry `reply`; the peer's own round sends its updates without it.
    const mine = message.reply && session !== undefined && session.id === message.session;
    for (const u of message.updates) {
      this.#apply(from, u, physicalMs);
      if (mine) session.received++;
    }
    // Updates on a round the peer started are merged all the same; only our own round ends here.
    if (!mine || !message.done || session.phase !== 'updates') return;
    this.#sessions.delete(from);
    session.truncated ||= message.truncated;
    if (session.truncated) this.#reconcileDue.add(from);
    this.#observer.onRoundDone?.(from, 'done', session);
  }
}

function sameClock(a: VectorClock, b: VectorClock): boolean {
  return dominates(a, b) && dominates(b, a);
}
