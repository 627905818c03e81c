/**
 * FleetLog: this node's handle on the fleet's desired state, which lives in
 * the federation scope's log (PBFT when any member is untrusted, Raft
 * otherwise). It commits fleet commands and reads this node's replica of the
 * fleet state machine.
 *
 * Every command carries this node's fleet session (a client id fixed for the
 * process and a sequence number), so a command the log layer resends after a
 * lost answer is answered from the session with its first result instead of
 * being applied twice (a create would otherwise come back name_taken).
 *
 * The log itself is reached through a narrow port (the daemon adapts the KV
 * service's federation scope to it), so the fleet does not depend on how
 * scopes map to logs.
 */
import { encodeFleetCommand, type FleetCommandInput, type FleetResult } from './commands.ts';
import type { FleetState } from './state-machine.ts';

export interface FleetLogPort {
  /**
   * Commits an encoded fleet command with a session on the federation log and
   * returns the fleet state machine's answer. Throws when the log cannot
   * commit it within `timeoutMs` (no quorum, no leader, stopping).
   */
  commit(command: Uint8Array, session: { clientId: string; seq: number }, timeoutMs: number): Promise<FleetResult>;
  /** This node's replica of the fleet state, as applied here (it may trail the log). */
  state(): FleetState;
}

export class FleetLog {
  readonly #port: FleetLogPort;
  readonly #clientId: string;
  #seq = 0;

  /** `clientId` must be unique to this process (node name plus a per-start nonce): sessions are per client. */
  constructor(port: FleetLogPort, clientId: string) {
    this.#port = port;
    this.#clientId = clientId;
  }

  /** The desired state as this node has applied it. */
  get state(): FleetState {
    return this.#port.state();
  }

  /**
   * Commits `command`; a refusal by the state machine is a result, not an
   * exception. The port already waits out elections and forwards to the
   * leader until the deadline, so there is no retry loop here: a caller that
   * retries after a throw sends a new command (a new sequence number).
   */
  commit(command: FleetCommandInput, timeoutMs: number): Promise<FleetResult> {
    const bytes = encodeFleetCommand(command);
    return this.#port.commit(bytes, { clientId: this.#clientId, seq: ++this.#seq }, timeoutMs);
  }
}
