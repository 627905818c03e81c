import { describe, expect, it } from 'vitest';
import { bootstrapState } from '../../src/consensus/raft/bootstrap.ts';
import { RaftCore } from '../../src/consensus/raft/core.ts';
import { RaftLog } from '../../src/consensus/raft/log.ts';
import { compactionDue, compactionPhase } from '../../src/consensus/raft/node.ts';
import { Inflights, Progress } from '../../src/consensus/raft/progress.ts';
import { quorumValue, voteOutcome } from '../../src/consensus/raft/quorum.ts';
import { SnapshotAssembler } from '../../src/consensus/raft/snapshot-transfer.ts';
import type { Entry, SnapshotChunk, SnapshotMeta } from '../../src/consensus/raft/types.ts';
import { EMPTY_MEMBERSHIP, RaftInputError, RaftInvariantError, resolveRaftConfig } from '../../src/consensus/raft/types.ts';

const BASE = { meta: { index: 0, term: 0, membership: EMPTY_MEMBERSHIP }, data: new Uint8Array() };
function entries(terms: number[], from = 1): Entry[] {
  return terms.map((term, i) => ({ kind: 'normal', index: from + i, term, data: new Uint8Array([i]) }));
}

describe('raft log', () => {
  it('finds the last index whose term is at most a given term (fast back-off hint)', () => {
    const log = new RaftLog(BASE, entries([1, 1, 2, 2, 2, 4, 4]), 0, 0);
    expect(log.findConflictByTerm(7, 3)).toEqual({ index: 5, term: 2 });
    expect(log.findConflictByTerm(7, 4)).toEqual({ index: 7, term: 4 });
    expect(log.findConflictByTerm(4, 1)).toEqual({ index: 2, term: 1 });
    expect(log.findConflictByTerm(3, 0)).toEqual({ index: 0, term: 0 });
  });

  it('truncates a conflicting uncommitted suffix, pulls stable back, and refuses to touch committed entries', () => {
    const log = new RaftLog(BASE, entries([1, 1, 2, 2]), 2, 0);
    expect(log.maybeAppend(2, 1, 2, entries([3, 3], 3))).toBe(4);
    expect([log.term(3), log.term(4)]).toEqual([3, 3]);
    expect(log.stable).toBe(2);
    expect(log.takeEntriesToPersist().map((e) => e.index)).toEqual([3, 4]);
    expect(log.hasEntriesToPersist).toBe(false);
    expect(log.maybeAppend(2, 2, 2, [])).toBeNull();
    expect(() => log.maybeAppend(1, 1, 2, entries([5], 2))).toThrow(RaftInvariantError);
  });

  it('hands entries out for persisting once, marks them stable only when their write lands, and re-hands an overwritten tail', () => {
    const log = new RaftLog(BASE, entries([1]), 1, 1);
    log.maybeAppend(1, 1, 1, entries([2, 2, 2], 2));
    const first = log.takeEntriesToPersist();
    expect(first.map((e) => e.index)).toEqual([2, 3, 4]);
    expect(log.takeEntriesToPersist()).toEqual([]);
    // A new leader overwrites 3..4 while the write of 2..4 is still under way.
    expect(log.maybeAppend(2, 2, 1, entries([3], 3))).toBe(3);
    expect(log.takeEntriesToPersist().map((e) => [e.index, e.term])).toEqual([[3, 3]]);
    // The older write lands first: its last entry is gone from the log, so nothing becomes stable.
    log.stableTo(4, 2);
    expect(log.stable).toBe(1);
    log.stableTo(3, 3);
    expect(log.stable).toBe(3);
  });

  it('compacts to a snapshot that remembers term and membership', () => {
    const membership = { voters: ['a'], learners: [] };
    const log = new RaftLog(BASE, [{ kind: 'config', index: 1, term: 1, membership }, ...entries([1, 2], 2)], 3, 3);
    log.compact(2, new Uint8Array([9]));
    expect(log.snapshot.meta).toEqual({ index: 2, term: 1, membership });
    expect(log.term(1)).toBeUndefined();
    expect(log.term(2)).toBe(1);
    expect(log.membership).toBe(membership);
    expect(() => log.compact(4, new Uint8Array())).toThrow(/past applied/);
  });

  it('rejects a persisted log with a gap or a commit past its end', () => {
    expect(() => new RaftLog(BASE, entries([1, 1], 2), 0, 0)).toThrow(/expected index 1, found 2/);
    expect(() => new RaftLog(BASE, entries([1]), 5, 0)).toThrow(/commit 5/);
  });
});

describe('raft flow control', () => {
  it('the inflight window is bounded by count and bytes, and frees acknowledged appends', () => {
    const w = new Inflights(3, 100);
    w.add(5, 10);
    w.add(7, 10);
    expect(w.full()).toBe(false);
    w.add(9, 10);
    expect(w.full()).toBe(true);
    w.freeTo(7);
    expect(w.count).toBe(1);
    w.add(12, 95);
    expect(w.full()).toBe(true);
    w.freeFirst();
    expect(w.count).toBe(1);
    expect(() => w.add(11, 1)).toThrow(/not above/);
  });

  it('a probe sends one append at a time; replicate pipelines; stale refusals are ignored', () => {
    const pr = new Progress(11, false, 2, 1 << 20);
    pr.sentAppend(10, 0);
    expect(pr.isPaused()).toBe(true);
    expect(pr.maybeDecrTo(9, 3)).toBe(false);
    expect(pr.maybeDecrTo(10, 3)).toBe(true);
    expect(pr.next).toBe(4);
    pr.maybeUpdate(3);
    pr.becomeReplicate();
    pr.sentAppend(6, 30);
    pr.sentAppend(8, 30);
    expect([pr.next, pr.isPaused()]).toEqual([9, true]);
    expect(pr.maybeDecrTo(2, 0)).toBe(false);
    pr.maybeUpdate(6);
    pr.inflights.freeTo(6);
    expect(pr.isPaused()).toBe(false);
  });
});

describe('raft quorum', () => {
  it('takes the value a majority reaches and tallies votes among voters only', () => {
    const match: Record<string, number> = { a: 9, b: 5, c: 7, d: 1, e: 3 };
    expect(quorumValue(['a', 'b', 'c', 'd', 'e'], (id) => match[id] ?? 0)).toBe(5);
    expect(quorumValue(['a', 'b', 'c', 'd'], (id) => match[id] ?? 0)).toBe(5);
    const votes = new Map([['a', true], ['b', true], ['x', true]]);
    expect(voteOutcome(['a', 'b', 'c', 'd', 'e'], votes)).toBe('pending');
    votes.set('c', true);
    expect(voteOutcome(['a', 'b', 'c', 'd', 'e'], votes)).toBe('won');
    expect(voteOutcome(['a', 'b', 'c'], new Map([['b', false], ['c', false]]))).toBe('lost');
  });
});

describe('raft snapshot assembly', () => {
  const meta: SnapshotMeta = { index: 9, term: 2, membership: EMPTY_MEMBERSHIP };
  const chunk = (offset: number, bytes: number[], totalBytes = 5, m = meta): SnapshotChunk => ({
    type: 'snapshot_chunk', from: 'l', to: 'f', term: 2, meta: m, offset, totalBytes, data: new Uint8Array(bytes),
  });

  it('accepts chunks only at the expected offset and assembles them', () => {
    const a = new SnapshotAssembler(100);
    expect(a.accept(chunk(2, [3, 4]))).toEqual({ nextOffset: 0, snapshot: null });
    expect(a.accept(chunk(0, [1, 2])).nextOffset).toBe(2);
    expect(a.accept(chunk(0, [1, 2])).nextOffset).toBe(2);
    expect(a.accept(chunk(4, [5])).nextOffset).toBe(2);
    expect(a.accept(chunk(2, [3, 4])).nextOffset).toBe(4);
    expect(a.accept(chunk(4, [5])).snapshot?.data).toEqual(new Uint8Array([1, 2, 3, 4, 5]));
  });

  it('restarts for a different snapshot and refuses one over the size limit', () => {
    const a = new SnapshotAssembler(100);
    a.accept(chunk(0, [1, 2]));
    const newer = { ...meta, index: 12 };
    expect(a.accept(chunk(0, [7], 1, newer)).snapshot?.meta.index).toBe(12);
    expect(() => a.accept(chunk(0, [1], 101))).toThrow(/exceeds maxSnapshotBytes 100/);
    expect(() => a.accept(chunk(4, [1, 2]))).toThrow(/exceeds totalBytes 5/);
  });
});

describe('raft configuration and persisted state', () => {
  it('names the field of a bad setting', () => {
    expect(() => resolveRaftConfig({ electionTicks: 0 })).toThrow(/electionTicks must be a positive integer, got 0/);
    expect(() => resolveRaftConfig({ heartbeatTicks: 10, electionTicks: 10 })).toThrow(/heartbeatTicks \(10\) must be below electionTicks \(10\)/);
  });

  it('refuses a persisted state whose hard state lags its log', () => {
    const state = bootstrapState(['a', 'b', 'c']);
    expect(
      () => new RaftCore({ id: 'a', random: () => 0, storage: { ...state, hardState: { term: 0, vote: null, commit: 0 } } }),
    ).toThrow(RaftInputError);
    expect(() => new RaftCore({ id: '', random: () => 0, storage: state })).toThrow(/id must be a non-empty string/);
  });

  it('refuses advance() with a Ready that is not the outstanding one', () => {
    const core = new RaftCore({ id: 'a', random: () => 0, storage: bootstrapState(['a']) });
    const ready = core.ready();
    if (ready === null) throw new Error('expected a Ready');
    core.advance(ready);
    expect(() => core.advance(ready)).toThrow(RaftInvariantError);
  });
});

describe('compaction schedule', () => {
  /** The indices at which a member with `phase` snapshots while `applied` climbs in batches of `step`. */
  function snapshots(phase: number, every: number, upTo: number, step = 1, from = 0): number[] {
    const taken: number[] = [];
    let last = from;
    for (let applied = from + step; applied <= upTo; applied += step) {
      if (compactionDue(applied, last, every, phase)) taken.push((last = applied));
    }
    return taken;
  }

  it('spreads the members of a group evenly over the interval, whatever order their ids come in', () => {
    const members = ['dc3', 'dc1', 'dc2'];
    expect(members.map((id) => compactionPhase(id, members, 9000))).toEqual([6000, 0, 3000]);
    expect(compactionPhase('dc1', ['dc1'], 9000)).toBe(0);
    expect(compactionPhase('gone', members, 9000)).toBe(0);
  });

  it('takes one snapshot per interval at the phase, never two within half an interval, never more than an interval apart', () => {
    // Phase 0 is the old schedule: every multiple of the interval.
    expect(snapshots(0, 1000, 5000)).toEqual([1000, 2000, 3000, 4000, 5000]);
    // Three members of one group never snapshot at the same index.
    const [a, b, c] = [0, 333, 666].map((phase) => snapshots(phase, 1000, 5000));
    expect(b).toEqual([500, 1333, 2333, 3333, 4333]);
    expect(c).toEqual([666, 1666, 2666, 3666, 4666]);
    expect(new Set([...(a ?? []), ...(b ?? []), ...(c ?? [])]).size).toBe(15);
    // Batched applies and a snapshot installed off the phase (index 1950): gaps stay within [every/2, every + a batch].
    for (const [phase, step, from] of [[0, 7, 0], [333, 13, 1950], [666, 1, 1950], [999, 40, 123]] as const) {
      const taken = [from, ...snapshots(phase, 1000, 20_000, step, from)];
      for (let i = 1; i < taken.length; i++) {
        const gap = (taken[i] as number) - (taken[i - 1] as number);
        expect(gap).toBeGreaterThanOrEqual(500);
        expect(gap).toBeLessThanOrEqual(1000 + step);
      }
    }
  });
});
