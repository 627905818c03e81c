/**
 * Crash durability of PbftStorage with a real process: a writer child
 * (test/support/pbft-storage-writer.ts) persists deltas and prints an ack
 * after each persist() resolves; the test SIGKILLs it at seeded random
 * moments, reopens the storage and checks that load() holds every acked
 * slot, contiguous from the stable checkpoint, each byte for byte what was
 * written, a checkpoint no older than the last acked one, and the view state
 * that goes with the highest stored slot. Set PBFT_CRASH_SEED to replay a
 * run; every assertion message carries the seed.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { encodeCanonical } from '../../src/consensus/pbft/encoding.ts';
import type { Canonical } from '../../src/consensus/pbft/encoding.ts';
import { PbftStorage } from '../../src/consensus/pbft/storage.ts';
import type { PbftPersistedState } from '../../src/consensus/pbft/types.ts';
import { Prng } from '../sim/prng.ts';
import { fixtureCheckpoint, fixtureSlot, fixtureView, writerView } from '../support/pbft-storage-writer.ts';

const WRITER = fileURLToPath(new URL('../support/pbft-storage-writer.ts', import.meta.url));
const ROUNDS = 8;
const SEED = Number(process.env.PBFT_CRASH_SEED ?? Date.now() % 2 ** 31);

let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'pbft-storage-crash-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

interface Acks {
  lastSeq: number;
  stable: number;
}

/** Runs the writer until it has acked `killAfter` deltas, then kills it `delayMs` later. */
function runWriter(dir: string, killAfter: number, delayMs: number, acks: Acks): Promise<{ signal: NodeJS.Signals | null; stderr: string }> {
  const child = spawn(process.execPath, [WRITER, dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let seen = 0;
  createInterface({ input: child.stdout }).on('line', (line) => {
    const [word, seq, , stable] = line.split(' ');
    if (word !== 'acked') return;
    acks.lastSeq = Number(seq);
    acks.stable = Number(stable);
    if (++seen === killAfter) setTimeout(() => child.kill('SIGKILL'), delayMs);
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (_code, signal) => resolve({ signal, stderr }));
  });
}

function same(a: unknown, b: unknown): boolean {
  return Buffer.from(encodeCanonical(a as Canonical)).equals(Buffer.from(encodeCanonical(b as Canonical)));
}

/** The first way `state` falls short of what was acked, or null. */
function shortfall(state: PbftPersistedState | null, acks: Acks): string | null {
  if (state === null) return acks.lastSeq > 0 ? 'storage is empty' : null;
  const stable = state.stableCheckpoint?.seq ?? 0;
  if (stable < acks.stable) return `stable checkpoint ${stable} is older than the acked ${acks.stable}`;
  if (stable > 0 && !same(state.stableCheckpoint, fixtureCheckpoint(stable))) return `stable checkpoint ${stable} content differs`;
  let expected = stable + 1;
  for (const slot of state.slots) {
    if (slot.seq !== expected) return `slot ${expected} missing (found ${slot.seq})`;
    if (!same(slot, fixtureSlot(slot.seq, writerView(slot.seq)))) return `slot ${slot.seq} content differs`;
    expected++;
  }
  const last = expected - 1;
  if (last < acks.lastSeq) return `slots end at ${last}, below the acked ${acks.lastSeq}`;
  if (!same(state.view, fixtureView(writerView(last)))) return `view state ${state.view.view} does not go with slot ${last} (view ${writerView(last)})`;
  return null;
}

it(`keeps every acknowledged persist across ${ROUNDS} SIGKILLs (seed ${SEED})`, { timeout: 60_000 }, async () => {
  const prng = new Prng(SEED);
  const dir = join(root, 'pbft');
  const acks: Acks = { lastSeq: 0, stable: 0 };
  for (let round = 1; round <= ROUNDS; round++) {
    const killAfter = prng.between(1, 150);
    const delayMs = prng.int(4);
    const context = `seed ${SEED}, round ${round} (killed after ack ${killAfter} + ${delayMs} ms)`;
    const result = await runWriter(dir, killAfter, delayMs, acks);
    expect(result.signal, `${context}: the writer should die by SIGKILL; stderr: ${result.stderr}`).toBe('SIGKILL');

    const storage = await PbftStorage.open(dir);
    try {
      // LMDB commits are atomic: a kill leaves no torn record, so load() must not throw either.
      expect(shortfall(storage.load(), acks), `${context}: acked through ${acks.lastSeq}`).toBeNull();
    } finally {
      await storage.close();
    }
  }
  expect(acks.lastSeq, `seed ${SEED}`).toBeGreaterThan(ROUNDS);
  expect(acks.stable, `seed ${SEED}: some round should have stored a stable checkpoint`).toBeGreaterThan(0);
});
