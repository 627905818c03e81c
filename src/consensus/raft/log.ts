/**
 * The core's in-memory view of its log: a snapshot base plus every entry
 * after it, split three ways: through `stable` the driver has persisted;
 * through `inProgress` it has been handed them in a Ready whose write is
 * still under way (storage writes are asynchronous, several may be queued);
 * after that, the next Ready hands them out.
 *
 * Invariants (asserted):
 * - entries are contiguous from snapshot.index + 1 and their terms never decrease;
 * - snapshot.index <= applied <= committed <= lastIndex;
 * - committed entries are never truncated or overwritten;
 * - committed never decreases, and applied never decreases;
 * - stable <= lastIndex and inProgress <= lastIndex (stable may lag the
 *   snapshot index while a snapshot from the leader is being persisted); an
 *   overwrite below either
 *   pulls it back, so the next Ready re-persists from the first changed index
 *   (a write of the old entries still under way lands first, in queue order,
 *   and the newer write replaces them; its completion then finds the log
 *   changed there and marks nothing stable, see stableTo).
 * The membership in force is the latest config entry in the log, committed
 * or not (the dissertation's rule), falling back to the snapshot's.
 */
import type { Entry, Membership, Snapshot, SnapshotData, SnapshotMeta } from './types.ts';
import { RaftInputError, entryBytes, invariant } from './types.ts';

export interface Slice {
  readonly entries: Entry[];
  readonly bytes: number;
}

export class RaftLog {
  #snapshot: Snapshot;
  #entries: Entry[];
  #stable: number;
  /** Last index handed to the driver for persisting (>= stable once the write is under way). */
  #inProgress: number;
  #committed: number;
  #applied: number;
  /** Indices of the config entries in #entries, ascending. */
  #configIndices: number[] = [];
  /** A snapshot received from the leader that the driver has not persisted yet. */
  #pendingSnapshot = false;
  /** That snapshot was handed out in a Ready (its write is under way). */
  #snapshotInProgress = false;

  constructor(snapshot: Snapshot, entries: readonly Entry[], committed: number, applied: number) {
    this.#snapshot = snapshot;
    this.#entries = [];
    let expected = snapshot.meta.index + 1;
    let term = snapshot.meta.term;
    for (const entry of entries) {
      if (entry.index !== expected) {
        throw new RaftInputError(`persisted entries: expected index ${expected}, found ${entry.index}`);
      }
      if (entry.term < term) {
        throw new RaftInputError(`persisted entries: term ${entry.term} at index ${entry.index} is below ${term}`);
      }
      this.#push(entry);
      expected++;
      term = entry.term;
    }
    this.#stable = this.lastIndex;
    this.#inProgress = this.#stable;
    this.#applied = Math.max(applied, snapshot.meta.index);
    // Only committed entries are ever applied, so a durable state machine that
    // got ahead of a commit index written without fsync proves the commit.
    this.#committed = Math.max(committed, this.#applied);
    if (this.#committed > this.lastIndex) {
      throw new RaftInputError(
        `persisted state: commit ${this.#committed} (hard state ${committed}, applied ${applied}) is past the last entry ${this.lastIndex}`,
      );
    }
  }

  get snapshot(): Snapshot {
    return this.#snapshot;
  }

  get firstIndex(): number {
    return this.#snapshot.meta.index + 1;
  }

  get lastIndex(): number {
    return this.#snapshot.meta.index + this.#entries.length;
  }

  get lastTerm(): number {
    return this.#entries.at(-1)?.term ?? this.#snapshot.meta.term;
  }

  get committed(): number {
    return this.#committed;
  }

  get applied(): number {
    return this.#applied;
  }

  get stable(): number {
    return this.#stable;
  }

  get hasPendingSnapshot(): boolean {
    return this.#pendingSnapshot;
  }

  /** A received snapshot waits to be handed out for persisting. */
  get hasSnapshotToPersist(): boolean {
    return this.#pendingSnapshot && !this.#snapshotInProgress;
  }

  /** Entries wait to be handed out for persisting. */
  get hasEntriesToPersist(): boolean {
    return this.#inProgress < this.lastIndex;
  }

  /** Term of the entry at index, or undefined when compacted away or not yet there. */
  term(index: number): number | undefined {
    if (index === this.#snapshot.meta.index) return this.#snapshot.meta.term;
    return this.entry(index)?.term;
  }

  entry(index: number): Entry | undefined {
    if (index < this.firstIndex) return undefined;
    return this.#entries[index - this.firstIndex];
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** Raft's election restriction: is a log ending at (lastIndex, lastTerm) at least as up to date as ours? */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    return lastTerm > this.lastTerm || (lastTerm === this.lastTerm && lastIndex >= this.lastIndex);
  }

  /** Entries from `from` on, at most maxEntries and maxBytes (but at least one if there is one). */
  slice(from: number, maxEntries: number, maxBytes: number): Slice {
    invariant(from >= this.firstIndex, () => `slice from ${from} below first index ${this.firstIndex}`);
    const entries: Entry[] = [];
    let bytes = 0;
    for (let i = from - this.firstIndex; i < this.#entries.length && entries.length < maxEntries; i++) {
      const entry = this.#entries[i] as Entry;
      const size = entryBytes(entry);
      if (entries.length > 0 && bytes + size > maxBytes) break;
      entries.push(entry);
      bytes += size;
    }
    return { entries, bytes };
  }

  /** The leader's own append: no conflict is possible. */
  append(entry: Entry): void {
    invariant(entry.index === this.lastIndex + 1, () => `append at ${entry.index}, last is ${this.lastIndex}`);
    invariant(entry.term >= this.lastTerm, () => `append term ${entry.term} below last term ${this.lastTerm}`);
    this.#push(entry);
  }

  /**
   * A follower's append: if our log holds (prevIndex, prevTerm), make it match
   * the leader's through the given entries and return the last index now known
   * to match; otherwise null.
   */
  maybeAppend(prevIndex: number, prevTerm: number, leaderCommit: number, entries: readonly Entry[]): number | null {
    if (!this.matchTerm(prevIndex, prevTerm)) return null;
    const lastNew = prevIndex + entries.length;
    const conflict = this.#findConflict(entries);
    if (conflict !== 0) {
      invariant(conflict > this.#committed, () => `append would overwrite committed index ${conflict} (commit ${this.#committed})`);
      this.#truncateAndAppend(entries.slice(conflict - (prevIndex + 1)));
    }
    this.commitTo(Math.min(leaderCommit, lastNew));
    return lastNew;
  }

  /** First index where `entries` disagree with our log or extend it; 0 if they are all present. */
  #findConflict(entries: readonly Entry[]): number {
    for (const entry of entries) {
      if (!this.matchTerm(entry.index, entry.term)) return entry.index;
    }
    return 0;
  }

  /**
   * The largest index <= `index` whose term is <= `term`, with that term: the
   * last place our log could still match a log whose entry at `index` has
   * `term`. Term 0 means unknown (compacted, or past our end).
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    for (let i = index; i > 0; i--) {
      const ours = this.term(i);
      if (ours === undefined) return { index: i, term: 0 };
      if (ours <= term) return { index: i, term: ours };
    }
    return { index: 0, term: 0 };
  }

  #truncateAndAppend(entries: readonly Entry[]): void {
    const first = entries[0];
    if (first === undefined) return;
    invariant(first.index > this.#committed, () => `truncate at ${first.index} at or below commit ${this.#committed}`);
    invariant(first.index >= this.firstIndex, () => `truncate at ${first.index} below first index ${this.firstIndex}`);
    invariant(first.index <= this.lastIndex + 1, () => `append at ${first.index} leaves a gap after ${this.lastIndex}`);
    if (first.index <= this.lastIndex) {
      this.#entries.length = first.index - this.firstIndex;
      while ((this.#configIndices.at(-1) ?? 0) >= first.index) this.#configIndices.pop();
      this.#stable = Math.min(this.#stable, first.index - 1);
      this.#inProgress = Math.min(this.#inProgress, first.index - 1);
    }
    for (const entry of entries) {
      invariant(entry.term >= this.lastTerm, () => `entry term ${entry.term} at ${entry.index} below ${this.lastTerm}`);
      this.#push(entry);
    }
  }

  #push(entry: Entry): void {
    this.#entries.push(entry);
    if (entry.kind === 'config') this.#configIndices.push(entry.index);
  }

  commitTo(index: number): void {
    if (index <= this.#committed) return;
    invariant(index <= this.lastIndex, () => `commit ${index} past last index ${this.lastIndex}`);
    this.#committed = index;
  }

  /** Entries not yet handed out for persisting; they are in progress from now on. */
  takeEntriesToPersist(): Entry[] {
    const entries = this.#entries.slice(this.#inProgress + 1 - this.firstIndex);
    this.#inProgress = this.lastIndex;
    return entries;
  }

  /** The pending snapshot, handed out for persisting (null if none waits). */
  takeSnapshotToPersist(): Snapshot | null {
    if (!this.hasSnapshotToPersist) return null;
    this.#snapshotInProgress = true;
    return this.#snapshot;
  }

  /** The driver persisted entries through (index, term); ignored if the log has since changed there. */
  stableTo(index: number, term: number): void {
    if (index > this.#stable && this.matchTerm(index, term)) this.#stable = index;
  }

  /** The driver persisted the snapshot at `index`; a newer one received meanwhile stays pending. */
  snapshotPersisted(index: number): void {
    if (this.#snapshot.meta.index === index && this.#snapshotInProgress) {
      this.#pendingSnapshot = false;
      this.#snapshotInProgress = false;
      if (index > this.#stable) this.#stable = index;
    }
  }

  /** Committed entries not yet handed to the state machine, bounded by maxBytes (at least one). */
  nextCommitted(maxBytes: number): Entry[] {
    if (this.#applied >= this.#committed) return [];
    return this.slice(this.#applied + 1, this.#committed - this.#applied, maxBytes).entries;
  }

  appliedTo(index: number): void {
    invariant(index <= this.#committed, () => `applied ${index} past commit ${this.#committed}`);
    if (index > this.#applied) this.#applied = index;
  }

  /** What a snapshot at `index` (applied, still in the log or the current snapshot's) records besides the state. */
  metaAt(index: number): SnapshotMeta {
    invariant(index <= this.#applied, () => `snapshot meta at ${index} past applied ${this.#applied}`);
    const term = this.term(index);
    invariant(term !== undefined, () => `snapshot meta at ${index}: compacted (the log starts after ${this.#snapshot.meta.index})`);
    return { index, term, membership: this.membershipAt(index) };
  }

  /** The state machine snapshotted itself at `index`: drop the entries it covers. */
  compact(index: number, data: SnapshotData): void {
    invariant(index <= this.#applied, () => `compact at ${index} past applied ${this.#applied}`);
    invariant(index <= this.#stable, () => `compact at ${index} past stable ${this.#stable}`);
    if (index <= this.#snapshot.meta.index) return;
    const meta = this.metaAt(index);
    this.#entries = this.#entries.slice(index + 1 - this.firstIndex);
    this.#configIndices = this.#configIndices.filter((i) => i > index);
    this.#snapshot = { meta, data };
  }

  /** Replace the whole log with a snapshot from the leader (our log did not contain its last entry). */
  restore(snapshot: Snapshot): void {
    const { index } = snapshot.meta;
    invariant(index > this.#committed, () => `restore of snapshot ${index} at or below commit ${this.#committed}`);
    // Durable and still true of the new log: what was committed before (an
    // uncommitted stored tail may differ from the snapshot). The snapshot
    // counts as stable once its own write lands (snapshotPersisted).
    this.#stable = Math.min(this.#stable, this.#committed);
    this.#snapshot = snapshot;
    this.#entries = [];
    this.#configIndices = [];
    this.#committed = index;
    this.#applied = index;
    this.#inProgress = index;
    this.#pendingSnapshot = true;
    this.#snapshotInProgress = false;
  }

  get membership(): Membership {
    return this.membershipAt(this.lastIndex);
  }

  /** Index of the config entry in force (the snapshot's index when it is the snapshot's). */
  get membershipIndex(): number {
    return this.#configIndices.at(-1) ?? this.#snapshot.meta.index;
  }

  membershipAt(index: number): Membership {
    for (let i = this.#configIndices.length - 1; i >= 0; i--) {
      const at = this.#configIndices[i] as number;
      if (at <= index) {
        const entry = this.entry(at);
        invariant(entry?.kind === 'config', () => `config index ${at} is not a config entry`);
        return entry.membership;
      }
    }
    return this.#snapshot.meta.membership;
  }
}
