import { describe, expect, it } from 'vitest';
import { ScriptedCluster } from '../sim/scripted.ts';

const IDS = ['n1', 'n2', 'n3'];

describe('raft ReadIndex', () => {
  it('a leader answers a read only after a quorum confirms it in a heartbeat round', () => {
    const c = new ScriptedCluster(IDS);
    c.elect('n1');
    const n1 = c.node('n1');
    expect(n1.core.readIndex('r1')).toEqual({ kind: 'pending' });
    c.flush();
    expect(n1.readStates).toEqual([]);
    const round = c.inFlight.filter((m) => m.type === 'heartbeat');
    expect(round.map((m) => m.to).sort()).toEqual(['n2', 'n3']);
    // One follower's echo plus the leader itself is a quorum of three.
    c.deliver((m) => m.type === 'heartbeat' && m.to === 'n2');
    c.deliver((m) => m.type === 'heartbeat_response' && m.from === 'n2');
    expect(n1.readStates).toEqual([{ ctx: 'r1', index: n1.core.commitIndex }]);
  });

  it('an isolated leader never answers; it answers once a quorum is back', () => {
    const c = new ScriptedCluster(IDS, { checkQuorum: false });
    c.elect('n1');
    const index = c.propose('n1', 'x');
    c.stabilize();
    c.isolate('n1');
    c.core('n1').readIndex('r1');
    c.tick('n1', 5);
    c.stabilize();
    expect(c.node('n1').readStates).toEqual([]);
    c.heal();
    c.tick('n1', 1);
    c.stabilize();
    expect(c.node('n1').readStates).toEqual([{ ctx: 'r1', index }]);
  });

  it('a deposed leader drops its pending reads instead of answering them', () => {
    const c = new ScriptedCluster(IDS, { checkQuorum: false });
    c.elect('n1');
    c.isolate('n1');
    c.core('n1').readIndex('stale');
    c.flush();
    c.elect('n2');
    c.propose('n2', 'newer');
    c.stabilize();
    c.heal();
    c.tick('n1', 1);
    c.tick('n2', 1);
    c.stabilize();
    expect(c.core('n1').role).toBe('follower');
    expect(c.node('n1').readStates).toEqual([]);
  });

  it('a follower forwards the read and learns the index to wait for', () => {
    const c = new ScriptedCluster(IDS);
    c.elect('n1');
    const index = c.propose('n1', 'x');
    c.stabilize();
    expect(c.core('n2').readIndex('f1')).toEqual({ kind: 'pending' });
    c.stabilize();
    expect(c.node('n2').readStates).toEqual([{ ctx: 'f1', index }]);
    expect(c.sent.some((m) => m.type === 'read_index' && m.from === 'n2')).toBe(true);
  });

  it('a new leader waits until an entry of its term commits, then answers with that commit index', () => {
    const c = new ScriptedCluster(IDS);
    // The empty entry of the new term reaches nobody, so it cannot commit yet.
    c.elect('n1', (m) => m.type === 'append');
    expect(c.core('n1').role).toBe('leader');
    expect(c.core('n1').commitIndex).toBeLessThan(c.core('n1').lastIndex);
    c.core('n1').readIndex('early');
    c.tick('n1', 3);
    c.stabilize((m) => m.type === 'append');
    expect(c.node('n1').readStates).toEqual([]);
    c.tick('n1', 1);
    c.stabilize();
    const ownEntry = c.core('n1').lastIndex;
    expect(c.node('n1').readStates).toEqual([{ ctx: 'early', index: ownEntry }]);
  });

  it('without a known leader a read fails fast, and the pending queue is bounded', () => {
    const c = new ScriptedCluster(IDS, { maxPendingReads: 2 });
    expect(c.core('n2').readIndex('x')).toEqual({ kind: 'not_leader', leaderHint: null });
    c.elect('n1');
    c.isolate('n1');
    const n1 = c.core('n1');
    expect([n1.readIndex('a').kind, n1.readIndex('b').kind, n1.readIndex('c')]).toEqual([
      'pending',
      'pending',
      { kind: 'dropped', reason: 'pending_read_limit' },
    ]);
  });

  it('a single voter answers reads at once', () => {
    const c = new ScriptedCluster(['solo']);
    c.elect('solo');
    c.core('solo').readIndex('r');
    c.flush();
    expect(c.node('solo').readStates).toEqual([{ ctx: 'r', index: c.core('solo').commitIndex }]);
  });
});
