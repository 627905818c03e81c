/**
 * Deterministic simulation of a Raft cluster (TigerBeetle's VOPR style).
 *
 * N RaftCores run in virtual time, driven by one seeded PRNG: the network
 * drops, duplicates, delays and reorders; partitions and one-way cuts come
 * and go; nodes crash and restart with only what they persisted; clients
 * put and get on a few registers through whichever node they think leads;
 * an operator transfers leadership and (in churn runs) walks the membership
 * through random single-server changes: add a spare as learner, promote a
 * learner, remove a learner or a voter (sometimes the leader), shutting
 * removed nodes down for good.
 * Each node's driver obeys the Ready contract with asynchronous storage
 * writes: it acts on a Ready at once (sends what may leave, applies what
 * committed, advances) and queues its write, which lands after a random fsync
 * latency, in queue order, while later Readys, messages and ticks go on; the
 * messages that wait for durability (acks, votes) leave when the writes
 * queued up to their Ready have landed. A crash loses every write still
 * queued, and the messages waiting behind them; crash points around a write
 * landing leave it on a minority of disks.
 *
 * Checked as it runs: the safety invariants (invariants.ts); that every sent
 * message is backed by the sender's disk (its term, a granted vote, an acked
 * index; a ReadIndex request promises nothing and is exempt). Checked at the
 * end: the client history is linearizable; after the chaos phase, once the
 * network is healed and stays calm, a leader emerges and a proposal commits
 * within a bound; all nodes converge.
 *
 * Everything is a pure function of the seed: no wall clock, no Math.random.
 */
import { bootstrapState, joiningState } from '../../src/consensus/raft/bootstrap.ts';
import { members } from '../../src/consensus/raft/membership.ts';
import { RaftCore } from '../../src/consensus/raft/core.ts';
import type {
  ConfigChange,
  Entry,
  HardState,
  Message,
  NodeId,
  PersistedState,
  RaftConfig,
  Ready,
  Snapshot,
} from '../../src/consensus/raft/types.ts';
import { snapshotBytes } from '../../src/consensus/raft/types.ts';
import { EventQueue } from './events.ts';
import { InvariantChecker, InvariantViolation } from './invariants.ts';
import { KvStore, encodeCommand } from './kv.ts';
import { checkHistory } from './linearizability.ts';
import type { LinkFaults } from './network.ts';
import { CALM, SimNetwork, randomLinkFaults } from './network.ts';
import { Prng } from './prng.ts';
import type { ClientTarget } from './workload.ts';
import { ClientWorkload } from './workload.ts';

export interface SimOptions {
  readonly seed: number;
  readonly nodes: number;
  /** Virtual time with faults on. */
  readonly chaosMs: number;
  /** Calm tail after the chaos: liveness, then convergence. */
  readonly calmMs: number;
  readonly clients: number;
  readonly keys: number;
  /** Print every event (for replaying one seed). */
  readonly trace?: (line: string) => void;
}

export interface SimReport {
  readonly seed: number;
  readonly nodes: number;
  readonly events: number;
  readonly messages: number;
  readonly puts: number;
  readonly gets: number;
  readonly unknown: number;
  readonly leaderTerms: number;
  readonly crashes: number;
  /** Config entries applied (membership changes that committed). */
  readonly configChanges: number;
  readonly transfers: number;
  readonly snapshotsInstalled: number;
  /** Readys acted on while an earlier write of the same node was still under way (the pipeline). */
  readonly pipelinedReadys: number;
  /** Messages that waited for a write to land before they could leave. */
  readonly heldMessages: number;
  /** Times a batching follower held a non-urgent Ready until its write landed. */
  readonly heldReadys: number;
  /** Deepest queue of writes one node had. */
  readonly maxQueuedWrites: number;
  /** Virtual ms from the end of the chaos to the first commit. */
  readonly livenessMs: number;
  readonly config: string;
}

export class SimFailure extends Error {
  readonly seed: number;
  constructor(seed: number, at: number, problem: string) {
    super(
      `raft simulation seed ${seed} failed at ${at} ms: ${problem}\n` +
        `  replay: npm run soak -- raft --from ${seed} --seeds 1 --trace`,
    );
    this.name = 'SimFailure';
    this.seed = seed;
  }
}

interface Disk {
  hardState: HardState;
  /** The hard state as of the last fsync: a commit-only change is written without one and lost on crash. */
  syncedHardState: HardState;
  snapshot: Snapshot;
  /** Entries after snapshot.meta.index, contiguous. */
  entries: Entry[];
}

/** A storage write under way (a Ready's, or a compaction's snapshot), and the messages that leave once it (and every earlier one) landed. */
interface PendingWrite {
  readonly ready: Ready | { readonly compacted: Snapshot };
  /** Virtual time it lands; never before the previous write's. */
  readonly at: number;
  readonly release: Message[];
}

interface SimNode {
  readonly id: NodeId;
  readonly random: Prng;
  up: boolean;
  /** Bumped on crash so persistence completions of a dead incarnation are ignored. */
  epoch: number;
  core: RaftCore;
  disk: Disk;
  kv: KvStore;
  /** Storage writes queued and not yet landed, oldest first. */
  writes: PendingWrite[];
  /** Drives like RaftNode: as a follower, holds a non-urgent Ready while a write is under way. */
  readonly batches: boolean;
}

type SimEvent =
  | { kind: 'tick'; node: NodeId }
  | { kind: 'deliver'; message: Message }
  | { kind: 'persisted'; node: NodeId; epoch: number }
  | { kind: 'client'; client: number }
  | { kind: 'fault' }
  | { kind: 'operator' }
  | { kind: 'restart'; node: NodeId }
  | { kind: 'calm' }
  | { kind: 'probe' }
  | { kind: 'finish' };

const TICK_MS = 10;
/** After the chaos ends, a leader must commit a proposal within this. */
const LIVENESS_BOUND_MS = 3000;
/** Clients stop this long before the end so every node can catch up. */
const QUIET_TAIL_MS = 1000;

export class RaftSimulation {
  readonly #options: SimOptions;
  readonly #rng: Prng;
  readonly #net: SimNetwork;
  readonly #queue = new EventQueue<SimEvent>();
  readonly #checker = new InvariantChecker();
  readonly #nodes = new Map<NodeId, SimNode>();
  readonly #workload: ClientWorkload;
  readonly #raftConfig: Partial<RaftConfig>;
  readonly #snapshotEvery: number;
  readonly #fsyncMaxMs: number;
  /** Per persisted Ready, the chance of a crash just before the write (and again just after). */
  readonly #crashPointRate: number;
  #now = 0;
  #events = 0;
  #messages = 0;
  #crashes = 0;
  #snapshotsInstalled = 0;
  #pipelinedReadys = 0;
  #heldReadys = 0;
  #heldMessages = 0;
  #maxQueuedWrites = 0;
  #calm = false;
  #calmAt = 0;
  #livenessAt: number | null = null;
  #probe: { node: NodeId; index: number; term: number } | null = null;
  #probes = 0;
  #finished = false;
  /** Whether the operator changes membership in this run. */
  readonly #churn: boolean;
  /** Nodes that start outside the cluster, to be added by the operator. */
  readonly #spares: NodeId[] = [];
  /** Members per the latest committed config entry any node applied. */
  #members: Set<NodeId>;
  #membershipIndex = 0;
  readonly #decommissioned = new Set<NodeId>();
  #configChanges = 0;
  #transfers = 0;

  constructor(options: SimOptions) {
    this.#options = options;
    this.#rng = new Prng(options.seed);
    const rng = this.#rng;
    this.#raftConfig = {
      electionTicks: 10,
      heartbeatTicks: rng.between(1, 3),
      preVote: rng.chance(0.85),
      checkQuorum: rng.chance(0.85),
      maxInflightAppends: rng.between(1, 8),
      maxEntriesPerAppend: rng.between(1, 6),
      maxBytesPerAppend: rng.between(100, 2000),
      snapshotChunkBytes: rng.between(16, 256),
      maxUncommittedEntries: rng.between(20, 200),
      maxLearnerLag: 8,
    };
    this.#snapshotEvery = rng.between(8, 60);
    // Sometimes a slow disk, so that many writes queue up behind one another.
    this.#fsyncMaxMs = rng.chance(0.3) ? rng.between(10, 40) : rng.between(0, 5);
    this.#crashPointRate = rng.pick([0, 0.001, 0.003, 0.01]);
    this.#net = new SimNetwork(rng.fork(), randomLinkFaults(this.#rng));
    this.#churn = rng.chance(0.5);
    const ids = Array.from({ length: options.nodes }, (_, i) => `n${i + 1}`);
    this.#members = new Set(ids);
    if (this.#churn) this.#spares.push(`n${options.nodes + 1}`, `n${options.nodes + 2}`, `n${options.nodes + 3}`);
    for (const id of [...ids, ...this.#spares]) {
      const storage: PersistedState = ids.includes(id) ? bootstrapState(ids) : joiningState();
      const random = rng.fork();
      const disk: Disk = {
        hardState: storage.hardState,
        syncedHardState: storage.hardState,
        snapshot: storage.snapshot,
        entries: [...storage.entries],
      };
      const node: SimNode = {
        id,
        random,
        up: true,
        epoch: 0,
        core: this.#startCore(id, disk, random),
        disk,
        kv: new KvStore(),
        writes: [],
        batches: rng.chance(0.5),
      };
      this.#nodes.set(id, node);
      this.#queue.push(rng.int(TICK_MS), { kind: 'tick', node: id });
    }
    this.#workload = new ClientWorkload(
      {
        rng,
        now: () => this.#now,
        wake: (client, at) => this.#queue.push(at, { kind: 'client', client }),
        pickNode: (hint) => this.#pickNode(hint),
        touched: (id) => this.#after(this.#node(id)),
      },
      options.clients,
      options.keys,
      options.chaosMs + options.calmMs - QUIET_TAIL_MS,
    );
    this.#queue.push(rng.between(50, 400), { kind: 'fault' });
    this.#queue.push(rng.between(200, 600), { kind: 'operator' });
    this.#queue.push(options.chaosMs, { kind: 'calm' });
    this.#queue.push(options.chaosMs + options.calmMs, { kind: 'finish' });
  }

  #startCore(id: NodeId, disk: Disk, random: Prng): RaftCore {
    return new RaftCore({
      id,
      storage: { hardState: disk.hardState, snapshot: disk.snapshot, entries: disk.entries },
      random: () => random.next(),
      config: this.#raftConfig,
    });
  }

  #trace(line: () => string): void {
    this.#options.trace?.(`${String(this.#now).padStart(7)} ${line()}`);
  }

  #fail(problem: string): never {
    throw new SimFailure(this.#options.seed, this.#now, problem);
  }

  run(): SimReport {
    try {
      while (!this.#finished) {
        const next = this.#queue.pop();
        if (next === undefined) this.#fail('event queue ran dry');
        this.#now = next.time;
        this.#events++;
        this.#handle(next.event);
      }
    } catch (error) {
      if (error instanceof SimFailure) throw error;
      const problem = error instanceof InvariantViolation ? error.message : `${String(error)}\n${(error as Error).stack ?? ''}`;
      this.#fail(problem);
    }
    this.#checkHistory();
    return {
      seed: this.#options.seed,
      nodes: this.#options.nodes,
      events: this.#events,
      messages: this.#messages,
      puts: this.#workload.history.filter((op) => op.kind === 'put' && op.response !== null).length,
      gets: this.#workload.history.filter((op) => op.kind === 'get').length,
      unknown: this.#workload.history.filter((op) => op.response === null).length,
      leaderTerms: this.#checker.leaderTerms,
      crashes: this.#crashes,
      configChanges: this.#configChanges,
      transfers: this.#transfers,
      snapshotsInstalled: this.#snapshotsInstalled,
      pipelinedReadys: this.#pipelinedReadys,
      heldMessages: this.#heldMessages,
      heldReadys: this.#heldReadys,
      maxQueuedWrites: this.#maxQueuedWrites,
      livenessMs: (this.#livenessAt ?? Infinity) - this.#calmAt,
      config: JSON.stringify({
        ...this.#raftConfig,
        snapshotEvery: this.#snapshotEvery,
        fsyncMaxMs: this.#fsyncMaxMs,
        churn: this.#churn,
        crashPointRate: this.#crashPointRate,
      }),
    };
  }

  #handle(event: SimEvent): void {
    switch (event.kind) {
      case 'tick': {
        this.#queue.push(this.#now + TICK_MS, event);
        const node = this.#node(event.node);
        if (!node.up) return;
        node.core.tick();
        return this.#after(node);
      }
      case 'deliver': {
        const { message } = event;
        const node = this.#node(message.to);
        if (!node.up || !this.#net.reachable(message.from, message.to)) return;
        this.#trace(() => `${message.from}->${message.to} ${describe(message)}`);
        node.core.step(message);
        return this.#after(node);
      }
      case 'persisted':
        return this.#persisted(event.node, event.epoch);
      case 'client':
        return this.#workload.step(event.client);
      case 'fault':
        if (this.#calm) return;
        this.#injectFault();
        this.#queue.push(this.#now + this.#rng.between(30, 300), event);
        return;
      case 'operator':
        if (this.#calm) return;
        this.#operatorStep();
        this.#queue.push(this.#now + this.#rng.between(100, 600), event);
        return;
      case 'restart':
        return this.#restart(this.#node(event.node));
      case 'calm':
        return this.#startCalm();
      case 'probe':
        return this.#probeStep();
      case 'finish':
        return this.#finish();
    }
  }

  #node(id: NodeId): SimNode {
    const node = this.#nodes.get(id);
    if (node === undefined) this.#fail(`message for unknown node ${id}`);
    return node;
  }

  /** After any input to a node: check it, and act on its Readys (queueing their writes). */
  #after(node: SimNode): void {
    this.#checker.observe(node.core);
    for (let ready = this.#nextReady(node); ready !== null; ready = this.#nextReady(node)) {
      this.#act(node, ready);
      this.#checker.observe(node.core);
    }
  }

  #nextReady(node: SimNode): Ready | null {
    if (!node.up) return null;
    const holding = node.batches && node.writes.length > 0 && node.core.role !== 'leader' && !node.core.hasUrgentReady();
    if (holding) this.#heldReadys++;
    return holding ? null : node.core.ready();
  }

  #act(node: SimNode, ready: Ready): void {
    const first = ready.entries[0];
    if (first !== undefined) {
      const prevTerm = ready.snapshot !== null && first.index === ready.snapshot.meta.index + 1
        ? ready.snapshot.meta.term
        : node.core.termAt(first.index - 1);
      this.#checker.observeEntries(node.id, ready.entries, prevTerm);
    }
    if (node.writes.length > 0) this.#pipelinedReadys++;
    if (ready.mustSync) this.#queueWrite(node, ready);
    // What may leave while the write runs (a leader's appends and heartbeats) goes now.
    for (const message of ready.messages) this.#send(node, message);
    const waiting = node.writes.at(-1);
    if (waiting === undefined) for (const message of ready.persistMessages) this.#send(node, message);
    else {
      waiting.release.push(...ready.persistMessages);
      this.#heldMessages += ready.persistMessages.length;
    }
    if (ready.snapshot !== null) {
      node.kv = KvStore.restore(ready.snapshot.meta.index, snapshotBytes(ready.snapshot.data));
      this.#snapshotsInstalled++;
      this.#trace(() => `${node.id} installs snapshot at ${ready.snapshot?.meta.index}`);
    }
    for (const entry of ready.committed) this.#apply(node, entry);
    for (const read of ready.readStates) this.#workload.readConfirmed(node.id, read.ctx, read.index);
    node.core.advance(ready);
    this.#maybeCompact(node);
    this.#workload.serveReads(node);
  }

  /** Writes land in queue order: a later one never before an earlier one. */
  #queueWrite(node: SimNode, ready: PendingWrite['ready']): void {
    const after = node.writes.at(-1)?.at ?? this.#now;
    const at = Math.max(after, this.#now + this.#rng.between(0, this.#fsyncMaxMs));
    node.writes.push({ ready, at, release: [] });
    this.#maxQueuedWrites = Math.max(this.#maxQueuedWrites, node.writes.length);
    this.#queue.push(at, { kind: 'persisted', node: node.id, epoch: node.epoch });
  }

  #persisted(id: NodeId, epoch: number): void {
    const node = this.#node(id);
    const write = node.writes[0];
    if (!node.up || node.epoch !== epoch || write === undefined) return;
    node.writes.shift();
    // Crash points: die just before the write or between the write and the sends,
    // which leaves entries on a minority of disks (the figure-8 set-ups).
    const crashPoint = this.#calm ? 1 : this.#rng.next();
    if (crashPoint < this.#crashPointRate) return this.#crashAndRestart(node);
    const { ready } = write;
    if ('compacted' in ready) this.#writeCompaction(node.disk, ready.compacted);
    else this.#writeDisk(node.disk, ready);
    if (crashPoint < 2 * this.#crashPointRate) return this.#crashAndRestart(node);
    for (const message of write.release) this.#send(node, message);
    if (!('compacted' in ready)) node.core.persisted(ready);
    this.#maybeCompact(node);
    this.#after(node);
  }

  #writeDisk(disk: Disk, ready: Ready): void {
    if (ready.snapshot !== null) {
      disk.snapshot = ready.snapshot;
      disk.entries = [];
    }
    const first = ready.entries[0];
    if (first !== undefined) {
      const keep = first.index - disk.snapshot.meta.index - 1;
      if (keep < 0 || keep > disk.entries.length) {
        this.#fail(`disk write at ${first.index} does not fit a disk log after ${disk.snapshot.meta.index} with ${disk.entries.length} entries`);
      }
      disk.entries.length = keep;
      disk.entries.push(...ready.entries);
    }
    if (ready.hardState !== null) disk.hardState = ready.hardState;
    if (ready.mustSync) disk.syncedHardState = disk.hardState;
  }

  /** Every message must be backed by what its sender has durably stored. */
  #checkDurable(node: SimNode, m: Message): void {
    const disk = node.disk;
    const isPreVote = (m.type === 'vote_request' || m.type === 'vote_response') && m.preVote;
    // A ReadIndex request promises nothing about its sender (core.ts sendsBeforePersist): it may leave at a term still being written.
    if (!isPreVote && m.type !== 'read_index' && m.term > disk.hardState.term) {
      this.#fail(`${node.id} sends ${m.type} at term ${m.term} with term ${disk.hardState.term} on disk`);
    }
    if (m.type === 'vote_response' && m.granted && !m.preVote) {
      if (disk.hardState.vote !== m.to || disk.hardState.term !== m.term) {
        this.#fail(`${node.id} grants its vote to ${m.to} in term ${m.term} before persisting it`);
      }
    }
    if (m.type === 'append_response' && m.success) {
      const diskLast = disk.snapshot.meta.index + disk.entries.length;
      if (m.index > diskLast) this.#fail(`${node.id} acks index ${m.index} with only ${diskLast} on disk`);
    }
  }

  #send(node: SimNode, message: Message): void {
    this.#checkDurable(node, message);
    this.#messages++;
    for (const delay of this.#net.deliveries(message.from, message.to)) {
      this.#queue.push(this.#now + delay, { kind: 'deliver', message });
    }
  }

  #apply(node: SimNode, entry: Entry): void {
    this.#checker.observeApplied(node.id, entry);
    if (entry.kind === 'config' && entry.index > this.#membershipIndex) this.#membershipCommitted(entry.index, members(entry.membership));
    const command = node.kv.apply(entry);
    if (command?.op === 'probe' && this.#probe?.node === node.id && this.#probe.index === entry.index) {
      if (this.#probe.term === entry.term && this.#livenessAt === null) {
        this.#livenessAt = this.#now;
        this.#trace(() => `liveness: probe committed at ${entry.index}`);
      }
      this.#probe = null;
    }
    this.#workload.applied(node.id, entry);
  }

  /** A config entry committed: nodes it removed are shut down for good (the operator's job). */
  #membershipCommitted(index: number, current: readonly NodeId[]): void {
    this.#membershipIndex = index;
    if (index > 1) this.#configChanges++;
    for (const id of this.#members) {
      if (current.includes(id) || this.#decommissioned.has(id)) continue;
      this.#trace(() => `decommission ${id}`);
      this.#decommissioned.add(id);
      this.#crash(this.#node(id));
    }
    this.#members = new Set(current);
  }

  /** As the driver does: compact the core at once, queue the snapshot's write behind the log's. */
  #maybeCompact(node: SimNode): void {
    const applied = node.kv.applied;
    if (applied - node.core.snapshotIndex < this.#snapshotEvery) return;
    if (node.writes.some((w) => 'compacted' in w.ready)) return;
    // Entries applied but not yet on this node's disk (committed on others') wait for their write.
    if (applied > node.core.stableIndex) return;
    const data = node.kv.snapshot();
    const meta = node.core.compact(applied, data);
    this.#queueWrite(node, { compacted: { meta, data } });
  }

  #writeCompaction(disk: Disk, snapshot: Snapshot): void {
    const drop = snapshot.meta.index - disk.snapshot.meta.index;
    if (drop < 0 || drop > disk.entries.length) {
      this.#fail(`compaction at ${snapshot.meta.index} does not fit a disk log after ${disk.snapshot.meta.index} with ${disk.entries.length} entries`);
    }
    disk.entries = disk.entries.slice(drop);
    disk.snapshot = snapshot;
    disk.syncedHardState = disk.hardState; // the snapshot's fsync covers what was written before it
  }

  // ------------------------------------------------------------- faults

  #upNodes(): SimNode[] {
    return [...this.#nodes.values()].filter((n) => n.up);
  }

  #injectFault(): void {
    const rng = this.#rng;
    const ids = [...this.#nodes.keys()];
    const roll = rng.int(100);
    if (roll < 22) {
      const up = this.#upNodes();
      if (up.length === 0) return;
      const victim = rng.chance(0.5) ? (up.find((n) => n.core.role === 'leader') ?? rng.pick(up)) : rng.pick(up);
      this.#crashAndRestart(victim);
    } else if (roll < 42) {
      const shuffled = [...ids];
      for (let i = shuffled.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [shuffled[i], shuffled[j]] = [shuffled[j] as NodeId, shuffled[i] as NodeId];
      }
      const cut = rng.between(1, ids.length - 1);
      this.#net.partition([shuffled.slice(0, cut), shuffled.slice(cut)]);
      this.#trace(() => `partition ${shuffled.slice(0, cut).join(',')} | ${shuffled.slice(cut).join(',')}`);
    } else if (roll < 52) {
      const leader = this.#upNodes().find((n) => n.core.role === 'leader');
      if (leader === undefined) return;
      this.#net.partition([[leader.id], ids.filter((id) => id !== leader.id)]);
      this.#trace(() => `isolate leader ${leader.id}`);
    } else if (roll < 60) {
      const from = rng.pick(ids);
      const to = rng.pick(ids.filter((id) => id !== from));
      this.#net.cut(from, to);
      this.#trace(() => `cut ${from}>${to}`);
    } else if (roll < 85) {
      this.#net.heal();
      this.#trace(() => 'heal');
    } else {
      this.#net.faults = randomLinkFaults(this.#rng);
    }
  }

  #crashAndRestart(node: SimNode): void {
    this.#crash(node);
    this.#queue.push(this.#now + this.#rng.between(20, 1000), { kind: 'restart', node: node.id });
  }

  #crash(node: SimNode): void {
    if (!node.up) return;
    this.#trace(() => `crash ${node.id} (${node.core.role}, term ${node.core.term})`);
    this.#crashes++;
    node.up = false;
    node.epoch++;
    node.writes = [];
    node.disk.hardState = node.disk.syncedHardState;
    this.#workload.nodeCrashed(node.id);
  }

  #restart(node: SimNode): void {
    if (node.up || this.#decommissioned.has(node.id)) return;
    this.#trace(() => `restart ${node.id}`);
    node.up = true;
    node.core = this.#startCore(node.id, node.disk, node.random);
    node.kv = KvStore.restore(node.disk.snapshot.meta.index, snapshotBytes(node.disk.snapshot.data));
    this.#after(node);
  }

  #leaderNode(): SimNode | undefined {
    return this.#upNodes()
      .filter((n) => n.core.role === 'leader')
      .sort((a, b) => b.core.term - a.core.term)[0];
  }

  /**
   * The operator: sometimes hands leadership to another voter; in churn runs
   * proposes a random single-server step from the leader's view of
   * membership. Refusals are fine: it looks again next time.
   */
  #operatorStep(): void {
    const leader = this.#leaderNode();
    if (leader === undefined) return;
    const rng = this.#rng;
    const { voters, learners } = leader.core.status().membership;
    const others = voters.filter((id) => id !== leader.id);
    if (others.length > 0 && rng.chance(0.25)) {
      const to = rng.pick(others);
      const result = leader.core.transferLeadership(to);
      this.#trace(() => `operator: transfer ${leader.id} -> ${to}: ${result.kind}`);
      if (result.kind === 'started') this.#transfers++;
      return this.#after(leader);
    }
    if (!this.#churn) return;
    const all = [...voters, ...learners];
    const spare = this.#spares.find((id) => !all.includes(id) && !this.#decommissioned.has(id));
    // Any valid step, at random, keeping 2..6 voters: even voter counts with a
    // learner around are where a learner wrongly counted toward quorum would show.
    const choices: ConfigChange[] = [];
    for (const node of learners) {
      if (voters.length < 6) choices.push({ type: 'promote', node });
      if (rng.chance(0.2)) choices.push({ type: 'remove', node });
    }
    if (voters.length > 2) choices.push({ type: 'remove', node: others.length === 0 || rng.chance(0.3) ? leader.id : rng.pick(others) });
    if (spare !== undefined) choices.push({ type: 'add_learner', node: spare });
    if (choices.length === 0) return;
    const change = rng.pick(choices);
    const result = leader.core.proposeConfigChange(change);
    this.#trace(() => `operator: ${change.type} ${change.node} at ${leader.id}: ${JSON.stringify(result)}`);
    this.#after(leader);
  }

  #startCalm(): void {
    this.#calm = true;
    this.#calmAt = this.#now;
    this.#net.heal();
    this.#net.faults = CALM;
    this.#trace(() => 'calm: network healed, every node restarted');
    for (const node of this.#nodes.values()) this.#restart(node);
    this.#queue.push(this.#now + TICK_MS, { kind: 'probe' });
  }

  /** Liveness: keep proposing a probe at the leader until one commits. */
  #probeStep(): void {
    if (this.#livenessAt !== null) return;
    if (this.#now - this.#calmAt > LIVENESS_BOUND_MS) {
      const roles = [...this.#nodes.values()].map((n) => `${n.id}:${n.core.role}@${n.core.term}`).join(' ');
      this.#fail(`liveness: no proposal committed within ${LIVENESS_BOUND_MS} ms of a calm, healed network (${roles})`);
    }
    this.#queue.push(this.#now + TICK_MS, { kind: 'probe' });
    const leader = this.#leaderNode();
    if (leader === undefined) return;
    if (this.#probe !== null && this.#probe.node === leader.id && this.#probe.term === leader.core.term) return;
    const result = leader.core.propose(encodeCommand({ op: 'probe', n: ++this.#probes }));
    if (result.kind === 'accepted') this.#probe = { node: leader.id, index: result.index, term: result.term };
    this.#after(leader);
  }

  #finish(): void {
    this.#finished = true;
    if (this.#livenessAt === null) this.#fail('liveness: the probe never committed');
    const up = this.#upNodes().filter((n) => this.#members.has(n.id));
    const reference = up[0];
    if (reference === undefined) this.#fail('no member is up at the end');
    for (const node of up) {
      if (node.kv.applied !== reference.kv.applied) {
        const applied = up.map((n) => `${n.id}:${n.kv.applied}(${n.core.role}@${n.core.term})`).join(' ');
        this.#fail(`convergence: nodes did not catch up after ${QUIET_TAIL_MS} quiet ms: ${applied}`);
      }
      const a = JSON.stringify([...node.kv.values].sort());
      const b = JSON.stringify([...reference.kv.values].sort());
      if (a !== b) this.#fail(`convergence: ${node.id} and ${reference.id} differ at index ${node.kv.applied}`);
    }
  }

  // ------------------------------------------------------------- clients

  #pickNode(hint: NodeId | null): ClientTarget | undefined {
    const hinted = hint === null ? undefined : this.#nodes.get(hint);
    if (hinted?.up === true) return hinted;
    const up = this.#upNodes();
    return up.length > 0 ? this.#rng.pick(up) : undefined;
  }

  #checkHistory(): void {
    const result = checkHistory(this.#workload.history);
    if (result.kind === 'ok') return;
    if (result.kind === 'inconclusive') {
      this.#fail(`linearizability check inconclusive on ${result.key} after ${result.steps} steps`);
    }
    const lines = [...result.ops]
      .sort((a, b) => a.invoke - b.invoke)
      .map((op) => `    c${op.client} ${op.kind} ${op.value ?? 'null'} [${op.invoke}, ${op.response ?? '?'}]`);
    this.#fail(`history of ${result.key} is not linearizable:\n${lines.join('\n')}`);
  }
}

function describe(m: Message): string {
  switch (m.type) {
    case 'append':
      return `append t${m.term} prev=${m.prevIndex}/${m.prevTerm} n=${m.entries.length} commit=${m.commit}`;
    case 'append_response':
      return `append_response t${m.term} ${m.success ? 'ok' : 'reject'} index=${m.index} hint=${m.hintIndex}/${m.hintTerm}`;
    case 'vote_request':
      return `${m.preVote ? 'pre' : ''}vote_request t${m.term} last=${m.lastIndex}/${m.lastTerm}${m.transfer ? ' transfer' : ''}`;
    case 'vote_response':
      return `${m.preVote ? 'pre' : ''}vote_response t${m.term} ${m.granted ? 'granted' : 'rejected'}`;
    case 'snapshot_chunk':
      return `snapshot_chunk t${m.term} at=${m.meta.index} offset=${m.offset}/${m.totalBytes}`;
    case 'snapshot_response':
      return `snapshot_response t${m.term} at=${m.index} next=${m.nextOffset}`;
    default:
      return `${m.type} t${m.term}`;
  }
}

/** The scenario a seed stands for; shared by the test suite and the soak so a seed means one thing. */
export function scenarioForSeed(seed: number, trace?: (line: string) => void): SimOptions {
  return {
    seed,
    nodes: seed % 2 === 0 ? 5 : 3,
    chaosMs: 6000,
    calmMs: 4000,
    clients: 3,
    keys: 3,
    ...(trace === undefined ? {} : { trace }),
  };
}
