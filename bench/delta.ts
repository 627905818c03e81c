/**
 * The delta bench: delta sync against the regional baseline cache and bulk
 * transfer of large values, against the issue's floors.
 *
 * - delta (two real dwcpd processes on loopback, trusted, so LZ4): a VM-image
 *   -like value (bench/codec.ts vmImageLike) is `blob put --to` the other
 *   daemon (a full transfer), then the same image with `--rewrite` (1 %) of
 *   its 4 KiB blocks overwritten with random bytes (a delta against the
 *   cached baseline). Floors: the second sync's wire bytes (frames + chunk
 *   list) ≤ 3 % of the value, its time ≤ 10 % of the first's. "Sync time" is
 *   the transfer (offer to commit at the receiver, as the sender measures
 *   it); storing the file locally first ("ingest") is the same work for both
 *   and is reported beside it. The receiver's copy is read back and compared.
 *   `--repeat` rounds, each with fresh data and a fresh key, and the median
 *   ratios: on a shared machine one round's ratio moves with the load.
 * - cache (in this process): `--cache-regions` regions each sync
 *   `--cache-keys` keys over `--cache-rounds` rounds through one real
 *   BaselineCache (default capacity and TTL) and real manifests and delta
 *   plans: each round a region syncs ~80 % of the keys (a random subset),
 *   10 % of keys change between rounds, rounds are 30 s of simulated time.
 *   Floor: hit ratio ≥ 95 %.
 * - bulk: `--bulk-mb` of random bytes (nothing to compress or deduplicate,
 *   so this measures the transfer machinery) between the two daemons for
 *   each `--streams` count, against raw TCP on loopback (bench/transport.ts)
 *   moving as many bytes in 1 MiB writes, as a ratio (< 1: slower).
 *
 * Invariants: data comes from fixed seeds; everything the bench starts (two
 * daemons, their data dirs, the generated files) is gone when it returns,
 * and the daemons are killed if this process exits first (member-process.ts).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connectAdmin, type AdminClient } from '../src/admin/client.ts';
import type { BlobProgress, BlobPutResult, BlobSendResult } from '../src/admin/schema.ts';
import { BaselineCache } from '../src/blob/baseline-cache.ts';
import { chunkingForAverage } from '../src/blob/chunker.ts';
import { buildManifest, planDelta, type Manifest } from '../src/blob/manifest.ts';
import { DEFAULT_BLOB_SETTINGS } from '../src/blob/config.ts';
import { parseStat } from '../src/cloud/qemu/procfs.ts';
import { Prng, vmImageLike } from './codec.ts';
import { startDwcpCluster, type DwcpCluster } from './dwcp-cluster.ts';
import { rawTcp } from './transport.ts';
import { metricValue } from '../test/integration/harness.ts';
import { defineBench, FlagError, intFlag, machineFacts, median, positiveFlag, progress, renderTable, significant } from './run.ts';

const MIB = 1024 ** 2;
const execFileAsync = promisify(execFile);
const BLOCK = 4096;
const FLOORS = { wire: 0.03, time: 0.1, hitRatio: 0.95 };
/** The admin calls' idle deadline: a put sends progress every 250 ms, so only a stuck daemon waits this long. */
const CALL_IDLE_MS = 120_000;

export interface DeltaBenchOptions {
  sizeBytes: number;
  rewrite: number;
  /** Rounds of (full, delta) with fresh data each; medians are reported. */
  repeat: number;
  bulkBytes: number;
  streams: number[];
  cacheRegions: number;
  cacheKeys: number;
  cacheRounds: number;
  seed: number;
  workDir: string;
  /**
   * raw: the value is the image itself. qcow2: the image converted to a
   * fully allocated qcow2 (what a qemu guest's overlay is, and what a warm
   * migration sends), and the rewritten blocks written where that file maps
   * them, as a guest's in-place overwrite of allocated clusters changes the
   * file: the second sync is a warm migration's final delta, the first a
   * cold migration's full copy.
   */
  format: 'raw' | 'qcow2';
  /** When set, both daemons run under node's --cpu-prof, writing their profiles here when they stop. */
  profileDir?: string;
}

/** One sync as the bench reports it: the daemon's send figures plus the two durations it measures. */
type SyncFigures = Pick<BlobSendResult, 'kind' | 'raw_bytes_sent' | 'wire_bytes_sent' | 'manifest_bytes_sent' | 'reused_bytes' | 'codecs' | 'phase_seconds'> & {
  ingest_seconds: number;
  transfer_seconds: number;
};

export interface DeltaResult extends ReturnType<typeof machineFacts> {
  bench: 'delta';
  options: Record<string, unknown>;
  ratios: Record<string, string>;
  delta: {
    size_bytes: number;
    rewritten_blocks: number;
    rounds: DeltaRound[];
    /** Medians over the rounds. */
    wire_ratio: number;
    time_ratio: number;
    end_to_end_time_ratio: number;
    verified: boolean;
    meets_floor: { wire: boolean; time: boolean };
  };
  cache: { regions: number; keys: number; rounds: number; lookups: number; hits: number; misses: number; expiries: number; evictions: number; hit_ratio: number; bytes_saved: number; meets_floor: boolean };
  bulk: { bytes: number; tcp_mib_s: number; runs: BulkRun[]; best_streams: number };
  loadavg_after: number[];
}

interface BulkRun {
  streams: number;
  seconds: number;
  mib_s: number;
  ratio: number;
  attempts: number;
  /**
   * CPU (user + system, every thread) each daemon spent per MiB moved, from
   * the end of the sender's ingest to the put's answer: the load-independent
   * figure, since on a shared machine MiB/s moves with everyone else's work.
   */
  sender_cpu_ms_per_mib: number;
  receiver_cpu_ms_per_mib: number;
  /** Major (mark-compact) collections each daemon ran in the same span, and their main-thread ms (prom-client's nodejs_gc_duration_seconds). */
  sender_major_gcs: string;
  receiver_major_gcs: string;
}

/** A daemon's major GCs so far: count and seconds. */
async function majorGcs(metricsUrl: string): Promise<{ n: number; s: number }> {
  const text = await (await fetch(metricsUrl)).text();
  return { n: metricValue(text, 'nodejs_gc_duration_seconds_count', { kind: 'major' }) ?? 0, s: metricValue(text, 'nodejs_gc_duration_seconds_sum', { kind: 'major' }) ?? 0 };
}

interface DeltaRound {
  full: SyncFigures;
  delta: SyncFigures;
  /** (frames + chunk list) of the delta sync / value size; floor ≤ 0.03. */
  wire_ratio: number;
  /** delta transfer seconds / full transfer seconds; floor ≤ 0.1. */
  time_ratio: number;
  /** The same with each side's ingest included. */
  end_to_end_time_ratio: number;
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function randomBytes(size: number, seed: number): Uint8Array {
  const rng = new Prng(seed);
  const out = new Uint8Array(size);
  const words = new Uint32Array(out.buffer, 0, Math.floor(size / 4));
  for (let i = 0; i < words.length; i++) words[i] = rng.next();
  for (let i = words.length * 4; i < size; i++) out[i] = rng.below(256);
  return out;
}

/** Overwrites `fraction` of the 4 KiB blocks (distinct, chosen at random) with random bytes; returns how many. */
export function rewriteBlocks(image: Uint8Array, fraction: number, seed: number): number {
  return pickBlocks(image.byteLength, fraction, seed, (b, bytes) => image.set(bytes, b * BLOCK));
}

/** Chooses `fraction` of the 4 KiB blocks of `size` bytes (distinct, at random) and hands each with fresh random bytes to `write`. */
function pickBlocks(size: number, fraction: number, seed: number, write: (block: number, bytes: Uint8Array) => void): number {
  const rng = new Prng(seed);
  const blocks = Math.floor(size / BLOCK);
  const picked = new Set<number>();
  const want = Math.min(blocks, Math.round(blocks * fraction));
  while (picked.size < want) picked.add(rng.below(blocks));
  for (const b of picked) write(b, randomBytes(BLOCK, rng.next()));
  return picked.size;
}

/** One extent of `qemu-img map --output=json`: guest bytes [start, start + length) live at host `offset` when `data`. */
interface MapExtent {
  start: number;
  length: number;
  data: boolean;
  offset?: number;
}

async function qemuImg(args: string[]): Promise<string> {
  const { stdout } = await execFileAsync('qemu-img', args, { maxBuffer: 256 * MIB });
  return stdout;
}

/**
 * Writes `raw` as a fully allocated qcow2 at `v1`, then a copy at `v2` in
 * which `fraction` of the guest's 4 KiB blocks hold new random bytes at the
 * host offsets the qcow2 maps them to (an in-place overwrite: the layout
 * and metadata stay, as when a guest rewrites clusters it had written).
 */
async function qcow2Versions(raw: Uint8Array, dir: string, fraction: number, seed: number): Promise<{ v1: string; v2: string; rewritten: number; v2Hash: string; size: number }> {
  const rawFile = path.join(dir, 'raw.img');
  const v1 = path.join(dir, 'v1.qcow2');
  const v2 = path.join(dir, 'v2.qcow2');
  await fs.writeFile(rawFile, raw);
  // -S 0: no sparse detection, every cluster allocated, so every rewritten block has a place in the file.
  await qemuImg(['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-S', '0', rawFile, v1]);
  await fs.rm(rawFile, { force: true });
  const extents = JSON.parse(await qemuImg(['map', '--output=json', '-f', 'qcow2', v1])) as MapExtent[];
  await fs.copyFile(v1, v2);
  const fh = await fs.open(v2, 'r+');
  const writes: Promise<unknown>[] = [];
  let rewritten: number;
  try {
    rewritten = pickBlocks(raw.byteLength, fraction, seed, (block, bytes) => {
      const guest = block * BLOCK;
      const e = extents.find((x) => guest >= x.start && guest < x.start + x.length);
      if (e === undefined || !e.data || e.offset === undefined) throw new Error(`delta bench: qemu-img map shows guest offset ${guest} unallocated in a -S 0 image`);
      writes.push(fh.write(bytes, 0, BLOCK, e.offset + (guest - e.start)));
    });
    await Promise.all(writes);
    await fh.sync();
  } finally {
    await fh.close();
  }
  // Hashed as a stream: the image is already in memory once, the file need not be a second time.
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(v2)) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).byteLength;
  }
  return { v1, v2, rewritten, v2Hash: hash.digest('hex'), size };
}

function figures(r: BlobPutResult): SyncFigures {
  const s = r.sent;
  if (s === null) throw new Error('delta bench: a put with --to returned no transfer');
  return {
    ingest_seconds: significant(r.ingest_seconds),
    transfer_seconds: significant(s.seconds),
    kind: s.kind,
    raw_bytes_sent: s.raw_bytes_sent,
    wire_bytes_sent: s.wire_bytes_sent,
    manifest_bytes_sent: s.manifest_bytes_sent,
    reused_bytes: s.reused_bytes,
    codecs: s.codecs,
    phase_seconds: Object.fromEntries(Object.entries(s.phase_seconds).map(([k, v]) => [k, significant(v, 3)])),
  };
}

async function put(client: AdminClient, file: string, key: string, to: string, streams = 0, onProgress?: (p: BlobProgress) => void): Promise<BlobPutResult> {
  let last = 0;
  return client.blob.put({ path: file, key, to, streams }, (p) => {
    onProgress?.(p);
    const now = Date.now();
    if (now - last < 2000) return;
    last = now;
    progress(`    ${p.phase}: ${significant((100 * p.bytes_done) / Math.max(1, p.bytes_total), 3)} %`);
  });
}

async function readBackHash(client: AdminClient, key: string): Promise<string> {
  const hash = createHash('sha256');
  await client.blob.get(key, (bytes) => void hash.update(bytes));
  return hash.digest('hex');
}

/**
 * One round: a fresh image (seed + round) synced in full under a fresh key,
 * then its copy with `rewrite` of the blocks rewritten, synced as a delta;
 * the receiver's copy is read back and compared.
 */
async function deltaRound(ca: AdminClient, cb: AdminClient, to: string, opts: DeltaBenchOptions, dir: string, round: number): Promise<DeltaRound & { rewritten: number }> {
  const key = `vm/disk-${round}`;
  progress(`delta round ${round + 1}/${opts.repeat}: generating ${significant(opts.sizeBytes / MIB)} MiB of VM-image-like data and a copy with ${opts.rewrite * 100} % of its blocks rewritten`);
  const image = vmImageLike(opts.sizeBytes, opts.seed + round);
  let v1 = path.join(dir, 'v1.img');
  let v2 = path.join(dir, 'v2.img');
  let size = opts.sizeBytes;
  try {
    let rewritten: number;
    let v2Hash: string;
    if (opts.format === 'qcow2') {
      ({ v1, v2, rewritten, v2Hash, size } = await qcow2Versions(image, dir, opts.rewrite, opts.seed + 1000 + round));
      progress(`  as qcow2: ${significant(size / MIB)} MiB file, ${rewritten} guest blocks rewritten in place`);
    } else {
      await fs.writeFile(v1, image);
      rewritten = rewriteBlocks(image, opts.rewrite, opts.seed + 1000 + round);
      await fs.writeFile(v2, image);
      v2Hash = sha256(image);
    }
    progress(`  first version → ${to} (no baseline: full transfer)`);
    const full = figures(await put(ca, v1, key, to));
    progress(`  full: ${full.transfer_seconds} s (${JSON.stringify(full.phase_seconds)}), ${full.wire_bytes_sent + full.manifest_bytes_sent} bytes on the wire`);
    progress(`  second version → ${to} (against the cached baseline)`);
    const delta = figures(await put(ca, v2, key, to));
    progress(`  delta: ${delta.transfer_seconds} s (${JSON.stringify(delta.phase_seconds)}), ${delta.wire_bytes_sent + delta.manifest_bytes_sent} bytes on the wire`);
    if ((await readBackHash(cb, key)) !== v2Hash) throw new Error(`delta bench: ${to}'s copy of ${key} differs from the second version`);
    return {
      full,
      delta,
      rewritten,
      wire_ratio: significant((delta.wire_bytes_sent + delta.manifest_bytes_sent) / size, 3),
      time_ratio: significant(delta.transfer_seconds / full.transfer_seconds, 3),
      end_to_end_time_ratio: significant((delta.ingest_seconds + delta.transfer_seconds) / (full.ingest_seconds + full.transfer_seconds), 3),
    };
  } finally {
    await fs.rm(v1, { force: true });
    await fs.rm(v2, { force: true });
  }
}

async function deltaPart(cluster: DwcpCluster, opts: DeltaBenchOptions, dir: string): Promise<DeltaResult['delta']> {
  const [a, b] = cluster.members;
  if (a === undefined || b === undefined) throw new Error('delta bench: the cluster has fewer than two members');
  const ca = connectAdmin(a.adminSocket, { timeoutMs: CALL_IDLE_MS });
  const cb = connectAdmin(b.adminSocket, { timeoutMs: CALL_IDLE_MS });
  try {
    const rounds: (DeltaRound & { rewritten: number })[] = [];
    for (let round = 0; round < opts.repeat; round++) rounds.push(await deltaRound(ca, cb, b.name, opts, dir, round));
    const wireRatio = median(rounds.map((r) => r.wire_ratio));
    const timeRatio = median(rounds.map((r) => r.time_ratio));
    return {
      size_bytes: opts.sizeBytes,
      rewritten_blocks: rounds[0]?.rewritten ?? 0,
      rounds: rounds.map(({ rewritten: _, ...r }) => r),
      wire_ratio: significant(wireRatio, 3),
      time_ratio: significant(timeRatio, 3),
      end_to_end_time_ratio: significant(median(rounds.map((r) => r.end_to_end_time_ratio)), 3),
      verified: true,
      meets_floor: { wire: wireRatio <= FLOORS.wire, time: timeRatio <= FLOORS.time },
    };
  } finally {
    ca.close();
    cb.close();
  }
}

/** Repeated syncs of many keys to several regions through one BaselineCache with real manifests and delta plans. */
export function cachePart(opts: Pick<DeltaBenchOptions, 'cacheRegions' | 'cacheKeys' | 'cacheRounds' | 'seed'>): DeltaResult['cache'] {
  const chunking = chunkingForAverage(1024);
  const rng = new Prng(opts.seed);
  const cache = new BaselineCache<Manifest>();
  const values = Array.from({ length: opts.cacheKeys }, (_, i) => vmImageLike(16 * 1024, opts.seed * 1000 + i));
  const manifests = values.map((v, i) => buildManifest(`key-${i}`, '0', v, chunking));
  /** What each region really holds, per key: the ground truth a hit must match. */
  const held = Array.from({ length: opts.cacheRegions }, () => new Map<number, string>());
  const ROUND_MS = 30_000;
  let now = 1_700_000_000_000;
  for (let round = 0; round < opts.cacheRounds; round++, now += ROUND_MS) {
    // Between rounds a tenth of the keys get a new version (one rewritten block).
    if (round > 0) {
      for (let i = 0; i < opts.cacheKeys; i++) {
        if (rng.below(10) !== 0) continue;
        const v = (values[i] as Uint8Array).slice();
        rewriteBlocks(v, 1 / 4, rng.next());
        values[i] = v;
        manifests[i] = buildManifest(`key-${i}`, String(round), v, chunking);
      }
    }
    for (let region = 0; region < opts.cacheRegions; region++) {
      for (let i = 0; i < opts.cacheKeys; i++) {
        if (rng.below(5) === 0) continue; // this region skips the key this round
        const mine = manifests[i] as Manifest;
        const base = cache.get(`region-${region}`, `key-${i}`, now);
        if (base !== undefined && base.hash !== held[region]?.get(i)) throw new Error(`cache bench: a hit named a baseline region-${region} does not hold`);
        const plan = planDelta(mine, base);
        cache.recordSaved(plan.reusedBytes);
        held[region]?.set(i, mine.hash);
        cache.set(`region-${region}`, `key-${i}`, mine, now);
      }
    }
  }
  const s = cache.stats();
  const lookups = s.hits + s.misses;
  return {
    regions: opts.cacheRegions,
    keys: opts.cacheKeys,
    rounds: opts.cacheRounds,
    lookups,
    hits: s.hits,
    misses: s.misses,
    expiries: s.expiries,
    evictions: s.evictions,
    hit_ratio: significant(s.hits / Math.max(1, lookups), 4),
    bytes_saved: s.bytesSaved,
    meets_floor: s.hits / Math.max(1, lookups) >= FLOORS.hitRatio,
  };
}

async function bulkPart(cluster: DwcpCluster, opts: DeltaBenchOptions, dir: string): Promise<DeltaResult['bulk']> {
  const [a, b] = cluster.members;
  if (a === undefined || b === undefined) throw new Error('delta bench: the cluster has fewer than two members');
  progress(`bulk: raw TCP on loopback, ${significant(opts.bulkBytes / MIB)} MiB in 1 MiB writes`);
  const tcp = rawTcp();
  const messages = Math.max(1, Math.floor(opts.bulkBytes / MIB));
  await tcp.throughput(MIB, Math.min(messages, 64));
  const tcpSeconds = await tcp.throughput(MIB, messages);
  const tcpMibS = (messages * MIB) / MIB / tcpSeconds;
  const ca = connectAdmin(a.adminSocket, { timeoutMs: CALL_IDLE_MS });
  const runs: BulkRun[] = [];
  const cpuSeconds = (pid: number): number => parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8')).cpuSeconds;
  try {
    for (const [i, streams] of opts.streams.entries()) {
      const file = path.join(dir, `bulk-${i}.bin`);
      // Fresh bytes and key each run: the receiver must hold nothing of it yet.
      await fs.writeFile(file, randomBytes(opts.bulkBytes, opts.seed * 7919 + i));
      progress(`bulk: ${streams} stream${streams === 1 ? '' : 's'} ${a.name} → ${b.name}`);
      // CPU at the last progress of the ingest (its final figures are sent the moment the transfer starts).
      let atTransfer: { sender: number; receiver: number; us: bigint } | undefined;
      let gcAtTransfer: Promise<[{ n: number; s: number }, { n: number; s: number }]> | undefined;
      let ingesting = true;
      const r = await put(ca, file, `bulk/${i}`, b.name, streams, (p) => {
        ingesting &&= p.phase === 'ingest';
        if (!ingesting) return;
        atTransfer = { sender: cpuSeconds(a.pid), receiver: cpuSeconds(b.pid), us: process.hrtime.bigint() / 1000n };
        // Only the last progress's fetch is read: an earlier one that fails must not end the bench as an unhandled rejection.
        gcAtTransfer?.catch(() => undefined);
        gcAtTransfer = Promise.all([majorGcs(a.metricsUrl), majorGcs(b.metricsUrl)]);
      });
      const gcBefore = await gcAtTransfer;
      const gcAfter = await Promise.all([majorGcs(a.metricsUrl), majorGcs(b.metricsUrl)]);
      const gcs = (k: 0 | 1): string => `${gcAfter[k].n - (gcBefore?.[k].n ?? NaN)} / ${Math.round((gcAfter[k].s - (gcBefore?.[k].s ?? NaN)) * 1000)} ms`;
      // The daemons' profiles count time on the same monotonic clock: this window picks the transfer out of them.
      if (opts.profileDir !== undefined) progress(`  transfer window for the profiles: ${atTransfer?.us} to ${process.hrtime.bigint() / 1000n} µs (CLOCK_MONOTONIC)`);
      const msPerMib = (before: number | undefined, pid: number): number => significant(((cpuSeconds(pid) - (before ?? NaN)) * 1000) / (opts.bulkBytes / MIB), 3);
      const cpu = { sender: msPerMib(atTransfer?.sender, a.pid), receiver: msPerMib(atTransfer?.receiver, b.pid) };
      await fs.rm(file, { force: true });
      const seconds = r.sent?.seconds ?? NaN;
      const mibS = opts.bulkBytes / MIB / seconds;
      const attempts = r.sent?.attempts ?? 0;
      runs.push({ streams, seconds: significant(seconds), mib_s: significant(mibS), ratio: significant(mibS / tcpMibS, 3), attempts, sender_cpu_ms_per_mib: cpu.sender, receiver_cpu_ms_per_mib: cpu.receiver, sender_major_gcs: gcs(0), receiver_major_gcs: gcs(1) });
      progress(`  ${significant(mibS)} MiB/s (tcp ${significant(tcpMibS)} MiB/s), CPU ms per MiB: sender ${cpu.sender}, receiver ${cpu.receiver}; major GCs: sender ${gcs(0)}, receiver ${gcs(1)}${attempts > 1 ? `; ${attempts} attempts (the connection stalled or dropped)` : ''}`);
    }
  } finally {
    ca.close();
  }
  const best = runs.reduce((x, y) => (y.mib_s > x.mib_s ? y : x), runs[0] as BulkRun);
  return { bytes: opts.bulkBytes, tcp_mib_s: significant(tcpMibS), runs, best_streams: best.streams };
}

function report(r: DeltaResult): string {
  const d = r.delta;
  const row = (name: string, f: SyncFigures) => [
    name,
    f.kind,
    String(f.ingest_seconds),
    String(f.transfer_seconds),
    String(f.raw_bytes_sent),
    String(f.wire_bytes_sent + f.manifest_bytes_sent),
    Object.keys(f.codecs).join('+') || '-',
  ];
  return [
    `delta: ${significant(d.size_bytes / MIB)} MiB VM-image-like value, ${d.rewritten_blocks} of its 4 KiB blocks rewritten, two dwcpd on loopback; ${r.node}, ${r.cpus} cpus, load ${r.loadavg.join(' ')} -> ${r.loadavg_after.join(' ')}`,
    renderTable(
      ['round', 'sync', 'kind', 'ingest s', 'transfer s', 'chunk bytes', 'wire bytes', 'codecs', 'wire ratio', 'time ratio'],
      d.rounds.flatMap((r, i) => [
        [String(i + 1), ...row('first', r.full), '', ''],
        [String(i + 1), ...row('second', r.delta), String(r.wire_ratio), String(r.time_ratio)],
      ]),
    ),
    `median of ${d.rounds.length}: wire ratio ${d.wire_ratio} (floor ≤ ${FLOORS.wire}: ${d.meets_floor.wire ? 'met' : 'NOT met'}); time ratio ${d.time_ratio} (floor ≤ ${FLOORS.time}: ${d.meets_floor.time ? 'met' : 'NOT met'}); with ingest ${d.end_to_end_time_ratio}; receivers' copies verified: ${d.verified}`,
    '',
    `cache: ${r.cache.regions} regions × ${r.cache.keys} keys × ${r.cache.rounds} rounds: ${r.cache.hits} hits / ${r.cache.lookups} lookups = ${r.cache.hit_ratio} (floor ≥ ${FLOORS.hitRatio}: ${r.cache.meets_floor ? 'met' : 'NOT met'}); ${r.cache.expiries} expiries, ${r.cache.evictions} evictions`,
    '',
    `bulk: ${significant(r.bulk.bytes / MIB)} MiB of random bytes, raw TCP ${r.bulk.tcp_mib_s} MiB/s`,
    renderTable(
      ['streams', 'seconds', 'MiB/s', 'ratio to tcp', 'attempts', 'CPU ms/MiB sender · receiver', 'major GCs sender · receiver'],
      r.bulk.runs.map((x) => [String(x.streams), String(x.seconds), String(x.mib_s), String(x.ratio), String(x.attempts), `${x.sender_cpu_ms_per_mib} · ${x.receiver_cpu_ms_per_mib}`, `${x.sender_major_gcs} · ${x.receiver_major_gcs}`]),
    ),
    `best: ${r.bulk.best_streams} streams (the sender picks by bandwidth × RTT, at most blob.maxStreams = ${DEFAULT_BLOB_SETTINGS.maxStreams})`,
  ].join('\n');
}

export async function runDeltaBench(opts: DeltaBenchOptions): Promise<DeltaResult> {
  const facts = machineFacts();
  progress(`cache: ${opts.cacheRegions} regions × ${opts.cacheKeys} keys × ${opts.cacheRounds} rounds`);
  const cache = cachePart(opts);
  progress(`  hit ratio ${cache.hit_ratio}`);
  const dir = await fs.mkdtemp(path.join(opts.workDir, 'dwcp-bench-delta-'));
  let cluster: DwcpCluster | undefined;
  try {
    progress('starting two dwcpd on loopback');
    // Two members on one machine are a datacenter link; a loaded machine's loopback RTT must not make it hybrid.
    const nodeArgs = opts.profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${opts.profileDir}`];
    cluster = await startDwcpCluster({ members: 2, workDir: opts.workDir, readyTimeoutMs: 60_000, nodeArgs, config: { network: { datacenterMaxRttMs: 1000, internetMinRttMs: 5000 } } });
    const delta = await deltaPart(cluster, opts, dir);
    const bulk = await bulkPart(cluster, opts, dir);
    const result: DeltaResult = {
      bench: 'delta',
      ...facts,
      options: {
        size_bytes: opts.sizeBytes,
        rewrite: opts.rewrite,
        repeat: opts.repeat,
        bulk_bytes: opts.bulkBytes,
        streams: opts.streams,
        cache_regions: opts.cacheRegions,
        cache_keys: opts.cacheKeys,
        cache_rounds: opts.cacheRounds,
        seed: opts.seed,
        format: opts.format,
      },
      ratios: {
        delta_wire: `delta.wire_ratio = second sync's (frame + chunk list) bytes / value size; the floor is ≤ ${FLOORS.wire}`,
        delta_time: `delta.time_ratio = second sync's transfer seconds / first sync's; the floor is ≤ ${FLOORS.time}`,
        cache: `cache.hit_ratio = hits / lookups; the floor is ≥ ${FLOORS.hitRatio}`,
        bulk: 'bulk.runs[].ratio = value MiB/s between two daemons / raw TCP MiB/s on loopback; below 1 means slower',
      },
      delta,
      cache,
      bulk,
      loadavg_after: machineFacts().loadavg,
    };
    progress(`\n${report(result)}`);
    return result;
  } finally {
    await cluster?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

function formatFlag(raw: string | undefined): DeltaBenchOptions['format'] {
  if (raw === undefined || raw === 'raw' || raw === 'qcow2') return raw ?? 'raw';
  throw new FlagError('format', `must be raw or qcow2, got "${raw}"`);
}

export const deltaBench = defineBench<DeltaBenchOptions>({
  flags: {
    'size-mb': { default: '1024', description: 'MiB of the VM-image-like value synced twice' },
    rewrite: { default: '0.01', description: 'share of 4 KiB blocks rewritten for the second version' },
    repeat: { default: '3', description: 'rounds of (full, delta) sync with fresh data each; medians are reported' },
    'bulk-mb': { default: '1024', description: 'MiB of random bytes per bulk run' },
    streams: { default: '1,2,4,8', description: 'parallel streams per bulk run, comma-separated' },
    'cache-regions': { default: '5', description: 'regions of the cache workload' },
    'cache-keys': { default: '500', description: 'keys of the cache workload' },
    'cache-rounds': { default: '40', description: 'rounds of syncs in the cache workload' },
    seed: { default: '1', description: 'seed of the generated data' },
    'work-dir': { default: os.tmpdir(), description: 'where the daemons and generated files live (needs ~4 × size-mb + bulk-mb × streams free)' },
    'profile-dir': { default: '', description: 'when set, run both daemons under --cpu-prof, writing their profiles here when they stop' },
    format: { default: 'raw', description: "raw: the image is the value; qcow2: a fully allocated qcow2 of it, blocks rewritten in place (a warm migration's final delta against its cold full copy)" },
  },
  parse: (flags) => {
    const rewrite = positiveFlag(flags, 'rewrite');
    if (rewrite > 1) throw new FlagError('rewrite', `must be at most 1, got "${flags.rewrite}"`);
    const streams = (flags.streams ?? '').split(',').map((t) => Number(t.trim()));
    for (const s of streams) if (!Number.isInteger(s) || s < 1 || s > 16) throw new FlagError('streams', `stream counts must be whole numbers from 1 to 16, got "${flags.streams}"`);
    return {
      sizeBytes: Math.max(64 * 1024, Math.floor((positiveFlag(flags, 'size-mb') * MIB) / BLOCK) * BLOCK),
      rewrite,
      repeat: intFlag(flags, 'repeat'),
      bulkBytes: Math.max(64 * 1024, Math.floor(positiveFlag(flags, 'bulk-mb') * MIB)),
      streams,
      cacheRegions: intFlag(flags, 'cache-regions'),
      cacheKeys: intFlag(flags, 'cache-keys'),
      cacheRounds: intFlag(flags, 'cache-rounds'),
      seed: intFlag(flags, 'seed', 0),
      workDir: flags['work-dir'] ?? os.tmpdir(),
      format: formatFlag(flags.format),
      ...(flags['profile-dir'] === undefined || flags['profile-dir'] === '' ? {} : { profileDir: path.resolve(flags['profile-dir']) }),
    };
  },
  run: runDeltaBench,
});
