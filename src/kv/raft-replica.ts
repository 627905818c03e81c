/**
 * The key-value state machine as Raft drives it (the datacenter scope, and
 * the federation scope when every member is trusted): each committed entry's
 * data is a KvCommand applied at the entry's log index, so revisions in this
 * keyspace are Raft log indices. restore swaps in a new machine, so a reader
 * takes `machine` afresh on every read.
 */
import type { RaftStateMachine } from '../consensus/raft/node.ts';
import type { SnapshotSource } from '../consensus/raft/types.ts';
import type { KvResult } from './command.ts';
import { KvStateMachine } from './state-machine.ts';

export class KvRaftReplica implements RaftStateMachine<KvResult> {
  machine: KvStateMachine;

  constructor(machine = new KvStateMachine()) {
    this.machine = machine;
  }

  apply(index: number, data: Uint8Array): KvResult {
    return this.machine.apply(index, data);
  }

  snapshot(): SnapshotSource {
    return this.machine.snapshotSource();
  }

  restore(data: Uint8Array): void {
    this.machine = KvStateMachine.restore(data);
  }
}
