/**
 * The KV router over a real, in-process Raft group: three RaftNodes (real
 * cores and drivers, real KV state machines) joined by an in-memory network
 * that a test can cut, each with the daemon's KvService and KvRouter on top.
 *
 * What an operator relies on: a strong read that a follower cannot confirm
 * with a leader fails retryably and tells the user to read with
 * `--consistency serializable` (not `local`, which is the geo keyspace,
 * where the key does not exist); and that advice works: the serializable
 * read on the same follower returns the value. Also the routing table itself:
 * which backend each scope × level reaches, and what is refused before
 * anything is written; and the one retry loop of a write (RaftNode.retry),
 * which waits out the leader's own refusals that clear by themselves.
 */
import { afterEach, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import type { Libp2p } from 'libp2p';
import { kvServiceRegistration } from '../../src/admin/kv-service.ts';
import { fromStatus } from '../../src/admin/status.ts';
import { bootstrapState } from '../../src/consensus/raft/bootstrap.ts';
import { RaftNode } from '../../src/consensus/raft/node.ts';
import type { Message, NodeId, RaftConfig } from '../../src/consensus/raft/types.ts';
import { MemberDirectory } from '../../src/federation/members.ts';
import { createLogger } from '../../src/log.ts';
import { createMetrics, type DwcpMetrics } from '../../src/metrics/metrics.ts';
import type { KvResult } from '../../src/kv/command.ts';
import { KvRaftReplica } from '../../src/kv/raft-replica.ts';
import { KvRouter } from '../../src/kv/router.ts';
import { KvService, KvServiceError } from '../../src/kv/service.ts';

const log = createLogger('silent');
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One member: its Raft node, the KV client path over it, and the router in front. */
interface Seat {
  id: NodeId;
  node: RaftNode<KvResult>;
  router: KvRouter;
  metrics: DwcpMetrics;
}

/** Three founding voters; messages to or from a cut member are dropped (both ways, like a partition). */
class Group {
  readonly seats = new Map<NodeId, Seat>();
  readonly cut = new Set<NodeId>();
  /** While set, every node's persist waits for it (a slow disk): entries stay uncommitted. */
  disk: Promise<void> | null = null;

  constructor(ids: readonly NodeId[], config: Partial<RaftConfig> = {}) {
    for (const id of ids) {
      const metrics = createMetrics();
      const replica = new KvRaftReplica();
      const node: RaftNode<KvResult> = new RaftNode<KvResult>({
        id,
        persisted: bootstrapState(ids),
        store: {
          persist: async () => void (await this.disk),
          writeSnapshot: async (meta, source) => ({ meta, data: Buffer.concat(Array.from(source.chunks(), (piece) => Buffer.from(piece))) }),
          saveSnapshot: async () => {},
        },
        sender: { send: (to, messages) => this.#deliver(id, to, messages) },
        machine: replica,
        random: Math.random,
        config: { electionTicks: 10, heartbeatTicks: 1, ...config },
        tickMs: 10,
        snapshotEntries: 10_000,
        metrics: metrics.raft,
        log,
      });
      const members = new MemberDirectory([]);
      // No libp2p host: these tests write on the leader, so nothing is forwarded, and the service is never started.
      const raft = new KvService({ node, minorityGraceMs: 0, replica, host: {} as Libp2p, members, isConnected: () => true, metrics, log });
      this.seats.set(id, { id, node, router: new KvRouter({ raft, pbft: null, geo: null, members, nodeName: id }), metrics });
    }
    for (const seat of this.seats.values()) seat.node.start();
  }

  #deliver(from: NodeId, to: NodeId, messages: readonly Message[]): void {
    if (this.cut.has(from) || this.cut.has(to)) return;
    // Asynchronously, as a network would: the sender's Ready finishes first.
    setImmediate(() => {
      if (!this.cut.has(from) && !this.cut.has(to)) this.seats.get(to)?.node.receive(messages);
    });
  }

  /** The leader once every member agrees on it. */
  async leader(): Promise<Seat> {
    const deadline = AbortSignal.timeout(10_000);
    for (;;) {
      const leaders = [...this.seats.values()].filter((s) => s.node.isLeader);
      const [only] = leaders;
      if (leaders.length === 1 && only !== undefined && [...this.seats.values()].every((s) => s.node.leader === only.id)) return only;
      const changed = only === undefined ? delayOrFalse(10, deadline) : only.node.waitForChange(deadline);
      if (!(await changed)) throw new Error('no leader within 10 s');
    }
  }

  async stop(): Promise<void> {
    await Promise.all([...this.seats.values()].map((s) => s.node.stop()));
  }
}

async function delayOrFalse(ms: number, deadline: AbortSignal): Promise<boolean> {
  await new Promise((resolve) => setTimeout(resolve, ms));
  return !deadline.aborted;
}

/** Waits until `node` has applied `index`. */
async function applied(node: RaftNode<KvResult>, index: number): Promise<void> {
  const deadline = AbortSignal.timeout(10_000);
  while (node.applied < index) {
    if (!(await node.waitForChange(deadline))) throw new Error(`${node.id} did not apply ${index} within 10 s`);
  }
}

let group: Group | undefined;
afterEach(async () => {
  await group?.stop();
  group = undefined;
});

/** dwcp_raft_proposals_total{result} of one member. */
async function proposals(seat: Seat, result: string): Promise<number> {
  const { values } = await seat.metrics.raft.proposals.get();
  return values.find((v) => v.labels.result === result)?.value ?? 0;
}

const put = (key: string, value: string) => ({ op: { op: 'put', key, value: encoder.encode(value) } as const, level: 'strong' as const, scope: null, clientId: 'test', seq: 1, ttlMs: 0, timeoutMs: 5_000 });
const get = (key: string, level: 'strong' | 'serializable', timeoutMs: number) => ({ key, prefix: false, limit: 0, level, scope: null, timeoutMs });

describe('KvRouter over a Raft group', () => {
  it('fails a strong read a cut-off follower cannot confirm, naming --consistency serializable, and that read then returns the value', async () => {
    group = new Group(['a', 'b', 'c']);
    const leader = await group.leader();
    const written = await leader.router.write(put('greeting', 'hello'));
    expect(written).toMatchObject({ keyspace: 'log', leader: leader.id, result: { ok: true, op: 'put' } });
    const revision = written.keyspace === 'log' && written.result.ok ? written.result.revision : 0;
    const follower = [...group.seats.values()].find((s) => s !== leader)!;
    await applied(follower.node, revision);

    group.cut.add(follower.id);
    const strong = await follower.router.read(get('greeting', 'strong', 300)).then(
      () => null,
      (err: unknown) => err,
    );
    expect(strong).toBeInstanceOf(KvServiceError);
    const failure = strong as KvServiceError;
    expect([failure.code, failure.retryable]).toEqual(['unavailable', true]);
    expect(failure.message).toMatch(/^strong read not confirmed by a leader: .*; retry, or read this node's replica \(possibly stale\) with --consistency serializable$/);
    expect(failure.message).not.toContain('--consistency local');

    // The advice works: the same follower, still cut off, answers from its replica.
    const serializable = await follower.router.read(get('greeting', 'serializable', 300));
    expect(serializable.keyspace).toBe('log');
    if (serializable.keyspace !== 'log') return;
    expect(serializable.entries.map((e) => [e.key, decoder.decode(e.value), e.revision])).toEqual([['greeting', 'hello', revision]]);
    expect(serializable.appliedIndex).toBeGreaterThanOrEqual(revision);
  });

  it('gives dwcpctl the same advice through the admin Kv service: UNAVAILABLE, retryable, --consistency serializable', async () => {
    group = new Group(['a', 'b', 'c']);
    const leader = await group.leader();
    await leader.router.write(put('k', 'v'));
    const follower = [...group.seats.values()].find((s) => s !== leader)!;
    group.cut.add(follower.id);
    const registration = kvServiceRegistration({ router: follower.router, nodeName: follower.id, defaultTimeoutMs: 300, log });
    const handler = registration.implementation['Get'] as grpc.handleUnaryCall<object, object>;
    const call = (consistency: string) =>
      new Promise<{ error: Partial<grpc.StatusObject> | null; value: object | null | undefined }>((resolve) =>
        handler({ request: { key: 'k', consistency, scope: '', prefix: false, limit: 0, timeout_ms: 300 } } as grpc.ServerUnaryCall<object, object>, (error, value) =>
          resolve({ error: error as Partial<grpc.StatusObject> | null, value }),
        ),
      );
    const strong = await call('strong');
    expect(strong.error?.code).toBe(grpc.status.UNAVAILABLE);
    expect(strong.error?.details).toMatch(/--consistency serializable$/);
    // Retryable as structured status (the trailers dwcpctl reads), not as text.
    expect(fromStatus({ code: grpc.status.UNAVAILABLE, ...(strong.error?.metadata ? { metadata: strong.error.metadata } : {}) })).toMatchObject({ code: 'unavailable', retryable: true });
  });

  it('routes each scope and level to one backend, and refuses what a backend cannot serve before writing', async () => {
    group = new Group(['a', 'b', 'c']);
    const { router } = await group.leader();
    expect(router.route(null, 'strong').kind).toBe('raft');
    expect(router.route('datacenter', 'serializable').kind).toBe('raft');
    // Every member trusted: the federation scope is the same Raft log.
    expect(router.route('federation', 'strong').kind).toBe('raft');
    const refusal = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return err instanceof KvServiceError ? [err.code, err.message] : err;
      }
      return 'routed';
    };
    expect(refusal(() => router.route(null, 'local'))).toEqual(['invalid', 'consistency: this daemon runs no geo-distributed store; use strong']);
    expect(refusal(() => router.route('federation', 'eventual'))).toEqual([
      'invalid',
      "scope: federation is a scope of the consensus log; geo levels have none (for this node's replica of the log, read at consistency serializable)",
    ]);
    await expect(router.write({ ...put('k', 'v'), ttlMs: 1000 })).rejects.toThrow('ttl: only geo levels (quorum, local, eventual) expire values');
    await expect(router.write({ ...put('k', 'v'), clientId: 'c', seq: 0 })).rejects.toThrow('seq: must be 1 or more with a client_id');
    await expect(router.read({ ...get('k', 'strong', 1000), prefix: true, limit: 10_001 })).rejects.toThrow('limit 10001 is above the 10000-item maximum');
    expect(router.scopePlan()).toEqual([
      { scope: 'datacenter', protocol: 'raft', replicas: 3 },
      { scope: 'federation', protocol: 'raft', replicas: 3 },
    ]);
  });

  it('retries a write the leader refuses for now until it is accepted, and names the refusal when the deadline passes first', async () => {
    // One voter leads alone; an uncommitted tail of one entry makes the second write wait for the first to commit.
    group = new Group(['solo'], { maxUncommittedEntries: 1 });
    const { node, router } = await group.leader();
    await applied(node, 2);
    const slow = Promise.withResolvers<void>();
    group.disk = slow.promise;
    const first = router.write({ ...put('a', '1'), clientId: 'first' });
    const second = router.write({ ...put('b', '2'), clientId: 'second' });
    let settled = false;
    void second.finally(() => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(settled).toBe(false);
    group.disk = null;
    slow.resolve();
    const [a, b] = await Promise.all([first, second]);
    expect([a.keyspace === 'log' && a.result.ok, b.keyspace === 'log' && b.result.ok]).toEqual([true, true]);

    const stuck = Promise.withResolvers<void>();
    group.disk = stuck.promise;
    void router.write({ ...put('c', '3'), clientId: 'third' }).catch(() => {});
    const late = await router.write({ ...put('d', '4'), clientId: 'fourth', timeoutMs: 200 }).then(
      () => null,
      (err: unknown) => err,
    );
    expect(late).toBeInstanceOf(KvServiceError);
    expect([(late as KvServiceError).code, (late as KvServiceError).message]).toEqual([
      'unavailable',
      'write not committed within 200 ms: proposal refused for now: uncommitted_limit; retry',
    ]);
    group.disk = null;
    stuck.resolve();
  });

  it('counts a write whose deadline passes on the leader\'s refusal once as a proposal timeout, however often the one loop retried it', async () => {
    group = new Group(['solo'], { maxUncommittedEntries: 1 });
    const seat = await group.leader();
    await applied(seat.node, 2);
    const stuck = Promise.withResolvers<void>();
    group.disk = stuck.promise;
    void seat.router.write({ ...put('a', '1'), clientId: 'first' }).catch(() => {});
    const late = [1, 2].map((n) => seat.router.write({ ...put(`late${n}`, 'x'), clientId: `late${n}`, timeoutMs: 200 }).then(() => null, (err: unknown) => err));
    for (const err of await Promise.all(late)) expect((err as KvServiceError).message).toMatch(/proposal refused for now: uncommitted_limit/);
    expect(await proposals(seat, 'timeout')).toBe(2);
    group.disk = null;
    stuck.resolve();
    await applied(seat.node, 3);

    // Once per request, not per attempt: an attempt refused at every change (each commit wakes the loop) until the deadline counts one timeout.
    let attempts = 0;
    const refusedEach = seat.node.retry(
      AbortSignal.timeout(200),
      async () => {
        attempts++;
        void seat.node.propose(encoder.encode('noise'), 1_000).catch(() => {});
        return { retry: 'refused for the test', refused: true };
      },
      (last) => new Error(last),
    );
    await expect(refusedEach).rejects.toThrow('refused for the test');
    expect(attempts).toBeGreaterThan(1);
    expect(await proposals(seat, 'timeout')).toBe(3);
  });
});
