/**
 * Deterministic simulation of the geo-distributed store: N regions (3 or 5),
 * each a StateReplica driven as the daemon drives it (take a Ready, make its
 * persist durable after a simulated fsync, then send its messages, then
 * advance), in virtual time from one seeded PRNG.
 *
 * During the chaos phase, clients run random operations on every type at
 * every level (quorum, local, eventual) through random regions and quorum
 * reads; the network drops, duplicates, delays and reorders (test/sim/network.ts);
 * partitions come and go; regions crash (losing what was not yet durable)
 * and restart from their disk. Then the network calms, every region is up,
 * clients stop, and anti-entropy must bring every region to the same digest
 * within a bound.
 *
 * Checked:
 * - during the run, sampled: two regions' copies of a key with equal clocks
 *   are equal, and a copy whose clock dominates another's contains it
 *   (merging the other changes nothing): the clock/state invariant that
 *   lets anti-entropy trust clocks (keys with a TTL are left out: one
 *   written again after it was collected may revive state its clock does
 *   not show, which full-state merges still reconcile);
 * - a quorum read that starts after a quorum write of the same key was
 *   acknowledged sees that write (its clock dominates the write's);
 * - after the final heal: every region has the same digest and the same
 *   entries, memory equals disk, and every acknowledged local or quorum
 *   write (of a key without TTL) is contained in the final copy.
 *
 * Everything is a pure function of the seed: no wall clock, no Math.random.
 */
import { dominates, type VectorClock } from '../../src/state/clock/vector-clock.ts';
import type { JsonValue } from '../../src/state/crdt/types.ts';
import { HLC_ZERO, type Hlc } from '../../src/state/clock/hlc.ts';
import { entryHash, mergeEntries, type CrdtType, type Entry } from '../../src/state/entry.ts';
import type { SyncMessage } from '../../src/state/messages.ts';
import type { CrdtOp } from '../../src/state/ops.ts';
import { StateReplica, type Completion, type Ready, type ReplicaLimits } from '../../src/state/replica.ts';
import type { GeoLevel } from '../../src/kv/consistency.ts';
import { decodeSyncMessage, encodeSyncMessage } from '../../src/state/wire.ts';
import { EventQueue } from './events.ts';
import { CALM, SimNetwork, randomLinkFaults } from './network.ts';
import { Prng } from './prng.ts';

export interface StateScenario {
  readonly seed: number;
  readonly regions: number;
  readonly chaosMs: number;
  readonly limits: ReplicaLimits;
  /** Push every message through the wire encoding (slower; catches encode/decode asymmetries). */
  readonly wire: boolean;
  readonly trace?: (line: string) => void;
}

export interface StateSimReport {
  readonly seed: number;
  readonly regions: number;
  readonly events: number;
  readonly messages: number;
  readonly writes: Readonly<Record<GeoLevel, number>>;
  readonly acked: number;
  readonly quorumFailures: number;
  readonly wire: boolean;
  readonly quorumReads: number;
  readonly quorumReadsChecked: number;
  readonly crashes: number;
  readonly partitions: number;
  readonly rounds: number;
  readonly truncatedRounds: number;
  readonly behind: number;
  readonly gcDropped: number;
  readonly invariantChecks: number;
  /** Virtual ms from the final heal until every region had the same digest. */
  readonly convergenceMs: number;
  readonly entries: number;
}

export class StateSimFailure extends Error {
  readonly seed: number;
  constructor(seed: number, at: number, problem: string) {
    super(`state simulation seed ${seed} failed at ${at} ms: ${problem}\n  replay: npm run soak -- state --from ${seed} --seeds 1 --trace`);
    this.name = 'StateSimFailure';
    this.seed = seed;
  }
}

/** Virtual ms, after the final heal, within which every region must agree. */
export const CONVERGENCE_BOUND_MS = 8_000;
const TICK_MS = 25;
const ROUND_EVERY_MS = 300;
/** Keys compared per invariant check (random ones; comparing all of them dominated the run time). */
const CHECKED_KEYS = 6;

export function stateScenarioForSeed(seed: number, trace?: (line: string) => void): StateScenario {
  const rng = new Prng(seed ^ 0x5eed);
  return {
    seed,
    regions: seed % 2 === 0 ? 5 : 3,
    chaosMs: rng.between(1_000, 2_000),
    limits: {
      maxBatchEntries: rng.pick([2, 4, 16]),
      maxBatchBytes: rng.pick([1024, 4096, 65536]),
      maxInFlightBytes: rng.pick([2048, 8192, 1 << 20]),
      maxRoundBytes: rng.pick([2048, 8192, 1 << 20]),
      pushTimeoutMs: 400,
      sessionTimeoutMs: 800,
      gcGraceMs: 200,
      maxClockOffsetMs: 500,
    },
    wire: seed % 5 === 0,
    ...(trace === undefined ? {} : { trace }),
  };
}

interface Disk {
  entries: Map<string, Entry>;
  writeCounter: number;
  hlc: Hlc;
}

interface Region {
  readonly id: string;
  readonly disk: Disk;
  /** Added to the global time to make this region's physical clock. */
  readonly skewMs: number;
  replica: StateReplica | null;
  /** Bumped on crash, so events of a dead incarnation are ignored. */
  incarnation: number;
  /** A Ready is being persisted. */
  busy: boolean;
  lastRound: number;
}

interface AckedWrite {
  readonly key: string;
  readonly clock: VectorClock;
  readonly level: GeoLevel;
  readonly at: number;
}

interface PendingWrite {
  readonly key: string;
  readonly clock: VectorClock;
  readonly level: GeoLevel;
  readonly ttl: boolean;
}

interface PendingRead {
  readonly key: string;
  readonly startedAt: number;
}

type SimEvent =
  | { kind: 'tick' }
  | { kind: 'op' }
  | { kind: 'deliver'; from: string; to: string; incarnation: number; message: SyncMessage }
  | { kind: 'persisted'; region: string; incarnation: number; ready: Ready }
  | { kind: 'fault' }
  | { kind: 'restart'; region: string }
  | { kind: 'calm' }
  | { kind: 'check' };

const NAMES = ['a', 'b', 'c', 'd'];
const ELEMENTS = ['x', 'y', 'z', 'w'];
const FIELDS = ['f', 'g', 'h'];

export class StateSimulation {
  readonly #s: StateScenario;
  readonly #rng: Prng;
  readonly #net: SimNetwork;
  readonly #queue = new EventQueue<SimEvent>();
  readonly #regions: Region[];
  #now = 0;
  #calm = false;
  #healedAt = -1;
  #convergedAt = -1;
  #opSeq = 0;
  readonly #pendingWrites = new Map<string, PendingWrite>();
  readonly #pendingReads = new Map<string, PendingRead>();
  readonly #acked: AckedWrite[] = [];
  readonly #stats = {
    events: 0,
    messages: 0,
    writes: { quorum: 0, local: 0, eventual: 0 } as Record<GeoLevel, number>,
    acked: 0,
    quorumFailures: 0,
    quorumReads: 0,
    quorumReadsChecked: 0,
    crashes: 0,
    partitions: 0,
    rounds: 0,
    truncatedRounds: 0,
    behind: 0,
    gcDropped: 0,
    invariantChecks: 0,
  };

  constructor(scenario: StateScenario) {
    this.#s = scenario;
    this.#rng = new Prng(scenario.seed);
    this.#net = new SimNetwork(this.#rng.fork(), randomLinkFaults(this.#rng));
    this.#regions = Array.from({ length: scenario.regions }, (_, i) => ({
      id: `r${i + 1}`,
      disk: { entries: new Map(), writeCounter: 0, hlc: HLC_ZERO },
      skewMs: this.#rng.between(0, 60),
      replica: null,
      incarnation: 0,
      busy: false,
      lastRound: 0,
    }));
    for (const r of this.#regions) this.#boot(r);
  }

  run(): StateSimReport {
    this.#queue.push(0, { kind: 'tick' });
    this.#queue.push(1, { kind: 'op' });
    this.#queue.push(this.#rng.between(100, 400), { kind: 'fault' });
    this.#queue.push(this.#s.chaosMs, { kind: 'calm' });
    const end = this.#s.chaosMs + CONVERGENCE_BOUND_MS;
    for (;;) {
      const next = this.#queue.pop();
      if (next === undefined) break;
      if (next.time > end) break;
      this.#now = next.time;
      this.#stats.events++;
      this.#handle(next.event);
      if (this.#convergedAt >= 0) break;
    }
    if (this.#convergedAt < 0) this.#fail(`regions did not converge within ${CONVERGENCE_BOUND_MS} ms of the final heal: ${this.#describeDigests()}`);
    this.#finalChecks();
    const first = this.#regions[0] as Region;
    return {
      seed: this.#s.seed,
      regions: this.#s.regions,
      wire: this.#s.wire,
      ...this.#stats,
      writes: { ...this.#stats.writes },
      convergenceMs: this.#convergedAt - this.#healedAt,
      entries: (first.replica as StateReplica).status().entries,
    };
  }

  // ---------------------------------------------------------------- driver

  #physical(r: Region): number {
    return this.#now + r.skewMs;
  }

  #boot(r: Region): void {
    const peers = this.#regions.map((x) => x.id);
    r.replica = new StateReplica(
      {
        self: r.id,
        peers,
        limits: this.#s.limits,
        observer: {
          onUpdate: (_from, outcome) => {
            if (outcome === 'behind') this.#stats.behind++;
          },
          onRoundDone: (_peer, outcome, round) => {
            if (outcome === 'done') this.#stats.rounds++;
            if (round.truncated) this.#stats.truncatedRounds++;
          },
        },
      },
      { entries: [...r.disk.entries], writeCounter: r.disk.writeCounter, hlc: r.disk.hlc },
    );
    r.busy = false;
  }

  #pump(r: Region): void {
    const replica = r.replica;
    if (replica === null || r.busy || !replica.hasReady()) return;
    const ready = replica.ready(this.#physical(r));
    r.busy = true;
    const fsync = ready.persist.size > 0 || ready.meta !== null ? this.#rng.between(0, 3) : 0;
    this.#queue.push(this.#now + fsync, { kind: 'persisted', region: r.id, incarnation: r.incarnation, ready });
  }

  #onPersisted(r: Region, ready: Ready): void {
    for (const [key, entry] of ready.persist) {
      if (entry === null) r.disk.entries.delete(key);
      else r.disk.entries.set(key, entry);
    }
    if (ready.meta !== null) {
      r.disk.writeCounter = ready.meta.writeCounter;
      r.disk.hlc = ready.meta.hlc;
    }
    for (const { to, message } of ready.messages) this.#sendMessage(r, to, message);
    const replica = r.replica as StateReplica;
    replica.advance(ready);
    r.busy = false;
    this.#collect(r);
    this.#pump(r);
  }

  #sendMessage(from: Region, to: string, message: SyncMessage): void {
    this.#stats.messages++;
    const target = this.#region(to);
    let carried = message;
    if (this.#s.wire) carried = decodeSyncMessage(encodeSyncMessage(message)) as SyncMessage;
    for (const delay of this.#net.deliveries(from.id, to)) {
      this.#queue.push(this.#now + delay, { kind: 'deliver', from: from.id, to, incarnation: target.incarnation, message: carried });
    }
  }

  #onDeliver(e: Extract<SimEvent, { kind: 'deliver' }>): void {
    const r = this.#region(e.to);
    if (r.replica === null || r.incarnation !== e.incarnation || !this.#net.reachable(e.from, e.to)) return;
    r.replica.step(e.from, e.message, this.#physical(r));
    this.#collect(r);
    this.#pump(r);
  }

  #onTick(): void {
    for (const r of this.#regions) {
      const replica = r.replica;
      if (replica === null) continue;
      const now = this.#physical(r);
      replica.tick(now);
      this.#stats.gcDropped += replica.collectGarbage(now);
      for (const peer of replica.takeReconcileDue()) if (this.#net.reachable(r.id, peer)) replica.startRound(peer, now);
      if (this.#now - r.lastRound >= ROUND_EVERY_MS) {
        r.lastRound = this.#now;
        const peer = this.#rng.pick(replica.peers);
        replica.startRound(peer, now);
      }
      this.#collect(r);
      this.#pump(r);
    }
    if (this.#calm && this.#healedAt >= 0 && this.#converged()) this.#convergedAt = this.#now;
    this.#queue.push(this.#now + TICK_MS, { kind: 'tick' });
  }

  #collect(r: Region): void {
    const replica = r.replica;
    if (replica === null) return;
    for (const c of replica.takeCompletions()) this.#onCompletion(r, c);
  }

  // ---------------------------------------------------------------- workload

  #onOp(): void {
    if (this.#calm) return;
    const up = this.#regions.filter((r) => r.replica !== null);
    if (up.length > 0) {
      const r = this.#rng.pick(up);
      if (this.#rng.chance(0.2)) this.#read(r);
      else this.#write(r);
    }
    this.#queue.push(this.#now + this.#rng.between(2, 15), { kind: 'op' });
  }

  #randomOp(): { type: CrdtType; op: CrdtOp } {
    const seq = ++this.#opSeq;
    switch (this.#rng.int(12)) {
      case 0:
      case 1:
        return { type: 'lww-register', op: { op: 'put', value: `v${seq}` } };
      case 2:
        return { type: 'lww-register', op: { op: 'delete' } };
      case 3:
        return { type: 'pn-counter', op: this.#rng.chance(0.5) ? { op: 'incr', by: this.#rng.between(1, 5) } : { op: 'decr', by: this.#rng.between(1, 5) } };
      case 4:
        return { type: 'g-counter', op: { op: 'incr', by: this.#rng.between(1, 3) } };
      case 5:
        return { type: 'or-set', op: this.#rng.chance(0.6) ? { op: 'add', element: this.#rng.pick(ELEMENTS) } : { op: 'remove', element: this.#rng.pick(ELEMENTS) } };
      case 6:
      case 7:
        return { type: 'g-set', op: { op: 'add', element: this.#rng.pick(ELEMENTS) } };
      case 8:
      case 9:
        return { type: 'or-set', op: { op: 'add', element: this.#rng.pick(ELEMENTS) } };
      case 10:
        return { type: 'lww-register', op: { op: 'put', value: `v${seq}` } };
      default: {
        const field = this.#rng.pick(FIELDS);
        const value: JsonValue = { n: seq };
        return { type: 'yjs-record', op: this.#rng.chance(0.8) ? { op: 'set-field', field, value } : { op: 'delete-field', field } };
      }
    }
  }

  #write(r: Region): void {
    const replica = r.replica as StateReplica;
    const { type, op } = this.#randomOp();
    const level = this.#rng.pick(['quorum', 'local', 'eventual'] as const);
    const ttl = this.#rng.chance(0.08);
    const name = ttl ? `ttl-${this.#rng.pick(NAMES)}` : this.#rng.pick(NAMES);
    const now = this.#physical(r);
    const out = replica.update(name, type, op, level, now, { ttlMs: ttl ? this.#rng.between(20, 400) : null, timeoutMs: this.#rng.between(200, 800) });
    this.#stats.writes[level]++;
    this.#trace(`${r.id} ${level} ${op.op} ${out.key} -> ${clockText(out.entry.clock)}`);
    if (out.id !== null) this.#pendingWrites.set(`${r.id}#${r.incarnation}#${out.id}`, { key: out.key, clock: out.entry.clock, level, ttl });
    this.#collect(r);
    this.#pump(r);
  }

  #read(r: Region): void {
    const replica = r.replica as StateReplica;
    const names = [...NAMES];
    const type = this.#rng.pick(['lww-register', 'pn-counter', 'or-set', 'yjs-record', 'g-counter', 'g-set'] as const);
    const key = `${type}:${this.#rng.pick(names)}`;
    const id = replica.readQuorum([key], this.#physical(r), this.#rng.between(200, 800));
    this.#stats.quorumReads++;
    this.#pendingReads.set(`${r.id}#${r.incarnation}#${id}`, { key, startedAt: this.#now });
    this.#collect(r);
    this.#pump(r);
  }

  #onCompletion(r: Region, c: Completion): void {
    const tag = `${r.id}#${r.incarnation}#${c.id}`;
    if (c.kind === 'write') {
      const w = this.#pendingWrites.get(tag);
      this.#pendingWrites.delete(tag);
      if (w === undefined) return;
      if (!c.ok) {
        if (w.level !== 'quorum') this.#fail(`a ${w.level} write of ${w.key} at ${r.id} failed: ${c.error}`);
        this.#stats.quorumFailures++;
        const collected = w.ttl && /expired and was collected/.test(c.error);
        if (!collected && !/of \d+ regions|within the deadline/.test(c.error)) this.#fail(`quorum failure without the count of regions: ${c.error}`);
        return;
      }
      if (w.level === 'quorum' && c.answered < r.replica!.majority) this.#fail(`quorum write of ${w.key} acknowledged by only ${c.answered} regions`);
      this.#stats.acked++;
      if (!w.ttl) this.#acked.push({ key: w.key, clock: w.clock, level: w.level, at: this.#now });
      this.#trace(`${r.id} acked ${w.level} ${w.key} ${clockText(w.clock)} (${c.answered}/${c.total})`);
      return;
    }
    if (c.kind === 'read') {
      const read = this.#pendingReads.get(tag);
      this.#pendingReads.delete(tag);
      if (read === undefined || !c.ok) return;
      this.#stats.quorumReadsChecked++;
      for (const w of this.#acked) {
        if (w.level !== 'quorum' || w.key !== read.key || w.at >= read.startedAt) continue;
        const seen = c.entries.get(read.key);
        if (seen === undefined || !dominates(seen.clock, w.clock)) {
          this.#fail(`quorum read of ${read.key} at ${r.id} (started ${read.startedAt} ms) missed a quorum write acknowledged at ${w.at} ms (${clockText(w.clock)}); read saw ${seen === undefined ? 'nothing' : clockText(seen.clock)}`);
        }
      }
    }
  }

  // ---------------------------------------------------------------- faults

  #onFault(): void {
    if (this.#calm) return;
    const roll = this.#rng.int(10);
    const ids = this.#regions.map((r) => r.id);
    if (roll < 4 && !this.#net.partitioned) {
      const shuffled = [...ids].sort(() => this.#rng.next() - 0.5);
      const cut = this.#rng.between(1, ids.length - 1);
      this.#net.partition([shuffled.slice(0, cut), shuffled.slice(cut)]);
      this.#stats.partitions++;
      this.#trace(`partition ${shuffled.slice(0, cut).join(',')} | ${shuffled.slice(cut).join(',')}`);
      this.#notifyLinks();
    } else if (roll < 6) {
      this.#net.heal();
      this.#trace('heal');
      this.#notifyLinks();
    } else if (roll < 8) {
      const up = this.#regions.filter((r) => r.replica !== null);
      if (up.length > 1) this.#crash(this.#rng.pick(up));
    } else {
      this.#net.faults = this.#rng.chance(0.5) ? CALM : randomLinkFaults(this.#rng);
    }
    this.#queue.push(this.#now + this.#rng.between(80, 300), { kind: 'fault' });
  }

  /** What the mesh does: each region learns, after a detection delay, which peers it can reach. */
  #notifyLinks(): void {
    for (const r of this.#regions) {
      const replica = r.replica;
      if (replica === null) continue;
      for (const peer of replica.peers) {
        if (this.#net.reachable(r.id, peer) && this.#region(peer).replica !== null) replica.peerUp(peer);
        else replica.peerDown(peer);
      }
      this.#collect(r);
    }
  }

  #crash(r: Region): void {
    this.#stats.crashes++;
    r.replica = null;
    r.incarnation++;
    r.busy = false;
    this.#trace(`${r.id} crashed`);
    for (const other of this.#regions) other.replica?.peerDown(r.id);
    this.#queue.push(this.#now + this.#rng.between(50, 400), { kind: 'restart', region: r.id });
  }

  #restart(r: Region): void {
    if (r.replica !== null) return;
    this.#boot(r);
    this.#trace(`${r.id} restarted with ${r.disk.entries.size} entries, counter ${r.disk.writeCounter}`);
    for (const other of this.#regions) if (other !== r && this.#net.reachable(other.id, r.id)) other.replica?.peerUp(r.id);
  }

  #onCalm(): void {
    this.#calm = true;
    this.#net.heal();
    this.#net.faults = CALM;
    for (const r of this.#regions) if (r.replica === null) this.#restart(r);
    this.#notifyLinks();
    this.#healedAt = this.#now;
    this.#trace('calm: healed, every region up, clients stopped');
  }

  // ---------------------------------------------------------------- checks

  #onCheck(): void {
    const up = this.#regions.filter((r) => r.replica !== null);
    if (up.length < 2) return;
    const a = this.#rng.pick(up).replica as StateReplica;
    const b = this.#rng.pick(up).replica as StateReplica;
    const keys = [...a.entries()].map(([key]) => key);
    for (let i = 0; i < CHECKED_KEYS && keys.length > 0; i++) {
      const key = this.#rng.pick(keys);
      const ea = a.entry(key) as Entry;
      const eb = b.entry(key);
      // A TTL key written again after it was collected may hold writes its clock does not show (docs/state.md).
      if (eb === undefined || key.includes(':ttl-')) continue;
      this.#stats.invariantChecks++;
      this.#checkContainment(key, ea, eb, a.self, b.self);
      this.#checkContainment(key, eb, ea, b.self, a.self);
    }
  }

  #checkContainment(key: string, big: Entry, small: Entry, bigAt: string, smallAt: string): void {
    if (!dominates(big.clock, small.clock)) return;
    if (dominates(small.clock, big.clock)) {
      if (Buffer.compare(entryHash(key, small), entryHash(key, big)) !== 0) this.#fail(`${key}: the copies at ${bigAt} and ${smallAt} have equal clocks (${clockText(big.clock)}) but differ`);
      return;
    }
    const merged = mergeEntries(big, small);
    if (Buffer.compare(entryHash(key, merged), entryHash(key, big)) !== 0) {
      this.#fail(`${key}: the copy at ${bigAt} (${clockText(big.clock)}) dominates the one at ${smallAt} (${clockText(small.clock)}) but does not contain it`);
    }
  }

  #converged(): boolean {
    const digests = new Set<string>();
    for (const r of this.#regions) {
      if (r.replica === null || r.busy || r.replica.hasReady()) return false;
      digests.add(Buffer.from(r.replica.status().digest).toString('hex'));
    }
    return digests.size === 1;
  }

  #describeDigests(): string {
    return this.#regions
      .map((r) => (r.replica === null ? `${r.id}: down` : `${r.id}: ${Buffer.from(r.replica.status().digest).toString('hex').slice(0, 12)} (${r.replica.status().entries} entries)`))
      .join(', ');
  }

  #finalChecks(): void {
    const regions = this.#regions.map((r) => r.replica as StateReplica);
    const first = regions[0] as StateReplica;
    for (const r of this.#regions) {
      const replica = r.replica as StateReplica;
      // Memory equals disk once everything is persisted.
      const onDisk = r.disk.entries;
      const inMemory = new Map(replica.entries());
      if (onDisk.size !== inMemory.size) this.#fail(`${r.id} holds ${inMemory.size} entries in memory but ${onDisk.size} on disk`);
      for (const [key, entry] of inMemory) {
        const stored = onDisk.get(key);
        if (stored === undefined || Buffer.compare(entryHash(key, stored), entryHash(key, entry)) !== 0) this.#fail(`${r.id}: ${key} on disk differs from memory`);
      }
    }
    for (const replica of regions) {
      for (const [key, entry] of first.entries()) {
        const other = replica.entry(key);
        if (other === undefined || Buffer.compare(entryHash(key, other), entryHash(key, entry)) !== 0) this.#fail(`${key} differs between ${first.self} and ${replica.self} despite equal digests`);
      }
    }
    for (const w of this.#acked) {
      const final = first.entry(w.key);
      if (final === undefined || !dominates(final.clock, w.clock)) {
        this.#fail(`acknowledged ${w.level} write of ${w.key} (${clockText(w.clock)}, acked at ${w.at} ms) is lost: final copy ${final === undefined ? 'absent' : clockText(final.clock)}`);
      }
    }
  }

  // ---------------------------------------------------------------- plumbing

  #handle(event: SimEvent): void {
    switch (event.kind) {
      case 'tick':
        return this.#onTick();
      case 'op':
        this.#onOp();
        if (this.#rng.chance(0.1)) this.#queue.push(this.#now + 1, { kind: 'check' });
        return;
      case 'deliver':
        return this.#onDeliver(event);
      case 'persisted': {
        const r = this.#region(event.region);
        if (r.incarnation === event.incarnation && r.replica !== null) this.#onPersisted(r, event.ready);
        return;
      }
      case 'fault':
        return this.#onFault();
      case 'restart':
        return this.#restart(this.#region(event.region));
      case 'calm':
        return this.#onCalm();
      case 'check':
        return this.#onCheck();
    }
  }

  #region(id: string): Region {
    const r = this.#regions.find((x) => x.id === id);
    if (r === undefined) throw new Error(`no region ${id}`);
    return r;
  }

  #trace(line: string): void {
    this.#s.trace?.(`${String(this.#now).padStart(6)} ms  ${line}`);
  }

  #fail(problem: string): never {
    throw new StateSimFailure(this.#s.seed, this.#now, problem);
  }
}

function clockText(clock: VectorClock): string {
  return `{${[...clock].sort(([a], [b]) => (a < b ? -1 : 1)).map(([r, n]) => `${r}:${n}`).join(' ')}}`;
}
