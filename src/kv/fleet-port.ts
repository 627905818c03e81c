/**
 * The fleet's desired state on the federation log, as the fleet sees it
 * (FleetLogPort, src/fleet/log.ts): commits go through the KV router to the
 * federation scope at consistency strong (the PBFT log when any member is
 * untrusted, the Raft log otherwise), as KV op `fleet`; reads come from this
 * node's replica of that same log.
 *
 * A commit resolves only once this node's replica has applied the entry, so
 * a caller that re-plans after a refusal reads state that includes it (the
 * leader answers when it applied; a follower's replica may trail by a
 * moment). The wait is bounded by the commit's own deadline.
 */
import type { FleetResult } from '../fleet/commands.ts';
import type { FleetLogPort } from '../fleet/log.ts';
import type { FleetState } from '../fleet/state-machine.ts';
import type { KvRouter } from './router.ts';
import { KvServiceError } from './service.ts';
import type { KvStateMachine } from './state-machine.ts';

/** Where this node's replica of the federation log is read: the PBFT replica's machine, or the Raft replica's. */
export interface FederationReplica {
  readonly machine: KvStateMachine;
}

/** How often a commit checks whether the local replica caught up (a follower trails the leader's answer by about one heartbeat). */
const CATCH_UP_POLL_MS = 5;

export class KvFleetPort implements FleetLogPort {
  readonly #router: Pick<KvRouter, 'write'>;
  readonly #replica: () => FederationReplica | null;

  /** `replica` is read per call: a restored snapshot replaces the replica's machine. */
  constructor(router: Pick<KvRouter, 'write'>, replica: () => FederationReplica | null) {
    this.#router = router;
    this.#replica = replica;
  }

  state(): FleetState {
    const replica = this.#replica();
    if (replica === null) throw new KvServiceError('unsupported', 'this node holds no replica of the federation log, so it has no fleet state');
    return replica.machine.fleet;
  }

  async commit(command: Uint8Array, session: { clientId: string; seq: number }, timeoutMs: number): Promise<FleetResult> {
    const started = performance.now();
    const answer = await this.#router.write({ op: { op: 'fleet', command }, level: 'strong', scope: 'federation', clientId: session.clientId, seq: session.seq, ttlMs: 0, timeoutMs });
    if (answer.keyspace !== 'log') throw new KvServiceError('invalid', 'a fleet command was routed outside the federation log');
    const { result } = answer;
    if (!result.ok) {
      // A fleet command's refusal is a FleetResult; a KV-level failure here means the session went stale or the bytes were refused.
      throw new KvServiceError('invalid', result.reason === 'invalid_command' ? result.message : `the federation log refused the fleet command: ${result.reason}`);
    }
    if (result.op !== 'fleet') throw new KvServiceError('invalid', `a fleet command returned a ${result.op} result`);
    await this.#caughtUp(result.revision, timeoutMs - (performance.now() - started));
    return result.result;
  }

  async #caughtUp(index: number, remainingMs: number): Promise<void> {
    const deadline = performance.now() + Math.max(0, remainingMs);
    while ((this.#replica()?.machine.appliedIndex ?? Number.POSITIVE_INFINITY) < index) {
      if (performance.now() >= deadline) {
        throw new KvServiceError('unavailable', `the fleet command committed at index ${index}, but this node's replica has not applied it yet (retry to read it)`);
      }
      await new Promise((resolve) => setTimeout(resolve, CATCH_UP_POLL_MS));
    }
  }
}
