/**
 * StateReplica, scripted: regions in lockstep (a Ready is persisted, its
 * messages queued, then delivered when the test says), so each rule of the
 * core is shown on its own: when writes complete at each level, what travels
 * and when, deltas that arrive early, quorum counts and their failure
 * messages, anti-entropy rounds (Yjs diffs, byte budgets), TTL and garbage
 * collection, and the bound on unacknowledged pushes.
 */
import { describe, expect, it } from 'vitest';
import { dominates } from '../../src/state/clock/vector-clock.ts';
import { entryHash } from '../../src/state/entry.ts';
import type { Outbound, SyncMessage } from '../../src/state/messages.ts';
import { OpError, entryValue } from '../../src/state/ops.ts';
import { StateReplica, type Completion, type ReplicaLimits } from '../../src/state/replica.ts';

const LIMITS: ReplicaLimits = {
  maxBatchEntries: 64,
  maxBatchBytes: 64 * 1024,
  maxInFlightBytes: 1024 * 1024,
  maxRoundBytes: 1024 * 1024,
  pushTimeoutMs: 1000,
  sessionTimeoutMs: 2000,
  gcGraceMs: 1000,
  maxClockOffsetMs: 500,
};

const T0 = 1_700_000_000_000;

/** Regions in lockstep: `flush` runs every pending Ready, messages wait in `wire` until `deliver`. */
class Lockstep {
  readonly regions = new Map<string, StateReplica>();
  readonly wire: (Outbound & { from: string })[] = [];
  readonly sentFrom: { from: string; message: SyncMessage }[] = [];
  readonly completions = new Map<string, Completion[]>();
  readonly down = new Set<string>();
  now = T0;

  constructor(ids: readonly string[], limits: ReplicaLimits = LIMITS) {
    for (const id of ids) {
      this.regions.set(id, new StateReplica({ self: id, peers: ids, limits }));
      this.completions.set(id, []);
    }
  }

  r(id: string): StateReplica {
    return this.regions.get(id) as StateReplica;
  }

  /** Runs every region's Readies (persist is instant) until none is left. */
  flush(): void {
    let again = true;
    while (again) {
      again = false;
      for (const [id, replica] of this.regions) {
        while (replica.hasReady()) {
          again = true;
          const ready = replica.ready(this.now);
          for (const out of ready.messages) {
            this.sentFrom.push({ from: id, message: out.message });
            if (!this.down.has(out.to) && !this.down.has(id)) this.wire.push({ ...out, from: id });
          }
          replica.advance(ready);
        }
        this.completions.get(id)?.push(...replica.takeCompletions());
      }
    }
  }

  /** Delivers queued messages (those `keep` accepts) until the network is quiet. */
  deliver(keep: (to: string, message: SyncMessage) => boolean = () => true): void {
    this.flush();
    while (this.wire.length > 0) {
      const batch = this.wire.splice(0);
      for (const out of batch) {
        if (!keep(out.to, out.message)) continue;
        this.r(out.to).step(out.from, out.message, this.now);
      }
      this.flush();
    }
  }

  completed(id: string): Completion[] {
    return this.completions.get(id) as Completion[];
  }

  /** A full anti-entropy round from `a` to `b`. */
  round(a: string, b: string): void {
    this.r(a).startRound(b, this.now);
    this.deliver();
  }
}

const ttl = { ttlMs: null, timeoutMs: 1000 };

describe('writes and their levels', () => {
  it('completes a local write only once the Ready holding it is advanced; an eventual one at once', () => {
    const r = new StateReplica({ self: 'a', peers: ['a', 'b'], limits: LIMITS });
    const eventual = r.update('k', null, { op: 'incr', by: 2 }, 'eventual', T0, ttl);
    expect(eventual.id).toBeNull();
    expect(eventual.key).toBe('pn-counter:k');
    const local = r.update('k', null, { op: 'incr', by: 3 }, 'local', T0, ttl);
    expect(local.id).not.toBeNull();
    expect(entryValue(local.entry, r.now(T0))).toBe(5);
    expect(r.takeCompletions()).toEqual([]);
    const ready = r.ready(T0);
    // Both writes are in the Ready's persist, and the push to b is in the same Ready: it leaves after the fsync.
    expect([...ready.persist.keys()]).toEqual(['pn-counter:k']);
    expect(ready.meta?.writeCounter).toBe(2);
    expect(ready.messages.map((m) => [m.to, m.message.kind])).toEqual([['b', 'push']]);
    expect(r.takeCompletions()).toEqual([]);
    r.advance(ready);
    expect(r.takeCompletions()).toMatchObject([{ id: local.id, kind: 'write', ok: true, answered: 1, total: 2 }]);
  });

  it('numbers a region\'s writes with one counter across keys, continued after a restart', () => {
    const r = new StateReplica({ self: 'a', peers: ['a'], limits: LIMITS });
    r.update('x', null, { op: 'add', element: 'e' }, 'local', T0, ttl);
    const second = r.update('y', null, { op: 'put', value: 1 }, 'local', T0, ttl);
    expect(second.entry.clock).toEqual(new Map([['a', 2]]));
    const ready = r.ready(T0);
    const restarted = new StateReplica({ self: 'a', peers: ['a'], limits: LIMITS }, { entries: [...ready.persist].map(([k, e]) => [k, e!] as const), writeCounter: 2, hlc: ready.meta!.hlc });
    expect(restarted.update('x', null, { op: 'add', element: 'f' }, 'local', T0, ttl).entry.clock).toEqual(new Map([['a', 3]]));
  });

  it('refuses operations a type does not have and bad arguments, naming them', () => {
    const r = new StateReplica({ self: 'a', peers: ['a'], limits: LIMITS });
    expect(() => r.update('k', 'g-counter', { op: 'decr', by: 1 }, 'local', T0, ttl)).toThrow(new OpError('decr applies to pn-counter, not to a g-counter'));
    expect(() => r.update('k', 'g-set', { op: 'remove', element: 'x' }, 'local', T0, ttl)).toThrow('remove applies to or-set, not to a g-set');
    expect(() => r.update('k', null, { op: 'incr', by: 0 }, 'local', T0, ttl)).toThrow('incr: amount must be a whole number from 1 to');
    expect(() => r.update('k', null, { op: 'put', value: 1 }, 'local', T0, { ttlMs: 0, timeoutMs: 1 })).toThrow('ttl: must be a whole number of milliseconds >= 1, got 0');
    expect(r.hasReady()).toBe(false);
  });

  it('uses an existing entry of a type the operation applies to when none is named', () => {
    const r = new StateReplica({ self: 'a', peers: ['a'], limits: LIMITS });
    r.update('hits', 'g-counter', { op: 'incr', by: 1 }, 'eventual', T0, ttl);
    expect(r.update('hits', null, { op: 'incr', by: 1 }, 'eventual', T0, ttl).key).toBe('g-counter:hits');
    expect(r.update('fresh', null, { op: 'incr', by: 1 }, 'eventual', T0, ttl).key).toBe('pn-counter:fresh');
  });

  it('lets a region\'s own register write win over what it has seen, even a winner stamped ahead of its clock', () => {
    const net = new Lockstep(['a', 'b']);
    // b's clock runs 10 s ahead (beyond the 500 ms offset a's HLC will follow).
    net.r('b').update('k', null, { op: 'put', value: 'from-b' }, 'local', T0 + 10_000, ttl);
    net.deliver();
    expect(entryValue(net.r('a').entry('lww-register:k'), net.r('a').now(T0))).toBe('from-b');
    net.r('a').update('k', null, { op: 'put', value: 'from-a' }, 'local', T0, ttl);
    net.deliver();
    for (const id of ['a', 'b']) expect(entryValue(net.r(id).entry('lww-register:k'), net.r(id).now(T0 + 10_000))).toBe('from-a');
  });
});

describe('pushes', () => {
  it('merges a delta that follows what the receiver has, and repairs one that arrives early with the whole entry', () => {
    const net = new Lockstep(['a', 'b']);
    net.r('a').update('s', null, { op: 'add', element: 'x' }, 'local', T0, ttl);
    net.flush();
    const first = net.wire.splice(0);
    net.r('a').update('s', null, { op: 'add', element: 'y' }, 'local', T0, ttl);
    // The second delta reaches b first: b lacks its history and says so.
    net.deliver();
    const acks = net.sentFrom.filter((s) => s.from === 'b' && s.message.kind === 'push-ack').map((s) => s.message);
    // One ack says "behind"; the other acknowledges the whole entry a sent in reply.
    expect(acks).toEqual([expect.objectContaining({ kind: 'push-ack', behind: ['or-set:s'] }), expect.objectContaining({ kind: 'push-ack', behind: [] })]);
    // a answered with the whole entry, so b has both elements although the first push is still in flight.
    expect(entryValue(net.r('b').entry('or-set:s'), net.r('b').now(T0))).toEqual(['x', 'y']);
    for (const out of first) net.r(out.to).step('a', out.message, net.now);
    net.deliver();
    expect(Buffer.from(net.r('b').status().digest)).toEqual(Buffer.from(net.r('a').status().digest));
  });

  it('keeps unacknowledged pushes under maxInFlightBytes, coalescing later changes of a key', () => {
    const net = new Lockstep(['a', 'b'], { ...LIMITS, maxInFlightBytes: 4096, maxBatchEntries: 4 });
    for (let i = 0; i < 20; i++) net.r('a').update(`k${i % 10}`, null, { op: 'incr', by: 1 }, 'eventual', T0, ttl);
    net.flush();
    const pushes = net.wire.filter((o) => o.message.kind === 'push');
    // 10 keys, each change folded into one pending delta per key; batches of 4 until the window closes.
    expect(pushes.map((p) => (p.message as Extract<SyncMessage, { kind: 'push' }>).updates.length)).toEqual([4, 4, 2]);
    net.deliver();
    for (let i = 0; i < 10; i++) expect(entryValue(net.r('b').entry(`pn-counter:k${i}`), net.r('b').now(T0))).toBe(2);

    const tight = new Lockstep(['a', 'b'], { ...LIMITS, maxInFlightBytes: 4096, maxBatchEntries: 1, maxBatchBytes: 1024 });
    const big = 'x'.repeat(1500);
    for (let i = 0; i < 6; i++) tight.r('a').update(`k${i}`, null, { op: 'put', value: big }, 'eventual', T0, ttl);
    tight.flush();
    // Three ~1.6 KB pushes fill the 4 KiB window; the rest wait for acks.
    expect(tight.wire.filter((o) => o.message.kind === 'push')).toHaveLength(3);
    tight.deliver();
    expect(tight.r('b').status().entries).toBe(6);
  });
});

describe('quorum', () => {
  it('acknowledges a quorum write once this region and a majority hold it durably', () => {
    const net = new Lockstep(['a', 'b', 'c', 'd', 'e']);
    const w = net.r('a').update('k', null, { op: 'put', value: 1 }, 'quorum', T0, ttl);
    // c, d and e never answer; b does: 2 of 5 is not a majority.
    net.deliver((to) => to === 'b' || to === 'a');
    expect(net.completed('a')).toEqual([]);
    const w2 = net.r('a').update('k2', null, { op: 'put', value: 2 }, 'quorum', T0, ttl);
    net.deliver((to) => to !== 'e');
    // Acknowledged as soon as the third region (of five) answered.
    expect(net.completed('a')).toMatchObject([{ id: w2.id, kind: 'write', ok: true, answered: 3, total: 5 }]);
    // The first one fails at its deadline, saying how many answered.
    net.r('a').tick(T0 + 1000);
    net.flush();
    expect(net.completed('a')[1]).toEqual({ id: w.id, kind: 'write', ok: false, error: 'no majority within the deadline', answered: 2, total: 5 });
  });

  it('fails a quorum operation as soon as too many regions are known unreachable', () => {
    const net = new Lockstep(['a', 'b', 'c']);
    const w = net.r('a').update('k', null, { op: 'incr', by: 1 }, 'quorum', T0, ttl);
    net.r('a').peerDown('b');
    net.flush();
    expect(net.completed('a')).toEqual([]);
    net.r('a').peerDown('c');
    net.flush();
    expect(net.completed('a')).toEqual([{ id: w.id, kind: 'write', ok: false, error: '2 of 3 regions are unreachable', answered: 1, total: 3 }]);
    // The write itself stays: it is durable here and propagates once the peers are back.
    expect(entryValue(net.r('a').entry('pn-counter:k'), net.r('a').now(T0))).toBe(1);
  });

  it('counts regions already known unreachable from the start, and asks one again once it is back', () => {
    const net = new Lockstep(['a', 'b', 'c']);
    net.r('a').peerDown('b');
    net.r('a').peerDown('c');
    net.down.add('b');
    net.down.add('c');
    // Both peers are known down: the write fails as soon as it is durable here, not at its deadline.
    const doomed = net.r('a').update('k', null, { op: 'put', value: 1 }, 'quorum', T0, ttl);
    net.flush();
    expect(net.completed('a')).toEqual([{ id: doomed.id, kind: 'write', ok: false, error: '2 of 3 regions are unreachable', answered: 1, total: 3 }]);
    // b is back but silent; c comes back while a second write waits: c gets the write again, and its ack completes it.
    net.r('a').peerUp('b');
    net.down.delete('b');
    const w = net.r('a').update('k', null, { op: 'put', value: 2 }, 'quorum', T0, { ttlMs: null, timeoutMs: 5000 });
    net.deliver((to) => to === 'a');
    expect(net.completed('a')).toHaveLength(1);
    net.down.delete('c');
    net.r('a').peerUp('c');
    net.deliver((to) => to !== 'b');
    expect(net.completed('a')[1]).toMatchObject({ id: w.id, kind: 'write', ok: true, answered: 2, total: 3 });
    expect(entryValue(net.r('c').entry('lww-register:k'), net.r('c').now(T0))).toBe(2);
  });

  it('reads the merge of a majority', () => {
    const net = new Lockstep(['a', 'b', 'c', 'd', 'e']);
    net.r('b').update('n', null, { op: 'incr', by: 5 }, 'local', T0, ttl);
    net.r('c').update('n', null, { op: 'incr', by: 7 }, 'local', T0, ttl);
    net.flush();
    net.wire.length = 0; // the pushes are lost
    net.down.add('d');
    net.down.add('e');
    const id = net.r('a').readQuorum(['pn-counter:n', 'or-set:n'], T0, 1000);
    net.deliver();
    const done = net.completed('a')[0];
    // a, b and c are three of five: both copies are merged.
    expect(done).toMatchObject({ id, kind: 'read', ok: true, answered: 3, total: 5 });
    const entries = done?.kind === 'read' && done.ok ? done.entries : new Map();
    expect([...entries.keys()]).toEqual(['pn-counter:n']);
    expect(entryValue(entries.get('pn-counter:n'), net.r('a').now(T0))).toBe(12);
  });

  it('asks every region for its status and completes with those that answered by the deadline', () => {
    const net = new Lockstep(['a', 'b', 'c']);
    net.down.add('c');
    const id = net.r('a').requestStatus(T0, 500);
    net.deliver();
    net.r('a').tick(T0 + 500);
    net.flush();
    const done = net.completed('a')[0];
    expect(done).toMatchObject({ id, kind: 'status', ok: true, answered: 2, total: 3 });
    expect(done?.kind === 'status' && done.ok ? [...done.statuses.keys()].sort() : []).toEqual(['a', 'b']);
  });
});

describe('anti-entropy rounds', () => {
  it('brings two regions to the same entries, sending a Yjs record the other has as a diff', () => {
    const net = new Lockstep(['a', 'b']);
    net.down.add('b');
    for (let i = 0; i < 30; i++) net.r('a').update(`c${i}`, null, { op: 'incr', by: i + 1 }, 'local', T0, ttl);
    net.r('a').update('rec', null, { op: 'set-field', field: 'big', value: 'x'.repeat(4000) }, 'local', T0, ttl);
    net.r('b').update('only-b', null, { op: 'add', element: 'e' }, 'local', T0, ttl);
    net.flush();
    net.down.clear();
    net.wire.length = 0;
    net.round('a', 'b');
    expect(Buffer.from(net.r('b').status().digest)).toEqual(Buffer.from(net.r('a').status().digest));
    expect(net.r('a').status().entries).toBe(32);

    // Now b changes the record a little while cut off; the next round ships only the new struct.
    net.down.add('a');
    net.r('b').update('rec', null, { op: 'set-field', field: 'small', value: 1 }, 'local', T0, ttl);
    net.flush();
    net.down.clear();
    net.wire.length = 0;
    net.sentFrom.length = 0;
    net.round('a', 'b');
    const updates = net.sentFrom.flatMap((s) => (s.message.kind === 'updates' ? s.message.updates : []));
    expect(updates.map((u) => [u.key, u.since !== null])).toEqual([['yjs-record:rec', true]]);
    expect((updates[0]?.state as Uint8Array).byteLength).toBeLessThan(200);
    expect(entryValue(net.r('a').entry('yjs-record:rec'), net.r('a').now(T0))).toEqual({ big: 'x'.repeat(4000), small: 1 });
  });

  it('cuts a round at maxRoundBytes and asks for another, until both sides agree', () => {
    const net = new Lockstep(['a', 'b'], { ...LIMITS, maxRoundBytes: 4096, maxBatchEntries: 8, maxBatchBytes: 2048 });
    net.down.add('b');
    for (let i = 0; i < 200; i++) net.r('a').update(`k${i}`, null, { op: 'put', value: `value-${i}-${'y'.repeat(40)}` }, 'local', T0, ttl);
    net.flush();
    net.down.clear();
    net.wire.length = 0;
    let rounds = 0;
    net.r('a').startRound('b', net.now);
    for (;;) {
      net.deliver();
      rounds++;
      const due = net.r('a').takeReconcileDue();
      if (due.length === 0) break;
      expect(due).toEqual(['b']);
      net.r('a').startRound('b', net.now);
    }
    expect(rounds).toBeGreaterThan(3);
    expect(net.r('b').status().entries).toBe(200);
    expect(Buffer.from(net.r('b').status().digest)).toEqual(Buffer.from(net.r('a').status().digest));
  });

  it('abandons a round whose peer went silent once its time is up', () => {
    const net = new Lockstep(['a', 'b']);
    const seen: string[] = [];
    const r = new StateReplica({ self: 'a', peers: ['a', 'b'], limits: LIMITS, observer: { onRoundDone: (peer, outcome) => seen.push(`${peer}:${outcome}`) } });
    expect(r.startRound('b', T0)).toBe(true);
    expect(r.startRound('b', T0)).toBe(false);
    r.tick(T0 + LIMITS.sessionTimeoutMs);
    expect(seen).toEqual(['b:timeout']);
    expect(r.roundRunning('b')).toBe(false);
    expect(net.r('a').startRound('c', T0)).toBe(false);
  });
});

describe('expiry', () => {
  it('hides an entry once its TTL passes (in HLC time) and collects it after the grace period', () => {
    const net = new Lockstep(['a', 'b']);
    net.r('a').update('tmp', null, { op: 'put', value: 'soon gone' }, 'local', T0, { ttlMs: 100, timeoutMs: 1000 });
    net.deliver();
    const b = net.r('b');
    expect(entryValue(b.entry('lww-register:tmp'), b.now(T0 + 99))).toBe('soon gone');
    expect(entryValue(b.entry('lww-register:tmp'), b.now(T0 + 100))).toBeUndefined();
    expect(b.collectGarbage(T0 + 100 + LIMITS.gcGraceMs - 1)).toBe(0);
    expect(b.collectGarbage(T0 + 100 + LIMITS.gcGraceMs)).toBe(1);
    expect(b.entry('lww-register:tmp')).toBeUndefined();
    const ready = b.ready(T0);
    expect(ready.persist.get('lww-register:tmp')).toBeNull();
    // a, which has not collected it yet, offers it back in a round: b does not take in a dead entry.
    net.now = T0 + 100 + LIMITS.gcGraceMs;
    net.round('a', 'b');
    expect(b.entry('lww-register:tmp')).toBeUndefined();
    expect(net.r('a').collectGarbage(net.now)).toBe(1);
  });

  it('keeps a write without TTL alive: an entry expires when its latest-expiring write does', () => {
    const r = new StateReplica({ self: 'a', peers: ['a'], limits: LIMITS });
    r.update('c', null, { op: 'incr', by: 1 }, 'local', T0, { ttlMs: 50, timeoutMs: 1000 });
    const after = r.update('c', null, { op: 'incr', by: 1 }, 'local', T0 + 10, ttl);
    expect(after.entry.expiresAt).toBeNull();
    expect(entryValue(r.entry('pn-counter:c'), r.now(T0 + 1_000_000))).toBe(2);
  });
});

describe('clocks', () => {
  it('gives equal clocks to equal copies and a dominating clock to a copy that contains the other', () => {
    const net = new Lockstep(['a', 'b', 'c']);
    net.down.add('c');
    for (const [id, el] of [['a', 'x'], ['b', 'y'], ['c', 'z']] as const) net.r(id).update('s', null, { op: 'add', element: el }, 'local', T0, ttl);
    net.deliver();
    net.down.clear();
    const [a, c] = [net.r('a').entry('or-set:s')!, net.r('c').entry('or-set:s')!];
    expect(dominates(a.clock, c.clock)).toBe(false);
    net.round('c', 'a');
    net.round('b', 'c');
    const copies = ['a', 'b', 'c'].map((id) => net.r(id).entry('or-set:s')!);
    for (const e of copies) {
      expect(e.clock).toEqual(copies[0]!.clock);
      expect(Buffer.from(entryHash('or-set:s', e))).toEqual(Buffer.from(entryHash('or-set:s', copies[0]!)));
    }
  });
});
