/**
 * Shared fast-check laws every CRDT type must pass, registered as vitest tests
 * by each crdt-*.test.ts: random operation sequences at several replicas
 * (each with its own HLC and skewed physical time) interleaved with random
 * state merges; then join laws on the resulting states, convergence under
 * shuffled and duplicated delivery, and the encode/decode round trip.
 */
import { expect, it } from 'vitest';
import fc from 'fast-check';
import { HLC_ZERO, hlcSend, type Hlc } from '../../src/state/clock/hlc.ts';
import { canonicalJson, digest, sameState, type Crdt, type RegionId } from '../../src/state/crdt/types.ts';

export const REGIONS: readonly RegionId[] = ['ap-south', 'eu-west', 'us-east', 'us-west'];

export interface CrdtSubject<S, Op> {
  readonly type: Crdt<S, unknown>;
  readonly op: fc.Arbitrary<Op>;
  /** The delta for `op` performed at `region`, stamped `ts` by that region's HLC. */
  apply(state: S, op: Op, region: RegionId, ts: Hlc): S;
  /** The value every replica must show once all ops have been delivered, if the type makes it predictable. */
  expectedValue?(performed: readonly Performed<Op>[]): unknown;
}

export interface Performed<Op> {
  readonly op: Op;
  readonly region: RegionId;
  readonly ts: Hlc;
}

type Step<Op> = { readonly kind: 'op'; readonly replica: number; readonly physicalMs: number; readonly op: Op } | { readonly kind: 'merge'; readonly from: number; readonly to: number };

export interface History<S, Op> {
  readonly finals: readonly S[];
  readonly deltas: readonly S[];
  readonly performed: readonly Performed<Op>[];
}

export function steps<Op>(op: fc.Arbitrary<Op>, replicas: number, maxSteps: number): fc.Arbitrary<Step<Op>[]> {
  const replica = fc.integer({ min: 0, max: replicas - 1 });
  return fc.array(
    fc.oneof(
      { arbitrary: fc.record({ kind: fc.constant('op' as const), replica, physicalMs: fc.integer({ min: 0, max: 50 }), op }), weight: 3 },
      { arbitrary: fc.record({ kind: fc.constant('merge' as const), from: replica, to: replica }), weight: 1 },
    ),
    { maxLength: maxSteps },
  );
}

export function runHistory<S, Op>(subject: CrdtSubject<S, Op>, plan: readonly Step<Op>[], replicas: number): History<S, Op> {
  const { type } = subject;
  const states: S[] = Array.from({ length: replicas }, () => type.empty());
  const clocks: Hlc[] = Array.from({ length: replicas }, () => HLC_ZERO);
  const deltas: S[] = [];
  const performed: Performed<Op>[] = [];
  for (const step of plan) {
    if (step.kind === 'merge') {
      states[step.to] = type.merge(at(states, step.to), at(states, step.from));
      continue;
    }
    const region = at(REGIONS, step.replica);
    const ts = hlcSend(at(clocks, step.replica), step.physicalMs);
    clocks[step.replica] = ts;
    const delta = subject.apply(at(states, step.replica), step.op, region, ts);
    states[step.replica] = type.merge(at(states, step.replica), delta);
    deltas.push(delta);
    performed.push({ op: step.op, region, ts });
  }
  return { finals: states, deltas, performed };
}

function at<T>(items: readonly T[], index: number): T {
  const item = items[index];
  if (item === undefined) throw new Error(`no item ${index}`);
  return item;
}

/** Fisher-Yates driven by fast-check, so failures shrink and replay from the seed. */
export function shuffle<T>(items: readonly T[], g: fc.GeneratorValue): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = g(fc.integer, { min: 0, max: i });
    [out[i], out[j]] = [at(out, j), at(out, i)];
  }
  return out;
}

function mergeAll<S>(type: Crdt<S, unknown>, start: S, states: readonly S[]): S {
  return states.reduce((acc, s) => type.merge(acc, s), start);
}

export interface LawRuns {
  readonly numRuns: number;
  readonly maxSteps: number;
}

/** Registers the join-law, convergence and round-trip properties for `subject`. */
export function crdtLaws<S, Op>(subject: CrdtSubject<S, Op>, runs: LawRuns = { numRuns: 150, maxSteps: 30 }): void {
  const { type } = subject;
  const history = (replicas: number): fc.Arbitrary<History<S, Op>> =>
    steps(subject.op, replicas, runs.maxSteps).map((plan) => runHistory(subject, plan, replicas));
  const same = (a: S, b: S): void => {
    expect(canonicalJson(type.encode(a))).toBe(canonicalJson(type.encode(b)));
  };

  it(`${type.name}: merge is commutative, associative and idempotent (and the empty state is its identity)`, () => {
    fc.assert(
      fc.property(history(3), ({ finals: [a, b, c] }) => {
        if (a === undefined || b === undefined || c === undefined) throw new Error('three replicas');
        same(type.merge(a, b), type.merge(b, a));
        same(type.merge(type.merge(a, b), c), type.merge(a, type.merge(b, c)));
        same(type.merge(a, a), a);
        same(type.merge(a, type.empty()), a);
      }),
      { numRuns: runs.numRuns },
    );
  });

  it(`${type.name}: replicas converge whatever order, duplication and grouping merges and deltas arrive in`, () => {
    fc.assert(
      fc.property(history(REGIONS.length), fc.gen(), ({ finals, deltas, performed }, g) => {
        const everything = mergeAll(type, type.empty(), finals);
        const shuffledWithDuplicates = (items: readonly S[]): S[] => shuffle([...items, ...items.filter(() => g(fc.boolean))], g);
        // Full-state gossip: each replica receives every other replica's state.
        const digests = finals.map((own) => digest(type, mergeAll(type, own, shuffledWithDuplicates(finals))));
        expect(new Set(digests).size).toBe(1);
        expect(digests[0]).toBe(digest(type, everything));
        // Delta shipping: a fresh replica that only ever saw the deltas ends in the same state.
        same(mergeAll(type, type.empty(), shuffledWithDuplicates(deltas)), everything);
        if (subject.expectedValue !== undefined) expect(type.value(everything)).toEqual(subject.expectedValue(performed));
      }),
      { numRuns: runs.numRuns },
    );
  });

  it(`${type.name}: encode/decode round-trips through JSON text`, () => {
    fc.assert(
      fc.property(history(3), ({ finals, deltas }) => {
        for (const state of [...finals, ...deltas]) {
          const decoded = type.decode(JSON.parse(JSON.stringify(type.encode(state))));
          expect(sameState(type, decoded, state)).toBe(true);
          expect(type.value(decoded)).toEqual(type.value(state));
        }
      }),
      { numRuns: Math.ceil(runs.numRuns / 3) },
    );
  });
}
