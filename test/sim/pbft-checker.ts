/**
 * PBFT safety, checked from outside the cores as the simulation runs. Only
 * honest replicas are observed; Byzantine ones may do anything.
 * - Agreement: no two honest replicas execute different batches (request
 *   ids and results) at the same sequence number.
 * - Gap-free order: each honest replica executes seq after seq, except that
 *   installing a checkpoint (state transfer, restart) jumps to its seq, and
 *   then its snapshot must equal what honest replicas produced at that seq.
 * - Exactly-once: a (client, timestamp) executes at one seq only, at most once.
 * - Clients are not fooled: a result a client accepted (f + 1 matching
 *   replies) is the result honest replicas computed for that request.
 * A violation throws SafetyViolation with the details.
 */
import { sha256 } from '../../src/consensus/pbft/encoding.ts';
import type { ExecuteBatch, ReplicaId } from '../../src/consensus/pbft/types.ts';

export class SafetyViolation extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SafetyViolation';
  }
}

const decoder = new TextDecoder();

export class SafetyChecker {
  readonly #batches = new Map<number, { digest: string; replica: ReplicaId }>();
  readonly #snapshots = new Map<number, { digest: string; replica: ReplicaId }>();
  readonly #lastExecuted = new Map<ReplicaId, number>();
  /** `${client}@${timestamp}` -> where it executed and what it returned. */
  readonly #requests = new Map<string, { seq: number; result: string }>();
  #maxSeq = 0;
  installs = 0;
  accepted = 0;

  get maxExecuted(): number {
    return this.#maxSeq;
  }

  lastExecuted(replica: ReplicaId): number {
    return this.#lastExecuted.get(replica) ?? 0;
  }

  executed(replica: ReplicaId, batch: ExecuteBatch, results: readonly Uint8Array[]): void {
    const last = this.lastExecuted(replica);
    if (batch.seq !== last + 1) {
      throw new SafetyViolation(`order: ${replica} executes seq ${batch.seq} after ${last}`);
    }
    this.#lastExecuted.set(replica, batch.seq);
    this.#maxSeq = Math.max(this.#maxSeq, batch.seq);
    const content = batch.requests.map((r, i) => `${r.client}@${r.timestamp}=${decoder.decode(results[i] ?? new Uint8Array())}`);
    const digest = sha256(new TextEncoder().encode(content.join('\n')));
    const seen = this.#batches.get(batch.seq);
    if (seen === undefined) this.#batches.set(batch.seq, { digest, replica });
    else if (seen.digest !== digest) {
      throw new SafetyViolation(`agreement: ${replica} and ${seen.replica} executed different batches at seq ${batch.seq}: ${content.join(', ')}`);
    }
    batch.requests.forEach((r, i) => {
      const key = `${r.client}@${r.timestamp}`;
      const result = decoder.decode(results[i] ?? new Uint8Array());
      const known = this.#requests.get(key);
      if (known === undefined) this.#requests.set(key, { seq: batch.seq, result });
      else if (known.seq !== batch.seq || known.result !== result) {
        throw new SafetyViolation(`exactly-once: ${key} executed at seq ${known.seq} and again at ${batch.seq} on ${replica}`);
      }
    });
  }

  checkpoint(replica: ReplicaId, seq: number, snapshot: Uint8Array): void {
    const digest = sha256(snapshot);
    const seen = this.#snapshots.get(seq);
    if (seen === undefined) this.#snapshots.set(seq, { digest, replica });
    else if (seen.digest !== digest) {
      throw new SafetyViolation(`agreement: ${replica} and ${seen.replica} have different states at checkpoint ${seq}`);
    }
  }

  installed(replica: ReplicaId, seq: number, snapshot: Uint8Array): void {
    this.installs++;
    const seen = this.#snapshots.get(seq);
    if (seq > 0 && seen === undefined) throw new SafetyViolation(`state transfer: ${replica} installs checkpoint ${seq} no honest replica produced`);
    if (seen !== undefined && seen.digest !== sha256(snapshot)) {
      throw new SafetyViolation(`state transfer: ${replica} installs a state at ${seq} that differs from ${seen.replica}'s`);
    }
    this.#lastExecuted.set(replica, seq);
  }

  /** A client accepted `result` for its request. */
  clientAccepted(client: string, timestamp: number, result: Uint8Array): void {
    this.accepted++;
    const key = `${client}@${timestamp}`;
    const known = this.#requests.get(key);
    const text = decoder.decode(result);
    if (known === undefined) throw new SafetyViolation(`client ${key} accepted ${text}, which no honest replica executed`);
    if (known.result !== text) throw new SafetyViolation(`client ${key} accepted ${text}; honest replicas computed ${known.result}`);
  }
}
