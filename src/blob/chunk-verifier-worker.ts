/**
 * The worker thread of ChunkVerifier (chunk-verifier.ts), and the one check
 * both use: a batch frame's CRC-32 when asked, then each chunk's SHA-256 in
 * turn, stopping at the first that does not match its name. As a worker it
 * checks each batch it is sent and hands the buffer back with the verdict;
 * it keeps no state between batches and imports nothing but node:crypto and
 * the checksum, so a thread costs little to start.
 */
import { hash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { frameChecksum } from '../codec/frame-checksum.ts';

/** Passed as workerData by ChunkVerifier: any other thread that imports this module (a test runner's worker) is left alone. */
export const VERIFIER_WORKER_MARK = 'dwcp-chunk-verifier';

const HASH_HEX = 64;

/** One batch to check: `total` bytes at the start of `buffer`, its chunks from `chunksAt` on. */
export interface VerifyRequest {
  id: number;
  buffer: ArrayBuffer;
  total: number;
  chunksAt: number;
  lengths: Uint32Array;
  /** The chunks' names, hex, one after another (one string crosses threads far cheaper than thousands). */
  hashes: string;
  /** When set, `buffer` holds a whole codec frame whose header declares this checksum. */
  checksum?: number;
}

/** Its verdict, with the buffer handed back. */
export interface Verdict {
  /** The frame's checksum as computed, when it differs from the declared one (no chunk was hashed then). */
  checksum: number | null;
  /** The first chunk that does not match its name (-1: none), and what it hashes to. */
  bad: number;
  actual: string;
}

export interface VerifyAnswer extends Verdict {
  id: number;
  buffer: ArrayBuffer;
}

export function checkBatch(bytes: Uint8Array, chunksAt: number, lengths: ArrayLike<number>, hashes: string, checksum: number | undefined): Verdict {
  if (checksum !== undefined) {
    const actual = frameChecksum(bytes, bytes.subarray(chunksAt));
    if (actual !== checksum) return { checksum: actual, bad: -1, actual: '' };
  }
  let at = chunksAt;
  for (let i = 0; i < lengths.length; i++) {
    const length = lengths[i] as number;
    // The same one-shot SHA-256 as manifest.ts's sha256Hex, which this module does not import to stay light.
    const actual = hash('sha256', bytes.subarray(at, at + length), 'hex');
    if (!hashes.startsWith(actual, i * HASH_HEX)) return { checksum: null, bad: i, actual };
    at += length;
  }
  return { checksum: null, bad: -1, actual: '' };
}

const port = parentPort;
// Imported by chunk-verifier.ts for checkBatch too; only the verifier's own worker answers requests.
if (port !== null && workerData === VERIFIER_WORKER_MARK) {
  port.on('message', (req: VerifyRequest) => {
    const verdict = checkBatch(new Uint8Array(req.buffer, 0, req.total), req.chunksAt, req.lengths, req.hashes, req.checksum);
    port.postMessage({ id: req.id, buffer: req.buffer, ...verdict } satisfies VerifyAnswer, [req.buffer]);
  });
}
