import { describe, expect, it } from 'vitest';
import type { RegisterOp } from '../sim/linearizability.ts';
import { checkHistory } from '../sim/linearizability.ts';

function put(client: number, value: string, invoke: number, response: number | null, key = 'k'): RegisterOp {
  return { client, kind: 'put', key, value, invoke, response };
}
function get(client: number, value: string | null, invoke: number, response: number, key = 'k'): RegisterOp {
  return { client, kind: 'get', key, value, invoke, response };
}

describe('linearizability checker (register)', () => {
  it('accepts a sequential history', () => {
    expect(checkHistory([put(1, 'a', 0, 1), get(2, 'a', 2, 3), put(1, 'b', 4, 5), get(2, 'b', 6, 7)]).kind).toBe('ok');
  });

  it('accepts a read of the initial absent value', () => {
    expect(checkHistory([get(1, null, 0, 1), put(2, 'a', 2, 3)]).kind).toBe('ok');
  });

  it('accepts either order of concurrent writes, as long as reads agree', () => {
    const history = [put(1, 'a', 0, 10), put(2, 'b', 1, 9), get(3, 'a', 11, 12), get(3, 'a', 13, 14)];
    expect(checkHistory(history).kind).toBe('ok');
  });

  it('rejects a stale read after a completed write (the classic non-linearizable history)', () => {
    const result = checkHistory([put(1, 'a', 0, 1), put(1, 'b', 2, 3), get(2, 'a', 4, 5)]);
    expect(result.kind).toBe('violation');
    if (result.kind === 'violation') expect(result.key).toBe('k');
  });

  it('rejects two reads that see concurrent writes in opposite orders', () => {
    const history = [
      put(1, 'a', 0, 100),
      put(2, 'b', 0, 100),
      get(3, 'a', 10, 20),
      get(3, 'b', 30, 40),
      get(4, 'b', 50, 60),
      get(4, 'a', 70, 80),
    ];
    expect(checkHistory(history).kind).toBe('violation');
  });

  it('rejects a read of a value nobody wrote', () => {
    expect(checkHistory([put(1, 'a', 0, 1), get(2, 'z', 2, 3)]).kind).toBe('violation');
  });

  it('lets an unknown-outcome write take effect late or never', () => {
    // The write of 'b' timed out: a later read may see it...
    expect(checkHistory([put(1, 'a', 0, 1), put(2, 'b', 2, null), get(3, 'b', 50, 51)]).kind).toBe('ok');
    // ...or not,
    expect(checkHistory([put(1, 'a', 0, 1), put(2, 'b', 2, null), get(3, 'a', 50, 51)]).kind).toBe('ok');
    // but not before it was invoked.
    expect(checkHistory([put(1, 'a', 0, 1), get(3, 'b', 1, 2), put(2, 'b', 3, null)]).kind).toBe('violation');
  });

  it('once an unknown write is seen, it cannot be unseen', () => {
    const history = [put(1, 'a', 0, 1), put(2, 'b', 2, null), get(3, 'b', 10, 11), get(3, 'a', 12, 13)];
    expect(checkHistory(history).kind).toBe('violation');
  });

  it('checks keys independently', () => {
    const history = [put(1, 'a', 0, 1, 'x'), put(1, 'b', 0, 1, 'y'), get(2, 'a', 2, 3, 'x'), get(2, 'a', 2, 3, 'y')];
    const result = checkHistory(history);
    expect(result.kind).toBe('violation');
    if (result.kind === 'violation') expect(result.key).toBe('y');
  });

  it('answers inconclusive instead of passing when the search bound is hit', () => {
    const history: RegisterOp[] = [];
    for (let i = 0; i < 12; i++) history.push(put(i, `v${i}`, 0, 100));
    history.push(get(99, 'nobody', 101, 102));
    expect(checkHistory(history, 50).kind).toBe('inconclusive');
  });

  it('handles a long concurrent history quickly thanks to memoization', () => {
    const history: RegisterOp[] = [];
    for (let round = 0; round < 40; round++) {
      const t = round * 10;
      for (let c = 0; c < 5; c++) history.push(put(c, `r${round}c${c}`, t, t + 5));
      history.push(get(9, `r${round}c${round % 5}`, t + 6, t + 7));
    }
    expect(checkHistory(history).kind).toBe('ok');
  });
});
