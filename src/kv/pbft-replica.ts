/**
 * The key-value state machine as PBFT drives it (the federation scope when
 * untrusted members take part): each committed request's operation is a
 * KvCommand, executed at index appliedIndex + 1, and its reply is the
 * protobuf-encoded KvResult every honest replica computes identically, so the
 * client can match f + 1 replies byte for byte.
 *
 * Indices: PBFT numbers batches, not requests, so the machine counts the
 * requests it executed (its appliedIndex, which the snapshot carries): equal
 * on every replica because all execute the same requests in the same order.
 * Revisions in this scope are those counts.
 */
import type { ClientRequest } from '../consensus/pbft/types.ts';
import type { PbftStateMachine } from '../consensus/pbft/node.ts';
import { KvResultSchema } from './command.ts';
import { KvStateMachine } from './state-machine.ts';

export class KvPbftReplica implements PbftStateMachine {
  machine = new KvStateMachine();

  /** The canonical empty state every replica starts from. */
  static genesis(): Uint8Array {
    return new KvStateMachine().snapshot();
  }

  execute(request: ClientRequest): Uint8Array {
    return KvResultSchema.encode(this.machine.apply(this.machine.appliedIndex + 1, request.operation));
  }

  snapshot(): Uint8Array {
    return this.machine.snapshot();
  }

  restore(snapshot: Uint8Array): void {
    this.machine = KvStateMachine.restore(snapshot);
  }
}
