/**
 * The client side of PBFT: a result is accepted once f + 1 distinct members
 * sent the same one for the request, since at least one of them is honest
 * and honest replicas only reply with what they executed.
 *
 * A reply is unsigned (types.ts): its `from` must be the member whose
 * authenticated channel delivered it (PbftNode.receive drops any other; the
 * member's own replica hands its replies over directly). A reply is never
 * shown to anyone else, so nothing but that channel needs to believe it.
 *
 * Invariants: one collector per (client, timestamp); each member counts once
 * (its first reply; a later, different one is ignored, so a Byzantine member
 * cannot vote twice); memory is at most one reply per member.
 */
import { sha256 } from './encoding.ts';
import type { ClientId, Digest, ReplicaId, Reply } from './types.ts';
import { PbftInputError, maxFaulty } from './types.ts';

export type ReplyOutcome =
  | { readonly kind: 'pending'; readonly matching: number }
  | { readonly kind: 'done'; readonly result: Uint8Array }
  | { readonly kind: 'ignored'; readonly reason: 'other_request' | 'non_member' | 'duplicate' };

export interface ReplyCollectorOptions {
  readonly client: ClientId;
  readonly timestamp: number;
  readonly members: readonly ReplicaId[];
  /** Defaults to the largest f the member count allows. */
  readonly f?: number;
}

export class ReplyCollector {
  readonly client: ClientId;
  readonly timestamp: number;
  readonly #members: ReadonlySet<ReplicaId>;
  readonly #needed: number;
  readonly #votes = new Map<ReplicaId, Digest>();
  readonly #tally = new Map<Digest, { count: number; result: Uint8Array }>();
  #result: Uint8Array | null = null;

  constructor(options: ReplyCollectorOptions) {
    const f = options.f ?? maxFaulty(options.members.length);
    if (!Number.isSafeInteger(f) || f < 0 || options.members.length < 3 * f + 1) {
      throw new PbftInputError(`reply collector: f = ${f} needs at least ${3 * f + 1} members, got ${options.members.length}`);
    }
    this.client = options.client;
    this.timestamp = options.timestamp;
    this.#members = new Set(options.members);
    this.#needed = f + 1;
  }

  /** The accepted result, once there is one. */
  get result(): Uint8Array | null {
    return this.#result;
  }

  accept(reply: Reply): ReplyOutcome {
    if (this.#result !== null) return { kind: 'done', result: this.#result };
    if (reply.client !== this.client || reply.timestamp !== this.timestamp) return { kind: 'ignored', reason: 'other_request' };
    if (!this.#members.has(reply.from)) return { kind: 'ignored', reason: 'non_member' };
    if (this.#votes.has(reply.from)) return { kind: 'ignored', reason: 'duplicate' };
    const digest = sha256(reply.result);
    this.#votes.set(reply.from, digest);
    const entry = this.#tally.get(digest) ?? { count: 0, result: reply.result };
    entry.count++;
    this.#tally.set(digest, entry);
    if (entry.count < this.#needed) return { kind: 'pending', matching: entry.count };
    this.#result = entry.result;
    return { kind: 'done', result: entry.result };
  }
}
