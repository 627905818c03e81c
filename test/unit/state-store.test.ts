/**
 * StateStore on a real LMDB environment in a temp dir: what a replica
 * persists comes back after reopening (entries of every type, deletions, the
 * write counter and HLC), a replica restarted from it continues its counter,
 * damaged entries are dropped and named, and a damaged replica record is
 * refused.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from 'lmdb';
import { entryHash } from '../../src/state/entry.ts';
import { entryValue } from '../../src/state/ops.ts';
import { StateReplica, type ReplicaLimits } from '../../src/state/replica.ts';
import { StateStore } from '../../src/state/store.ts';

const LIMITS: ReplicaLimits = {
  maxBatchEntries: 64,
  maxBatchBytes: 65536,
  maxInFlightBytes: 1 << 20,
  maxRoundBytes: 1 << 20,
  pushTimeoutMs: 1000,
  sessionTimeoutMs: 1000,
  gcGraceMs: 1000,
  maxClockOffsetMs: 500,
};
const T0 = 1_700_000_000_000;
const opts = { ttlMs: null, timeoutMs: 1000 };

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'dwcp-state-store-'));
  dirs.push(dir);
  return dir;
}

/** A replica with one entry of each type, persisted through `store`. */
async function populate(store: StateStore): Promise<StateReplica> {
  const r = new StateReplica({ self: 'eu', peers: ['eu'], limits: LIMITS }, store.load());
  r.update('reg', null, { op: 'put', value: { deep: [1, 'two', null] } }, 'local', T0, opts);
  r.update('pn', null, { op: 'decr', by: 4 }, 'local', T0, opts);
  r.update('g', 'g-counter', { op: 'incr', by: 9 }, 'local', T0, opts);
  r.update('gs', 'g-set', { op: 'add', element: 'vm-1' }, 'local', T0, opts);
  r.update('or', null, { op: 'add', element: 'vm-2' }, 'local', T0, opts);
  r.update('rec', null, { op: 'set-field', field: 'cpu', value: 8 }, 'local', T0, { ttlMs: 60_000, timeoutMs: 1000 });
  const ready = r.ready(T0);
  await store.persist(ready);
  r.advance(ready);
  return r;
}

describe('StateStore', () => {
  it('loads nothing from a fresh directory', async () => {
    const store = await StateStore.open(await tempDir());
    expect(store.load()).toEqual({ entries: [], writeCounter: 0, hlc: { wallMs: 0, logical: 0 } });
    await store.close();
  });

  it('gives back every type of entry, the write counter and the HLC after a reopen', async () => {
    const dir = await tempDir();
    const store = await StateStore.open(dir);
    const before = await populate(store);
    await store.close();

    const again = await StateStore.open(dir);
    const loaded = again.load();
    expect(loaded.writeCounter).toBe(6);
    expect(loaded.hlc.wallMs).toBe(T0);
    const restarted = new StateReplica({ self: 'eu', peers: ['eu'], limits: LIMITS }, loaded);
    expect(Buffer.from(restarted.status().digest)).toEqual(Buffer.from(before.status().digest));
    for (const [key, entry] of before.entries()) expect(Buffer.from(entryHash(key, restarted.entry(key)!))).toEqual(Buffer.from(entryHash(key, entry)));
    expect(entryValue(restarted.entry('yjs-record:rec'), restarted.now(T0))).toEqual({ cpu: 8 });
    expect(restarted.entry('yjs-record:rec')?.expiresAt).toEqual({ wallMs: T0 + 60_000, logical: 0 });
    // The next write continues the counter.
    expect(restarted.update('pn', null, { op: 'incr', by: 1 }, 'local', T0, opts).entry.clock.get('eu')).toBe(7);
    await again.close();
  });

  it('deletes what a Ready deletes, and groups the persists of one turn into one commit', async () => {
    const dir = await tempDir();
    const commits: number[] = [];
    const store = await StateStore.open(dir, { onCommit: (_t, entries) => commits.push(entries) });
    const r = await populate(store);
    r.update('tmp', null, { op: 'put', value: 1 }, 'local', T0, { ttlMs: 1, timeoutMs: 1000 });
    const first = r.ready(T0);
    expect(r.collectGarbage(T0 + 1 + LIMITS.gcGraceMs)).toBe(1);
    const second = r.ready(T0);
    expect(second.persist.get('lww-register:tmp')).toBeNull();
    await Promise.all([store.persist(first), store.persist(second)]);
    expect(commits).toEqual([6, 2]);
    await store.close();
    const again = await StateStore.open(dir);
    expect(again.load().entries.map(([key]) => key).sort()).toEqual(['g-counter:g', 'g-set:gs', 'lww-register:reg', 'or-set:or', 'pn-counter:pn', 'yjs-record:rec']);
    await again.close();
  });

  it('drops a damaged entry, naming it, and keeps the rest', async () => {
    const dir = await tempDir();
    const store = await StateStore.open(dir);
    await populate(store);
    await store.close();
    const env = open({ path: join(dir, 'state'), encoding: 'binary' });
    const entries = env.openDB<Buffer, string>('entries', { encoding: 'binary' });
    const good = entries.get('pn-counter:pn') as Buffer;
    const flipped = Buffer.from(good);
    flipped[flipped.length - 2] = (flipped[flipped.length - 2] as number) ^ 0xff;
    await entries.put('pn-counter:pn', flipped);
    await entries.put('no-such-type:x', good);
    await env.close();

    const repairs: string[] = [];
    const again = await StateStore.open(dir, { onRepair: (m) => repairs.push(m) });
    const keys = again.load().entries.map(([key]) => key).sort();
    expect(keys).toEqual(['g-counter:g', 'g-set:gs', 'lww-register:reg', 'or-set:or', 'yjs-record:rec']);
    expect(repairs).toHaveLength(2);
    expect(repairs[0]).toMatch(/entry "no-such-type:x" is damaged \(key: .*does not start with a CRDT type.*\); dropped, anti-entropy will fetch it again/);
    expect(repairs[1]).toMatch(/entry "pn-counter:pn" is damaged \(checksum mismatch/);
    expect(again.load().entries).toHaveLength(5);
    expect(repairs).toHaveLength(2);
    await again.close();
  });

  it('refuses to start on a damaged replica record rather than risk reusing write counters', async () => {
    const dir = await tempDir();
    const store = await StateStore.open(dir);
    await populate(store);
    await store.close();
    const env = open({ path: join(dir, 'state'), encoding: 'binary' });
    const meta = env.openDB<Buffer, string>('meta', { encoding: 'binary' });
    await meta.put('replica', Buffer.from('garbage!'));
    await env.close();
    const again = await StateStore.open(dir);
    expect(() => again.load()).toThrow(`state store ${join(dir, 'state')}: the replica record is damaged (checksum mismatch`);
    await again.close();
  });
});
