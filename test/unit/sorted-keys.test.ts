/**
 * SortedKeys against a model (a plain array kept sorted by compareKeys):
 * the same answers for insert, delete, append and iteration from any key,
 * and its block invariants after every step, through enough keys to split
 * and join blocks many times. Seeded: a failure names its seed.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { compareKeys } from '../../src/kv/command.ts';
import { SortedKeys } from '../../src/kv/sorted-keys.ts';
import { mulberry32 } from '../support/prng.ts';


/** Units that sort differently in UTF-16 and UTF-8 (a surrogate pair, U+E000, U+FFFF) beside ASCII. */
const UNITS = ['a', 'b', 'z', '/', '\u00e9', '\ud83d\ude00', '\ue000', '\uffff'];

function randomKey(next: () => number, maxLength: number): string {
  const length = 1 + Math.floor(next() * maxLength);
  let key = '';
  for (let i = 0; i < length; i++) key += UNITS[Math.floor(next() * UNITS.length)];
  return key;
}

class Model {
  readonly keys: string[] = [];
  #position(key: string): number {
    let i = 0;
    while (i < this.keys.length && compareKeys(this.keys[i] as string, key) < 0) i++;
    return i;
  }
  insert(key: string): boolean {
    const i = this.#position(key);
    if (this.keys[i] === key) return false;
    this.keys.splice(i, 0, key);
    return true;
  }
  delete(key: string): boolean {
    const i = this.#position(key);
    if (this.keys[i] !== key) return false;
    this.keys.splice(i, 1);
    return true;
  }
  from(start: string, exclusive: boolean): string[] {
    return this.keys.filter((k) => (exclusive ? compareKeys(k, start) > 0 : compareKeys(k, start) >= 0));
  }
}

function take(it: Iterable<string>, n: number): string[] {
  const out: string[] = [];
  for (const k of it) {
    if (out.length === n) break;
    out.push(k);
  }
  return out;
}

describe('SortedKeys', () => {
  it.each([1, 2, 3])('matches a sorted array through 12 000 random inserts and deletes (seed %i)', (seed) => {
    const next = mulberry32(seed);
    const keys = new SortedKeys();
    const model = new Model();
    // Phase 1 grows (splits), phase 2 shrinks (joins and empty blocks), phase 3 mixes.
    const insertShare = [0.9, 0.15, 0.5];
    for (const [phase, share] of insertShare.entries()) {
      for (let step = 0; step < 4000; step++) {
        const key = randomKey(next, 7);
        const insert = next() < share;
        // Deletes mostly hit keys present, or a shrinking phase would find nothing to remove.
        const target = !insert && model.keys.length > 0 && next() < 0.8 ? (model.keys[Math.floor(next() * model.keys.length)] as string) : key;
        const got = insert ? keys.insert(target) : keys.delete(target);
        const want = insert ? model.insert(target) : model.delete(target);
        expect(got, `seed ${seed} phase ${phase} step ${step}: ${insert ? 'insert' : 'delete'} ${JSON.stringify(target)}`).toBe(want);
        if (step % 500 === 0) {
          keys.check();
          const start = randomKey(next, 3);
          const exclusive = next() < 0.5;
          expect(take(keys.from(start, exclusive), 50), `seed ${seed}: from ${JSON.stringify(start)}`).toEqual(model.from(start, exclusive).slice(0, 50));
        }
      }
      keys.check();
      expect(keys.length, `seed ${seed} phase ${phase}`).toBe(model.keys.length);
      expect(keys.toArray(), `seed ${seed} phase ${phase}`).toEqual(model.keys);
    }
  });

  it('answers like the model for any short sequence of operations (fast-check)', () => {
    const op = fc.record({ kind: fc.constantFrom('insert', 'delete', 'from', 'fromAfter'), key: fc.array(fc.constantFrom(...UNITS), { minLength: 0, maxLength: 4 }).map((u) => u.join('')) });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const keys = new SortedKeys();
        const model = new Model();
        for (const { kind, key } of ops) {
          if (kind === 'insert') expect(keys.insert(key)).toBe(model.insert(key));
          else if (kind === 'delete') expect(keys.delete(key)).toBe(model.delete(key));
          else expect([...keys.from(key, kind === 'fromAfter')]).toEqual(model.from(key, kind === 'fromAfter'));
          keys.check();
        }
        expect(keys.toArray()).toEqual(model.keys);
      }),
      { numRuns: 300 },
    );
  });

  it('appends keys given in order into full blocks and refuses one out of order, naming both keys', () => {
    const keys = new SortedKeys();
    const sorted = Array.from({ length: 2000 }, (_, i) => `k${String(i).padStart(5, '0')}`);
    for (const k of sorted) keys.append(k);
    keys.check();
    expect(keys.toArray()).toEqual(sorted);
    expect(() => keys.append('k00005')).toThrow('sorted keys: "k00005" is not after the last key "k01999"');
    expect(() => keys.append('k01999')).toThrow(/is not after the last key/);
    expect(keys.length).toBe(2000);
    // A middle insert into a full appended block splits it and keeps the order.
    expect(keys.insert('k00010a')).toBe(true);
    keys.check();
    expect(take(keys.from('k00010'), 3)).toEqual(['k00010', 'k00010a', 'k00011']);
  });
});
