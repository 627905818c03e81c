/**
 * Deterministic simulation of a PBFT cluster with Byzantine members
 * (TigerBeetle's VOPR style, like cluster.ts for Raft).
 *
 * n PbftCores (n = 4 or 7) run in virtual time, driven by one seeded PRNG.
 * Up to f of them are Byzantine (pbft-byzantine.ts: silent, equivocating,
 * wrong digests, forged or corrupted signatures, replays, floods, or a mix),
 * and stay so to the end. During the chaos phase the network drops,
 * duplicates, delays and reorders, partitions come and go, and honest
 * replicas crash and restart from what they persisted. Writes land later
 * than their Readys, in order, while later Readys are taken (the pipelined
 * contract of types.ts PbftReady); a crash loses the writes not landed.
 * Clients submit puts, gets and adds at random replicas, retry elsewhere on
 * silence, and accept a result on f + 1 matching replies (ReplyCollector),
 * each checked against the channel it came on.
 *
 * Checked at every execution (pbft-checker.ts): honest replicas agree on
 * every sequence number, execute gap-free and exactly once, install only
 * states honest replicas produced, and clients are never fooled. Checked
 * after the chaos: once the network is calm (Byzantine members still
 * misbehaving), a probe request through an honest replica completes within
 * a bound derived from the view-change timeout and back-off, and a series
 * of probes keep completing; at the end every honest replica has executed
 * the same sequence. Each replica's bounded buffers are sampled throughout,
 * and every vote, pre-prepare, view-change and new-view an honest replica
 * sends must be backed by its disk at that moment (unbacked()).
 *
 * Everything is a pure function of the seed: no wall clock, no Math.random.
 */
import { PbftCore } from '../../src/consensus/pbft/core.ts';
import { ReplyCollector } from '../../src/consensus/pbft/reply-collector.ts';
import type { ClientRequest, DropKind, PbftConfig, PbftMessage, PbftPersistedState, ReplicaId, Reply } from '../../src/consensus/pbft/types.ts';
import { BYZANTINE_DROPS, DROP_KINDS, maxFaulty } from '../../src/consensus/pbft/types.ts';
import { BEHAVIOURS, ByzantineBehaviour } from './pbft-byzantine.ts';
import type { Attempts, BehaviourKind } from './pbft-byzantine.ts';
import { SafetyChecker, SafetyViolation } from './pbft-checker.ts';
import type { Disk, Envelope, KvOp, Released } from './pbft-harness.ts';
import { FakeKeys, ReplicaDriver, makeRequest, replicaIds } from './pbft-harness.ts';
import { EventQueue } from './events.ts';
import type { LinkFaults } from './network.ts';
import { CALM, SimNetwork, randomLinkFaults } from './network.ts';
import { Prng } from './prng.ts';

export interface PbftSimOptions {
  readonly seed: number;
  readonly nodes: number;
  /** Byzantine members (at most f). */
  readonly byzantine: number;
  readonly chaosMs: number;
  readonly clients: number;
  readonly trace?: (line: string) => void;
}

export interface PbftSimReport {
  readonly seed: number;
  readonly nodes: number;
  readonly f: number;
  /** id:behaviour of each Byzantine member. */
  readonly byzantine: readonly string[];
  readonly events: number;
  readonly messages: number;
  readonly executed: number;
  readonly accepted: number;
  readonly finalView: number;
  readonly viewChanges: number;
  readonly installs: number;
  readonly restarts: number;
  /** Virtual ms from the calm to the first probe's f + 1 matching replies. */
  readonly livenessMs: number;
  readonly livenessBoundMs: number;
  /** Drops at honest replicas, summed, by kind. */
  readonly drops: Readonly<Record<DropKind, number>>;
  readonly byzantineDetected: number;
  readonly attempts: Attempts;
  /** Most future-view messages any honest replica held for one peer, and the bound. */
  readonly maxFutureHeld: number;
  readonly maxCheckpointVotesHeld: number;
  /** Replies in another member's name, dropped by the client's channel check. */
  readonly forgedReplies: number;
  /** Readys taken while earlier writes were still queued, at honest replicas. */
  readonly pipelinedReadys: number;
  /** Queued writes honest replicas lost in crashes. */
  readonly lostWrites: number;
  readonly config: string;
}

/**
 * Why `message`, leaving replica `id`, is not backed by its disk, or null: a
 * vote, pre-prepare, view-change or new-view of its own must be on its disk
 * before it leaves (a replica that forgets one after a crash may contradict
 * it, or leave a prepared request out of a view change).
 */
function unbacked(id: ReplicaId, m: PbftMessage, disk: Disk): string | null {
  if (m.from !== id) return null;
  const h = disk.stableCheckpoint?.seq ?? 0;
  const what = () => `${id} sent ${m.type} ${'view' in m ? `v${m.view} ` : ''}${'seq' in m ? `s${m.seq}` : ''}`;
  switch (m.type) {
    case 'pre_prepare':
    case 'prepare':
    case 'commit': {
      if (m.seq <= h) return null;
      const slot = disk.slots.get(m.seq);
      const prepared = slot?.prepared ?? null;
      // The prepared certificate a commit stands for must survive, this view's or a newer one (a view change carries it).
      if (m.type === 'commit' && !(prepared !== null && (prepared.prePrepare.view > m.view || prepared.prePrepare.digest === m.digest) && prepared.prePrepare.view >= m.view)) {
        return `${what()} without its prepared certificate on disk`;
      }
      // Having durably left the view, the replica never acts in it again: its votes there need no record.
      if (disk.view.view > m.view) return null;
      if (slot === undefined || slot.view !== m.view) return `${what()} with no slot record of that view on disk`;
      if (m.type === 'pre_prepare' && slot.prePrepare?.digest !== m.digest) return `${what()} not on disk`;
      if (m.type === 'prepare' && !(slot.sentPrepare && slot.prePrepare?.digest === m.digest)) return `${what()} not on disk`;
      if (m.type === 'commit' && !slot.sentCommit) return `${what()} not on disk`;
      return null;
    }
    case 'view_change':
    case 'new_view':
      return disk.view.view >= m.view ? null : `${what()} while the disk holds view ${disk.view.view}`;
    default:
      return null;
  }
}

export class PbftSimFailure extends Error {
  readonly seed: number;
  constructor(seed: number, at: number, problem: string) {
    super(
      `pbft simulation seed ${seed} failed at ${at} ms: ${problem}\n` +
        `  replay: npm run soak -- pbft --from ${seed} --seeds 1 --trace`,
    );
    this.name = 'PbftSimFailure';
    this.seed = seed;
  }
}

interface SimReplica {
  readonly id: ReplicaId;
  readonly driver: ReplicaDriver;
  readonly byzantine: ByzantineBehaviour | null;
  up: boolean;
}

interface SimClient {
  readonly id: string;
  /** Probe clients start at the calm and only use honest replicas. */
  readonly probe: boolean;
  timestamp: number;
  request: ClientRequest | null;
  collector: ReplyCollector | null;
  /** Bumped per request, so stale retry wake-ups are ignored. */
  token: number;
  completed: number;
}

type SimEvent =
  | { kind: 'tick'; node: ReplicaId }
  | { kind: 'deliver'; envelope: Envelope }
  /** `sender`: the replica whose channel carried it (a reply naming another is dropped, as PbftNode.receive does). */
  | { kind: 'reply'; sender: ReplicaId; reply: Reply }
  | { kind: 'client'; client: number; token: number }
  | { kind: 'fault' }
  | { kind: 'restart'; node: ReplicaId }
  /** The node's disk lands its queued writes up to index `upTo` (ignored while it is down: a crash loses them). */
  | { kind: 'land'; node: ReplicaId; upTo: number }
  | { kind: 'calm' }
  | { kind: 'finish' };

const TICK_MS = 10;
const CLIENT_RETRY_MS = 600;
/** A client's pause between a result and its next request. */
const THINK_MS = [20, 200] as const;
/** Probes that must complete after the calm, one after the other. */
const PROBES = 5;
const MAX_BACKOFF_SHIFT = 2;
/** After the last probe, traffic stops and replicas get this long to converge. */
const QUIET_TAIL_MS = 1500;
/** Sampling the per-peer buffers every event is costly; every this many events is plenty. */
const SAMPLE_EVERY = 64;

export class PbftSimulation {
  readonly #options: PbftSimOptions;
  readonly #rng: Prng;
  readonly #net: SimNetwork;
  readonly #queue = new EventQueue<SimEvent>();
  readonly #checker = new SafetyChecker();
  readonly #keys: FakeKeys;
  readonly #ids: readonly ReplicaId[];
  readonly #f: number;
  readonly #nodes = new Map<ReplicaId, SimReplica>();
  readonly #clients: SimClient[] = [];
  readonly #clientIds = new Set<string>();
  readonly #config: Partial<PbftConfig>;
  readonly #livenessBoundMs: number;
  readonly #calmMs: number;
  #faults: LinkFaults;
  #now = 0;
  #events = 0;
  #messages = 0;
  #restarts = 0;
  #calm = false;
  #calmAt = 0;
  #livenessAt: number | null = null;
  #finished = false;
  /** Probes done: no new requests. */
  #quiet = false;
  #maxFutureHeld = 0;
  #forgedReplies = 0;
  #maxCheckpointVotesHeld = 0;

  constructor(options: PbftSimOptions) {
    this.#options = options;
    const rng = new Prng(options.seed);
    this.#rng = rng;
    this.#keys = new FakeKeys(`pbft-sim-${options.seed}`);
    this.#ids = replicaIds(options.nodes);
    this.#f = maxFaulty(options.nodes);
    if (options.byzantine > this.#f) throw new Error(`${options.byzantine} Byzantine members exceed f = ${this.#f}`);
    const k = rng.pick([4, 8, 16]);
    const windows = rng.between(2, 3);
    const viewChangeTicks = rng.between(15, 25);
    this.#config = {
      checkpointInterval: k,
      logWindow: k * windows,
      maxCheckpointVotesPerPeer: windows + 2,
      maxBatchRequests: rng.between(1, 8),
      maxInflightBatches: Math.min(k * windows, rng.between(2, 8)),
      maxPendingRequests: 64,
      viewChangeTicks,
      maxBackoffShift: MAX_BACKOFF_SHIFT,
      retransmitTicks: rng.between(3, 6),
      maxRetransmitSlots: rng.between(4, 8),
      maxBufferedPerPeer: 64,
      maxStateTransferEntries: rng.between(4, 32),
      maxExecutePerReady: rng.between(1, 16),
    };
    // Worst case after the calm: a timer already backed off to the cap, then
    // up to f Byzantine primaries in a row, each costing one capped timeout.
    const cappedTimeoutMs = viewChangeTicks * 2 ** MAX_BACKOFF_SHIFT * TICK_MS;
    this.#livenessBoundMs = (this.#f + 2) * cappedTimeoutMs + 1000;
    this.#calmMs = this.#livenessBoundMs + PROBES * CLIENT_RETRY_MS + QUIET_TAIL_MS;
    this.#faults = randomLinkFaults(this.#rng);
    this.#net = new SimNetwork(rng.fork(), this.#faults);

    const byzantine = new Set(shuffle(rng, this.#ids).slice(0, options.byzantine));
    const members = new Set(this.#ids);
    const verify = this.#keys.verifier((id) => members.has(id) || this.#clientIds.has(id));
    for (const id of this.#ids) {
      const make = (storage: PbftPersistedState | undefined): PbftCore =>
        new PbftCore({
          id,
          members: this.#ids,
          sign: this.#keys.signer(id),
          verify,
          config: this.#config,
          ...(storage === undefined ? {} : { storage }),
        });
      const honest = !byzantine.has(id);
      const driver = new ReplicaDriver(
        id,
        make,
        honest
          ? {
              onExecute: (replica, batch, results) => {
                this.#trace(() => `${replica} executes s${batch.seq} (${batch.requests.map((r) => `${r.client}@${r.timestamp}`).join(' ')})`);
                this.#checker.executed(replica, batch, results);
              },
              onInstall: (replica, seq, snapshot) => {
                this.#trace(() => `${replica} installs checkpoint s${seq}`);
                this.#checker.installed(replica, seq, snapshot);
              },
              onCheckpointSnapshot: (replica, seq, snapshot) => this.#checker.checkpoint(replica, seq, snapshot),
              onSend: (replica, message, disk) => {
                const problem = unbacked(replica, message, disk);
                if (problem !== null) this.#fail(`disk: ${problem}`);
              },
            }
          : {},
      );
      driver.landAtOnce = false;
      const kind: BehaviourKind = rng.pick(BEHAVIOURS);
      this.#nodes.set(id, {
        id,
        driver,
        byzantine: honest ? null : new ByzantineBehaviour(id, kind, rng.fork(), this.#keys, this.#ids),
        up: true,
      });
      this.#queue.push(rng.int(TICK_MS), { kind: 'tick', node: id });
    }
    for (let i = 0; i < options.clients; i++) this.#addClient(`c${i}`, false, rng.between(0, 200));
    this.#queue.push(rng.between(50, 300), { kind: 'fault' });
    this.#queue.push(options.chaosMs, { kind: 'calm' });
    // The deadline; a run whose probes all complete finishes earlier (see #onReply).
    this.#queue.push(options.chaosMs + this.#calmMs, { kind: 'finish' });
  }

  #addClient(id: string, probe: boolean, at: number): void {
    this.#clientIds.add(id);
    this.#clients.push({ id, probe, timestamp: 0, request: null, collector: null, token: 0, completed: 0 });
    this.#queue.push(at, { kind: 'client', client: this.#clients.length - 1, token: 0 });
  }

  #trace(line: () => string): void {
    this.#options.trace?.(`${String(this.#now).padStart(7)} ${line()}`);
  }

  #fail(problem: string): never {
    throw new PbftSimFailure(this.#options.seed, this.#now, problem);
  }

  run(): PbftSimReport {
    try {
      while (!this.#finished) {
        const next = this.#queue.pop();
        if (next === undefined) this.#fail('event queue ran dry');
        this.#now = next.time;
        this.#events++;
        this.#handle(next.event);
        if (this.#events % SAMPLE_EVERY === 0) this.#sampleBuffers();
      }
    } catch (error) {
      if (error instanceof PbftSimFailure) throw error;
      const problem = error instanceof SafetyViolation ? error.message : `${String(error)}\n${(error as Error).stack ?? ''}`;
      this.#fail(problem);
    }
    return this.#report();
  }

  #report(): PbftSimReport {
    const honest = [...this.#nodes.values()].filter((n) => n.byzantine === null);
    const drops = Object.fromEntries(DROP_KINDS.map((k) => [k, 0])) as Record<DropKind, number>;
    for (const node of honest) for (const [kind, count] of node.driver.core.drops()) drops[kind] += count;
    const attempts: Attempts = { silent: 0, equivocate: 0, wrong_digest: 0, forge: 0, replay: 0, flood: 0 };
    const byzantine: string[] = [];
    for (const node of this.#nodes.values()) {
      if (node.byzantine === null) continue;
      byzantine.push(`${node.id}:${node.byzantine.kind}`);
      for (const key of Object.keys(attempts) as (keyof Attempts)[]) attempts[key] += node.byzantine.attempts[key];
    }
    return {
      seed: this.#options.seed,
      nodes: this.#options.nodes,
      f: this.#f,
      byzantine,
      events: this.#events,
      messages: this.#messages,
      executed: this.#checker.maxExecuted,
      accepted: this.#checker.accepted,
      finalView: Math.max(...honest.map((n) => n.driver.core.view)),
      viewChanges: honest.reduce((sum, n) => sum + n.driver.core.status().viewChangesStarted, 0),
      installs: this.#checker.installs,
      restarts: this.#restarts,
      livenessMs: (this.#livenessAt ?? Infinity) - this.#calmAt,
      livenessBoundMs: this.#livenessBoundMs,
      drops,
      byzantineDetected: DROP_KINDS.filter((k) => BYZANTINE_DROPS.has(k)).reduce((sum, k) => sum + drops[k], 0),
      attempts,
      maxFutureHeld: this.#maxFutureHeld,
      forgedReplies: this.#forgedReplies,
      pipelinedReadys: honest.reduce((sum, n) => sum + n.driver.stats.pipelined, 0),
      lostWrites: honest.reduce((sum, n) => sum + n.driver.stats.lostWrites, 0),
      maxCheckpointVotesHeld: this.#maxCheckpointVotesHeld,
      config: JSON.stringify(this.#config),
    };
  }

  #handle(event: SimEvent): void {
    switch (event.kind) {
      case 'tick':
        return this.#tick(event.node);
      case 'deliver':
        return this.#deliver(event.envelope);
      case 'reply':
        return this.#onReply(event.sender, event.reply);
      case 'client':
        return this.#clientStep(event.client, event.token);
      case 'fault':
        if (this.#calm) return;
        this.#injectFault();
        this.#queue.push(this.#now + this.#rng.between(50, 400), event);
        return;
      case 'restart':
        return this.#restart(this.#node(event.node));
      case 'land': {
        const node = this.#node(event.node);
        if (node.up) this.#release(node, node.driver.land(event.upTo));
        return;
      }
      case 'calm':
        return this.#startCalm();
      case 'finish':
        if (!this.#finished) this.#finish();
        return;
    }
  }

  #node(id: ReplicaId): SimReplica {
    const node = this.#nodes.get(id);
    if (node === undefined) this.#fail(`message for unknown replica ${id}`);
    return node;
  }

  #tick(id: ReplicaId): void {
    this.#queue.push(this.#now + TICK_MS, { kind: 'tick', node: id });
    const node = this.#node(id);
    if (!node.up) return;
    node.driver.core.tick();
    if (node.byzantine !== null) for (const e of node.byzantine.tick()) this.#transmit(e);
    this.#flush(node);
  }

  #deliver(e: Envelope): void {
    const node = this.#node(e.to);
    if (!node.up || !this.#net.reachable(e.from, e.to)) return;
    this.#trace(() => `${e.from}->${e.to} ${describe(e)}`);
    node.byzantine?.observe(e.message);
    node.driver.core.step(e.message, e.from);
    this.#flush(node);
  }

  /**
   * Run the node's Readys and queue their writes: half the time the disk
   * lands them at once, else within 1-40 ms (writes queued meanwhile wait
   * behind them, and later Readys are taken in between, as PbftNode does).
   */
  #flush(node: SimReplica): void {
    const before = node.driver.written;
    this.#release(node, node.driver.pump());
    const written = node.driver.written;
    if (written === before) return;
    if (this.#rng.chance(0.5)) this.#release(node, node.driver.land(written));
    else this.#queue.push(this.#now + this.#rng.between(1, 40), { kind: 'land', node: node.id, upTo: written });
  }

  /** Put what landed writes let leave on the network (rewritten if the node is Byzantine). */
  #release(node: SimReplica, { messages, replies }: Released): void {
    for (const { to, message } of messages) {
      for (const target of to === null ? this.#ids.filter((x) => x !== node.id) : [to]) {
        const envelope: Envelope = { from: node.id, to: target, message };
        for (const e of node.byzantine === null ? [envelope] : node.byzantine.outgoing(envelope)) this.#transmit(e);
      }
    }
    for (const reply of replies) {
      const sent = node.byzantine === null ? reply : node.byzantine.reply(reply);
      if (sent === null) continue;
      if (!this.#calm && this.#rng.chance(this.#faults.dropRate)) continue;
      this.#queue.push(this.#now + this.#rng.between(1, 5), { kind: 'reply', sender: node.id, reply: sent });
    }
  }

  #transmit(e: Envelope): void {
    this.#messages++;
    for (const delay of this.#net.deliveries(e.from, e.to)) this.#queue.push(this.#now + delay, { kind: 'deliver', envelope: e });
  }

  #sampleBuffers(): void {
    for (const node of this.#nodes.values()) {
      if (node.byzantine !== null) continue;
      for (const peer of this.#ids) {
        const held = node.driver.core.heldFor(peer);
        this.#maxFutureHeld = Math.max(this.#maxFutureHeld, held.futureMessages);
        this.#maxCheckpointVotesHeld = Math.max(this.#maxCheckpointVotesHeld, held.checkpointVotes);
      }
    }
  }

  // ------------------------------------------------------------- faults

  #honestUp(): SimReplica[] {
    return [...this.#nodes.values()].filter((n) => n.byzantine === null && n.up);
  }

  #injectFault(): void {
    const rng = this.#rng;
    const roll = rng.int(100);
    if (roll < 10) {
      const up = this.#honestUp();
      if (up.length === 0) return;
      const victim = rng.pick(up);
      this.#trace(() => `crash ${victim.id}`);
      victim.up = false;
      this.#queue.push(this.#now + rng.between(50, 800), { kind: 'restart', node: victim.id });
    } else if (roll < 30) {
      const shuffled = shuffle(rng, this.#ids);
      const cut = rng.between(1, shuffled.length - 1);
      this.#net.partition([shuffled.slice(0, cut), shuffled.slice(cut)]);
      this.#trace(() => `partition ${shuffled.slice(0, cut).join(',')} | ${shuffled.slice(cut).join(',')}`);
    } else if (roll < 40) {
      const primary = this.#honestUp()[0]?.driver.core.primary;
      if (primary === undefined) return;
      this.#net.partition([[primary], this.#ids.filter((id) => id !== primary)]);
      this.#trace(() => `isolate primary ${primary}`);
    } else if (roll < 70) {
      this.#net.heal();
      this.#trace(() => 'heal');
    } else {
      this.#faults = randomLinkFaults(this.#rng);
      this.#net.faults = this.#faults;
    }
  }

  #restart(node: SimReplica): void {
    if (node.up) return;
    this.#trace(() => `restart ${node.id}`);
    this.#restarts++;
    node.up = true;
    node.driver.restart();
    // Genesis restarts execute from seq 1 again; a checkpoint restart reports through the install hook.
    if (node.driver.disk.stableCheckpoint === null) this.#checker.installed(node.id, 0, new Uint8Array());
    this.#flush(node);
  }

  #startCalm(): void {
    this.#calm = true;
    this.#calmAt = this.#now;
    this.#net.heal();
    this.#faults = CALM;
    this.#net.faults = CALM;
    this.#trace(() => 'calm: network healed, every replica restarted');
    for (const node of this.#nodes.values()) this.#restart(node);
    this.#addClient('probe', true, this.#now);
  }

  #finish(): void {
    this.#finished = true;
    const probe = this.#clients.find((c) => c.probe);
    if (this.#livenessAt === null) this.#fail(`liveness: no probe completed within ${this.#calmMs} ms of the calm (${this.#roles()})`);
    if (probe === undefined || probe.completed < PROBES) {
      this.#fail(`liveness: only ${probe?.completed ?? 0} of ${PROBES} probes completed after the calm (${this.#roles()})`);
    }
    const honest = [...this.#nodes.values()].filter((n) => n.byzantine === null);
    const reference = honest[0];
    if (reference === undefined) this.#fail('no honest replica');
    const snapshot = (n: SimReplica): string => new TextDecoder().decode(n.driver.kv.snapshot());
    for (const node of honest) {
      if (node.driver.core.lastExecuted !== reference.driver.core.lastExecuted || snapshot(node) !== snapshot(reference)) {
        this.#fail(`convergence: honest replicas differ at the end (${this.#roles()})`);
      }
    }
  }

  #roles(): string {
    return [...this.#nodes.values()]
      .map((n) => {
        const s = n.driver.core.status();
        return `${n.id}${n.byzantine === null ? '' : `[${n.byzantine.kind}]`}:v${s.view}${s.active ? '' : '*'} exec=${s.lastExecuted} h=${s.stableCheckpoint}`;
      })
      .join(' ');
  }

  // ------------------------------------------------------------- clients

  #clientStep(index: number, token: number): void {
    const client = this.#clients[index];
    if (client === undefined || token !== client.token) return;
    if (client.request === null) {
      if (this.#quiet || (client.probe && client.completed >= PROBES)) return;
      client.timestamp++;
      const request = makeRequest(this.#keys, client.id, client.timestamp, this.#randomOp(client));
      client.request = request;
      client.collector = new ReplyCollector({ client: client.id, timestamp: request.timestamp, members: this.#ids });
    }
    // Probes go through honest replicas (the client's own daemon); others through anyone.
    const candidates = [...this.#nodes.values()].filter((n) => n.up && (!client.probe || n.byzantine === null));
    if (candidates.length > 0) {
      const node = this.#rng.pick(candidates);
      const request = client.request;
      if (request !== null) {
        this.#trace(() => `${client.id} -> ${node.id} request t${request.timestamp}`);
        node.driver.core.request(request);
        this.#flush(node);
      }
    }
    this.#queue.push(this.#now + CLIENT_RETRY_MS, { kind: 'client', client: index, token: client.token });
  }

  #randomOp(client: SimClient): KvOp {
    const key = `k${this.#rng.int(3)}`;
    switch (this.#rng.int(3)) {
      case 0:
        return { op: 'put', key, value: `${client.id}.${client.timestamp}` };
      case 1:
        return { op: 'get', key };
      default:
        return { op: 'add', key: 'sum', by: 1 + this.#rng.int(9) };
    }
  }

  #onReply(sender: ReplicaId, reply: Reply): void {
    if (reply.from !== sender) {
      this.#forgedReplies++;
      return;
    }
    const index = this.#clients.findIndex((c) => c.id === reply.client);
    const client = this.#clients[index];
    if (client?.collector == null) return;
    const outcome = client.collector.accept(reply);
    if (outcome.kind !== 'done') return;
    this.#checker.clientAccepted(client.id, client.collector.timestamp, outcome.result);
    this.#trace(() => `${client.id} accepts t${client.collector?.timestamp}`);
    client.request = null;
    client.collector = null;
    client.completed++;
    client.token++;
    if (client.probe && this.#livenessAt === null) {
      this.#livenessAt = this.#now;
      if (this.#now - this.#calmAt > this.#livenessBoundMs) {
        this.#fail(`liveness: the first probe took ${this.#now - this.#calmAt} ms, bound ${this.#livenessBoundMs} ms (${this.#roles()})`);
      }
    }
    if (client.probe && client.completed >= PROBES && !this.#quiet) {
      this.#quiet = true;
      this.#trace(() => 'probes done: traffic stops, replicas converge');
      this.#queue.push(this.#now + QUIET_TAIL_MS, { kind: 'finish' });
    }
    this.#queue.push(this.#now + this.#rng.between(THINK_MS[0], THINK_MS[1]), { kind: 'client', client: index, token: client.token });
  }
}

function shuffle<T>(rng: Prng, items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

function describe(e: Envelope): string {
  const m = e.message;
  switch (m.type) {
    case 'pre_prepare':
      return `pre_prepare v${m.view} s${m.seq} n=${m.batch.length} ${m.digest.slice(0, 8)}`;
    case 'prepare':
    case 'commit':
      return `${m.type} v${m.view} s${m.seq} ${m.digest.slice(0, 8)}`;
    case 'checkpoint':
      return `checkpoint s${m.seq} ${m.digest.slice(0, 8)}`;
    case 'view_change':
      return `view_change v${m.view} h=${m.checkpoint.seq} prepared=${m.prepared.length}`;
    case 'new_view':
      return `new_view v${m.view} O=${m.prePrepares.length}`;
    case 'fetch':
    case 'state_request':
      return `${m.type} s${m.seq}`;
    case 'state':
      return `state s${m.checkpoint.seq} entries=${m.entries.length}`;
    case 'committed':
      return `committed s${m.certificate.prePrepare.seq}`;
    case 'new_view_request':
      return `new_view_request v${m.view}`;
    case 'request':
      return `request ${m.request.client}@${m.request.timestamp}`;
  }
}

/** The scenario a seed stands for; shared by the test suite and the soak so a seed means one thing. */
export function pbftScenarioForSeed(seed: number, trace?: (line: string) => void): PbftSimOptions {
  const nodes = seed % 8 === 0 ? 7 : 4;
  const f = maxFaulty(nodes);
  // Mostly the full f Byzantine members; sometimes fewer, to see the protocol with spare honest replicas.
  const byzantine = seed % 5 === 0 ? seed % f : f;
  return { seed, nodes, byzantine, chaosMs: 2500, clients: 3, ...(trace === undefined ? {} : { trace }) };
}
