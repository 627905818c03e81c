/**
 * PBFT storage fixtures and the child process of its crash test.
 *
 * Fixtures: slot records, view states and stable checkpoints made of real
 * signed messages (FakeKeys from the PBFT harness), each a pure function of
 * its seq or view, so a test, or the crash test's parent, can rebuild what
 * should be stored without being told.
 *
 * Writer: `node pbft-storage-writer.ts DIR` reopens the storage in DIR, then
 * persists deltas forever (until killed, or a time and seq bound) and prints
 * `acked <lastSeq> <view> <stable>` after each persist resolves. The workload
 * covers every write path: new slots with the view state, rewrites of the
 * last acked slot (same content, and the same objects, so its pre-prepare is
 * not written again, also right after a restart), two persists sharing a group commit, an
 * empty delta, and stable checkpoints that delete the slots they cover.
 */
import { fileURLToPath } from 'node:url';
import { batchDigest, seal, stateDigest } from '../../src/consensus/pbft/encoding.ts';
import { PbftStorage } from '../../src/consensus/pbft/storage.ts';
import type {
  Checkpoint,
  ClientRequest,
  Commit,
  NewView,
  PrePrepare,
  Prepare,
  PreparedCertificate,
  ReplicaId,
  SlotRecord,
  StableCheckpoint,
  ViewChange,
  ViewState,
} from '../../src/consensus/pbft/types.ts';
import { FakeKeys, makeRequest, replicaIds } from '../sim/pbft-harness.ts';

export const FIXTURE_MEMBERS: readonly ReplicaId[] = replicaIds(4);
export const FIXTURE_KEYS = new FakeKeys('pbft-storage');
const MAX_RUN_MS = 20_000;
const MAX_SEQ = 100_000;

function member(i: number): ReplicaId {
  return FIXTURE_MEMBERS[i % FIXTURE_MEMBERS.length] as ReplicaId;
}

function request(seq: number, i: number): ClientRequest {
  return makeRequest(FIXTURE_KEYS, `client-${i}`, seq, { op: 'put', key: `k${seq}`, value: 'é'.repeat(seq % 40) });
}

/** Every fifth seq carries the empty batch (a new view's null request). */
export function fixturePrePrepare(seq: number, view: number): PrePrepare {
  const batch = seq % 5 === 0 ? [] : [request(seq, 1), request(seq, 2)];
  const from = member(view);
  return seal<PrePrepare>({ type: 'pre_prepare', from, view, seq, digest: batchDigest(batch), batch }, FIXTURE_KEYS.signer(from));
}

function votes<V extends Prepare | Commit>(type: V['type'], prePrepare: PrePrepare, count: number): V[] {
  return Array.from({ length: count }, (_, i) => {
    const from = member(prePrepare.view + 1 + i);
    const { view, seq, digest } = prePrepare;
    return seal<V>({ type, from, view, seq, digest } as Omit<V, 'signature'>, FIXTURE_KEYS.signer(from));
  });
}

function preparedCertificate(seq: number, view: number): PreparedCertificate {
  const prePrepare = fixturePrePrepare(seq, view);
  return { prePrepare, prepares: votes<Prepare>('prepare', prePrepare, 2) };
}

/**
 * The record of `seq` in `view`, cycling through the shapes a slot takes: pre-prepared, prepared,
 * committed, and moved to a newer view with only an older prepared certificate left.
 */
export function fixtureSlot(seq: number, view: number): SlotRecord {
  const prePrepare = fixturePrePrepare(seq, view);
  switch (seq % 4) {
    case 0:
      return { seq, view, prePrepare, sentPrepare: true, sentCommit: false, prepared: null, committed: null };
    case 1:
      return { seq, view, prePrepare, sentPrepare: true, sentCommit: true, prepared: preparedCertificate(seq, view), committed: null };
    case 2:
      return {
        seq,
        view,
        prePrepare,
        sentPrepare: true,
        sentCommit: true,
        prepared: preparedCertificate(seq, view),
        committed: { prePrepare, commits: votes<Commit>('commit', prePrepare, 3) },
      };
    default:
      return { seq, view: view + 1, prePrepare: null, sentPrepare: false, sentCommit: false, prepared: preparedCertificate(seq, view), committed: null };
  }
}

export function fixtureCheckpoint(seq: number): StableCheckpoint {
  const snapshot = new Uint8Array(64 + (seq % 100));
  for (let i = 0; i < snapshot.length; i++) snapshot[i] = (i * 7 + seq) & 0xff;
  const state = {
    snapshot,
    clients: [1, 2].map((i) => ({ client: `client-${i}`, timestamp: seq, seq, result: new TextEncoder().encode(`result ${seq}`) })),
  };
  const digest = stateDigest(state);
  const proof = [0, 1, 2].map((i) =>
    seal<Checkpoint>({ type: 'checkpoint', from: member(i), seq, digest }, FIXTURE_KEYS.signer(member(i))),
  );
  return { seq, digest, proof, state };
}

/** View 0 has no new-view; a later one carries the new-view that started it, with view changes and an O set. */
export function fixtureView(view: number): ViewState {
  if (view === 0) return { view, active: true, newView: null };
  const stable = fixtureCheckpoint(4);
  const viewChanges = [1, 2, 3].map((i) =>
    seal<ViewChange>(
      {
        type: 'view_change',
        from: member(view + i),
        view,
        checkpoint: { seq: stable.seq, digest: stable.digest },
        checkpointProof: stable.proof,
        prepared: [preparedCertificate(5, view - 1), preparedCertificate(6, view - 1)],
      },
      FIXTURE_KEYS.signer(member(view + i)),
    ),
  );
  const from = member(view);
  const newView = seal<NewView>(
    { type: 'new_view', from, view, viewChanges, prePrepares: [fixturePrePrepare(5, view), fixturePrePrepare(6, view)] },
    FIXTURE_KEYS.signer(from),
  );
  return { view, active: true, newView };
}

/** The view the writer is in once it has written `seq`. */
export function writerView(seq: number): number {
  return Math.floor(seq / 60);
}

async function run(dir: string): Promise<void> {
  const storage = await PbftStorage.open(dir);
  const state = storage.load();
  let stable = state?.stableCheckpoint?.seq ?? 0;
  let last = state?.slots.at(-1)?.seq ?? stable;
  // The slot objects last written or loaded: a rewrite passes the same objects again, as the core does, so
  // the store's pre-prepare-once path (a slot rewritten without its pre-prepare) is crashed through too.
  const kept = new Map<number, SlotRecord>((state?.slots ?? []).map((s) => [s.seq, s]));
  const deadline = Date.now() + MAX_RUN_MS;
  for (let batch = 1; Date.now() < deadline && last < MAX_SEQ; batch++) {
    const end = last + 1 + (batch % 6);
    const from = batch % 5 === 0 && last > stable ? last : last + 1;
    const slots = Array.from({ length: end - from + 1 }, (_, i) => kept.get(from + i) ?? fixtureSlot(from + i, writerView(from + i)));
    kept.clear();
    const top = slots.at(-1);
    if (top !== undefined) kept.set(top.seq, top);
    const view = writerView(end) === writerView(last) ? null : fixtureView(writerView(end));
    if (batch % 7 === 0) {
      const half = Math.ceil(slots.length / 2);
      await Promise.all([
        storage.persist({ view: null, stableCheckpoint: null, slots: slots.slice(0, half) }),
        storage.persist({ view, stableCheckpoint: null, slots: slots.slice(half) }),
        storage.persist({ view: null, stableCheckpoint: null, slots: [] }),
      ]);
    } else {
      // A checkpoint only at what an earlier ack made durable, as the core's stable checkpoint trails execution.
      const checkpoint = batch % 9 === 0 && last - 4 > stable ? fixtureCheckpoint(last - 4) : null;
      await storage.persist({ view, stableCheckpoint: checkpoint, slots });
      if (checkpoint !== null) stable = checkpoint.seq;
    }
    last = end;
    process.stdout.write(`acked ${last} ${writerView(last)} ${stable}\n`);
  }
  await storage.close();
  process.stdout.write('done\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const dir = process.argv[2];
  if (dir === undefined) {
    process.stderr.write('usage: pbft-storage-writer.ts DIR\n');
    process.exit(2);
  }
  await run(dir);
}
