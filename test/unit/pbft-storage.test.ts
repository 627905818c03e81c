/**
 * PbftStorage on a real LMDB environment in a temp dir: round trips of a real
 * replica's deltas (LockstepCluster) and of fixtures covering every field,
 * reopen, stable checkpoint garbage collection, load-time checks against
 * records written through a raw lmdb handle (bypassing the encoder), empty
 * deltas and the order of concurrent persists.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from 'lmdb';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PbftCore } from '../../src/consensus/pbft/core.ts';
import type { Verify } from '../../src/consensus/pbft/core.ts';
import { encodeCanonical, signingBytes } from '../../src/consensus/pbft/encoding.ts';
import type { Canonical } from '../../src/consensus/pbft/encoding.ts';
import { PBFT_STORAGE_LAYOUT, PbftStorage, PbftStorageCorruptionError, prePrepareKey } from '../../src/consensus/pbft/storage.ts';
import type { PbftStorageTimings } from '../../src/consensus/pbft/storage.ts';
import type { PbftPersistedState, PersistDelta, PrePrepare, SignedMessage, SlotRecord } from '../../src/consensus/pbft/types.ts';
import { PbftInputError } from '../../src/consensus/pbft/types.ts';
import { recordBuffer, stampChecksum, u64FromKey, u64Key } from '../../src/storage/lmdb-records.ts';
import { LockstepCluster, SMALL_PBFT_CONFIG } from '../sim/pbft-harness.ts';
import { FIXTURE_KEYS, fixtureCheckpoint, fixturePrePrepare, fixtureSlot, fixtureView } from '../support/pbft-storage-writer.ts';

let dir: string;
const opened: PbftStorage[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pbft-storage-'));
});

afterEach(async () => {
  for (const storage of opened.splice(0)) await storage.close();
  await rm(dir, { recursive: true, force: true });
});

async function openStorage(onWrite?: (t: PbftStorageTimings) => void): Promise<PbftStorage> {
  const storage = await PbftStorage.open(dir, onWrite === undefined ? {} : { onWrite });
  opened.push(storage);
  return storage;
}

async function reopen(storage: PbftStorage): Promise<PbftStorage> {
  await storage.close();
  return openStorage();
}

const EMPTY: PersistDelta = { view: null, stableCheckpoint: null, slots: [] };

function slotsDelta(seqs: number[], view = 0): PersistDelta {
  return { view: null, stableCheckpoint: null, slots: seqs.map((seq) => fixtureSlot(seq, view)) };
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

/** The exact bytes of a state: equal iff every field, every byte and every signature came back. */
function bytesOf(state: PbftPersistedState | SlotRecord | PrePrepare | readonly SlotRecord[] | null | undefined): string {
  return Buffer.from(encodeCanonical(state as unknown as Canonical)).toString('hex');
}

function seqs(state: PbftPersistedState | null): number[] {
  return (state?.slots ?? []).map((s) => s.seq);
}

/** Every signed message in a state, found by walking it. */
function messagesIn(value: unknown, into: SignedMessage[] = []): SignedMessage[] {
  if (value instanceof Uint8Array || typeof value !== 'object' || value === null) return into;
  if (Array.isArray(value)) {
    for (const item of value) messagesIn(item, into);
    return into;
  }
  if ('signature' in value && 'type' in value) into.push(value as SignedMessage);
  for (const item of Object.values(value)) messagesIn(item, into);
  return into;
}

function expectSignaturesHold(state: PbftPersistedState, verify: Verify, atLeast: number): void {
  const messages = messagesIn(state);
  expect(messages.length).toBeGreaterThan(atLeast);
  for (const m of messages) {
    expect(m.signature).toBeInstanceOf(Uint8Array);
    expect(verify(m.from, signingBytes(m), m.signature), `${m.type} from ${m.from}`).toBe(true);
  }
}

/** Edits stored records through a plain lmdb handle, as media damage or a stray writer would. */
async function tamper(edit: (raw: ReturnType<typeof rawTables>) => void): Promise<void> {
  const raw = rawTables();
  raw.root.transactionSync(() => edit(raw));
  await raw.root.close();
}

function rawTables() {
  const root = open<Buffer, string>(dir, { encoding: 'binary', overlappingSync: false });
  return {
    root,
    slots: root.openDB<Buffer, Buffer>(PBFT_STORAGE_LAYOUT.slots, { keyEncoding: 'binary', encoding: 'binary' }),
    meta: root.openDB<Buffer, string>(PBFT_STORAGE_LAYOUT.meta, { encoding: 'binary' }),
  };
}

function flipLastByte(value: Buffer | undefined, what: string): Buffer {
  if (value === undefined) throw new Error(`${what} is not stored`);
  const copy = Buffer.from(value);
  copy[copy.length - 1] = (copy[copy.length - 1] ?? 0) ^ 0x5a;
  return copy;
}

/** A record with a valid checksum around `value`: what a buggy writer, not the disk, would leave. */
function wellSealed(kind: number, value: unknown): Buffer {
  const body = encodeCanonical(value as Canonical);
  const record = recordBuffer(kind, body.length);
  record.set(body, 5);
  return stampChecksum(record);
}

async function storedFixtures(): Promise<void> {
  const storage = await PbftStorage.open(dir);
  await storage.persist({ view: fixtureView(2), stableCheckpoint: fixtureCheckpoint(4), slots: range(5, 12).map((s) => fixtureSlot(s, 2)) });
  await storage.close();
}

function loadError(storage: PbftStorage, context = ''): PbftStorageCorruptionError {
  try {
    storage.load();
  } catch (error) {
    if (error instanceof PbftStorageCorruptionError) return error;
    throw error;
  }
  throw new Error(`load() did not throw ${context}`);
}

describe('PbftStorage round trip', () => {
  it('returns null on a fresh directory, and after only empty deltas', async () => {
    const storage = await openStorage();
    expect(storage.load()).toBeNull();
    await storage.persist(EMPTY);
    expect(storage.load()).toBeNull();
  });

  it("stores a real replica's deltas through checkpoints and a view change; the core restarts from what it loads", async () => {
    const c = new LockstepCluster(4, SMALL_PBFT_CONFIG);
    const deltas: PersistDelta[] = [];
    const core = c.core('r2');
    const ready = core.ready.bind(core);
    core.ready = () => {
      const r = ready();
      if (r !== null) deltas.push(r.persist);
      return r;
    };
    for (let i = 0; i < 6; i++) {
      c.request(`client-${i % 2}`, { op: 'add', key: 'x', by: 1 }, 'r1');
      c.stabilize();
    }
    c.down.add('r0');
    // Unanswered, the client retransmits: every backup then times the dead primary on it.
    c.retransmit(c.request('client-0', { op: 'put', key: 'y', value: 'after the primary died' }, 'r1'), 'r1');
    c.tickAll(13);
    for (let i = 0; i < 2; i++) {
      c.request('client-1', { op: 'add', key: 'x', by: 1 }, 'r2');
      c.stabilize();
    }

    const disk = c.driver('r2').disk;
    const low = disk.stableCheckpoint?.seq ?? 0;
    const expected: PbftPersistedState = {
      view: disk.view,
      stableCheckpoint: disk.stableCheckpoint,
      slots: [...disk.slots.values()].filter((s) => s.seq > low).sort((a, b) => a.seq - b.seq),
    };
    // The run reached every field worth storing.
    expect(core.view).toBe(1);
    expect(expected.view.newView?.viewChanges.length).toBeGreaterThanOrEqual(3);
    expect(expected.stableCheckpoint?.proof.length).toBeGreaterThanOrEqual(3);
    expect(expected.stableCheckpoint?.state.clients.length).toBe(2);
    expect(expected.slots.some((s) => s.committed !== null && s.prePrepare !== null && s.prePrepare.batch.length > 0)).toBe(true);

    let storage = await openStorage();
    for (const delta of deltas) await storage.persist(delta);
    expect(bytesOf(storage.load())).toBe(bytesOf(expected));
    storage = await reopen(storage);
    const loaded = storage.load();
    expect(bytesOf(loaded)).toBe(bytesOf(expected));
    if (loaded === null) throw new Error('nothing loaded');

    // Messages come back as bytes their signatures still cover.
    expectSignaturesHold(loaded, c.keys.verifier(() => true), 20);

    const restarted = new PbftCore({
      id: 'r2',
      members: c.ids,
      sign: c.keys.signer('r2'),
      verify: c.keys.verifier((id) => c.ids.includes(id) || c.clients.has(id)),
      config: SMALL_PBFT_CONFIG,
      storage: loaded,
    });
    expect(restarted.view).toBe(core.view);
    expect(restarted.active).toBe(true);
    expect(restarted.stableCheckpoint).toBe(core.stableCheckpoint);
    expect(restarted.status().slots).toBe(loaded.slots.length);
  });

  it('round-trips every slot shape, a view with its new-view and a stable checkpoint with its state, byte for byte', async () => {
    let storage = await openStorage();
    const state: PbftPersistedState = {
      view: fixtureView(3),
      stableCheckpoint: fixtureCheckpoint(8),
      slots: range(9, 16).map((s) => fixtureSlot(s, 3)),
    };
    await storage.persist(state);
    storage = await reopen(storage);
    const loaded = storage.load();
    expect(bytesOf(loaded)).toBe(bytesOf(state));
    expect(loaded?.stableCheckpoint?.state.snapshot).toBeInstanceOf(Uint8Array);
    if (loaded === null) throw new Error('nothing loaded');
    expectSignaturesHold(loaded, FIXTURE_KEYS.verifier(() => true), 30);
    const shapes = new Set(loaded?.slots.map((s) => `${s.prePrepare !== null}/${s.prepared !== null}/${s.committed !== null}/${s.view}`));
    expect(shapes).toEqual(new Set(['true/false/false/3', 'true/true/false/3', 'true/true/true/3', 'false/true/false/4']));
  });

  it('writes a pre-prepare its certificates share once, and still loads slots written with every copy in full (kind 1) or shared (kind 4)', async () => {
    const prePrepare = fixturePrePrepare(2, 0);
    const shared: SlotRecord = {
      seq: 2,
      view: 0,
      prePrepare,
      sentPrepare: true,
      sentCommit: true,
      prepared: { prePrepare, prepares: fixtureSlot(1, 0).prepared?.prepares ?? [] },
      committed: { prePrepare, commits: fixtureSlot(2, 0).committed?.commits ?? [] },
    };
    expect(shared.committed?.prePrepare).toBe(prePrepare);
    let bytes = 0;
    let storage = await openStorage((t) => (bytes += t.bytes));
    await storage.persist({ view: null, stableCheckpoint: null, slots: [shared] });
    const full = wellSealed(1, shared).length;
    const ppBytes = encodeCanonical(prePrepare as unknown as Canonical).length;
    expect(bytes).toBeLessThan(full - 2 * ppBytes + 64);
    storage = await reopen(storage);
    const loaded = storage.load()?.slots[0];
    expect(bytesOf(loaded)).toBe(bytesOf(shared));
    // Loaded, the certificates hold the slot's own pre-prepare again (and the next write shares it again).
    expect(loaded?.prepared?.prePrepare).toBe(loaded?.prePrepare);
    expect(loaded?.committed?.prePrepare).toBe(loaded?.prePrepare);
    await storage.close();

    await tamper((raw) => raw.slots.putSync(u64Key(3), wellSealed(1, { ...shared, seq: 3, prePrepare: fixturePrePrepare(3, 0), prepared: null, committed: null })));
    await tamper((raw) => raw.slots.putSync(u64Key(2), wellSealed(1, shared)));
    const { prePrepare: _apart, ...rest } = shared;
    const kind4 = { ...rest, prePrepare, prepared: { prepares: shared.prepared?.prepares ?? [] }, committed: { commits: shared.committed?.commits ?? [] } };
    await tamper((raw) => raw.slots.putSync(u64Key(4), wellSealed(4, { ...kind4, seq: 4, prePrepare: fixturePrePrepare(4, 0) })));
    storage = await openStorage();
    expect(bytesOf(storage.load()?.slots)).toBe(
      bytesOf([
        shared,
        { ...shared, seq: 3, prePrepare: fixturePrePrepare(3, 0), prepared: null, committed: null },
        { ...shared, seq: 4, prePrepare: fixturePrePrepare(4, 0), prepared: { ...kind4.prepared, prePrepare: fixturePrePrepare(4, 0) }, committed: { ...kind4.committed, prePrepare: fixturePrePrepare(4, 0) } },
      ]),
    );
  });

  it('writes a slot\'s pre-prepare once: later writes of the slot carry its votes, not its batch again', async () => {
    const prePrepare = fixturePrePrepare(2, 0);
    const stages: SlotRecord[] = [
      { seq: 2, view: 0, prePrepare, sentPrepare: true, sentCommit: false, prepared: null, committed: null },
      { seq: 2, view: 0, prePrepare, sentPrepare: true, sentCommit: true, prepared: { prePrepare, prepares: fixtureSlot(2, 0).prepared?.prepares ?? [] }, committed: null },
      {
        seq: 2,
        view: 0,
        prePrepare,
        sentPrepare: true,
        sentCommit: true,
        prepared: { prePrepare, prepares: fixtureSlot(2, 0).prepared?.prepares ?? [] },
        committed: { prePrepare, commits: fixtureSlot(2, 0).committed?.commits ?? [] },
      },
    ];
    const writes: number[] = [];
    let storage = await openStorage((t) => writes.push(t.bytes));
    for (const stage of stages) await storage.persist({ view: null, stableCheckpoint: null, slots: [stage] });
    const ppBytes = encodeCanonical(prePrepare as unknown as Canonical).length;
    // What a write holds without the batch: the slot's fields, its pre-prepare's digest and the votes.
    const withoutBatch = (stage: SlotRecord): number =>
      encodeCanonical({ ...stage, prePrepare: prePrepare.digest, prepared: stage.prepared?.prepares ?? null, committed: stage.committed?.commits ?? null } as unknown as Canonical).length + 64;
    expect(writes[0]).toBeGreaterThan(ppBytes);
    stages.slice(1).forEach((stage, i) => expect(writes[i + 1]).toBeLessThan(withoutBatch(stage)));
    storage = await reopen(storage);
    const loaded = storage.load()?.slots;
    expect(bytesOf(loaded)).toBe(bytesOf(stages.slice(2)));
    expect(loaded?.[0]?.committed?.prePrepare).toBe(loaded?.[0]?.prePrepare);
    // Loaded, the store knows the pre-prepare is on disk: the next write of the slot does not carry it again.
    const before = writes.length;
    await storage.close();
    opened.splice(0);
    storage = await openStorage((t) => writes.push(t.bytes));
    const again = storage.load()?.slots[0];
    if (again === undefined) throw new Error('slot 2 not loaded');
    await storage.persist({ view: null, stableCheckpoint: null, slots: [{ ...again, sentCommit: true }] });
    expect(writes.length).toBe(before + 1);
    expect(writes.at(-1)).toBeLessThan(withoutBatch(again));
    // Another pre-prepare for the slot (a new view's) is written with it, and is what loads.
    const next = fixturePrePrepare(2, 1);
    await storage.persist({ view: null, stableCheckpoint: null, slots: [{ seq: 2, view: 1, prePrepare: next, sentPrepare: true, sentCommit: false, prepared: again.prepared, committed: null }] });
    storage = await reopen(storage);
    expect(bytesOf(storage.load()?.slots[0]?.prePrepare)).toBe(bytesOf(next));
    expect(bytesOf(storage.load()?.slots[0]?.prepared?.prePrepare)).toBe(bytesOf(prePrepare));
  });

  // Review (issue 16): a store written before kind 5 holds its pre-prepares inside the slot records (kind 1
  // or 4), not under prePrepareKey. load() must not count those as written apart, or the slot's next write
  // (a kind-5 record naming the pre-prepare by digest) leaves a store that no longer loads.
  it('rewrites a slot loaded from a kind-4 or kind-1 record with its pre-prepare apart, so the store still loads', async () => {
    await storedFixtures();
    await tamper((raw) => {
      for (const [seq, kind] of [[6, 4], [7, 1]] as const) {
        const slot = fixtureSlot(seq, 2);
        // Kind 4 leaves out a certificate's pre-prepare when it is the slot's own (sharedSlot).
        const own = (pp: PrePrepare | undefined) => pp !== undefined && bytesOf(pp) === bytesOf(slot.prePrepare);
        const stored =
          kind === 1
            ? slot
            : {
                ...slot,
                prepared: slot.prepared && (own(slot.prepared.prePrepare) ? { prepares: slot.prepared.prepares } : slot.prepared),
                committed: slot.committed && (own(slot.committed.prePrepare) ? { commits: slot.committed.commits } : slot.committed),
              };
        raw.slots.removeSync(prePrepareKey(seq));
        raw.slots.putSync(u64Key(seq), wellSealed(kind, stored));
      }
    });
    let storage = await openStorage();
    const loaded = storage.load()?.slots ?? [];
    const old = loaded.filter((s) => s.seq === 6 || s.seq === 7);
    expect(old.map((s) => s.seq)).toEqual([6, 7]);
    // The core's next write of these slots: the same pre-prepare objects it was given, one more vote sent.
    await storage.persist({ view: null, stableCheckpoint: null, slots: old.map((s) => ({ ...s, sentCommit: true })) });
    storage = await reopen(storage);
    expect(bytesOf(storage.load()?.slots.filter((s) => s.seq === 6 || s.seq === 7))).toBe(bytesOf(old.map((s) => ({ ...s, sentCommit: true }))));
  });

  it('refuses a slot whose pre-prepare is missing or another, and a pre-prepare stored without its slot; a checkpoint deletes both', async () => {
    await storedFixtures();
    await tamper(({ slots }) => slots.removeSync(prePrepareKey(6)));
    let storage = await openStorage();
    expect(loadError(storage).message).toMatch(/slot 6 is damaged \(its pre-prepare [0-9a-f]{64} is not stored\)/);
    await storage.close();
    opened.splice(0);

    await storedFixtures();
    await tamper(({ slots }) => slots.putSync(prePrepareKey(9), slots.get(prePrepareKey(6)) ?? Buffer.alloc(0)));
    storage = await openStorage();
    expect(loadError(storage).message).toMatch(/pre-prepare of slot 9 is damaged \(pre-prepare.seq is not the slot's seq 9\)/);
    await storage.close();
    opened.splice(0);

    await storedFixtures();
    await tamper(({ slots }) => slots.putSync(prePrepareKey(9), wellSealed(6, { ...fixturePrePrepare(9, 2), digest: 'f'.repeat(64) })));
    storage = await openStorage();
    expect(loadError(storage).message).toMatch(/slot 9 is damaged \(names pre-prepare [0-9a-f]{64}, but f{64} is stored\)/);
    await storage.close();
    opened.splice(0);

    await storedFixtures();
    await tamper(({ slots }) => slots.putSync(prePrepareKey(40), slots.get(prePrepareKey(6)) ?? Buffer.alloc(0)));
    storage = await openStorage();
    expect(loadError(storage).message).toMatch(/pre-prepare of slot 40 is damaged \(stored without its slot\)/);
    await storage.close();
    opened.splice(0);

    await storedFixtures();
    storage = await openStorage();
    await storage.persist({ view: null, stableCheckpoint: fixtureCheckpoint(8), slots: [] });
    await storage.close();
    opened.splice(0);
    const raw = rawTables();
    const kept = [...raw.slots.getKeys()].filter((k) => (k as Buffer).length === 9).map((k) => u64FromKey((k as Buffer).subarray(0, 8)));
    await raw.root.close();
    expect(kept.every((seq) => seq !== null && seq > 8)).toBe(true);
    expect(kept.length).toBeGreaterThan(0);
  });

  it('keeps the view state and checkpoint when later deltas carry none, and upserts slots by seq', async () => {
    let storage = await openStorage();
    await storage.persist({ view: fixtureView(1), stableCheckpoint: null, slots: [fixtureSlot(1, 0), fixtureSlot(2, 0)] });
    await storage.persist({ view: null, stableCheckpoint: null, slots: [fixtureSlot(2, 1), fixtureSlot(3, 1)] });
    storage = await reopen(storage);
    const loaded = storage.load();
    expect(bytesOf(loaded)).toBe(
      bytesOf({ view: fixtureView(1), stableCheckpoint: null, slots: [fixtureSlot(1, 0), fixtureSlot(2, 1), fixtureSlot(3, 1)] }),
    );
  });

  it('loads a store without a view record as view 0, active', async () => {
    const storage = await openStorage();
    await storage.persist(slotsDelta([1]));
    expect(storage.load()?.view).toEqual({ view: 0, active: true, newView: null });
  });
});

describe('PbftStorage stable checkpoint', () => {
  it('deletes the slots at or below it in the same transaction, and skips those in its own delta', async () => {
    const writes: PbftStorageTimings[] = [];
    let storage = await openStorage((t) => writes.push(t));
    await storage.persist(slotsDelta(range(1, 10)));
    await storage.persist({ view: null, stableCheckpoint: fixtureCheckpoint(4), slots: [fixtureSlot(3, 0), fixtureSlot(11, 0)] });
    expect(writes).toHaveLength(2);
    storage = await reopen(storage);
    const loaded = storage.load();
    expect(loaded?.stableCheckpoint?.seq).toBe(4);
    expect(seqs(loaded)).toEqual(range(5, 11));
    await storage.close();
    opened.splice(0);
    await tamper(({ slots }) => expect([...slots.getKeys()].filter((k) => k.length === 8).map((k) => u64FromKey(k))).toEqual(range(5, 11)));

    // A later checkpoint replaces the earlier one.
    storage = await openStorage();
    await storage.persist({ view: null, stableCheckpoint: fixtureCheckpoint(8), slots: [] });
    expect(bytesOf(storage.load())).toBe(
      bytesOf({ view: { view: 0, active: true, newView: null }, stableCheckpoint: fixtureCheckpoint(8), slots: range(9, 11).map((s) => fixtureSlot(s, 0)) }),
    );
  });

  it('leaves out of load() a slot a later delta wrote below the checkpoint, and the next checkpoint deletes it', async () => {
    const storage = await openStorage();
    await storage.persist({ view: null, stableCheckpoint: fixtureCheckpoint(4), slots: [fixtureSlot(5, 0)] });
    await storage.persist(slotsDelta([2]));
    expect(seqs(storage.load())).toEqual([5]);
    await storage.persist({ view: null, stableCheckpoint: fixtureCheckpoint(5), slots: [] });
    await storage.close();
    opened.splice(0);
    await tamper(({ slots }) => expect([...slots.getKeys()]).toEqual([]));
  });
});

describe('PbftStorage load-time checks', () => {
  it('throws naming the slot, with what to do, when a slot record is damaged', async () => {
    await storedFixtures();
    await tamper(({ slots }) => slots.putSync(u64Key(7), flipLastByte(slots.get(u64Key(7)), 'slot 7')));
    const error = loadError(await openStorage());
    expect(error.record).toBe('slot 7');
    expect(error.problem).toMatch(/^checksum mismatch \(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\)$/);
    expect(error.message).toContain(`pbft storage ${dir}: slot 7 is damaged (checksum mismatch`);
    expect(error.message).toMatch(/cannot vouch for the votes it cast/);
    expect(error.message).toMatch(/nothing here is safe to drop/);
    expect(error.message).toContain(`remove ${dir}`);
  });

  it('throws naming the view state or the stable checkpoint when one of them is damaged', async () => {
    await storedFixtures();
    await tamper(({ meta }) => meta.putSync(PBFT_STORAGE_LAYOUT.viewKey, flipLastByte(meta.get(PBFT_STORAGE_LAYOUT.viewKey), 'view')));
    let storage = await openStorage();
    expect(loadError(storage).record).toBe('view state');
    await storage.close();
    opened.splice(0);
    await tamper(({ meta }) => {
      meta.putSync(PBFT_STORAGE_LAYOUT.viewKey, wellSealed(2, fixtureView(2)));
      const key = PBFT_STORAGE_LAYOUT.stableCheckpointKey;
      const raw = meta.get(key);
      if (raw === undefined) throw new Error('no stable checkpoint stored');
      meta.putSync(key, raw.subarray(0, raw.length - 10)); // torn
    });
    storage = await openStorage();
    const error = loadError(storage);
    expect(error.record).toBe('stable checkpoint');
    expect(error.problem).toMatch(/checksum mismatch/);
  });

  it('catches a slot stored under the wrong key, and a record of the wrong kind', async () => {
    await storedFixtures();
    await tamper(({ slots }) => slots.putSync(u64Key(8), slots.get(u64Key(9)) ?? Buffer.alloc(0)));
    let storage = await openStorage();
    expect(loadError(storage).message).toMatch(/slot 8 is damaged \(record holds seq 9\)/);
    await storage.close();
    opened.splice(0);
    await tamper(({ slots, meta }) => slots.putSync(u64Key(8), meta.get(PBFT_STORAGE_LAYOUT.viewKey) ?? Buffer.alloc(0)));
    storage = await openStorage();
    expect(loadError(storage).problem).toBe('record kind 2, expected 1 or 4 or 5');
  });

  it('validates the shape of records with a good checksum, naming the field', async () => {
    await storedFixtures();
    const slot = fixtureSlot(6, 2);
    const cases: [string, (raw: ReturnType<typeof rawTables>) => void, RegExp][] = [
      [
        'slot 6',
        ({ slots }) => slots.putSync(u64Key(6), wellSealed(1, { ...slot, committed: { prePrepare: slot.prePrepare, commits: slot.prepared?.prepares } })),
        /^committed\.commits\[0\]\.type must be commit$/,
      ],
      ['slot 6', ({ slots }) => slots.putSync(u64Key(6), wellSealed(1, { ...slot, sentCommit: 'yes' })), /^sentCommit must be a boolean$/],
      ['slot 6', ({ slots }) => slots.putSync(u64Key(6), wellSealed(1, { ...slot, extra: 1 })), /^slot has fields .*extra/],
      [
        'slot 6',
        ({ slots }) => slots.putSync(u64Key(6), wellSealed(1, { ...slot, prePrepare: fixturePrePrepare(7, 2) })),
        /^prePrepare\.seq is not the slot's seq 6$/,
      ],
      [
        'slot 6',
        ({ slots }) => slots.putSync(u64Key(6), wellSealed(1, { ...slot, prePrepare: { ...slot.prePrepare, digest: 'nope' } })),
        /^prePrepare: pre_prepare\.digest must be a hex SHA-256 digest$/,
      ],
      ['slot 6', ({ slots }) => slots.putSync(u64Key(6), stampChecksum(Buffer.from([0, 0, 0, 0, 1, 99]))), /^canonical decoding: unknown tag 99/],
      [
        'view state',
        ({ meta }) => meta.putSync(PBFT_STORAGE_LAYOUT.viewKey, wellSealed(2, { ...fixtureView(2), newView: fixtureCheckpoint(4).proof[0] })),
        /^newView\.type must be new_view$/,
      ],
      [
        'stable checkpoint',
        ({ meta }) => {
          const checkpoint = fixtureCheckpoint(4);
          const clients = [{ ...checkpoint.state.clients[0], result: 'text' }];
          meta.putSync(PBFT_STORAGE_LAYOUT.stableCheckpointKey, wellSealed(3, { ...checkpoint, state: { ...checkpoint.state, clients } }));
        },
        /^state\.clients\[0\]\.result must be bytes$/,
      ],
      [
        'stable checkpoint',
        ({ meta }) => meta.putSync(PBFT_STORAGE_LAYOUT.stableCheckpointKey, wellSealed(3, { ...fixtureCheckpoint(4), digest: 'x' })),
        /^digest must be a hex SHA-256 digest$/,
      ],
    ];
    for (const [record, edit, problem] of cases) {
      await rm(dir, { recursive: true, force: true });
      await storedFixtures();
      await tamper(edit);
      const storage = await PbftStorage.open(dir);
      try {
        const error = loadError(storage, String(problem));
        expect(error.record, String(problem)).toBe(record);
        expect(error.problem).toMatch(problem);
      } finally {
        await storage.close();
      }
    }
  });

  it('refuses keys it does not write', async () => {
    await storedFixtures();
    await tamper(({ meta }) => meta.putSync('leftover', Buffer.from('x')));
    let storage = await openStorage();
    expect(loadError(storage).message).toMatch(/meta key "leftover" is damaged \(not a key this store writes\)/);
    await storage.close();
    opened.splice(0);
    await tamper(({ meta, slots }) => {
      meta.removeSync('leftover');
      slots.putSync(Buffer.from('garbage'), Buffer.from('x'));
    });
    storage = await openStorage();
    expect(loadError(storage).record).toBe(`slot key 0x${Buffer.from('garbage').toString('hex')}`);
  });
});

describe('PbftStorage writes', () => {
  it('an empty delta writes nothing, but resolves only after the persists called before it', async () => {
    const writes: PbftStorageTimings[] = [];
    const storage = await openStorage((t) => writes.push(t));
    await storage.persist(EMPTY);
    expect(writes).toEqual([]);

    const order: string[] = [];
    const first = storage.persist(slotsDelta([1])).then(() => order.push('slot 1'));
    await new Promise((resolve) => setImmediate(resolve)); // the commit is in flight now
    const empty = storage.persist(EMPTY).then(() => order.push('empty'));
    await Promise.all([first, empty]);
    expect(order).toEqual(['slot 1', 'empty']);
    expect(writes).toHaveLength(1);
    expect(writes[0]?.bytes).toBeGreaterThan(100);
    expect(writes[0]?.writeSeconds).toBeGreaterThan(0);
    expect(writes[0]?.syncSeconds).toBeGreaterThan(0);
  });

  it('commits the persists of one turn in one transaction, applied and resolved in call order', async () => {
    const writes: PbftStorageTimings[] = [];
    let storage = await openStorage((t) => writes.push(t));
    const order: number[] = [];
    const calls: Promise<unknown>[] = [];
    for (let i = 0; i < 30; i++) {
      // Every call rewrites slot 1 (the last one must win) and adds one slot of its own.
      const delta: PersistDelta = { view: fixtureView(i % 3), stableCheckpoint: null, slots: [fixtureSlot(1, i), fixtureSlot(10 + i, 0)] };
      calls.push(storage.persist(delta).then(() => order.push(i)));
      if (i === 14) await Promise.resolve(); // calls after an await within the same turn join too
    }
    // A checkpoint in the middle of a group deletes what earlier deltas wrote, not what later ones write.
    calls.push(storage.persist({ view: null, stableCheckpoint: fixtureCheckpoint(20), slots: [] }));
    calls.push(storage.persist(slotsDelta([41])));
    await Promise.all(calls);
    expect(order).toEqual(range(0, 29));
    expect(writes).toHaveLength(1);
    storage = await reopen(storage);
    const loaded = storage.load();
    expect(seqs(loaded)).toEqual([...range(21, 39), 41]);
    expect(loaded?.view.view).toBe(29 % 3);
  });

  it('gives the calls that arrive during a commit the next transaction, and slot 1 the last value', async () => {
    const writes: PbftStorageTimings[] = [];
    const storage = await openStorage((t) => writes.push(t));
    const first = storage.persist(slotsDelta([1], 0));
    await new Promise((resolve) => setImmediate(resolve));
    const rest = range(1, 20).map((view) => storage.persist(slotsDelta([1], view)));
    await Promise.all([first, ...rest]);
    expect(writes).toHaveLength(2);
    const slot = storage.load()?.slots[0] as SlotRecord;
    expect(bytesOf({ view: fixtureView(0), stableCheckpoint: null, slots: [slot] })).toBe(
      bytesOf({ view: fixtureView(0), stableCheckpoint: null, slots: [fixtureSlot(1, 20)] }),
    );
  });

  it('rejects a delta it cannot store, naming the field, and stores nothing of it', async () => {
    const storage = await openStorage();
    await expect(storage.persist(slotsDelta([0]))).rejects.toThrow(PbftInputError);
    await expect(storage.persist(slotsDelta([0]))).rejects.toThrow(/slot seq must be an integer >= 1, got 0/);
    await expect(
      storage.persist({ view: { view: Number.NaN, active: true, newView: null }, stableCheckpoint: null, slots: [fixtureSlot(1, 0)] }),
    ).rejects.toThrow(/view state cannot be stored: canonical encoding: NaN is not a finite number/);
    expect(storage.load()).toBeNull();
  });

  it('refuses writes after close', async () => {
    const storage = await PbftStorage.open(dir);
    await storage.close();
    await expect(storage.persist(slotsDelta([1]))).rejects.toThrow(/pbft storage .* is closed/);
    await expect(storage.persist(EMPTY)).rejects.toThrow(/is closed/);
  });
});
