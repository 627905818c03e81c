/**
 * Observed-remove set with add-wins semantics. Every add gets a unique tag
 * (region, counter); a remove tombstones only the tags its replica has
 * observed, so an add concurrent with a remove survives it.
 *
 * Invariants:
 * - A region's tag counter is one above the highest counter for that region
 *   anywhere in its own state (live or tombstoned). A region always holds its
 *   own adds, so its tags are unique as long as its state is durable.
 * - Live tags never include a tombstoned tag, and an element is present iff it
 *   has a live tag. Merge is the union of tombstones plus the union of live
 *   tags minus those tombstones: a join, and normalised, so equal states
 *   encode identically.
 * - Tombstones are kept forever (no causal-stability GC yet): the cost of
 *   add-wins without a causal delivery guarantee.
 */
import type { VectorClock } from '../clock/vector-clock.ts';
import { MAX_ELEMENT_LENGTH, assertRegion, readArray, readCount, readObject, readRegion, readString, rejectDuplicate, StateDecodeError } from './decode.ts';
import { assertElement } from './g-set.ts';
import { compareStrings, sortedEntries, sortedStrings, type CrdtModule, type JsonValue, type RegionId } from './types.ts';

export interface OrSetTag {
  readonly region: RegionId;
  readonly counter: number;
}

/** Tags keyed by tagKey, so set operations are Map operations. */
type TagSet = ReadonlyMap<string, OrSetTag>;

export interface OrSetState {
  /** element -> its live (not tombstoned) tags; never an empty tag set. */
  readonly entries: ReadonlyMap<string, TagSet>;
  readonly tombstones: TagSet;
}

const EMPTY: OrSetState = { entries: new Map(), tombstones: new Map() };

function tagKey(tag: OrSetTag): string {
  return JSON.stringify([tag.region, tag.counter]);
}

function tagSet(tags: Iterable<OrSetTag>): Map<string, OrSetTag> {
  return new Map([...tags].map((tag) => [tagKey(tag), tag]));
}

/** Highest tag counter per region, live or tombstoned: the set's causal high-water mark. */
export function orSetClock(state: OrSetState): VectorClock {
  const clock = new Map<RegionId, number>();
  const note = (tag: OrSetTag): void => {
    clock.set(tag.region, Math.max(tag.counter, clock.get(tag.region) ?? 0));
  };
  for (const tags of state.entries.values()) for (const tag of tags.values()) note(tag);
  for (const tag of state.tombstones.values()) note(tag);
  return clock;
}

function normalise(entries: Map<string, Map<string, OrSetTag>>, tombstones: TagSet): OrSetState {
  const live = new Map<string, TagSet>();
  for (const [element, tags] of entries) {
    for (const key of tags.keys()) if (tombstones.has(key)) tags.delete(key);
    if (tags.size > 0) live.set(element, tags);
  }
  return { entries: live, tombstones };
}

function merge(a: OrSetState, b: OrSetState): OrSetState {
  const entries = new Map<string, Map<string, OrSetTag>>();
  for (const side of [a, b]) {
    for (const [element, tags] of side.entries) entries.set(element, new Map([...(entries.get(element) ?? []), ...tags]));
  }
  return normalise(entries, new Map([...a.tombstones, ...b.tombstones]));
}

function encodeTags(tags: TagSet): JsonValue {
  return [...tags.values()]
    .sort((x, y) => compareStrings(x.region, y.region) || x.counter - y.counter)
    .map((tag) => [tag.region, tag.counter]);
}

function decodeTags(raw: unknown, field: string): Map<string, OrSetTag> {
  const seen = new Set<string>();
  const tags = readArray(raw, field).map((item, i) => {
    const tuple = readArray(item, `${field}[${i}]`);
    if (tuple.length !== 2) throw new StateDecodeError(`${field}[${i}]`, `must be [region, counter], got ${tuple.length} items`);
    const tag = { region: readRegion(tuple[0], `${field}[${i}][0]`), counter: readCount(tuple[1], `${field}[${i}][1]`) };
    if (tag.counter === 0) throw new StateDecodeError(`${field}[${i}][1]`, 'tag counters start at 1');
    rejectDuplicate(seen, tagKey(tag), `${field}[${i}]`);
    return tag;
  });
  return tagSet(tags);
}

export const OrSet = {
  name: 'or-set',
  empty: (): OrSetState => EMPTY,
  merge,
  value: (state: OrSetState): string[] => sortedStrings(state.entries.keys()),
  encode: (state: OrSetState): JsonValue => ({
    entries: sortedEntries(state.entries).map(([element, tags]) => ({ element, tags: encodeTags(tags) })),
    tombstones: encodeTags(state.tombstones),
  }),
  decode(raw: unknown, root = 'or-set'): OrSetState {
    const record = readObject(raw, root, ['entries', 'tombstones']);
    const seen = new Set<string>();
    const entries = new Map<string, Map<string, OrSetTag>>();
    readArray(record.entries, `${root}.entries`).forEach((item, i) => {
      const field = `${root}.entries[${i}]`;
      const entry = readObject(item, field, ['element', 'tags']);
      const element = readString(entry.element, `${field}.element`, MAX_ELEMENT_LENGTH);
      rejectDuplicate(seen, element, `${field}.element`);
      entries.set(element, decodeTags(entry.tags, `${field}.tags`));
    });
    return normalise(entries, decodeTags(record.tombstones, `${root}.tombstones`));
  },
  has: (state: OrSetState, element: string): boolean => state.entries.has(element),
  /**
   * Delta adding `element` at `region`: a fresh tag, plus tombstones for the
   * element's tags observed here (they are superseded, which keeps live tags
   * to one per concurrent add).
   */
  add(state: OrSetState, region: RegionId, element: string): OrSetState {
    assertRegion(region);
    assertElement(element);
    const counter = (orSetClock(state).get(region) ?? 0) + 1;
    if (!Number.isSafeInteger(counter)) throw new RangeError(`or-set tag counter for ${region} overflows`);
    const observed = state.entries.get(element) ?? new Map<string, OrSetTag>();
    return { entries: new Map([[element, tagSet([{ region, counter }])]]), tombstones: new Map(observed) };
  },
  /** Delta removing `element` as observed here; a concurrent add elsewhere survives it. */
  remove(state: OrSetState, element: string): OrSetState {
    return { entries: new Map(), tombstones: new Map(state.entries.get(element) ?? []) };
  },
  clock: orSetClock,
} satisfies CrdtModule<OrSetState, string[]>;

