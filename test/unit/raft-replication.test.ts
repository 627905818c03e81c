import { describe, expect, it } from 'vitest';
import type { Message } from '../../src/consensus/raft/types.ts';
import { RaftInvariantError } from '../../src/consensus/raft/types.ts';
import { ScriptedCluster } from '../sim/scripted.ts';

const FIVE = ['n1', 'n2', 'n3', 'n4', 'n5'];

function appendsFrom(from: string, messages: readonly Message[]): Extract<Message, { type: 'append' }>[] {
  return messages.filter((m): m is Extract<Message, { type: 'append' }> => m.type === 'append' && m.from === from);
}

describe('raft replication', () => {
  it('commits a proposal once a majority persisted it, and every node applies it', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3']);
    c.elect('n1');
    c.isolate('n3');
    const index = c.propose('n1', 'x');
    c.stabilize();
    expect(c.core('n1').commitIndex).toBe(index);
    expect(c.node('n3').applied.has(index)).toBe(false);
    c.heal();
    c.tick('n1', 3);
    c.stabilize();
    expect(c.node('n3').applied.get(index)?.kind).toBe('normal');
  });

  it('a leader replicates while its own write is under way, counts its copy only once persisted, and hands out the next Ready meanwhile', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3']);
    c.elect('n1');
    const n1 = c.core('n1');
    expect(n1.propose(new Uint8Array([7])).kind).toBe('accepted');
    const ready = n1.ready();
    if (ready === null) throw new Error('no ready');
    expect(ready.entries.map((e) => e.index)).toEqual([3]);
    expect(ready.mustSync).toBe(true);
    // The appends may leave before the leader's own write lands.
    expect(ready.messages.filter((m) => m.type === 'append')).toHaveLength(2);
    expect(ready.persistMessages).toEqual([]);
    n1.advance(ready);
    // The write is still under way: a second proposal goes out in the next Ready, with only the new entry.
    expect(n1.propose(new Uint8Array([8])).kind).toBe('accepted');
    const second = n1.ready();
    expect(second?.entries.map((e) => e.index)).toEqual([4]);
    if (second === null) throw new Error('no second ready');
    n1.advance(second);
    // One follower's ack is not a majority of three without the leader's own (unpersisted) copy.
    n1.step({ type: 'append_response', from: 'n2', to: 'n1', term: n1.term, success: true, index: 3, hintIndex: 0, hintTerm: 0 });
    expect(n1.commitIndex).toBe(2);
    expect(() => n1.persisted(second)).toThrow(RaftInvariantError); // writes land in order
    n1.persisted(ready);
    expect(n1.commitIndex).toBe(3);
    // Two followers are a majority without the leader's copy (thesis 10.2.1).
    n1.step({ type: 'append_response', from: 'n2', to: 'n1', term: n1.term, success: true, index: 4, hintIndex: 0, hintTerm: 0 });
    n1.step({ type: 'append_response', from: 'n3', to: 'n1', term: n1.term, success: true, index: 4, hintIndex: 0, hintTerm: 0 });
    expect(n1.commitIndex).toBe(4);
  });

  it("a follower's ack waits for its write: it is among the messages that leave only once the write is durable", () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3']);
    c.elect('n1');
    const n2 = c.core('n2');
    const last = n2.lastIndex;
    const entry = { kind: 'normal' as const, index: last + 1, term: 2, data: new Uint8Array([1]) };
    n2.step({ type: 'append', from: 'n1', to: 'n2', term: 2, prevIndex: last, prevTerm: 2, entries: [entry], commit: last });
    const ready = n2.ready();
    expect(ready?.mustSync).toBe(true);
    expect(ready?.messages).toEqual([]);
    expect(ready?.persistMessages).toEqual([expect.objectContaining({ type: 'append_response', success: true, index: last + 1 })]);
  });

  it('figure 8: an old-term entry on a majority is not committed until an entry of the current term is', () => {
    const c = new ScriptedCluster(FIVE, { checkQuorum: false });
    c.elect('n1');
    const base = c.core('n1').lastIndex;
    // (a) n1 (term 2) gets X only onto n2.
    c.partition(['n1', 'n2'], ['n3', 'n4', 'n5']);
    const x = c.propose('n1', 'X');
    c.stabilize();
    expect(x).toBe(base + 1);
    // (b) n5 wins term 3 with n3, n4; its own entry at X's index reaches nobody.
    c.crash('n1');
    c.elect('n5', (m) => m.from === 'n5' && m.type === 'append');
    expect(c.core('n5').role).toBe('leader');
    const termOfN5 = c.core('n5').term;
    expect(c.core('n5').lastIndex).toBe(x);
    c.crash('n5');
    // (c) n1 comes back, wins term 4 with n2, n3, n4, and copies X to n3 but not its own term-4 entry.
    c.restart('n1');
    c.partition(['n1', 'n2', 'n3', 'n4'], ['n5']);
    const leaderTerm = c.core('n1').term + 2;
    // n1's appends reach the others stripped of its own-term entries.
    const stripOwn = (m: Message): Message =>
      m.type === 'append' && m.from === 'n1' ? { ...m, entries: m.entries.filter((e) => e.term !== leaderTerm) } : m;
    c.tick('n1', 10);
    c.stabilize(undefined, stripOwn);
    c.tick('n1', 10);
    c.stabilize(undefined, stripOwn);
    expect(c.core('n1').role).toBe('leader');
    expect(c.core('n1').term).toBe(leaderTerm);
    c.tick('n1', 2);
    c.stabilize(undefined, stripOwn);
    expect(c.core('n3').termAt(x)).toBe(2);
    expect(c.core('n4').termAt(x)).toBe(2);
    expect(c.core('n3').lastIndex).toBe(x);
    // X is on n1..n4 — a majority — but it is of term 2 and n1 leads term 4: not committed.
    expect(c.core('n1').commitIndex).toBeLessThan(x);
    expect(c.node('n1').applied.has(x)).toBe(false);
    // (d) n1 crashes; n5 (last term 3) can win and overwrite X everywhere. Nobody ever applied X.
    c.crash('n1');
    c.restart('n5');
    c.heal();
    expect(c.elect('n5')).toBe(true);
    for (const id of ['n2', 'n3', 'n4', 'n5']) {
      expect(c.node(id).applied.get(x)?.term).toBe(termOfN5);
    }
  });

  it('figure 8 (e): once the leader commits an entry of its term, the old-term entry commits with it', () => {
    const c = new ScriptedCluster(FIVE, { checkQuorum: false });
    c.elect('n1');
    c.partition(['n1', 'n2'], ['n3', 'n4', 'n5']);
    const x = c.propose('n1', 'X');
    c.stabilize();
    c.crash('n1');
    c.elect('n5', (m) => m.from === 'n5' && m.type === 'append');
    c.crash('n5');
    c.restart('n1');
    c.partition(['n1', 'n2', 'n3', 'n4'], ['n5']);
    c.elect('n1');
    expect(c.core('n1').commitIndex).toBeGreaterThan(x);
    expect(c.node('n3').applied.get(x)?.term).toBe(2);
  });

  it('fast back-off: a follower with a long divergent tail is repaired in a few round trips', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3'], { maxEntriesPerAppend: 100, checkQuorum: false });
    c.elect('n1');
    c.partition(['n1'], ['n2', 'n3']);
    for (let i = 0; i < 50; i++) c.propose('n1', `stale${i}`);
    c.stabilize();
    c.crash('n1');
    c.elect('n2');
    for (let i = 0; i < 40; i++) c.propose('n2', `fresh${i}`);
    c.stabilize();
    // A leader elected now starts probing n1 at the end of its long log, where n1 diverges.
    c.core('n2').transferLeadership('n3');
    c.stabilize();
    expect(c.leaders()).toEqual(['n3']);
    c.restart('n1');
    c.heal();
    const before = c.sent.length;
    c.tick('n3', 3);
    c.stabilize();
    const traffic = c.sent.slice(before);
    const rejects = traffic.filter((m) => m.type === 'append_response' && !m.success && m.from === 'n1');
    // With the (index, term) hint one refusal skips the whole term-2 tail; one-by-one would take ~40.
    expect(rejects.length).toBe(1);
    const last = c.core('n3').lastIndex;
    expect(c.core('n1').lastIndex).toBe(last);
    expect(c.core('n1').commitIndex).toBe(last);
    for (let i = 1; i <= last; i++) expect(c.core('n1').termAt(i)).toBe(c.core('n3').termAt(i));
  });

  it('batches entries per append and bounds appends in flight per follower', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3'], { maxEntriesPerAppend: 4, maxInflightAppends: 2 });
    c.elect('n1');
    c.stabilize();
    const n1 = c.core('n1');
    for (let i = 0; i < 20; i++) n1.propose(new Uint8Array([i]));
    c.flush();
    const toN2 = appendsFrom('n1', c.inFlight).filter((m) => m.to === 'n2');
    // Pipelined (two appends out before any ack), each at most 4 entries, then paused.
    expect(toN2).toHaveLength(2);
    expect(toN2.map((m) => m.entries.length)).toEqual([4, 4]);
    expect(toN2[1]?.prevIndex).toBe((toN2[0]?.prevIndex ?? 0) + 4);
    c.stabilize();
    expect(c.core('n2').commitIndex).toBe(n1.lastIndex);
    expect(n1.status().progress?.get('n2')?.state).toBe('replicate');
  });

  it('drops proposals beyond the uncommitted bound, and accepts again once they commit', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3'], { maxUncommittedEntries: 5 });
    c.elect('n1');
    c.isolate('n2');
    c.isolate('n3');
    const results = Array.from({ length: 7 }, (_, i) => c.core('n1').propose(new Uint8Array([i])).kind);
    expect(results).toEqual(['accepted', 'accepted', 'accepted', 'accepted', 'accepted', 'dropped', 'dropped']);
    expect(c.core('n1').propose(new Uint8Array(2 * 1024 * 1024))).toEqual({ kind: 'dropped', reason: 'too_large' });
    c.heal();
    c.tick('n1', 2);
    c.stabilize();
    expect(c.core('n1').propose(new Uint8Array([9])).kind).toBe('accepted');
  });

  it('a follower that crashes before persisting loses the entries and is repaired', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3']);
    c.elect('n1');
    const n2 = c.node('n2');
    const index = c.propose('n1', 'x');
    // n2 receives the append but crashes before its Ready is persisted.
    c.flush();
    const append = c.inFlight.find((m) => m.type === 'append' && m.to === 'n2');
    if (append === undefined) throw new Error('no append to n2');
    c.inFlight = c.inFlight.filter((m) => m !== append);
    n2.core.step(append);
    c.crash('n2');
    c.restart('n2');
    expect(n2.core.lastIndex).toBe(index - 1);
    c.tick('n1', 3);
    c.stabilize();
    expect(n2.applied.get(index)?.kind).toBe('normal');
  });

  it("tells a follower's driver what may wait for a write under way: acks and new entries may, entries to apply and ReadIndex requests may not", () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3']);
    c.elect('n1');
    const n2 = c.core('n2');
    const last = n2.lastIndex;
    const entry = (index: number) => ({ kind: 'normal' as const, index, term: 2, data: new Uint8Array([index]) });
    n2.step({ type: 'append', from: 'n1', to: 'n2', term: 2, prevIndex: last, prevTerm: 2, entries: [entry(last + 1)], commit: last });
    expect(n2.hasReady()).toBe(true);
    expect(n2.hasUrgentReady()).toBe(false); // an entry to persist and its ack: both wait for the write anyway
    // A ReadIndex request leaves at once (it promises nothing about n2's disk): urgent.
    expect(n2.readIndex('r1').kind).toBe('pending');
    expect(n2.hasUrgentReady()).toBe(true);
    const ready = n2.ready();
    expect(ready?.messages).toEqual([expect.objectContaining({ type: 'read_index', ctx: 'r1' })]);
    expect(ready?.persistMessages).toEqual([expect.objectContaining({ type: 'append_response', index: last + 1 })]);
    if (ready === null) throw new Error('expected a Ready');
    n2.advance(ready);
    // The leader's commit index arrives: something to apply is urgent.
    n2.step({ type: 'heartbeat', from: 'n1', to: 'n2', term: 2, commit: last + 1, readSeq: 0 });
    expect(n2.hasUrgentReady()).toBe(true);
  });

  it('an ack queued in an old term never leaves after a newer leader overwrote what it acknowledged', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3']);
    c.elect('n1');
    const n2 = c.core('n2');
    const last = n2.lastIndex;
    // A Ready is out (its write under way) while more messages arrive.
    n2.step({ type: 'heartbeat', from: 'n1', to: 'n2', term: 2, commit: last, readSeq: 0 });
    const outstanding = n2.ready();
    if (outstanding === null) throw new Error('expected a Ready');
    const old = { kind: 'normal' as const, index: last + 1, term: 2, data: new Uint8Array([1]) };
    n2.step({ type: 'append', from: 'n1', to: 'n2', term: 2, prevIndex: last, prevTerm: 2, entries: [old], commit: last });
    const fresh = { kind: 'normal' as const, index: last + 1, term: 3, data: new Uint8Array([2]) };
    n2.step({ type: 'append', from: 'n3', to: 'n2', term: 3, prevIndex: last, prevTerm: 2, entries: [fresh], commit: last });
    n2.advance(outstanding);
    const next = n2.ready();
    expect(next?.entries).toEqual([fresh]);
    const acks = [...(next?.messages ?? []), ...(next?.persistMessages ?? [])].filter((m) => m.type === 'append_response');
    expect(acks).toEqual([expect.objectContaining({ to: 'n3', term: 3, success: true, index: last + 1 })]);
  });

  it('an overwrite while the older write is under way: the newer write is handed out, the older landing marks nothing stable', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3']);
    c.elect('n1');
    const n2 = c.core('n2');
    const last = n2.lastIndex;
    const old = { kind: 'normal' as const, index: last + 1, term: 2, data: new Uint8Array([1]) };
    n2.step({ type: 'append', from: 'n1', to: 'n2', term: 2, prevIndex: last, prevTerm: 2, entries: [old], commit: last });
    const first = n2.ready();
    if (first === null) throw new Error('expected a Ready');
    n2.advance(first);
    const fresh = { kind: 'normal' as const, index: last + 1, term: 3, data: new Uint8Array([2]) };
    n2.step({ type: 'append', from: 'n3', to: 'n2', term: 3, prevIndex: last, prevTerm: 2, entries: [fresh], commit: last });
    const second = n2.ready();
    if (second === null) throw new Error('expected a Ready');
    expect(second.entries).toEqual([fresh]);
    expect(second.persistMessages).toEqual(expect.arrayContaining([expect.objectContaining({ type: 'append_response', to: 'n3', term: 3, index: last + 1 })]));
    n2.advance(second);
    n2.persisted(first);
    expect(n2.stableIndex).toBe(last);
    n2.persisted(second);
    expect(n2.stableIndex).toBe(last + 1);
    expect(n2.unpersisted).toBe(0);
  });

  it('snapshot: a follower far behind gets the snapshot in chunks, installs it and catches up', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3'], { snapshotChunkBytes: 32 });
    c.elect('n1');
    c.crash('n3');
    for (let i = 0; i < 30; i++) c.propose('n1', `v${i}`);
    c.stabilize();
    const applied = c.core('n1').status().applied;
    c.compact('n1', applied - 5, 100);
    expect(c.core('n1').snapshotIndex).toBe(applied - 5);
    c.restart('n3');
    const before = c.sent.length;
    c.tick('n1', 3);
    c.stabilize();
    const chunks = c.sent.slice(before).filter((m) => m.type === 'snapshot_chunk' && m.to === 'n3');
    expect(chunks.length).toBe(4); // 100 bytes in 32-byte chunks
    expect(c.node('n3').disk.snapshot.meta.index).toBe(applied - 5);
    expect(c.node('n3').disk.snapshot.data).toEqual(new Uint8Array(100).fill((applied - 5) % 251));
    expect(c.core('n3').commitIndex).toBe(c.core('n1').lastIndex);
    // It applies what follows the snapshot, not what the snapshot covers.
    expect(c.node('n3').applied.has(applied - 5)).toBe(false);
    expect(c.node('n3').applied.has(applied)).toBe(true);
    // And it survives a restart from its disk.
    c.crash('n3');
    c.restart('n3');
    expect(c.core('n3').snapshotIndex).toBe(applied - 5);
  });

  it('snapshot transfer survives lost and duplicated chunks', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3'], { snapshotChunkBytes: 10 });
    c.elect('n1');
    c.crash('n3');
    for (let i = 0; i < 10; i++) c.propose('n1', `v${i}`);
    c.stabilize();
    c.compact('n1', c.core('n1').status().applied, 55);
    c.restart('n3');
    let n = 0;
    // Drop every third chunk; duplicate the others.
    for (let round = 0; round < 60 && c.core('n3').snapshotIndex === 0; round++) {
      c.tick('n1', 1);
      c.flush();
      const chunks = c.inFlight.filter((m) => m.type === 'snapshot_chunk');
      c.inFlight = c.inFlight.filter((m) => m.type !== 'snapshot_chunk' || n++ % 3 !== 0);
      c.inFlight.push(...chunks.filter((m) => c.inFlight.includes(m)));
      c.stabilize((m) => m.type === 'snapshot_chunk' && n++ % 3 === 0);
    }
    expect(c.core('n3').snapshotIndex).toBe(c.core('n1').snapshotIndex);
    c.tick('n1', 2);
    c.stabilize();
    expect(c.core('n3').commitIndex).toBe(c.core('n1').commitIndex);
  });
});
