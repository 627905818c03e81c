import { describe, expect, it } from 'vitest';
import { applyConfigChange, createMembership } from '../../src/consensus/raft/membership.ts';
import { ScriptedCluster } from '../sim/scripted.ts';

/** Bring joiner `id` in as a learner and let it catch up. */
function addLearner(c: ScriptedCluster, leader: string, id: string): void {
  c.addJoiner(id);
  expect(c.core(leader).proposeConfigChange({ type: 'add_learner', node: id }).kind).toBe('accepted');
  c.tick(leader, 2);
  c.stabilize();
}

describe('raft membership', () => {
  it('validates single-server changes with reasons', () => {
    const m = createMembership(['a', 'b'], ['c']);
    expect(applyConfigChange(m, { type: 'add_learner', node: 'd' })).toEqual({ voters: ['a', 'b'], learners: ['c', 'd'] });
    expect(applyConfigChange(m, { type: 'promote', node: 'c' })).toEqual({ voters: ['a', 'b', 'c'], learners: [] });
    expect(applyConfigChange(m, { type: 'remove', node: 'c' })).toEqual({ voters: ['a', 'b'], learners: [] });
    expect(applyConfigChange(m, { type: 'promote', node: 'd' })).toBe('node d is not a learner (add it as a learner first)');
    expect(applyConfigChange(m, { type: 'add_learner', node: 'a' })).toBe('node a is already a voter');
    expect(applyConfigChange(createMembership(['a']), { type: 'remove', node: 'a' })).toBe('node a is the last voter');
    expect(() => createMembership(['a', 'a'])).toThrow(/duplicate/);
  });

  it('a new leader may not change membership before committing an entry of its term; one change at a time', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3']);
    c.elect('n1', (m) => m.type === 'append');
    const n1 = c.core('n1');
    expect(n1.proposeConfigChange({ type: 'add_learner', node: 'n4' })).toEqual({ kind: 'dropped', reason: 'leader_not_ready' });
    c.tick('n1', 1);
    c.stabilize();
    c.addJoiner('n4');
    expect(n1.proposeConfigChange({ type: 'add_learner', node: 'n4' }).kind).toBe('accepted');
    expect(n1.proposeConfigChange({ type: 'add_learner', node: 'n5' })).toEqual({ kind: 'dropped', reason: 'config_change_in_flight' });
    c.stabilize();
    expect(n1.proposeConfigChange({ type: 'promote', node: 'n9' })).toMatchObject({ kind: 'rejected' });
    expect(n1.proposeConfigChange({ type: 'add_learner', node: 'n5' }).kind).toBe('accepted');
  });

  it("the single-server bug scenario (Ongaro, raft-dev 2015) cannot unfold: the fix blocks the new leader's change", () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3', 'n4'], { checkQuorum: false });
    c.elect('n1');
    addLearner(c, 'n1', 'n5');
    // n1 adds n5 as a voter; the entry reaches only n5.
    c.partition(['n1', 'n5'], ['n2', 'n3', 'n4']);
    expect(c.core('n1').proposeConfigChange({ type: 'promote', node: 'n5' }).kind).toBe('accepted');
    c.stabilize();
    c.crash('n1');
    // n2 wins in the old configuration {n1..n4} with n3 and n4; n4 is then cut off.
    expect(c.elect('n2', (m) => m.type === 'append' && m.to === 'n4')).toBe(true);
    c.partition(['n2', 'n3'], ['n4'], ['n5']);
    c.tick('n2', 2);
    c.stabilize();
    // Removing n1 now would commit in {n2,n3,n4} with n2+n3, after which n1 could
    // still win in {n1..n5} with n4 and n5 and overwrite it. So n2 must not propose it.
    expect(c.core('n2').proposeConfigChange({ type: 'remove', node: 'n1' })).toEqual({ kind: 'dropped', reason: 'leader_not_ready' });
    // With n4 back, n2's own entry commits, n4 holds a term-3 entry and will never vote for n1.
    c.partition(['n2', 'n3', 'n4'], ['n5']);
    c.tick('n2', 2);
    c.stabilize();
    expect(c.core('n2').proposeConfigChange({ type: 'remove', node: 'n1' }).kind).toBe('accepted');
    c.stabilize();
    c.restart('n1');
    c.heal();
    c.tick('n1', 30);
    c.stabilize();
    expect(c.core('n1').role).not.toBe('leader');
    expect(c.core('n2').status().membership).toEqual({ voters: ['n2', 'n3', 'n4'], learners: ['n5'] });
  });

  it('a learner replicates but neither counts toward commit nor campaigns; it is promoted once caught up', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3'], { maxLearnerLag: 2 });
    c.elect('n1');
    addLearner(c, 'n1', 'n4');
    const n1 = c.core('n1');
    expect(c.core('n4').commitIndex).toBe(n1.commitIndex);
    // Only n1 and the learner hold the next entry: not a majority of voters.
    c.partition(['n1', 'n4'], ['n2', 'n3']);
    const index = c.propose('n1', 'x');
    c.stabilize();
    expect(c.core('n4').lastIndex).toBe(index);
    expect(n1.commitIndex).toBeLessThan(index);
    // The learner never campaigns.
    c.tick('n4', 50);
    expect(c.core('n4').role).toBe('follower');
    expect(c.sent.some((m) => m.type === 'vote_request' && m.from === 'n4')).toBe(false);
    c.heal();
    c.tick('n1', 1);
    c.stabilize();
    expect(n1.commitIndex).toBe(index);
    // A learner too far behind is not promoted.
    c.isolate('n4');
    for (let i = 0; i < 5; i++) c.propose('n1', `y${i}`);
    c.stabilize();
    expect(n1.proposeConfigChange({ type: 'promote', node: 'n4' })).toEqual({ kind: 'dropped', reason: 'learner_behind' });
    c.heal();
    c.tick('n1', 1);
    c.stabilize();
    expect(n1.proposeConfigChange({ type: 'promote', node: 'n4' }).kind).toBe('accepted');
    c.stabilize();
    expect(c.core('n4').status().membership.voters).toEqual(['n1', 'n2', 'n3', 'n4']);
    // Four voters: n1 + n4 alone are not a majority any more.
    c.partition(['n1', 'n4'], ['n2', 'n3']);
    const next = c.propose('n1', 'z');
    c.stabilize();
    expect(n1.commitIndex).toBeLessThan(next);
  });

  it('a learner joining after compaction is caught up by a snapshot', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3'], { snapshotChunkBytes: 40 });
    c.elect('n1');
    for (let i = 0; i < 20; i++) c.propose('n1', `v${i}`);
    c.stabilize();
    c.compact('n1', c.core('n1').status().applied, 90);
    addLearner(c, 'n1', 'n4');
    expect(c.node('n4').disk.snapshot.meta.index).toBe(c.core('n1').snapshotIndex);
    expect(c.node('n4').disk.snapshot.meta.membership.voters).toEqual(['n1', 'n2', 'n3']);
    expect(c.core('n4').commitIndex).toBe(c.core('n1').commitIndex);
    expect(c.core('n4').status().membership.learners).toEqual(['n4']);
  });

  it('removing a voter shrinks the quorum; a removed leader steps down once its removal commits', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3']);
    c.elect('n1');
    expect(c.core('n1').proposeConfigChange({ type: 'remove', node: 'n3' }).kind).toBe('accepted');
    c.stabilize();
    c.crash('n3');
    // {n1, n2}: both are needed now.
    const index = c.propose('n1', 'x');
    c.stabilize();
    expect(c.core('n1').commitIndex).toBe(index);
    // The leader removes itself: it keeps leading until that entry commits, then stands down.
    expect(c.core('n1').proposeConfigChange({ type: 'remove', node: 'n1' }).kind).toBe('accepted');
    expect(c.core('n1').role).toBe('leader');
    c.stabilize();
    expect(c.core('n1').role).toBe('follower');
    expect(c.elect('n2')).toBe(true);
    // n2 is the only voter left and commits alone.
    c.isolate('n1');
    const solo = c.propose('n2', 'y');
    c.stabilize();
    expect(c.core('n2').commitIndex).toBe(solo);
    // The removed node never campaigns.
    c.tick('n1', 50);
    expect(c.core('n1').role).toBe('follower');
  });

  it('a follower that truncates an uncommitted config entry reverts to the previous membership', () => {
    const c = new ScriptedCluster(['n1', 'n2', 'n3', 'n4', 'n5'], { checkQuorum: false });
    c.elect('n1');
    c.addJoiner('n6');
    // The config entry reaches only n2.
    c.partition(['n1', 'n2'], ['n3', 'n4', 'n5']);
    expect(c.core('n1').proposeConfigChange({ type: 'add_learner', node: 'n6' }).kind).toBe('accepted');
    c.stabilize();
    expect(c.core('n2').status().membership.learners).toEqual(['n6']);
    c.crash('n1');
    // n3 wins without it and overwrites it on n2.
    expect(c.elect('n3')).toBe(true);
    c.heal();
    c.tick('n3', 2);
    c.stabilize();
    expect(c.core('n2').status().membership).toEqual({ voters: ['n1', 'n2', 'n3', 'n4', 'n5'], learners: [] });
    expect(c.core('n3').status().progress?.has('n6')).toBe(false);
  });
});
