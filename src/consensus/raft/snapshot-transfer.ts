/**
 * InstallSnapshot in chunks: the leader's slicing and the follower's assembly.
 *
 * The protocol is stop-and-wait: the leader sends the chunk at the offset the
 * follower last reported; the follower accepts only the chunk at exactly the
 * offset it expects and always answers with that offset, so drops,
 * duplicates and reordering cost a resend but never corrupt the assembly.
 * A chunk for a different snapshot (the leader compacted again, or a new
 * leader) at offset 0 restarts the assembly.
 *
 * Invariants: the follower never buffers more than maxSnapshotBytes; an
 * assembled snapshot has exactly totalBytes bytes.
 */
import type { Snapshot, SnapshotChunk, SnapshotMeta } from './types.ts';
import { RaftInputError } from './types.ts';

export function snapshotChunkAt(snapshot: Snapshot, offset: number, chunkBytes: number): {
  meta: SnapshotMeta;
  offset: number;
  totalBytes: number;
  data: Uint8Array;
} {
  const { data } = snapshot;
  const start = Math.min(offset, data.byteLength);
  return {
    meta: snapshot.meta,
    offset: start,
    totalBytes: data.byteLength,
    data: data.subarray(start, Math.min(data.byteLength, start + chunkBytes)),
  };
}

function sameSnapshot(a: SnapshotMeta, b: SnapshotMeta): boolean {
  return a.index === b.index && a.term === b.term;
}

export class SnapshotAssembler {
  readonly #maxBytes: number;
  #meta: SnapshotMeta | null = null;
  #totalBytes = 0;
  #chunks: Uint8Array[] = [];
  #received = 0;

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  /**
   * Take one chunk; returns the offset to ask for next and, when the last
   * chunk arrived, the whole snapshot. Throws RaftInputError on a chunk no
   * correct leader sends (sizes that disagree or exceed the limit).
   */
  accept(chunk: SnapshotChunk): { nextOffset: number; snapshot: Snapshot | null } {
    if (chunk.totalBytes > this.#maxBytes) {
      throw new RaftInputError(
        `snapshot_chunk from ${chunk.from}: totalBytes ${chunk.totalBytes} exceeds maxSnapshotBytes ${this.#maxBytes}`,
      );
    }
    if (chunk.offset + chunk.data.length > chunk.totalBytes) {
      throw new RaftInputError(
        `snapshot_chunk from ${chunk.from}: offset ${chunk.offset} + ${chunk.data.length} bytes exceeds totalBytes ${chunk.totalBytes}`,
      );
    }
    const current = this.#meta;
    if (current === null || !sameSnapshot(current, chunk.meta) || this.#totalBytes !== chunk.totalBytes) {
      if (chunk.offset !== 0) return { nextOffset: 0, snapshot: null };
      this.#meta = chunk.meta;
      this.#totalBytes = chunk.totalBytes;
      this.#chunks = [];
      this.#received = 0;
    }
    if (chunk.offset === this.#received && (chunk.data.length > 0 || chunk.totalBytes === 0)) {
      this.#chunks.push(chunk.data.slice());
      this.#received += chunk.data.length;
    }
    if (this.#received < this.#totalBytes || this.#meta === null) {
      return { nextOffset: this.#received, snapshot: null };
    }
    const data = new Uint8Array(this.#totalBytes);
    let at = 0;
    for (const part of this.#chunks) {
      data.set(part, at);
      at += part.length;
    }
    const snapshot = { meta: this.#meta, data };
    this.reset();
    return { nextOffset: this.#totalBytes, snapshot };
  }

  reset(): void {
    this.#meta = null;
    this.#totalBytes = 0;
    this.#chunks = [];
    this.#received = 0;
  }
}
