/**
 * Grow-only set of string elements (keys such as VM or inventory ids):
 * merge is union, so it is a join; nothing is ever removed.
 *
 * Invariant: the encoding is the elements sorted by UTF-16 code unit, each
 * once, so equal sets encode identically.
 */
import { MAX_ELEMENT_LENGTH, readArray, readString, rejectDuplicate } from './decode.ts';
import { sortedStrings, type CrdtModule, type JsonValue } from './types.ts';

export type GSetState = ReadonlySet<string>;

const EMPTY: GSetState = new Set();

export function assertElement(element: string): void {
  if (element.length > MAX_ELEMENT_LENGTH) {
    throw new RangeError(`element: ${element.length} characters, limit ${MAX_ELEMENT_LENGTH}`);
  }
}

export const GSet = {
  name: 'g-set',
  empty: (): GSetState => EMPTY,
  merge: (a: GSetState, b: GSetState): GSetState => new Set([...a, ...b]),
  value: (state: GSetState): string[] => sortedStrings(state),
  encode: (state: GSetState): JsonValue => sortedStrings(state),
  decode(raw: unknown, field = 'g-set'): GSetState {
    const seen = new Set<string>();
    readArray(raw, field).forEach((item, i) => rejectDuplicate(seen, readString(item, `${field}[${i}]`, MAX_ELEMENT_LENGTH), `${field}[${i}]`));
    return seen;
  },
  /** Delta adding `element`. */
  add(state: GSetState, element: string): GSetState {
    assertElement(element);
    return new Set([element]);
  },
  has: (state: GSetState, element: string): boolean => state.has(element),
} satisfies CrdtModule<GSetState, string[]>;
