/**
 * Durable PBFT storage: one LMDB environment holding what one replica must
 * not forget across a restart (types.ts PbftPersistedState: its view, its
 * stable checkpoint with proof and state, and the slot records of what it
 * accepted and voted for), written with the durability the Ready contract
 * asks for and read back whole at restart.
 *
 * Layout (sub-databases of the environment at `dir`):
 * - `slots`: key = seq as 8 bytes big-endian (LMDB's byte order is seq
 *   order), value = one slot record; key = those 8 bytes and 0x01 (right
 *   after its slot in key order), value = the slot's pre-prepare (kind 6),
 *   for slots written as kind 5 (one tree, not a table of its own: a second
 *   sub-database written in every transaction doubled the fsync time, see
 *   bench/RESULTS.md, pbft);
 * - `meta`: key "view" = the view state record, key "stable_checkpoint" = the
 *   stable checkpoint record; no other key.
 * Every value is a record of src/storage/lmdb-records.ts (`crc32 | kind |
 * body`) whose body is encodeCanonical() of the object: signed messages keep
 * exactly the bytes their signatures cover, and bytes stay bytes. A slot is
 * written as kind 4: a prepared or commit certificate whose pre-prepare is
 * the slot's own leaves it out (sharedSlot below), so a batch is stored once
 * per write, not up to three times; kind 1 (every copy in full, as written
 * before) still loads.
 *
 * Slots are now written as kind 5: the pre-prepare (its whole batch) is
 * written under its own key once, when the slot first holds it (or holds
 * another), and the slot record names it by digest; the slot's later writes
 * (prepared, committed) are a few hundred bytes of votes instead of the
 * batch again. A slot is written up to three times per batch on every
 * replica, so a replica writes ~60 % fewer bytes per batch (CPU per batch did
 * not move: it is ~0.4 ms per transaction and little per byte, bench
 * pbft-storage). Kind 4 still loads.
 *
 * Invariants:
 * - One persist() lands whole or not at all, in one LMDB transaction; calls
 *   in one event-loop turn or arriving during a commit share it (group
 *   commit), apply in call order, and each resolves only once it is synced.
 *   A persist() with nothing in it writes nothing but still resolves only
 *   after the persists called before it, so a driver that sends after each
 *   resolution never sends ahead of what an earlier Ready asked to keep.
 * - A stable checkpoint at seq s deletes every slot at or below s in the same
 *   transaction, and slots at or below s in the same delta are not written:
 *   the store holds at most the core's log window of slots (plus any a later
 *   delta re-wrote below s, which load() leaves out and the next checkpoint
 *   deletes).
 * - A kind-5 slot record and the pre-prepare it names are written in the
 *   same transaction, and the store writes a pre-prepare again whenever the
 *   slot's is another object than the last it wrote for that seq (by
 *   identity: messages are immutable), so the pre-prepare stored under a seq
 *   is always the one its latest slot record names; load() checks the digest.
 * - load() checks every record (checksum, canonical decoding, shape through
 *   validate.ts, the seq it was stored under) and refuses any key it does
 *   not know, and a stored pre-prepare whose slot is not stored. Unlike a
 *   Raft log there is no safe repair: a slot records votes this replica
 *   sent, and a replica that forgets one may contradict it, or leave a
 *   prepared request out of a view change, so damage anywhere throws
 *   PbftStorageCorruptionError.
 */
import type { Database, RootDatabase } from 'lmdb';
import { GroupCommit } from '../../storage/group-commit.ts';
import {
  openEnvironment,
  RECORD_HEADER_BYTES,
  recordBuffer,
  recordHeaderProblem,
  removeKeys,
  stampChecksum,
  u64FromKey,
  u64Key,
} from '../../storage/lmdb-records.ts';
import { decodeCanonical, encodeCanonical } from './encoding.ts';
import type { Canonical } from './encoding.ts';
import type { PbftMessage, PbftPersistedState, PrePrepare, PersistDelta, SlotRecord, StableCheckpoint, ViewState } from './types.ts';
import { PbftInputError } from './types.ts';
import { messageProblem } from './validate.ts';
import { DwcpError } from '../../errors.ts';

export interface PbftStorageTimings {
  /** Encoding the deltas plus putting their records into the transaction. */
  writeSeconds: number;
  /** Committing the transaction, fsync included, until its promise resolved. */
  syncSeconds: number;
  /** Record bytes written. */
  bytes: number;
}

export interface PbftStorageOptions {
  /** Called once per committed transaction. */
  onWrite?(timings: PbftStorageTimings): void;
}

/** A stored record that fails its checks; `record` names it (e.g. "slot 37", "view state"). */
export class PbftStorageCorruptionError extends DwcpError<'corrupt'> {
  readonly dir: string;
  readonly record: string;
  readonly problem: string;
  constructor(dir: string, record: string, problem: string) {
    super('corrupt', 
      `pbft storage ${dir}: ${record} is damaged (${problem}). The replica cannot vouch for the votes it cast, ` +
        'and unlike a Raft log tail nothing here is safe to drop. To rejoin, remove ' +
        `${dir}: the replica restarts empty and state transfer refetches the state; until it has caught up past ` +
        'the slots it voted on, count it as one of the f faulty members.',
    );
    this.dir = dir;
    this.record = record;
    this.problem = problem;
  }
}

/** Names of the stored layout, for tools and tests that inspect it without the decoder (slot keys: u64Key(seq), their pre-prepares: prePrepareKey(seq)). */
export const PBFT_STORAGE_LAYOUT = {
  slots: 'slots',
  meta: 'meta',
  viewKey: 'view',
  stableCheckpointKey: 'stable_checkpoint',
} as const;

const Kind = { slot: 1, view: 2, stableCheckpoint: 3, sharedSlot: 4, slotApart: 5, prePrepare: 6 } as const;
type Kind = (typeof Kind)[keyof typeof Kind];

/** Where the pre-prepare of a kind-5 slot record is stored, in the `slots` table (see the module comment). */
export function prePrepareKey(seq: number): Buffer {
  return Buffer.concat([u64Key(seq), PRE_PREPARE_SUFFIX]);
}

const PRE_PREPARE_SUFFIX = Buffer.from([1]);

/** Deeper than any record the core produces (a new-view inside the view state nests 10 deep). */
const MAX_RECORD_DEPTH = 24;

const FRESH_VIEW: ViewState = { view: 0, active: true, newView: null };

// ------------------------------------------------------------------ records

function encodeRecord(kind: Kind, value: object, what: string): Buffer {
  let body: Uint8Array;
  try {
    body = encodeCanonical(value as unknown as Canonical);
  } catch (error) {
    throw new PbftInputError(`pbft storage: ${what} cannot be stored: ${error instanceof Error ? error.message : String(error)}`);
  }
  const record = recordBuffer(kind, body.length);
  record.set(body, RECORD_HEADER_BYTES);
  return stampChecksum(record);
}

type Problem = string | null;
type Fields = { readonly [key: string]: Canonical | undefined };

function first(...checks: (() => Problem)[]): Problem {
  for (const check of checks) {
    const problem = check();
    if (problem !== null) return problem;
  }
  return null;
}

function isObject(v: Canonical | undefined): v is Fields {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

/** A field of an object; undefined for anything else, so checks can run after a shape check without re-testing. */
function get(v: Canonical | undefined, name: string): Canonical | undefined {
  return isObject(v) ? v[name] : undefined;
}

/** An object with exactly these fields: a record this store wrote has no others. */
function fieldsProblem(v: Canonical | undefined, field: string, names: readonly string[]): Problem {
  if (!isObject(v)) return `${field} must be an object`;
  const keys = Object.keys(v).sort();
  const expected = [...names].sort();
  if (keys.join() !== expected.join()) return `${field} has fields ${keys.join(', ')}; expected ${expected.join(', ')}`;
  return null;
}

function counterProblem(v: Canonical | undefined, field: string): Problem {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? null : `${field} must be a non-negative integer`;
}

function booleanProblem(v: Canonical | undefined, field: string): Problem {
  return typeof v === 'boolean' ? null : `${field} must be a boolean`;
}

/** A signed message of `type`, checked as deeply as one from the wire. */
function messageOfProblem(v: Canonical | undefined, field: string, type: PbftMessage['type']): Problem {
  if (!isObject(v)) return `${field} must be an object`;
  if (v['type'] !== type) return `${field}.type must be ${type}`;
  const problem = messageProblem(v as unknown as PbftMessage);
  return problem === null ? null : `${field}: ${problem}`;
}

function prePrepareProblem(v: Canonical | undefined, field: string, seq: number): Problem {
  return first(
    () => messageOfProblem(v, field, 'pre_prepare'),
    () => (get(v, 'seq') === seq ? null : `${field}.seq is not the slot's seq ${seq}`),
  );
}

function certificateProblem(v: Canonical | undefined, field: string, seq: number, votes: 'prepares' | 'commits'): Problem {
  if (v === null) return null;
  const vote = votes === 'prepares' ? 'prepare' : 'commit';
  return first(
    () => fieldsProblem(v, field, ['prePrepare', votes]),
    () => prePrepareProblem(get(v, 'prePrepare'), `${field}.prePrepare`, seq),
    () => {
      const list = get(v, votes);
      if (!Array.isArray(list)) return `${field}.${votes} must be a list`;
      for (let i = 0; i < list.length; i++) {
        const problem = messageOfProblem(list[i] as Canonical, `${field}.${votes}[${i}]`, vote);
        if (problem !== null) return problem;
      }
      return null;
    },
  );
}

function slotProblem(v: Canonical, seq: number): Problem {
  return first(
    () => fieldsProblem(v, 'slot', ['seq', 'view', 'prePrepare', 'sentPrepare', 'sentCommit', 'prepared', 'committed']),
    () => (get(v, 'seq') === seq ? null : `record holds seq ${JSON.stringify(get(v, 'seq'))}`),
    () => counterProblem(get(v, 'view'), 'view'),
    () => booleanProblem(get(v, 'sentPrepare'), 'sentPrepare'),
    () => booleanProblem(get(v, 'sentCommit'), 'sentCommit'),
    () => (get(v, 'prePrepare') === null ? null : prePrepareProblem(get(v, 'prePrepare'), 'prePrepare', seq)),
    () => certificateProblem(get(v, 'prepared'), 'prepared', seq, 'prepares'),
    () => certificateProblem(get(v, 'committed'), 'committed', seq, 'commits'),
  );
}

/**
 * A slot record as stored (kind sharedSlot): a certificate whose pre-prepare
 * is the slot's own (the same message: a replica's prepared and commit
 * certificates of the view it is in) leaves it out, so a batch is encoded
 * and written once per record, not up to three times. unshared() puts it
 * back before the shape checks; a kind-1 record (written before) holds
 * every pre-prepare in full and loads as it is.
 */
function sharedSlot(slot: SlotRecord): object {
  const pp = slot.prePrepare;
  const share = <C extends { readonly prePrepare: PrePrepare }>(c: C | null): object | null => {
    if (c === null || pp === null || c.prePrepare !== pp) return c;
    const { prePrepare: _same, ...rest } = c;
    return rest;
  };
  return { ...slot, prepared: share(slot.prepared), committed: share(slot.committed) };
}

/**
 * A slot record as stored now (kind slotApart): sharedSlot's, with the
 * pre-prepare itself replaced by its digest (it is stored apart, see the
 * module comment).
 */
function apartSlot(slot: SlotRecord): object {
  return { ...sharedSlot(slot), prePrepare: slot.prePrepare === null ? null : slot.prePrepare.digest };
}

function unshared(v: Canonical): Canonical {
  if (!isObject(v)) return v;
  const pp = v['prePrepare'];
  const fill = (c: Canonical | undefined): Canonical | undefined =>
    isObject(c) && c['prePrepare'] === undefined && pp !== undefined ? { ...c, prePrepare: pp } : c;
  return { ...v, prepared: fill(v['prepared']), committed: fill(v['committed']) };
}

function viewProblem(v: Canonical): Problem {
  return first(
    () => fieldsProblem(v, 'view state', ['view', 'active', 'newView']),
    () => counterProblem(get(v, 'view'), 'view'),
    () => booleanProblem(get(v, 'active'), 'active'),
    () => (get(v, 'newView') === null ? null : messageOfProblem(get(v, 'newView'), 'newView', 'new_view')),
  );
}

function stableCheckpointProblem(v: Canonical): Problem {
  return first(
    () => fieldsProblem(v, 'stable checkpoint', ['seq', 'digest', 'proof', 'state']),
    () => fieldsProblem(get(v, 'state'), 'state', ['snapshot', 'clients']),
    () => {
      // A stable checkpoint is a state message's content without the entries: one deep check covers the
      // reference, the proof's checkpoint messages and the state with its reply cache.
      const asMessage = {
        type: 'state',
        from: 'storage',
        signature: new Uint8Array(0),
        checkpoint: { seq: get(v, 'seq'), digest: get(v, 'digest') },
        proof: get(v, 'proof'),
        state: get(v, 'state'),
        entries: [],
      };
      const problem = messageProblem(asMessage as unknown as PbftMessage);
      return problem === null ? null : problem.replace(/^state\.(checkpoint\.)?/, '');
    },
  );
}

// ------------------------------------------------------------------ storage

interface Tables {
  readonly slots: Database<Buffer, Buffer>;
  readonly meta: Database<Buffer, string>;
}

/** One persist(), encoded up front so the transaction callback cannot fail on bad input. */
interface EncodedDelta {
  readonly view: Buffer | null;
  readonly stableCheckpoint: { readonly seq: number; readonly record: Buffer } | null;
  readonly slots: readonly { readonly key: Buffer; readonly record: Buffer }[];
  /** Pre-prepares of those slots not stored yet (written before the slots). */
  readonly prePrepares: readonly { readonly key: Buffer; readonly record: Buffer }[];
  readonly bytes: number;
  readonly encodeSeconds: number;
}

function checkSeq(value: number, what: string, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new PbftInputError(`pbft storage: ${what} must be an integer >= ${min}, got ${String(value)}`);
  }
}

/**
 * null for a delta with nothing to store. `stored` maps a seq to the
 * pre-prepare last written for it; it is updated only once the whole delta
 * encoded (a delta that cannot be stored changes nothing).
 */
function encodeDelta(delta: PersistDelta, stored: Map<number, PrePrepare>): EncodedDelta | null {
  const started = performance.now();
  const view = delta.view === null ? null : encodeRecord(Kind.view, delta.view, 'view state');
  let stableCheckpoint: EncodedDelta['stableCheckpoint'] = null;
  if (delta.stableCheckpoint !== null) {
    checkSeq(delta.stableCheckpoint.seq, 'stable checkpoint seq', 1);
    const record = encodeRecord(Kind.stableCheckpoint, delta.stableCheckpoint, `stable checkpoint ${delta.stableCheckpoint.seq}`);
    stableCheckpoint = { seq: delta.stableCheckpoint.seq, record };
  }
  const below = stableCheckpoint?.seq ?? 0;
  const slots: { key: Buffer; record: Buffer }[] = [];
  const prePrepares: { key: Buffer; record: Buffer }[] = [];
  const written = new Map<number, PrePrepare>();
  for (const slot of delta.slots) {
    checkSeq(slot.seq, 'slot seq', 1);
    if (slot.seq <= below) continue;
    const key = u64Key(slot.seq);
    const pp = slot.prePrepare;
    if (pp !== null && (written.get(slot.seq) ?? stored.get(slot.seq)) !== pp) {
      prePrepares.push({ key: prePrepareKey(slot.seq), record: encodeRecord(Kind.prePrepare, pp, `pre-prepare of slot ${slot.seq}`) });
      written.set(slot.seq, pp);
    }
    slots.push({ key, record: encodeRecord(Kind.slotApart, apartSlot(slot), `slot ${slot.seq}`) });
  }
  if (view === null && stableCheckpoint === null && slots.length === 0) return null;
  if (stableCheckpoint !== null) for (const seq of [...stored.keys()]) if (seq <= stableCheckpoint.seq) stored.delete(seq);
  for (const [seq, pp] of written) stored.set(seq, pp);
  let bytes = (view?.length ?? 0) + (stableCheckpoint?.record.length ?? 0);
  for (const slot of slots) bytes += slot.record.length;
  for (const pp of prePrepares) bytes += pp.record.length;
  return { view, stableCheckpoint, slots, prePrepares, bytes, encodeSeconds: (performance.now() - started) / 1000 };
}

function applyDelta(tables: Tables, delta: EncodedDelta): void {
  if (delta.view !== null) tables.meta.putSync(PBFT_STORAGE_LAYOUT.viewKey, delta.view);
  if (delta.stableCheckpoint !== null) {
    tables.meta.putSync(PBFT_STORAGE_LAYOUT.stableCheckpointKey, delta.stableCheckpoint.record);
    removeKeys(tables.slots, tables.slots.getKeys({ end: u64Key(delta.stableCheckpoint.seq + 1) }));
  }
  for (const pp of delta.prePrepares) tables.slots.putSync(pp.key, pp.record);
  for (const slot of delta.slots) tables.slots.putSync(slot.key, slot.record);
}

export class PbftStorage {
  readonly #dir: string;
  readonly #root: RootDatabase<Buffer, string>;
  readonly #tables: Tables;
  readonly #commits: GroupCommit<EncodedDelta>;
  /** Per seq above the stable checkpoint, the pre-prepare last written (or loaded) for it. */
  readonly #storedPrePrepares = new Map<number, PrePrepare>();
  #closing: Promise<void> | null = null;

  private constructor(dir: string, root: RootDatabase<Buffer, string>, options: PbftStorageOptions) {
    this.#dir = dir;
    this.#root = root;
    this.#tables = {
      slots: root.openDB<Buffer, Buffer>(PBFT_STORAGE_LAYOUT.slots, { keyEncoding: 'binary', encoding: 'binary' }),
      meta: root.openDB<Buffer, string>(PBFT_STORAGE_LAYOUT.meta, { encoding: 'binary' }),
    };
    const onWrite = options.onWrite?.bind(options);
    this.#commits = new GroupCommit<EncodedDelta>({
      env: root,
      label: `pbft storage ${dir}`,
      apply: (delta) => applyDelta(this.#tables, delta),
      ...(onWrite === undefined
        ? {}
        : {
            onCommit: (deltas, timings) => {
              let writeSeconds = timings.applySeconds;
              let bytes = 0;
              for (const delta of deltas) {
                writeSeconds += delta.encodeSeconds;
                bytes += delta.bytes;
              }
              onWrite({ writeSeconds, syncSeconds: timings.syncSeconds, bytes });
            },
          }),
    });
  }

  static async open(dir: string, options: PbftStorageOptions = {}): Promise<PbftStorage> {
    return new PbftStorage(dir, await openEnvironment(dir), options);
  }

  /**
   * null on a fresh directory; otherwise what PbftCore needs to restart (a view state that was never
   * written is view 0, active). Slots at or below the stable checkpoint are left out. Throws
   * PbftStorageCorruptionError, naming the record, for anything damaged, malformed or unknown.
   */
  load(): PbftPersistedState | null {
    const { meta, slots } = this.#tables;
    const known: readonly string[] = [PBFT_STORAGE_LAYOUT.viewKey, PBFT_STORAGE_LAYOUT.stableCheckpointKey];
    for (const key of meta.getKeys()) {
      if (typeof key !== 'string' || !known.includes(key)) this.#fail(`meta key ${JSON.stringify(String(key))}`, 'not a key this store writes');
    }
    const viewRaw = meta.get(PBFT_STORAGE_LAYOUT.viewKey);
    const checkpointRaw = meta.get(PBFT_STORAGE_LAYOUT.stableCheckpointKey);
    if (viewRaw === undefined && checkpointRaw === undefined && slots.getKeysCount({ limit: 1 }) === 0) return null;

    const view = viewRaw === undefined ? FRESH_VIEW : (this.#decode(viewRaw, Kind.view, 'view state', viewProblem) as unknown as ViewState);
    const stableCheckpoint =
      checkpointRaw === undefined
        ? null
        : (this.#decode(checkpointRaw, Kind.stableCheckpoint, 'stable checkpoint', stableCheckpointProblem) as unknown as StableCheckpoint);
    const low = stableCheckpoint?.seq ?? 0;
    const apart = new Map<number, Buffer>();
    const stored: { seq: number; value: Buffer }[] = [];
    for (const { key, value } of slots.getRange()) {
      const isPrePrepare = key.length === 9 && key[8] === PRE_PREPARE_SUFFIX[0];
      const seq = u64FromKey(isPrePrepare ? key.subarray(0, 8) : key);
      if (seq === null || seq === 0) this.#fail(`slot key 0x${key.toString('hex')}`, 'not a sequence number');
      if (isPrePrepare) apart.set(seq, value);
      else stored.push({ seq, value });
    }
    const slotSeqs = new Set(stored.map((s) => s.seq));
    for (const seq of apart.keys()) if (!slotSeqs.has(seq)) this.#fail(`pre-prepare of slot ${seq}`, 'stored without its slot');
    this.#storedPrePrepares.clear();
    const records: SlotRecord[] = [];
    for (const { seq, value } of stored) {
      const record = this.#decode(value, [Kind.slot, Kind.sharedSlot, Kind.slotApart], `slot ${seq}`, (v) => slotProblem(v, seq), (v) =>
        this.#joined(v, seq, apart.get(seq)),
      ) as unknown as SlotRecord;
      if (seq <= low) continue;
      records.push(record);
      // Only a kind-5 record's pre-prepare is under prePrepareKey; one loaded from a kind-1 or kind-4
      // record is inside that record, and must be written apart when the slot is next written as kind 5.
      if (record.prePrepare !== null && value[4] === Kind.slotApart) this.#storedPrePrepares.set(seq, record.prePrepare);
    }
    return { view, stableCheckpoint, slots: records };
  }

  /** A kind-5 slot record with its pre-prepare put back from `raw` (its `pre_prepares` entry), checked against the digest it names. */
  #joined(v: Canonical, seq: number, raw: Buffer | undefined): Canonical {
    const digest = get(v, 'prePrepare');
    // A record under the wrong key is left to the shape check, which says so.
    if (digest === null || !isObject(v) || get(v, 'seq') !== seq) return v;
    if (typeof digest !== 'string') return this.#fail(`slot ${seq}`, 'prePrepare must name its pre-prepare by digest, or be null');
    if (raw === undefined) return this.#fail(`slot ${seq}`, `its pre-prepare ${digest} is not stored`);
    const pp = this.#decode(raw, Kind.prePrepare, `pre-prepare of slot ${seq}`, (p) => prePrepareProblem(p, 'pre-prepare', seq));
    if (get(pp, 'digest') !== digest) this.#fail(`slot ${seq}`, `names pre-prepare ${digest}, but ${String(get(pp, 'digest'))} is stored`);
    return { ...v, prePrepare: pp };
  }

  #decode(
    raw: Buffer,
    kind: Kind | readonly Kind[],
    record: string,
    shapeProblem: (value: Canonical) => Problem,
    join: (value: Canonical) => Canonical = (value) => value,
  ): Canonical {
    const headerProblem = recordHeaderProblem(raw, typeof kind === 'number' ? [kind] : kind);
    if (headerProblem !== null) this.#fail(record, headerProblem);
    let value: Canonical;
    try {
      value = decodeCanonical(raw.subarray(RECORD_HEADER_BYTES), MAX_RECORD_DEPTH);
    } catch (error) {
      return this.#fail(record, error instanceof Error ? error.message : String(error));
    }
    if (raw[4] === Kind.slotApart) value = join(value);
    if (raw[4] === Kind.sharedSlot || raw[4] === Kind.slotApart) value = unshared(value);
    const problem = shapeProblem(value);
    if (problem !== null) this.#fail(record, problem);
    return value;
  }

  #fail(record: string, problem: string): never {
    throw new PbftStorageCorruptionError(this.#dir, record, problem);
  }

  /**
   * Stores one Ready's delta in one atomic step and resolves once it is durable; see the module
   * comment for ordering, empty deltas and what a stable checkpoint deletes. Rejects with
   * PbftInputError, before anything is queued, for a delta that cannot be encoded.
   */
  async persist(delta: PersistDelta): Promise<void> {
    const encoded = encodeDelta(delta, this.#storedPrePrepares);
    return encoded === null ? this.#commits.barrier() : this.#commits.enqueue(encoded);
  }

  /** Waits for queued writes, then closes the environment; later calls are refused. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#commits.close();
      await this.#root.close();
    })();
    return this.#closing;
  }
}
