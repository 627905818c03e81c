/**
 * One sequence number's agreement state: the pre-prepare accepted in the
 * current view, the prepares and commits received for that view, what this
 * replica has voted, and the certificates reached (the highest-view prepared
 * certificate survives view changes; a commit certificate is final).
 *
 * Invariants: at most one pre-prepare and one vote per sender per view (a
 * different second one is equivocation); the collections always belong to
 * `view` (align() resets them when the replica moves on); a committed slot
 * never changes its digest; each map holds at most one entry per member.
 */
import type { Commit, CommitCertificate, Digest, PrePrepare, Prepare, PreparedCertificate, ReplicaId, SlotRecord } from './types.ts';
import { invariant } from './types.ts';

export type VoteOutcome = 'added' | 'duplicate' | 'equivocation';

export class Slot {
  readonly seq: number;
  view: number;
  prePrepare: PrePrepare | null = null;
  readonly prepares = new Map<ReplicaId, Prepare>();
  readonly commits = new Map<ReplicaId, Commit>();
  sentPrepare = false;
  sentCommit = false;
  prepared: PreparedCertificate | null = null;
  committed: CommitCertificate | null = null;

  constructor(seq: number, view: number) {
    this.seq = seq;
    this.view = view;
  }

  static fromRecord(record: SlotRecord): Slot {
    const slot = new Slot(record.seq, record.view);
    slot.prePrepare = record.prePrepare;
    slot.sentPrepare = record.sentPrepare;
    slot.sentCommit = record.sentCommit;
    slot.prepared = record.prepared;
    slot.committed = record.committed;
    if (record.prepared !== null && record.prepared.prePrepare.view === record.view) {
      for (const p of record.prepared.prepares) slot.prepares.set(p.from, p);
    }
    return slot;
  }

  toRecord(): SlotRecord {
    return {
      seq: this.seq,
      view: this.view,
      prePrepare: this.prePrepare,
      sentPrepare: this.sentPrepare,
      sentCommit: this.sentCommit,
      prepared: this.prepared,
      committed: this.committed,
    };
  }

  /** Move the per-view collections to `view`; certificates are kept. */
  align(view: number): void {
    invariant(view >= this.view, () => `slot ${this.seq} moved back from view ${this.view} to ${view}`);
    if (view === this.view) return;
    this.view = view;
    this.prePrepare = null;
    this.prepares.clear();
    this.commits.clear();
    this.sentPrepare = false;
    this.sentCommit = false;
  }

  addVote<V extends Prepare | Commit>(votes: Map<ReplicaId, V>, vote: V): VoteOutcome {
    const existing = votes.get(vote.from);
    if (existing !== undefined) return existing.digest === vote.digest ? 'duplicate' : 'equivocation';
    votes.set(vote.from, vote);
    return 'added';
  }

  get digest(): Digest | null {
    return this.prePrepare?.digest ?? null;
  }

  /** Prepares matching the accepted pre-prepare, excluding the primary's. */
  matchingPrepares(): Prepare[] {
    const pp = this.prePrepare;
    if (pp === null) return [];
    return [...this.prepares.values()].filter((p) => p.digest === pp.digest && p.from !== pp.from);
  }

  matchingCommits(): Commit[] {
    const pp = this.prePrepare;
    if (pp === null) return [];
    return [...this.commits.values()].filter((c) => c.digest === pp.digest);
  }

  /** Prepared in the slot's current view (the precondition for committing in it). */
  get preparedHere(): boolean {
    return this.prepared !== null && this.prepared.prePrepare.view === this.view && this.prePrepare !== null;
  }

  commit(certificate: CommitCertificate): void {
    const before = this.committed;
    invariant(
      before === null || before.prePrepare.digest === certificate.prePrepare.digest,
      () => `seq ${this.seq} committed ${before?.prePrepare.digest} and then ${certificate.prePrepare.digest}`,
    );
    this.committed ??= certificate;
  }

  /** The same decision with other commits (ones whose signatures were checked, see PbftCore's #provenCommit). */
  replaceCommitted(certificate: CommitCertificate): void {
    const before = this.committed;
    invariant(
      before !== null && before.prePrepare.digest === certificate.prePrepare.digest,
      () => `seq ${this.seq}: replacing commit certificate ${before?.prePrepare.digest} with ${certificate.prePrepare.digest}`,
    );
    this.committed = certificate;
  }
}
