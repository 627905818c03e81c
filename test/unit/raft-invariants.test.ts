import { describe, expect, it } from 'vitest';
import type { Entry, Role } from '../../src/consensus/raft/types.ts';
import type { ObservedNode } from '../sim/invariants.ts';
import { InvariantChecker, InvariantViolation } from '../sim/invariants.ts';

const encoder = new TextEncoder();
function entry(index: number, term: number, text: string): Entry {
  return { kind: 'normal', index, term, data: encoder.encode(text) };
}

function node(id: string, role: Role, term: number, log: Entry[]): ObservedNode {
  return {
    id,
    role,
    term,
    lastIndex: log.length,
    snapshotIndex: 0,
    entryAt: (i: number) => log[i - 1],
  };
}

describe('simulator invariant checker', () => {
  it('flags two leaders in one term', () => {
    const checker = new InvariantChecker();
    checker.observe(node('a', 'leader', 3, []));
    checker.observe(node('a', 'leader', 3, []));
    checker.observe(node('b', 'leader', 4, []));
    expect(() => checker.observe(node('c', 'leader', 3, []))).toThrow(/election safety: a and c are both leaders of term 3/);
  });

  it('flags entries with the same index and term but different content or predecessor', () => {
    const checker = new InvariantChecker();
    checker.observeEntries('a', [entry(1, 1, 'x'), entry(2, 2, 'y')], 0);
    expect(() => checker.observeEntries('b', [entry(2, 2, 'z')], 1)).toThrow(InvariantViolation);
    expect(() => checker.observeEntries('b', [entry(2, 2, 'y')], 0)).toThrow(/after term 0, elsewhere after term 1/);
    checker.observeEntries('b', [entry(2, 2, 'y')], 1);
  });

  it('flags two different entries applied at one index', () => {
    const checker = new InvariantChecker();
    checker.observeApplied('a', entry(1, 1, 'x'));
    checker.observeApplied('b', entry(1, 1, 'x'));
    expect(() => checker.observeApplied('c', entry(1, 2, 'y'))).toThrow(/state machine safety/);
  });

  it('flags a new leader missing an applied entry', () => {
    const checker = new InvariantChecker();
    checker.observeApplied('a', entry(1, 1, 'x'));
    checker.observeApplied('a', entry(2, 1, 'y'));
    expect(() => checker.observe(node('b', 'leader', 2, [entry(1, 1, 'x')]))).toThrow(/last index 1, but index 2 was applied/);
    expect(() => checker.observe(node('c', 'leader', 3, [entry(1, 1, 'x'), entry(2, 2, 'q')]))).toThrow(/leader completeness/);
    checker.observe(node('d', 'leader', 4, [entry(1, 1, 'x'), entry(2, 1, 'y'), entry(3, 4, '')]));
  });
});
