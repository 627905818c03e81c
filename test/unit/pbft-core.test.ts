import { describe, expect, it } from 'vitest';
import { PbftCore } from '../../src/consensus/pbft/core.ts';
import { PbftInputError } from '../../src/consensus/pbft/types.ts';
import { seal } from '../../src/consensus/pbft/encoding.ts';
import type { StateMessage } from '../../src/consensus/pbft/types.ts';
import type { Envelope } from '../sim/pbft-harness.ts';
import { FakeKeys, LockstepCluster, SMALL_PBFT_CONFIG, deliver, makeRequest, replicaIds } from '../sim/pbft-harness.ts';

const SMALL = SMALL_PBFT_CONFIG;

function add(c: LockstepCluster, client: string, at = 'r1') {
  const request = c.request(client, { op: 'add', key: 'x', by: 1 }, at);
  c.stabilize();
  return request;
}

function values(c: LockstepCluster): string[] {
  return c.ids.map((id) => JSON.stringify([...c.driver(id).kv.values]));
}

describe('pbft core: construction', () => {
  const keys = new FakeKeys('t');
  const make = (n: number, f?: number) =>
    new PbftCore({
      id: 'r0',
      members: replicaIds(n),
      ...(f === undefined ? {} : { f }),
      sign: keys.signer('r0'),
      verify: () => true,
    });

  it('refuses fewer than 3f + 1 members, saying how many it needs', () => {
    expect(() => make(3)).toThrow(PbftInputError);
    expect(() => make(3)).toThrow('pbft needs at least 4 members to tolerate one Byzantine member (n >= 3f + 1), got 3');
    expect(() => make(5, 2)).toThrow('pbft with f = 2 needs at least 7 members (n >= 3f + 1), got 5');
    expect(make(4).f).toBe(1);
    expect(make(7).f).toBe(2);
    expect(make(6).f).toBe(1);
  });

  it('refuses a replica outside the members, repeated members and bad config, naming the field', () => {
    expect(() => new PbftCore({ id: 'x', members: replicaIds(4), sign: keys.signer('x'), verify: () => true })).toThrow(/not among the members/);
    expect(() => new PbftCore({ id: 'r0', members: ['r0', 'r0', 'r1', 'r2'], sign: keys.signer('r0'), verify: () => true })).toThrow(/must not repeat/);
    expect(() =>
      new PbftCore({ id: 'r0', members: replicaIds(4), sign: keys.signer('r0'), verify: () => true, config: { logWindow: 100 } }),
    ).toThrow(/logWindow \(100\) must be a positive multiple of checkpointInterval \(64\)/);
    expect(() =>
      new PbftCore({ id: 'r0', members: replicaIds(4), sign: keys.signer('r0'), verify: () => true, config: { retransmitTicks: 0 } }),
    ).toThrow(/retransmitTicks must be a positive integer/);
  });
});

describe('pbft core: normal case', () => {
  it('orders requests through pre-prepare, prepare and commit; every replica executes the same sequence; f + 1 replies agree', () => {
    const c = new LockstepCluster(4, SMALL);
    const requests = [add(c, 'a'), add(c, 'b', 'r2'), add(c, 'a', 'r3')];
    expect(requests.map((r) => c.result(r))).toEqual(['{"value":"1"}', '{"value":"2"}', '{"value":"3"}']);
    for (const id of c.ids) expect(c.core(id).lastExecuted).toBe(3);
    expect(new Set(values(c)).size).toBe(1);
    expect(c.core('r0').isPrimary).toBe(true);
  });

  it('batches requests that arrive together, within maxBatchRequests', () => {
    const c = new LockstepCluster(4, { ...SMALL, maxBatchRequests: 3 });
    const requests = ['a', 'b', 'c', 'd', 'e', 'f', 'g'].map((client) => c.request(client, { op: 'add', key: 'x', by: 1 }, 'r0'));
    c.stabilize();
    // Seven requests in batches of at most three: three sequence numbers.
    expect(c.core('r2').lastExecuted).toBe(3);
    expect(requests.map((r) => c.result(r)).sort()).toHaveLength(7);
    expect(c.result(requests[6] as (typeof requests)[number])).toBe('{"value":"7"}');
  });

  it('executes a (client, timestamp) once, and answers a retransmission from the reply cache', () => {
    const c = new LockstepCluster(4, SMALL);
    const request = add(c, 'a');
    const replies = c.replies.length;
    for (const id of c.ids) c.core(id).request(request);
    c.stabilize();
    expect(c.core('r1').lastExecuted).toBe(1);
    expect(c.driver('r1').kv.values.get('x')).toBe('1');
    // Every replica re-sent its cached reply: 4 more, all the same result.
    expect(c.replies.length).toBe(replies + 4);
    expect(c.replies.slice(replies).every((r) => new TextDecoder().decode(r.result) === '{"value":"1"}')).toBe(true);
  });

  it('orders read-only requests like writes: a read sees every write ordered before it', () => {
    const c = new LockstepCluster(4, SMALL);
    c.request('w', { op: 'put', key: 'k', value: 'v1' }, 'r1');
    const read = c.request('r', { op: 'get', key: 'k' }, 'r2');
    c.stabilize();
    expect(read.readOnly).toBe(true);
    expect(c.result(read)).toBe('{"value":"v1"}');
  });
});

describe('pbft core: checkpoints and watermarks', () => {
  it('makes a checkpoint stable on 2f + 1 matching messages and collects the log below it', () => {
    const c = new LockstepCluster(4, SMALL);
    for (let i = 0; i < 9; i++) add(c, 'a');
    for (const id of c.ids) {
      expect(c.core(id).stableCheckpoint).toBe(8);
      expect(c.core(id).status().slots).toBeLessThanOrEqual(1);
      expect(c.driver(id).disk.stableCheckpoint?.seq).toBe(8);
      expect(c.driver(id).disk.stableCheckpoint?.proof.length).toBeGreaterThanOrEqual(3);
    }
  });

  it('stops assigning sequence numbers at the high watermark until a checkpoint is stable', () => {
    const c = new LockstepCluster(4, { ...SMALL, maxBatchRequests: 1, maxInflightBatches: 8 });
    c.filter = (e) => (e.message.type === 'checkpoint' ? null : e.message);
    const requests = Array.from({ length: 12 }, (_, i) => c.request(`c${i}`, { op: 'add', key: 'x', by: 1 }, 'r0'));
    c.stabilize();
    // h = 0, L = 8: seq 9..12 must wait.
    expect(c.core('r1').lastExecuted).toBe(8);
    expect(c.core('r0').status().highWatermark).toBe(8);
    c.filter = null;
    // The clients of seq 9..12 retransmit (their requests went to the primary alone): the backups see work waiting.
    for (const r of requests.slice(8)) c.retransmit(r, 'r0');
    c.tickAll(7); // the second retransmission round sees the stall and resends the checkpoint messages
    expect(c.core('r1').stableCheckpoint).toBe(12);
    expect(c.core('r1').lastExecuted).toBe(12);
    expect(requests.every((r) => c.result(r) !== null)).toBe(true);
  });
});

describe('pbft core: where a request goes first', () => {
  it('a backup sends its client\'s request to the primary alone, the primary to no one; the backups get it in the pre-prepare', () => {
    const c = new LockstepCluster(4, SMALL);
    const seen: Envelope[] = [];
    c.filter = (e) => (seen.push(e), e.message);
    const viaBackup = add(c, 'a', 'r2');
    const viaPrimary = add(c, 'b', 'r0');
    const relays = seen.filter((e) => e.message.type === 'request');
    expect(relays.map((e) => `${e.from}->${e.to}`)).toEqual(['r2->r0']);
    expect(c.result(viaBackup)).toBe('{"value":"1"}');
    expect(c.result(viaPrimary)).toBe('{"value":"2"}');
  });
});

describe('pbft core: view change', () => {
  it('a silent primary is replaced after the timeout and ordering resumes with the next one', () => {
    const c = new LockstepCluster(4, SMALL);
    add(c, 'a');
    c.down.add('r0');
    const request = add(c, 'a');
    expect(c.result(request)).toBeNull();
    // It went to the primary alone; the client's retransmission brings it to every backup, which times r0 on it.
    c.retransmit(request, 'r1');
    c.tickAll(10 + 3);
    for (const id of ['r1', 'r2', 'r3']) {
      expect(c.core(id).view).toBe(1);
      expect(c.core(id).active).toBe(true);
      expect(c.core(id).primary).toBe('r1');
    }
    expect(c.result(request)).toBe('{"value":"2"}');
    expect(c.core('r2').status().viewChangeAttempts).toBe(0);
  });

  it('a request prepared in the old view keeps its sequence number in the new one', () => {
    const c = new LockstepCluster(4, SMALL);
    add(c, 'a');
    // Seq 2 prepares everywhere, but no commit gets through, then the primary dies.
    c.filter = (e) => (e.message.type === 'commit' ? null : e.message);
    const request = c.request('b', { op: 'put', key: 'k', value: 'prepared' }, 'r0');
    c.stabilize();
    expect(c.core('r1').lastExecuted).toBe(1);
    c.down.add('r0');
    // The client, unanswered, retransmits through another replica: every backup now times the dead primary.
    c.retransmit(request, 'r1');
    // The backups' retransmission must not commit it either: only the view change may.
    c.tickAll(12);
    c.filter = null;
    c.tickAll(12);
    expect(c.core('r1').view).toBeGreaterThanOrEqual(1);
    const executedAt = new Map<string, number>();
    for (const id of ['r1', 'r2', 'r3']) {
      expect(c.driver(id).kv.values.get('k')).toBe('prepared');
      executedAt.set(id, c.core(id).lastExecuted);
    }
    // Seq 2 holds it (the new primary may order the retransmitted copy again at 3: it executes as a duplicate, a no-op).
    expect(new Set(executedAt.values()).size).toBe(1);
    for (const id of ['r1', 'r2', 'r3']) expect(c.driver(id).disk.slots.get(2)?.committed?.prePrepare.batch.map((r) => r.client)).toEqual(['b']);
    expect(c.result(request)).toBe('{"before":null}');
  });

  it('backs off exponentially on successive view changes (two silent primaries in a row)', () => {
    const c = new LockstepCluster(7, SMALL);
    add(c, 'a', 'r3');
    c.down.add('r0');
    c.down.add('r1');
    c.retransmit(c.request('a', { op: 'add', key: 'x', by: 1 }, 'r3'), 'r3');
    const entered: number[] = [];
    for (let t = 1; t <= 80 && entered.length < 2; t++) {
      const before = c.core('r4').view;
      c.tickAll(1);
      if (c.core('r4').view !== before) entered.push(t);
    }
    // View 1 after T = 10 ticks; view 2 only after the view-1 timer ran 2T more.
    expect(entered[0]).toBe(10);
    expect(entered[1]).toBe(30);
    c.tickAll(3);
    expect(c.core('r4').active).toBe(true);
    expect(c.core('r4').primary).toBe('r2');
    expect(c.core('r4').lastExecuted).toBe(2);
  });

  it('a replica that missed the view change catches up through the new-view', () => {
    const c = new LockstepCluster(4, SMALL);
    add(c, 'a');
    c.down.add('r0');
    c.retransmit(add(c, 'a'), 'r1');
    c.tickAll(14);
    expect(c.core('r1').view).toBe(1);
    c.down.delete('r0');
    expect(c.core('r0').view).toBe(0);
    add(c, 'a', 'r2');
    c.tickAll(6);
    expect(c.core('r0').view).toBe(1);
    expect(c.core('r0').active).toBe(true);
    expect(c.core('r0').lastExecuted).toBe(c.core('r1').lastExecuted);
  });
});

describe('pbft core: state transfer and restart', () => {
  it('a replica behind a stable checkpoint installs verified state and the entries after it', () => {
    const installs: number[] = [];
    const c = new LockstepCluster(4, SMALL, { onInstall: (id, seq) => id === 'r3' && installs.push(seq) });
    c.down.add('r3');
    for (let i = 0; i < 18; i++) add(c, 'a');
    expect(c.core('r1').stableCheckpoint).toBe(16);
    c.down.delete('r3');
    // Back, r3 knows nothing until the next request shows it a sequence number beyond its own, or the others'
    // checkpoint beacons tell it of their stable checkpoint.
    add(c, 'b');
    c.tickAll(60);
    expect(installs).toEqual([16]);
    expect(c.core('r3').lastExecuted).toBe(19);
    expect(c.driver('r3').kv.values.get('x')).toBe('19');
    expect(new Set(values(c)).size).toBe(1);
    // The reply cache came along: an old request of client a is not executed again.
    const old = c.replies.find((r) => r.client === 'a' && r.timestamp === 3);
    expect(old).toBeDefined();
    expect(c.core('r3').request(makeRequest(c.keys, 'a', 3, { op: 'add', key: 'x', by: 1 }))).toEqual({ kind: 'dropped', reason: 'duplicate' });
  });

  it('a state transfer that lands while a Ready is being executed supersedes that Ready', () => {
    const c = new LockstepCluster(4, SMALL);
    const missed: Envelope[] = [];
    c.filter = (e) => {
      if (e.to !== 'r3') return e.message;
      missed.push(e);
      return null;
    };
    for (let i = 0; i < 18; i++) add(c, 'a');
    const stable = c.driver('r1').disk.stableCheckpoint;
    if (stable === null) throw new Error('no stable checkpoint');
    const r3 = c.core('r3');
    // Let r3 commit seqs 1 and 2 from what it missed, and take the Ready that executes them.
    for (const e of missed) if ('seq' in e.message && e.message.seq <= 2 && e.message.type !== 'checkpoint') deliver(r3, e.message);
    const outstanding = r3.ready();
    expect(outstanding?.execute.map((b) => b.seq)).toEqual([1, 2]);
    const state = seal<StateMessage>(
      { type: 'state', from: 'r1', checkpoint: { seq: stable.seq, digest: stable.digest }, proof: stable.proof, state: stable.state, entries: [] },
      c.keys.signer('r1'),
    );
    expect(deliver(r3, state)).toBeNull();
    expect(r3.lastExecuted).toBe(16);
    if (outstanding === null) throw new Error('no Ready');
    r3.advance(outstanding, outstanding.execute.map((b) => ({ seq: b.seq, results: b.requests.map(() => new Uint8Array()), snapshot: null })));
    expect(r3.lastExecuted).toBe(16);
    const next = r3.ready();
    expect(next?.install?.seq).toBe(16);
    expect(next?.replies).toEqual([]);
  });

  it('a restarted replica recovers from its disk and keeps ordering', () => {
    const c = new LockstepCluster(4, SMALL);
    for (let i = 0; i < 6; i++) add(c, 'a');
    c.driver('r2').restart();
    c.stabilize();
    expect(c.core('r2').lastExecuted).toBe(6);
    expect(c.driver('r2').kv.values.get('x')).toBe('6');
    for (let i = 0; i < 3; i++) add(c, 'a');
    c.tickAll(2);
    expect(new Set(values(c)).size).toBe(1);
    expect(c.core('r2').lastExecuted).toBe(9);
  });

  it('a restarted replica still hands the new-view of its view to a replica that missed it', () => {
    const c = new LockstepCluster(4, SMALL);
    add(c, 'a');
    c.down.add('r0');
    c.down.add('r3');
    const request = c.request('a', { op: 'add', key: 'x', by: 1 }, 'r1');
    c.retransmit(request, 'r1');
    c.down.delete('r3');
    // r2 misses the new view (and every re-send of it) ...
    c.filter = (e) => (e.to === 'r2' && e.message.type === 'new_view' ? null : e.message);
    c.tickAll(13);
    expect(c.core('r1').active).toBe(true);
    expect(c.core('r2').active).toBe(false);
    // ... and then the new primary restarts from its disk, the only one left to tell it.
    c.down.add('r3');
    c.driver('r1').restart();
    c.filter = null;
    c.tickAll(4);
    expect(c.core('r2').view).toBe(1);
    expect(c.core('r2').active).toBe(true);
    c.down.delete('r3');
    c.tickAll(4);
    expect(c.result(request)).toBe('{"value":"2"}');
  });

  it('a primary restarted mid-view does not re-use a sequence number it already assigned', () => {
    const c = new LockstepCluster(4, SMALL);
    c.filter = (e) => (e.message.type === 'commit' ? null : e.message);
    c.request('a', { op: 'put', key: 'k', value: 'first' }, 'r0');
    c.stabilize();
    c.filter = null;
    c.driver('r0').restart();
    c.request('b', { op: 'put', key: 'k', value: 'second' }, 'r0');
    c.stabilize();
    c.tickAll(4);
    for (const id of c.ids) {
      expect(c.driver(id).kv.values.get('k')).toBe('second');
      expect(c.core(id).drops().get('equivocation')).toBe(0);
    }
    expect(new Set(values(c)).size).toBe(1);
  });
});
