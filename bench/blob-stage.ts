/**
 * The blob store's per-chunk bookkeeping on the receive path, alone: one
 * staged value written the way BlobReceiver writes it (writeTrusted in
 * batches of 128 chunks), committed and released, then removed and GC'd, a
 * few rounds. Chunks are 64 bytes so the pack writes stay small next to the
 * bookkeeping (index lookups, pending and pin maps, the commit's
 * transaction); fsync is off. Reports process CPU (event loop and libuv
 * threads) per chunk for each step, medians over the rounds after the first.
 *
 * `--src` points at another checkout's src/ so two builds are compared on
 * the same machine, interleaved (the delta bench's receiver CPU per MiB is
 * too noisy on a shared machine to see a 1 µs-per-chunk change: at 8 KiB
 * chunks that is 0.13 ms of its ~7 ms per MiB).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineBench, intFlag, machineFacts, median, progress, renderTable, significant } from './run.ts';

interface BlobStageBenchOptions {
  chunks: number;
  rounds: number;
  src: string;
}

const CHUNK_BYTES = 64;
const BATCH_CHUNKS = 128;

async function runBlobStageBench(opts: BlobStageBenchOptions): Promise<object> {
  const { BlobStore } = (await import(join(opts.src, 'blob/store.ts'))) as typeof import('../src/blob/store.ts');
  const { valueHash } = (await import(join(opts.src, 'blob/manifest.ts'))) as typeof import('../src/blob/manifest.ts');
  const { chunkingForAverage } = (await import(join(opts.src, 'blob/chunker.ts'))) as typeof import('../src/blob/chunker.ts');
  const loadBefore = os.loadavg();
  const data = randomBytes(opts.chunks * CHUNK_BYTES);
  const chunks = Array.from({ length: opts.chunks }, (_, i) => {
    const bytes = data.subarray(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES);
    return { offset: i * CHUNK_BYTES, length: CHUNK_BYTES, hash: createHash('sha256').update(bytes).digest('hex'), bytes };
  });
  const refs = chunks.map(({ offset, length, hash }) => ({ offset, length, hash }));
  const chunking = chunkingForAverage(4096);
  const hash = valueHash(opts.chunks * CHUNK_BYTES, refs);
  const dir = await mkdtemp(join(os.tmpdir(), 'dwcp-blob-stage-'));
  const store = await BlobStore.open({ dir, chunking, maxValueBytes: 2 ** 40, noSync: true });
  const cpuMs = (): number => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  const steps = { write: [] as number[], commit: [] as number[], release: [] as number[], total: [] as number[] };
  try {
    for (let round = 0; round <= opts.rounds; round++) {
      const key = `stage/${round}`;
      const t0 = cpuMs();
      const staged = store.stage();
      for (let i = 0; i < opts.chunks; i += BATCH_CHUNKS) await staged.writeTrusted(chunks.slice(i, i + BATCH_CHUNKS).map((c) => ({ hash: c.hash, bytes: c.bytes })));
      const t1 = cpuMs();
      await staged.commit(key, { key, version: hash, size: opts.chunks * CHUNK_BYTES, hash, chunking, chunks: refs }, 'bench');
      const t2 = cpuMs();
      staged.release();
      const t3 = cpuMs();
      await store.remove(key);
      await store.gc();
      if (round === 0) continue; // warm-up: the JIT and LMDB's first pages
      const perChunk = (ms: number): number => (ms * 1000) / opts.chunks;
      steps.write.push(perChunk(t1 - t0));
      steps.commit.push(perChunk(t2 - t1));
      steps.release.push(perChunk(t3 - t2));
      steps.total.push(perChunk(t3 - t0));
    }
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
  const result = {
    write_us_per_chunk: significant(median(steps.write), 3),
    commit_us_per_chunk: significant(median(steps.commit), 3),
    release_us_per_chunk: significant(median(steps.release), 3),
    total_us_per_chunk: significant(median(steps.total), 3),
    loadavg_before: loadBefore,
    loadavg_after: os.loadavg(),
  };
  progress(
    renderTable(
      ['src', 'write µs/chunk', 'commit', 'release', 'total', 'load'],
      [[opts.src, String(result.write_us_per_chunk), String(result.commit_us_per_chunk), String(result.release_us_per_chunk), String(result.total_us_per_chunk), `${loadBefore[0]?.toFixed(2)} → ${result.loadavg_after[0]?.toFixed(2)}`]],
    ),
  );
  return { bench: 'blob-stage', machine: machineFacts(), options: { ...opts }, result };
}

export const blobStageBench = defineBench<BlobStageBenchOptions>({
  flags: {
    chunks: { default: '65536', description: 'chunks per staged value (65 536 = 512 MiB of 8 KiB chunks, the bulk bench)' },
    rounds: { default: '6', description: 'measured rounds, after one warm-up round' },
    src: { default: '', description: "another checkout's src/ directory to measure (default: this one's)" },
  },
  parse: (flags) => ({
    chunks: intFlag(flags, 'chunks', 1),
    rounds: intFlag(flags, 'rounds', 1),
    src: resolve(flags.src || fileURLToPath(new URL('../src', import.meta.url))),
  }),
  run: runBlobStageBench,
});
