/**
 * KvRouter: where a key-value request goes. Scope × consistency level picks
 * exactly one backend (route):
 *
 *   level \ scope             datacenter     federation
 *   strong, serializable      Raft log       PBFT log when any member is untrusted, else the same Raft log
 *   quorum, local, eventual   geo keyspace (no scope: its keys are replicated to every region)
 *
 * The router also owns what follows from that choice and is the same for
 * every caller: which requests a backend cannot serve (compare-and-swap and
 * scopes in the geo keyspace, TTLs in the logs), the range limit, and the
 * write identity (client id, seq) the logs deduplicate by. The admin socket
 * only translates the wire to these requests and the answers back.
 *
 * Invariant: a request is refused (KvServiceError 'invalid' or
 * 'unsupported') before anything is written when its backend cannot serve it
 * as asked; nothing falls through to another keyspace.
 */
import { randomBytes } from 'node:crypto';
import type { MemberDirectory } from '../federation/members.ts';
import type { ScopeStatus } from '../federation/status.ts';
import { KV_MAX_CLIENT_ID, KV_RANGE_MAX_LIMIT, type KV_WRITE_OPS, type KvOp } from './command.ts';
import { isGeoLevel, type GeoLevel, type KvReadLevel, type KvScope, type KvWriteLevel } from './consistency.ts';
import type { KvGeoKeyspace, KvGeoReadOutcome, KvGeoWriteOutcome } from './geo-keyspace.ts';
import type { KvPbftLog } from './pbft-log.ts';
import type { KvReadOutcome } from './read.ts';
import { KvServiceError, type KvService, type KvWriteOutcome } from './service.ts';

/** The one backend a request goes to. */
export type KvBackend =
  | { readonly kind: 'raft'; readonly log: KvService }
  | { readonly kind: 'pbft'; readonly log: KvPbftLog }
  | { readonly kind: 'geo'; readonly keyspace: KvGeoKeyspace; readonly level: GeoLevel };

export type KvWriteOp = Extract<KvOp, { op: (typeof KV_WRITE_OPS)[number] }>;

export interface KvWriteRequest {
  op: KvWriteOp;
  level: KvWriteLevel;
  /** null: none named (the datacenter log; the geo keyspace has no scope). */
  scope: KvScope | null;
  /** '' asks for no retry safety across calls: the router assigns a daemon-wide client and sequence. */
  clientId: string;
  seq: number;
  /** Geo keyspace only; 0: the value never expires. */
  ttlMs: number;
  timeoutMs: number;
}

export interface KvReadRequest {
  key: string;
  prefix: boolean;
  /** Most items of a prefix read; 0: the maximum. */
  limit: number;
  level: KvReadLevel;
  scope: KvScope | null;
  timeoutMs: number;
}

export type KvWriteAnswer = ({ keyspace: 'log' } & KvWriteOutcome) | ({ keyspace: 'geo' } & KvGeoWriteOutcome);
export type KvReadAnswer = ({ keyspace: 'log' } & KvReadOutcome) | ({ keyspace: 'geo' } & KvGeoReadOutcome);

export interface KvRouterOptions {
  /** The Raft log's client path (it refuses every call on an untrusted node, which holds no replica). */
  raft: KvService;
  /** Set when any member is untrusted: the federation scope runs on PBFT. */
  pbft: KvPbftLog | null;
  /** null: this daemon runs no geo store, and geo levels are refused. */
  geo: KvGeoKeyspace | null;
  /** Read live, to tell an operator why the federation scope is unavailable after a member list change. */
  members: MemberDirectory;
  /** This node's member name, the stem of the anonymous client id. */
  nodeName: string;
}

export class KvRouter {
  readonly #opts: KvRouterOptions;
  readonly #anonymousClient: string;
  #anonymousSeq = 0;

  constructor(opts: KvRouterOptions) {
    this.#opts = opts;
    this.#anonymousClient = `${opts.nodeName}-admin-${randomBytes(4).toString('hex')}`;
  }

  /** The backend for `scope` at `level`, or a KvServiceError saying why none here serves it. */
  route(scope: KvScope | null, level: KvReadLevel): KvBackend {
    if (isGeoLevel(level)) {
      // datacenter is accepted as "not named": it is the default a client may send without meaning a scope.
      if (scope === 'federation') {
        throw new KvServiceError('invalid', `scope: ${scope} is a scope of the consensus log; geo levels have none (for this node's replica of the log, read at consistency serializable)`);
      }
      if (this.#opts.geo === null) throw new KvServiceError('invalid', 'consistency: this daemon runs no geo-distributed store; use strong');
      return { kind: 'geo', keyspace: this.#opts.geo, level };
    }
    if (scope === 'federation') {
      if (this.#opts.pbft !== null) return { kind: 'pbft', log: this.#opts.pbft };
      const untrusted = this.#opts.members.list().filter((m) => m.trust !== 'trusted');
      if (untrusted.length > 0) {
        throw new KvServiceError(
          'unsupported',
          `scope federation includes untrusted members (${untrusted.map((m) => m.name).join(', ')}) and runs on PBFT, which this node has not started; restart it with the current member list`,
        );
      }
    }
    return { kind: 'raft', log: this.#opts.raft };
  }

  /** A put, delete or compare-and-swap. */
  async write(req: KvWriteRequest): Promise<KvWriteAnswer> {
    const backend = this.route(req.scope, req.level);
    const { op } = req;
    if (backend.kind === 'geo') {
      if (op.op === 'cas') throw new KvServiceError('invalid', `consistency: compare-and-swap needs strong (geo keys have no revisions), not ${backend.level}`);
      if (op.op === 'fleet') throw new KvServiceError('invalid', `consistency: fleet commands go to the federation log (strong), not ${backend.level}`);
      const value = op.op === 'put' ? op.value : null;
      const out = await backend.keyspace.write(op.key, value, backend.level, { ttlMs: req.ttlMs === 0 ? null : req.ttlMs, timeoutMs: req.timeoutMs });
      return { keyspace: 'geo', ...out };
    }
    if (req.ttlMs > 0) throw new KvServiceError('invalid', 'ttl: only geo levels (quorum, local, eventual) expire values');
    const command = { ...this.#identity(req.clientId, req.seq), ...op };
    return { keyspace: 'log', ...(await backend.log.write(command, req.timeoutMs)) };
  }

  /** One key, or a prefix. */
  async read(req: KvReadRequest): Promise<KvReadAnswer> {
    const backend = this.route(req.scope, req.level);
    const limit = req.limit === 0 ? KV_RANGE_MAX_LIMIT : req.limit;
    if (limit > KV_RANGE_MAX_LIMIT) throw new KvServiceError('invalid', `limit ${limit} is above the ${KV_RANGE_MAX_LIMIT}-item maximum`);
    const read = { key: req.key, prefix: req.prefix, limit, timeoutMs: req.timeoutMs };
    if (backend.kind === 'geo') return { keyspace: 'geo', ...(await backend.keyspace.read({ ...read, level: backend.level })) };
    // route() sent every geo level to the geo keyspace: what is left is a level of the log.
    const consistency = req.level === 'serializable' ? 'serializable' : 'strong';
    return { keyspace: 'log', ...(await backend.log.read({ ...read, consistency })) };
  }

  /** Which log serves each scope on this node, and how many replicas it has. */
  scopePlan(): ScopeStatus[] {
    const { raft, pbft } = this.#opts;
    const protocol: ScopeStatus['protocol'] = raft.hasLog ? 'raft' : 'none';
    const voters = raft.voters;
    return [
      { scope: 'datacenter', protocol, replicas: voters },
      pbft !== null ? { scope: 'federation', protocol: 'pbft', replicas: pbft.seat.replicas } : { scope: 'federation', protocol, replicas: voters },
    ];
  }

  /** The (client id, seq) a log write carries: the caller's, checked, or a daemon-wide client's next. */
  #identity(clientId: string, seq: number): { clientId: string; seq: number } {
    // No retry safety across calls was asked for: a daemon-wide client with its own sequence.
    if (clientId === '') return { clientId: this.#anonymousClient, seq: ++this.#anonymousSeq };
    if (clientId.length > KV_MAX_CLIENT_ID) throw new KvServiceError('invalid', `client_id: ${clientId.length} characters, above the ${KV_MAX_CLIENT_ID}-character limit`);
    if (seq < 1) throw new KvServiceError('invalid', 'seq: must be 1 or more with a client_id');
    return { clientId, seq };
  }
}
