import { describe, expect, it } from 'vitest';
import { RaftCore } from '../../src/consensus/raft/core.ts';
import { bootstrapState } from '../../src/consensus/raft/bootstrap.ts';
import { RaftInputError } from '../../src/consensus/raft/types.ts';
import { ScriptedCluster } from '../sim/scripted.ts';

const IDS = ['n1', 'n2', 'n3'];

describe('raft election', () => {
  it('elects the node that times out first, and it commits an empty entry of its term', () => {
    const c = new ScriptedCluster(IDS);
    c.elect('n1');
    expect(c.leaders()).toEqual(['n1']);
    const leader = c.core('n1');
    expect(leader.term).toBe(2);
    expect(leader.commitIndex).toBe(2);
    expect(c.node('n2').applied.get(2)).toMatchObject({ kind: 'normal', term: 2 });
    expect(c.core('n2').leader).toBe('n1');
  });

  it('draws randomized election timeouts in [T, 2T) from the injected random', () => {
    const fire = (r: number): number => {
      const core = new RaftCore({ id: 'n1', storage: bootstrapState(IDS), random: () => r, config: { electionTicks: 10 } });
      for (let t = 1; t <= 40; t++) {
        core.tick();
        if (core.role !== 'follower') return t;
      }
      return -1;
    };
    expect(fire(0)).toBe(10);
    expect(fire(0.5)).toBe(15);
    expect(fire(0.999)).toBe(19);
    expect(() => fire(1)).toThrow(/outside \[0, 1\)/);
  });

  it('a single voter elects itself and commits alone', () => {
    const c = new ScriptedCluster(['solo']);
    c.elect('solo');
    expect(c.leaders()).toEqual(['solo']);
    const index = c.propose('solo', 'x');
    c.stabilize();
    expect(c.node('solo').applied.get(index)?.kind).toBe('normal');
  });

  it('answers a vote request from an older term with its own term, so the candidate catches up instead of campaigning below it', () => {
    const core = new RaftCore({ id: 'n3', storage: bootstrapState(IDS), random: () => 0, config: { preVote: false } });
    for (let t = 0; t < 10; t++) core.tick(); // n3 campaigns: term 2
    expect(core.term).toBe(2);
    drain(core);
    expect(core.role).toBe('candidate');
    core.step({ type: 'vote_request', from: 'n1', to: 'n3', term: 1, preVote: false, transfer: false, lastIndex: 9, lastTerm: 1 });
    const out = drain(core);
    expect(out).toContainEqual(expect.objectContaining({ type: 'vote_response', to: 'n1', term: 2, granted: false, preVote: false }));
    // The stale candidate steps down to the newer term on hearing it.
    const n1 = new RaftCore({ id: 'n1', storage: bootstrapState(IDS), random: () => 0, config: { preVote: false } });
    n1.step(out.find((m) => m.type === 'vote_response') as Parameters<RaftCore['step']>[0]);
    expect(n1.term).toBe(2);
    expect(n1.role).toBe('follower');
  });

  it('PreVote: a partitioned node does not inflate its term or disrupt the leader when it returns', () => {
    const c = new ScriptedCluster(IDS);
    c.elect('n1');
    const term = c.core('n1').term;
    c.isolate('n3');
    c.tick('n3', 100);
    expect(c.core('n3').term).toBe(term);
    expect(c.core('n3').role).toBe('pre_candidate');
    c.heal();
    c.tickAll(2);
    c.stabilize();
    expect(c.leaders()).toEqual(['n1']);
    expect(c.core('n1').term).toBe(term);
    expect(c.core('n3').leader).toBe('n1');
  });

  it('without PreVote the same partitioned node does disrupt (the test above can fail)', () => {
    const c = new ScriptedCluster(IDS, { preVote: false, checkQuorum: false });
    c.elect('n1');
    const term = c.core('n1').term;
    c.isolate('n3');
    c.tick('n3', 100);
    expect(c.core('n3').term).toBeGreaterThan(term + 5);
    c.heal();
    c.tickAll(2);
    c.stabilize();
    expect(c.core('n1').term).toBeGreaterThan(term);
  });

  it('CheckQuorum: a leader that hears from no quorum for an election timeout steps down', () => {
    const c = new ScriptedCluster(IDS);
    c.elect('n1');
    c.isolate('n1');
    c.tick('n1', 9);
    expect(c.core('n1').role).toBe('leader');
    c.tick('n1', 20);
    expect(c.core('n1').role).toBe('follower');
    expect(c.core('n1').propose(new Uint8Array([1]))).toEqual({ kind: 'not_leader', leaderHint: null });
  });

  it('without CheckQuorum the isolated leader stays leader (the test above can fail)', () => {
    const c = new ScriptedCluster(IDS, { checkQuorum: false });
    c.elect('n1');
    c.isolate('n1');
    c.tick('n1', 50);
    expect(c.core('n1').role).toBe('leader');
  });

  it('leader lease: followers that hear from a leader ignore a higher-term vote request', () => {
    const c = new ScriptedCluster(IDS, { preVote: false });
    c.elect('n1');
    const term = c.core('n1').term;
    // n3 misses heartbeats (one-way), times out and campaigns with a higher term.
    c.partition(['n1', 'n2'], ['n3']);
    c.tick('n3', 10);
    expect(c.core('n3').role).toBe('candidate');
    c.heal();
    c.deliver((m) => m.from === 'n3' && m.type === 'vote_request' && m.to === 'n2');
    expect(c.core('n2').term).toBe(term);
    expect(c.core('n2').leader).toBe('n1');
  });

  it('a follower votes once per term and only for a log at least as up to date as its own', () => {
    const c = new ScriptedCluster(IDS);
    c.elect('n1');
    c.propose('n1', 'a');
    c.stabilize();
    const n2 = c.core('n2');
    const term = n2.term;
    // A stale candidate (shorter log) is refused even though it has a higher term.
    n2.tick();
    for (let i = 0; i < 30; i++) n2.tick(); // leave the leader lease
    c.flush();
    c.inFlight = [];
    n2.step({ type: 'vote_request', from: 'n3', to: 'n2', term: term + 1, preVote: false, transfer: false, lastIndex: 1, lastTerm: 1 });
    c.flush();
    const refusal = c.inFlight.find((m) => m.type === 'vote_response' && m.to === 'n3');
    expect(refusal).toMatchObject({ granted: false });
    // An up-to-date one is granted, and the vote is durable before the grant leaves.
    n2.step({ type: 'vote_request', from: 'n1', to: 'n2', term: term + 1, preVote: false, transfer: false, lastIndex: 10, lastTerm: term });
    c.flush();
    expect(c.node('n2').disk.hardState).toMatchObject({ term: term + 1, vote: 'n1' });
    n2.step({ type: 'vote_request', from: 'n3', to: 'n2', term: term + 1, preVote: false, transfer: false, lastIndex: 10, lastTerm: term });
    c.flush();
    const grants = c.inFlight.filter((m) => m.type === 'vote_response' && m.granted && !m.preVote);
    expect(grants.map((m) => m.to)).toEqual(['n1']);
  });

  it('leadership transfer: the transferee catches up, gets TimeoutNow and wins at once', () => {
    const c = new ScriptedCluster(IDS);
    c.elect('n1');
    c.isolate('n2');
    c.propose('n1', 'a');
    c.propose('n1', 'b');
    c.stabilize();
    c.heal();
    const term = c.core('n1').term;
    expect(c.core('n1').transferLeadership('n2')).toEqual({ kind: 'started' });
    expect(c.core('n1').propose(new Uint8Array([1]))).toEqual({ kind: 'dropped', reason: 'transferring' });
    c.stabilize();
    expect(c.leaders()).toEqual(['n2']);
    expect(c.core('n2').term).toBe(term + 1);
    expect(c.sent.some((m) => m.type === 'timeout_now' && m.to === 'n2')).toBe(true);
    // The new leader has every entry: it commits its own and the old ones.
    const index = c.propose('n2', 'c');
    c.stabilize();
    expect(c.node('n1').applied.get(index)?.term).toBe(term + 1);
  });

  it('leadership transfer is abandoned after an election timeout if the transferee never answers', () => {
    const c = new ScriptedCluster(IDS);
    c.elect('n1');
    c.isolate('n2');
    c.core('n1').transferLeadership('n2');
    c.tick('n1', 10);
    c.stabilize();
    expect(c.core('n1').status().leadTransferee).toBeNull();
    expect(c.core('n1').propose(new Uint8Array([1])).kind).toBe('accepted');
  });

  it('refuses transfer to itself or a non-voter with a reason', () => {
    const c = new ScriptedCluster(IDS);
    c.elect('n1');
    expect(c.core('n1').transferLeadership('n1')).toMatchObject({ kind: 'rejected' });
    expect(c.core('n1').transferLeadership('n9')).toEqual({ kind: 'rejected', reason: 'node n9 is not a voter' });
    expect(c.core('n2').transferLeadership('n3')).toEqual({ kind: 'not_leader', leaderHint: 'n1' });
  });

  it('rejects malformed messages with an error naming the field', () => {
    const c = new ScriptedCluster(IDS);
    const n2 = c.core('n2');
    expect(() =>
      n2.step({ type: 'append', from: 'n1', to: 'n2', term: 1, prevIndex: 1, prevTerm: 1, commit: 0, entries: [
        { kind: 'normal', index: 3, term: 1, data: new Uint8Array() },
      ] }),
    ).toThrow(RaftInputError);
    expect(() => n2.step({ type: 'heartbeat', from: 'n1', to: 'n3', term: 1, commit: 0, readSeq: 0 })).toThrow(/to is n3/);
    expect(() => n2.step({ type: 'heartbeat', from: 'n1', to: 'n2', term: -1, commit: 0, readSeq: 0 })).toThrow(/term must be/);
  });
});

function drain(core: RaftCore): Parameters<RaftCore['step']>[0][] {
  const out: Parameters<RaftCore['step']>[0][] = [];
  for (let ready = core.ready(); ready !== null; ready = core.ready()) {
    out.push(...ready.messages, ...ready.persistMessages);
    core.advance(ready);
    if (ready.mustSync) core.persisted(ready);
  }
  return out;
}
