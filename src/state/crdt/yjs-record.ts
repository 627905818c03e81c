/**
 * Structured records as Yjs documents: one Y.Map of JSON values per record,
 * carried as a Yjs update (bytes). Anti-entropy compares state vectors and
 * ships `diff(state, theirStateVector)`: only the structs the peer lacks.
 *
 * Invariants:
 * - The state is a Yjs update holding the whole record; merge applies both
 *   sides to a fresh document and re-encodes it, so it is a join (Yjs updates
 *   commute and are idempotent). Every state this module returns (merges,
 *   deltas, decoded peer state) is canonical: re-encoded until the bytes stop
 *   changing, because one pass may still garbage-collect and squash deleted
 *   structs. So equal contents give equal bytes and digests.
 * - A region writes under a Yjs client id derived from its region id, never
 *   a random one, so writes are reproducible and a region's clock continues
 *   from its own structs in the state it loads. The state must therefore be
 *   durable before a region writes again (the store's job), as for the OR-set.
 * - Documents are built per call and discarded: this module holds no state,
 *   reads no clock and does no I/O.
 */
import { createHash } from 'node:crypto';
import * as Y from 'yjs';
import { assertRegion, readJson, readString, StateDecodeError } from './decode.ts';
import { sortedEntries, type CrdtModule, type JsonValue, type RegionId } from './types.ts';

export type YjsRecordState = Uint8Array;

/** Records are small structured values (VM specs, inventory rows), not blobs. */
export const MAX_RECORD_BYTES = 1 << 20;

const MAP_NAME = 'record';

/** 32-bit Yjs client id for a region (collisions among a federation's few regions are negligible). */
export function regionClientId(region: RegionId): number {
  assertRegion(region);
  return createHash('sha256').update(region).digest().readUInt32BE(0);
}

function load(...updates: readonly YjsRecordState[]): Y.Doc {
  // A fixed guid: the default draws a random UUID per document, and documents are made per merge.
  const doc = new Y.Doc({ guid: MAP_NAME });
  for (const update of updates) Y.applyUpdate(doc, update);
  return doc;
}

/** Passes after which re-encoding must be stable; in practice the second pass already is. */
const MAX_CANONICAL_PASSES = 4;

function canonical(...updates: readonly YjsRecordState[]): YjsRecordState {
  let bytes = Y.encodeStateAsUpdate(load(...updates));
  for (let pass = 1; pass < MAX_CANONICAL_PASSES; pass++) {
    const again = Y.encodeStateAsUpdate(load(bytes));
    if (Buffer.compare(again, bytes) === 0) return bytes;
    bytes = again;
  }
  throw new Error(`yjs-record: encoding did not settle after ${MAX_CANONICAL_PASSES} passes`);
}

const EMPTY: YjsRecordState = canonical();

function merge(a: YjsRecordState, b: YjsRecordState): YjsRecordState {
  return canonical(a, b);
}

function value(state: YjsRecordState): Record<string, JsonValue> {
  return Object.fromEntries(sortedEntries(load(state).getMap<JsonValue>(MAP_NAME).entries()));
}

/** The delta a local change at `region` produces: its new structs plus the record's delete set. */
function mutate(state: YjsRecordState, region: RegionId, change: (map: Y.Map<JsonValue>) => void): YjsRecordState {
  const clientId = regionClientId(region);
  const doc = load(state);
  // Set after loading: Yjs re-randomises a client id it sees arrive in a remote update.
  doc.clientID = clientId;
  const before = Y.encodeStateVector(doc);
  doc.transact(() => change(doc.getMap<JsonValue>(MAP_NAME)));
  return canonical(Y.encodeStateAsUpdate(doc, before));
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

export const YjsRecord = {
  name: 'yjs-record',
  empty: (): YjsRecordState => EMPTY,
  merge,
  value,
  encode: (state: YjsRecordState): JsonValue => Buffer.from(state).toString('base64'),
  decode(raw: unknown, field = 'yjs-record'): YjsRecordState {
    const text = readString(raw, field, Math.ceil(MAX_RECORD_BYTES / 3) * 4);
    if (text.length % 4 !== 0 || !BASE64.test(text)) throw new StateDecodeError(field, 'must be base64');
    const update = new Uint8Array(Buffer.from(text, 'base64'));
    try {
      // Re-encoding through a document both validates the update and canonicalises it.
      return canonical(update);
    } catch (err) {
      throw new StateDecodeError(field, `is not a Yjs update (${err instanceof Error ? err.message : String(err)})`);
    }
  },
  /** Delta setting `key` to `value` at `region`; concurrent sets of one key resolve as Yjs does (by client id). */
  set(state: YjsRecordState, region: RegionId, key: string, entry: JsonValue): YjsRecordState {
    const copy = readJson(entry, `value of ${key}`);
    return mutate(state, region, (map) => map.set(key, copy));
  },
  /** Delta deleting `key` as observed at `region`. */
  delete: (state: YjsRecordState, region: RegionId, key: string): YjsRecordState => mutate(state, region, (map) => map.delete(key)),
  /** What a peer sends first: which structs it has, per Yjs client. */
  stateVector: (state: YjsRecordState): Uint8Array => Y.encodeStateVectorFromUpdate(state),
  /** Only what a peer with `theirStateVector` lacks (plus the delete set). */
  diff: (state: YjsRecordState, theirStateVector: Uint8Array): YjsRecordState => canonical(Y.diffUpdate(state, theirStateVector)),
} satisfies CrdtModule<YjsRecordState, Record<string, JsonValue>>;
