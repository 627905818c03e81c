/**
 * KvService: the client path of the key-value store's Raft log on one daemon
 * (which scope runs on it is the router's choice, src/kv/router.ts), and the
 * leader's side of write forwarding.
 *
 * A write is proposed on the Raft leader: here if this node leads, otherwise
 * forwarded to the leader over `/dwcp/kv/2.0.0` (one long-lived stream per
 * leader, requests tagged with ids and answered in any order; each frame
 * carries every request, or response, one side had in one event-loop turn:
 * forward-batch.ts). A strong read
 * waits for a ReadIndex barrier and then reads this node's state machine; a
 * serializable read skips the barrier.
 *
 * Invariants:
 * - Every call ends by its deadline, with a result or a DwcpError (errors.ts)
 *   whose `retryable` says whether the same request may still succeed.
 * - A write is retried inside its deadline across leader changes with the
 *   same (client id, seq), so the state machine applies it at most once.
 * - Only a trusted, connected member may forward to us; anything else on the
 *   forward protocol is refused with its peer ID logged.
 * - This node only answers a forward while it is leader; it never forwards
 *   a forwarded request again (no loops).
 */
import type { Connection, Stream } from '@libp2p/interface';
import type { Libp2p } from 'libp2p';
import { peerIdFromString } from '@libp2p/peer-id';
import type { Logger } from '../log.ts';
import type { DwcpMetrics } from '../metrics/metrics.ts';
import type { MemberDirectory } from '../federation/members.ts';
import { FrameError, FramedStream, frameEventsFor, type FrameEvents } from '../net/framing.ts';
import type { MessageSchema } from '../net/schema.ts';
import type { Attempt, RaftNode } from '../consensus/raft/node.ts';
import { RaftClientError } from '../consensus/raft/node.ts';
import type { KvCommand, KvForwardErrorCode, KvForwardRequest, KvForwardResponse, KvResult } from './command.ts';
import {
  forwardRequestBytes,
  forwardResponseBytes,
  KV_FORWARD_MAX_BATCH,
  KV_FORWARD_MAX_FRAME_BYTES,
  KV_FORWARD_MAX_TIMEOUT_MS,
  KV_FORWARD_PROTOCOL,
  KvForwardRequestsSchema,
  KvForwardResponsesSchema,
  encodeKvCommand,
} from './command.ts';
import { ForwardBatch } from './forward-batch.ts';
import type { ConsensusLevel } from './consistency.ts';
import type { KvRaftReplica } from './raft-replica.ts';
import { readMachine, type KvKeyRead, type KvReadOutcome } from './read.ts';
import { DwcpError, type DwcpErrorCode } from '../errors.ts';
import { deadline } from '../deadline.ts';

export type KvServiceErrorCode = Extract<DwcpErrorCode, 'unavailable' | 'invalid' | 'unsupported'>;

/** A refusal of the KV path itself; failures of the logs beneath (RaftClientError, PbftClientError, a forward) pass through as they are. */
export class KvServiceError extends DwcpError<KvServiceErrorCode> {}

export interface KvWriteOutcome {
  result: KvResult;
  /** The node that committed the write: the Raft leader, or the PBFT primary. */
  leader: string;
}

/** A read of the log's keyspace; the limit is already resolved and checked (the router does it for every keyspace). */
export interface KvLogRead extends KvKeyRead {
  consistency: ConsensusLevel;
  timeoutMs: number;
}

export interface KvServiceOptions {
  /** Null on an untrusted node, which has no Raft group (it still answers forwards, with a refusal). */
  node: RaftNode<KvResult> | null;
  /** After start, how long a write without a leader waits before a minority partition fails it at once (a few election timeouts). */
  minorityGraceMs: number;
  replica: KvRaftReplica;
  host: Libp2p;
  members: MemberDirectory;
  isConnected(peerId: string): boolean;
  metrics: DwcpMetrics;
  log: Logger;
}


const FORWARD_OPEN_TIMEOUT_MS = 5000;
/** Room left in a frame for the batch's own tags and lengths. */
const FORWARD_BATCH_BYTES = KV_FORWARD_MAX_FRAME_BYTES - 1024;
/** Streams a peer may hold open to us; a healthy follower holds one per leader it forwards to. */
const MAX_INBOUND_FORWARDS = 16;
/** Forwarded writes one stream may have in flight; beyond it they are answered `dropped` at once. */
const MAX_FORWARDS_IN_FLIGHT = 4096;

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class KvService {
  readonly #opts: KvServiceOptions;
  readonly #events: FrameEvents;
  /** One multiplexed stream per leader we forward to, by peer ID (opening or open). */
  readonly #links = new Map<string, Promise<ForwardLink>>();
  /** The same links once open, dropped when they fail (and checked per use): a write forwarded on one takes no promise or deadline listener to reach it. */
  readonly #openLinks = new Map<string, ForwardLink>();
  #stopped = false;
  #startedAt = Number.POSITIVE_INFINITY;

  constructor(opts: KvServiceOptions) {
    this.#opts = opts;
    this.#events = frameEventsFor(opts.metrics, KV_FORWARD_PROTOCOL);
  }

  async start(): Promise<void> {
    this.#startedAt = performance.now();
    await this.#opts.host.handle(KV_FORWARD_PROTOCOL, (stream, connection) => void this.#onForward(stream, connection), {
      maxInboundStreams: MAX_INBOUND_FORWARDS,
    });
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#opts.host.unhandle(KV_FORWARD_PROTOCOL).catch(() => {});
    for (const link of this.#links.values()) void link.then((l) => l.close(new Error('kv service stopping')), () => {});
    this.#links.clear();
    this.#openLinks.clear();
  }

  /** Whether this node holds a replica of the Raft log (it is trusted). */
  get hasLog(): boolean {
    return this.#opts.node !== null;
  }

  /** Commits a write (put, delete or cas) and returns the state machine's result. */
  async write(command: KvCommand, timeoutMs: number): Promise<KvWriteOutcome> {
    const node = this.#node();
    const data = encodeKvCommand(command);
    // Cleared when the write ends (deadline.ts: an AbortSignal.timeout kept every write's objects alive for timeoutMs).
    const limit = deadline(timeoutMs);
    const remaining = remainingOf(timeoutMs);
    // Each attempt goes where the leader is now; RaftNode.retry re-runs it at the next change (the one retry loop).
    const attempt = async (): Promise<Attempt<KvWriteOutcome>> => {
      if (this.#stopped) throw new KvServiceError('unavailable', 'the daemon is stopping');
      const leader = node.leader;
      try {
        if (node.isLeader) return { done: { result: await node.propose(data, remaining(), limit.signal), leader: node.id } };
        if (leader !== null) return { done: { result: await this.#forward(leader, data, remaining(), limit.signal), leader } };
      } catch (err) {
        // A leader change, a lost entry, a dropped forward: the next change runs the attempt again; anything else is the answer.
        if (!(err instanceof DwcpError) || !err.retryable) throw err;
        return { retry: err.message, refused: err instanceof RaftClientError && err.refusedForNow };
      }
      const cutOff = this.#minority(node);
      if (cutOff !== null) throw new KvServiceError('unavailable', `write refused at once: ${cutOff}; retry once the partition heals`);
      return { retry: 'no leader is known (election in progress, or no quorum reachable)' };
    };
    try {
      return await node.retry(limit.signal, attempt, (last) => new KvServiceError('unavailable', `write not committed within ${timeoutMs} ms: ${last}; retry`));
    } finally {
      limit.done();
    }
  }

  /**
   * Reads one key (or a prefix): strong after a ReadIndex barrier, so it sees
   * every write acknowledged before it began; serializable at once, from this
   * node's replica (possibly stale, but served with no leader).
   */
  async read(req: KvLogRead): Promise<KvReadOutcome> {
    const node = this.#node();
    if (req.consistency === 'strong') {
      try {
        await node.readBarrier(req.timeoutMs);
      } catch (err) {
        if (err instanceof RaftClientError) {
          // serializable, not local: local is the geo keyspace, where a key written here does not exist.
          throw new KvServiceError(
            'unavailable',
            `strong read not confirmed by a leader: ${err.message}; retry, or read this node's replica (possibly stale) with --consistency serializable`,
            { cause: err },
          );
        }
        throw err;
      }
    }
    return readMachine(this.#opts.replica.machine, req, node.applied);
  }

  /** Voters of the Raft group (0 on an untrusted node), for status. */
  get voters(): number {
    return this.#opts.node?.status().membership.voters.length ?? 0;
  }

  /**
   * Why this node cannot be on the majority side, or null: with no leader
   * and fewer than a majority of voters connected (this node counted), no
   * leader can appear here before the partition heals, so a write fails at
   * once rather than at its deadline. Not in the first `minorityGraceMs`
   * after start, while connections are still being made.
   */
  #minority(node: RaftNode<KvResult>): string | null {
    if (performance.now() - this.#startedAt < this.#opts.minorityGraceMs) return null;
    const voters = node.status().membership.voters;
    const peerIds = new Map(this.#opts.members.list().map((m) => [m.name, m.peerId]));
    const reachable = voters.filter((v) => v === node.id || (peerIds.has(v) && this.#opts.isConnected(peerIds.get(v) ?? ''))).length;
    const majority = Math.floor(voters.length / 2) + 1;
    return reachable >= majority ? null : `no Raft quorum reachable: ${reachable} of ${voters.length} voters connected to ${node.id}, a majority is ${majority}`;
  }

  #node(): RaftNode<KvResult> {
    const node = this.#opts.node;
    if (node === null) {
      throw new KvServiceError('unsupported', 'this node is untrusted and holds no replica of the trusted members\' Raft log; ask a trusted member');
    }
    return node;
  }

  // ---------------------------------------------------------------- forwarding

  #framed<In, Out>(stream: Stream, inbound: MessageSchema<In>, outbound: MessageSchema<Out>): FramedStream<In, Out> {
    return new FramedStream(stream, { protocol: KV_FORWARD_PROTOCOL, maxFrameBytes: KV_FORWARD_MAX_FRAME_BYTES, inbound, outbound, events: this.#events });
  }

  async #forward(leader: string, command: Uint8Array, timeoutMs: number, deadline: AbortSignal): Promise<KvResult> {
    const member = this.#opts.members.list().find((m) => m.name === leader);
    if (member === undefined) throw new DwcpError('not_leader', `leader ${leader} is not in this node's member list`);
    if (!this.#opts.isConnected(member.peerId)) throw new DwcpError('no_quorum', `leader ${leader} is not connected`);
    const open = this.#openLinks.get(member.peerId);
    const link = open?.open === true ? open : await this.#linkTo(member.peerId, leader, deadline);
    const response = await link.request(command, Math.min(timeoutMs, KV_FORWARD_MAX_TIMEOUT_MS), deadline);
    if (response.kind === 'result') return response.result;
    const { code, message, leaderHint } = response.error;
    throw new DwcpError(code, `leader ${leader} answered ${code}: ${message}${leaderHint ? ` (leader hint ${leaderHint})` : ''}`, leaderHint ? { details: { leader: leaderHint } } : {});
  }

  /** The shared stream to a leader, opened on first use and replaced once it fails. */
  async #linkTo(peerId: string, leader: string, deadline: AbortSignal): Promise<ForwardLink> {
    let opening = this.#links.get(peerId);
    if (opening === undefined) {
      opening = (async () => {
        try {
          const stream = await this.#opts.host.dialProtocol(peerIdFromString(peerId), KV_FORWARD_PROTOCOL, {
            signal: AbortSignal.timeout(FORWARD_OPEN_TIMEOUT_MS),
          });
          let open: ForwardLink | null = null;
          const link = new ForwardLink(this.#framed(stream, KvForwardResponsesSchema, KvForwardRequestsSchema), leader, () => {
            if (this.#links.get(peerId) === opening) this.#links.delete(peerId);
            if (open !== null && this.#openLinks.get(peerId) === open) this.#openLinks.delete(peerId);
          });
          if (link.open && !this.#stopped) this.#openLinks.set(peerId, (open = link));
          return link;
        } catch (err) {
          this.#links.delete(peerId);
          throw new DwcpError('no_quorum', `cannot reach leader ${leader}: ${errorText(err)}`);
        }
      })();
      this.#links.set(peerId, opening);
    }
    const { promise, resolve, reject } = Promise.withResolvers<ForwardLink>();
    const abort = () => reject(new DwcpError('timeout', `no stream to leader ${leader} before the deadline`));
    deadline.addEventListener('abort', abort, { once: true });
    opening.then(resolve, reject).finally(() => deadline.removeEventListener('abort', abort));
    return promise;
  }

  async #onForward(stream: Stream, connection: Connection): Promise<void> {
    const peerId = connection.remotePeer.toString();
    const member = this.#opts.members.get(peerId);
    const { log } = this.#opts;
    if (member === undefined || member.trust !== 'trusted' || !this.#opts.isConnected(peerId)) {
      log.warn({ peerId, member: member?.name }, 'kv forward from a peer that is not a trusted connected member refused');
      stream.abort(new Error('not a trusted member'));
      return;
    }
    const framed = this.#framed(stream, KvForwardRequestsSchema, KvForwardResponsesSchema);
    const replies = new ForwardBatch<KvForwardResponse>({
      write: (responses) => framed.write(responses),
      maxItems: KV_FORWARD_MAX_BATCH,
      maxBytes: FORWARD_BATCH_BYTES,
      sizeOf: forwardResponseBytes,
      failed: (err, responses) => log.debug({ peer: member.name, responses: responses.length, err: errorText(err) }, 'kv forward responses not delivered'),
    });
    let inFlight = 0;
    try {
      for await (const requests of framed) {
        for (const request of requests) {
          if (inFlight >= MAX_FORWARDS_IN_FLIGHT) {
            replies.push({ id: request.id, kind: 'error', error: { code: 'dropped', message: `more than ${MAX_FORWARDS_IN_FLIGHT} forwarded writes in flight`, leaderHint: '' } });
            continue;
          }
          inFlight++;
          void this.#serveForward(request)
            .then((response) => replies.push(response))
            .catch((err: unknown) => log.warn({ peer: member.name, err: errorText(err) }, 'kv forward not served'))
            .finally(() => inFlight--);
        }
      }
    } catch (err) {
      // FramedStream counted the rejection and reset the stream.
      if (err instanceof FrameError) log.warn({ peer: member.name, err: err.message }, 'kv forward request refused');
      // Reset, or the connection went: answers still due are lost, and the forwarder retries them (same client id and seq).
      else log.debug({ peer: member.name, err: errorText(err) }, 'kv forward stream lost');
    }
  }

  async #serveForward(request: KvForwardRequest): Promise<KvForwardResponse> {
    const node = this.#opts.node;
    const { id } = request;
    const error = (code: KvForwardErrorCode, message: string): KvForwardResponse => ({
      id,
      kind: 'error',
      error: { code, message, leaderHint: node?.leader ?? '' },
    });
    if (node === null) return error('invalid', 'this node has no Raft group');
    const limit = deadline(request.timeoutMs);
    const remaining = remainingOf(request.timeoutMs);
    // While this node leads, a refusal that clears by itself is waited out here, beside the leader's state,
    // rather than sent back for the follower to retry across the network at every change.
    const attempt = async (): Promise<Attempt<KvForwardResponse>> => {
      if (!node.isLeader) return { done: error('not_leader', `${node.id} is not the leader`) };
      try {
        return { done: { id, kind: 'result', result: await node.propose(request.command, remaining(), limit.signal) } };
      } catch (err) {
        if (err instanceof RaftClientError && err.code === 'dropped') return { retry: err.message, refused: err.refusedForNow };
        throw err;
      }
    };
    const timedOut = (last: string) => new RaftClientError('timeout', `proposal not accepted within ${request.timeoutMs} ms (${last})`, node.leader);
    try {
      return await node.retry(limit.signal, attempt, timedOut);
    } catch (err) {
      if (!(err instanceof RaftClientError)) return error('invalid', errorText(err));
      switch (err.code) {
        case 'not_leader':
        case 'no_leader':
          return error('not_leader', err.message);
        case 'timeout':
          return error('timeout', err.message);
        case 'rejected':
          return error('invalid', err.message);
        default:
          return error('dropped', err.message);
      }
    } finally {
      limit.done();
    }
  }
}

/** Milliseconds left of `timeoutMs` from now on (at least 1, as a timeout must be positive). */
function remainingOf(timeoutMs: number): () => number {
  const started = performance.now();
  return () => Math.max(1, Math.ceil(timeoutMs - (performance.now() - started)));
}

/**
 * Requests to one leader over one long-lived stream, each tagged with an id
 * and answered in any order: a forwarded write costs a share of a frame each
 * way (the requests of one turn travel together), not a stream open (which
 * costs a peer-store update and a protocol negotiation in libp2p). Any
 * failure of the stream fails every request on it (retryable) and retires
 * the link; the next request opens a new one.
 */
class ForwardLink {
  readonly #framed: FramedStream<KvForwardResponse[], KvForwardRequest[]>;
  readonly #leader: string;
  readonly #retire: () => void;
  readonly #pending = new Map<number, PromiseWithResolvers<KvForwardResponse>>();
  readonly #outbox: ForwardBatch<KvForwardRequest>;
  #nextId = 0;
  #failure: Error | null = null;

  constructor(framed: FramedStream<KvForwardResponse[], KvForwardRequest[]>, leader: string, retire: () => void) {
    this.#framed = framed;
    this.#leader = leader;
    this.#retire = retire;
    this.#outbox = new ForwardBatch<KvForwardRequest>({
      // A request whose caller gave up before the frame left is not sent.
      write: (requests) => {
        const live = requests.filter((r) => this.#pending.has(r.id));
        return live.length === 0 ? Promise.resolve() : this.#framed.write(live);
      },
      maxItems: KV_FORWARD_MAX_BATCH,
      maxBytes: FORWARD_BATCH_BYTES,
      sizeOf: forwardRequestBytes,
      failed: (err) => this.close(err instanceof Error ? err : new Error(String(err))),
    });
    void this.#readLoop();
  }

  /** False once the stream failed or was closed (it is then retired: a new write opens another). */
  get open(): boolean {
    return this.#failure === null;
  }

  async request(command: Uint8Array, timeoutMs: number, deadline: AbortSignal): Promise<KvForwardResponse> {
    if (this.#failure !== null) throw new DwcpError('no_quorum', `stream to leader ${this.#leader} failed: ${this.#failure.message}`);
    // A listener added to a signal that already fired never runs: a deadline spent on the way here would never end the wait.
    if (deadline.aborted) throw new DwcpError('timeout', `the deadline passed before the write was forwarded to leader ${this.#leader}`);
    // Ids wrap at 2^32; a request is long answered or timed out before its id comes round again.
    const id = (this.#nextId = (this.#nextId + 1) >>> 0);
    const waiter = Promise.withResolvers<KvForwardResponse>();
    this.#pending.set(id, waiter);
    const abort = () => {
      this.#pending.delete(id);
      waiter.reject(new DwcpError('timeout', `leader ${this.#leader} did not answer before the deadline`));
    };
    deadline.addEventListener('abort', abort, { once: true });
    try {
      this.#outbox.push({ id, command, timeoutMs });
      return await waiter.promise;
    } finally {
      this.#pending.delete(id);
      deadline.removeEventListener('abort', abort);
    }
  }

  close(err: Error): void {
    if (this.#failure === null) this.#failure = err;
    this.#retire();
    this.#framed.stream.abort(err);
    for (const waiter of this.#pending.values()) {
      waiter.reject(new DwcpError('no_quorum', `stream to leader ${this.#leader} failed: ${err.message}`));
    }
    this.#pending.clear();
  }

  async #readLoop(): Promise<void> {
    try {
      for await (const responses of this.#framed) for (const response of responses) this.#pending.get(response.id)?.resolve(response);
      this.close(new Error('leader closed the stream'));
    } catch (err) {
      this.close(err instanceof Error ? err : new Error(String(err)));
    }
  }
}
