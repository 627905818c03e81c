/**
 * A test-only network partition for real-process tests: with DWCP_TEST_FAULTS=1
 * in the environment at start, the admin call State.SetTestPartition names
 * members this daemon must treat as unreachable. The daemon's `isConnected`
 * (which Raft, PBFT, KV forwarding and the sync protocol all consult before
 * sending and when a stream opens) then says "not connected" for them, so
 * every protocol behaves as under a real partition, while the member list,
 * and with it every quorum size, stays as configured (cutting links by
 * reloading a smaller member list would shrink the geo quorums too).
 *
 * Without the variable the hook is inert and the admin call is refused, so a
 * production daemon cannot be partitioned through its admin socket.
 */

export const TEST_FAULTS_ENV = 'DWCP_TEST_FAULTS';

export class TestFaults {
  readonly enabled: boolean;
  #blocked = new Set<string>();

  constructor(enabled: boolean) {
    this.enabled = enabled;
  }

  static fromEnv(env: NodeJS.ProcessEnv): TestFaults {
    return new TestFaults(env[TEST_FAULTS_ENV] === '1');
  }

  /** Whether member `peerId` is cut off by the test partition. */
  blocks(peerId: string): boolean {
    return this.#blocked.has(peerId);
  }

  /** Replaces the set of cut-off members (empty: heal). Throws unless enabled. */
  partition(peerIds: readonly string[]): void {
    if (!this.enabled) throw new Error(`test faults are disabled (start dwcpd with ${TEST_FAULTS_ENV}=1 to use them)`);
    this.#blocked = new Set(peerIds);
  }

  get blocked(): readonly string[] {
    return [...this.#blocked];
  }
}
