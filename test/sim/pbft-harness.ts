/**
 * Test scaffolding for the PBFT core, shared by the unit tests and the
 * Byzantine simulator:
 * - FakeKeys: a deterministic stand-in for Ed25519 (a keyed SHA-256,
 *   H(secret || bytes), under a per-signer secret; plain hashing, because
 *   HMAC's per-call key setup dominated the simulator's profile). Whoever
 *   lacks a signer's secret cannot produce its signatures, which is all the
 *   protocol relies on.
 * - KvMachine: the state machine (put / get / add on string keys) with a
 *   canonical snapshot, results that depend on history (so divergence shows).
 * - ReplicaDriver: obeys the Ready contract for one core (execute, advance,
 *   queue the write; messages and replies leave when their write lands, in
 *   order) and keeps the persisted state for restarts; a simulator may hold
 *   writes back (a slow disk) and a crash loses those not landed.
 * - LockstepCluster: a hand-cranked cluster for scripted unit tests: messages
 *   queue until delivered, with optional filters to drop or tamper.
 */
import { hash, timingSafeEqual } from 'node:crypto';
import { PbftCore } from '../../src/consensus/pbft/core.ts';
import { seal, sealClientBatch } from '../../src/consensus/pbft/encoding.ts';
import { ReplyCollector } from '../../src/consensus/pbft/reply-collector.ts';
import type {
  ClientRequest,
  ExecuteBatch,
  ExecutionResult,
  Outbound,
  PbftConfig,
  PbftMessage,
  PbftPersistedState,
  PbftReady,
  ReplicaId,
  Reply,
  SlotRecord,
} from '../../src/consensus/pbft/types.ts';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class FakeKeys {
  readonly #secrets = new Map<string, Buffer>();
  readonly #domain: string;

  constructor(domain: string) {
    this.#domain = domain;
  }

  #secret(id: string): Buffer {
    let secret = this.#secrets.get(id);
    if (secret === undefined) {
      secret = hash('sha256', `${this.#domain}\u0000${id}`, 'buffer');
      this.#secrets.set(id, secret);
    }
    return secret;
  }

  signer(id: string): (bytes: Uint8Array) => Uint8Array {
    const secret = this.#secret(id);
    return (bytes) => hash('sha256', Buffer.concat([secret, bytes]), 'buffer');
  }

  /** Known signers only: `known` is consulted so a non-member or unknown client never verifies. */
  verifier(known: (id: string) => boolean): (signer: string, bytes: Uint8Array, signature: Uint8Array) => boolean {
    return (signer, bytes, signature) => {
      if (!known(signer) || signature.length !== 32) return false;
      const expected = hash('sha256', Buffer.concat([this.#secret(signer), bytes]), 'buffer');
      return timingSafeEqual(expected, signature);
    };
  }
}

export type KvOp =
  | { readonly op: 'put'; readonly key: string; readonly value: string }
  | { readonly op: 'get'; readonly key: string }
  | { readonly op: 'add'; readonly key: string; readonly by: number };

export function encodeOp(op: KvOp): Uint8Array {
  return encoder.encode(JSON.stringify(op));
}

/**
 * A client's signed request, both ways a client signs (types.ts
 * ClientRequest): every fourth timestamp alone, the others inside a client
 * batch of two to four, with decoys (reads of the client's that are signed
 * but never sent) at the other leaves, so paths of 0 to 2 entries and every
 * position in a batch are exercised.
 */
export function makeRequest(keys: FakeKeys, client: string, timestamp: number, op: KvOp): ClientRequest {
  const body = { client, timestamp, operation: encodeOp(op), readOnly: op.op === 'get' };
  if (timestamp % 4 === 0) return seal<ClientRequest>(body, keys.signer(client));
  const size = 1 + (timestamp % 4);
  const at = timestamp % size;
  const bodies = Array.from({ length: size }, (_, i) =>
    i === at ? body : { client, timestamp, operation: encodeOp({ op: 'get', key: `decoy${i}` }), readOnly: true },
  );
  return sealClientBatch(bodies, keys.signer(client))[at] as ClientRequest;
}

/** The state machine: results echo history (previous value, running sums) so a divergent replica answers differently. */
export class KvMachine {
  values = new Map<string, string>();

  execute(request: ClientRequest): Uint8Array {
    let op: KvOp;
    try {
      op = JSON.parse(decoder.decode(request.operation)) as KvOp;
    } catch {
      return encoder.encode('error: bad operation');
    }
    const before = this.values.get(op.key) ?? null;
    switch (op.op) {
      case 'put':
        this.values.set(op.key, op.value);
        return encoder.encode(JSON.stringify({ before }));
      case 'get':
        return encoder.encode(JSON.stringify({ value: before }));
      case 'add': {
        const next = String(Number(before ?? 0) + op.by);
        this.values.set(op.key, next);
        return encoder.encode(JSON.stringify({ value: next }));
      }
    }
  }

  snapshot(): Uint8Array {
    return encoder.encode(JSON.stringify([...this.values].sort(([a], [b]) => (a < b ? -1 : 1))));
  }

  restore(snapshot: Uint8Array): void {
    this.values = new Map(snapshot.length === 0 ? [] : (JSON.parse(decoder.decode(snapshot)) as [string, string][]));
  }
}

export interface Disk {
  view: PbftPersistedState['view'];
  stableCheckpoint: PbftPersistedState['stableCheckpoint'];
  slots: Map<number, SlotRecord>;
}

export interface DriverHooks {
  /** Before executing: the batch and the seq, for the safety checker. */
  onExecute?: (id: ReplicaId, batch: ExecuteBatch, results: readonly Uint8Array[]) => void;
  onInstall?: (id: ReplicaId, seq: number, snapshot: Uint8Array) => void;
  onCheckpointSnapshot?: (id: ReplicaId, seq: number, snapshot: Uint8Array) => void;
  /** A message leaving, with the disk as it is once the write that held it landed (for the disk-backing check). */
  onSend?: (id: ReplicaId, message: PbftMessage, disk: Disk) => void;
}

/** A Ready's write, and what may leave only once it has landed. */
interface QueuedWrite {
  readonly index: number;
  readonly persist: PbftReady['persist'];
  readonly messages: readonly Outbound[];
  readonly replies: readonly Reply[];
}

export interface Released {
  messages: Outbound[];
  replies: Reply[];
}

/** One replica's driver: the Ready contract, with writes landing at once or when the simulator says. */
export class ReplicaDriver {
  readonly id: ReplicaId;
  core: PbftCore;
  readonly kv = new KvMachine();
  readonly disk: Disk = { view: { view: 0, active: true, newView: null }, stableCheckpoint: null, slots: new Map() };
  /** False: writes wait for land() (a simulator's slow disk). True: pump() lands them at once. */
  landAtOnce = true;
  /** Readys taken while earlier writes were still queued, and writes a crash lost (for coverage checks). */
  readonly stats = { pipelined: 0, lostWrites: 0 };
  readonly #make: (storage: PbftPersistedState | undefined) => PbftCore;
  readonly #hooks: DriverHooks;
  readonly #queued: QueuedWrite[] = [];
  /** Writes handed out so far, across restarts: land(upTo) names writes by this count. */
  #written = 0;

  constructor(id: ReplicaId, make: (storage: PbftPersistedState | undefined) => PbftCore, hooks: DriverHooks = {}) {
    this.id = id;
    this.#make = make;
    this.#hooks = hooks;
    this.core = make(undefined);
  }

  /**
   * Process every Ready the core has: execute and advance at once (volatile
   * state only), queue its write. Returns what the writes landed now let leave.
   */
  pump(): Released {
    for (let ready = this.core.ready(); ready !== null; ready = this.core.ready()) {
      if (this.#queued.length > 0) this.stats.pipelined++;
      this.core.advance(ready, this.#run(ready));
      this.#queued.push({ index: ++this.#written, persist: ready.persist, messages: ready.messages, replies: ready.replies });
    }
    return this.landAtOnce ? this.land(this.#written) : { messages: [], replies: [] };
  }

  /** Writes handed out so far (the index of the latest). */
  get written(): number {
    return this.#written;
  }

  /** Lands the queued writes up to index `upTo`, in order, and releases what each held back. */
  land(upTo: number): Released {
    const released: Released = { messages: [], replies: [] };
    while (this.#queued.length > 0 && (this.#queued[0] as QueuedWrite).index <= upTo) {
      const write = this.#queued.shift() as QueuedWrite;
      this.#persist(write.persist);
      for (const { message } of write.messages) this.#hooks.onSend?.(this.id, message, this.disk);
      released.messages.push(...write.messages);
      released.replies.push(...write.replies);
    }
    return released;
  }

  #persist(p: PbftReady['persist']): void {
    if (p.view !== null) this.disk.view = p.view;
    if (p.stableCheckpoint !== null) {
      this.disk.stableCheckpoint = p.stableCheckpoint;
      for (const seq of [...this.disk.slots.keys()]) if (seq <= p.stableCheckpoint.seq) this.disk.slots.delete(seq);
    }
    for (const record of p.slots) this.disk.slots.set(record.seq, record);
  }

  #run(ready: PbftReady): ExecutionResult[] {
    if (ready.install !== null) {
      this.kv.restore(ready.install.snapshot);
      this.#hooks.onInstall?.(this.id, ready.install.seq, ready.install.snapshot);
    }
    return ready.execute.map((batch) => {
      const results = batch.requests.map((r) => this.kv.execute(r));
      this.#hooks.onExecute?.(this.id, batch, results);
      const snapshot = batch.checkpoint ? this.kv.snapshot() : null;
      if (snapshot !== null) this.#hooks.onCheckpointSnapshot?.(this.id, batch.seq, snapshot);
      return { seq: batch.seq, results, snapshot };
    });
  }

  /** Crash and restart from the disk: memory (the state machine included) and writes not landed are lost. */
  restart(): void {
    this.stats.lostWrites += this.#queued.length;
    this.#queued.length = 0;
    this.kv.restore(new Uint8Array(0));
    this.core = this.#make({
      view: this.disk.view,
      stableCheckpoint: this.disk.stableCheckpoint,
      slots: [...this.disk.slots.values()],
    });
  }
}

/** `message` as if it came over its named sender's authenticated channel (the usual case in scripted tests). */
export function deliver(core: PbftCore, message: PbftMessage): ReturnType<PbftCore['step']> {
  return core.step(message, message.from);
}

export interface Envelope {
  readonly from: ReplicaId;
  readonly to: ReplicaId;
  readonly message: PbftMessage;
}

/** Decide a message's fate in a LockstepCluster: deliver, drop, or replace. */
export type Filter = (e: Envelope) => PbftMessage | null;

export function replicaIds(n: number): ReplicaId[] {
  return Array.from({ length: n }, (_, i) => `r${i}`);
}

export class LockstepCluster {
  readonly ids: readonly ReplicaId[];
  readonly keys = new FakeKeys('lockstep');
  readonly drivers = new Map<ReplicaId, ReplicaDriver>();
  queue: Envelope[] = [];
  readonly replies: Reply[] = [];
  readonly clients = new Set<string>();
  filter: Filter | null = null;
  readonly down = new Set<ReplicaId>();
  #timestamps = new Map<string, number>();

  constructor(n: number, config: Partial<PbftConfig> = {}, hooks: DriverHooks = {}) {
    this.ids = replicaIds(n);
    const members = new Set(this.ids);
    const verify = this.keys.verifier((id) => members.has(id) || this.clients.has(id));
    for (const id of this.ids) {
      const make = (storage: PbftPersistedState | undefined): PbftCore =>
        new PbftCore({
          id,
          members: this.ids,
          sign: this.keys.signer(id),
          verify,
          config,
          ...(storage === undefined ? {} : { storage }),
        });
      this.drivers.set(id, new ReplicaDriver(id, make, hooks));
    }
  }

  core(id: ReplicaId): PbftCore {
    return this.driver(id).core;
  }

  driver(id: ReplicaId): ReplicaDriver {
    const d = this.drivers.get(id);
    if (d === undefined) throw new Error(`no replica ${id}`);
    return d;
  }

  /** Run every driver's pending Ready and queue what it sends. */
  pump(): void {
    for (const [id, driver] of this.drivers) {
      if (this.down.has(id)) continue;
      const { messages, replies } = driver.pump();
      this.replies.push(...replies);
      for (const { to, message } of messages) {
        for (const target of to === null ? this.ids.filter((x) => x !== id) : [to]) {
          this.queue.push({ from: id, to: target, message });
        }
      }
    }
  }

  /** Deliver queued messages (through the filter) until nothing is left; returns how many were delivered. */
  stabilize(limit = 100_000): number {
    let delivered = 0;
    this.pump();
    while (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
      for (const e of batch) {
        if (this.down.has(e.to) || this.down.has(e.from)) continue;
        const message = this.filter === null ? e.message : this.filter(e);
        if (message === null) continue;
        this.driver(e.to).core.step(message, e.from);
        if (++delivered > limit) throw new Error(`lockstep cluster did not settle within ${limit} deliveries`);
      }
      this.pump();
    }
    return delivered;
  }

  tick(id: ReplicaId, n = 1): void {
    for (let i = 0; i < n; i++) {
      this.driver(id).core.tick();
      this.stabilize();
    }
  }

  tickAll(n = 1): void {
    for (let i = 0; i < n; i++) {
      for (const id of this.ids) if (!this.down.has(id)) this.driver(id).core.tick();
      this.stabilize();
    }
  }

  request(client: string, op: KvOp, at: ReplicaId = this.ids[0] as ReplicaId): ClientRequest {
    this.clients.add(client);
    const timestamp = (this.#timestamps.get(client) ?? 0) + 1;
    this.#timestamps.set(client, timestamp);
    const request = makeRequest(this.keys, client, timestamp, op);
    this.driver(at).core.request(request);
    return request;
  }

  /**
   * The client's retransmission (PbftClient's relay every retryMs): `at`
   * sends the request to every other replica. A request first goes to the
   * primary alone, so backups learn of one the primary sits on only so.
   */
  retransmit(request: ClientRequest, at: ReplicaId = this.ids[0] as ReplicaId): void {
    for (const to of this.ids) if (to !== at) this.queue.push({ from: at, to, message: { type: 'request', from: at, request } });
    this.stabilize();
  }

  /** The result f + 1 replicas agree on for the request, or null. */
  result(request: ClientRequest): string | null {
    const collector = new ReplyCollector({ client: request.client, timestamp: request.timestamp, members: this.ids });
    for (const reply of this.replies) {
      const outcome = collector.accept(reply);
      if (outcome.kind === 'done') return decoder.decode(outcome.result);
    }
    return null;
  }

  executed(id: ReplicaId): number {
    return this.core(id).lastExecuted;
  }
}

/** Small windows so unit tests reach checkpoints, watermarks and view changes in a few steps. */
export const SMALL_PBFT_CONFIG: Partial<PbftConfig> = {
  checkpointInterval: 4,
  logWindow: 8,
  maxCheckpointVotesPerPeer: 3,
  maxInflightBatches: 4,
  viewChangeTicks: 10,
  retransmitTicks: 3,
};
