/**
 * KvStateMachine: the deterministic, etcd-like register store that both
 * consensus logs replicate (Raft, and PBFT when untrusted members take part).
 * A log entry's data is an encoded KvCommand
 * (command.ts); apply(index, data) executes it and returns its KvResult.
 *
 * Semantics:
 * - Every key has a revision (log index of its last modification) and a
 *   createRevision (index of the write that created it). A write's result
 *   reports the key's previous revisions (`prev`), never its value, so a
 *   session's remembered result stays small.
 * - put creates or overwrites; cas writes only if the key's revision equals
 *   expectedRevision (0: the key must not exist), else fails with
 *   cas_mismatch and the current revision; deleting a missing key succeeds
 *   with deleted: false. A write that would take the state past
 *   limits.maxStateBytes fails with quota_exceeded; deletes always pass.
 * - At-most-once writes: each client has a session holding its highest
 *   applied seq and that write's result (failures included). A write with
 *   that seq gets the stored result again without re-applying; a lower seq
 *   gets stale_request. Reads (get, range) neither consult nor update
 *   sessions: re-running a read is harmless. Beyond limits.maxSessions the
 *   session least recently touched (by log index) is evicted; a client whose
 *   session was evicted loses the guarantee for a retry still in flight.
 * - Empty data is the new leader's no-op; an entry that is not a valid
 *   command yields invalid_command. Neither changes anything but the
 *   applied index.
 *
 * Determinism: no clock, no randomness; keys are kept in UTF-8 byte order in
 * a block-sorted list (sorted-keys.ts: ranges, snapshots) and the sessions map in LRU order, which
 * is a function of the log alone because indices only grow (and restore
 * rebuilds it from the snapshot's lastIndex order). Given the same entries,
 * every replica returns the same results and writes the same snapshot bytes.
 *
 * apply() never throws for the content of an entry; it throws only when the
 * driver breaks the log order (an index not after the last applied one), for
 * continuing would apply an entry twice.
 */
import { Buffer } from 'node:buffer';
import type { KvCommand, KvEntry, KvEntryMeta, KvResult, KvWriteResult } from './command.ts';
import { KV_MAX_MESSAGE, KV_RANGE_MAX_BYTES, KV_RANGE_MAX_LIMIT, compareKeys, decodeKvCommand, kvEntryFootprint } from './command.ts';
import type { KvEntryList, KvLimits, KvSession, KvSnapshotInput } from './snapshot.ts';
import { decodeKvSnapshot, encodeKvSnapshot, kvSnapshotEntryBytes, kvSnapshotSource, KvSnapshotError, resolveKvLimits } from './snapshot.ts';
import type { SnapshotSource } from '../consensus/raft/types.ts';
import { DwcpError } from '../errors.ts';
import { FleetStateMachine, type FleetState } from '../fleet/state-machine.ts';
import { SortedKeys } from './sorted-keys.ts';
import { NO_SLAB, SLABBED_MAX_BYTES, ValueSlabs, valueView, type ValuePlace } from './value-slabs.ts';

export interface KvStats {
  readonly keys: number;
  /** Sum of kvEntryFootprint (key + value bytes + a fixed per-key overhead): what counts against maxStateBytes. */
  readonly bytes: number;
  readonly sessions: number;
  readonly appliedIndex: number;
}

export interface KvRange {
  readonly entries: KvEntry[];
  /** More keys match after the last entry; continue with `after` set to its key. */
  readonly more: boolean;
}

/**
 * A key's record: its revisions and where its value's bytes are (the
 * ValuePlace's fields, not a view: value-slabs.ts says why). A write
 * replaces the record; only a slab repack changes one, moving its value to
 * identical bytes elsewhere, so a snapshot that took records reads the values
 * they had.
 */
interface StoredValue extends ValuePlace {
  readonly revision: number;
  readonly createRevision: number;
  readonly footprint: number;
}

/** The state machine's own copy of a session, updated in place as the client writes. */
type MutableSession = { -readonly [K in keyof KvSession]: KvSession[K] };

type WriteCommand = Extract<KvCommand, { op: 'put' | 'delete' | 'cas' | 'fleet' }>;

/** A broken internal invariant: the state can no longer be trusted. */
export class KvInvariantError extends DwcpError<'internal'> {
  constructor(message: string) {
    super('internal', message);
  }
}

function invariant(condition: boolean, message: () => string): asserts condition {
  if (!condition) throw new KvInvariantError(message());
}

function metaOf(stored: StoredValue | undefined): KvEntryMeta | null {
  return stored === undefined ? null : { revision: stored.revision, createRevision: stored.createRevision };
}

function invalidCommand(err: unknown): KvResult {
  // A KvDecodeError's message names the field; the text is part of the replicated result, so it must not depend on the node.
  const text = err instanceof Error ? err.message : String(err);
  return { ok: false, reason: 'invalid_command', message: text.slice(0, KV_MAX_MESSAGE).toWellFormed() };
}

export class KvStateMachine {
  readonly limits: KvLimits;
  #values = new Map<string, StoredValue>();
  /** Holds the values' bytes (value-slabs.ts): many small values share a buffer. */
  readonly #slabs = new ValueSlabs();
  /** Every key of #values, in compareKeys order. */
  #keys = new SortedKeys();
  /** Iteration order is lastIndex order: touching a session moves it to the end. */
  #sessions = new Map<string, MutableSession>();
  #appliedIndex = 0;
  #bytes = 0;
  /** Sum of kvSnapshotEntryBytes over the entries: a snapshot is sized without a pass over the state. */
  #entriesBytes = 0;
  /**
   * One map per streamed snapshot still being read (snapshotSource): the
   * record each key had when it was taken, kept at the key's first write or
   * delete since, so the snapshot reads the state as of then while later
   * entries apply.
   */
  readonly #taken = new Set<Map<string, StoredValue>>();
  /**
   * The fleet's desired state (src/fleet/state-machine.ts), carried by the
   * same log: fleet commands are writes with sessions like put, so a retried
   * command gets its first answer. Its size is the fleet's own limits', not
   * the KV quota's: the control plane must not fail because user keys filled
   * the store.
   */
  #fleet = new FleetStateMachine();

  constructor(limits: Partial<KvLimits> = {}) {
    this.limits = resolveKvLimits(limits);
  }

  /** The fleet's desired state as of the applied index (read-only: change it only through fleet commands in the log). */
  get fleet(): FleetState {
    return this.#fleet;
  }

  get appliedIndex(): number {
    return this.#appliedIndex;
  }

  apply(index: number, data: Uint8Array): KvResult {
    if (!Number.isSafeInteger(index) || index <= this.#appliedIndex) {
      throw new RangeError(`kv apply: index ${index} is not after the applied index ${this.#appliedIndex} (entries apply once, in log order)`);
    }
    this.#appliedIndex = index;
    if (data.byteLength === 0) return { ok: true, op: 'noop', revision: index };
    let cmd: KvCommand;
    try {
      cmd = decodeKvCommand(data);
    } catch (err) {
      return invalidCommand(err);
    }
    switch (cmd.op) {
      case 'get':
        return { ok: true, op: 'get', revision: index, entry: this.get(cmd.key) };
      case 'range':
        return { ok: true, op: 'range', revision: index, ...this.range(cmd.prefix, cmd.limit, cmd.after) };
      default:
        return this.#applyWrite(index, cmd);
    }
  }

  /** A copy: callers may keep or change it without touching the replicated state. */
  get(key: string): KvEntry | null {
    const stored = this.#values.get(key);
    return stored === undefined ? null : { key, value: valueView(stored).slice(), revision: stored.revision, createRevision: stored.createRevision };
  }

  /**
   * Keys starting with `prefix` ('' for all) and after `after` (exclusive),
   * in UTF-8 byte order: at most `limit`, and no more than KV_RANGE_MAX_BYTES
   * of footprint unless a single entry is larger.
   */
  range(prefix: string, limit: number, after = ''): KvRange {
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > KV_RANGE_MAX_LIMIT) {
      throw new RangeError(`kv range: limit must be an integer from 1 to ${KV_RANGE_MAX_LIMIT}, got ${limit}`);
    }
    const entries: KvEntry[] = [];
    let bytes = 0;
    // Keys from `prefix` on and after `after`: whichever of the two starts later.
    const afterLater = after !== '' && compareKeys(after, prefix) >= 0;
    for (const key of this.#keys.from(afterLater ? after : prefix, afterLater)) {
      if (!key.startsWith(prefix)) break;
      const stored = this.#stored(key);
      if (entries.length === limit || (entries.length > 0 && bytes + stored.footprint > KV_RANGE_MAX_BYTES)) return { entries, more: true };
      bytes += stored.footprint;
      entries.push({ key, value: valueView(stored).slice(), revision: stored.revision, createRevision: stored.createRevision });
    }
    return { entries, more: false };
  }

  stats(): KvStats {
    return { keys: this.#keys.length, bytes: this.#bytes, sessions: this.#sessions.size, appliedIndex: this.#appliedIndex };
  }

  snapshot(): Uint8Array {
    return encodeKvSnapshot(this.#snapshotInput());
  }

  /**
   * The state as of now, encoded a piece at a time as its chunks are read,
   * however far the machine has moved on by then. Taking it costs a copy of
   * the key list and the encoding of the sessions and fleet, not a pass over
   * the entries (it is sized from the running count, #entriesBytes): the
   * record a key had is read from #taken if the key was written since, from
   * the live map otherwise. Records are replaced, and a slab repack moves a
   * record's value only to identical bytes (value-slabs.ts). Each entry is
   * checked as it is encoded. A source whose chunks are never read through
   * keeps its map of earlier records growing until the machine is dropped:
   * the driver writes each one at once.
   */
  snapshotSource(chunkBytes?: number): SnapshotSource {
    return kvSnapshotSource(this.#snapshotInput(), chunkBytes);
  }

  #snapshotInput(): KvSnapshotInput {
    const keys = this.#keys.toArray();
    const earlier = new Map<string, StoredValue>();
    this.#taken.add(earlier);
    let released = false;
    const entries: KvEntryList = {
      length: keys.length,
      encodedBytes: this.#entriesBytes,
      at: (i) => {
        if (released) throw new KvSnapshotError('entries read after the snapshot was released');
        const key = keys[i];
        if (key === undefined) return undefined;
        const stored = earlier.get(key) ?? this.#values.get(key);
        return stored === undefined ? undefined : { key, value: valueView(stored), revision: stored.revision, createRevision: stored.createRevision };
      },
      release: () => {
        released = true;
        this.#taken.delete(earlier);
      },
    };
    const sessions = [...this.#sessions.values()].sort((a, b) => a.lastIndex - b.lastIndex);
    return { appliedIndex: this.#appliedIndex, limits: this.limits, entries, sessions, fleet: this.#fleet.regions().length === 0 && this.#fleet.vms().length === 0 ? new Uint8Array(0) : this.#fleet.snapshot() };
  }

  /** `key`'s record is about to be replaced or dropped: every snapshot still being read keeps the one it was taken with. */
  #replacing(key: string, stored: StoredValue): void {
    for (const earlier of this.#taken) if (!earlier.has(key)) earlier.set(key, stored);
  }

  /** The entry's share of #entriesBytes. */
  static #encodedBytes(keyBytes: number, stored: StoredValue): number {
    return kvSnapshotEntryBytes(keyBytes, stored.length, stored.revision, stored.createRevision);
  }

  /** Throws KvSnapshotError naming what is wrong with `data`. */
  static restore(data: Uint8Array): KvStateMachine {
    const state = decodeKvSnapshot(data);
    const machine = new KvStateMachine(state.limits);
    machine.#appliedIndex = state.appliedIndex;
    for (const { key, value, revision, createRevision } of state.entries) {
      // A copy, so the state does not pin the whole snapshot buffer.
      const keyBytes = Buffer.byteLength(key, 'utf8');
      const stored = machine.#store(value, revision, createRevision, kvEntryFootprint(keyBytes, value.byteLength));
      machine.#values.set(key, stored);
      machine.#keys.append(key);
      machine.#bytes += stored.footprint;
      machine.#entriesBytes += KvStateMachine.#encodedBytes(keyBytes, stored);
    }
    for (const session of state.sessions) machine.#sessions.set(session.clientId, { ...session });
    if (state.fleet.byteLength > 0) {
      try {
        machine.#fleet = FleetStateMachine.restore(state.fleet);
      } catch (err) {
        throw new KvSnapshotError(err instanceof Error ? err.message : String(err));
      }
    }
    return machine;
  }

  #applyWrite(index: number, cmd: WriteCommand): KvResult {
    const session = this.#sessions.get(cmd.clientId);
    if (session !== undefined) {
      this.#sessions.delete(cmd.clientId);
      this.#sessions.set(cmd.clientId, session);
      session.lastIndex = index;
      if (cmd.seq < session.lastSeq) return { ok: false, reason: 'stale_request', lastSeq: session.lastSeq };
      if (cmd.seq === session.lastSeq) return session.result;
    }
    const result = this.#execute(index, cmd);
    if (session !== undefined) {
      session.lastSeq = cmd.seq;
      session.result = result;
      return result;
    }
    if (this.#sessions.size >= this.limits.maxSessions) this.#evictOldestSession(index);
    this.#sessions.set(cmd.clientId, { clientId: cmd.clientId, lastSeq: cmd.seq, lastIndex: index, result });
    return result;
  }

  #evictOldestSession(index: number): void {
    const oldest = this.#sessions.values().next();
    invariant(!oldest.done, () => 'kv sessions: evicting from an empty session table');
    invariant(oldest.value.lastIndex < index, () => `kv sessions: the oldest session was touched at ${oldest.value.lastIndex}, not before ${index}`);
    this.#sessions.delete(oldest.value.clientId);
  }

  #execute(index: number, cmd: WriteCommand): KvWriteResult {
    switch (cmd.op) {
      case 'put':
        return this.#write(index, 'put', cmd.key, cmd.value);
      case 'cas': {
        const currentRevision = this.#values.get(cmd.key)?.revision ?? 0;
        if (currentRevision !== cmd.expectedRevision) return { ok: false, reason: 'cas_mismatch', currentRevision };
        return this.#write(index, 'cas', cmd.key, cmd.value);
      }
      case 'fleet':
        return { ok: true, op: 'fleet', revision: index, result: this.#fleet.applyEntry(cmd.command) };
      case 'delete': {
        const prev = this.#values.get(cmd.key);
        if (prev !== undefined) {
          this.#replacing(cmd.key, prev);
          this.#values.delete(cmd.key);
          invariant(this.#keys.delete(cmd.key), () => `kv keys: "${cmd.key}" is stored but missing from the sorted key list`);
          this.#bytes -= prev.footprint;
          this.#entriesBytes -= KvStateMachine.#encodedBytes(Buffer.byteLength(cmd.key, 'utf8'), prev);
          this.#released(prev);
        }
        return { ok: true, op: 'delete', revision: index, deleted: prev !== undefined, prev: metaOf(prev) };
      }
    }
  }

  #write(index: number, op: 'put' | 'cas', key: string, value: Uint8Array): KvWriteResult {
    const prev = this.#values.get(key);
    const keyBytes = Buffer.byteLength(key, 'utf8');
    const footprint = kvEntryFootprint(keyBytes, value.byteLength);
    const bytes = this.#bytes - (prev?.footprint ?? 0) + footprint;
    if (bytes > this.limits.maxStateBytes) return { ok: false, reason: 'quota_exceeded', stateBytes: this.#bytes, limitBytes: this.limits.maxStateBytes };
    if (prev !== undefined) this.#replacing(key, prev);
    // A copy: a decoded value is a view of the log entry's buffer.
    const stored = this.#store(value, index, prev?.createRevision ?? index, footprint);
    this.#values.set(key, stored);
    this.#entriesBytes += KvStateMachine.#encodedBytes(keyBytes, stored) - (prev === undefined ? 0 : KvStateMachine.#encodedBytes(keyBytes, prev));
    if (prev === undefined) invariant(this.#keys.insert(key), () => `kv keys: "${key}" is new but already in the sorted key list`);
    else this.#released(prev);
    this.#bytes = bytes;
    return { ok: true, op, revision: index, prev: metaOf(prev) };
  }

  /** A record holding a copy of `value` in the slabs. */
  #store(value: Uint8Array, revision: number, createRevision: number, footprint: number): StoredValue {
    // Every field at once, in one order: one hidden class for all records.
    const stored: StoredValue = { slab: NO_SLAB, offset: 0, length: value.byteLength, revision, createRevision, footprint };
    this.#slabs.place(value, stored);
    return stored;
  }

  /** `stored` left the state; its slab space is reclaimed by a repack once the holes outweigh the live values. */
  #released(stored: StoredValue): void {
    this.#slabs.release(stored);
    if (!this.#slabs.repackDue) return;
    this.#slabs.restart();
    for (const s of this.#values.values()) {
      // A value above SLABBED_MAX_BYTES has an array of its own, not in a slab: nothing to move.
      // In place: the record then reads the same bytes from the new slab (see StoredValue).
      if (s.length <= SLABBED_MAX_BYTES) this.#slabs.place(valueView(s), s);
    }
  }

  #stored(key: string): StoredValue {
    const stored = this.#values.get(key);
    invariant(stored !== undefined, () => `kv keys: "${key}" is in the sorted key list but has no value`);
    return stored;
  }
}
