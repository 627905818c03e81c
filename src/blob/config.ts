/**
 * The `blob:` section of the daemon's configuration: large values (VM
 * images, snapshots, checkpoints) stored under <dataDir>/blobs and moved
 * between members over /dwcp/blob/1.0.0 (docs/blob.md).
 *
 * Invariants: every field has a default, so the section may be left out;
 * bounds keep a typo from turning into a 1-byte chunk or a 1000-stream
 * transfer. Chunking is derived from `chunkAvgBytes` alone (min = avg / 4,
 * max = avg × 4, sync/chunker.ts chunkingForAverage): members that sync a key must use the same value, since the
 * chunk boundaries and the value hash depend on it.
 */
import { z } from 'zod';

const KIB = 1024;
const MIB = 1024 * KIB;
const GIB = 1024 * MIB;

export const BlobBaselineCacheSchema = z.strictObject({
  /** Keys remembered per remote region (LRU). */
  capacity: z.number().int().min(1).max(10_000_000).default(1000),
  /** A remembered baseline is trusted this long after it was confirmed. */
  ttlMs: z.number().int().min(1).max(7 * 24 * 3_600_000).default(5 * 60 * 1000),
  /** Keep the cache in <dataDir>/blobs/baseline-cache.json across restarts. */
  persist: z.boolean().default(false),
});

export const BlobSchema = z.strictObject({
  /**
   * Most parallel libp2p streams one transfer is striped over. Each stream
   * moves at most its 4 MiB window per round trip, so the sender uses as many
   * as the link's measured bandwidth × RTT needs (BlobService.streamsFor), up
   * to this. On loopback one stream was fastest (bench/RESULTS.md, delta):
   * more add contention and queueing, not throughput.
   */
  maxStreams: z.number().int().min(1).max(16).default(8),
  /**
   * Average content-defined chunk size; a power of two works best (the chunker
   * rounds its masks to one). 4 KiB matches the block size of the disk images
   * this moves: a rewritten block then dirties ~6 KiB on average.
   */
  chunkAvgBytes: z.number().int().min(256).max(128 * KIB).default(4 * KIB),
  /** Raw bytes per compressed frame on the wire (several chunks each); also the unit of acknowledgement. */
  batchBytes: z.number().int().min(64 * KIB).max(4 * MIB).default(MIB),
  /** Largest value this node stores or accepts from a member. */
  maxValueBytes: z.number().int().min(1).max(2 ** 50).default(64 * GIB),
  /** zstd level on internet links (datacenter links use LZ4; hybrid links choose by measurement). */
  internetZstdLevel: z.number().int().min(1).max(22).default(9),
  /** A transfer whose connection drops is resumed from its last acknowledged batch up to this many times. */
  maxResumes: z.number().int().min(0).max(100).default(5),
  baselineCache: BlobBaselineCacheSchema.default(BlobBaselineCacheSchema.parse({})),
});

export type BlobSettings = z.infer<typeof BlobSchema>;

export const DEFAULT_BLOB_SETTINGS: BlobSettings = BlobSchema.parse({});
