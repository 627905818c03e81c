/**
 * Byzantine replicas for the PBFT simulator. A Byzantine replica runs an
 * honest core underneath (so its lies are plausible: right views, right
 * sequence numbers) and a behaviour rewrites what that core sends:
 * - silent: sends nothing at all;
 * - equivocate: as primary, different valid pre-prepares (and new-views) to
 *   different replicas, sometimes both to the same one; conflicting votes;
 * - wrong_digest: pre-prepares whose digest is not their batch's, votes and
 *   checkpoints for digests nobody proposed, view-changes that hide their
 *   prepared certificates, wrong results to clients;
 * - forge: messages in another member's name (which the receiving side's
 *   channel authentication, modelled by step()'s sender, must catch),
 *   corrupted signatures (on votes too, which receivers count on their
 *   channel's word and must catch when the votes become evidence), client
 *   requests the client never signed (in pre-prepares and in relays);
 * - replay: old messages from anyone, re-sent to anyone;
 * - flood: bursts of junk every tick (future views, random sequence numbers,
 *   checkpoints, view-changes for far views, fetches);
 * - mixed: any of the above, per message.
 * It only ever signs with its own key: it cannot produce another member's or
 * a client's signature, which is the whole premise of the protocol.
 */
import { batchDigest, seal } from '../../src/consensus/pbft/encoding.ts';
import type {
  Checkpoint,
  ClientRequest,
  Commit,
  Fetch,
  NewView,
  PbftMessage,
  PrePrepare,
  Prepare,
  ReplicaId,
  Reply,
  SignedMessage,
  ViewChange,
} from '../../src/consensus/pbft/types.ts';
import type { Envelope, FakeKeys } from './pbft-harness.ts';
import type { Prng } from './prng.ts';

export const BEHAVIOURS = ['silent', 'equivocate', 'wrong_digest', 'forge', 'replay', 'flood', 'mixed'] as const;
export type BehaviourKind = (typeof BEHAVIOURS)[number];

type Active = Exclude<BehaviourKind, 'silent' | 'mixed'>;
const ACTIVE: readonly Active[] = ['equivocate', 'wrong_digest', 'forge', 'replay', 'flood'];

const REPLAY_MEMORY = 256;
/** A flooder bursts on this share of its ticks, FLOOD_PER_TICK junk messages to each peer: enough to fill every per-peer buffer within the first second. */
const FLOOD_CHANCE = 0.3;
const FLOOD_PER_TICK = 4;

/** What each kind of misbehaviour was attempted, for the simulator's coverage check. */
export type Attempts = Record<Active | 'silent', number>;

export class ByzantineBehaviour {
  readonly id: ReplicaId;
  readonly kind: BehaviourKind;
  readonly attempts: Attempts = { silent: 0, equivocate: 0, wrong_digest: 0, forge: 0, replay: 0, flood: 0 };
  readonly #rng: Prng;
  readonly #sign: (bytes: Uint8Array) => Uint8Array;
  readonly #members: readonly ReplicaId[];
  readonly #seen: PbftMessage[] = [];
  #view = 0;

  constructor(id: ReplicaId, kind: BehaviourKind, rng: Prng, keys: FakeKeys, members: readonly ReplicaId[]) {
    this.id = id;
    this.kind = kind;
    this.#rng = rng;
    this.#sign = keys.signer(id);
    this.#members = members;
  }

  #pick(): Active | 'silent' {
    if (this.kind === 'mixed') return this.#rng.chance(0.1) ? 'silent' : this.#rng.pick(ACTIVE);
    return this.kind;
  }

  /** Sign as ourselves; any sender or signature fields in `body` (it may be a copy of a real message) are replaced. */
  #as<M extends SignedMessage>(body: Omit<M, 'from' | 'signature'>): M {
    const { signature: _signature, from: _from, ...rest } = body as Omit<M, 'from' | 'signature'> & { signature?: unknown; from?: unknown };
    return seal<M>({ ...rest, from: this.id } as unknown as Omit<M, 'signature'>, this.#sign);
  }

  #randomDigest(): string {
    let hex = '';
    for (let i = 0; i < 8; i++) hex += this.#rng.nextU32().toString(16).padStart(8, '0');
    return hex;
  }

  #others(): ReplicaId[] {
    return this.#members.filter((m) => m !== this.id);
  }

  /** Remember what arrives, for replays. */
  observe(m: PbftMessage): void {
    if ('view' in m && m.view > this.#view) this.#view = m.view;
    if (this.#seen.length >= REPLAY_MEMORY) this.#seen.splice(this.#rng.int(REPLAY_MEMORY), 1);
    this.#seen.push(m);
  }

  /** Rewrite one message the honest core underneath wants to send. */
  outgoing(e: Envelope): Envelope[] {
    const how = this.#pick();
    this.attempts[how]++;
    switch (how) {
      case 'silent':
        return [];
      case 'equivocate':
        return this.#equivocate(e);
      case 'wrong_digest':
        return [{ ...e, message: this.#wrongDigest(e.message) }];
      case 'forge':
        return [{ ...e, message: this.#forge(e.message) }];
      case 'replay': {
        const old = this.#seen.length > 0 && this.#rng.chance(0.5) ? this.#rng.pick(this.#seen) : null;
        return old === null ? [e] : [e, { ...e, message: old }];
      }
      case 'flood':
        return [e, ...this.#junk(e.to, 2)];
    }
  }

  #equivocate(e: Envelope): Envelope[] {
    const m = e.message;
    const evenTarget = this.#members.indexOf(e.to) % 2 === 0;
    switch (m.type) {
      case 'pre_prepare': {
        const variant = this.#variantBatch(m);
        if (this.#rng.chance(0.2)) return [e, { ...e, message: variant }]; // caught red-handed
        return [{ ...e, message: evenTarget ? m : variant }];
      }
      case 'prepare':
      case 'commit':
        return evenTarget ? [e] : [{ ...e, message: this.#as<Prepare | Commit>({ type: m.type, view: m.view, seq: m.seq, digest: this.#randomDigest() }) }];
      case 'new_view':
        // Half the replicas never hear of the new view.
        return evenTarget ? [e] : [];
      default:
        return [e];
    }
  }

  #variantBatch(pp: PrePrepare): PrePrepare {
    const batch = pp.batch.length > 1 && this.#rng.chance(0.5) ? [...pp.batch].reverse() : pp.batch.slice(1);
    return this.#as<PrePrepare>({ type: 'pre_prepare', view: pp.view, seq: pp.seq, digest: batchDigest(batch), batch });
  }

  #wrongDigest(m: PbftMessage): PbftMessage {
    switch (m.type) {
      case 'pre_prepare':
        return this.#as<PrePrepare>({ type: 'pre_prepare', view: m.view, seq: m.seq, digest: this.#randomDigest(), batch: m.batch });
      case 'prepare':
      case 'commit':
        return this.#as<Prepare | Commit>({ type: m.type, view: m.view, seq: m.seq, digest: this.#randomDigest() });
      case 'checkpoint':
        return this.#as<Checkpoint>({ type: 'checkpoint', seq: m.seq, digest: this.#randomDigest() });
      case 'view_change':
        // A valid view-change that hides what this replica prepared.
        return this.#as<ViewChange>({ ...m, prepared: [] });
      case 'new_view':
        return this.#as<NewView>({ ...m, prePrepares: m.prePrepares.slice(1) });
      case 'state':
        return { ...m, state: { ...m.state, snapshot: new TextEncoder().encode('[["x","-1"]]') } };
      default:
        return m;
    }
  }

  #forge(m: PbftMessage): PbftMessage {
    const roll = this.#rng.int(3);
    if (roll === 0) return { ...m, from: this.#rng.pick(this.#others()) };
    if (m.type === 'request') {
      // A relayed request the client never made: its signature is the client's, and we cannot make that.
      // Inside a client batch, the altered request no longer folds up to the signed root; nor does a genuine
      // one whose path was cut or altered (a decoy of the batch cannot be smuggled in its place either).
      const path = m.request.path;
      if (roll === 2 && path !== undefined && path.length > 0) return { ...m, request: { ...m.request, path: path.slice(1) } };
      const forged: ClientRequest = { ...m.request, operation: new TextEncoder().encode('{"op":"put","key":"x","value":"forged"}') };
      return { ...m, request: forged };
    }
    if (roll === 1) {
      const signature = new Uint8Array(m.signature);
      const at = this.#rng.int(signature.length);
      signature[at] = (signature[at] ?? 0) ^ (1 + this.#rng.int(255));
      return { ...m, signature };
    }
    if (m.type === 'pre_prepare' && m.batch.length > 0) {
      const [first, ...rest] = m.batch as [ClientRequest, ...ClientRequest[]];
      const forged: ClientRequest = { ...first, operation: new TextEncoder().encode('{"op":"put","key":"x","value":"forged"}') };
      const batch = [forged, ...rest];
      return this.#as<PrePrepare>({ type: 'pre_prepare', view: m.view, seq: m.seq, digest: batchDigest(batch), batch });
    }
    return { ...m, from: this.#rng.pick(this.#others()) };
  }

  /** Junk for one target: all validly signed by us, so receivers must judge content, not signatures. */
  #junk(to: ReplicaId, count: number): Envelope[] {
    const out: Envelope[] = [];
    for (let i = 0; i < count; i++) {
      const seq = 1 + this.#rng.int(10_000);
      const view = this.#view + this.#rng.int(1000);
      let message: PbftMessage;
      switch (this.#rng.int(5)) {
        case 0:
          message = this.#as<Prepare>({ type: 'prepare', view, seq, digest: this.#randomDigest() });
          break;
        case 1:
          message = this.#as<Commit>({ type: 'commit', view: this.#view, seq: this.#rng.int(64), digest: this.#randomDigest() });
          break;
        case 2:
          message = this.#as<Checkpoint>({ type: 'checkpoint', seq: 4 * (1 + this.#rng.int(2000)), digest: this.#randomDigest() });
          break;
        case 3:
          message = this.#as<Fetch>({ type: 'fetch', seq: this.#rng.int(64) });
          break;
        default: {
          const old = this.#seen.find((m): m is ViewChange => m.type === 'view_change');
          message =
            old === undefined
              ? this.#as<Prepare>({ type: 'prepare', view: this.#view + 1, seq, digest: this.#randomDigest() })
              : this.#as<ViewChange>({ ...old, view: view + 1 });
        }
      }
      out.push({ from: this.id, to, message });
    }
    return out;
  }

  /** Spontaneous misbehaviour each tick (floods and replays). */
  tick(): Envelope[] {
    const how = this.#pick();
    if (how === 'flood' && this.#rng.chance(FLOOD_CHANCE)) {
      this.attempts.flood++;
      const out: Envelope[] = [];
      for (const to of this.#others()) out.push(...this.#junk(to, FLOOD_PER_TICK));
      return out;
    }
    if (how === 'replay' && this.#seen.length > 0 && this.#rng.chance(0.5)) {
      this.attempts.replay++;
      return [{ from: this.id, to: this.#rng.pick(this.#others()), message: this.#rng.pick(this.#seen) }];
    }
    return [];
  }

  /** A reply to a client: sometimes a lie, sometimes in another member's name (which the channel must catch), sometimes nothing. */
  reply(r: Reply): Reply | null {
    const how = this.#pick();
    if (how === 'silent') return null;
    const lie = new TextEncoder().encode('{"value":"lie"}');
    if (how === 'wrong_digest' || how === 'equivocate') return { ...r, result: lie };
    if (how === 'forge') return { ...r, from: this.#rng.pick(this.#others()), result: lie };
    return r;
  }
}
