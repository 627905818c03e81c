/**
 * PbftNode, the driver, with four replicas in one process: real Ed25519 keys
 * (MemberKeys), a KvPbftReplica and a PbftClient each, an in-memory sender
 * (frames are delivered on setImmediate by calling the peer's receive) and an
 * in-memory store, all writing to one shared event log. Proven here: a put
 * commits everywhere; a Ready's persist completes before any of its votes
 * reaches the sender; replies travel in the frame of the member whose lane
 * they answer, own-lane ones straight to onReply, one frame per peer per
 * Ready; an equivocating primary (test mode) cannot split honest replicas
 * and is counted as such; a replica cut off while a checkpoint formed
 * catches up through the checkpoint beacon and a state transfer alone; a
 * failed persist stops the node for good.
 *
 * Waiting is event-driven (ChangeWatch, checked after each delivery, persist
 * and execution) with a deadline that names what did not happen.
 */
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PbftClient } from '../../src/consensus/pbft/client.ts';
import { NULL_BATCH_DIGEST, signingBytes } from '../../src/consensus/pbft/encoding.ts';
import { MemberKeys, ed25519Signer, signerMember } from '../../src/consensus/pbft/keys.ts';
import { PbftNode, type ByzantineTestBehaviour, type PbftOutboundFrame, type PbftStore } from '../../src/consensus/pbft/node.ts';
import type { ClientRequest, PbftConfig, PersistDelta, PrePrepare, Reply, ReplicaId } from '../../src/consensus/pbft/types.ts';
import { resolvePbftConfig } from '../../src/consensus/pbft/types.ts';
import { KvResultSchema, encodeKvCommand, type KvResult } from '../../src/kv/command.ts';
import { KvPbftReplica } from '../../src/kv/pbft-replica.ts';
import { createLogger } from '../../src/log.ts';
import { createMetrics, type PbftMetrics } from '../../src/metrics/metrics.ts';
import { SMALL_PBFT_CONFIG } from '../sim/pbft-harness.ts';
import { ChangeWatch, settle } from '../support/change-watch.ts';

const MEMBERS: readonly ReplicaId[] = ['n0', 'n1', 'n2', 'n3'];
/** Small windows (checkpoints every 4), a 10 ms tick, a view-change timeout (0.5 s) well above a loaded machine's delays. */
const CONFIG: Partial<PbftConfig> = { ...SMALL_PBFT_CONFIG, viewChangeTicks: 50, checkpointBeaconTicks: 5 };
const TICK_MS = 10;
const CALL_TIMEOUT_MS = 15_000;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const log = createLogger('silent');

type ClusterEvent =
  | { readonly kind: 'persist-start' | 'persist-end'; readonly node: ReplicaId; readonly delta: PersistDelta }
  | { readonly kind: 'persist-failed'; readonly node: ReplicaId }
  /** `batch` numbers the synchronous runs of a node's sends: one Ready's #send is one run. */
  | { readonly kind: 'send'; readonly node: ReplicaId; readonly to: ReplicaId; readonly frame: PbftOutboundFrame; readonly batch: number };

let signers: Map<ReplicaId, (bytes: Uint8Array) => Uint8Array>;
let keys: MemberKeys;

beforeAll(async () => {
  const peerIds = new Map<ReplicaId, string>();
  signers = new Map();
  for (const id of MEMBERS) {
    const key = await generateKeyPair('Ed25519');
    peerIds.set(id, peerIdFromPrivateKey(key).toString());
    signers.set(id, ed25519Signer(key));
  }
  keys = new MemberKeys((member) => peerIds.get(member));
});

/** The KV state machine, announcing each execution and restore to the cluster's watch. */
class WatchedReplica extends KvPbftReplica {
  readonly #changed: () => void;
  constructor(changed: () => void) {
    super();
    this.#changed = changed;
  }
  override execute(request: ClientRequest): Uint8Array {
    const result = super.execute(request);
    this.#changed();
    return result;
  }
  override restore(snapshot: Uint8Array): void {
    super.restore(snapshot);
    this.#changed();
  }
}

interface Seat {
  readonly node: PbftNode;
  readonly client: PbftClient;
  readonly replica: KvPbftReplica;
  readonly metrics: PbftMetrics;
  /** Replies the node handed to onReply (its own lanes). */
  readonly ownReplies: Reply[];
  readonly fatal: Error[];
}

interface ClusterOptions {
  readonly byzantine?: Partial<Record<ReplicaId, ByzantineTestBehaviour>>;
  /** Members whose store rejects every persist of a non-empty delta. */
  readonly failingStores?: readonly ReplicaId[];
}

class MemoryCluster {
  readonly watch = new ChangeWatch();
  readonly events: ClusterEvent[] = [];
  /** Members cut off: nothing they send or are sent is delivered. */
  readonly cut = new Set<ReplicaId>();
  readonly seats = new Map<ReplicaId, Seat>();
  readonly #openBatch = new Map<ReplicaId, number>();
  #batches = 0;
  #notifyQueued = false;
  #writes = 0;

  constructor(opts: ClusterOptions = {}) {
    const maxRequestBytes = resolvePbftConfig(CONFIG).maxRequestBytes;
    for (const id of MEMBERS) {
      const sign = signers.get(id) as (bytes: Uint8Array) => Uint8Array;
      const metrics = createMetrics({ defaultMetrics: false }).pbft;
      const replica = new WatchedReplica(() => this.changed());
      const fatal: Error[] = [];
      const node = new PbftNode({
        id,
        members: MEMBERS,
        sign,
        verify: keys.verify,
        config: CONFIG,
        persisted: null,
        initialSnapshot: KvPbftReplica.genesis(),
        store: this.#store(id, opts.failingStores?.includes(id) ?? false),
        sender: { send: (to, frame) => this.#send(id, to, frame) },
        machine: replica,
        tickMs: TICK_MS,
        metrics,
        log,
        onFatal: (err) => fatal.push(err),
        ...(opts.byzantine?.[id] === undefined ? {} : { byzantine: opts.byzantine[id] }),
      });
      const client = new PbftClient({
        member: id,
        members: MEMBERS,
        f: node.f,
        lanes: 4,
        maxWaiting: 64,
        retryMs: 250,
        maxRequestBytes,
        sign,
        replica: node,
      });
      const ownReplies: Reply[] = [];
      node.onReply = (reply) => {
        ownReplies.push(reply);
        client.onReply(reply);
      };
      this.seats.set(id, { node, client, replica, metrics, ownReplies, fatal });
    }
    for (const seat of this.seats.values()) seat.node.start();
  }

  seat(id: ReplicaId): Seat {
    const seat = this.seats.get(id);
    if (seat === undefined) throw new Error(`no member ${id}`);
    return seat;
  }

  /** Checks waiters once the current Ready has run to its end (advance included). */
  changed(): void {
    if (this.#notifyQueued) return;
    this.#notifyQueued = true;
    setImmediate(() => {
      this.#notifyQueued = false;
      this.watch.changed();
    });
  }

  #store(id: ReplicaId, failing: boolean): PbftStore {
    return {
      persist: (delta) => {
        this.events.push({ kind: 'persist-start', node: id, delta });
        // Asynchronous like an fsync, so a driver that did not wait would be caught sending early.
        return new Promise<void>((resolve, reject) =>
          setImmediate(() => {
            if (failing) {
              this.events.push({ kind: 'persist-failed', node: id });
              reject(new Error(`${id}: disk failure (test)`));
            } else {
              this.events.push({ kind: 'persist-end', node: id, delta });
              resolve();
            }
            this.changed();
          }),
        );
      },
    };
  }

  #send(from: ReplicaId, to: ReplicaId, frame: PbftOutboundFrame): void {
    let batch = this.#openBatch.get(from);
    if (batch === undefined) {
      batch = ++this.#batches;
      this.#openBatch.set(from, batch);
      queueMicrotask(() => this.#openBatch.delete(from));
    }
    this.events.push({ kind: 'send', node: from, to, frame, batch });
    this.changed();
    if (this.cut.has(from) || this.cut.has(to)) return;
    setImmediate(() => {
      if (this.cut.has(from) || this.cut.has(to)) return;
      this.seats.get(to)?.node.receive(from, frame.messages, frame.replies);
      this.changed();
    });
  }

  /** A put through `via`'s PbftClient; the KV result f + 1 replicas agreed on. */
  async put(via: ReplicaId, key: string, value: string): Promise<KvResult> {
    const operation = encodeKvCommand({ clientId: 'pbft-node-test', seq: ++this.#writes, op: 'put', key, value: encoder.encode(value) });
    return KvResultSchema.decode(await this.seat(via).client.invoke(operation, false, CALL_TIMEOUT_MS));
  }

  value(id: ReplicaId, key: string): string | null {
    const entry = this.seat(id).replica.machine.get(key);
    return entry === null ? null : decoder.decode(entry.value);
  }

  /** Resolves once every listed replica holds key = value. */
  holds(ids: readonly ReplicaId[], key: string, value: string): Promise<void> {
    return this.watch.until(() => ids.every((id) => this.value(id, key) === value), `${key} = ${value} on ${ids.join(', ')}`);
  }

  snapshots(ids: readonly ReplicaId[]): string[] {
    return ids.map((id) => Buffer.from(this.seat(id).replica.snapshot()).toString('hex'));
  }

  sends(node?: ReplicaId): Array<Extract<ClusterEvent, { kind: 'send' }>> {
    return this.events.filter((e): e is Extract<ClusterEvent, { kind: 'send' }> => e.kind === 'send' && (node === undefined || e.node === node));
  }

  async stop(): Promise<void> {
    for (const seat of this.seats.values()) seat.client.stop();
    await Promise.all([...this.seats.values()].map((seat) => seat.node.stop()));
    await settle();
  }
}

/** A counter's value for one label set (the unlabelled series when none is given). */
async function counterValue(counter: PbftMetrics['byzantine'] | PbftMetrics['stateTransfers'], labels: Record<string, string> = {}): Promise<number> {
  const { values } = await counter.get();
  const series: ReadonlyArray<{ value: number; labels: Record<string, string | number | undefined> }> = values;
  return series.find((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))?.value ?? 0;
}

/**
 * Problems with the durability order at `node`: a prepare, commit,
 * pre-prepare or view-change it sent before a completed persist recorded it.
 * (Writes are pipelined: a message may leave while a later Ready's write is
 * still in flight, never before its own.)
 */
function durabilityProblems(events: readonly ClusterEvent[], node: ReplicaId): string[] {
  const problems: string[] = [];
  const slots: PersistDelta['slots'][number][] = [];
  const views: NonNullable<PersistDelta['view']>[] = [];
  for (const e of events) {
    if (e.node !== node) continue;
    if (e.kind === 'persist-end') {
      slots.push(...e.delta.slots);
      if (e.delta.view !== null) views.push(e.delta.view);
    }
    if (e.kind !== 'send') continue;
    for (const m of e.frame.messages) {
      // A client request is relayed outside the Ready cycle (PbftClient's retransmission) and needs no persist.
      if (m.type === 'request') continue;
      if (m.from !== node) problems.push(`${m.type} to ${e.to} signed by ${m.from}`);
      let recorded = true;
      if (m.type === 'pre_prepare') recorded = slots.some((r) => r.seq === m.seq && r.view === m.view && r.prePrepare?.digest === m.digest);
      if (m.type === 'prepare') recorded = slots.some((r) => r.seq === m.seq && r.view === m.view && r.sentPrepare && r.prePrepare?.digest === m.digest);
      if (m.type === 'commit') recorded = slots.some((r) => r.seq === m.seq && r.view === m.view && r.sentCommit && r.prePrepare?.digest === m.digest);
      if (m.type === 'view_change') recorded = views.some((v) => v.view === m.view && !v.active);
      if (!recorded) problems.push(`${m.type} (view ${'view' in m ? m.view : '-'}, seq ${'seq' in m ? m.seq : '-'}) to ${e.to} before it was persisted`);
    }
  }
  return problems;
}

let cluster: MemoryCluster | null = null;

function start(opts: ClusterOptions = {}): MemoryCluster {
  cluster = new MemoryCluster(opts);
  return cluster;
}

afterEach(async () => {
  await cluster?.stop();
  cluster = null;
});

describe('pbft node', () => {
  it('commits a put through one member\'s client on every replica', async () => {
    const c = start();
    const result = await c.put('n1', 'colour', 'blue');
    expect(result).toMatchObject({ ok: true, op: 'put', revision: 1, prev: null });
    await c.holds(MEMBERS, 'colour', 'blue');
    const second = await c.put('n3', 'colour', 'green');
    expect(second).toMatchObject({ ok: true, op: 'put', revision: 2 });
    await c.holds(MEMBERS, 'colour', 'green');
    expect(new Set(c.snapshots(MEMBERS)).size).toBe(1);
    for (const id of MEMBERS) {
      expect(c.seat(id).fatal).toEqual([]);
      expect(c.seat(id).node.status().lastExecuted).toBeGreaterThanOrEqual(2);
    }
  });

  it('persists each Ready before any of its votes is handed to the sender', async () => {
    const c = start();
    await Promise.all([c.put('n0', 'a', '1'), c.put('n1', 'b', '2'), c.put('n2', 'c', '3'), c.put('n3', 'd', '4')]);
    await c.holds(MEMBERS, 'd', '4');
    for (const id of MEMBERS) {
      const sentVotes = c.sends(id).flatMap((e) => e.frame.messages).filter((m) => m.type === 'prepare' || m.type === 'commit' || m.type === 'pre_prepare');
      expect(sentVotes.length, `${id} sent votes`).toBeGreaterThan(0);
      expect(durabilityProblems(c.events, id), id).toEqual([]);
    }
  });

  it('sends replies in the frame of the member whose lane they answer, own-lane replies to onReply, one frame per peer per Ready', async () => {
    const c = start();
    // A Ready that holds replies and messages: the one after a request ran at a checkpoint (replies and the checkpoint vote).
    const mixed = () => c.sends().some((e) => e.frame.messages.length > 0 && e.frame.replies.length > 0);
    const writers = ['n1', 'n2'] as const;
    for (let i = 0; i < 2 || !mixed(); i++) {
      expect(i, 'writes until one frame carried messages and replies').toBeLessThan(3 * (CONFIG.checkpointInterval ?? 0));
      await c.put(writers[i % 2] ?? 'n1', 'k', `${i}`);
      await c.holds(MEMBERS, 'k', `${i}`);
    }
    const sends = c.sends();
    const withReplies = sends.filter((e) => e.frame.replies.length > 0);
    expect(withReplies.length).toBeGreaterThan(0);
    for (const e of sends) {
      expect(e.to, `${e.node} sent to itself`).not.toBe(e.node);
      for (const r of e.frame.replies) expect(signerMember(r.client), `reply from ${e.node} for ${r.client} went to ${e.to}`).toBe(e.to);
    }
    for (const [writer, other] of [['n1', 'n2'], ['n2', 'n1']] as const) {
      const own = c.seat(writer).ownReplies;
      expect(own.some((r) => r.from === writer), `${writer}'s own reply reached onReply`).toBe(true);
      expect(own.every((r) => signerMember(r.client) === writer)).toBe(true);
      expect(c.seat(other).ownReplies.some((r) => signerMember(r.client) === writer), `${other} got ${writer}'s replies`).toBe(false);
      const fromPeers = new Set(withReplies.filter((e) => e.to === writer).map((e) => e.node));
      expect(fromPeers.size, `peers whose replies reached ${writer} in frames`).toBeGreaterThanOrEqual(1);
      expect(fromPeers.has(writer)).toBe(false);
    }
    const perReady = new Map<number, ReplicaId[]>();
    for (const e of sends) perReady.set(e.batch, [...(perReady.get(e.batch) ?? []), e.to]);
    for (const [batch, peers] of perReady) expect(new Set(peers).size, `send run ${batch} went to ${peers.join(', ')}`).toBe(peers.length);
  });

  it('takes a reply only from the member whose channel carried it: one naming another member is dropped', () => {
    const c = start();
    const seat = c.seat('n1');
    const reply = (from: ReplicaId): Reply => ({ type: 'reply', from, view: 0, client: 'n1/0', timestamp: 1, result: new Uint8Array([1]) });
    seat.node.receive('n2', [], [reply('n3')]);
    expect(seat.ownReplies).toEqual([]);
    seat.node.receive('n2', [], [reply('n2')]);
    expect(seat.ownReplies.map((r) => r.from)).toEqual(['n2']);
  });

  it('equivocate mode: the primary sends every other peer a conflicting null pre-prepare; honest replicas still agree and count it', async () => {
    const c = start({ byzantine: { n0: 'equivocate' } });
    const honest = ['n1', 'n2', 'n3'];
    await c.put('n1', 'x', '1');
    await c.put('n3', 'y', '2');
    await c.holds(honest, 'y', '2');
    await c.holds(honest, 'x', '1');
    expect(new Set(c.snapshots(honest)).size, 'honest replicas hold equal states').toBe(1);

    // n0's peers in order are n1, n2, n3: n2 got the twin.
    const prePrepares = c
      .sends('n0')
      .flatMap((e) => e.frame.messages.filter((m): m is PrePrepare => m.type === 'pre_prepare').map((m) => ({ to: e.to, m })));
    const first = prePrepares.find(({ m }) => m.batch.length > 0)?.m;
    expect(first, 'n0 pre-prepared a request').toBeDefined();
    const forSlot = prePrepares.filter(({ m }) => m.view === first?.view && m.seq === first.seq);
    // Each version as often as the primary sent it (a stalled primary re-broadcasts, the twin included).
    const to = (peer: ReplicaId) => [...new Set(forSlot.filter((p) => p.to === peer).map((p) => `${p.m.digest}/${p.m.batch.length}`))];
    for (const peer of ['n1', 'n3']) expect(to(peer), peer).toEqual([`${first?.digest}/${first?.batch.length}`]);
    expect(to('n2')).toEqual([`${NULL_BATCH_DIGEST}/0`]);
    for (const { m } of forSlot) expect(keys.verify('n0', signingBytes(m), m.signature), 'both versions carry n0\'s valid signature').toBe(true);

    expect(await counterValue(c.seat('n2').metrics.byzantine, { kind: 'equivocation' })).toBeGreaterThanOrEqual(1);
    expect(c.seat('n2').node.drops().get('equivocation')).toBeGreaterThanOrEqual(1);
    for (const id of honest) expect(c.seat(id).fatal).toEqual([]);
  });

  it('a replica cut off while a checkpoint formed catches up by state transfer through the checkpoint beacon, with no new requests', async () => {
    const c = start();
    const others = ['n0', 'n1', 'n2'];
    c.cut.add('n3');
    const interval = CONFIG.checkpointInterval ?? 0;
    for (let i = 1; !others.every((id) => c.seat(id).node.status().stableCheckpoint >= interval); i++) {
      expect(i, 'writes needed for a stable checkpoint').toBeLessThanOrEqual(3 * interval);
      await c.put('n1', `key-${i}`, `${i}`);
      // The checkpoint becomes stable once 2f + 1 checkpoint messages arrived, possibly after the reply.
      if (i >= interval) await c.watch.until(() => others.every((id) => c.seat(id).node.status().lastExecuted >= i), `execution of write ${i} on ${others.join(', ')}`);
    }
    await c.watch.until(() => others.every((id) => c.seat(id).node.status().stableCheckpoint >= interval), `a stable checkpoint at ${interval}`);
    const executed = c.seat('n1').node.status().lastExecuted;
    expect(c.seat('n3').node.status()).toMatchObject({ lastExecuted: 0, stableCheckpoint: 0 });
    expect(c.value('n3', 'key-1')).toBeNull();
    const requestsBefore = c.sends().filter((e) => e.frame.messages.some((m) => m.type === 'request')).length;

    c.cut.delete('n3');
    await c.watch.until(
      () => c.seat('n3').node.status().lastExecuted >= executed && c.snapshots(['n3', 'n1'])[0] === c.snapshots(['n3', 'n1'])[1],
      `n3 catching up to seq ${executed} with n1's state`,
    );
    expect(await counterValue(c.seat('n3').metrics.stateTransfers)).toBe(1);
    for (const id of others) expect(await counterValue(c.seat(id).metrics.stateTransfers), id).toBe(0);
    expect(c.sends().filter((e) => e.frame.messages.some((m) => m.type === 'request')).length, 'no request was sent after n3 came back').toBe(requestsBefore);
    for (const id of others) expect(c.seat(id).node.status().lastExecuted, id).toBe(executed);
  });

  it('stops for good when a persist fails: onFatal, failure set, nothing sent after, and the others go on', async () => {
    const c = start({ failingStores: ['n2'] });
    const result = await c.put('n1', 'k', 'v');
    expect(result).toMatchObject({ ok: true, op: 'put' });
    await c.holds(['n0', 'n1', 'n3'], 'k', 'v');
    const n2 = c.seat('n2');
    await c.watch.until(() => n2.fatal.length > 0, 'n2 reporting its persist failure');
    expect(n2.fatal.map((e) => e.message)).toEqual(['n2: disk failure (test)']);
    expect(n2.node.failure).toBe(n2.fatal[0]);

    // Its own client gets nothing through, and nothing it is sent wakes it up.
    expect(n2.node.request({ client: 'n2/0', timestamp: 1, operation: new Uint8Array(1), readOnly: false, signature: new Uint8Array(64) })).toEqual({ kind: 'dropped', reason: 'buffer_full' });
    await c.put('n3', 'k', 'after');
    await c.holds(['n0', 'n1', 'n3'], 'k', 'after');

    const failedAt = c.events.findIndex((e) => e.kind === 'persist-failed' && e.node === 'n2');
    expect(failedAt).toBeGreaterThanOrEqual(0);
    expect(c.events.slice(failedAt).filter((e) => e.kind === 'send' && e.node === 'n2'), 'sends by n2 after its failed persist').toEqual([]);
    expect(c.events.filter((e) => e.kind === 'persist-start' && e.node === 'n2'), 'persists n2 attempted').toHaveLength(1);
    expect(c.sends('n2').flatMap((e) => e.frame.messages).filter((m) => m.type !== 'request'), 'votes n2 sent').toEqual([]);
    expect(n2.fatal).toHaveLength(1);
    expect(c.value('n2', 'k')).toBeNull();
  });
});
