/**
 * Raft's safety properties (Figure 3 of the paper), checked by the simulator
 * from outside the cores as the run goes:
 * - Election safety: at most one leader per term, over the whole run.
 * - Log matching: two entries with the same index and term have the same
 *   content and the same predecessor term (so, inductively, identical
 *   prefixes). Every entry of every log passes through a Ready, which is where
 *   it is checked, together with its predecessor's term in that log.
 * - Leader completeness: a node that becomes leader holds every entry any
 *   node has applied so far.
 * - State machine safety: no two nodes apply different entries at one index.
 * A violation throws InvariantViolation with the details.
 */
import type { RaftCore } from '../../src/consensus/raft/core.ts';
import type { Entry, NodeId } from '../../src/consensus/raft/types.ts';
import { entryDigest } from './kv.ts';

/** What the checker reads from a node (a RaftCore, or a stand-in in the checker's own tests). */
export type ObservedNode = Pick<RaftCore, 'id' | 'role' | 'term' | 'lastIndex' | 'snapshotIndex' | 'entryAt'>;

export class InvariantViolation extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvariantViolation';
  }
}

export class InvariantChecker {
  readonly #leaders = new Map<number, NodeId>();
  readonly #entries = new Map<string, { digest: string; prevTerm: number | undefined }>();
  readonly #applied = new Map<number, { term: number; digest: string; node: NodeId }>();
  #maxApplied = 0;

  get leaderTerms(): number {
    return this.#leaders.size;
  }

  /** Call after every input to a core. */
  observe(core: ObservedNode): void {
    if (core.role !== 'leader') return;
    const known = this.#leaders.get(core.term);
    if (known === core.id) return;
    if (known !== undefined) {
      throw new InvariantViolation(`election safety: ${known} and ${core.id} are both leaders of term ${core.term}`);
    }
    this.#leaders.set(core.term, core.id);
    this.#checkCompleteness(core);
  }

  #checkCompleteness(core: ObservedNode): void {
    if (core.lastIndex < this.#maxApplied) {
      throw new InvariantViolation(
        `leader completeness: ${core.id} leads term ${core.term} with last index ${core.lastIndex}, but index ${this.#maxApplied} was applied`,
      );
    }
    for (let i = core.snapshotIndex + 1; i <= this.#maxApplied; i++) {
      const applied = this.#applied.get(i);
      const entry = core.entryAt(i);
      if (applied === undefined || entry === undefined) continue;
      if (entry.term !== applied.term || entryDigest(entry) !== applied.digest) {
        throw new InvariantViolation(
          `leader completeness: ${core.id} leads term ${core.term} with (${i}, term ${entry.term}) but (${i}, term ${applied.term}) was applied by ${applied.node}`,
        );
      }
    }
  }

  /** Call with the entries of a Ready before they are persisted; prevTerm is the log's term before the first. */
  observeEntries(node: NodeId, entries: readonly Entry[], prevTerm: number | undefined): void {
    let before = prevTerm;
    for (const entry of entries) {
      const key = `${entry.index}:${entry.term}`;
      const digest = entryDigest(entry);
      const seen = this.#entries.get(key);
      if (seen === undefined) {
        this.#entries.set(key, { digest, prevTerm: before });
      } else {
        if (seen.digest !== digest) {
          throw new InvariantViolation(`log matching: ${node} has (${key}) = ${digest}, elsewhere ${seen.digest}`);
        }
        if (seen.prevTerm !== undefined && before !== undefined && seen.prevTerm !== before) {
          throw new InvariantViolation(
            `log matching: ${node} has (${key}) after term ${before}, elsewhere after term ${seen.prevTerm}`,
          );
        }
      }
      before = entry.term;
    }
  }

  observeApplied(node: NodeId, entry: Entry): void {
    const digest = entryDigest(entry);
    const seen = this.#applied.get(entry.index);
    if (seen === undefined) {
      this.#applied.set(entry.index, { term: entry.term, digest, node });
      if (entry.index > this.#maxApplied) this.#maxApplied = entry.index;
      return;
    }
    if (seen.term !== entry.term || seen.digest !== digest) {
      throw new InvariantViolation(
        `state machine safety: ${node} applies (${entry.index}, term ${entry.term}) ${digest}; ${seen.node} applied term ${seen.term} ${seen.digest}`,
      );
    }
  }
}
