/**
 * Linearizability checker for a key-value register history (Wing & Gong's
 * search with Lowe's just-in-time linearization and memoization, as in
 * porcupine).
 *
 * A register's operations touch one key, so the history is split per key and
 * each key checked on its own (linearizability is compositional). Every
 * operation has an invoke time and a response time; an operation whose
 * outcome is unknown (the client gave up) has no response: it may take
 * effect at any point after its invoke, or never — placed at +infinity, a
 * write that never happened is linearized last where nobody can observe it.
 * Reads with unknown outcome carry no information and should be left out.
 *
 * The search is bounded (maxSteps per key): beyond it the answer is
 * 'inconclusive', never a silent pass.
 */

export interface RegisterOp {
  readonly client: number;
  readonly kind: 'put' | 'get';
  readonly key: string;
  /** put: the value written; get: the value returned (null = absent). */
  readonly value: string | null;
  readonly invoke: number;
  /** null: the outcome is unknown (timed out, node crashed). */
  readonly response: number | null;
}

export type CheckResult =
  | { readonly kind: 'ok' }
  | { readonly kind: 'violation'; readonly key: string; readonly ops: readonly RegisterOp[] }
  | { readonly kind: 'inconclusive'; readonly key: string; readonly steps: number };

interface Node {
  readonly op: RegisterOp | null;
  readonly id: number;
  readonly isCall: boolean;
  readonly time: number;
  match: Node | null;
  prev: Node | null;
  next: Node | null;
}

/** Remove a call and its return from the list (they are linearized). */
function lift(call: Node): void {
  const ret = call.match as Node;
  (call.prev as Node).next = call.next;
  if (call.next !== null) call.next.prev = call.prev;
  (ret.prev as Node).next = ret.next;
  if (ret.next !== null) ret.next.prev = ret.prev;
}

/** Undo lift, in reverse order. */
function unlift(call: Node): void {
  const ret = call.match as Node;
  (ret.prev as Node).next = ret;
  if (ret.next !== null) ret.next.prev = ret;
  (call.prev as Node).next = call;
  if (call.next !== null) call.next.prev = call;
}

function buildList(ops: readonly RegisterOp[]): Node {
  const events: Node[] = [];
  ops.forEach((op, id) => {
    const call: Node = { op, id, isCall: true, time: op.invoke, match: null, prev: null, next: null };
    const ret: Node = { op, id, isCall: false, time: op.response ?? Infinity, match: null, prev: null, next: null };
    call.match = ret;
    events.push(call, ret);
  });
  // At equal times calls go first: touching intervals count as concurrent (the permissive reading).
  events.sort((a, b) => a.time - b.time || Number(b.isCall) - Number(a.isCall) || a.id - b.id);
  const head: Node = { op: null, id: -1, isCall: false, time: -Infinity, match: null, prev: null, next: null };
  let prev = head;
  for (const event of events) {
    prev.next = event;
    event.prev = prev;
    prev = event;
  }
  return head;
}

/** The register's sequential specification: the state after op, or null if op cannot happen in state. */
function stepRegister(state: string | null, op: RegisterOp): { ok: boolean; state: string | null } {
  if (op.kind === 'put') return { ok: true, state: op.value };
  return { ok: op.value === state, state };
}

export function checkKey(ops: readonly RegisterOp[], maxSteps: number): 'ok' | 'violation' | 'inconclusive' {
  const head = buildList(ops);
  const linearized = new Uint32Array(Math.ceil(ops.length / 32) + 1);
  const seen = new Set<string>();
  const stack: { call: Node; state: string | null }[] = [];
  let state: string | null = null;
  let entry = head.next;
  let steps = 0;
  while (head.next !== null) {
    if (++steps > maxSteps) return 'inconclusive';
    if (entry === null) return 'violation';
    if (entry.isCall) {
      const result = stepRegister(state, entry.op as RegisterOp);
      if (result.ok) {
        linearized[entry.id >>> 5] = (linearized[entry.id >>> 5] as number) | (1 << (entry.id & 31));
        const key = `${linearized.join(',')}|${result.state ?? '\u0000'}`;
        if (!seen.has(key)) {
          seen.add(key);
          stack.push({ call: entry, state });
          state = result.state;
          lift(entry);
          entry = head.next;
          continue;
        }
        linearized[entry.id >>> 5] = (linearized[entry.id >>> 5] as number) & ~(1 << (entry.id & 31));
      }
      entry = entry.next;
    } else {
      // A return we cannot get past: undo the latest linearization and try its next alternative.
      const top = stack.pop();
      if (top === undefined) return 'violation';
      state = top.state;
      linearized[top.call.id >>> 5] = (linearized[top.call.id >>> 5] as number) & ~(1 << (top.call.id & 31));
      unlift(top.call);
      entry = top.call.next;
    }
  }
  return 'ok';
}

export function checkHistory(ops: readonly RegisterOp[], maxStepsPerKey = 2_000_000): CheckResult {
  const byKey = new Map<string, RegisterOp[]>();
  for (const op of ops) {
    if (op.response !== null && op.response < op.invoke) {
      throw new RangeError(`operation of client ${op.client} on ${op.key} returns (${op.response}) before it is invoked (${op.invoke})`);
    }
    const list = byKey.get(op.key);
    if (list === undefined) byKey.set(op.key, [op]);
    else list.push(op);
  }
  for (const [key, list] of [...byKey].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const verdict = checkKey(list, maxStepsPerKey);
    if (verdict === 'violation') return { kind: 'violation', key, ops: list };
    if (verdict === 'inconclusive') return { kind: 'inconclusive', key, steps: maxStepsPerKey };
  }
  return { kind: 'ok' };
}
