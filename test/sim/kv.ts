/**
 * The simulator's state machine: a tiny key-value register store driven by
 * committed entries. Commands are JSON; each carries the client and value so
 * the simulator can tell whose proposal an applied entry is. Probes (the
 * liveness check's own proposals) change nothing.
 *
 * Invariant: applied only moves forward, one index at a time, or jumps to a
 * snapshot's index on restore.
 */
import type { Entry } from '../../src/consensus/raft/types.ts';

export type Command =
  | { readonly op: 'put'; readonly key: string; readonly value: string; readonly client: number }
  | { readonly op: 'probe'; readonly n: number };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeCommand(command: Command): Uint8Array {
  return encoder.encode(JSON.stringify(command));
}

export function decodeCommand(data: Uint8Array): Command | null {
  if (data.length === 0) return null;
  return JSON.parse(decoder.decode(data)) as Command;
}

/** A stable description of an entry's content, for comparing entries across nodes. */
const digests = new WeakMap<Entry, string>();
export function entryDigest(entry: Entry): string {
  let digest = digests.get(entry);
  if (digest === undefined) {
    digest =
      entry.kind === 'normal'
        ? `n:${decoder.decode(entry.data)}`
        : `c:${entry.membership.voters.join(',')}|${entry.membership.learners.join(',')}`;
    digests.set(entry, digest);
  }
  return digest;
}

export class KvStore {
  readonly values = new Map<string, string>();
  applied: number;

  constructor(applied = 0) {
    this.applied = applied;
  }

  static restore(index: number, data: Uint8Array): KvStore {
    const store = new KvStore(index);
    if (data.length > 0) {
      for (const [k, v] of JSON.parse(decoder.decode(data)) as [string, string][]) store.values.set(k, v);
    }
    return store;
  }

  snapshot(): Uint8Array {
    return encoder.encode(JSON.stringify([...this.values].sort(([a], [b]) => (a < b ? -1 : 1))));
  }

  apply(entry: Entry): Command | null {
    if (entry.index !== this.applied + 1) {
      throw new Error(`state machine applies index ${entry.index} after ${this.applied}`);
    }
    this.applied = entry.index;
    if (entry.kind !== 'normal') return null;
    const command = decodeCommand(entry.data);
    if (command?.op === 'put') this.values.set(command.key, command.value);
    return command;
  }
}
