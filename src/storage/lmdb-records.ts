/**
 * The pieces every durable store of this daemon shares on LMDB: how an
 * environment is opened so that a commit promise means "on disk", the
 * checksummed record frame, and fixed-width keys that sort numerically.
 *
 * Invariants:
 * - An environment is opened without lmdb-js's overlappingSync: with it, a
 *   commit promise resolves once the data is visible but before the fsync, and
 *   consensus must not acknowledge what a power cut could take back.
 * - A record is `crc32 u32 | kind u8 | body`, big-endian, the CRC (zlib's
 *   CRC-32) over kind and body: damage anywhere in it, the kind included, fails
 *   the check. The body format is the store's business.
 * - u64Key(n) is 8 bytes big-endian, so LMDB's byte order is numeric order; a
 *   key of any other shape, or above 2^53, is not one of ours.
 */
import { mkdir } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { open } from 'lmdb';
import type { Database, RootDatabase } from 'lmdb';

export const RECORD_HEADER_BYTES = 5;
const TWO_POW_32 = 2 ** 32;

export interface EnvironmentOptions {
  /** Skip fsync (tests, throwaway nodes): a crash of the machine may then lose acknowledged writes. */
  readonly noSync?: boolean;
}

/** Creates `dir` if needed and opens the LMDB environment in it; values are raw bytes (records). */
export async function openEnvironment(dir: string, options: EnvironmentOptions = {}): Promise<RootDatabase<Buffer, string>> {
  await mkdir(dir, { recursive: true });
  return open<Buffer, string>(dir, { encoding: 'binary', overlappingSync: false, noSync: options.noSync === true });
}

/** A record buffer with its header filled in except the checksum, ready for `body` bytes after the header. */
export function recordBuffer(kind: number, bodyBytes: number): Buffer {
  const record = Buffer.allocUnsafe(RECORD_HEADER_BYTES + bodyBytes);
  record[4] = kind;
  return record;
}

/** Writes the checksum over record[4..] into record[0..4]; call it last. */
export function stampChecksum(record: Buffer): Buffer {
  record.writeUInt32BE(crc32(record.subarray(4)), 0);
  return record;
}

/** Why `raw` is not an intact record of one of `kinds`, or null if it is. */
export function recordHeaderProblem(raw: Buffer, kinds: readonly number[]): string | null {
  if (raw.length < RECORD_HEADER_BYTES) return `record is ${raw.length} bytes, shorter than its ${RECORD_HEADER_BYTES}-byte header`;
  const stored = raw.readUInt32BE(0);
  const computed = crc32(raw.subarray(4));
  if (stored !== computed) return `checksum mismatch (stored 0x${hex32(stored)}, computed 0x${hex32(computed)})`;
  if (!kinds.includes(raw[4] ?? -1)) return `record kind ${raw[4]}, expected ${kinds.join(' or ')}`;
  return null;
}

export function hex32(value: number): string {
  return value.toString(16).padStart(8, '0');
}

export function u64Key(value: number): Buffer {
  const key = Buffer.allocUnsafe(8);
  key.writeUInt32BE(Math.floor(value / TWO_POW_32), 0);
  key.writeUInt32BE(value >>> 0, 4);
  return key;
}

/** The number a u64Key encodes, or null for a key that is not one. */
export function u64FromKey(key: Buffer): number | null {
  if (key.length !== 8) return null;
  const high = key.readUInt32BE(0);
  if (high > 0x1fffff) return null;
  return high * TWO_POW_32 + key.readUInt32BE(4);
}

export function removeKeys<K extends Buffer | number | string>(db: Database<Buffer, K>, keys: Iterable<K>): void {
  // Collected first: deleting under a live cursor would move it.
  for (const key of [...keys]) db.removeSync(key);
}
