/**
 * PbftClient: the client side of PBFT as the daemon runs it on behalf of
 * dwcpctl (and of its own services). A request is signed with this member's
 * key, handed to the local replica (which sends it on to the primary) and,
 * while unanswered, relayed to every replica every retryMs (so each can time
 * the primary on it), and accepted once f + 1 replicas sent the same
 * result (ReplyCollector), each over its own authenticated channel: at least
 * one of them is honest.
 *
 * Lanes: PBFT orders at most one outstanding request per client, so the
 * daemon is `lanes` clients at once, `<member>/0` … `<member>/<lanes-1>`,
 * each with its own increasing timestamps; a call takes a free lane or waits
 * (bounded) for one.
 *
 * Invariants:
 * - A lane's timestamps strictly increase, across restarts too: a timestamp
 *   is the wall clock in microseconds, or the previous one plus one if the
 *   clock has not moved on (replicas remember each client's last timestamp
 *   and would otherwise answer a new request with an old reply).
 * - Every call ends by its deadline: with the agreed result, or a
 *   PbftClientError. A request that timed out may still execute later; its
 *   lane moves on to a newer timestamp, which replicas order after it.
 * - While waiting, the request is re-sent to every replica every `retryMs`
 *   (messages may be lost; a backup that never saw it cannot time the
 *   primary on it).
 *
 * Signing: the requests of all lanes that start while a batch gathers are
 * signed together as one client batch (encoding.ts sealClientBatch), so each
 * replica verifies one signature per batch instead of one per request; a
 * request carries the batch's signature and its own Merkle path, and is
 * still checked, relayed, ordered and answered on its own. A batch gathers
 * until the end of the turn its first request started in (setImmediate) and,
 * when the local replica has storage writes queued, until those are durable:
 * the replica's relay to the primary used to wait for those writes and now
 * leaves at once instead (PbftNode), so a request reaches the primary no
 * later, in a larger batch (at 64 clients in the bench, Ed25519
 * verifications per put 1.9 -> 1.6-1.7).
 */
import { MAX_CLIENT_BATCH_DEPTH, requestBytes, sealClientBatch, type RequestBody } from './encoding.ts';
import { DwcpError, type DwcpErrorCode } from '../../errors.ts';
import { ReplyCollector } from './reply-collector.ts';
import type { ClientRequest, ReplicaId, Reply, RequestResult } from './types.ts';

export type PbftClientErrorCode = Extract<DwcpErrorCode, 'timeout' | 'busy' | 'stopped' | 'too_large'>;

export class PbftClientError extends DwcpError<PbftClientErrorCode> {}

/** What the client needs from the local replica. */
export interface PbftClientReplica {
  /** Hands a request to the local replica (which relays it). */
  request(request: ClientRequest): RequestResult;
  /** Sends the request to every other replica again. */
  relay(request: ClientRequest): void;
  /**
   * Settles once every storage write the replica has queued so far is
   * durable. Optional: without it a client batch is one turn's requests.
   */
  durable?(): Promise<void>;
}

export interface PbftClientOptions {
  /** This member's name; lanes are named `<member>/<i>`. */
  readonly member: string;
  readonly members: readonly ReplicaId[];
  readonly f: number;
  readonly lanes: number;
  /** Calls waiting for a lane beyond this fail at once with `busy`. */
  readonly maxWaiting: number;
  readonly retryMs: number;
  /** Replicas refuse larger requests (requestBytes in encoding.ts); refused here at once with a clear error. */
  readonly maxRequestBytes: number;
  readonly sign: (bytes: Uint8Array) => Uint8Array;
  readonly replica: PbftClientReplica;
  readonly now?: () => number;
  readonly onResult?: (result: 'committed' | 'timeout' | 'dropped' | 'stopped', seconds: number) => void;
}

interface Lane {
  readonly id: string;
  timestamp: number;
  collector: ReplyCollector | null;
  done: ((result: Uint8Array) => void) | null;
}

export class PbftClient {
  readonly #opts: PbftClientOptions;
  readonly #lanes = new Map<string, Lane>();
  readonly #free: Lane[] = [];
  readonly #waiting: Array<(lane: Lane | null) => void> = [];
  /** Requests of this turn waiting to be signed together, with who waits for each. */
  #unsigned: Array<{ body: RequestBody; signed: (request: ClientRequest) => void; failed: (err: unknown) => void }> = [];
  /** The longest path a batch of all lanes needs: what a request's size is checked with. */
  readonly #maxPath: readonly Uint8Array[];
  #stopped = false;

  constructor(opts: PbftClientOptions) {
    if (!Number.isSafeInteger(opts.lanes) || opts.lanes < 1) throw new RangeError(`pbft client lanes must be a positive integer, got ${opts.lanes}`);
    this.#opts = opts;
    this.#maxPath = Array.from({ length: Math.min(MAX_CLIENT_BATCH_DEPTH, Math.ceil(Math.log2(opts.lanes))) }, () => PATH_PLACEHOLDER);
    for (let i = 0; i < opts.lanes; i++) {
      const lane: Lane = { id: `${opts.member}/${i}`, timestamp: 0, collector: null, done: null };
      this.#lanes.set(lane.id, lane);
      this.#free.push(lane);
    }
  }

  /** Lanes with a request in flight. */
  get inFlight(): number {
    return this.#lanes.size - this.#free.length;
  }

  /**
   * Orders `operation` through PBFT and returns the result f + 1 replicas
   * agree on. Read-only operations are ordered like writes.
   */
  async invoke(operation: Uint8Array, readOnly: boolean, timeoutMs: number): Promise<Uint8Array> {
    const started = performance.now();
    const size = requestBytes({ client: `${this.#opts.member}/${this.#lanes.size}`, timestamp: 0, operation, readOnly, signature: SIGNATURE_PLACEHOLDER, path: this.#maxPath });
    if (size > this.#opts.maxRequestBytes) {
      this.#opts.onResult?.('dropped', 0);
      throw new PbftClientError('too_large', `request of ${size} bytes is above the ${this.#opts.maxRequestBytes}-byte limit of a PBFT request in this federation`);
    }
    const deadline = AbortSignal.timeout(timeoutMs);
    const finish = (result: 'committed' | 'timeout' | 'dropped' | 'stopped') => this.#opts.onResult?.(result, (performance.now() - started) / 1000);
    const lane = await this.#acquire(deadline, timeoutMs).catch((err: unknown) => {
      if (err instanceof PbftClientError) finish(err.code === 'timeout' || err.code === 'stopped' ? err.code : 'dropped');
      throw err;
    });
    try {
      const result = await this.#run(lane, operation, readOnly, deadline, timeoutMs);
      finish('committed');
      return result;
    } catch (err) {
      if (err instanceof PbftClientError) finish(err.code === 'timeout' || err.code === 'stopped' ? err.code : 'dropped');
      throw err;
    } finally {
      this.#release(lane);
    }
  }

  /** A reply addressed to one of this member's lanes, from the local replica or from the peer its channel authenticated as `reply.from`. */
  onReply(reply: Reply): void {
    const lane = this.#lanes.get(reply.client);
    if (lane === undefined || lane.collector === null) return;
    const outcome = lane.collector.accept(reply);
    if (outcome.kind === 'done') lane.done?.(outcome.result);
  }

  stop(): void {
    this.#stopped = true;
    for (const wake of this.#waiting.splice(0)) wake(null);
    for (const lane of this.#lanes.values()) lane.done?.(STOPPED);
  }

  #nextTimestamp(lane: Lane): number {
    const now = Math.floor((this.#opts.now?.() ?? Date.now()) * 1000);
    lane.timestamp = Math.max(now, lane.timestamp + 1);
    return lane.timestamp;
  }

  async #run(lane: Lane, operation: Uint8Array, readOnly: boolean, deadline: AbortSignal, timeoutMs: number): Promise<Uint8Array> {
    const { members, f, replica, retryMs } = this.#opts;
    const timestamp = this.#nextTimestamp(lane);
    const request = await this.#signed({ client: lane.id, timestamp, operation, readOnly });
    if (this.#stopped) throw new PbftClientError('stopped', 'the PBFT client is stopping');
    lane.collector = new ReplyCollector({ client: lane.id, timestamp, members, f });
    const { promise, resolve } = Promise.withResolvers<Uint8Array | null>();
    lane.done = resolve;
    const onAbort = () => resolve(null);
    deadline.addEventListener('abort', onAbort, { once: true });
    const retry = setInterval(() => {
      // The local replica may have refused it (full) or lost it in a restart; the primary may sit on it, or
      // replies may have been lost (a peer re-sends its cached reply only when the request reaches it again).
      // A retransmission goes to every replica: the local one sends an accepted request to the primary alone,
      // and the backups must see it to time the primary on it.
      replica.request(request);
      replica.relay(request);
    }, retryMs);
    try {
      replica.request(request);
      const result = await promise;
      if (result === STOPPED || this.#stopped) throw new PbftClientError('stopped', 'the PBFT client is stopping');
      if (result === null) {
        throw new PbftClientError('timeout', `no ${f + 1} matching replies from the ${members.length} replicas within ${timeoutMs} ms (view change or too few replicas reachable); retry`);
      }
      return result;
    } finally {
      clearInterval(retry);
      deadline.removeEventListener('abort', onAbort);
      lane.collector = null;
      lane.done = null;
    }
  }

  /** `body` signed with the others that start while its batch gathers (see Signing above). */
  #signed(body: RequestBody): Promise<ClientRequest> {
    const { promise, resolve, reject } = Promise.withResolvers<ClientRequest>();
    if (this.#unsigned.length === 0) {
      const durable = this.#opts.replica.durable?.();
      const sign = () => setImmediate(() => this.#signTurn());
      // A failed write is the replica's to report (it stops); the batch is signed regardless and its calls end as the replica's do.
      if (durable === undefined) sign();
      else durable.then(sign, sign);
    }
    this.#unsigned.push({ body, signed: resolve, failed: reject });
    return promise;
  }

  #signTurn(): void {
    const waiting = this.#unsigned;
    this.#unsigned = [];
    let requests: ClientRequest[];
    try {
      requests = sealClientBatch(
        waiting.map((w) => w.body),
        this.#opts.sign,
      );
    } catch (err) {
      for (const w of waiting) w.failed(err);
      return;
    }
    waiting.forEach((w, i) => w.signed(requests[i] as ClientRequest));
  }

  #acquire(deadline: AbortSignal, timeoutMs: number): Promise<Lane> {
    if (this.#stopped) return Promise.reject(new PbftClientError('stopped', 'the PBFT client is stopping'));
    const lane = this.#free.pop();
    if (lane !== undefined) return Promise.resolve(lane);
    if (this.#waiting.length >= this.#opts.maxWaiting) {
      return Promise.reject(new PbftClientError('busy', `${this.#opts.lanes} PBFT requests in flight and ${this.#opts.maxWaiting} waiting; retry later`));
    }
    const { promise, resolve, reject } = Promise.withResolvers<Lane>();
    const wake = (l: Lane | null) => {
      deadline.removeEventListener('abort', onAbort);
      if (l === null) reject(new PbftClientError('stopped', 'the PBFT client is stopping'));
      else resolve(l);
    };
    const onAbort = () => {
      const i = this.#waiting.indexOf(wake);
      if (i >= 0) this.#waiting.splice(i, 1);
      reject(new PbftClientError('timeout', `no free PBFT client lane within ${timeoutMs} ms (${this.#opts.lanes} requests in flight)`));
    };
    deadline.addEventListener('abort', onAbort, { once: true });
    this.#waiting.push(wake);
    return promise;
  }

  #release(lane: Lane): void {
    const next = this.#waiting.shift();
    if (next !== undefined) next(lane);
    else this.#free.push(lane);
  }
}

const STOPPED = new Uint8Array(0);
const SIGNATURE_PLACEHOLDER = new Uint8Array(64);
const PATH_PLACEHOLDER = new Uint8Array(32);
