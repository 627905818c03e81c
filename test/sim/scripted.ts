/**
 * A hand-driven cluster for scripted interaction tests (etcd's style): no
 * clock and no randomness beyond what a test asks for. Every Ready is
 * persisted to the node's in-memory disk the moment it is taken (its write
 * lands at once, so every message may leave), then its messages join one
 * shared in-flight list, which the test delivers, filters, drops or reorders
 * explicitly. Tests of writes still under way drive a core by hand.
 */
import { bootstrapState, joiningState } from '../../src/consensus/raft/bootstrap.ts';
import { RaftCore } from '../../src/consensus/raft/core.ts';
import type { Entry, Message, NodeId, PersistedState, RaftConfig, ReadState, Snapshot } from '../../src/consensus/raft/types.ts';

export interface ScriptedDisk {
  hardState: PersistedState['hardState'];
  snapshot: Snapshot;
  entries: Entry[];
}

export interface ScriptedNode {
  readonly id: NodeId;
  core: RaftCore;
  up: boolean;
  disk: ScriptedDisk;
  /** Every entry this node's state machine applied, by index (kept across crashes). */
  readonly applied: Map<number, Entry>;
  readonly readStates: ReadState[];
}

export type MessageFilter = (m: Message) => boolean;

const encoder = new TextEncoder();

export function command(text: string): Uint8Array {
  return encoder.encode(text);
}

export class ScriptedCluster {
  readonly nodes = new Map<NodeId, ScriptedNode>();
  /** Messages sent and not yet delivered or dropped. */
  inFlight: Message[] = [];
  /** Every message ever sent, for assertions about traffic. */
  readonly sent: Message[] = [];
  readonly #config: Partial<RaftConfig>;
  #isolated = new Set<NodeId>();
  #groups = new Map<NodeId, number>();

  constructor(voters: readonly NodeId[], config: Partial<RaftConfig> = {}) {
    this.#config = config;
    for (const id of voters) this.#add(id, bootstrapState(voters));
  }

  /** A node outside the cluster that waits to be added (as a learner). */
  addJoiner(id: NodeId): ScriptedNode {
    return this.#add(id, joiningState());
  }

  #add(id: NodeId, state: PersistedState): ScriptedNode {
    const disk: ScriptedDisk = { hardState: state.hardState, snapshot: state.snapshot, entries: [...state.entries] };
    const node: ScriptedNode = { id, core: this.#start(id, disk), up: true, disk, applied: new Map(), readStates: [] };
    this.nodes.set(id, node);
    return node;
  }

  #start(id: NodeId, disk: ScriptedDisk): RaftCore {
    // random() = 0: every randomized election timeout is exactly electionTicks.
    return new RaftCore({ id, storage: { ...disk, entries: [...disk.entries] }, random: () => 0, config: this.#config });
  }

  node(id: NodeId): ScriptedNode {
    const node = this.nodes.get(id);
    if (node === undefined) throw new Error(`no node ${id}`);
    return node;
  }

  core(id: NodeId): RaftCore {
    return this.node(id).core;
  }

  /** Persist and act on every pending Ready. */
  flush(): void {
    let progressed = true;
    for (let rounds = 0; progressed; rounds++) {
      if (rounds > 10_000) throw new Error('Readies keep coming: a node never runs out of work');
      progressed = false;
      for (const node of this.nodes.values()) {
        if (!node.up) continue;
        const ready = node.core.ready();
        if (ready === null) continue;
        progressed = true;
        const disk = node.disk;
        if (ready.snapshot !== null) {
          disk.snapshot = ready.snapshot;
          disk.entries = [];
        }
        const first = ready.entries[0];
        if (first !== undefined) {
          disk.entries.length = first.index - disk.snapshot.meta.index - 1;
          disk.entries.push(...ready.entries);
        }
        if (ready.hardState !== null) disk.hardState = ready.hardState;
        const messages = [...ready.messages, ...ready.persistMessages];
        this.inFlight.push(...messages);
        this.sent.push(...messages);
        for (const entry of ready.committed) node.applied.set(entry.index, entry);
        node.readStates.push(...ready.readStates);
        node.core.advance(ready);
        if (ready.mustSync) node.core.persisted(ready);
      }
    }
  }

  #reachable(m: Message): boolean {
    const to = this.nodes.get(m.to);
    if (to === undefined || !to.up) return false;
    if (this.#isolated.has(m.from) || this.#isolated.has(m.to)) return false;
    return (this.#groups.get(m.from) ?? 0) === (this.#groups.get(m.to) ?? 0);
  }

  /**
   * Deliver in-flight messages round by round until none is left; `drop`
   * swallows matching ones. Returns how many were delivered.
   */
  stabilize(drop: MessageFilter = () => false, rewrite: (m: Message) => Message = (m) => m, maxRounds = 1000): number {
    let delivered = 0;
    for (let round = 0; round < maxRounds; round++) {
      this.flush();
      if (this.inFlight.length === 0) return delivered;
      const batch = this.inFlight;
      this.inFlight = [];
      for (const m of batch) {
        if (drop(m) || !this.#reachable(m)) continue;
        this.node(m.to).core.step(rewrite(m));
        delivered++;
      }
    }
    throw new Error(`cluster did not settle within ${maxRounds} rounds`);
  }

  /** Deliver only the in-flight messages matching `pick` (once), keeping the rest in flight. */
  deliver(pick: MessageFilter): number {
    this.flush();
    const chosen = this.inFlight.filter(pick);
    this.inFlight = this.inFlight.filter((m) => !pick(m));
    let delivered = 0;
    for (const m of chosen) {
      if (!this.#reachable(m)) continue;
      this.node(m.to).core.step(m);
      delivered++;
    }
    this.flush();
    return delivered;
  }

  tick(id: NodeId, times = 1): void {
    for (let i = 0; i < times; i++) this.core(id).tick();
    this.flush();
  }

  tickAll(times = 1): void {
    for (let i = 0; i < times; i++) for (const node of this.nodes.values()) if (node.up) node.core.tick();
    this.flush();
  }

  /**
   * Make `id` time out and settle the election it starts, again if it only
   * learnt a higher term the first time (up to `attempts`). Returns whether it leads.
   */
  elect(id: NodeId, drop?: MessageFilter, attempts = 3): boolean {
    const timeout = this.#config.electionTicks ?? 10;
    for (let i = 0; i < attempts && this.core(id).role !== 'leader'; i++) {
      this.tick(id, timeout);
      this.stabilize(drop);
    }
    return this.core(id).role === 'leader';
  }

  isolate(id: NodeId): void {
    this.#isolated.add(id);
  }

  partition(...groups: NodeId[][]): void {
    this.#groups.clear();
    groups.forEach((ids, g) => {
      for (const id of ids) this.#groups.set(id, g);
    });
  }

  heal(): void {
    this.#isolated.clear();
    this.#groups.clear();
  }

  /** Lose everything not persisted: the node restarts from its disk alone. */
  crash(id: NodeId): void {
    const node = this.node(id);
    node.up = false;
    this.inFlight = this.inFlight.filter((m) => m.from !== id);
  }

  restart(id: NodeId): void {
    const node = this.node(id);
    node.core = this.#start(id, node.disk);
    node.up = true;
    this.flush();
  }

  propose(id: NodeId, text: string): number {
    const result = this.core(id).propose(command(text));
    if (result.kind !== 'accepted') throw new Error(`proposal at ${id} not accepted: ${JSON.stringify(result)}`);
    this.flush();
    return result.index;
  }

  /** The state machine snapshot in these tests is just the applied index, padded to make chunks. */
  compact(id: NodeId, index: number, bytes = 100): void {
    const node = this.node(id);
    const data = new Uint8Array(bytes).fill(index % 251);
    const meta = node.core.compact(index, data);
    node.disk.entries = node.disk.entries.slice(index - node.disk.snapshot.meta.index);
    node.disk.snapshot = { meta, data };
  }

  leaders(): NodeId[] {
    return [...this.nodes.values()].filter((n) => n.up && n.core.role === 'leader').map((n) => n.id);
  }
}
