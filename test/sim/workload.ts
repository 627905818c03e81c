/**
 * The simulated clients and the history they record for the
 * linearizability check.
 *
 * Each client runs one operation at a time against the node it believes
 * leads (a random live node otherwise): a put (a unique value, so the checker
 * can tell writes apart) or a linearizable get through ReadIndex.
 * What goes into the history, and why it is sound:
 * - a put is invoked when a leader accepts it at (index, term); it returns
 *   when that node applies (index, term). If the node applies a different
 *   entry at that index, the put was overwritten and can never commit, so it
 *   is left out. If the node crashes or the client's deadline passes first,
 *   the outcome is unknown: it is recorded without a response.
 * - a get is invoked when readIndex is called; it returns when the node has
 *   applied the confirmed read index, with the node's value then. A get that
 *   never completes tells nothing and is left out.
 * Proposals refused outright (not leader, dropped) had no effect and are
 * retried elsewhere without a record.
 */
import type { RaftCore } from '../../src/consensus/raft/core.ts';
import type { Entry, NodeId } from '../../src/consensus/raft/types.ts';
import type { KvStore } from './kv.ts';
import { encodeCommand } from './kv.ts';
import type { RegisterOp } from './linearizability.ts';
import type { Prng } from './prng.ts';

export const OP_TIMEOUT_MS = 1000;

/** The parts of a simulated node a client talks to. */
export interface ClientTarget {
  readonly id: NodeId;
  readonly core: RaftCore;
  readonly kv: KvStore;
}

export interface WorkloadHost {
  readonly rng: Prng;
  now(): number;
  /** Schedule client `client`'s next step at virtual time `at`. */
  wake(client: number, at: number): void;
  /** A live node to talk to: the hinted one if it is up, else any. */
  pickNode(hint: NodeId | null): ClientTarget | undefined;
  /** A client gave a node input: let its driver take the Ready. */
  touched(node: NodeId): void;
}

type PendingOp =
  | { kind: 'put'; key: string; value: string; invoke: number; node: NodeId; index: number; term: number; deadline: number }
  | { kind: 'get'; key: string; ctx: string; invoke: number; node: NodeId; readIndex: number | null; deadline: number };

interface Client {
  readonly id: number;
  seq: number;
  pending: PendingOp | null;
  leaderHint: NodeId | null;
}

export class ClientWorkload {
  readonly history: RegisterOp[] = [];
  readonly #host: WorkloadHost;
  readonly #clients: Client[] = [];
  readonly #keys: number;
  /** No new operations from this virtual time on. */
  readonly #stopAt: number;

  constructor(host: WorkloadHost, clients: number, keys: number, stopAt: number) {
    this.#host = host;
    this.#keys = keys;
    this.#stopAt = stopAt;
    for (let c = 0; c < clients; c++) {
      this.#clients.push({ id: c, seq: 0, pending: null, leaderHint: null });
      host.wake(c, host.rng.between(0, 50));
    }
  }

  step(id: number): void {
    const client = this.#clients[id];
    if (client === undefined) throw new RangeError(`no client ${id}`);
    const host = this.#host;
    const now = host.now();
    const op = client.pending;
    if (op !== null) {
      if (now < op.deadline) return;
      if (op.kind === 'put') this.#recordUnknown(client.id, op);
      this.#complete(client);
      return;
    }
    if (now >= this.#stopAt) return;
    const node = host.pickNode(client.leaderHint);
    if (node === undefined) {
      host.wake(client.id, now + 20);
      return;
    }
    const key = `k${host.rng.int(this.#keys)}`;
    client.seq++;
    const deadline = now + OP_TIMEOUT_MS;
    if (host.rng.chance(0.5)) {
      const value = `c${client.id}.${client.seq}`;
      const result = node.core.propose(encodeCommand({ op: 'put', key, value, client: client.id }));
      if (result.kind === 'accepted') {
        client.pending = { kind: 'put', key, value, invoke: now, node: node.id, index: result.index, term: result.term, deadline };
      } else {
        this.#retryElsewhere(client, result.kind === 'not_leader' ? result.leaderHint : null);
      }
    } else {
      const ctx = `c${client.id}.${client.seq}`;
      const result = node.core.readIndex(ctx);
      if (result.kind === 'pending') {
        client.pending = { kind: 'get', key, ctx, invoke: now, node: node.id, readIndex: null, deadline };
      } else {
        this.#retryElsewhere(client, result.kind === 'not_leader' ? result.leaderHint : null);
      }
    }
    host.touched(node.id);
    if (client.pending !== null) host.wake(client.id, client.pending.deadline);
  }

  /** A node applied `entry`: complete the put waiting on that index there, if any. */
  applied(node: NodeId, entry: Entry): void {
    for (const client of this.#clients) {
      const op = client.pending;
      if (op?.kind !== 'put' || op.node !== node || op.index !== entry.index) continue;
      if (op.term === entry.term) {
        this.history.push({ client: client.id, kind: 'put', key: op.key, value: op.value, invoke: op.invoke, response: this.#host.now() });
      }
      // Otherwise a different entry holds our index: ours was overwritten and can never commit.
      this.#complete(client);
    }
  }

  readConfirmed(node: NodeId, ctx: string, index: number): void {
    for (const client of this.#clients) {
      const op = client.pending;
      if (op?.kind === 'get' && op.node === node && op.ctx === ctx) op.readIndex = index;
    }
  }

  /** Answer the gets at `node` whose read index it has now applied. */
  serveReads(node: ClientTarget): void {
    for (const client of this.#clients) {
      const op = client.pending;
      if (op?.kind !== 'get' || op.node !== node.id || op.readIndex === null || node.kv.applied < op.readIndex) continue;
      const value = node.kv.values.get(op.key) ?? null;
      this.history.push({ client: client.id, kind: 'get', key: op.key, value, invoke: op.invoke, response: this.#host.now() });
      client.leaderHint = node.core.leader;
      this.#complete(client);
    }
  }

  /** The node crashed: its pending writes may still commit elsewhere (unknown); its reads are void. */
  nodeCrashed(node: NodeId): void {
    for (const client of this.#clients) {
      const op = client.pending;
      if (op === null || op.node !== node) continue;
      if (op.kind === 'put') this.#recordUnknown(client.id, op);
      this.#complete(client);
    }
  }

  #retryElsewhere(client: Client, hint: NodeId | null): void {
    client.leaderHint = hint;
    this.#host.wake(client.id, this.#host.now() + this.#host.rng.between(5, 30));
  }

  #complete(client: Client): void {
    client.pending = null;
    this.#host.wake(client.id, this.#host.now() + this.#host.rng.between(0, 20));
  }

  #recordUnknown(client: number, op: { key: string; value: string; invoke: number }): void {
    this.history.push({ client, kind: 'put', key: op.key, value: op.value, invoke: op.invoke, response: null });
  }
}
