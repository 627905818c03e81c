/**
 * A Raft cluster of real dwcpd processes for fault tests, and a register
 * workload that records its history for the linearizability checker
 * (test/sim/linearizability.ts).
 *
 * RaftCluster: N daemons, each listing every other as a trusted member, so
 * the N found one Raft group. Each node's libp2p port is reserved once and
 * kept across restarts, so a restarted daemon is found again at the address
 * its peers were configured with (there is no discovery to tell them a new
 * one). Every process ever started is kept, so the log checks at the end
 * cover the incarnations that were killed too. The current leader is learnt
 * from the daemons' own "raft leader elected" log lines (events, not
 * polling), confirmed by one raft status call to the candidate.
 *
 * RegisterLoad: K clients, each with one operation in flight at a time,
 * putting unique values to a few keys and reading them with strong
 * consistency through a rotating daemon. A put that fails has an unknown
 * outcome; the client retries that same write (same client id, seq and
 * value: the state machine applies it at most once) on the next daemon
 * until it is acknowledged, and records it once, from its first invoke to
 * the acknowledgement; a write still unacknowledged when the load stops is
 * recorded with no response (it may or may not have happened). A failed get
 * tells nothing and is dropped. Times are performance.now() in the test
 * process, taken just before a call and just after its answer.
 */
import { createServer, type AddressInfo, type Server } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import * as grpc from '@grpc/grpc-js';
import { connectAdmin, AdminClientError, type AdminClient } from '../../src/admin/client.ts';
import type { RegisterOp } from '../sim/linearizability.ts';
import { Prng } from '../sim/prng.ts';
import { baseConfig, DaemonProcess, prepareNode, runCtl, startDaemon, tempRoot, writeConfig, type CtlResult, type LogLine, type NodeFiles } from './harness.ts';

/** Fast elections: a follower campaigns after 500–1000 ms without a leader. */
export const RAFT_TIMING = { tickMs: 50, electionTicks: 10, heartbeatTicks: 1 } as const;
/** The longest election timeout a follower may draw (electionTicks is randomised up to 2×). */
export const MAX_ELECTION_TIMEOUT_MS = 2 * RAFT_TIMING.electionTicks * RAFT_TIMING.tickMs;
/** Start-up of one daemon on a loaded 2-core machine: ~1.5 s idle, several seconds beside a busy cluster. */
const START_MS = 45_000;
/** A control call (status, a final read) may wait out one election or two on a loaded machine. */
const CONTROL_TIMEOUT_MS = 5_000;

/** Fast PBFT view changes: a backup gives up on the primary after 1 s (doubling per successive view change); small checkpoints so state transfer is reachable in a test. */
export const PBFT_TIMING = { tickMs: 50, viewChangeTicks: 20, checkpointInterval: 8, logWindow: 16, requestRetryMs: 500 } as const;

export interface ClusterOptions {
  /** Trust of node i (default trusted): any untrusted member makes the federation scope run on PBFT. */
  trust?: (i: number) => 'trusted' | 'untrusted';
  /** Extra environment of node i's processes (e.g. DWCP_TEST_BYZANTINE). */
  env?: (i: number) => NodeJS.ProcessEnv;
  /** Extra config of node i, merged over the cluster's (its `node` fields over the node section). */
  extra?: (i: number) => Record<string, unknown>;
}

/** Holds n distinct free ports at once, then frees them for the daemons to bind. */
async function reservePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<Server>((resolve, reject) => {
          const server = createServer();
          server.once('error', reject);
          server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => resolve(server));
        }),
    ),
  );
  const ports = servers.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** `promise`, or a rejection naming `what` (and the context) once `ms` pass first. */
export function within<T>(promise: Promise<T>, ms: number, what: string, context: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms\n${context()}`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Final readers are history clients FINAL_READER + node index, apart from the load's. */
export const FINAL_READER = 1000;
const BARRIER_KEY = 'barrier';
const BARRIER_BUDGET_MS = 15_000;

export interface FinalRead {
  readonly node: string;
  /** The highest applied index the node reported while answering. */
  readonly appliedIndex: number;
  readonly values: ReadonlyMap<string, string | null>;
}

export interface Settled {
  /** Log index of the barrier write. */
  readonly barrierIndex: number;
  readonly reads: readonly FinalRead[];
}

export interface Leader {
  readonly index: number;
  readonly name: string;
  readonly term: number;
}

export class RaftCluster {
  readonly nodes: readonly NodeFiles[];
  /** Every process started, in start order, for the log checks. */
  readonly processes: DaemonProcess[] = [];
  readonly #ports: readonly number[];
  readonly #current: (DaemonProcess | null)[];
  readonly #remove: () => Promise<void>;
  readonly #opts: ClusterOptions;

  private constructor(nodes: NodeFiles[], ports: number[], remove: () => Promise<void>, opts: ClusterOptions) {
    this.nodes = nodes;
    this.#opts = opts;
    this.#ports = ports;
    this.#current = nodes.map(() => null);
    this.#remove = remove;
  }

  /** Prepares `size` nodes named n1..nN and starts them all; resolves when every one serves. */
  static async start(prefix: string, size: number, opts: ClusterOptions = {}): Promise<RaftCluster> {
    const root = await tempRoot(prefix);
    const nodes = await Promise.all(Array.from({ length: size }, (_, i) => prepareNode(root.path, `n${i + 1}`)));
    const cluster = new RaftCluster(nodes, await reservePorts(size), root.remove, opts);
    try {
      await Promise.all(nodes.map((_, i) => cluster.startNode(i)));
    } catch (err) {
      await cluster.destroy();
      throw err;
    }
    return cluster;
  }

  get size(): number {
    return this.nodes.length;
  }

  /** Indexes of the nodes whose current process has served (running or paused), in index order. */
  get up(): number[] {
    return this.nodes.flatMap((_, i) => (this.#current[i] === null ? [] : [i]));
  }

  /** dwcpctl against node i's admin socket. */
  ctl(i: number, ...args: string[]): Promise<CtlResult> {
    return runCtl(['--socket', this.#node(i).socket, ...args]);
  }

  /** dwcpctl ARGS --json against node i, parsed; a failure (a non-zero exit, or anything on stderr) throws with what it said. */
  async ctlJson<T>(i: number, ...args: string[]): Promise<T> {
    const res = await this.ctl(i, ...args, '--json');
    if (res.code !== 0 || res.stderr !== '') throw new Error(`n${i + 1}: dwcpctl ${args.join(' ')} exited ${res.code}: ${res.stderr}`);
    return JSON.parse(res.stdout) as T;
  }

  daemon(i: number): DaemonProcess {
    const d = this.#current[i];
    if (d === null || d === undefined) throw new Error(`node n${i + 1} is not running`);
    return d;
  }

  #node(i: number): NodeFiles {
    const node = this.nodes[i];
    if (node === undefined) throw new RangeError(`no node at index ${i} of ${this.nodes.length}`);
    return node;
  }

  #address(i: number): string {
    return `/ip4/127.0.0.1/tcp/${this.#ports[i]}`;
  }

  /** Node i's config; `isolated` lists no members, so its gater refuses every peer. */
  config(i: number, isolated = false): Record<string, unknown> {
    const trust = (j: number) => this.#opts.trust?.(j) ?? 'trusted';
    const provider = (j: number) => (trust(j) === 'trusted' ? 'onprem' : 'aws');
    const members = isolated
      ? []
      : this.nodes.flatMap((m, j) =>
          j === i ? [] : [{ name: m.name, peerId: m.peerId, region: `r-${m.name}`, provider: provider(j), trust: trust(j), addrs: [this.#address(j)] }],
        );
    const config = baseConfig(this.#node(i), { logLevel: 'info', listen: [this.#address(i)], members, raft: RAFT_TIMING, pbft: PBFT_TIMING });
    const extra = this.#opts.extra?.(i) ?? {};
    return { ...config, ...extra, node: { ...(config['node'] as object), provider: provider(i), trust: trust(i), ...((extra['node'] as object | undefined) ?? {}) } };
  }

  async startNode(i: number): Promise<DaemonProcess> {
    if (this.#current[i] !== null) throw new Error(`node n${i + 1} is already running`);
    const d = await startDaemon(this.#node(i), this.config(i), this.#opts.env?.(i) ?? {});
    this.processes.push(d);
    // Counted as up only once it serves: the load would only hit a socket not there yet.
    await within(d.serving(), START_MS, `n${i + 1} serving`, () => d.describe());
    this.#current[i] = d;
    return d;
  }

  /** Sends `signal` and waits for the process to exit; a paused process is killed just the same by SIGKILL. */
  async stopNode(i: number, signal: 'SIGKILL' | 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const d = this.daemon(i);
    this.#current[i] = null;
    return d.stop(signal);
  }

  signal(i: number, signal: 'SIGSTOP' | 'SIGCONT'): void {
    this.daemon(i).child.kill(signal);
  }

  /** Rewrites node i's member list (empty when isolated) and reloads it with SIGHUP; resolves once the daemon says so. */
  async setIsolated(i: number, isolated: boolean): Promise<void> {
    const d = this.daemon(i);
    const after = d.lines.length;
    await writeConfig(this.#node(i), this.config(i, isolated));
    d.child.kill('SIGHUP');
    await d.waitForLog((l) => l.msg === 'configuration reloaded', `reload of n${i + 1}`, after);
  }

  /** One call on a fresh admin connection (a restarted daemon's socket is a new one), closed afterwards. */
  async admin<T>(i: number, call: (client: AdminClient) => Promise<T>): Promise<T> {
    const client = connectAdmin(this.#node(i).socket, { timeoutMs: CONTROL_TIMEOUT_MS, waitForReady: true });
    try {
      return await call(client);
    } finally {
      client.close();
    }
  }

  /**
   * The next leader among `among` (default: every running node) whose term is
   * above `aboveTerm`, as its own log announces it, confirmed by its status
   * (a leader already deposed again is skipped for the one after it).
   */
  async waitForLeader(aboveTerm = 0, among: readonly number[] = this.up): Promise<Leader> {
    if (among.length === 0) throw new Error('waitForLeader: no running node to wait on');
    let floor = aboveTerm;
    for (;;) {
      const elected = (l: LogLine) => l.msg === 'raft leader elected' && l.role === 'leader' && Number(l.term) > floor;
      const { index, line } = await Promise.race(
        among.map((i) => this.daemon(i).waitForLog(elected, `a leader above term ${floor}`).then((l) => ({ index: i, line: l }))),
      );
      const status = await this.admin(index, (c) => c.raft.status());
      if (status.role === 'leader') return { index, name: status.id, term: status.term };
      floor = Number(line.term);
    }
  }

  /**
   * After the load has stopped: one write through the group (once it
   * commits, every older entry that will ever commit has), then a strong read
   * of every key through every running node, each recorded in `history`.
   */
  async settle(keys: readonly string[], history: RegisterOp[]): Promise<Settled> {
    const barrier = await this.#barrier();
    const reads: FinalRead[] = [];
    for (const i of this.up) {
      const values = new Map<string, string | null>();
      let appliedIndex = 0;
      await this.admin(i, async (client) => {
        for (const key of keys) {
          const invoke = performance.now();
          const res = await client.kv
            .get({ key, consistency: 'strong', scope: 'datacenter', prefix: false, limit: 0, timeout_ms: CONTROL_TIMEOUT_MS })
            .catch((err: unknown) => {
              throw new Error(`final strong read of ${key} through n${i + 1} failed: ${errorText(err)}`);
            });
          const item = res.items[0];
          const value = item === undefined ? null : Buffer.from(item.value).toString();
          history.push({ client: FINAL_READER + i, kind: 'get', key, value, invoke, response: performance.now() });
          values.set(key, value);
          appliedIndex = Math.max(appliedIndex, res.applied_index);
        }
      });
      reads.push({ node: this.#node(i).name, appliedIndex, values });
    }
    return { barrierIndex: barrier, reads };
  }

  /** Puts the barrier key through the running nodes in turn until one acknowledges it; its log index. */
  async #barrier(): Promise<number> {
    const deadline = performance.now() + BARRIER_BUDGET_MS;
    const errors: string[] = [];
    for (let turn = 0; performance.now() < deadline; turn++) {
      const up = this.up;
      const i = up[turn % up.length] as number;
      try {
        const res = await this.admin(i, (c) => c.kv.put(BARRIER_KEY, Buffer.from('barrier'), { scope: 'datacenter', client_id: 'barrier', seq: 1, timeout_ms: CONTROL_TIMEOUT_MS }));
        return res.revision;
      } catch (err) {
        errors.push(`n${i + 1}: ${errorText(err)}`);
      }
    }
    throw new Error(`no node acknowledged the barrier write within ${BARRIER_BUDGET_MS} ms:\n${errors.join('\n')}`);
  }

  /** Every leader a daemon announced for itself, as term:name in term order: how many elections the run took. */
  leaders(): string {
    const byTerm = new Map<number, string>();
    for (const d of this.processes) {
      for (const l of d.lines) if (l.msg === 'raft leader elected' && l.role === 'leader') byTerm.set(Number(l.term), String(l.leader));
    }
    return [...byTerm]
      .sort(([a], [b]) => a - b)
      .map(([term, name]) => `${term}:${name}`)
      .join(' ');
  }

  /** Log lines of any incarnation that show a fault in the daemon itself. */
  problems(): string[] {
    return this.processes.flatMap((d) =>
      d.lines
        .filter((l) => l.level === 'error' || l.level === 'fatal' || /raft node stopped|invariant/i.test(String(l.msg)))
        .map((l) => `${d.node.name} (pid ${d.child.pid}): ${JSON.stringify(l)}`),
    );
  }

  /** Kills every process (paused ones too) and removes the directories. */
  async destroy(): Promise<void> {
    await Promise.all(this.processes.map((d) => d.stop('SIGKILL')));
    this.#current.fill(null);
    await this.#remove();
  }
}

// ---------------------------------------------------------------- load

export interface LoadOptions {
  readonly clients: number;
  readonly keys: readonly string[];
  readonly seed: number;
  /** Share of operations that are puts; the rest are strong gets. */
  readonly putRatio: number;
  /** The daemon-side timeout of each put and get. */
  readonly timeoutMs: number;
}

interface PendingPut {
  readonly key: string;
  readonly value: string;
  readonly seq: number;
  readonly invoke: number;
}

/** Pacing after a failed call, so a client facing a dead socket does not spin. */
const RETRY_PAUSE_MS = 25;

export class RegisterLoad {
  readonly ops: RegisterOp[] = [];
  readonly options: LoadOptions;
  readonly #cluster: RaftCluster;
  /** performance.now() when the load was created: the timeline's zero. */
  readonly t0 = performance.now();
  readonly #timeline: string[] = [];
  /** Response times of acknowledged puts. */
  readonly #acks: number[] = [];
  readonly #ackWaiters: { count: number; resolve: () => void }[] = [];
  /** Failed calls by gRPC status name ("none": failed before any call). */
  readonly failures = new Map<string, number>();
  /** Failures no fault should cause (a malformed request, an internal error), with their messages. */
  readonly unexpected: string[] = [];
  #clients: Promise<void>[] = [];
  #stopping = false;

  constructor(cluster: RaftCluster, options: LoadOptions) {
    this.#cluster = cluster;
    this.options = options;
  }

  start(): void {
    const prng = new Prng(this.options.seed);
    this.#clients = Array.from({ length: this.options.clients }, (_, c) => this.#runClient(c, prng.fork()));
    this.mark('load started');
  }

  /** Milliseconds since the load was created, for the timeline. */
  now(): number {
    return performance.now() - this.t0;
  }

  /** Notes an event on the timeline; returns its performance.now() time. */
  mark(what: string): number {
    const t = performance.now();
    this.#timeline.push(`${(t - this.t0).toFixed(0).padStart(6)} ms  ${what} (acked puts so far: ${this.#acks.length})`);
    return t;
  }

  /** Puts acknowledged with a response inside [from, to]. */
  ackedBetween(from: number, to = Infinity): number {
    return this.#acks.filter((t) => t >= from && t <= to).length;
  }

  /** Resolves once `n` more puts are acknowledged; rejects after `timeoutMs` with the history summary. */
  waitForAcks(n: number, what: string, timeoutMs: number): Promise<void> {
    const { promise, resolve } = Promise.withResolvers<void>();
    // A waiter left behind by a timeout resolves later into nothing.
    this.#ackWaiters.push({ count: this.#acks.length + n, resolve });
    return within(promise, timeoutMs, `${n} more acknowledged puts (${what})`, () => this.summary());
  }

  /** Stops the clients after their current call; a write still unacknowledged is recorded with an unknown outcome. */
  async stop(): Promise<void> {
    this.#stopping = true;
    await Promise.all(this.#clients);
    this.mark('load stopped');
  }

  summary(): string {
    const puts = this.ops.filter((o) => o.kind === 'put');
    const unknown = puts.filter((o) => o.response === null).length;
    const gets = this.ops.length - puts.length;
    const failures = [...this.failures].map(([code, n]) => `${code}: ${n}`).join(', ');
    return [
      `seed ${this.options.seed}; ${puts.length} puts (${unknown} with unknown outcome), ${gets} gets; failed calls by code: {${failures}}`,
      `leaders by term: ${this.#cluster.leaders()}`,
      ...this.#timeline,
      ...(this.unexpected.length > 0 ? ['unexpected failures:', ...this.unexpected.slice(0, 10)] : []),
    ].join('\n');
  }

  #ack(t: number): void {
    this.#acks.push(t);
    for (let i = this.#ackWaiters.length - 1; i >= 0; i--) {
      const w = this.#ackWaiters[i] as { count: number; resolve: () => void };
      if (this.#acks.length >= w.count) {
        this.#ackWaiters.splice(i, 1);
        w.resolve();
      }
    }
  }

  #fail(err: unknown): void {
    const code = err instanceof AdminClientError ? err.grpcCode : null;
    const label = code === null ? 'none' : grpc.status[code];
    this.failures.set(label, (this.failures.get(label) ?? 0) + 1);
    // Anything but "try again" (and a client-side deadline, which is the same thing seen from here) is a bug.
    if (code !== grpc.status.UNAVAILABLE && code !== grpc.status.DEADLINE_EXCEEDED) this.unexpected.push(`${this.now().toFixed(0)} ms: ${errorText(err)}`);
  }

  async #runClient(c: number, prng: Prng): Promise<void> {
    const { keys, putRatio, timeoutMs, seed } = this.options;
    const clientId = `load-${seed}-${c}`;
    // One channel per daemon process: a restarted daemon gets a new one, a failed call on a live one keeps it.
    const connections = new Map<DaemonProcess, AdminClient>();
    const connection = (d: DaemonProcess) => {
      let client = connections.get(d);
      if (client === undefined) connections.set(d, (client = connectAdmin(d.node.socket, { timeoutMs: CONTROL_TIMEOUT_MS })));
      return client;
    };
    let seq = 0;
    let turn = c;
    let pending: PendingPut | null = null;
    while (!this.#stopping) {
      const up = this.#cluster.up;
      if (up.length === 0) {
        await delay(RETRY_PAUSE_MS);
        continue;
      }
      const target = this.#cluster.daemon(up[turn++ % up.length] as number);
      if (pending === null && prng.chance(putRatio)) {
        seq++;
        pending = { key: prng.pick(keys), value: `c${c}-${seq}`, seq, invoke: performance.now() };
      }
      const client = connection(target);
      try {
        if (pending !== null) {
          const { key, value } = pending;
          await client.kv.put(key, Buffer.from(value), { scope: 'datacenter', client_id: clientId, seq: pending.seq, timeout_ms: timeoutMs });
          const response = performance.now();
          this.ops.push({ client: c, kind: 'put', key, value, invoke: pending.invoke, response });
          this.#ack(response);
          pending = null;
        } else {
          const key = prng.pick(keys);
          const invoke = performance.now();
          const res = await client.kv.get({ key, consistency: 'strong', scope: 'datacenter', prefix: false, limit: 0, timeout_ms: timeoutMs });
          const item = res.items[0];
          this.ops.push({ client: c, kind: 'get', key, value: item === undefined ? null : Buffer.from(item.value).toString(), invoke, response: performance.now() });
        }
      } catch (err) {
        this.#fail(err);
        if (target.child.exitCode !== null || target.child.signalCode !== null) {
          client.close();
          connections.delete(target);
        }
        await delay(RETRY_PAUSE_MS);
      }
    }
    if (pending !== null) this.ops.push({ client: c, kind: 'put', key: pending.key, value: pending.value, invoke: pending.invoke, response: null });
    for (const client of connections.values()) client.close();
  }
}
