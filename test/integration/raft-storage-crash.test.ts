/**
 * Crash durability of RaftStorage with a real process: a writer child
 * (test/support/raft-storage-writer.ts) persists batches and prints an ack
 * after each persist() resolves; the test SIGKILLs it at seeded random
 * moments, reopens the storage and checks that every acked index is there,
 * contiguous from 1 (through the snapshot), with the right content, and that
 * the hard state is no older than the last acked one. Set RAFT_CRASH_SEED to
 * replay a run; every assertion message carries the seed.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { RaftStorage } from '../../src/consensus/raft/storage.ts';
import type { Entry, PersistedState } from '../../src/consensus/raft/types.ts';
import { snapshotBytes } from '../../src/consensus/raft/types.ts';
import { Prng } from '../sim/prng.ts';
import { CRASH_VOTE, crashEntry, crashSnapshot, crashTerm, SEGMENT_BYTES } from '../support/raft-storage-writer.ts';

const WRITER = fileURLToPath(new URL('../support/raft-storage-writer.ts', import.meta.url));
const ROUNDS = 8;
const SEED = Number(process.env.RAFT_CRASH_SEED ?? Date.now() % 2 ** 31);

let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'raft-storage-crash-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

interface Acks {
  lastIndex: number;
  commit: number;
  snapshot: number;
}

interface Round {
  acks: Acks;
  signal: NodeJS.Signals | null;
  stderr: string;
}

/** Runs the writer until it has acked `killAfter` batches, then kills it `delayMs` later. */
function runWriter(dir: string, killAfter: number, delayMs: number, acks: Acks): Promise<Round> {
  const child = spawn(process.execPath, [WRITER, dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let seen = 0;
  createInterface({ input: child.stdout }).on('line', (line) => {
    const [word, a, b] = line.split(' ');
    if (word === 'acked') {
      acks.lastIndex = Number(a);
      acks.commit = Number(b);
      if (++seen === killAfter) setTimeout(() => child.kill('SIGKILL'), delayMs);
    } else if (word === 'snapshot') {
      acks.snapshot = Number(a);
    }
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (_code, signal) => resolve({ acks, signal, stderr }));
  });
}

function sameEntry(found: Entry, want: Entry): boolean {
  if (found.kind !== want.kind || found.index !== want.index || found.term !== want.term) return false;
  if (found.kind === 'normal' && want.kind === 'normal') return Buffer.from(found.data).equals(Buffer.from(want.data));
  if (found.kind === 'config' && want.kind === 'config') return JSON.stringify(found.membership) === JSON.stringify(want.membership);
  return false;
}

/** The first way `state` falls short of what was acked, or null. */
function shortfall(state: PersistedState | null, acks: Acks): string | null {
  if (state === null) return acks.lastIndex > 0 ? 'storage is empty' : null;
  const { hardState, snapshot, entries } = state;
  if (hardState.commit < acks.commit) return `hard state commit ${hardState.commit} is older than the acked ${acks.commit}`;
  if (hardState.term < crashTerm(acks.lastIndex)) return `hard state term ${hardState.term} is older than the acked ${crashTerm(acks.lastIndex)}`;
  if (hardState.vote !== CRASH_VOTE) return `hard state vote ${String(hardState.vote)}`;
  const snap = snapshot.meta.index;
  if (snap < acks.snapshot) return `snapshot ${snap} is older than the acked snapshot ${acks.snapshot}`;
  if (snap > 0) {
    const want = crashSnapshot(snap);
    if (snapshot.meta.term !== want.meta.term || !Buffer.from(snapshotBytes(snapshot.data)).equals(Buffer.from(snapshotBytes(want.data)))) return `snapshot ${snap} content differs`;
  }
  let expected = snap + 1;
  for (const entry of entries) {
    if (entry.index !== expected) return `entry ${expected} missing (found ${entry.index})`;
    if (!sameEntry(entry, crashEntry(entry.index))) return `entry ${entry.index} content differs`;
    expected++;
  }
  if (expected - 1 < acks.lastIndex) return `log ends at ${expected - 1}, below the acked ${acks.lastIndex}`;
  return null;
}

it(`keeps every acknowledged write across ${ROUNDS} SIGKILLs (seed ${SEED})`, { timeout: 60_000 }, async () => {
  const prng = new Prng(SEED);
  const dir = join(root, 'raft');
  const acks: Acks = { lastIndex: 0, commit: 0, snapshot: 0 };
  const repairs: string[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const killAfter = prng.between(1, 300);
    const delayMs = prng.int(4);
    const context = `seed ${SEED}, round ${round} (killed after ack ${killAfter} + ${delayMs} ms)`;
    const result = await runWriter(dir, killAfter, delayMs, acks);
    expect(result.signal, `${context}: the writer should die by SIGKILL; stderr: ${result.stderr}`).toBe('SIGKILL');

    const storage = await RaftStorage.open(dir, { segmentBytes: SEGMENT_BYTES, onRepair: (m) => repairs.push(m) });
    try {
      const state = storage.load();
      expect(shortfall(state, acks), `${context}: acked through ${acks.lastIndex}`).toBeNull();
    } finally {
      await storage.close();
    }
    // A kill may cut a write short (the kernel can stop a write to a file part-way for a fatal
    // signal); what that leaves must be recognised as such, and nothing acked may be in it.
    for (const repair of repairs.splice(0)) expect(repair, context).toMatch(/a write cut short by a crash, never acknowledged/);
  }
  expect(acks.lastIndex, `seed ${SEED}`).toBeGreaterThan(ROUNDS);
  expect(acks.snapshot, `seed ${SEED}: some round should have compacted`).toBeGreaterThan(0);
});
