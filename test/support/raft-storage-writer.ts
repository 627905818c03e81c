/**
 * Child process for the Raft storage crash test: `node raft-storage-writer.ts DIR`
 * reopens the storage in DIR, then persists batches of entries forever (until
 * killed, or a time and size bound) and prints `acked <lastIndex> <commit>`
 * after each persist resolves, `snapshot <index>` after each compaction.
 *
 * Entry and snapshot contents are pure functions of their index, so the parent
 * can check what it finds after any kill without being told what was written.
 * The workload exercises every write path: plain appends, overwrites of the
 * tail (same content, so acked entries stay right), two persist() calls
 * sharing a group commit, and saveSnapshot compaction, on small log segments
 * so that new segments are started and old ones deleted all along.
 */
import { fileURLToPath } from 'node:url';
import { RaftStorage } from '../../src/consensus/raft/storage.ts';
import type { Entry, Snapshot } from '../../src/consensus/raft/types.ts';

export const CRASH_VOTE = 'n1';
const MEMBERSHIP = { voters: ['n1', 'n2', 'n3'], learners: ['n4'] };
const MAX_RUN_MS = 20_000;
const MAX_INDEX = 200_000;
export const SEGMENT_BYTES = 64 * 1024;

export function crashTerm(index: number): number {
  return 1 + Math.floor(index / 40);
}

export function crashEntry(index: number): Entry {
  const term = crashTerm(index);
  if (index % 17 === 0) {
    return { kind: 'config', index, term, membership: { voters: [`n${index % 5}`, 'n1'], learners: [`learner-${index}`] } };
  }
  const data = new Uint8Array(index % 300);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31 + index) & 0xff;
  return { kind: 'normal', index, term, data };
}

export function crashSnapshot(index: number): Snapshot {
  const data = new Uint8Array(100_000 + (index % 3) * 600_000); // one or two 1 MiB chunks
  for (let i = 0; i < data.length; i++) data[i] = (i * 13 + index) & 0xff;
  return { meta: { index, term: crashTerm(index), membership: MEMBERSHIP }, data };
}

function entriesFrom(from: number, to: number): Entry[] {
  return Array.from({ length: to - from + 1 }, (_, i) => crashEntry(from + i));
}

async function run(dir: string): Promise<void> {
  // Small segments, so that kills also land while a segment is started, filled or released.
  const storage = await RaftStorage.open(dir, { segmentBytes: SEGMENT_BYTES });
  const state = storage.load();
  let snapshotIndex = state?.snapshot.meta.index ?? 0;
  let last = state?.entries.at(-1)?.index ?? snapshotIndex;
  const deadline = Date.now() + MAX_RUN_MS;
  for (let batch = 1; Date.now() < deadline && last < MAX_INDEX; batch++) {
    const end = last + 1 + (batch % 8);
    // The new hard state commits what the previous ack made durable, never more.
    const hardState = { term: crashTerm(end), vote: CRASH_VOTE, commit: last };
    if (batch % 7 === 0) {
      const middle = last + 1;
      await Promise.all([
        storage.persist({ entries: entriesFrom(last + 1, middle), hardState: null, snapshot: null, mustSync: true }),
        storage.persist({ entries: entriesFrom(middle + 1, end), hardState, snapshot: null, mustSync: true }),
      ]);
    } else {
      const from = batch % 5 === 0 ? Math.max(snapshotIndex + 1, last - 1) : last + 1;
      await storage.persist({ entries: entriesFrom(from, end), hardState, snapshot: null, mustSync: true });
    }
    last = end;
    process.stdout.write(`acked ${last} ${hardState.commit}\n`);
    if (batch % 20 === 0 && hardState.commit > snapshotIndex) {
      snapshotIndex = hardState.commit;
      await storage.saveSnapshot(crashSnapshot(snapshotIndex));
      process.stdout.write(`snapshot ${snapshotIndex}\n`);
    }
  }
  await storage.close();
  process.stdout.write('done\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const dir = process.argv[2];
  if (dir === undefined) {
    process.stderr.write('usage: raft-storage-writer.ts DIR\n');
    process.exit(2);
  }
  await run(dir);
}
