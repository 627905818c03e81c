/**
 * Checkpoint messages above the stable checkpoint, collected until 2f + 1
 * match. Votes beyond this replica's own progress are kept too: they are how
 * a replica learns it fell behind and needs a state transfer.
 *
 * Invariants: at most `perPeer` votes per peer (a flooding member displaces
 * only its own oldest votes, and only with higher ones, since the highest
 * votes are the useful ones for catching up); at most one vote per (peer,
 * seq): a second, different one is equivocation and is refused.
 */
import type { Checkpoint, Digest, ReplicaId } from './types.ts';

export type VoteOutcome = 'added' | 'duplicate' | 'equivocation' | 'buffer_full';

export class CheckpointVotes {
  readonly #perPeer: number;
  readonly #bySeq = new Map<number, Map<ReplicaId, Checkpoint>>();
  /** Per peer, the seqs it has a vote for, ascending. */
  readonly #byPeer = new Map<ReplicaId, number[]>();

  constructor(perPeer: number) {
    this.#perPeer = perPeer;
  }

  add(vote: Checkpoint): VoteOutcome {
    const existing = this.#bySeq.get(vote.seq)?.get(vote.from);
    if (existing !== undefined) return existing.digest === vote.digest ? 'duplicate' : 'equivocation';
    const seqs = this.#byPeer.get(vote.from) ?? [];
    if (seqs.length >= this.#perPeer) {
      const lowest = seqs[0] as number;
      if (vote.seq < lowest) return 'buffer_full';
      seqs.shift();
      this.#remove(lowest, vote.from);
    }
    seqs.push(vote.seq);
    seqs.sort((a, b) => a - b);
    this.#byPeer.set(vote.from, seqs);
    let votes = this.#bySeq.get(vote.seq);
    if (votes === undefined) {
      votes = new Map();
      this.#bySeq.set(vote.seq, votes);
    }
    votes.set(vote.from, vote);
    return 'added';
  }

  #remove(seq: number, peer: ReplicaId): void {
    const votes = this.#bySeq.get(seq);
    votes?.delete(peer);
    if (votes?.size === 0) this.#bySeq.delete(seq);
  }

  /** The votes for (seq, digest) if at least `quorum` distinct peers sent them. */
  proof(seq: number, digest: Digest, quorum: number): Checkpoint[] | null {
    const votes = this.#bySeq.get(seq);
    if (votes === undefined) return null;
    const matching = [...votes.values()].filter((v) => v.digest === digest);
    return matching.length >= quorum ? matching : null;
  }

  /** The highest seq with `quorum` matching votes, with the proof. */
  highestQuorum(quorum: number): { seq: number; digest: Digest; proof: Checkpoint[] } | null {
    let best: { seq: number; digest: Digest; proof: Checkpoint[] } | null = null;
    for (const [seq, votes] of this.#bySeq) {
      if (votes.size < quorum || (best !== null && seq <= best.seq)) continue;
      const byDigest = new Map<Digest, Checkpoint[]>();
      for (const v of votes.values()) byDigest.set(v.digest, [...(byDigest.get(v.digest) ?? []), v]);
      for (const [digest, proof] of byDigest) if (proof.length >= quorum) best = { seq, digest, proof };
    }
    return best;
  }

  /** Forget every vote at or below `seq` (it is stable now). */
  discardThrough(seq: number): void {
    for (const s of [...this.#bySeq.keys()]) {
      if (s > seq) continue;
      for (const peer of this.#bySeq.get(s)?.keys() ?? []) {
        const seqs = this.#byPeer.get(peer);
        if (seqs === undefined) continue;
        const kept = seqs.filter((x) => x > seq);
        if (kept.length === 0) this.#byPeer.delete(peer);
        else this.#byPeer.set(peer, kept);
      }
      this.#bySeq.delete(s);
    }
  }

  countFor(peer: ReplicaId): number {
    return this.#byPeer.get(peer)?.length ?? 0;
  }
}
