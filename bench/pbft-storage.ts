/**
 * pbft-storage: one PBFT replica's durable writes at the rate the 64-client
 * pbft bench drives them, on the real PbftStorage (LMDB, fsync'd), without
 * the network, the core or the other replicas: what a replica's storage
 * costs per batch and per put, in process CPU (load-independent, unlike the
 * full bench on a shared machine) and bytes.
 *
 * The workload is what a backup writes per batch (bench/RESULTS.md, pbft:
 * 9.8 puts per batch, 4 batches in flight): the slot pre-prepared (its
 * pre-prepare, `--requests` client requests of `--value-bytes` each, signed
 * as one client batch), then prepared (2 prepares), then committed (3
 * commits), each write its own persist() as the driver issues them, with
 * `--inflight` batches' writes overlapping (so group commit shares fsyncs as
 * in the daemon), and a stable checkpoint every 64 sequence numbers. Every
 * message is signed with a real Ed25519 key, so records have their real
 * sizes; signing is outside the timed CPU.
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { batchDigest, seal, sealClientBatch, stateDigest } from '../src/consensus/pbft/encoding.ts';
import { PbftStorage } from '../src/consensus/pbft/storage.ts';
import type { Checkpoint, ClientRequest, Commit, PrePrepare, Prepare, ReplicaId, SlotRecord, StableCheckpoint } from '../src/consensus/pbft/types.ts';
import { encodeKvCommand } from '../src/kv/command.ts';
import { defineBench, intFlag, machineFacts, progress, renderTable, significant } from './run.ts';

interface PbftStorageBenchOptions {
  batches: number;
  requests: number;
  valueBytes: number;
  inflight: number;
  workDir: string;
}

const MEMBERS: readonly ReplicaId[] = ['m0', 'm1', 'm2', 'm3'];
const CHECKPOINT_INTERVAL = 64;

function signer(): (bytes: Uint8Array) => Uint8Array {
  const { privateKey } = generateKeyPairSync('ed25519');
  return (bytes) => sign(null, bytes, privateKey);
}

/** The three records a backup writes for `seq`, in order. */
function slotWrites(seq: number, opts: PbftStorageBenchOptions, keys: (bytes: Uint8Array) => Uint8Array): SlotRecord[] {
  const value = 'v'.repeat(opts.valueBytes);
  const bodies = Array.from({ length: opts.requests }, (_, i) => ({
    client: `m${i % 4}/${i}`,
    timestamp: seq * 1000 + i,
    operation: encodeKvCommand({ clientId: `m${i % 4}/${i}`, seq: seq * 1000 + i, op: 'put', key: `bench/key-${seq}-${i}`, value: new TextEncoder().encode(value) }),
    readOnly: false,
  }));
  const batch: ClientRequest[] = sealClientBatch(bodies, keys);
  const prePrepare = seal<PrePrepare>({ type: 'pre_prepare', from: 'm0', view: 0, seq, digest: batchDigest(batch), batch }, keys);
  const vote = <V extends Prepare | Commit>(type: V['type'], from: ReplicaId): V =>
    seal<V>({ type, from, view: 0, seq, digest: prePrepare.digest } as Omit<V, 'signature'>, keys);
  const prepared = { prePrepare, prepares: [vote<Prepare>('prepare', 'm1'), vote<Prepare>('prepare', 'm2')] };
  const base = { seq, view: 0, prePrepare, sentPrepare: true };
  return [
    { ...base, sentCommit: false, prepared: null, committed: null },
    { ...base, sentCommit: true, prepared, committed: null },
    { ...base, sentCommit: true, prepared, committed: { prePrepare, commits: MEMBERS.slice(1).map((m) => vote<Commit>('commit', m)) } },
  ];
}

function checkpoint(seq: number, keys: (bytes: Uint8Array) => Uint8Array): StableCheckpoint {
  const state = { snapshot: new Uint8Array(4096), clients: [] };
  const digest = stateDigest(state);
  const proof = MEMBERS.slice(0, 3).map((from) => seal<Checkpoint>({ type: 'checkpoint', from, seq, digest }, keys));
  return { seq, digest, proof, state };
}

async function runPbftStorageBench(opts: PbftStorageBenchOptions): Promise<object> {
  const dir = await mkdtemp(join(opts.workDir, 'dwcp-bench-pbft-storage-'));
  const keys = signer();
  let bytes = 0;
  let transactions = 0;
  let syncSeconds = 0;
  const storage = await PbftStorage.open(dir, {
    onWrite: (t) => {
      bytes += t.bytes;
      transactions++;
      syncSeconds += t.syncSeconds;
    },
  });
  try {
    // Built (and signed) before the clock starts: only storage is timed.
    const writes = Array.from({ length: opts.batches }, (_, i) => slotWrites(i + 1, opts, keys));
    const checkpoints = new Map<number, StableCheckpoint>();
    for (let seq = CHECKPOINT_INTERVAL; seq <= opts.batches; seq += CHECKPOINT_INTERVAL) checkpoints.set(seq, checkpoint(seq, keys));
    const loadBefore = os.loadavg()[0] ?? 0;
    const cpu = process.cpuUsage();
    const started = performance.now();
    // Batch b's three writes go out one per round, overlapping the next batches' as `inflight` allows.
    const rounds = opts.batches + 2 * opts.inflight;
    for (let round = 0; round < rounds; round++) {
      const pending: Promise<void>[] = [];
      for (let stage = 0; stage < 3; stage++) {
        const b = round - stage * opts.inflight;
        const slot = writes[b]?.[stage];
        if (slot === undefined) continue;
        const stable = stage === 2 ? (checkpoints.get(slot.seq - CHECKPOINT_INTERVAL) ?? null) : null;
        pending.push(storage.persist({ view: null, stableCheckpoint: stable, slots: [slot] }));
      }
      await Promise.all(pending);
    }
    const elapsed = (performance.now() - started) / 1000;
    const used = process.cpuUsage(cpu);
    const cpuMs = (used.user + used.system) / 1000;
    const puts = opts.batches * opts.requests;
    const result = {
      batches: opts.batches,
      requests_per_batch: opts.requests,
      cpu_ms_per_batch: significant(cpuMs / opts.batches),
      cpu_us_per_put: significant((1000 * cpuMs) / puts),
      bytes_per_batch: Math.round(bytes / opts.batches),
      transactions,
      sync_ms_mean: significant((1000 * syncSeconds) / Math.max(1, transactions)),
      seconds: significant(elapsed),
      loadavg_before: loadBefore,
      loadavg_after: os.loadavg()[0] ?? 0,
    };
    progress(renderTable(['batches', 'CPU ms/batch', 'CPU µs/put', 'bytes/batch', 'transactions', 'sync ms', 'load'], [[
      String(result.batches), String(result.cpu_ms_per_batch), String(result.cpu_us_per_put), String(result.bytes_per_batch),
      String(transactions), String(result.sync_ms_mean), `${loadBefore.toFixed(2)} → ${result.loadavg_after.toFixed(2)}`,
    ]]));
    return { bench: 'pbft-storage', machine: machineFacts(), options: { ...opts }, result };
  } finally {
    await storage.close();
    await rm(dir, { recursive: true, force: true });
  }
}

export const pbftStorageBench = defineBench<PbftStorageBenchOptions>({
  flags: {
    batches: { default: '2000', description: 'batches (sequence numbers) written, three slot writes each' },
    requests: { default: '10', description: 'client requests per batch (the 64-client pbft bench cuts ~9.8)' },
    'value-bytes': { default: '256', description: 'bytes of each put value' },
    inflight: { default: '4', description: 'batches whose writes overlap (the core allows 4)' },
    'work-dir': { default: '', description: 'where the LMDB environment goes (default: the OS temp dir)' },
  },
  parse: (flags) => ({
    batches: intFlag(flags, 'batches', 1),
    requests: intFlag(flags, 'requests', 1),
    valueBytes: intFlag(flags, 'value-bytes', 0),
    inflight: intFlag(flags, 'inflight', 1),
    workDir: flags['work-dir'] || os.tmpdir(),
  }),
  run: runPbftStorageBench,
});
