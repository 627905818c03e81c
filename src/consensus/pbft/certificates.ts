/**
 * Who may say what, and what a set of signed messages proves. The
 * Authenticator knows the member list, f, and the injected verify function;
 * every check a certificate needs (a prepared certificate, a commit
 * certificate, a checkpoint proof, a view-change, a new-view with its O set)
 * lives here as a pure function of the messages, so the core, the simulator
 * and a future batch verifier share one definition.
 *
 * Invariants:
 * - A quorum counts distinct members only; duplicates of one sender never
 *   add up, and messages from non-members never count.
 * - A prepared certificate's prepares come from backups (never the primary
 *   of its view), as in the paper: the pre-prepare is the primary's vote.
 * - The O set of a new view is a deterministic function of its view-change
 *   messages in the order given, so every honest replica recomputes the same.
 * - Positive signature checks are memoised per message object (messages are
 *   immutable), so evidence forwarded many times is verified once; client
 *   requests also by (content digest, signature), in a bounded cache.
 */
import { batchDigest, clientBatchRoot, clientBatchSigningBytes, requestBytes, sha256, signingBytes, stateDigest } from './encoding.ts';
import type {
  Checkpoint,
  CheckpointRef,
  CheckpointState,
  ClientRequest,
  Commit,
  CommitCertificate,
  Digest,
  DropKind,
  NewView,
  PbftConfig,
  PrePrepare,
  Prepare,
  PreparedCertificate,
  ReplicaId,
  SignedMessage,
  ViewChange,
} from './types.ts';

export type Verify = (signer: string, bytes: Uint8Array, signature: Uint8Array) => boolean;

/** What a valid set of view-change messages decides for the new view. */
export interface NewViewOrder {
  /** min-s: the highest stable checkpoint among the view-changes, with its proof. */
  readonly checkpoint: CheckpointRef;
  readonly checkpointProof: readonly Checkpoint[];
  /** One entry per sequence number in (min-s, max-s]; the null request where nothing prepared. */
  readonly entries: readonly { readonly seq: number; readonly digest: Digest; readonly batch: readonly ClientRequest[] }[];
}

export class Authenticator {
  readonly members: readonly ReplicaId[];
  readonly f: number;
  readonly genesis: CheckpointRef;
  readonly #memberSet: ReadonlySet<ReplicaId>;
  readonly #verify: Verify;
  readonly #config: PbftConfig;
  readonly #verified = new WeakSet<object>();
  /** Keys of client requests known valid, oldest first; bounded by #requestCacheSize. */
  readonly #verifiedRequests = new Set<string>();
  readonly #requestCacheSize: number;
  /** Signatures checked (cache misses), for metrics and benchmarks. */
  verifications = 0;

  constructor(members: readonly ReplicaId[], f: number, verify: Verify, config: PbftConfig, genesis: CheckpointState) {
    this.members = members;
    this.f = f;
    this.#memberSet = new Set(members);
    this.#verify = verify;
    this.#config = config;
    this.genesis = { seq: 0, digest: stateDigest(genesis) };
    this.#requestCacheSize = 2 * config.maxPendingRequests;
  }

  get quorum(): number {
    return 2 * this.f + 1;
  }

  primary(view: number): ReplicaId {
    return this.members[view % this.members.length] as ReplicaId;
  }

  isMember(id: ReplicaId): boolean {
    return this.#memberSet.has(id);
  }

  #check(object: SignedMessage | ClientRequest, signer: string): boolean {
    if (this.#verified.has(object)) return true;
    this.verifications++;
    let ok: boolean;
    try {
      ok = this.#verify(signer, signingBytes(object), object.signature) === true;
    } catch {
      ok = false;
    }
    if (ok) this.#verified.add(object);
    return ok;
  }

  /** A member's message with a valid signature from that member. */
  signed(m: SignedMessage): boolean {
    return this.isMember(m.from) && this.#check(m, m.from);
  }

  /** A message this replica signed itself: valid by construction, so it is never checked again. */
  vouch(m: SignedMessage): void {
    this.#verified.add(m);
  }

  /**
   * A client request signed by its client: alone, or as one of a client
   * batch (its path folds its leaf up to the root the signature covers).
   */
  request(r: ClientRequest): boolean {
    if (this.#verified.has(r)) return true;
    const batched = r.path !== undefined;
    // A request reaches a replica several times as different objects (relayed,
    // then inside a pre-prepare, maybe again after a view change), and a client
    // batch's requests share one signature: remember valid signatures by what
    // they cover, so each costs one verification.
    const covered = batched ? clientBatchRoot(r).toString('hex') : sha256(signingBytes(r));
    const key = `${r.client}\u0000${batched ? 'batch' : 'request'}\u0000${covered}\u0000${Buffer.from(r.signature).toString('base64')}`;
    if (!this.#verifiedRequests.has(key)) {
      if (!this.#checkRequest(r, batched)) return false;
      this.#verifiedRequests.add(key);
      if (this.#verifiedRequests.size > this.#requestCacheSize) {
        const oldest = this.#verifiedRequests.values().next().value;
        if (oldest !== undefined) this.#verifiedRequests.delete(oldest);
      }
    }
    this.#verified.add(r);
    return true;
  }

  #checkRequest(r: ClientRequest, batched: boolean): boolean {
    if (!batched) return this.#check(r, r.client);
    this.verifications++;
    try {
      return this.#verify(r.client, clientBatchSigningBytes(clientBatchRoot(r)), r.signature) === true;
    } catch {
      return false;
    }
  }

  /** What is wrong with a pre-prepare's content (not its sender or view), or null. */
  prePrepareBody(pp: PrePrepare): DropKind | null {
    if (pp.batch.length > this.#config.maxBatchRequests) return 'too_large';
    let total = 0;
    for (const r of pp.batch) {
      const size = requestBytes(r);
      if (size > this.#config.maxRequestBytes) return 'too_large';
      total += size;
    }
    if (total > this.#config.maxBatchBytes) return 'too_large';
    if (batchDigest(pp.batch) !== pp.digest) return 'digest_mismatch';
    for (const r of pp.batch) if (!this.request(r)) return 'bad_request';
    return null;
  }

  #validPrePrepare(pp: PrePrepare): boolean {
    return pp.seq > 0 && pp.from === this.primary(pp.view) && this.signed(pp) && this.prePrepareBody(pp) === null;
  }

  /** `count` votes of one kind matching the pre-prepare, from distinct members, excluding `exclude`. */
  #votes(
    pp: PrePrepare,
    votes: readonly (Prepare | Commit)[],
    type: 'prepare' | 'commit',
    count: number,
    exclude: ReplicaId | null,
  ): boolean {
    const senders = new Set<ReplicaId>();
    for (const v of votes) {
      if (v.type !== type || v.view !== pp.view || v.seq !== pp.seq || v.digest !== pp.digest) return false;
      if (v.from === exclude || senders.has(v.from) || !this.signed(v)) return false;
      senders.add(v.from);
    }
    return senders.size >= count;
  }

  preparedCertificate(cert: PreparedCertificate): boolean {
    const pp = cert.prePrepare;
    return this.#validPrePrepare(pp) && this.#votes(pp, cert.prepares, 'prepare', 2 * this.f, pp.from);
  }

  commitCertificate(cert: CommitCertificate): boolean {
    const pp = cert.prePrepare;
    return this.#validPrePrepare(pp) && this.#votes(pp, cert.commits, 'commit', this.quorum, null);
  }

  /** 2f + 1 matching checkpoint messages from distinct members; genesis needs none. */
  checkpointProof(ref: CheckpointRef, proof: readonly Checkpoint[]): boolean {
    if (ref.seq === 0) return ref.digest === this.genesis.digest;
    if (ref.seq % this.#config.checkpointInterval !== 0) return false;
    const senders = new Set<ReplicaId>();
    for (const c of proof) {
      if (c.type !== 'checkpoint' || c.seq !== ref.seq || c.digest !== ref.digest) return false;
      if (senders.has(c.from) || !this.signed(c)) return false;
      senders.add(c.from);
    }
    return senders.size >= this.quorum;
  }

  /** A well-formed view-change (its signature is checked by the caller or by newView). */
  viewChange(vc: ViewChange): boolean {
    if (!this.checkpointProof(vc.checkpoint, vc.checkpointProof)) return false;
    const low = vc.checkpoint.seq;
    const high = low + this.#config.logWindow;
    const seqs = new Set<number>();
    for (const cert of vc.prepared) {
      const pp = cert.prePrepare;
      if (pp.view >= vc.view || pp.seq <= low || pp.seq > high || seqs.has(pp.seq)) return false;
      seqs.add(pp.seq);
      if (!this.preparedCertificate(cert)) return false;
    }
    return true;
  }

  /**
   * The paper's O-set rule over valid view-changes: min-s is the latest
   * stable checkpoint among them; every sequence number above it up to the
   * highest prepared one gets the request prepared in the highest view, or
   * the null request.
   */
  newViewOrder(viewChanges: readonly ViewChange[]): NewViewOrder {
    let best = viewChanges[0] as ViewChange;
    for (const vc of viewChanges) if (vc.checkpoint.seq > best.checkpoint.seq) best = vc;
    const minS = best.checkpoint.seq;
    const chosen = new Map<number, PrePrepare>();
    let maxS = minS;
    for (const vc of viewChanges) {
      for (const { prePrepare: pp } of vc.prepared) {
        if (pp.seq <= minS) continue;
        const current = chosen.get(pp.seq);
        if (current === undefined || pp.view > current.view) chosen.set(pp.seq, pp);
        if (pp.seq > maxS) maxS = pp.seq;
      }
    }
    const entries: NewViewOrder['entries'][number][] = [];
    for (let seq = minS + 1; seq <= maxS; seq++) {
      const pp = chosen.get(seq);
      entries.push(pp === undefined ? { seq, digest: batchDigest([]), batch: [] } : { seq, digest: pp.digest, batch: pp.batch });
    }
    return { checkpoint: best.checkpoint, checkpointProof: best.checkpointProof, entries };
  }

  /** The new-view's order if it is valid: 2f + 1 valid view-changes and exactly the O set they imply. */
  newView(nv: NewView): NewViewOrder | null {
    if (nv.from !== this.primary(nv.view)) return null;
    const senders = new Set<ReplicaId>();
    for (const vc of nv.viewChanges) {
      if (vc.view !== nv.view || senders.has(vc.from) || !this.signed(vc) || !this.viewChange(vc)) return null;
      senders.add(vc.from);
    }
    if (senders.size < this.quorum) return null;
    const order = this.newViewOrder(nv.viewChanges);
    if (nv.prePrepares.length !== order.entries.length) return null;
    for (let i = 0; i < order.entries.length; i++) {
      const want = order.entries[i];
      const pp = nv.prePrepares[i];
      if (want === undefined || pp === undefined) return null;
      if (pp.type !== 'pre_prepare' || pp.view !== nv.view || pp.seq !== want.seq || pp.digest !== want.digest) return null;
      // Same digest means same batch, whose client signatures a prepared certificate already vouched for.
      if (pp.from !== nv.from || batchDigest(pp.batch) !== pp.digest || !this.signed(pp)) return null;
    }
    return order;
  }
}
